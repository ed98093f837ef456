//! SQLite trial storage in Optuna's RDB schema (v12), committed as each trial changes state.
//!
//! A study directory holds one database, [`DB_FILE_NAME`], which may hold several studies, and
//! one checkpoint folder per trial under `<study-name>/trial-<number>/`. The tables are
//! exactly Optuna's (see [`schema`]), so `optuna.load_study(study_name=...,
//! storage="sqlite:///<dir>/cthpo.db")` and `optuna-dashboard` read cthpo studies, and cthpo
//! reads studies Optuna wrote. cthpo's own data lives in trial user attributes (keys in
//! [`attrs`]) and intermediate values (one per epoch).
//!
//! Every write is one short `BEGIN IMMEDIATE` transaction, and the connection waits up to
//! [`BUSY_TIMEOUT`] for a lock, so several processes can run trials of one study in the same
//! directory: trial numbers are assigned inside the transaction, as Optuna does.

#![warn(missing_docs)]

pub mod schema;
mod summary;
mod time;
mod types;

pub use summary::{best_trial, pareto_front_indices, pareto_optimal, state_counts};
pub use time::now_utc;
pub use types::{
    Direction, ParamDistribution, ParamValue, StoredParam, StoredTrial, StudyId, StudyInfo,
    TrialHandle, TrialOutcome, TrialState, json_number,
};

use rusqlite::{Connection, ErrorCode, OptionalExtension, Transaction, TransactionBehavior};
use rusqlite::{OpenFlags, params};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default study directory of the CLI (`--dir`).
pub const DEFAULT_STUDY_DIR: &str = "studies-out";

/// File name of the database inside a study directory.
pub const DB_FILE_NAME: &str = "cthpo.db";

/// How long a write waits for another process's lock before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Keys of the trial user attributes cthpo writes (values are JSON).
pub mod attrs {
    /// Natural (clean) validation accuracy in [0, 1].
    pub const NATURAL_ACCURACY: &str = "natural_accuracy";
    /// Adversarial (PGD) validation accuracy in [0, 1].
    pub const ADVERSARIAL_ACCURACY: &str = "adversarial_accuracy";
    /// Certified validation accuracy in [0, 1].
    pub const CERTIFIED_ACCURACY: &str = "certified_accuracy";
    /// Weighted objective of a multi-objective study (higher is better).
    pub const OBJECTIVE: &str = "objective";
    /// Checkpoint folder of the trial, relative to the study directory (or absolute).
    pub const CHECKPOINT_PATH: &str = "checkpoint_path";
    /// Why the trial failed.
    pub const FAILURE_REASON: &str = "failure_reason";
    /// Wall-clock seconds the trial took (training and evaluation).
    pub const DURATION_SECONDS: &str = "duration_seconds";
    /// How the optimiser chose the trial's configuration (initial design, surrogate, random).
    pub const PROPOSAL: &str = "proposal";
}

