//! α-CROWN: CROWN whose lower ReLU slopes are optimised per sample and specification row.
//!
//! Any lower slope `α ∈ [0, 1]` gives a valid lower line `α·x ≤ relu(x)` on an unstable neuron,
//! so every iterate of the optimisation is a sound bound and the best one seen per row is
//! returned. The slopes start at CROWN's adaptive choice (so the result is never looser than
//! CROWN on the same intermediate bounds) and climb the bound by projected Adam steps, the
//! gradient coming from candle's autograd through the backward pass. Intermediate bounds are
//! CROWN's (by default intersected with the interval ones) and stay fixed, unless
//! [`AlphaConfig::optimise_intermediate`] gives every intermediate bound its own optimisation.

use super::linear::{
    ReluBounds, backward_lower_bound_with_slopes, crown_relu_bounds, crown_relu_bounds_with,
};
use super::{BoundsError, CrownIntermediate, Interval};
use crate::kernels::{AdamMoments, AdamStep, adam_update};
use crate::model::{Layer, Net, Normalization};
use candle_core::{DType, Tensor, Var};

/// Settings of α-CROWN's slope optimisation (defaults: auto_LiRPA's `CROWN-Optimized` ones).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlphaConfig {
    /// Bound evaluations (the first is CROWN's own slopes); at least 1.
    pub iterations: usize,
    /// Adam's learning rate on the slopes.
    pub learning_rate: f64,
    /// Factor applied to the learning rate after every step.
    pub learning_rate_decay: f64,
    /// Stop optimising a sample once every row's lower bound is positive (certified).
    pub stop_when_positive: bool,
    /// How the fixed intermediate bounds are formed (`Plain` to reproduce auto_LiRPA).
    pub intermediate: CrownIntermediate,
    /// Also optimise the slopes of every intermediate bound: each unstable neuron's two bounds
    /// get their own α-CROWN run (these settings, without early stop) and are intersected with
    /// CROWN's. Tighter intermediate bounds, at one optimisation per neuron.
    pub optimise_intermediate: bool,
}

impl Default for AlphaConfig {
    fn default() -> Self {
        AlphaConfig {
            iterations: 20,
            learning_rate: 0.5,
            learning_rate_decay: 0.98,
            stop_when_positive: true,
            intermediate: CrownIntermediate::Intersected,
            optimise_intermediate: false,
        }
    }
}

/// Adam's moment decay rates and denominator guard (the usual values).
const BETA1: f32 = 0.9;
const BETA2: f32 = 0.999;
const ADAM_EPSILON: f32 = 1e-8;

/// The optimised slopes of one ReLU layer.
struct SlopeParameter {
    /// Layer index of the ReLU.
    layer: usize,
    /// Free slopes `[B, S, *shape]`, kept in [0, 1].
    alpha: Var,
    /// 1 on unstable neurons `[B, 1, *shape]` (only they take `alpha`).
    unstable: Tensor,
    /// 1 on always-active neurons `[B, 1, *shape]` (exact slope 1; inactive ones get 0).
    active: Tensor,
    moments: AdamMoments,
}

impl SlopeParameter {
    /// The slopes the backward pass uses: `alpha` on unstable neurons, exact elsewhere.
    fn effective(&self) -> Result<Tensor, BoundsError> {
        Ok(self
            .alpha
            .as_tensor()
            .broadcast_mul(&self.unstable)?
            .broadcast_add(&self.active)?)
    }
}

/// Lower bounds `[B, S]` of `spec · logits` (spec `[B, S, K]`) over `input` by α-CROWN.
pub fn alpha_crown_lower_bounds(
    net: &Net,
    input: &Interval,
    spec: &Tensor,
    config: &AlphaConfig,
    normalization: Normalization<'_>,
) -> Result<Tensor, BoundsError> {
    let net = net.detached();
    let end = net.layers().len();
    let relu_bounds = if config.optimise_intermediate {
        let per_neuron = AlphaConfig {
            stop_when_positive: false,
            optimise_intermediate: false,
            ..*config
        };
        crown_relu_bounds_with(
            &net,
            input,
            normalization,
            end,
            config.intermediate,
            Some(&per_neuron),
        )?
    } else {
        crown_relu_bounds(&net, input, normalization, end, config.intermediate)?
    };
    alpha_lower_bounds_within(&net, input, spec, &relu_bounds, config, normalization)
}

/// α-CROWN's lower bounds `[B, S]` through fixed intermediate bounds `relu_bounds` (branch and
/// bound passes bounds tightened by its splits). `net` must be detached.
pub(crate) fn alpha_lower_bounds_within(
    net: &Net,
    input: &Interval,
    spec: &Tensor,
    relu_bounds: &ReluBounds,
    config: &AlphaConfig,
    normalization: Normalization<'_>,
) -> Result<Tensor, BoundsError> {
    let end = net.layers().len();
    alpha_lower_bounds_until(net, end, input, spec, relu_bounds, config, normalization)
}

