//! Per-batch schedules: ε warm-up and smoothed ramp, κ and β alongside, learning-rate decays.

use super::config::TrainConfig;

/// Fraction of the ramp covered by the polynomial part of the smoothed ε schedule.
const RAMP_POLY_FRACTION: f64 = 0.25;
/// Exponent of the polynomial part.
const RAMP_POLY_EXPONENT: i32 = 4;

/// Values of every schedule at a given training step (batch index over the whole run).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduleValues {
    /// Training ε at this step (0 during warm-up).
    pub eps: f64,
    /// Share of the ramp completed, in [0, 1] (0 during warm-up).
    pub ramp_progress: f64,
    /// Natural-loss weight κ.
    pub kappa: f64,
    /// CROWN-IBP weight β.
    pub beta: f64,
    /// Learning rate.
    pub learning_rate: f64,
}

/// The schedules of one run, stepped per batch.
#[derive(Debug, Clone)]
pub struct Schedule {
    warm_up_steps: f64,
    ramp_steps: f64,
    steps_per_epoch: f64,
    train_eps: f64,
    start_kappa: f64,
    end_kappa: f64,
    end_beta: f64,
    learning_rate: f64,
    decay_factor: f64,
    decay_epochs: [f64; 2],
    uses_ramp: bool,
}

impl Schedule {
    /// Schedules for `epochs` epochs of `steps_per_epoch` batches towards certified radius `eps`.
    pub fn new(
        config: &TrainConfig,
        uses_ramp: bool,
        eps: f64,
        epochs: usize,
        steps_per_epoch: usize,
    ) -> Schedule {
        let epochs_f = epochs as f64;
        let steps_per_epoch = steps_per_epoch.max(1) as f64;
        let (warm, ramp) = if uses_ramp {
            (config.warm_up_fraction, config.ramp_up_fraction)
        } else {
            (0.0, 0.0)
        };
        let first_decay = (warm + ramp + config.lr_decay_fraction_1) * epochs_f;
        Schedule {
            warm_up_steps: (warm * epochs_f * steps_per_epoch).round(),
            ramp_steps: (ramp * epochs_f * steps_per_epoch).round(),
            steps_per_epoch,
            train_eps: eps * config.train_eps_factor,
            start_kappa: config.start_kappa,
            end_kappa: config.end_kappa,
            end_beta: config.end_beta,
            learning_rate: config.learning_rate,
            decay_factor: config.lr_decay_factor,
            decay_epochs: [
                first_decay,
                first_decay + config.lr_decay_fraction_2 * epochs_f,
            ],
            uses_ramp,
        }
    }

    /// Schedule values at batch `step` (counted from 0 over the whole run).
    pub fn at(&self, step: usize) -> ScheduleValues {
        let step = step as f64;
        let ramp_progress = if !self.uses_ramp {
            1.0
        } else if step < self.warm_up_steps {
            0.0
        } else if self.ramp_steps <= 0.0 {
            1.0
        } else {
            ((step - self.warm_up_steps + 1.0) / self.ramp_steps).clamp(0.0, 1.0)
        };
        let in_warm_up = self.uses_ramp && step < self.warm_up_steps;
        let eps = if in_warm_up {
            0.0
        } else {
            self.train_eps * smoothed_ramp(ramp_progress)
        };
        let epoch = step / self.steps_per_epoch;
        let decays = self.decay_epochs.iter().filter(|&&e| epoch >= e).count();
        ScheduleValues {
            eps,
            ramp_progress,
            kappa: self.start_kappa + (self.end_kappa - self.start_kappa) * ramp_progress,
            beta: 1.0 + (self.end_beta - 1.0) * ramp_progress,
            learning_rate: self.learning_rate * self.decay_factor.powi(decays as i32),
        }
    }

    /// The final training ε.
    pub fn train_eps(&self) -> f64 {
        self.train_eps
    }
}

/// The smoothed ramp of auto_LiRPA/CTRAIN on progress `p ∈ [0,1]`: `c·p⁴` up to a quarter of
/// the ramp, then linear to 1, continuous in value and slope.
pub fn smoothed_ramp(progress: f64) -> f64 {
    let p = progress.clamp(0.0, 1.0);
    let mid = RAMP_POLY_FRACTION;
    let k = RAMP_POLY_EXPONENT;
    let c = 1.0 / (mid.powi(k) + k as f64 * mid.powi(k - 1) * (1.0 - mid));
    if p < mid {
        c * p.powi(k)
    } else {
        c * mid.powi(k) + c * k as f64 * mid.powi(k - 1) * (p - mid)
    }
}
