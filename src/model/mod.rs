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
    /// The network's inputs are not the shape of the data it is given.
    #[error("the network expects inputs of shape {expected:?} but {dataset} images are {actual:?}")]
    InputShape {
        /// The network's `input_shape`.
        expected: [usize; 3],
        /// The shape of the data's images.
        actual: [usize; 3],
        /// The data's name.
        dataset: String,
    },
    /// The network cannot fit in this machine's memory.
    #[error(
        "the network is too large: {parameters} parameters (layer {layer} holds the most) and \
         {activations} activation values per sample need at least {needed_gb:.1} GB to train \
         with batches of {batch}, more than this machine's {available_gb:.1} GB of memory and swap"
    )]
    TooLarge {
        /// Parameters of the whole network.
        parameters: u128,
        /// The layer with the most parameters.
        layer: usize,
        /// Activation values of one sample, summed over layers.
        activations: u128,
        /// Samples per step the estimate is for.
        batch: usize,
        /// The least memory it needs, in GB.
        needed_gb: f64,
        /// Memory and swap of the machine, in GB.
        available_gb: f64,
    },
    /// A tensor operation failed (shape mismatch or similar).
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}
