//! TAPS (Mao et al.) and STAPS: IBP through a feature extractor, PGD inside the latent box.
//!
//! The network is split after a ReLU: IBP bounds the extractor's output by a box; for every
//! class `j ≠ y` a PGD attack inside that box finds a latent point estimating the worst margin
//! `z_y − z_j` of the classifier. The latent points are tied back to the box bounds by the
//! "rectified linear gradient link" so training tightens the box where the attacks pushed on
//! its faces. The loss is `GradExpander(L_TAPS, α) · L_IBP`. STAPS runs it on SABR's small box.

use super::{RobustLoss, StepContext, TrainingMethod, robust_cross_entropy, small_box};
use crate::bounds::{Interval, interval_spec_bounds, interval_trace, margin_spec};
use crate::model::{Layer, Net, Normalization};
use crate::train::TrainError;
use candle_core::{DType, Device, Tensor, Var};

/// Width share of the box, at each face, inside which the gradient link is active (CTRAIN: 0.5).
const LINK_SLACK: f64 = 0.5;

/// TAPS, or STAPS when `small_box` is set.
pub(crate) struct Taps {
    pub small_box: bool,
}

/// Index of the first classifier layer for a split point in (0, 1): the layers after one of
/// the network's ReLUs, chosen by position among them.
pub(crate) fn split_index(net: &Net, split_point: f64) -> Result<usize, TrainError> {
    let after_relu: Vec<usize> = net
        .layers()
        .iter()
        .enumerate()
        .filter(|(_, layer)| matches!(layer, Layer::Relu))
        .map(|(index, _)| index + 1)
        .collect();
    if after_relu.is_empty() {
        return Err(TrainError::Config {
            key: "block_split_point".into(),
            problem: "TAPS needs a network with at least one ReLU to split at".into(),
        });
    }
    let position = (split_point * (after_relu.len() - 1) as f64).round() as usize;
    Ok(after_relu[position.min(after_relu.len() - 1)])
}

/// `GradExpander(x, α)`: the value of `x` with its gradient multiplied by α.
fn grad_expander(x: &Tensor, alpha: f64) -> Result<Tensor, TrainError> {
    Ok(((x * alpha)? - (x.detach() * (alpha - 1.0))?)?)
}

impl TrainingMethod for Taps {
    fn robust_loss(&self, context: &mut StepContext<'_>) -> Result<RobustLoss, TrainError> {
        let config = context.config;
        let input = if self.small_box {
            let (ratio, steps, alpha, factor) = (
                config.sabr_subselection_ratio,
                config.sabr_pgd_steps,
                config.sabr_pgd_alpha,
                config.sabr_pgd_eps_factor,
            );
            small_box(context, ratio, steps, alpha, factor)?
        } else {
            Interval::linf_ball(context.images, context.schedule.eps)?
        };
        let net = context.net;
        let normalization = Normalization::Batch(context.statistics);
        let split = split_index(net, config.block_split_point)?;
        let classes = net.num_classes();
        let trace = interval_trace(net, &input, normalization)?;
        let spec = margin_spec(context.labels, classes)?;
        let ibp_margins = interval_spec_bounds(net, &trace, &spec)?.lower;
        let ibp_loss = robust_cross_entropy(&ibp_margins, context.labels)?;

        // One latent box per (sample, other class): rows b·(K−1) + r.
        let batch = context.labels.dim(0)?;
        let rows = classes - 1;
        let repeat: Vec<u32> = (0..batch as u32)
            .flat_map(|b| std::iter::repeat_n(b, rows))
            .collect();
        let repeat = Tensor::from_vec(repeat, batch * rows, &Device::Cpu)?;
        let latent = trace.activation(split)?;
        let lower = latent.lower.index_select(&repeat, 0)?;
        let upper = latent.upper.index_select(&repeat, 0)?;
        let row_spec = spec.reshape((batch * rows, classes))?;

        let pivot = latent_attack(
            net,
            split,
            &lower.detach(),
            &upper.detach(),
            &row_spec,
            config.pgd_steps,
            config.pgd_alpha,
            &context.statistics.detached(),
        )?;
        let linked = gradient_link(&pivot, &lower, &upper)?;
        let logits = net.forward_range(&linked, split, net.layers().len(), normalization)?;
        let margins = row_spec
            .unsqueeze(1)?
            .matmul(&logits.unsqueeze(2)?)?
            .reshape((batch, rows))?;
        let taps_loss = robust_cross_entropy(&margins, context.labels)?;
        let loss = (grad_expander(&taps_loss, config.gradient_expansion_alpha)? * ibp_loss)?;
        Ok(RobustLoss {
            loss,
            trace: Some((trace, input)),
        })
    }
}

/// PGD inside `[lower, upper]` minimising each row's margin `spec_row · classifier(z)`.
#[allow(clippy::too_many_arguments)]
fn latent_attack(
    net: &Net,
    split: usize,
    lower: &Tensor,
    upper: &Tensor,
    row_spec: &Tensor,
    steps: usize,
    step_factor: f64,
    statistics: &crate::model::BatchStatistics,
) -> Result<Tensor, TrainError> {
    let detached = net.detached();
    let normalization = Normalization::Batch(statistics);
    let end = net.layers().len();
    let step = ((upper - lower)? * (0.5 * step_factor))?;
    let mut z = ((upper + lower)? * 0.5)?;
    for _ in 0..steps.max(1) {
        let variable = Var::from_tensor(&z)?;
        let logits = detached.forward_range(variable.as_tensor(), split, end, normalization)?;
        let margin = (row_spec * logits)?.sum_all()?;
        let gradient = match margin.backward()?.get(variable.as_tensor()) {
            Some(g) => g.clone(),
            None => break,
        };
        z = (z - gradient.sign()?.mul(&step)?)?
            .maximum(lower)?
            .minimum(upper)?;
    }
    Ok(z.detach())
}

/// `z + g·(u − u.detach()) + h·(l − l.detach())`: the value of the pivot `z`, with gradient
/// flowing to the box face it presses against (weights `g`, `h` computed without gradient).
fn gradient_link(pivot: &Tensor, lower: &Tensor, upper: &Tensor) -> Result<Tensor, TrainError> {
    let (l, u) = (lower.detach(), upper.detach());
    let slack = ((&u - &l)? * LINK_SLACK)?;
    let positive = slack.gt(0.0)?.to_dtype(DType::F32)?;
    let safe_slack = (&slack + (positive.ones_like()? - &positive)?)?; // 1 where the width is 0
    let upper_start = (&u - &slack)?;
    let lower_end = (&l + &slack)?;
    let upper_weight = ((pivot - &upper_start)?.relu()? / &safe_slack)?.mul(&positive)?;
    let lower_weight = ((&lower_end - pivot)?.relu()? / &safe_slack)?.mul(&positive)?;
    let upper_delta = (upper - &u)?;
    let lower_delta = (lower - &l)?;
    Ok(((pivot + upper_weight.mul(&upper_delta)?)? + lower_weight.mul(&lower_delta)?)?)
}
