//! Adam, AdamW and RAdam over candle `Var`s, with global-norm gradient clipping.

use super::TrainError;
use super::config::OptimizerKind;
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPSILON: f64 = 1e-8;

/// Moment estimates and step count of one run's optimiser.
pub struct Optimizer {
    kind: OptimizerKind,
    weight_decay: f64,
    vars: Vec<Var>,
    first_moments: Vec<Tensor>,
    second_moments: Vec<Tensor>,
    steps: i32,
}

impl Optimizer {
    /// A fresh optimiser over `vars`.
    pub fn new(
        kind: OptimizerKind,
        weight_decay: f64,
        vars: Vec<Var>,
    ) -> Result<Optimizer, TrainError> {
        let zeros = vars
            .iter()
            .map(|v| v.as_tensor().zeros_like())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Optimizer {
            kind,
            weight_decay,
            first_moments: zeros.clone(),
            second_moments: zeros,
            vars,
            steps: 0,
        })
    }

    /// Global L2 norm of the gradients (vars without a gradient count as zero).
    pub fn gradient_norm(&self, grads: &GradStore) -> Result<f64, TrainError> {
        let mut total = 0.0f64;
        for var in &self.vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                total += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            }
        }
        Ok(total.sqrt())
    }

    /// One update with learning rate `lr`, gradients first scaled by `scale` (clipping).
    pub fn step(&mut self, grads: &GradStore, lr: f64, scale: f64) -> Result<(), TrainError> {
        self.steps += 1;
        let t = self.steps;
        let bias1 = 1.0 - BETA1.powi(t);
        let bias2 = 1.0 - BETA2.powi(t);
        for (i, var) in self.vars.iter().enumerate() {
            let Some(grad) = grads.get(var.as_tensor()) else {
                continue;
            };
            // Gradients may still reference the graph they came from; updates must not.
            let grad = grad.detach();
            let grad = if scale != 1.0 { (grad * scale)? } else { grad };
            let m = ((&self.first_moments[i] * BETA1)? + (&grad * (1.0 - BETA1))?)?;
            let v = ((&self.second_moments[i] * BETA2)? + (grad.sqr()? * (1.0 - BETA2))?)?;
            let m_hat = (&m / bias1)?;
            let adaptive = || -> Result<Tensor, TrainError> {
                Ok(m_hat.div(&((&v / bias2)?.sqrt()? + EPSILON)?)?)
            };
            let update = match self.kind {
                OptimizerKind::Adam | OptimizerKind::Adamw => adaptive()?,
                OptimizerKind::Radam => {
                    let rho_inf = 2.0 / (1.0 - BETA2) - 1.0;
                    let rho = rho_inf - 2.0 * t as f64 * BETA2.powi(t) / bias2;
                    if rho > 5.0 {
                        let r = ((rho - 4.0) * (rho - 2.0) * rho_inf
                            / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho))
                            .sqrt();
                        (adaptive()? * r)?
                    } else {
                        m_hat.clone()
                    }
                }
            };
            let current = var.as_tensor().detach();
            let decayed = if self.kind == OptimizerKind::Adamw && self.weight_decay > 0.0 {
                (&current * (1.0 - lr * self.weight_decay))?
            } else {
                current
            };
            var.set(&(decayed - (update * lr)?)?)?;
            self.first_moments[i] = m;
            self.second_moments[i] = v;
        }
        Ok(())
    }
}
