//! The training methods, one file each, behind one trait.
//!
//! A method turns a clean batch into its robust loss; the epoch loop mixes it with the natural
//! loss by κ, adds regularisers and steps the optimiser.

mod crown_ibp;
mod ibp;
mod mtl_ibp;
mod pgd;
mod sabr;
mod standard;
mod taps;

pub(crate) use taps::{LINK_SLACK, LatentAttack, split_index};

use super::TrainError;
use super::backprop::{InputGradientPass, fixed_batch_norms};
use super::config::{Method, TrainConfig};
use super::schedule::ScheduleValues;
use crate::attack::{InputGradient, PgdConfig, pgd_point_through};
use crate::bounds::{
    Interval, IntervalTrace, interval_spec_bounds, interval_trace, margin_spec, robust_logits,
};
use crate::model::{BatchStatistics, Net, Normalization};
use candle_core::Tensor;
use rand::rngs::StdRng;

/// Everything a method may read while computing the loss of one batch.
pub(crate) struct StepContext<'a> {
    /// The network being trained (parameters tracked for gradients).
    pub net: &'a Net,
    /// Clean images `[B, C, H, W]`.
    pub images: &'a Tensor,
    /// Labels `[B]` (u32).
    pub labels: &'a Tensor,
    /// BatchNorm statistics of the clean batch, reused by bound passes and attacks.
    pub statistics: &'a BatchStatistics,
    /// Schedule values at this step (ε, κ, β, …).
    pub schedule: ScheduleValues,
    /// The run's hyperparameters.
    pub config: &'a TrainConfig,
    /// Seeded randomness (attack starts).
    pub rng: &'a mut StdRng,
}

/// What a method contributes for one batch.
pub(crate) struct RobustLoss {
    /// The loss (scalar) that replaces or mixes with the natural loss.
    pub loss: Tensor,
    /// The interval trace of the propagated box and that box, for Shi's regulariser.
    pub trace: Option<(IntervalTrace, Interval)>,
}

/// One training method.
pub(crate) trait TrainingMethod: Sync {
    /// The robust loss of the batch at the current ε (never called while ε = 0).
    fn robust_loss(&self, context: &mut StepContext<'_>) -> Result<RobustLoss, TrainError>;
}

/// The implementation of `method`.
pub(crate) fn implementation(method: Method) -> Box<dyn TrainingMethod> {
    match method {
        Method::Standard => Box::new(standard::Standard),
        Method::Pgd => Box::new(pgd::Pgd),
        Method::Ibp => Box::new(ibp::Ibp),
        Method::CrownIbp => Box::new(crown_ibp::CrownIbp),
        Method::Sabr => Box::new(sabr::Sabr),
        Method::Taps => Box::new(taps::Taps { small_box: false }),
        Method::Staps => Box::new(taps::Taps { small_box: true }),
        Method::MtlIbp => Box::new(mtl_ibp::MtlIbp),
    }
}

/// Cross-entropy of the worst-case logits built from margin lower bounds `[B, K−1]`.
pub(crate) fn robust_cross_entropy(
    margins: &Tensor,
    labels: &Tensor,
) -> Result<Tensor, TrainError> {
    let logits = robust_logits(margins, labels)?;
    Ok(candle_nn::loss::cross_entropy(&logits, labels)?)
}

/// IBP margin lower bounds over `input` and the trace that produced them.
pub(crate) fn ibp_margins(
    context: &StepContext<'_>,
    input: &Interval,
) -> Result<(Tensor, IntervalTrace), TrainError> {
    let normalization = Normalization::Batch(context.statistics);
    let trace = interval_trace(context.net, input, normalization)?;
    let spec = margin_spec(context.labels, context.net.num_classes())?;
    let margins = interval_spec_bounds(context.net, &trace, &spec)?.lower;
    Ok((margins, trace))
}

/// Step-size decays of SABR's centre search: ×0.1 after steps 4 and 7 (CTRAIN's defaults).
const SABR_DECAY_STEPS: [usize; 2] = [4, 7];
/// Step-size multiplier at each of [`SABR_DECAY_STEPS`].
const SABR_DECAY_FACTOR: f64 = 0.1;

/// A training attack: its radius and settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PointSearch {
    /// Radius of the ℓ∞ ball searched.
    pub radius: f64,
    /// The PGD settings.
    pub attack: PgdConfig,
}

