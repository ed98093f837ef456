//! The epoch loop: batches in a seeded order, schedules per batch, the method's loss mixed with
//! the natural loss, regularisers, clipping, the update, and divergence detection.

use super::TrainError;
use super::backprop::{Objective, loss_and_gradients};
use super::config::{Method, TrainConfig};
use super::methods::{StepContext, TrainingMethod, implementation};
use super::optim::{GradientSource, Optimizer};
use super::regularizer::{l1_penalty, shi_regularizer};
use super::resume::TrainState;
use super::schedule::{Schedule, ScheduleValues, smoothed_ramp};
use crate::model::Net;
use candle_core::{DType, Tensor};
use rand::{SeedableRng, rngs::StdRng};
use std::time::Instant;

/// Run-level settings that are not hyperparameters.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOptions {
    /// Epoch budget.
    pub epochs: usize,
    /// Certified radius ε the run aims at (training ε = `train_eps_factor·ε`).
    pub eps: f64,
    /// Seed of the batch order and of the attacks' random starts.
    pub seed: u64,
}

/// Progress inside an epoch, after each batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchProgress {
    /// Epoch (from 1).
    pub epoch: usize,
    /// Batches done in this epoch.
    pub batch: usize,
    /// Batches per epoch.
    pub batches: usize,
    /// Loss of this batch.
    pub loss: f64,
    /// Training ε used for this batch.
    pub eps: f64,
}

/// Summary of one finished epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochReport {
    /// Epoch (from 1).
    pub epoch: usize,
    /// Epoch budget.
    pub epochs: usize,
    /// Mean training loss over the epoch's batches.
    pub loss: f64,
    /// Training ε at the end of the epoch.
    pub eps: f64,
    /// Learning rate at the end of the epoch.
    pub learning_rate: f64,
    /// Wall time of the epoch.
    pub seconds: f64,
    /// Training throughput.
    pub samples_per_second: f64,
}

/// What an observer wants after a batch or an epoch.
#[derive(Debug, Clone, PartialEq)]
pub enum Control {
    /// Go on training.
    Continue,
    /// Stop now with this reason (reported as [`TrainError::Stopped`]).
    Stop(String),
    /// Stop now because the user asked to (reported as [`TrainError::Interrupted`]).
    Interrupt,
}

impl Control {
    /// The error that ends training for this answer, if it is not [`Control::Continue`].
    fn stop_error(self) -> Option<TrainError> {
        match self {
            Control::Continue => None,
            Control::Stop(reason) => Some(TrainError::Stopped(reason)),
            Control::Interrupt => Some(TrainError::Interrupted),
        }
    }
}

/// Receives progress; the study driver uses it for progress bars, learning curves, time limits.
pub trait TrainObserver {
    /// Called after every batch.
    fn on_batch(&mut self, _progress: &BatchProgress) -> Control {
        Control::Continue
    }
    /// Called after every epoch with the network as it is.
    fn on_epoch(&mut self, _report: &EpochReport, _net: &Net) -> Control {
        Control::Continue
    }
    /// Called after every epoch, after [`TrainObserver::on_epoch`] (so that whatever that
    /// records for the epoch is stored before the epoch counts as done), with the network and
    /// (made on demand) the state to continue from: where a crash-safe checkpoint is written.
    fn on_epoch_state(&mut self, _net: &Net, _state: &dyn Fn() -> TrainState) -> Control {
        Control::Continue
    }
}

/// An observer that watches nothing.
pub struct NoObserver;

impl TrainObserver for NoObserver {}

/// Result of a completed run.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSummary {
    /// Every epoch's report, in order.
    pub epochs: Vec<EpochReport>,
    /// Total wall time.
    pub seconds: f64,
}

/// Trains `net` in place with `method` on `images` (`[N, C, H, W]`) and `labels` (`[N]`).
pub fn fit(
    net: &mut Net,
    method: Method,
    config: &TrainConfig,
    options: &TrainOptions,
    images: &Tensor,
    labels: &Tensor,
    observer: &mut dyn TrainObserver,
) -> Result<TrainSummary, TrainError> {
    let data = (images, labels);
    fit_epochs(
        net,
        method,
        config,
        options,
        data,
        None,
        options.epochs,
        observer,
    )
    .map(|(summary, _)| summary)
}

