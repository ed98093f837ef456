//! Adam, AdamW and RAdam over candle `Var`s, with global-norm gradient clipping.

use super::TrainError;
use super::backprop::Gradients;
use super::config::OptimizerKind;
use crate::kernels::{AdamMoments, AdamStep, adam_update, sum_of_squares};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPSILON: f64 = 1e-8;

/// Where the optimiser reads each parameter's gradient: candle's autograd or the hand-written
/// reverse pass.
pub trait GradientSource {
    /// The gradient of `parameter`, if the loss depends on it.
    fn gradient(&self, parameter: &Tensor) -> Option<&Tensor>;
}

impl GradientSource for GradStore {
    fn gradient(&self, parameter: &Tensor) -> Option<&Tensor> {
        self.get(parameter)
    }
}

impl GradientSource for Gradients {
    fn gradient(&self, parameter: &Tensor) -> Option<&Tensor> {
        self.get(parameter)
    }
}

/// Moment estimates and step count of one run's optimiser.
pub struct Optimizer {
    kind: OptimizerKind,
    weight_decay: f64,
    vars: Vec<Var>,
    moments: Vec<AdamMoments>,
    steps: i32,
}

impl Optimizer {
    /// A fresh optimiser over `vars`.
    pub fn new(kind: OptimizerKind, weight_decay: f64, vars: Vec<Var>) -> Optimizer {
        let moments = vars
            .iter()
            .map(|v| AdamMoments::zeros(v.as_tensor().elem_count()))
            .collect();
        Optimizer {
            kind,
            weight_decay,
            moments,
            vars,
            steps: 0,
        }
    }

    /// Steps taken and moment estimates, what a saved training state holds.
    pub(super) fn state(&self) -> (i64, Vec<AdamMoments>) {
        (i64::from(self.steps), self.moments.clone())
    }

    /// Continues from a saved state: `steps` taken and one moment pair per variable.
    pub(super) fn restore(
        &mut self,
        steps: i64,
        moments: Vec<AdamMoments>,
    ) -> Result<(), TrainError> {
        let fits = moments.len() == self.vars.len()
            && moments
                .iter()
                .zip(&self.vars)
                .all(|(m, v)| m.parts().0.len() == v.as_tensor().elem_count());
        if !fits {
            return Err(TrainError::internal(format!(
                "a training state of {} moment pairs does not fit an optimiser of {} variables \
                 of these sizes",
                moments.len(),
                self.vars.len()
            )));
        }
        self.steps = i32::try_from(steps)
            .map_err(|_| TrainError::internal(format!("{steps} optimiser steps")))?;
        self.moments = moments;
        Ok(())
    }

    /// Global L2 norm of the gradients (vars without a gradient count as zero).
    pub fn gradient_norm(&self, grads: &dyn GradientSource) -> Result<f64, TrainError> {
        let mut total = 0.0f64;
        for var in &self.vars {
            if let Some(g) = grads.gradient(var.as_tensor()) {
                total += sum_of_squares(g)?;
            }
        }
        Ok(total.sqrt())
    }

