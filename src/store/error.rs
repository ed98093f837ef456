//! The store's error type: every variant names the database (file, or server URL without
//! password) or study name it concerns.

use super::schema;
use super::types::TrialState;
use std::path::PathBuf;

/// Errors of the store; each names the database it concerns (for PostgreSQL, `path` holds the
/// URL without password).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The study directory could not be created or read.
    #[error("{path}")]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// `open_existing` found no database.
    #[error("{path}: no study database here (run `cthpo run` first, or check --dir / --storage)")]
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
        "{storage}: Optuna schema {found}, but cthpo reads schema version {} (alembic {}); \
         upgrade it with `optuna storage upgrade --storage {storage}` if it is older",
        schema::SCHEMA_VERSION,
        schema::ALEMBIC_VERSION
    )]
    SchemaVersion {
        /// The storage URL (without password).
        storage: String,
        /// What it records.
        found: String,
    },
    /// Any other SQLite failure.
    #[error("{path}: SQLite")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The cause.
        source: rusqlite::Error,
    },
    /// Any other PostgreSQL failure.
    #[error("{location}: PostgreSQL: {error}")]
    Postgres {
        /// The server and database (URL without password).
        location: String,
        /// The cause (shown in the message: its own text already includes its causes).
        error: postgres::Error,
    },
    /// The PostgreSQL server stayed unreachable for [`crate::store::RECONNECT_FOR`].
    #[error(
        "{location}: lost the connection to the database server and could not reconnect \
         within {waited} s; stopping (a trial left RUNNING is re-run by the next worker)"
    )]
    ConnectionLost {
        /// The server and database (URL without password).
        location: String,
        /// Seconds spent trying.
        waited: u64,
        /// The last failure.
        source: Box<StoreError>,
    },
    /// A `--storage` URL cthpo cannot use (the message never repeats the password).
    #[error("invalid storage URL: {reason}")]
    InvalidStorage {
        /// What is wrong.
        reason: String,
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
