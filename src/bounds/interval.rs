//! Interval bound propagation (IBP): boxes pushed through every layer of a network.

use super::{BoundsError, Interval};
use crate::kernels::{
    abs_linear, conv2d, conv2d_bias, linear, relu, relu_box_centre, relu_box_radius,
};
use crate::model::{Layer, Net, Normalization, channel_affine};
use candle_core::Tensor;
use std::cell::OnceCell;

/// Interval bounds at every activation of a network for one input box.
///
/// Boxes travel through the network as centre and radius, the form affine layers and the fused
/// ReLU ops need; the lower and upper bounds of an activation are only formed when asked for,
/// so a training step whose loss reads only the logits never pays for them, in either pass.
#[derive(Debug, Clone)]
pub struct IntervalTrace {
    /// `entries[i]` bounds the input of layer `i`; the last entry bounds the logits.
    entries: Vec<TraceEntry>,
}

/// One activation's box, in whichever forms have been computed.
#[derive(Debug, Clone)]
struct TraceEntry {
    centre_radius: OnceCell<(Tensor, Tensor)>,
    bounds: OnceCell<Interval>,
    /// How the bounds follow when only the centre and radius are known.
    origin: Origin,
}

/// How an entry's bounds are formed from what is known.
#[derive(Debug, Clone, Copy)]
enum Origin {
    /// Given as bounds (the input box).
    Given,
    /// `centre ∓ radius` (outputs of affine layers).
    CentreRadius,
    /// The ReLU of entry `i`'s bounds (exactly what the ReLU does to a box).
    ReluOf(usize),
    /// Entry `i`'s bounds, flattened.
    FlattenOf(usize),
}

impl IntervalTrace {
    /// Number of activations bounded (layers + 1).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the trace holds no activation (never, for a built trace).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bounds on the input of layer `index` (`index == layers` for the logits).
    pub fn activation(&self, index: usize) -> Result<&Interval, BoundsError> {
        let entry = self.entry(index)?;
        if let Some(bounds) = entry.bounds.get() {
            return Ok(bounds);
        }
        let bounds = match entry.origin {
            Origin::Given | Origin::CentreRadius => {
                let (centre, radius) = self.centre_radius(index)?;
                Interval {
                    lower: (centre - radius)?,
                    upper: (centre + radius)?,
                }
            }
            Origin::ReluOf(source) => {
                let before = self.activation(source)?;
                Interval {
                    lower: relu(&before.lower)?,
                    upper: relu(&before.upper)?,
                }
            }
            Origin::FlattenOf(source) => {
                let before = self.activation(source)?;
                Interval {
                    lower: before.lower.flatten_from(1)?,
                    upper: before.upper.flatten_from(1)?,
                }
            }
        };
        Ok(entry.bounds.get_or_init(|| bounds))
    }

    /// Centre and radius of the box on the input of layer `index`.
    pub fn centre_radius(&self, index: usize) -> Result<(&Tensor, &Tensor), BoundsError> {
        let entry = self.entry(index)?;
        if let Some((centre, radius)) = entry.centre_radius.get() {
            return Ok((centre, radius));
        }
        let bounds = self.activation(index)?;
        let pair = centre_and_radius(bounds)?;
        let (centre, radius) = entry.centre_radius.get_or_init(|| pair);
        Ok((centre, radius))
    }

    /// Bounds on the logits.
    pub fn output(&self) -> Result<&Interval, BoundsError> {
        self.activation(self.entries.len().saturating_sub(1))
    }

    /// Pre-activation bounds of every ReLU, as `(layer index, bounds at its input)`.
    pub fn relu_inputs(&self, net: &Net) -> Result<Vec<(usize, &Interval)>, BoundsError> {
        net.layers()
            .iter()
            .enumerate()
            .filter(|(index, layer)| matches!(layer, Layer::Relu) && *index < self.entries.len())
            .map(|(index, _)| Ok((index, self.activation(index)?)))
            .collect()
    }

