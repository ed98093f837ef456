//! The study driver: ask → train → score → store → tell, with budgets, failure isolation and resume.

mod driver;
mod fidelity;
mod progress;
mod rungs;
mod spec;
mod trial;

pub use driver::{
    HEARTBEAT_EVERY, INTERRUPTED, SPEC_ATTRIBUTE, STALE_AFTER_BEATS, StudyDisplay, StudyOutcome,
    Workspace, run_study,
};

pub use fidelity::{
    Bracket, Fidelity, FidelityKind, REACHED_EPS_FLOOR, RungEntry, RungScoring, next_promotion,
    promotion_order,
};

pub use spec::{
    ObjectiveKind, ObjectiveWeights, StudyFile, StudySpec, SurrogateKind, absolute_path,
    canonical_dataset, default_study_name, parse_duration,
};

pub use progress::{PROGRESS_DIR, RESUMED_AT_EPOCH, RESUMED_FROM, latest as latest_progress};

pub use trial::{Segment, StudyData, TrialFailure, TrialHooks, TrialScores, run_trial};

use crate::data::DataError;
use crate::store::StoreError;
use std::path::PathBuf;
use std::time::Duration;

/// A boxed error kept as the cause of a [`StudyError`].
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// What can go wrong when setting up or running a study.
#[derive(Debug, thiserror::Error)]
pub enum StudyError {
    /// A study file could not be read or parsed.
    #[error("study file {}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong reading or parsing it.
        source: Cause,
    },
    /// The study database failed.
    #[error("store")]
    Store(#[from] StoreError),
    /// The dataset could not be loaded.
    #[error("data")]
    Data(#[from] DataError),
    /// The resolved study settings could not be written as JSON for the database.
    #[error("study settings as JSON")]
    SpecJson(#[from] serde_json::Error),
    /// A study setting is invalid.
    #[error("invalid study setting `{field}`: {problem}")]
    Invalid {
        /// The setting (study-file field or command-line flag).
        field: String,
        /// What is wrong.
        problem: String,
    },
    /// A study setting was refused by the module that uses it (space, network, dataset).
    #[error("invalid study setting `{field}`")]
    Setting {
        /// The setting (study-file field or command-line flag).
        field: String,
        /// The refusal.
        source: Cause,
    },
}

impl StudyError {
    pub(crate) fn invalid(field: &str, problem: String) -> StudyError {
        StudyError::Invalid {
            field: field.to_string(),
            problem,
        }
    }

    /// A setting refused with `cause`, which stays the error's source.
    pub(crate) fn setting(field: &str, cause: impl Into<Cause>) -> StudyError {
        StudyError::Setting {
            field: field.to_string(),
            source: cause.into(),
        }
    }
}

/// `1h02m`, `3m05s` or `12.3s`: durations as people read them in progress lines and errors.
pub fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs_f64();
    if seconds < 60.0 {
        return format!("{seconds:.1}s");
    }
    let total = seconds.round() as u64;
    let (hours, minutes, rest) = (total / 3600, (total % 3600) / 60, total % 60);
    if hours > 0 {
        format!("{hours}h{minutes:02}m")
    } else {
        format!("{minutes}m{rest:02}s")
    }
}
