//! PGD adversarial attacks in the ℓ∞ ball, batched.
//!
//! The attack reads the network through an input-gradient source: candle autograd on a detached copy
//! of the network (evaluation), or the training reverse pass's input-gradient pass (training
//! attacks). Neither records parameter gradients nor disturbs BatchNorm statistics.

use crate::model::{ModelError, Net, Normalization};
use candle_core::{D, DType, Device, Tensor, Var};
use rand::{Rng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// The objective PGD ascends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttackLoss {
    /// Cross-entropy of the true label (the usual training attack).
    CrossEntropy,
    /// `max_{j≠y} z_j − z_y`: positive exactly when the sample is misclassified.
    Margin,
}

/// Settings of a projected-gradient-descent attack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PgdConfig {
    /// Gradient steps per restart.
    pub steps: usize,
    /// Independent runs from fresh random starts (only still-robust samples are re-attacked).
    pub restarts: usize,
    /// Step size as a multiple of ε.
    pub step_size: f64,
    /// Fractions of `steps` after which the step size is multiplied by `decay_factor`.
    pub decay_milestones: Vec<f64>,
    /// Step-size multiplier applied at each milestone.
    pub decay_factor: f64,
    /// Start from a uniformly random point of the ball (else from the clean input).
    pub random_start: bool,
    /// Stop moving a sample once it is misclassified (evaluation); training attacks run all steps.
    pub early_stop: bool,
    /// The objective ascended.
    pub loss: AttackLoss,
    /// Without early stop: return each sample's highest-loss iterate after the first step
    /// (CTRAIN's training attacks) instead of the last one.
    #[serde(default)]
    pub keep_best: bool,
}

impl PgdConfig {
    /// Evaluation default: 40 margin-loss steps, 5 restarts, step 0.2ε halved at 40/60/80 %
    /// (at least as strong as CTRAIN's 5 × 40 cross-entropy steps of 0.1ε).
    pub fn evaluation() -> PgdConfig {
        PgdConfig {
            steps: 40,
            restarts: 5,
            step_size: 0.2,
            decay_milestones: vec![0.4, 0.6, 0.8],
            decay_factor: 0.5,
            random_start: true,
            early_stop: true,
            loss: AttackLoss::Margin,
            keep_best: false,
        }
    }

    /// A cheaper evaluation attack for scores that only rank configurations (rungs below a
    /// multi-fidelity study's full budget): 10 margin-loss steps of 0.25ε from 1 random start,
    /// halved at 40/60/80 %. Weaker, so its adversarial accuracy can only be higher.
    pub fn quick_evaluation() -> PgdConfig {
        PgdConfig {
            steps: 10,
            restarts: 1,
            step_size: 0.25,
            ..PgdConfig::evaluation()
        }
    }

    /// Training attack: `steps` cross-entropy steps of `step_size·ε` from one random start, no
    /// early stop, returning each sample's highest-loss iterate (CTRAIN).
    pub fn training(steps: usize, step_size: f64) -> PgdConfig {
        PgdConfig {
            steps,
            restarts: 1,
            step_size,
            decay_milestones: Vec::new(),
            decay_factor: 1.0,
            random_start: true,
            early_stop: false,
            loss: AttackLoss::CrossEntropy,
            keep_best: true,
        }
    }

    /// The same attack with its step size multiplied by `factor` after each of the given steps
    /// (counted from 1, as CTRAIN's `decay_checkpoints`), whatever the number of steps.
    pub fn with_decays_after_steps(mut self, after: &[usize], factor: f64) -> PgdConfig {
        let steps = self.steps.max(1) as f64;
        // Milestones are fractions of `steps`; half a step early keeps rounding off the boundary.
        self.decay_milestones = after
            .iter()
            .map(|&step| (step as f64 - 0.5) / steps)
            .collect();
        self.decay_factor = factor;
        self
    }

    /// The step size of step `step` (counted from 0) of an attack of radius `eps`.
    pub fn step_size_at(&self, step: usize, eps: f64) -> f64 {
        let passed = self
            .decay_milestones
            .iter()
            .filter(|&&m| step as f64 >= m * self.steps as f64)
            .count();
        self.step_size * eps * self.decay_factor.powi(passed as i32)
    }
}