/// The schedules of a run of `method` on `count` training images, and its batches per epoch.
fn run_schedule(
    method: Method,
    config: &TrainConfig,
    options: &TrainOptions,
    count: usize,
) -> (Schedule, usize) {
    let steps_per_epoch = count.div_ceil(config.batch_size.min(count).max(1));
    let schedule = Schedule::new(
        config,
        method != Method::Standard,
        options.eps,
        options.epochs,
        steps_per_epoch,
    );
    (schedule, steps_per_epoch)
}

/// The share of the run's final ε (0 in warm-up, 1 once the ramp is done) that the ε schedule
/// of a run of `method` on `count` training images has reached at the last batch of epoch
/// `until`: what a rung stopped there has been trained for.
pub fn reached_eps_share(
    method: Method,
    config: &TrainConfig,
    options: &TrainOptions,
    count: usize,
    until: usize,
) -> f64 {
    let (schedule, steps_per_epoch) = run_schedule(method, config, options, count);
    let last_step = (until * steps_per_epoch).saturating_sub(1);
    smoothed_ramp(schedule.at(last_step).ramp_progress)
}

/// Trains `net` in place from the state `resume` (None: from the first epoch) up to and
/// including epoch `until` of the `options.epochs`-epoch run, with the schedules of the whole
/// run; returns the summary of the epochs trained and the state to continue from. Continuing
/// from a returned state (with the weights it was returned with) gives the weights of one
/// uninterrupted run.
#[allow(clippy::too_many_arguments)]
pub fn fit_epochs(
    net: &mut Net,
    method: Method,
    config: &TrainConfig,
    options: &TrainOptions,
    (images, labels): (&Tensor, &Tensor),
    resume: Option<TrainState>,
    until: usize,
    observer: &mut dyn TrainObserver,
) -> Result<(TrainSummary, TrainState), TrainError> {
    let from = resume.as_ref().map_or(0, |state| state.epochs_done);
    if until > options.epochs || from > until {
        return Err(TrainError::Config {
            key: "epochs".into(),
            problem: format!(
                "cannot train epochs {}..={until} of a {}-epoch run",
                from + 1,
                options.epochs
            ),
        });
    }
    config.validate()?;
    if !options.eps.is_finite() || options.eps < 0.0 {
        return Err(TrainError::Config {
            key: "eps".into(),
            problem: format!("ε = {} must be finite and ≥ 0", options.eps),
        });
    }
    let count = images.dim(0)?;
    if count == 0 || labels.dim(0)? != count {
        return Err(TrainError::Data(format!(
            "{count} training images and {} labels",
            labels.dim(0)?
        )));
    }
    if let [_, channels, height, width] = *images.dims() {
        net.spec()
            .check_input_shape([channels, height, width], "the training")?;
    } else {
        return Err(TrainError::Data(format!(
            "training images of shape {:?}, not [N, C, H, W]",
            images.dims()
        )));
    }
    net.spec().check_fits_memory(config.batch_size.min(count))?;
    let labels = labels.to_dtype(DType::U32)?;
    let start = Instant::now();
    let batch_size = config.batch_size.min(count);
    let (schedule, steps_per_epoch) = run_schedule(method, config, options, count);
    let robust = implementation(method);
    let mut optimizer = Optimizer::new(config.optimizer, config.weight_decay, net.trainable_vars());
    if let Some(state) = resume {
        optimizer.restore(state.optimizer_steps, state.moments)?;
    }
    let mut reports = Vec::with_capacity(until - from);
    for epoch in from..until {
        let epoch_start = Instant::now();
        // One generator per epoch, so a run continued from a saved state draws what an
        // uninterrupted one would.
        let mut rng = epoch_rng(options.seed, epoch);
        let batches = crate::data::shuffled_batches(
            count,
            batch_size,
            options.seed.wrapping_add(epoch as u64),
        );
        let mut loss_sum = 0.0;
        let mut values = schedule.at(epoch * steps_per_epoch);
        for (batch_index, indices) in batches.iter().enumerate() {
            values = schedule.at(epoch * steps_per_epoch + batch_index);
            let index = Tensor::from_vec(
                indices.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                indices.len(),
                &candle_core::Device::Cpu,
            )?;
            let batch = (
                images.index_select(&index, 0)?,
                labels.index_select(&index, 0)?,
            );
            let step = Step {
                method,
                config,
                values,
                train_eps: schedule.train_eps(),
                position: (epoch + 1, batch_index + 1),
                robust: robust.as_ref(),
            };
            let (net, optimizer, rng) = (&mut *net, &mut optimizer, &mut rng);
            let loss_value = on_pool(move || train_step(step, net, optimizer, rng, &batch))?;
            loss_sum += loss_value;
            let progress = BatchProgress {
                epoch: epoch + 1,
                batch: batch_index + 1,
                batches: batches.len(),
                loss: loss_value,
                eps: values.eps,
            };
            if let Some(stop) = observer.on_batch(&progress).stop_error() {
                return Err(stop);
            }
        }
        let seconds = epoch_start.elapsed().as_secs_f64();
        let report = EpochReport {
            epoch: epoch + 1,
            epochs: options.epochs,
            loss: loss_sum / batches.len().max(1) as f64,
            eps: values.eps,
            learning_rate: values.learning_rate,
            seconds,
            samples_per_second: count as f64 / seconds.max(1e-9),
        };
        if let Some(stop) = observer.on_epoch(&report, net).stop_error() {
            return Err(stop);
        }
        let state = || {
            let (optimizer_steps, moments) = optimizer.state();
            TrainState {
                epochs_done: epoch + 1,
                optimizer_steps,
                moments,
            }
        };
        if let Some(stop) = observer.on_epoch_state(net, &state).stop_error() {
            return Err(stop);
        }
        reports.push(report);
    }
    let (optimizer_steps, moments) = optimizer.state();
    let summary = TrainSummary {
        epochs: reports,
        seconds: start.elapsed().as_secs_f64(),
    };
    let state = TrainState {
        epochs_done: until,
        optimizer_steps,
        moments,
    };
    Ok((summary, state))
}