    /// One update with learning rate `lr`, gradients first scaled by `scale` (clipping).
    pub fn step(
        &mut self,
        grads: &dyn GradientSource,
        lr: f64,
        scale: f64,
    ) -> Result<(), TrainError> {
        self.steps += 1;
        let t = self.steps;
        let first_correction = 1.0 - BETA1.powi(t);
        let second_correction = 1.0 - BETA2.powi(t);
        let rectification = match self.kind {
            OptimizerKind::Adam | OptimizerKind::Adamw => Some(1.0),
            OptimizerKind::Radam => {
                let rho_inf = 2.0 / (1.0 - BETA2) - 1.0;
                let rho = rho_inf - 2.0 * t as f64 * BETA2.powi(t) / second_correction;
                // RAdam takes plain momentum steps until the variance estimate is tractable.
                (rho > 5.0).then(|| {
                    ((rho - 4.0) * (rho - 2.0) * rho_inf
                        / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho))
                        .sqrt()
                })
            }
        };
        let parameter_decay = if self.kind == OptimizerKind::Adamw {
            1.0 - lr * self.weight_decay
        } else {
            1.0
        };
        let step = AdamStep {
            learning_rate: lr as f32,
            beta1: BETA1 as f32,
            beta2: BETA2 as f32,
            epsilon: EPSILON as f32,
            first_correction: first_correction as f32,
            second_correction: second_correction as f32,
            gradient_scale: scale as f32,
            parameter_decay: parameter_decay as f32,
            rectification: rectification.map(|r| r as f32),
        };
        for (var, moments) in self.vars.iter().zip(&mut self.moments) {
            let Some(grad) = grads.gradient(var.as_tensor()) else {
                continue;
            };
            adam_update(var.as_tensor(), grad, moments, step)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// Adam, AdamW and RAdam as written in their papers, one scalar at a time in f64.
    fn reference(kind: OptimizerKind, weight_decay: f64, grads: &[Vec<f64>], lr: f64) -> Vec<f64> {
        let n = grads[0].len();
        let (mut p, mut m, mut v) = (vec![0.5; n], vec![0.0; n], vec![0.0; n]);
        let rho_inf = 2.0 / (1.0 - BETA2) - 1.0;
        for (step, g) in grads.iter().enumerate() {
            let t = (step + 1) as f64;
            for i in 0..n {
                m[i] = BETA1 * m[i] + (1.0 - BETA1) * g[i];
                v[i] = BETA2 * v[i] + (1.0 - BETA2) * g[i] * g[i];
                let m_hat = m[i] / (1.0 - BETA1.powf(t));
                let v_hat = v[i] / (1.0 - BETA2.powf(t));
                let adaptive = m_hat / (v_hat.sqrt() + EPSILON);
                let update = match kind {
                    OptimizerKind::Adam | OptimizerKind::Adamw => adaptive,
                    OptimizerKind::Radam => {
                        let rho = rho_inf - 2.0 * t * BETA2.powf(t) / (1.0 - BETA2.powf(t));
                        if rho > 5.0 {
                            adaptive
                                * ((rho - 4.0) * (rho - 2.0) * rho_inf
                                    / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho))
                                    .sqrt()
                        } else {
                            m_hat
                        }
                    }
                };
                if kind == OptimizerKind::Adamw {
                    p[i] *= 1.0 - lr * weight_decay;
                }
                p[i] -= lr * update;
            }
        }
        p
    }

    #[test]
    fn fused_steps_follow_the_published_update_rules() {
        let n = 5000;
        let grads: Vec<Vec<f64>> = (0..12)
            .map(|s| {
                (0..n)
                    .map(|i| ((i * 7 + s * 13) % 23) as f64 / 11.0 - 1.0)
                    .collect()
            })
            .collect();
        for kind in [
            OptimizerKind::Adam,
            OptimizerKind::Adamw,
            OptimizerKind::Radam,
        ] {
            let var = Var::from_tensor(&Tensor::full(0.5f32, n, &Device::Cpu).unwrap()).unwrap();
            let mut optimizer = Optimizer::new(kind, 0.01, vec![var.clone()]);
            for g in &grads {
                let loss = (var.as_tensor()
                    * Tensor::new(
                        g.iter().map(|&x| x as f32).collect::<Vec<_>>(),
                        &Device::Cpu,
                    )
                    .unwrap())
                .unwrap()
                .sum_all()
                .unwrap();
                let store = loss.backward().unwrap();
                optimizer.step(&store, 0.01, 1.0).unwrap();
            }
            let expected = reference(kind, 0.01, &grads, 0.01);
            let actual = var.as_tensor().to_vec1::<f32>().unwrap();
            let worst = actual
                .iter()
                .zip(&expected)
                .map(|(a, e)| (*a as f64 - e).abs())
                .fold(0.0, f64::max);
            assert!(worst < 1e-5, "{kind:?}: parameters differ by up to {worst}");
            assert!(
                actual
                    .iter()
                    .zip(&expected)
                    .any(|(a, _)| (*a - 0.5).abs() > 0.01),
                "{kind:?}: parameters did not move"
            );
        }
    }

    #[test]
    fn gradient_norm_is_the_global_l2_norm_over_all_variables() {
        let a = Var::from_tensor(&Tensor::new(&[3f32, 0.0], &Device::Cpu).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::new(&[0f32, 0.0], &Device::Cpu).unwrap()).unwrap();
        let loss = ((a.as_tensor().sum_all().unwrap() * 3.0).unwrap()
            + (b.as_tensor().sum_all().unwrap() * 2.0).unwrap())
        .unwrap();
        let store = loss.backward().unwrap();
        let optimizer = Optimizer::new(OptimizerKind::Adam, 0.0, vec![a, b]);
        // Gradients (3, 3) and (2, 2): norm √26.
        let norm = optimizer.gradient_norm(&store).unwrap();
        assert!((norm - 26f64.sqrt()).abs() < 1e-6, "{norm}");
    }
}