/// α-CROWN's lower bounds `[B, S]` of `spec · activation_end` through the ReLU layers before
/// `end` (their bounds in `relu_bounds`): the slope optimisation itself, also the
/// intermediate-bound step of [`AlphaConfig::optimise_intermediate`].
pub(crate) fn alpha_lower_bounds_until(
    net: &Net,
    end: usize,
    input: &Interval,
    spec: &Tensor,
    relu_bounds: &ReluBounds,
    config: &AlphaConfig,
    normalization: Normalization<'_>,
) -> Result<Tensor, BoundsError> {
    let (batch, specs) = (spec.dim(0)?, spec.dim(1)?);
    let mut parameters = slope_parameters(net, end, relu_bounds, specs)?;
    let mut best = vec![f32::NEG_INFINITY; batch * specs];
    let mut learning_rate = config.learning_rate;
    for iteration in 0..config.iterations.max(1) {
        let mut slopes: Vec<Option<Tensor>> = vec![None; end];
        for parameter in &parameters {
            slopes[parameter.layer] = Some(parameter.effective()?);
        }
        let lower = backward_lower_bound_with_slopes(
            net,
            end,
            spec.clone(),
            input,
            relu_bounds,
            &slopes,
            normalization,
        )?;
        for (kept, now) in best.iter_mut().zip(lower.flatten_all()?.to_vec1::<f32>()?) {
            *kept = kept.max(now);
        }
        // Samples still worth optimising: all of them, or those not yet certified.
        let open: Vec<f32> = best
            .chunks(specs.max(1))
            .map(|rows| {
                let certified = rows.iter().all(|&v| v > 0.0);
                if config.stop_when_positive && certified {
                    0.0
                } else {
                    1.0
                }
            })
            .collect();
        let last = iteration + 1 >= config.iterations;
        if last || parameters.is_empty() || open.iter().all(|&o| o == 0.0) {
            break;
        }
        let open = Tensor::from_vec(open, (batch, 1), spec.device())?;
        let loss = lower.broadcast_mul(&open)?.sum_all()?.neg()?;
        let gradients = loss.backward()?;
        let t = (iteration + 1) as i32;
        let step = AdamStep {
            learning_rate: learning_rate as f32,
            beta1: BETA1,
            beta2: BETA2,
            epsilon: ADAM_EPSILON,
            first_correction: 1.0 - BETA1.powi(t),
            second_correction: 1.0 - BETA2.powi(t),
            gradient_scale: 1.0,
            parameter_decay: 1.0,
            rectification: Some(1.0),
        };
        for parameter in &mut parameters {
            let Some(gradient) = gradients.get(parameter.alpha.as_tensor()) else {
                continue;
            };
            adam_update(
                parameter.alpha.as_tensor(),
                gradient,
                &mut parameter.moments,
                step,
            )?;
            // Projection onto [0, 1]: the range in which every slope is a valid lower line.
            let clamped = parameter.alpha.as_tensor().clamp(0f32, 1f32)?;
            parameter.alpha.set(&clamped)?;
        }
        learning_rate *= config.learning_rate_decay;
    }
    Ok(Tensor::from_vec(best, (batch, specs), spec.device())?)
}

/// One slope parameter per ReLU layer that has an unstable neuron in some sample, started at
/// CROWN's adaptive lower slope (1 where `u > −l`, else 0) for every specification row.
fn slope_parameters(
    net: &Net,
    end: usize,
    relu_bounds: &ReluBounds,
    specs: usize,
) -> Result<Vec<SlopeParameter>, BoundsError> {
    let mut parameters = Vec::new();
    for (layer, kind) in net.layers()[..end].iter().enumerate() {
        if !matches!(kind, Layer::Relu) {
            continue;
        }
        let bounds = relu_bounds[layer]
            .as_ref()
            .ok_or(BoundsError::MissingReluBounds { layer })?;
        let (lower, upper) = (&bounds.lower, &bounds.upper);
        let zero = lower.zeros_like()?;
        let unstable = lower.lt(&zero)?.mul(&upper.gt(&zero)?)?;
        if unstable
            .sum_all()?
            .to_dtype(DType::U32)?
            .to_scalar::<u32>()?
            == 0
        {
            continue;
        }
        let unstable = unstable.to_dtype(DType::F32)?.unsqueeze(1)?;
        let active = lower.ge(&zero)?.to_dtype(DType::F32)?.unsqueeze(1)?;
        let steep = upper
            .gt(&lower.neg()?)?
            .to_dtype(DType::F32)?
            .unsqueeze(1)?;
        let mut dims = unstable.dims().to_vec();
        dims[1] = specs;
        let start = steep.broadcast_as(dims.as_slice())?.contiguous()?;
        let moments = AdamMoments::zeros(start.elem_count());
        parameters.push(SlopeParameter {
            layer,
            alpha: Var::from_tensor(&start)?,
            unstable,
            active,
            moments,
        });
    }
    Ok(parameters)
}
