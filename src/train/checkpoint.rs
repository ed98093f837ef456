//! Checkpoints: the weights as safetensors plus a JSON sidecar saying what they are.
//!
//! A run directory holds `model.safetensors` (PyTorch `nn.Sequential` state-dict names) and
//! `model.json`:
//! ```json
//! { "format": 1, "net": {"input_shape": [...], "layers": [...]}, "arch": "cnn-small",
//!   "dataset": "mnist", "method": "sabr", "config": {...TrainConfig...}, "eps": 0.1,
//!   "epochs": 5, "seed": 0, "train_seconds": 12.3,
//!   "metrics": {"samples": 1000, "natural_accuracy": 0.97, "adversarial_accuracy": 0.9,
//!               "certified_accuracy": 0.8} }
//! ```

use super::TrainError;
use super::config::{Method, TrainConfig};
use crate::model::{Net, NetSpec};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// File name of the weights inside a run directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// File name of the sidecar inside a run directory.
pub const SIDECAR_FILE: &str = "model.json";
const FORMAT: u32 = 1;

/// Accuracies recorded with a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMetrics {
    /// Validation samples scored.
    pub samples: usize,
    /// Natural accuracy.
    pub natural_accuracy: f64,
    /// PGD accuracy.
    pub adversarial_accuracy: f64,
    /// Certified accuracy (cascade).
    pub certified_accuracy: f64,
}

/// What a checkpoint's weights are: architecture, how they were trained, how they scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sidecar {
    /// Sidecar format version.
    pub format: u32,
    /// The network description the weights belong to.
    pub net: NetSpec,
    /// Builtin architecture name, if the net is one.
    pub arch: Option<String>,
    /// Dataset trained on.
    pub dataset: String,
    /// Training method.
    pub method: Method,
    /// Hyperparameters used.
    pub config: TrainConfig,
    /// Certified radius aimed at.
    pub eps: f64,
    /// Epochs trained.
    pub epochs: usize,
    /// Seed of the run.
    pub seed: u64,
    /// Training wall time.
    pub train_seconds: f64,
    /// Validation accuracies, when evaluated.
    pub metrics: Option<CheckpointMetrics>,
}

impl Sidecar {
    /// A sidecar for a run (metrics filled in later).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        net: &Net,
        arch: Option<String>,
        dataset: &str,
        method: Method,
        config: &TrainConfig,
        eps: f64,
        epochs: usize,
        seed: u64,
        train_seconds: f64,
    ) -> Sidecar {
        Sidecar {
            format: FORMAT,
            net: net.spec().clone(),
            arch,
            dataset: dataset.to_string(),
            method,
            config: config.clone(),
            eps,
            epochs,
            seed,
            train_seconds,
            metrics: None,
        }
    }
}

/// Writes `model.safetensors` and `model.json` into `dir` (created if missing).
pub fn save_checkpoint(dir: &Path, net: &Net, sidecar: &Sidecar) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::Checkpoint {
        path: dir.to_path_buf(),
        problem: e.to_string(),
    })?;
    net.save(&dir.join(WEIGHTS_FILE))?;
    let json =
        serde_json::to_string_pretty(sidecar).map_err(|e| TrainError::internal(e.to_string()))?;
    let path = dir.join(SIDECAR_FILE);
    std::fs::write(&path, json).map_err(|e| TrainError::Checkpoint {
        path,
        problem: e.to_string(),
    })
}

/// Where the weights and sidecar of a checkpoint path are: a run directory, or a weights file
/// with `model.json` (or `<stem>.json`) beside it.
pub fn checkpoint_files(path: &Path) -> (PathBuf, Option<PathBuf>) {
    if path.is_dir() {
        return (path.join(WEIGHTS_FILE), Some(path.join(SIDECAR_FILE)));
    }
    let beside = path.with_extension("json");
    let sibling = path.parent().map(|p| p.join(SIDECAR_FILE));
    let sidecar = [Some(beside), sibling]
        .into_iter()
        .flatten()
        .find(|p| p.is_file());
    (path.to_path_buf(), sidecar)
}

/// Reads a sidecar, naming the file on failure.
pub fn read_sidecar(path: &Path) -> Result<Sidecar, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::Checkpoint {
        path: path.to_path_buf(),
        problem: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
        path: path.to_path_buf(),
        problem: format!("not a cthpo sidecar: {e}"),
    })
}

/// Loads a checkpoint (run directory or weights file with a sidecar) and its sidecar.
pub fn load_checkpoint(path: &Path) -> Result<(Net, Sidecar), TrainError> {
    let (weights, sidecar) = checkpoint_files(path);
    let Some(sidecar_path) = sidecar.filter(|p| p.is_file()) else {
        return Err(TrainError::Checkpoint {
            path: path.to_path_buf(),
            problem: format!("no {SIDECAR_FILE} sidecar describing the architecture"),
        });
    };
    let sidecar = read_sidecar(&sidecar_path)?;
    let net = Net::load(&sidecar.net, &weights)?;
    Ok((net, sidecar))
}