/// Errors of the store; each names the database file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The study directory could not be created or read.
    #[error("{path}: {source}")]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// `open_existing` found no database.
    #[error("{path}: no study database here (run `cthpo run` first, or check --dir)")]
    Missing {
        /// The expected database file.
        path: PathBuf,
    },
    /// The file is not an SQLite database at all.
    #[error("{path}: not an SQLite database (file is corrupt or of another kind)")]
    NotADatabase {
        /// The database file.
        path: PathBuf,
    },
    /// An SQLite database, but without Optuna's tables.
    #[error(
        "{path}: an SQLite database, but not an Optuna/cthpo study database (tables: {tables})"
    )]
    NotOptuna {
        /// The database file.
        path: PathBuf,
        /// The tables it has.
        tables: String,
    },
    /// An Optuna database of another schema version.
    #[error(
        "{path}: Optuna schema {found}, but cthpo reads schema version {} (alembic {}); \
         upgrade it with `optuna storage upgrade --storage sqlite:///{path}` if it is older",
        schema::SCHEMA_VERSION,
        schema::ALEMBIC_VERSION
    )]
    SchemaVersion {
        /// The database file.
        path: PathBuf,
        /// What it records.
        found: String,
    },
    /// Any other SQLite failure.
    #[error("{path}: SQLite: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The cause.
        source: rusqlite::Error,
    },
    /// No study of that name.
    #[error("{path}: no study named {name:?} (known: {known})")]
    StudyNotFound {
        /// The database file.
        path: PathBuf,
        /// The requested name.
        name: String,
        /// The names it has.
        known: String,
    },
    /// A study name cthpo cannot use (it becomes a folder name).
    #[error("invalid study name {name:?}: {reason}")]
    InvalidStudyName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The study exists with other directions.
    #[error("{path}: study {name:?} has directions [{stored}], not [{requested}]")]
    DirectionMismatch {
        /// The database file.
        path: PathBuf,
        /// The study.
        name: String,
        /// Directions in the database.
        stored: String,
        /// Directions asked for.
        requested: String,
    },
    /// No trial with that id.
    #[error("{path}: no trial with id {trial_id}")]
    TrialNotFound {
        /// The database file.
        path: PathBuf,
        /// The trial id.
        trial_id: i64,
    },
    /// The trial is already finished and cannot change.
    #[error("{path}: trial {number} is {state}, only RUNNING trials can be updated")]
    TrialNotRunning {
        /// The database file.
        path: PathBuf,
        /// The trial number.
        number: i64,
        /// Its state.
        state: TrialState,
    },
    /// A param or its distribution is invalid.
    #[error("param {name:?}: {reason}")]
    InvalidParam {
        /// The param name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The param's distribution conflicts with earlier trials of the study (Optuna would refuse).
    #[error("{path}: param {name:?} in study {study:?}: {reason} from earlier trials ({stored})")]
    IncompatibleDistribution {
        /// The database file.
        path: PathBuf,
        /// The study.
        study: String,
        /// The param.
        name: String,
        /// How it differs.
        reason: String,
        /// The stored distribution JSON.
        stored: String,
    },
    /// Objective values that do not fit the study.
    #[error("{path}: trial {number}: {reason}")]
    InvalidValues {
        /// The database file.
        path: PathBuf,
        /// The trial number.
        number: i64,
        /// Why.
        reason: String,
    },
    /// A row the store cannot interpret.
    #[error("{path}: unreadable data: {what}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

/// Handle on one study directory's database.
///
/// Not `Sync`: open one `Store` per thread or process; they cooperate through SQLite locks.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    dir: PathBuf,
    db_path: PathBuf,
}