/// Outcome of an attack on a batch.
#[derive(Debug, Clone)]
pub struct AttackOutcome {
    /// For broken samples the first misclassified point found (early stop), otherwise the last
    /// iterate, or with [`PgdConfig::keep_best`] each sample's highest-loss iterate.
    pub adversarial: Tensor,
    /// Per sample: the network still classifies every point the attack tried correctly.
    pub robust: Vec<bool>,
}

/// What can go wrong while attacking.
#[derive(Debug, thiserror::Error)]
pub enum AttackError {
    /// ε must be finite and ≥ 0.
    #[error("invalid attack radius ε = {0}: it must be finite and ≥ 0")]
    InvalidEpsilon(f64),
    /// The network failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    /// The input-gradient pass failed.
    #[error("input-gradient pass failed: {0}")]
    Gradient(String),
}

/// How an attack evaluates the network and differentiates its objective in the input.
pub(crate) trait InputGradient: Sync {
    /// The logits at `x` and, with `target`, the gradient at `x` of the objective summed over
    /// the batch (each sample's gradient independent of the others').
    fn logits_and_gradient(
        &self,
        x: &Tensor,
        target: Option<(&Tensor, AttackLoss)>,
    ) -> Result<(Tensor, Option<Tensor>), AttackError>;

    /// Whether an attack may split a batch into one shard per thread and run each shard's
    /// steps under [`crate::kernels::sequentially`]: the source's kernels give each sample the
    /// same logits and gradient whatever batch it is in and on whichever thread.
    fn shards_batches(&self) -> bool {
        false
    }
}

/// Input gradients by candle autograd on a detached copy of the network.
pub(crate) struct Autograd<'a> {
    net: Net,
    normalization: Normalization<'a>,
}

impl<'a> Autograd<'a> {
    /// Autograd through `net` (detached) with BatchNorm normalising by `normalization`.
    pub(crate) fn new(net: &Net, normalization: Normalization<'a>) -> Autograd<'a> {
        Autograd {
            net: net.detached(),
            normalization,
        }
    }
}

impl InputGradient for Autograd<'_> {
    fn logits_and_gradient(
        &self,
        x: &Tensor,
        target: Option<(&Tensor, AttackLoss)>,
    ) -> Result<(Tensor, Option<Tensor>), AttackError> {
        let Some((labels, loss)) = target else {
            return Ok((self.net.forward_with(x, self.normalization)?, None));
        };
        let variable = Var::from_tensor(x)?;
        let logits = self
            .net
            .forward_with(variable.as_tensor(), self.normalization)?;
        let objective = attack_loss(&logits, labels, loss)?;
        let gradient = match objective.backward()?.get(variable.as_tensor()) {
            Some(gradient) => gradient.clone(),
            None => x.zeros_like()?,
        };
        Ok((logits.detach(), Some(gradient)))
    }
}

/// Attacks `inputs` (`[B, C, H, W]` in [0, 1], labels `[B]`) inside `B(x, eps) ∩ [0, 1]` by PGD.
pub fn pgd_attack(
    net: &Net,
    inputs: &Tensor,
    labels: &Tensor,
    eps: f64,
    config: &PgdConfig,
    rng: &mut StdRng,
) -> Result<AttackOutcome, AttackError> {
    pgd_attack_in_box(
        net,
        inputs,
        labels,
        eps,
        config,
        Normalization::Population,
        rng,
    )
}

/// PGD as [`pgd_attack`] with an explicit BatchNorm mode (training attacks may reuse the clean
/// batch's statistics).
pub fn pgd_attack_in_box(
    net: &Net,
    inputs: &Tensor,
    labels: &Tensor,
    eps: f64,
    config: &PgdConfig,
    normalization: Normalization<'_>,
    rng: &mut StdRng,
) -> Result<AttackOutcome, AttackError> {
    let network = Autograd::new(net, normalization);
    pgd_attack_through(&network, inputs, labels, eps, config, rng)
}

/// PGD as [`pgd_attack`] whose first restart starts at `starts` (same shape as `inputs`,
/// projected into the ball) instead of a random point: branch and bound attacks from the
/// points its sub-domain bounds single out.
pub fn pgd_attack_from(
    net: &Net,
    inputs: &Tensor,
    labels: &Tensor,
    eps: f64,
    starts: &Tensor,
    config: &PgdConfig,
    rng: &mut StdRng,
) -> Result<AttackOutcome, AttackError> {
    let network = Autograd::new(net, Normalization::Population);
    pgd_search(
        &network,
        (inputs, labels),
        eps,
        Some(starts),
        config,
        rng,
        true,
    )
}

