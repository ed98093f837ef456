//! Training states: what besides the weights a run needs to continue after epoch k as if it had
//! never stopped (the optimiser's moments and step count, the epochs done).
//!
//! The schedules and the batch order are functions of the epoch and the seed, and the random
//! generator of the attacks is re-seeded at every epoch, so a state saved after epoch k plus the
//! weights is everything: continuing gives the weights of an uninterrupted run, bit for bit.
//! A checkpoint directory holds the state as `train_state.safetensors` (moments) and
//! `train_state.json` (counters) beside the weights.

use super::TrainError;
use crate::kernels::AdamMoments;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// File name of the optimiser moments inside a checkpoint directory.
pub const STATE_TENSORS_FILE: &str = "train_state.safetensors";
/// File name of the training counters inside a checkpoint directory.
pub const STATE_FILE: &str = "train_state.json";
const FORMAT: u32 = 1;

/// Everything besides the weights that continuing a run needs.
#[derive(Debug, Clone)]
pub struct TrainState {
    /// Epochs already trained (the next epoch is `epochs_done + 1`).
    pub epochs_done: usize,
    /// Optimiser steps taken.
    pub optimizer_steps: i64,
    /// Adam moments, one pair per trainable variable in the network's order.
    pub moments: Vec<AdamMoments>,
}

#[derive(Serialize, Deserialize)]
struct Counters {
    format: u32,
    epochs_done: usize,
    optimizer_steps: i64,
    variables: usize,
}

impl TrainState {
    /// Writes the state into `dir` (created if missing), beside a checkpoint's weights.
    pub fn save(&self, dir: &Path) -> Result<(), TrainError> {
        let failed = |path: &Path, problem: String| TrainError::Checkpoint {
            path: path.to_path_buf(),
            problem,
        };
        std::fs::create_dir_all(dir).map_err(|e| failed(dir, e.to_string()))?;
        let mut tensors = HashMap::new();
        for (index, moments) in self.moments.iter().enumerate() {
            let (first, second) = moments.parts();
            tensors.insert(
                format!("first.{index}"),
                Tensor::from_slice(first, first.len(), &Device::Cpu)?,
            );
            tensors.insert(
                format!("second.{index}"),
                Tensor::from_slice(second, second.len(), &Device::Cpu)?,
            );
        }
        let tensor_path = dir.join(STATE_TENSORS_FILE);
        candle_core::safetensors::save(&tensors, &tensor_path)
            .map_err(|e| failed(&tensor_path, e.to_string()))?;
        let counters = Counters {
            format: FORMAT,
            epochs_done: self.epochs_done,
            optimizer_steps: self.optimizer_steps,
            variables: self.moments.len(),
        };
        let json = serde_json::to_string_pretty(&counters)
            .map_err(|e| TrainError::internal(e.to_string()))?;
        let path = dir.join(STATE_FILE);
        std::fs::write(&path, json).map_err(|e| failed(&path, e.to_string()))
    }

    /// Reads the state saved in `dir`, naming the file and the problem on failure.
    pub fn load(dir: &Path) -> Result<TrainState, TrainError> {
        let path = dir.join(STATE_FILE);
        let failed = |path: &Path, problem: String| TrainError::Checkpoint {
            path: path.to_path_buf(),
            problem,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| failed(&path, e.to_string()))?;
        let counters: Counters = serde_json::from_str(&text)
            .map_err(|e| failed(&path, format!("not a cthpo training state: {e}")))?;
        if counters.format != FORMAT {
            return Err(failed(
                &path,
                format!("training state format {}, not {FORMAT}", counters.format),
            ));
        }
        let tensor_path = dir.join(STATE_TENSORS_FILE);
        let mut tensors =
            candle_core::safetensors::load(&tensor_path, &Device::Cpu).map_err(|e| {
                failed(
                    &tensor_path,
                    format!("not a readable safetensors file: {e}"),
                )
            })?;
        let mut moments = Vec::with_capacity(counters.variables);
        for index in 0..counters.variables {
            let mut take = |name: String| -> Result<Vec<f32>, TrainError> {
                let tensor = tensors
                    .remove(&name)
                    .ok_or_else(|| failed(&tensor_path, format!("missing key {name}")))?;
                Ok(tensor.flatten_all()?.to_vec1::<f32>()?)
            };
            let first = take(format!("first.{index}"))?;
            let second = take(format!("second.{index}"))?;
            if first.len() != second.len() {
                return Err(failed(
                    &tensor_path,
                    format!(
                        "moments {index} of {} and {} values",
                        first.len(),
                        second.len()
                    ),
                ));
            }
            moments.push(AdamMoments::from_parts(first, second));
        }
        Ok(TrainState {
            epochs_done: counters.epochs_done,
            optimizer_steps: counters.optimizer_steps,
            moments,
        })
    }
}