fn directions_text(directions: &[Direction]) -> String {
    directions
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Encodes an attribute value as JSON text (Optuna's `value_json`).
fn encode_json(value: &Value) -> String {
    value.to_string()
}

/// Decodes `value_json`; Python-only JSON (e.g. `NaN`) is kept as the raw string.
fn decode_json(text: Option<String>) -> Value {
    match text {
        None => Value::Null,
        Some(text) => serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

/// Splits a float into Optuna's (value, value_type) columns; NaN only where `allow_nan`.
fn encode_value(value: f64) -> (Option<f64>, &'static str) {
    if value.is_nan() {
        (None, "NAN")
    } else if value == f64::INFINITY {
        (None, "INF_POS")
    } else if value == f64::NEG_INFINITY {
        (None, "INF_NEG")
    } else {
        (Some(value), "FINITE")
    }
}

/// Joins Optuna's (value, value_type) columns back into a float.
fn decode_value(value: Option<f64>, value_type: &str) -> Option<f64> {
    match value_type {
        "FINITE" => value,
        "INF_POS" => Some(f64::INFINITY),
        "INF_NEG" => Some(f64::NEG_INFINITY),
        "NAN" => Some(f64::NAN),
        _ => None,
    }
}

/// Checks that a study name can be a folder name and fits Optuna's column.
pub fn validate_study_name(name: &str) -> Result<(), StoreError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 512 {
        Some("it is longer than 512 bytes")
    } else if name == "." || name == ".." {
        Some("it is a special folder name")
    } else if name.contains(['/', '\\', '\0']) {
        Some("it contains a path separator or NUL")
    } else if name.chars().any(char::is_control) {
        Some("it contains control characters")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(StoreError::InvalidStudyName {
            name: name.to_string(),
            reason: reason.to_string(),
        }),
        None => Ok(()),
    }
}

impl Store {
    /// Opens the database of a study directory, creating the directory, the database and
    /// Optuna's schema if missing; an existing database must be an Optuna v12 database.
    pub fn open(dir: impl AsRef<Path>) -> Result<Store, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        Store::open_impl(dir, true)
    }

    /// Opens the database of an existing study directory; never creates anything.
    pub fn open_existing(dir: impl AsRef<Path>) -> Result<Store, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        let db_path = dir.join(DB_FILE_NAME);
        if !db_path.is_file() {
            return Err(StoreError::Missing { path: db_path });
        }
        Store::open_impl(dir, false)
    }

    fn open_impl(dir: PathBuf, create: bool) -> Result<Store, StoreError> {
        let db_path = dir.join(DB_FILE_NAME);
        let sql = |source| StoreError::Sqlite {
            path: db_path.clone(),
            source,
        };
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let conn = Connection::open_with_flags(&db_path, flags).map_err(sql)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(sql)?;
        let store = Store {
            conn,
            dir,
            db_path: db_path.clone(),
        };
        store.init_schema()?;
        store.enable_wal();
        Ok(store)
    }

    /// The study directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The database file.
    pub fn db_path(&self) -> &Path {
        &self.db_path
    }

    /// Checkpoint folder of a trial relative to the study directory: `<study>/trial-<number>`.
    pub fn checkpoint_rel_path(study_name: &str, number: i64) -> PathBuf {
        Path::new(study_name).join(format!("trial-{number}"))
    }

    /// Checkpoint folder of a trial: `<dir>/<study>/trial-<number>`.
    pub fn checkpoint_dir(&self, study_name: &str, number: i64) -> PathBuf {
        self.dir
            .join(Store::checkpoint_rel_path(study_name, number))
    }

    /// Resolves a stored `checkpoint_path` attribute (relative paths are under the study directory).
    pub fn resolve_checkpoint_path(&self, stored: &str) -> PathBuf {
        let path = Path::new(stored);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.dir.join(path)
        }
    }

    fn sql_err(&self, source: rusqlite::Error) -> StoreError {
        if source.sqlite_error_code() == Some(ErrorCode::NotADatabase) {
            return StoreError::NotADatabase {
                path: self.db_path.clone(),
            };
        }
        StoreError::Sqlite {
            path: self.db_path.clone(),
            source,
        }
    }

    fn corrupt(&self, what: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            path: self.db_path.clone(),
            what: what.into(),
        }
    }

    /// A write transaction that takes the write lock up front (no upgrade deadlocks).
    fn write_tx(&self) -> Result<Transaction<'_>, StoreError> {
        Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)
            .map_err(|e| self.sql_err(e))
    }

    /// A read transaction: one consistent snapshot for several queries.
    fn read_tx(&self) -> Result<Transaction<'_>, StoreError> {
        Transaction::new_unchecked(&self.conn, TransactionBehavior::Deferred)
            .map_err(|e| self.sql_err(e))
    }

    /// Runs a query and maps every row.
    fn query_rows<T>(
        &self,
        conn: &Connection,
        sql: &str,
        params: impl rusqlite::Params,
        map: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StoreError> {
        let mut stmt = conn.prepare(sql).map_err(|e| self.sql_err(e))?;
        stmt.query_map(params, map)
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.sql_err(e))
    }

    fn table_names(&self) -> Result<Vec<String>, StoreError> {
        self.query_rows(
            &self.conn,
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
            [],
            |row| row.get(0),
        )
    }

    /// Creates Optuna's schema in an empty database, or checks an existing one.
    fn init_schema(&self) -> Result<(), StoreError> {
        if self.table_names()?.is_empty() {
            let tx = self.write_tx()?;
            // Another process may have created the schema while we waited for the lock.
            let count: i64 = tx
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
                    [],
                    |r| r.get(0),
                )
                .map_err(|e| self.sql_err(e))?;
            if count == 0 {
                tx.execute_batch(schema::DDL).map_err(|e| self.sql_err(e))?;
                tx.execute(
                    "INSERT INTO version_info (version_info_id, schema_version, library_version) \
                     VALUES (1, ?1, ?2)",
                    params![schema::SCHEMA_VERSION, schema::LIBRARY_VERSION],
                )
                .map_err(|e| self.sql_err(e))?;
                tx.execute(
                    "INSERT INTO alembic_version (version_num) VALUES (?1)",
                    params![schema::ALEMBIC_VERSION],
                )
                .map_err(|e| self.sql_err(e))?;
            }
            tx.commit().map_err(|e| self.sql_err(e))?;
        }
        self.check_schema()
    }

    fn check_schema(&self) -> Result<(), StoreError> {
        let tables = self.table_names()?;
        let missing: Vec<&str> = schema::TABLES
            .iter()
            .copied()
            .filter(|t| !tables.iter().any(|have| have == t))
            .collect();
        if !missing.is_empty() {
            return Err(StoreError::NotOptuna {
                path: self.db_path.clone(),
                tables: if tables.is_empty() {
                    "none".to_string()
                } else {
                    tables.join(", ")
                },
            });
        }
        let version: Option<Option<i64>> = self
            .conn
            .query_row(
                "SELECT schema_version FROM version_info WHERE version_info_id = 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.sql_err(e))?;
        let alembic: Vec<String> = self.query_rows(
            &self.conn,
            "SELECT version_num FROM alembic_version",
            [],
            |r| r.get(0),
        )?;
        let version_ok = version == Some(Some(schema::SCHEMA_VERSION));
        let alembic_ok = alembic.len() == 1 && alembic[0] == schema::ALEMBIC_VERSION;
        if !(version_ok && alembic_ok) {
            return Err(StoreError::SchemaVersion {
                path: self.db_path.clone(),
                found: format!(
                    "version {} (alembic {})",
                    version
                        .flatten()
                        .map_or_else(|| "missing".to_string(), |v| v.to_string()),
                    if alembic.is_empty() {
                        "missing".to_string()
                    } else {
                        alembic.join(", ")
                    }
                ),
            });
        }
        Ok(())
    }

    /// Switches the file to WAL mode (persistent); a failure leaves the rollback journal,
    /// which is slower under concurrency but equally safe.
    fn enable_wal(&self) {
        for _ in 0..5 {
            let mode: Result<String, _> =
                self.conn
                    .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0));
            if matches!(mode, Ok(ref m) if m.eq_ignore_ascii_case("wal")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs SQLite's `PRAGMA integrity_check`; `Ok(())` when the file is sound.
    pub fn integrity_check(&self) -> Result<(), StoreError> {
        let result: String = self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(|e| self.sql_err(e))?;
        if result == "ok" {
            Ok(())
        } else {
            Err(self.corrupt(format!("integrity check: {result}")))
        }
    }

    /// The journal mode in force (`wal` normally).
    pub fn journal_mode(&self) -> Result<String, StoreError> {
        self.conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(|e| self.sql_err(e))
    }

    // ---------------------------------------------------------------- studies

    /// Creates the study, or loads it if it exists (its directions must then match). On load,
    /// `user_attrs` only adds keys the study lacks; use [`Store::set_study_user_attr`] to change one.
    pub fn create_or_load_study(
        &self,
        name: &str,
        directions: &[Direction],
        user_attrs: &BTreeMap<String, Value>,
    ) -> Result<StudyId, StoreError> {
        if directions.is_empty() {
            return Err(StoreError::DirectionMismatch {
                path: self.db_path.clone(),
                name: name.to_string(),
                stored: String::new(),
                requested: "a study needs at least one direction".to_string(),
            });
        }
        let tx = self.write_tx()?;
        let e = |err| self.sql_err(err);
        let existing: Option<i64> = tx
            .query_row(
                "SELECT study_id FROM studies WHERE study_name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()
            .map_err(e)?;
        let study_id = match existing {
            Some(id) => {
                let stored = self.directions_in(&tx, StudyId(id))?;
                if stored != directions {
                    return Err(StoreError::DirectionMismatch {
                        path: self.db_path.clone(),
                        name: name.to_string(),
                        stored: directions_text(&stored),
                        requested: directions_text(directions),
                    });
                }
                id
            }
            None => {
                validate_study_name(name)?;
                tx.execute("INSERT INTO studies (study_name) VALUES (?1)", [name])
                    .map_err(e)?;
                let id = tx.last_insert_rowid();
                for (objective, direction) in directions.iter().enumerate() {
                    tx.execute(
                        "INSERT INTO study_directions (direction, study_id, objective) \
                         VALUES (?1, ?2, ?3)",
                        params![direction.as_optuna_str(), id, objective as i64],
                    )
                    .map_err(e)?;
                }
                id
            }
        };
        for (key, value) in user_attrs {
            tx.execute(
                "INSERT INTO study_user_attributes (study_id, key, value_json) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (study_id, key) DO NOTHING",
                params![study_id, key, encode_json(value)],
            )
            .map_err(e)?;
        }
        tx.commit().map_err(e)?;
        Ok(StudyId(study_id))
    }

    /// Sets (or replaces) one study user attribute.
    pub fn set_study_user_attr(
        &self,
        study: StudyId,
        key: &str,
        value: &Value,
    ) -> Result<(), StoreError> {
        let tx = self.write_tx()?;
        tx.execute(
            "INSERT INTO study_user_attributes (study_id, key, value_json) VALUES (?1, ?2, ?3) \
             ON CONFLICT (study_id, key) DO UPDATE SET value_json = excluded.value_json",
            params![study.0, key, encode_json(value)],
        )
        .map_err(|e| self.sql_err(e))?;
        tx.commit().map_err(|e| self.sql_err(e))
    }

    fn directions_in(
        &self,
        conn: &Connection,
        study: StudyId,
    ) -> Result<Vec<Direction>, StoreError> {
        let texts: Vec<String> = self.query_rows(
            conn,
            "SELECT direction FROM study_directions WHERE study_id = ?1 ORDER BY objective",
            [study.0],
            |r| r.get(0),
        )?;
        texts
            .iter()
            .map(|t| {
                Direction::from_optuna_str(t)
                    .ok_or_else(|| self.corrupt(format!("study direction {t:?}")))
            })
            .collect()
    }

    fn study_user_attrs_in(
        &self,
        conn: &Connection,
        study: StudyId,
    ) -> Result<BTreeMap<String, Value>, StoreError> {
        let rows: Vec<(Option<String>, Option<String>)> = self.query_rows(
            conn,
            "SELECT key, value_json FROM study_user_attributes WHERE study_id = ?1",
            [study.0],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(rows
            .into_iter()
            .map(|(k, v)| (k.unwrap_or_default(), decode_json(v)))
            .collect())
    }

    /// All studies, by id.
    pub fn studies(&self) -> Result<Vec<StudyInfo>, StoreError> {
        let tx = self.read_tx()?;
        let rows: Vec<(i64, String)> = self.query_rows(
            &tx,
            "SELECT study_id, study_name FROM studies ORDER BY study_id",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let mut studies = Vec::with_capacity(rows.len());
        for (id, name) in rows {
            studies.push(StudyInfo {
                id: StudyId(id),
                name,
                directions: self.directions_in(&tx, StudyId(id))?,
                user_attrs: self.study_user_attrs_in(&tx, StudyId(id))?,
            });
        }
        tx.commit().map_err(|e| self.sql_err(e))?;
        Ok(studies)
    }

    /// Names of all studies, by id.
    pub fn study_names(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.studies()?.into_iter().map(|s| s.name).collect())
    }

    /// The study of that name, if any.
    pub fn study_by_name(&self, name: &str) -> Result<Option<StudyInfo>, StoreError> {
        Ok(self.studies()?.into_iter().find(|s| s.name == name))
    }

    /// The study of that name, or an error listing the known names.
    pub fn require_study(&self, name: &str) -> Result<StudyInfo, StoreError> {
        let studies = self.studies()?;
        let known = studies
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        studies
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| StoreError::StudyNotFound {
                path: self.db_path.clone(),
                name: name.to_string(),
                known: if known.is_empty() {
                    "none".to_string()
                } else {
                    known
                },
            })
    }

    // ---------------------------------------------------------------- trials

    /// Records a new RUNNING trial with its params, start time and first heartbeat; its
    /// number is the count of the study's earlier trials. Each param's distribution must be
    /// compatible with the one earlier trials of the study used for that name.
    pub fn start_trial(
        &self,
        study: StudyId,
        params: &[StoredParam],
    ) -> Result<TrialHandle, StoreError> {
        for (i, p) in params.iter().enumerate() {
            p.distribution.validate(&p.name)?;
            if params[..i].iter().any(|q| q.name == p.name) {
                return Err(StoreError::InvalidParam {
                    name: p.name.clone(),
                    reason: "given twice".to_string(),
                });
            }
        }
        let tx = self.write_tx()?;
        let e = |err| self.sql_err(err);
        let study_name: String = tx
            .query_row(
                "SELECT study_name FROM studies WHERE study_id = ?1",
                [study.0],
                |r| r.get(0),
            )
            .optional()
            .map_err(e)?
            .ok_or_else(|| StoreError::StudyNotFound {
                path: self.db_path.clone(),
                name: format!("<id {}>", study.0),
                known: String::new(),
            })?;
        for p in params {
            let stored: Option<Option<String>> = tx
                .query_row(
                    "SELECT p.distribution_json FROM trial_params p \
                     JOIN trials t ON t.trial_id = p.trial_id \
                     WHERE t.study_id = ?1 AND p.param_name = ?2 LIMIT 1",
                    params![study.0, p.name],
                    |r| r.get(0),
                )
                .optional()
                .map_err(e)?;
            if let Some(stored) = stored.flatten() {
                let old = ParamDistribution::from_optuna_json(&stored)
                    .ok_or_else(|| self.corrupt(format!("distribution_json {stored:?}")))?;
                if let Some(reason) = old.incompatibility(&p.distribution) {
                    return Err(StoreError::IncompatibleDistribution {
                        path: self.db_path.clone(),
                        study: study_name,
                        name: p.name.clone(),
                        reason,
                        stored,
                    });
                }
            }
        }
        let now = now_utc();
        tx.execute(
            "INSERT INTO trials (number, study_id, state, datetime_start) \
             VALUES (NULL, ?1, 'RUNNING', ?2)",
            params![study.0, now],
        )
        .map_err(e)?;
        let trial_id = tx.last_insert_rowid();
        let number: i64 = tx
            .query_row(
                "SELECT count(*) FROM trials WHERE study_id = ?1 AND trial_id < ?2",
                params![study.0, trial_id],
                |r| r.get(0),
            )
            .map_err(e)?;
        tx.execute(
            "UPDATE trials SET number = ?1 WHERE trial_id = ?2",
            params![number, trial_id],
        )
        .map_err(e)?;
        for p in params {
            tx.execute(
                "INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    trial_id,
                    p.name,
                    p.internal,
                    p.distribution.to_optuna_json()
                ],
            )
            .map_err(e)?;
        }
        tx.execute(
            "INSERT INTO trial_heartbeats (trial_id, heartbeat) VALUES (?1, ?2)",
            params![trial_id, now],
        )
        .map_err(e)?;
        tx.commit().map_err(e)?;
        Ok(TrialHandle {
            study_id: study,
            trial_id,
            number,
        })
    }

    /// Checks inside a write transaction that the trial exists and is RUNNING; returns its
    /// number and study id.
    fn require_running(&self, tx: &Connection, trial_id: i64) -> Result<(i64, i64), StoreError> {
        let row: Option<(Option<i64>, Option<i64>, String)> = tx
            .query_row(
                "SELECT number, study_id, state FROM trials WHERE trial_id = ?1",
                [trial_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(|e| self.sql_err(e))?;
        let (number, study_id, state) = row.ok_or(StoreError::TrialNotFound {
            path: self.db_path.clone(),
            trial_id,
        })?;
        let number = number.unwrap_or(-1);
        let state = TrialState::from_optuna_str(&state)
            .ok_or_else(|| self.corrupt(format!("trial state {state:?}")))?;
        if state != TrialState::Running {
            return Err(StoreError::TrialNotRunning {
                path: self.db_path.clone(),
                number,
                state,
            });
        }
        Ok((number, study_id.unwrap_or(-1)))
    }

    fn upsert_heartbeat(
        &self,
        tx: &Connection,
        trial_id: i64,
        now: &str,
    ) -> Result<(), StoreError> {
        tx.execute(
            "INSERT INTO trial_heartbeats (trial_id, heartbeat) VALUES (?1, ?2) \
             ON CONFLICT (trial_id) DO UPDATE SET heartbeat = excluded.heartbeat",
            params![trial_id, now],
        )
        .map_err(|e| self.sql_err(e))?;
        Ok(())
    }

    /// Records the intermediate value (e.g. per-epoch validation metric) of a RUNNING trial at
    /// `step` (replacing an earlier one at that step) and refreshes its heartbeat.
    pub fn report_intermediate(
        &self,
        trial: &TrialHandle,
        step: i64,
        value: f64,
    ) -> Result<(), StoreError> {
        let tx = self.write_tx()?;
        self.require_running(&tx, trial.trial_id)?;
        let (value, value_type) = encode_value(value);
        tx.execute(
            "INSERT INTO trial_intermediate_values \
             (trial_id, step, intermediate_value, intermediate_value_type) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (trial_id, step) DO UPDATE SET \
             intermediate_value = excluded.intermediate_value, \
             intermediate_value_type = excluded.intermediate_value_type",
            params![trial.trial_id, step, value, value_type],
        )
        .map_err(|e| self.sql_err(e))?;
        self.upsert_heartbeat(&tx, trial.trial_id, &now_utc())?;
        tx.commit().map_err(|e| self.sql_err(e))
    }

    /// Refreshes the heartbeat of a RUNNING trial (call it during long epochs so that other
    /// processes do not take the trial for an abandoned one).
    pub fn record_heartbeat(&self, trial: &TrialHandle) -> Result<(), StoreError> {
        let tx = self.write_tx()?;
        self.require_running(&tx, trial.trial_id)?;
        self.upsert_heartbeat(&tx, trial.trial_id, &now_utc())?;
        tx.commit().map_err(|e| self.sql_err(e))
    }

    /// Sets (or replaces) a user attribute of a RUNNING trial.
    pub fn set_trial_user_attr(
        &self,
        trial: &TrialHandle,
        key: &str,
        value: &Value,
    ) -> Result<(), StoreError> {
        let tx = self.write_tx()?;
        self.require_running(&tx, trial.trial_id)?;
        self.set_attr_in(&tx, trial.trial_id, key, value)?;
        tx.commit().map_err(|e| self.sql_err(e))
    }

    fn set_attr_in(
        &self,
        tx: &Connection,
        trial_id: i64,
        key: &str,
        value: &Value,
    ) -> Result<(), StoreError> {
        tx.execute(
            "INSERT INTO trial_user_attributes (trial_id, key, value_json) VALUES (?1, ?2, ?3) \
             ON CONFLICT (trial_id, key) DO UPDATE SET value_json = excluded.value_json",
            params![trial_id, key, encode_json(value)],
        )
        .map_err(|e| self.sql_err(e))?;
        Ok(())
    }

    /// Ends a RUNNING trial: COMPLETE with one value per study direction (NaN refused), FAIL
    /// with its reason (user attribute `failure_reason`), or PRUNED; sets `datetime_complete`.
    pub fn finish_trial(
        &self,
        trial: &TrialHandle,
        outcome: &TrialOutcome,
    ) -> Result<(), StoreError> {
        let tx = self.write_tx()?;
        let e = |err| self.sql_err(err);
        let (number, study_id) = self.require_running(&tx, trial.trial_id)?;
        let state = match outcome {
            TrialOutcome::Complete { values } => {
                let n_directions = self.directions_in(&tx, StudyId(study_id))?.len();
                let bad = |reason: String| StoreError::InvalidValues {
                    path: self.db_path.clone(),
                    number,
                    reason,
                };
                if values.len() != n_directions {
                    return Err(bad(format!(
                        "{} values for a study with {n_directions} objectives",
                        values.len()
                    )));
                }
                if values.iter().any(|v| v.is_nan()) {
                    return Err(bad(
                        "a NaN objective value (record the trial as FAIL)".into()
                    ));
                }
                for (objective, value) in values.iter().enumerate() {
                    let (value, value_type) = encode_value(*value);
                    tx.execute(
                        "INSERT INTO trial_values (trial_id, objective, value, value_type) \
                         VALUES (?1, ?2, ?3, ?4)",
                        params![trial.trial_id, objective as i64, value, value_type],
                    )
                    .map_err(e)?;
                }
                TrialState::Complete
            }
            TrialOutcome::Fail { reason } => {
                self.set_attr_in(
                    &tx,
                    trial.trial_id,
                    attrs::FAILURE_REASON,
                    &Value::from(reason.as_str()),
                )?;
                TrialState::Fail
            }
            TrialOutcome::Pruned => TrialState::Pruned,
        };
        tx.execute(
            "UPDATE trials SET state = ?1, datetime_complete = ?2 WHERE trial_id = ?3",
            params![state.as_optuna_str(), now_utc(), trial.trial_id],
        )
        .map_err(e)?;
        tx.commit().map_err(e)
    }

    /// Marks the study's RUNNING trials whose last heartbeat (or start) is at least
    /// `older_than` ago as FAIL with `reason` (e.g. "interrupted"), for resuming after a
    /// killed process; returns them as they are now. With several processes on one study,
    /// pass a grace period longer than their heartbeat interval.
    pub fn mark_stale_running_as_failed(
        &self,
        study: StudyId,
        older_than: Duration,
        reason: &str,
    ) -> Result<Vec<StoredTrial>, StoreError> {
        let tx = self.write_tx()?;
        let e = |err| self.sql_err(err);
        let now = now_utc();
        let ids: Vec<i64> = self.query_rows(
            &tx,
            "SELECT t.trial_id FROM trials t \
             LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id \
             WHERE t.study_id = ?1 AND t.state = 'RUNNING' \
             AND (julianday(COALESCE(h.heartbeat, t.datetime_start)) IS NULL \
                  OR julianday(COALESCE(h.heartbeat, t.datetime_start)) \
                     <= julianday(?2) - ?3 / 86400.0)",
            params![study.0, now, older_than.as_secs_f64()],
            |r| r.get(0),
        )?;
        for id in &ids {
            self.set_attr_in(&tx, *id, attrs::FAILURE_REASON, &Value::from(reason))?;
            tx.execute(
                "UPDATE trials SET state = 'FAIL', datetime_complete = ?1 WHERE trial_id = ?2",
                params![now, id],
            )
            .map_err(e)?;
        }
        let trials = self.trials_in(&tx, study)?;
        tx.commit().map_err(e)?;
        Ok(trials
            .into_iter()
            .filter(|t| ids.contains(&t.trial_id))
            .collect())
    }

    /// All trials of a study, by number, with params, values, attributes and intermediate values.
    pub fn trials(&self, study: StudyId) -> Result<Vec<StoredTrial>, StoreError> {
        let tx = self.read_tx()?;
        let trials = self.trials_in(&tx, study)?;
        tx.commit().map_err(|e| self.sql_err(e))?;
        Ok(trials)
    }

    /// Rows `(trial_id, key, value)` of a float table (`trial_values` or
    /// `trial_intermediate_values`) for a study's trials, decoded from Optuna's value types.
    fn float_rows(
        &self,
        conn: &Connection,
        table: &str,
        key: &str,
        value: &str,
        study: StudyId,
    ) -> Result<Vec<(i64, i64, f64)>, StoreError> {
        let sql = format!(
            "SELECT v.trial_id, v.{key}, v.{value}, v.{value}_type FROM {table} v \
             JOIN trials t ON t.trial_id = v.trial_id WHERE t.study_id = ?1"
        );
        let rows: Vec<(i64, i64, Option<f64>, String)> =
            self.query_rows(conn, &sql, [study.0], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?;
        rows.into_iter()
            .map(|(trial_id, k, v, value_type)| {
                decode_value(v, &value_type)
                    .map(|v| (trial_id, k, v))
                    .ok_or_else(|| {
                        self.corrupt(format!("{table}: trial {trial_id} type {value_type:?}"))
                    })
            })
            .collect()
    }

    fn trials_in(&self, conn: &Connection, study: StudyId) -> Result<Vec<StoredTrial>, StoreError> {
        type TrialRow = (
            i64,
            Option<i64>,
            String,
            Option<String>,
            Option<String>,
            Option<f64>,
            Option<String>,
        );
        let rows: Vec<TrialRow> = self.query_rows(
            conn,
            "SELECT t.trial_id, t.number, t.state, t.datetime_start, t.datetime_complete, \
             (julianday(t.datetime_complete) - julianday(t.datetime_start)) * 86400.0, \
             h.heartbeat \
             FROM trials t LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id \
             WHERE t.study_id = ?1 ORDER BY t.number, t.trial_id",
            [study.0],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            },
        )?;
        let mut trials: Vec<StoredTrial> = Vec::with_capacity(rows.len());
        for (trial_id, number, state, start, complete, duration, heartbeat) in rows {
            let state = TrialState::from_optuna_str(&state)
                .ok_or_else(|| self.corrupt(format!("trial {trial_id} state {state:?}")))?;
            trials.push(StoredTrial {
                trial_id,
                number: number.unwrap_or(-1),
                state,
                params: Vec::new(),
                values: None,
                user_attrs: BTreeMap::new(),
                system_attrs: BTreeMap::new(),
                intermediate_values: BTreeMap::new(),
                datetime_start: start,
                datetime_complete: complete,
                duration_seconds: duration,
                heartbeat,
            });
        }
        let index: HashMap<i64, usize> = trials
            .iter()
            .enumerate()
            .map(|(i, t)| (t.trial_id, i))
            .collect();

        type ParamRow = (i64, Option<String>, Option<f64>, Option<String>);
        let params: Vec<ParamRow> = self.query_rows(
            conn,
            "SELECT p.trial_id, p.param_name, p.param_value, p.distribution_json \
             FROM trial_params p JOIN trials t ON t.trial_id = p.trial_id \
             WHERE t.study_id = ?1 ORDER BY p.param_id",
            [study.0],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
        for (trial_id, name, value, dist) in params {
            let name = name.unwrap_or_default();
            let dist_text = dist.unwrap_or_default();
            let distribution =
                ParamDistribution::from_optuna_json(&dist_text).ok_or_else(|| {
                    self.corrupt(format!(
                        "trial {trial_id} param {name:?}: distribution_json {dist_text:?}"
                    ))
                })?;
            if let Some(&i) = index.get(&trial_id) {
                trials[i].params.push(StoredParam {
                    name,
                    distribution,
                    internal: value.unwrap_or(f64::NAN),
                });
            }
        }

        for (trial_id, objective, value) in
            self.float_rows(conn, "trial_values", "objective", "value", study)?
        {
            if let (Some(&i), Ok(objective)) = (index.get(&trial_id), usize::try_from(objective)) {
                let values = trials[i].values.get_or_insert_with(Vec::new);
                if values.len() <= objective {
                    values.resize(objective + 1, f64::NAN);
                }
                values[objective] = value;
            }
        }
        for (trial_id, step, value) in self.float_rows(
            conn,
            "trial_intermediate_values",
            "step",
            "intermediate_value",
            study,
        )? {
            if let Some(&i) = index.get(&trial_id) {
                trials[i].intermediate_values.insert(step, value);
            }
        }

        for (table, system) in [
            ("trial_user_attributes", false),
            ("trial_system_attributes", true),
        ] {
            let sql = format!(
                "SELECT a.trial_id, a.key, a.value_json FROM {table} a \
                 JOIN trials t ON t.trial_id = a.trial_id WHERE t.study_id = ?1"
            );
            let rows: Vec<(i64, Option<String>, Option<String>)> =
                self.query_rows(conn, &sql, [study.0], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
            for (trial_id, key, value) in rows {
                if let Some(&i) = index.get(&trial_id) {
                    let map = if system {
                        &mut trials[i].system_attrs
                    } else {
                        &mut trials[i].user_attrs
                    };
                    map.insert(key.unwrap_or_default(), decode_json(value));
                }
            }
        }
        Ok(trials)
    }
}