/// The random generator of epoch `epoch` (from 0) of a run seeded `seed`.
fn epoch_rng(seed: u64, epoch: usize) -> StdRng {
    StdRng::seed_from_u64(
        (seed ^ 0x5eed_a77a_c4ed).wrapping_add((epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
    )
}

/// What one training step needs besides the network, the optimiser and the random generator.
#[derive(Clone, Copy)]
struct Step<'a> {
    method: Method,
    config: &'a TrainConfig,
    values: ScheduleValues,
    train_eps: f64,
    /// (epoch, batch), from 1, for divergence reports.
    position: (usize, usize),
    robust: &'a dyn TrainingMethod,
}

/// One optimiser step on `(images, labels)`; returns the loss.
fn train_step(
    step: Step<'_>,
    net: &mut Net,
    optimizer: &mut Optimizer,
    rng: &mut StdRng,
    (batch_images, batch_labels): &(Tensor, Tensor),
) -> Result<f64, TrainError> {
    let Step {
        method,
        config,
        values,
        train_eps,
        position: (epoch, batch),
        robust,
    } = step;
    let diverged = || TrainError::Diverged { epoch, batch };
    let shi_weight = if config.shi_reg_weight > 0.0 && values.eps < train_eps {
        config.shi_reg_weight * (1.0 - values.eps / train_eps)
    } else {
        0.0
    };
    let objective = Objective::for_step(net, method, values, shi_weight, config);
    let (loss_value, grads): (f64, Box<dyn GradientSource>) = match objective {
        Some(objective) => {
            let step = loss_and_gradients(
                net,
                (batch_images, batch_labels),
                &objective,
                config.l1_reg_weight,
                rng,
            )?;
            (step.loss, Box::new(step.gradients))
        }
        None => {
            let loss = autograd_loss(
                net,
                robust,
                method,
                config,
                values,
                train_eps,
                batch_images,
                batch_labels,
                rng,
            )?;
            let value = loss.to_scalar::<f32>()? as f64;
            if !value.is_finite() {
                return Err(diverged());
            }
            (value, Box::new(loss.backward()?))
        }
    };
    if !loss_value.is_finite() {
        return Err(diverged());
    }
    let grads = grads.as_ref();
    let norm = optimizer.gradient_norm(grads)?;
    if !norm.is_finite() {
        return Err(diverged());
    }
    let scale = if config.grad_clip_norm > 0.0 && norm > config.grad_clip_norm {
        config.grad_clip_norm / norm
    } else {
        1.0
    };
    optimizer.step(grads, values.learning_rate, scale)?;
    Ok(loss_value)
}

/// Runs `work` on a worker of rayon's pool and waits for it. Parallel kernels called from a
/// worker share their work with it; called from outside the pool, each of the ~150 kernels of
/// a step injects its work, wakes the workers and blocks (≈ 570 context switches per
/// `cnn-small` IBP step, against ≈ 90 from inside). The worker runs it with its kernels split
/// across the pool even if it picked the step up while waiting inside an attack's
/// single-threaded shard (another step's, in another thread of the process), so a step's
/// rounding never depends on where it ran.
fn on_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| crate::kernels::with_pool_kernels(work))
}

