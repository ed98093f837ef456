//! Interval bound propagation (IBP): boxes pushed through every layer of a network.

use super::{BoundsError, Interval};
use crate::kernels::{conv2d, conv2d_bias, relu};
use crate::model::{Layer, Net, Normalization, channel_affine};
use candle_core::Tensor;

/// Interval bounds at every activation of a network for one input box.
#[derive(Debug, Clone)]
pub struct IntervalTrace {
    /// `activations[i]` bounds the input of layer `i`; the last entry bounds the logits.
    pub activations: Vec<Interval>,
}

impl IntervalTrace {
    /// Bounds on the logits.
    pub fn output(&self) -> &Interval {
        self.activations
            .last()
            .expect("a trace holds at least the input box")
    }

    /// Pre-activation bounds of every ReLU, as `(layer index, bounds at its input)`.
    pub fn relu_inputs<'a>(&'a self, net: &'a Net) -> impl Iterator<Item = (usize, &'a Interval)> {
        net.layers()
            .iter()
            .enumerate()
            .filter(|(_, layer)| matches!(layer, Layer::Relu))
            .map(move |(index, _)| (index, &self.activations[index]))
    }
}

/// Propagates an input box through the whole network with interval arithmetic.
pub fn interval_trace(
    net: &Net,
    input: &Interval,
    normalization: Normalization<'_>,
) -> Result<IntervalTrace, BoundsError> {
    interval_trace_until(net, input, normalization, net.layers().len())
}

/// Like [`interval_trace`] but stops before layer `end` (the trace then has `end + 1` entries).
pub fn interval_trace_until(
    net: &Net,
    input: &Interval,
    normalization: Normalization<'_>,
    end: usize,
) -> Result<IntervalTrace, BoundsError> {
    let mut activations = Vec::with_capacity(end + 1);
    activations.push(input.clone());
    for index in 0..end {
        let next = propagate_layer(net, index, &activations[index], normalization)?;
        activations.push(next);
    }
    Ok(IntervalTrace { activations })
}

/// Interval image of one layer: `lower ≤ layer(x) ≤ upper` for every `x` in `interval`.
pub fn propagate_layer(
    net: &Net,
    index: usize,
    interval: &Interval,
    normalization: Normalization<'_>,
) -> Result<Interval, BoundsError> {
    let layer = &net.layers()[index];
    if let Layer::Relu = layer {
        return Ok(Interval {
            lower: relu(&interval.lower)?,
            upper: relu(&interval.upper)?,
        });
    }
    if let Layer::Flatten = layer {
        return Ok(Interval {
            lower: interval.lower.flatten_from(1)?,
            upper: interval.upper.flatten_from(1)?,
        });
    }
    // Affine layers map centre and radius separately: c' = A c + b, r' = |A| r.
    let centre = ((&interval.upper + &interval.lower)? * 0.5)?;
    let radius = ((&interval.upper - &interval.lower)? * 0.5)?;
    let (centre, radius) = match layer {
        Layer::Normalize { mean, std } => {
            let scale = std.recip()?;
            let shift = (mean.neg()? / std)?;
            let zero = shift.zeros_like()?;
            (
                channel_affine(&centre, &scale, &shift)?,
                channel_affine(&radius, &scale, &zero)?,
            )
        }
        Layer::BatchNorm { .. } => {
            let (scale, shift) = net.batch_norm_affine(index, normalization)?;
            let zero = shift.zeros_like()?;
            (
                channel_affine(&centre, &scale, &shift)?,
                channel_affine(&radius, &scale.abs()?, &zero)?,
            )
        }
        Layer::Conv2d {
            weight,
            bias,
            stride,
            padding,
        } => {
            let centre = conv2d_bias(&centre, weight, bias, *stride, *padding)?;
            let radius = conv2d(&radius, &weight.abs()?, *stride, *padding)?;
            (centre, radius)
        }
        Layer::Linear { weight, bias } => {
            let centre = centre.matmul(&weight.t()?)?.broadcast_add(bias)?;
            let radius = radius.matmul(&weight.abs()?.t()?)?;
            (centre, radius)
        }
        Layer::Relu | Layer::Flatten => unreachable!("handled above"),
    };
    Ok(Interval {
        lower: (&centre - &radius)?,
        upper: (&centre + &radius)?,
    })
}

/// IBP bounds of `spec · logits` (spec `[B, S, K]`), folding the spec into a final linear layer.
///
/// Multiplying the last weight matrix by the spec before taking absolute values is tighter than
/// bounding the logits first ("last-layer elision").
pub fn interval_spec_bounds(
    net: &Net,
    trace: &IntervalTrace,
    spec: &Tensor,
) -> Result<Interval, BoundsError> {
    let last = net.layers().len() - 1;
    match &net.layers()[last] {
        Layer::Linear { weight, bias } => {
            let input = &trace.activations[last];
            let centre = ((&input.upper + &input.lower)? * 0.5)?.unsqueeze(2)?;
            let radius = ((&input.upper - &input.lower)? * 0.5)?.unsqueeze(2)?;
            let (batch, specs, classes) = spec.dims3()?;
            let rows = spec.reshape((batch * specs, classes))?;
            let folded_weight = rows
                .matmul(weight)?
                .reshape((batch, specs, weight.dim(1)?))?;
            let folded_bias = rows.matmul(&bias.unsqueeze(1)?)?.reshape((batch, specs))?;
            let centre = (folded_weight.matmul(&centre)?.squeeze(2)? + folded_bias)?;
            let radius = folded_weight.abs()?.matmul(&radius)?.squeeze(2)?;
            Ok(Interval {
                lower: (&centre - &radius)?,
                upper: (&centre + &radius)?,
            })
        }
        _ => {
            let output = trace.output();
            let positive = spec.relu()?;
            let negative = (spec - &positive)?;
            let lower_col = output.lower.unsqueeze(2)?;
            let upper_col = output.upper.unsqueeze(2)?;
            let lower = (positive.matmul(&lower_col)? + negative.matmul(&upper_col)?)?;
            let upper = (positive.matmul(&upper_col)? + negative.matmul(&lower_col)?)?;
            Ok(Interval {
                lower: lower.squeeze(2)?,
                upper: upper.squeeze(2)?,
            })
        }
    }
}