/// PGD as [`pgd_attack`] on the network as `network` evaluates and differentiates it.
pub(crate) fn pgd_attack_through(
    network: &dyn InputGradient,
    inputs: &Tensor,
    labels: &Tensor,
    eps: f64,
    config: &PgdConfig,
    rng: &mut StdRng,
) -> Result<AttackOutcome, AttackError> {
    pgd_search(network, (inputs, labels), eps, None, config, rng, true)
}

/// The point [`pgd_attack_through`] returns, without classifying the clean inputs first: a
/// training attack reads the point alone, and that forward pass would be a tenth of its work.
pub(crate) fn pgd_point_through(
    network: &dyn InputGradient,
    inputs: &Tensor,
    labels: &Tensor,
    eps: f64,
    config: &PgdConfig,
    rng: &mut StdRng,
) -> Result<Tensor, AttackError> {
    Ok(pgd_search(network, (inputs, labels), eps, None, config, rng, false)?.adversarial)
}

/// The attack behind [`pgd_attack_through`]: its first restart starts at `starts` when given
/// (else as `config` says); without `classify_clean` every sample counts as robust until an
/// iterate breaks it (`robust` then says nothing of the clean input).
fn pgd_search(
    network: &dyn InputGradient,
    (inputs, labels): (&Tensor, &Tensor),
    eps: f64,
    starts: Option<&Tensor>,
    config: &PgdConfig,
    rng: &mut StdRng,
    classify_clean: bool,
) -> Result<AttackOutcome, AttackError> {
    if !eps.is_finite() || eps < 0.0 {
        return Err(AttackError::InvalidEpsilon(eps));
    }
    let inputs = inputs.detach();
    let batch = inputs.dim(0)?;
    let lower = (&inputs - eps)?.clamp(0.0, 1.0)?;
    let upper = (&inputs + eps)?.clamp(0.0, 1.0)?;
    let label_values = labels.to_dtype(DType::U32)?.to_vec1::<u32>()?;

    let mut robust: Vec<bool> = if classify_clean {
        let clean_predictions = predictions(&network.logits_and_gradient(&inputs, None)?.0)?;
        clean_predictions
            .iter()
            .zip(&label_values)
            .map(|(p, l)| p == l)
            .collect()
    } else {
        vec![true; batch]
    };
    if eps == 0.0 || config.steps == 0 {
        return Ok(AttackOutcome {
            adversarial: inputs,
            robust,
        });
    }
    let mut breaking_points: Vec<Option<Tensor>> = vec![None; batch];
    let mut last_iterate = inputs.clone();
    let keep_best = config.keep_best && !config.early_stop;
    let mut best_loss = vec![f32::NEG_INFINITY; batch];
    for restart in 0..config.restarts.max(1) {
        // Evaluation re-attacks only samples not yet broken; training attacks every sample.
        let samples: Vec<usize> = (0..batch)
            .filter(|&i| robust[i] || !config.early_stop)
            .collect();
        if samples.is_empty() {
            break;
        }
        let index = index_tensor(&samples)?;
        let (lo, hi) = (
            lower.index_select(&index, 0)?,
            upper.index_select(&index, 0)?,
        );
        let x = if let (0, Some(starts)) = (restart, starts) {
            starts.index_select(&index, 0)?.maximum(&lo)?.minimum(&hi)?
        } else if config.random_start {
            let noise: Vec<f32> = (0..lo.elem_count())
                .map(|_| rng.random_range(0.0f32..=1.0))
                .collect();
            let noise = Tensor::from_vec(noise, lo.dims(), &Device::Cpu)?;
            (&lo + noise.mul(&(&hi - &lo)?)?)?
        } else {
            inputs.index_select(&index, 0)?
        };
        let shard = |range: Range<usize>| -> Result<Shard, AttackError> {
            let rows = &samples[range.clone()];
            let (start, len) = (range.start, range.len());
            Ok(Shard {
                lower: lo.narrow(0, start, len)?,
                upper: hi.narrow(0, start, len)?,
                start: x.narrow(0, start, len)?,
                labels: rows.iter().map(|&i| label_values[i]).collect(),
                robust: rows.iter().map(|&i| robust[i]).collect(),
                // With `keep_best` every sample is attacked, so rows are samples.
                best: if keep_best {
                    Some((
                        best_loss[range].to_vec(),
                        last_iterate.narrow(0, start, len)?,
                    ))
                } else {
                    None
                },
            })
        };
        // One fork and join per restart: each thread attacks its rows through every step with
        // single-threaded kernels, its buffers in its own cache.
        let outcomes =
            crate::kernels::in_shards(samples.len(), network.shards_batches(), |range| {
                attack_shard(network, shard(range)?, eps, config)
            })?;
        let mut iterates = Vec::with_capacity(outcomes.len());
        let mut losses = Vec::with_capacity(if keep_best { batch } else { 0 });
        for (range, outcome) in outcomes {
            for ((&sample, still_robust), point) in samples[range]
                .iter()
                .zip(outcome.robust)
                .zip(outcome.breaking)
            {
                robust[sample] = still_robust;
                if point.is_some() {
                    breaking_points[sample] = point;
                }
            }
            match outcome.best {
                Some((shard_losses, iterate)) => {
                    losses.extend(shard_losses);
                    iterates.push(iterate);
                }
                None => iterates.push(outcome.last),
            }
        }
        if keep_best {
            best_loss = losses;
        }
        if !config.early_stop {
            last_iterate = Tensor::cat(&iterates, 0)?;
        }
    }
    let adversarial = if config.early_stop {
        let rows = breaking_points
            .into_iter()
            .enumerate()
            .map(|(i, point)| match point {
                Some(point) => Ok(point),
                None => inputs.narrow(0, i, 1),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Tensor::cat(&rows, 0)?
    } else {
        last_iterate
    };
    Ok(AttackOutcome {
        adversarial,
        robust,
    })
}

/// The rows of a batch one thread attacks through a restart's steps.
struct Shard {
    /// Lower corners of the rows' boxes.
    lower: Tensor,
    /// Upper corners of the rows' boxes.
    upper: Tensor,
    /// The rows' start points.
    start: Tensor,
    /// Each row's label.
    labels: Vec<u32>,
    /// Whether each row's sample is unbroken so far.
    robust: Vec<bool>,
    /// With `keep_best`: each row's highest loss so far and the iterate that reached it.
    best: Option<(Vec<f32>, Tensor)>,
}

/// What a restart's steps found for a [`Shard`]'s rows.
struct ShardOutcome {
    /// Whether each row's sample is still unbroken.
    robust: Vec<bool>,
    /// The first misclassified point of each row this restart broke.
    breaking: Vec<Option<Tensor>>,
    /// With `keep_best`: each row's highest loss and its iterate.
    best: Option<(Vec<f32>, Tensor)>,
    /// The last iterate (every row, without early stop).
    last: Tensor,
}

/// One restart's steps of PGD on a shard's rows; the rows are independent of the rest of the
/// batch, so shards may run on different threads.
fn attack_shard(
    network: &dyn InputGradient,
    shard: Shard,
    eps: f64,
    config: &PgdConfig,
) -> Result<ShardOutcome, AttackError> {
    let Shard {
        lower: mut lo,
        upper: mut hi,
        start: mut x,
        labels,
        mut robust,
        mut best,
    } = shard;
    let mut breaking = vec![None; labels.len()];
    // The shard's rows still attacked, by position in the shard.
    let mut active: Vec<usize> = (0..labels.len()).collect();
    let mut active_labels = Tensor::from_vec(labels.clone(), labels.len(), &Device::Cpu)?;
    for step in 0..=config.steps {
        let target = (step < config.steps).then_some((&active_labels, config.loss));
        let (logits, gradient) = network.logits_and_gradient(&x, target)?;
        if let Some((best_loss, best_iterate)) = &mut best
            && step > 0
        {
            // Without early stop every row stays, so logits rows are the shard's rows.
            let losses = per_sample_loss(&logits, &labels, config.loss)?;
            *best_iterate = keep_better_rows(&losses, best_loss, &x, best_iterate)?;
        }
        let predicted = predictions(&logits)?;
        let mut keep = Vec::with_capacity(active.len());
        for (row, &i) in active.iter().enumerate() {
            if predicted[row] != labels[i] {
                if robust[i] {
                    robust[i] = false;
                    breaking[i] = Some(x.narrow(0, row, 1)?);
                }
                if !config.early_stop {
                    keep.push(row);
                }
            } else {
                keep.push(row);
            }
        }
        if step == config.steps {
            break;
        }
        let gradient = gradient.ok_or_else(|| {
            AttackError::Gradient("no input gradient before the last step".into())
        })?;
        let step_size = config.step_size_at(step, eps);
        x = crate::kernels::signed_step(&x, &gradient, (&lo, &hi), step_size as f32)?;
        if keep.len() < active.len() {
            if keep.is_empty() {
                break;
            }
            let keep_index = index_tensor(&keep)?;
            lo = lo.index_select(&keep_index, 0)?;
            hi = hi.index_select(&keep_index, 0)?;
            active_labels = active_labels.index_select(&keep_index, 0)?;
            x = x.index_select(&keep_index, 0)?;
            active = keep.iter().map(|&row| active[row]).collect();
        }
    }
    Ok(ShardOutcome {
        robust,
        breaking,
        best,
        last: x,
    })
}

fn index_tensor(rows: &[usize]) -> Result<Tensor, AttackError> {
    let len = rows.len();
    let rows: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
    Ok(Tensor::from_vec(rows, len, &Device::Cpu)?)
}

/// Arg-max class of every row of a `[B, K]` logit matrix.
pub fn predictions(logits: &Tensor) -> Result<Vec<u32>, AttackError> {
    Ok(logits.argmax(D::Minus1)?.to_vec1::<u32>()?)
}

/// Rows of `candidate` whose score beats `best_scores` (higher is better) replace those of
/// `best`, and their scores are recorded: the bookkeeping of attacks that keep their best
/// iterate per row.
pub(crate) fn keep_better_rows(
    scores: &[f32],
    best_scores: &mut [f32],
    candidate: &Tensor,
    best: &Tensor,
) -> Result<Tensor, candle_core::Error> {
    let improved: Vec<bool> = scores
        .iter()
        .zip(best_scores.iter_mut())
        .map(|(&score, best)| {
            let better = score > *best;
            if better {
                *best = score;
            }
            better
        })
        .collect();
    crate::kernels::select_rows(&improved, candidate, best)
}

/// Each row's attack objective (cross-entropy or margin), for keeping the best iterate.
fn per_sample_loss(
    logits: &Tensor,
    labels: &[u32],
    loss: AttackLoss,
) -> Result<Vec<f32>, AttackError> {
    let rows = logits.to_vec2::<f32>()?;
    Ok(rows
        .iter()
        .zip(labels)
        .map(|(row, &label)| {
            let label = label as usize;
            let true_logit = row[label];
            match loss {
                AttackLoss::CrossEntropy => {
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let sum: f32 = row.iter().map(|&z| (z - max).exp()).sum();
                    max + sum.ln() - true_logit
                }
                AttackLoss::Margin => largest_other_logit(row, label) - true_logit,
            }
        })
        .collect())
}

/// Summed attack objective of a batch (summing keeps each sample's gradient independent).
fn attack_loss(logits: &Tensor, labels: &Tensor, loss: AttackLoss) -> Result<Tensor, AttackError> {
    Ok(match loss {
        AttackLoss::CrossEntropy => {
            (candle_nn::loss::cross_entropy(logits, labels)? * logits.dim(0)? as f64)?
        }
        AttackLoss::Margin => {
            let classes = logits.dim(1)?;
            let true_logit = logits.gather(&labels.unsqueeze(1)?, 1)?;
            let one_hot = candle_nn::encoding::one_hot(labels.clone(), classes, 1f32, 0f32)?;
            // Push the true class far down so the max runs over the other classes.
            let others = (logits - (one_hot * 1e9)?)?.max_keepdim(1)?;
            (others - true_logit)?.sum_all()?
        }
    })
}

/// The largest logit of a class other than `label`: the runner-up the margin loss pushes up.
pub(crate) fn largest_other_logit(row: &[f32], label: usize) -> f32 {
    row.iter()
        .enumerate()
        .filter(|&(class, _)| class != label)
        .map(|(_, &z)| z)
        .fold(f32::NEG_INFINITY, f32::max)
}
