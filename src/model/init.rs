//! Seeded parameter initialisation: PyTorch's default and Shi et al.'s IBP initialisation.

use super::ModelError;
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

/// How fresh weights are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Initialization {
    /// PyTorch's default: weights and biases uniform in ±1/√fan_in.
    #[default]
    Default,
    /// Shi et al. (2021): weights N(0, (√(2π)/fan_in)²) and zero biases for all but the last
    /// layer, which keeps IBP bounds from exploding at the start of certified training.
    Ibp,
}

/// Our own seeded generator: candle's CPU device cannot be seeded, and `--seed` must be exact.
pub(crate) struct ParameterRng {
    rng: StdRng,
}

impl ParameterRng {
    pub(crate) fn new(seed: u64) -> ParameterRng {
        ParameterRng {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Weight of shape `dims` (first axis = outputs) and bias `[dims[0]]` for one affine layer.
    pub(crate) fn affine(
        &mut self,
        init: Initialization,
        is_last: bool,
        fan_in: usize,
        dims: &[usize],
    ) -> Result<(Tensor, Tensor), ModelError> {
        let count: usize = dims.iter().product();
        let outputs = dims[0];
        let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
        let (weights, biases): (Vec<f32>, Vec<f32>) = match init {
            Initialization::Ibp if !is_last => {
                let std = (2.0 * std::f32::consts::PI).sqrt() / fan_in.max(1) as f32;
                let normal = Normal::new(0.0f32, std).expect("finite positive std");
                let weights = (0..count).map(|_| normal.sample(&mut self.rng)).collect();
                (weights, vec![0.0; outputs])
            }
            _ => {
                let weights = (0..count)
                    .map(|_| self.rng.random_range(-bound..bound))
                    .collect();
                let biases = (0..outputs)
                    .map(|_| self.rng.random_range(-bound..bound))
                    .collect();
                (weights, biases)
            }
        };
        Ok((
            Tensor::from_vec(weights, dims, &Device::Cpu)?,
            Tensor::from_vec(biases, outputs, &Device::Cpu)?,
        ))
    }
}
