//! Opening a study directory's database: creating or checking Optuna's schema, WAL mode,
//! paths of the directory and its checkpoints, integrity checks.

use super::{BUSY_TIMEOUT, DB_FILE_NAME, Store, StoreError, schema};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::time::Duration;

impl Store {
    /// Opens the database of a study directory, creating the directory, the database and
    /// Optuna's schema if missing; an existing database must be an Optuna v12 database.
    pub fn open(dir: impl AsRef<Path>) -> Result<Store, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        if dir.exists() && !dir.is_dir() {
            return Err(StoreError::Io {
                path: dir,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotADirectory,
                    "is a file, not a study directory",
                ),
            });
        }
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

    /// Opens the database of an existing study directory for reading only: nothing is created
    /// or written (not even SQLite's `-wal`/`-shm` files when the directory is read-only), so
    /// a copy on a read-only mount or another user's database can be inspected.
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<Store, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        let db_path = dir.join(DB_FILE_NAME);
        if !db_path.is_file() {
            return Err(StoreError::Missing { path: db_path });
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let open = |target: &str| -> Result<Store, StoreError> {
            let conn = Connection::open_with_flags(target, flags).map_err(|source| {
                StoreError::Sqlite {
                    path: db_path.clone(),
                    source,
                }
            })?;
            conn.busy_timeout(BUSY_TIMEOUT)
                .map_err(|source| StoreError::Sqlite {
                    path: db_path.clone(),
                    source,
                })?;
            let store = Store {
                conn,
                dir: dir.clone(),
                db_path: db_path.clone(),
            };
            store.check_schema()?;
            Ok(store)
        };
        match open(&db_path.to_string_lossy()) {
            // A WAL database needs its `-shm` file; where it cannot be created (read-only
            // directory) and no writer has it open, SQLite reads the file as immutable.
            Err(StoreError::Sqlite { source, .. })
                if source.sqlite_error_code() == Some(rusqlite::ErrorCode::CannotOpen) =>
            {
                open(&immutable_uri(&db_path))
            }
            other => other,
        }
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
}

/// `file:PATH?immutable=1`, with the characters a URI gives meaning to escaped.
fn immutable_uri(path: &Path) -> String {
    let mut uri = String::from("file:");
    for ch in path.to_string_lossy().chars() {
        match ch {
            '%' | '?' | '#' => uri.push_str(&format!("%{:02X}", ch as u32)),
            _ => uri.push(ch),
        }
    }
    uri.push_str("?immutable=1");
    uri
}