/// The step's loss as a candle graph, for the steps the hand-written reverse pass does not cover.
#[allow(clippy::too_many_arguments)]
pub(super) fn autograd_loss(
    net: &mut Net,
    robust: &dyn TrainingMethod,
    method: Method,
    config: &TrainConfig,
    values: ScheduleValues,
    train_eps: f64,
    batch_images: &Tensor,
    batch_labels: &Tensor,
    rng: &mut StdRng,
) -> Result<Tensor, TrainError> {
    let (clean_logits, statistics) = net.forward_train(batch_images)?;
    let natural = candle_nn::loss::cross_entropy(&clean_logits, batch_labels)?;
    let mut loss = if method == Method::Standard || values.eps <= 0.0 {
        natural
    } else {
        let mut context = StepContext {
            net,
            images: batch_images,
            labels: batch_labels,
            statistics: &statistics,
            schedule: values,
            config,
            rng,
        };
        let robust_loss = robust.robust_loss(&mut context)?;
        let mut loss = if method.mixes_natural_loss() {
            ((natural * values.kappa)? + (robust_loss.loss * (1.0 - values.kappa))?)?
        } else {
            robust_loss.loss
        };
        if config.shi_reg_weight > 0.0
            && values.eps < train_eps
            && let Some((trace, input)) = &robust_loss.trace
            && let Some(shi) = shi_regularizer(net, trace, input)?
        {
            let intensity = config.shi_reg_weight * (1.0 - values.eps / train_eps);
            loss = (loss + (shi * intensity)?)?;
        }
        loss
    };
    if config.l1_reg_weight > 0.0 {
        loss = (loss + (l1_penalty(net)? * config.l1_reg_weight)?)?;
    }
    Ok(loss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reached_eps_share_follows_the_whole_runs_eps_schedule() {
        let config = TrainConfig {
            batch_size: 10,
            warm_up_fraction: 0.25,
            ramp_up_fraction: 0.5,
            ..TrainConfig::default()
        };
        let options = TrainOptions {
            epochs: 8,
            eps: 0.1,
            seed: 0,
        };
        // 100 images in batches of 10: 10 steps per epoch, 20 warm-up steps, 40 ramp steps.
        let share = |method, until| reached_eps_share(method, &config, &options, 100, until);
        assert_eq!(share(Method::Ibp, 1), 0.0, "still in warm-up");
        assert_eq!(share(Method::Ibp, 2), 0.0, "last warm-up step");
        let mid = share(Method::Ibp, 4);
        assert_eq!(mid, smoothed_ramp(0.5));
        assert!(mid > 0.0 && mid < 1.0);
        assert_eq!(share(Method::Ibp, 6), 1.0, "ramp done");
        assert_eq!(share(Method::Ibp, 8), 1.0);
        // Standard training has no ε schedule: always the full radius.
        assert_eq!(share(Method::Standard, 1), 1.0);
    }
}
