//! Trial storage in Optuna's RDB schema (v12), on SQLite or PostgreSQL, committed as each trial
//! changes state.
//!
//! A study directory holds the default database, [`DB_FILE_NAME`] (SQLite), which may hold
//! several studies, and one checkpoint folder per trial under `<study-name>/trial-<number>/`.
//! A [`Storage`] may instead name a PostgreSQL server, which workers on many machines share;
//! checkpoints stay files under each worker's study directory. The tables are exactly
//! Optuna's (see [`schema`]), so `optuna.load_study(study_name=..., storage=...)` and
//! `optuna-dashboard` read cthpo studies, and cthpo reads studies Optuna wrote. cthpo's own
//! data lives in trial user attributes (keys in [`attrs`]) and intermediate values (one per
//! epoch).
//!
//! Every write is one short transaction (SQLite: `BEGIN IMMEDIATE`, waiting up to
//! [`BUSY_TIMEOUT`] for the lock; PostgreSQL: rows locked with `FOR UPDATE`), so several
//! processes can run trials of one study: trial numbers are assigned inside the transaction,
//! as Optuna does. The SQL that differs between the engines lives in `engine` and [`schema`].

#![warn(missing_docs)]

mod continuation;
mod distribution;
mod engine;
mod error;
mod open;
pub mod schema;
mod storage;
mod studies;
mod summary;
mod time;
mod trial_read;
mod trial_write;
mod types;

pub use continuation::Continuation;
pub use distribution::{ParamDistribution, ParamValue, json_number};
pub use engine::RECONNECT_FOR;
pub use error::StoreError;
pub use open::split_checkpoint_host;
pub use storage::{PostgresTarget, Storage};
pub use summary::{best_trial, pareto_front_indices, pareto_optimal, state_counts};
pub use time::now_utc;
pub use types::{
    Direction, StartRules, Started, StoredParam, StoredTrial, StudyId, StudyInfo, TrialHandle,
    TrialOutcome, TrialState,
};

use engine::Conn;
use serde_json::Value;
use std::path::PathBuf;
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
    /// `true` on a FAIL trial that was interrupted (Ctrl-C, killed process), not failed on its
    /// own: it does not count against the budget and its configuration runs again.
    pub const INTERRUPTED: &str = "interrupted";
    /// Multi-fidelity studies: the Hyperband bracket of the trial's configuration (0 starts at
    /// the smallest rung).
    pub const BRACKET: &str = "bracket";
    /// Multi-fidelity studies: the rung (from 0, the smallest budget) the trial trains up to.
    pub const RUNG: &str = "rung";
    /// Multi-fidelity studies: the epochs trained when the trial ends (its rung's budget).
    pub const RUNG_EPOCHS: &str = "rung_epochs";
    /// Multi-fidelity studies: the number of the PRUNED trial whose checkpoint this trial
    /// continues (a promotion to the next rung).
    pub const CONTINUES: &str = "continues_trial";
    /// Multi-fidelity studies: how the trial's values and accuracies were scored, `reached`
    /// (rungs below the full budget by default: a cheaper attack, no CROWN, at the ε the
    /// schedule has reached), `quick` (the same at the study's ε) or `full`. A
    /// promotion's copied earlier intermediate values are rung scores of the study's
    /// `rung_scoring`; quick and full scores are not comparable.
    pub const SCORING: &str = "scoring";
    /// Multi-fidelity studies: the radius ε the trial's accuracies were scored at (below the
    /// study's ε for a rung scored `reached`, at the ε its schedule had reached).
    pub const RUNG_EPS: &str = "rung_eps";
    /// Test-set evaluation of the configuration retrained by `cthpo evaluate` (a JSON object).
    pub const TEST_EVALUATION: &str = "test_evaluation";
    /// Trial *system* attribute (Optuna's key): the constraint values of a COMPLETE trial, a
    /// JSON list; the trial is feasible when every value is ≤ 0 (Optuna's convention).
    pub const CONSTRAINTS: &str = "constraints";
}

/// Handle on one study database (an SQLite file or a PostgreSQL database) and the study
/// directory that holds this process's checkpoints.
///
/// Not `Sync`: open one `Store` per thread or process; they cooperate through the database's
/// locks.
pub struct Store {
    conn: Conn,
    storage: Storage,
    dir: PathBuf,
    /// The SQLite file, or the PostgreSQL URL without password (what error messages name).
    db_path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("storage", &self.storage)
            .field("dir", &self.dir)
            .finish()
    }
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

/// Splits a float into Optuna's (value, value_type) columns.
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

/// Checks that a study name can be a folder name (at most 255 bytes) and fits Optuna's column.
pub fn validate_study_name(name: &str) -> Result<(), StoreError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 255 {
        Some("it is longer than 255 bytes, the longest folder name file systems allow")
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
    fn corrupt(&self, what: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            path: self.db_path.clone(),
            what: what.into(),
        }
    }
}
