//! Networks: serde layer lists, builtin architectures, forward passes, initialisation, safetensors I/O.

mod init;
mod io;
mod net;
mod spec;

pub use init::Initialization;
pub use net::{
    BATCH_NORM_EPS, BatchStatistics, Layer, NamedVar, Net, Normalization, ParameterSlot,
    channel_affine, channel_view_dims, parameter_slots,
};
pub use spec::{ActivationShape, BUILTIN_ARCHITECTURES, LayerSpec, NetSpec};

use std::path::PathBuf;

/// What can go wrong when describing, building, running or loading a network.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The architecture name is not one of the builtins.
    #[error("unknown architecture `{name}` (known: {known})")]
    UnknownArchitecture {
        /// The name asked for.
        name: String,
        /// The builtin names, comma separated.
        known: String,
    },
    /// The layer list does not describe a valid network.
    #[error("invalid network{}: {problem}", layer.map(|l| format!(" (layer {l})")).unwrap_or_default())]
    InvalidSpec {
        /// Index of the offending layer, when one is to blame.
        layer: Option<usize>,
        /// What is wrong.
        problem: String,
    },
    /// A network description file could not be read or parsed.
    #[error("network description {}: {problem}", path.display())]
    SpecFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A checkpoint file could not be read, written or matched to the architecture.
    #[error("checkpoint {}: {problem}", path.display())]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A tensor operation failed (shape mismatch or similar).
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}
