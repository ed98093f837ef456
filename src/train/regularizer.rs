//! Regularisers: the L1 weight penalty and Shi et al.'s IBP initialisation regulariser.

use super::TrainError;
use crate::bounds::{Interval, IntervalTrace};
use crate::model::Net;
use candle_core::{DType, Tensor};

/// Tolerance τ of Shi et al.'s regulariser.
pub(crate) const SHI_TOLERANCE: f64 = 0.5;

/// `Σ |W|` over conv and linear weights.
pub fn l1_penalty(net: &Net) -> Result<Tensor, TrainError> {
    let mut total: Option<Tensor> = None;
    for weight in net.affine_weights() {
        let term = weight.abs()?.sum_all()?;
        total = Some(match total {
            Some(t) => (t + term)?,
            None => term,
        });
    }
    Ok(match total {
        Some(t) => t,
        None => Tensor::new(0f32, &candle_core::Device::Cpu)?,
    })
}

/// Shi et al. (2021): keeps interval bounds tight and ReLUs balanced early in training.
///
/// For each ReLU with pre-activation box `[l, u]` (centre `c`, radius `r`): a tightness term
/// `relu(τ − r̄₀/r̄)/τ` (r̄₀ the mean input radius) and a balance term comparing the mean and
/// variance of stably active and stably inactive centres. Averaged over layers; terms that are
/// undefined (no stably active or no stably inactive neuron) are skipped, as in the original.
pub fn shi_regularizer(
    net: &Net,
    trace: &IntervalTrace,
    input: &Interval,
) -> Result<Option<Tensor>, TrainError> {
    let tau = SHI_TOLERANCE;
    // The input radius in the units the first non-normalising layer sees: auto_LiRPA and CTRAIN
    // normalise in the data loader, so their r̄₀ is ε/std on CIFAR-10.
    let first = net
        .layers()
        .iter()
        .take_while(|layer| matches!(layer, crate::model::Layer::Normalize { .. }))
        .count();
    let input_radius = if first == 0 {
        ((&input.upper - &input.lower)? * 0.5)?.mean_all()?.detach()
    } else {
        trace.centre_radius(first)?.1.mean_all()?.detach()
    };
    let mut tightness_terms = Vec::new();
    let mut balance_terms = Vec::new();
    for (index, bounds) in trace.relu_inputs(net)? {
        let (centre, radius) = trace.centre_radius(index)?;
        let mean_radius = radius.mean_all()?.maximum(1e-12)?;
        let tightness = ((input_radius.div(&mean_radius)?.neg()? + tau)?.relu()? / tau)?;
        tightness_terms.push(tightness);

        let active = bounds.lower.gt(0.0)?.to_dtype(DType::F32)?;
        let inactive = bounds.upper.lt(0.0)?.to_dtype(DType::F32)?;
        // The balance term needs both stably active and stably inactive neurons (the original
        // skips it otherwise); denominators are clamped so no gradient is 0·∞.
        let counts = (
            active.sum_all()?.to_scalar::<f32>()?,
            inactive.sum_all()?.to_scalar::<f32>()?,
        );
        if counts.0 == 0.0 || counts.1 == 0.0 {
            continue;
        }
        let mean_active = (centre * &active)?.mean_all()?;
        let mean_inactive = (centre * &inactive)?.mean_all()?;
        let deviation = centre.broadcast_sub(&centre.mean_all()?)?.sqr()?;
        let var_active = (&deviation * &active)?.sum_all()?;
        let var_inactive = (&deviation * &inactive)?.sum_all()?;
        let mean_ratio = mean_active.div(&mean_inactive.neg()?.maximum(1e-12)?)?;
        let var_ratio = var_active.div(&var_inactive.maximum(1e-12)?)?;
        let symmetric = |ratio: &Tensor| -> Result<Tensor, TrainError> {
            Ok(ratio.minimum(&ratio.maximum(1e-12)?.recip()?)?)
        };
        let balance = (((symmetric(&mean_ratio)?.neg()? + tau)?.relu()?
            + (symmetric(&var_ratio)?.neg()? + tau)?.relu()?)?
            / tau)?;
        if balance.to_scalar::<f32>()?.is_finite() {
            balance_terms.push(balance);
        }
    }
    if tightness_terms.is_empty() {
        return Ok(None);
    }
    let layers = tightness_terms.len() as f64;
    let mut total = (Tensor::stack(&tightness_terms, 0)?.sum_all()? / layers)?;
    if !balance_terms.is_empty() {
        total = (total + (Tensor::stack(&balance_terms, 0)?.sum_all()? / layers)?)?;
    }
    Ok(Some(total))
}