impl PointSearch {
    /// A training PGD point inside `B(x, radius) ∩ [0,1]`: cross-entropy ascent from a random
    /// start, no early stop, the highest-loss iterate kept (CTRAIN).
    pub(crate) fn training(radius: f64, steps: usize, step_size: f64) -> PointSearch {
        PointSearch {
            radius,
            attack: PgdConfig::training(steps.max(1), step_size),
        }
    }

    /// SABR's centre search over `B(x, ε·eps_factor)`, its step size decayed as CTRAIN's.
    pub(crate) fn sabr(eps: f64, eps_factor: f64, steps: usize, step_size: f64) -> PointSearch {
        let mut search = PointSearch::training(eps * eps_factor, steps, step_size);
        search.attack = search
            .attack
            .with_decays_after_steps(&SABR_DECAY_STEPS, SABR_DECAY_FACTOR);
        search
    }

    /// The point found for `images` on the net as `network` differentiates it.
    pub(crate) fn run(
        &self,
        network: &dyn InputGradient,
        images: &Tensor,
        labels: &Tensor,
        rng: &mut StdRng,
    ) -> Result<Tensor, TrainError> {
        Ok(pgd_point_through(
            network,
            images,
            labels,
            self.radius,
            &self.attack,
            rng,
        )?)
    }
}

/// The attack point of `search` on the context's net at the clean batch's statistics, its input
/// gradients by the reverse pass's input-gradient pass.
fn attack_with(context: &mut StepContext<'_>, search: &PointSearch) -> Result<Tensor, TrainError> {
    let batch_norms = fixed_batch_norms(context.net, Normalization::Batch(context.statistics))?;
    let network = InputGradientPass::new(context.net.layers(), &batch_norms);
    search.run(&network, context.images, context.labels, context.rng)
}

/// A training PGD point of `B(x, radius)` (see [`PointSearch::training`]).
pub(crate) fn attack_point(
    context: &mut StepContext<'_>,
    radius: f64,
    steps: usize,
    step_size: f64,
) -> Result<Tensor, TrainError> {
    attack_with(context, &PointSearch::training(radius, steps, step_size))
}

/// SABR's small box: radius `λ·ε` (`ratio`) around the attack point, its centre pulled inside
/// the clipped ε-box so the small box never leaves it.
pub(crate) fn small_box_around(
    images: &Tensor,
    point: &Tensor,
    eps: f64,
    ratio: f64,
) -> Result<Interval, TrainError> {
    let full = Interval::linf_ball(images, eps)?;
    let small = eps * ratio;
    let centre = point
        .maximum(&(&full.lower + small)?)?
        .minimum(&(&full.upper - small)?)?;
    Ok(Interval {
        lower: (&centre - small)?.maximum(&full.lower)?,
        upper: (&centre + small)?.minimum(&full.upper)?,
    })
}

/// SABR's small box of the context's batch (see [`small_box_around`]) after a centre search of
/// `steps` steps of `step_size·ε` over `B(x, ε·eps_factor)`.
pub(crate) fn small_box(
    context: &mut StepContext<'_>,
    ratio: f64,
    steps: usize,
    step_size: f64,
    eps_factor: f64,
) -> Result<Interval, TrainError> {
    let eps = context.schedule.eps;
    let search = PointSearch::sabr(eps, eps_factor, steps, step_size);
    let point = attack_with(context, &search)?;
    small_box_around(context.images, &point, eps, ratio)
}
