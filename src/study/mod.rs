//! The study driver: ask → train → score → store → tell, with budgets, failure isolation and resume.

mod spec;

pub use spec::{
    ObjectiveKind, ObjectiveWeights, StudyFile, StudySpec, SurrogateKind, default_study_name,
    parse_duration,
};

use std::path::PathBuf;

/// What can go wrong when setting up or running a study.
#[derive(Debug, thiserror::Error)]
pub enum StudyError {
    /// A study file could not be read or parsed.
    #[error("study file {}: {problem}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A study setting is invalid.
    #[error("invalid study setting `{field}`: {problem}")]
    Invalid {
        /// The setting (study-file field or command-line flag).
        field: String,
        /// What is wrong.
        problem: String,
    },
}

impl StudyError {
    pub(crate) fn invalid(field: &str, problem: String) -> StudyError {
        StudyError::Invalid {
            field: field.to_string(),
            problem,
        }
    }
}