    fn entry(&self, index: usize) -> Result<&TraceEntry, BoundsError> {
        self.entries.get(index).ok_or(BoundsError::TraceIndex {
            index,
            len: self.entries.len(),
        })
    }
}

/// `((u + l)/2, (u − l)/2)` of a box.
fn centre_and_radius(interval: &Interval) -> Result<(Tensor, Tensor), BoundsError> {
    Ok((
        ((&interval.upper + &interval.lower)? * 0.5)?,
        ((&interval.upper - &interval.lower)? * 0.5)?,
    ))
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
    let mut trace = IntervalTrace {
        entries: Vec::with_capacity(end + 1),
    };
    trace.entries.push(TraceEntry {
        centre_radius: OnceCell::new(),
        bounds: OnceCell::from(input.clone()),
        origin: Origin::Given,
    });
    for index in 0..end {
        let layer = &net.layers()[index];
        // Boxes that only pass between layers stay as centre and radius. A linear layer reads
        // its input as [B, features], so it takes the box from before a flatten directly.
        let source = match trace.entries[index].origin {
            Origin::FlattenOf(before) if matches!(layer, Layer::Linear { .. }) => before,
            _ => index,
        };
        let (centre, radius) = trace.centre_radius(source)?;
        let (next, origin) = match layer {
            Layer::Relu => (
                (
                    relu_box_centre(centre, radius)?,
                    relu_box_radius(centre, radius)?,
                ),
                Origin::ReluOf(index),
            ),
            Layer::Flatten => (
                (centre.flatten_from(1)?, radius.flatten_from(1)?),
                Origin::FlattenOf(index),
            ),
            _ => (
                affine_centre_radius(net, index, centre, radius, normalization)?,
                Origin::CentreRadius,
            ),
        };
        trace.entries.push(TraceEntry {
            centre_radius: OnceCell::from(next),
            bounds: OnceCell::new(),
            origin,
        });
    }
    Ok(trace)
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
    let (centre, radius) = centre_and_radius(interval)?;
    let (centre, radius) = affine_centre_radius(net, index, &centre, &radius, normalization)?;
    Ok(Interval {
        lower: (&centre - &radius)?,
        upper: (&centre + &radius)?,
    })
}

/// Centre and radius of the image of the box `centre ± radius` under affine layer `index`:
/// `c' = A c + b`, `r' = |A| r`.
fn affine_centre_radius(
    net: &Net,
    index: usize,
    centre: &Tensor,
    radius: &Tensor,
    normalization: Normalization<'_>,
) -> Result<(Tensor, Tensor), BoundsError> {
    Ok(match &net.layers()[index] {
        Layer::Normalize { mean, std } => {
            let (scale, shift) = Layer::normalize_scale_shift(mean, std)?;
            let zero = shift.zeros_like()?;
            (
                channel_affine(centre, &scale, &shift)?,
                channel_affine(radius, &scale, &zero)?,
            )
        }
        Layer::BatchNorm { .. } => {
            let (scale, shift) = net.batch_norm_affine(index, normalization)?;
            let zero = shift.zeros_like()?;
            (
                channel_affine(centre, &scale, &shift)?,
                channel_affine(radius, &scale.abs()?, &zero)?,
            )
        }
        Layer::Conv2d {
            weight,
            bias,
            stride,
            padding,
        } => (
            conv2d_bias(centre, weight, bias, *stride, *padding)?,
            conv2d(radius, &weight.abs()?, *stride, *padding)?,
        ),
        Layer::Linear { weight, bias } => {
            (linear(centre, weight, bias)?, abs_linear(radius, weight)?)
        }
        Layer::Relu | Layer::Flatten => {
            return Err(BoundsError::NotAffine { layer: index });
        }
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
            let (centre, radius) = trace.centre_radius(last)?;
            let (centre, radius) = (centre.unsqueeze(2)?, radius.unsqueeze(2)?);
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
            let output = trace.output()?;
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
