//! The embedded certified trainer: schedules, methods, regularisers, optimisers and the epoch loop.
//!
//! `fit` trains a [`Net`](crate::model::Net) in place with one [`Method`] and a [`TrainConfig`]
//! whose keys match `spaces/*.yaml`; checkpoints pair the weights with a JSON sidecar.

mod backprop;
mod checkpoint;
mod config;
mod fit;
mod methods;
mod optim;
mod regularizer;
mod resume;
mod schedule;

pub use checkpoint::{
    CheckpointMetrics, SIDECAR_FILE, Sidecar, WEIGHTS_FILE, checkpoint_files, load_checkpoint,
    read_sidecar, save_checkpoint,
};
pub use config::{Method, OptimizerKind, TrainConfig};
pub use fit::{
    BatchProgress, Control, EpochReport, NoObserver, TrainObserver, TrainOptions, TrainSummary,
    fit, fit_epochs, reached_eps_share,
};
pub use resume::{STATE_FILE, STATE_TENSORS_FILE, TrainState};
pub use schedule::{Schedule, ScheduleValues, smoothed_ramp};

use std::path::PathBuf;

/// What can go wrong while training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The loss or the gradients became NaN or infinite.
    #[error("training diverged (non-finite loss or gradient) in epoch {epoch}, batch {batch}")]
    Diverged {
        /// Epoch (from 1).
        epoch: usize,
        /// Batch within the epoch (from 1).
        batch: usize,
    },
    /// An observer asked to stop.
    #[error("training stopped: {0}")]
    Stopped(String),
    /// An observer passed on the user's request to stop (Ctrl-C).
    #[error("training interrupted by the user")]
    Interrupted,
    /// The method name is not one of ours.
    #[error("unknown method `{name}` (known: {known})")]
    UnknownMethod {
        /// The name asked for.
        name: String,
        /// The method names.
        known: String,
    },
    /// A hyperparameter is invalid or unknown for the method.
    #[error("hyperparameter `{key}`: {problem}")]
    Config {
        /// The key.
        key: String,
        /// What is wrong.
        problem: String,
    },
    /// The training data is unusable.
    #[error("training data: {0}")]
    Data(String),
    /// A checkpoint could not be written or read.
    #[error("checkpoint {}: {problem}", path.display())]
    Checkpoint {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// An internal invariant failed (a bug).
    #[error("internal error: {0}")]
    Internal(String),
    /// The network failed.
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// Bound propagation failed.
    #[error(transparent)]
    Bounds(#[from] crate::bounds::BoundsError),
    /// An attack failed.
    #[error(transparent)]
    Attack(#[from] crate::attack::AttackError),
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

impl TrainError {
    pub(crate) fn internal(message: String) -> TrainError {
        TrainError::Internal(message)
    }
}
