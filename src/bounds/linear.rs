//! CROWN: backward propagation of linear bounds with the adaptive ReLU relaxation.

use super::alpha::alpha_lower_bounds_until;
use super::interval::propagate_layer;
use super::{AlphaConfig, BoundsError, CrownIntermediate, Interval};
use crate::kernels::{channel_affine, conv_transpose2d, relu, spec_mul};
use crate::model::{Layer, Net, Normalization};
use candle_core::{DType, Device, Tensor};

/// Largest number of f32 coefficients one backward pass may hold at once (≈ 256 MB); full
/// CROWN splits its per-neuron specifications into chunks below this.
const COEFFICIENT_BUDGET: usize = 1 << 26;

/// Lower bound of `A · activation_k + bias` over the input box, as `A₀ · x + bias` at the input.
struct LinearBound {
    /// Coefficients `[B, S, *shape]` with respect to the current activation.
    coefficients: Tensor,
    /// Constant term `[B, S]`.
    bias: Tensor,
}

/// ReLU pre-activation bounds known so far, indexed by layer (Some only for ReLU layers).
pub(crate) type ReluBounds = Vec<Option<Interval>>;

/// Lower bounds of `spec · activation_end` (spec `[B, S, *shape_end]`) over `input`, by walking
/// the layers before `end` backwards and concretising at the input box.
pub(crate) fn backward_lower_bound(
    net: &Net,
    end: usize,
    spec: Tensor,
    input: &Interval,
    relu_bounds: &ReluBounds,
    normalization: Normalization<'_>,
) -> Result<Tensor, BoundsError> {
    backward_lower_bound_with_slopes(net, end, spec, input, relu_bounds, &[], normalization)
}

/// ReLU lower slopes chosen per specification row, indexed by layer: `Some([B, S, *shape])`
/// replaces CROWN's adaptive lower slope at that ReLU (α-CROWN); missing or `None` keeps it.
pub(crate) type LowerSlopes = [Option<Tensor>];

/// [`backward_lower_bound`] with the lower ReLU slopes of `slopes` where given. Sound for any
/// slope in [0, 1] on unstable neurons (and the exact 0 or 1 on stable ones).
pub(crate) fn backward_lower_bound_with_slopes(
    net: &Net,
    end: usize,
    spec: Tensor,
    input: &Interval,
    relu_bounds: &ReluBounds,
    slopes: &LowerSlopes,
    normalization: Normalization<'_>,
) -> Result<Tensor, BoundsError> {
    let state = backward_to_input(net, end, spec, relu_bounds, slopes, normalization, None)?;
    concretise(&state, input)
}

/// A CROWN lower bound with the coefficients it passed through, for branching decisions.
pub(crate) struct RecordedBound {
    /// Lower bounds `[B, S]`.
    pub(crate) lower: Tensor,
    /// Per layer, for ReLU layers: the coefficients `[B, S, *shape]` on the ReLU's output.
    pub(crate) relu_coefficients: Vec<Option<Tensor>>,
    /// Coefficients `[B, S, *input_shape]` on the input.
    pub(crate) input_coefficients: Tensor,
}

/// [`backward_lower_bound`] (CROWN's adaptive slopes) that also returns the coefficients on
/// every ReLU output and on the input.
pub(crate) fn backward_lower_bound_recorded(
    net: &Net,
    end: usize,
    spec: Tensor,
    input: &Interval,
    relu_bounds: &ReluBounds,
    normalization: Normalization<'_>,
) -> Result<RecordedBound, BoundsError> {
    let mut relu_coefficients = vec![None; end];
    let state = backward_to_input(
        net,
        end,
        spec,
        relu_bounds,
        &[],
        normalization,
        Some(&mut relu_coefficients),
    )?;
    Ok(RecordedBound {
        lower: concretise(&state, input)?,
        relu_coefficients,
        input_coefficients: state.coefficients,
    })
}

/// Walks layers `end−1 … 0` backwards from `spec`, recording the coefficients on each ReLU's
/// output into `record` when given.
fn backward_to_input(
    net: &Net,
    end: usize,
    spec: Tensor,
    relu_bounds: &ReluBounds,
    slopes: &LowerSlopes,
    normalization: Normalization<'_>,
    mut record: Option<&mut Vec<Option<Tensor>>>,
) -> Result<LinearBound, BoundsError> {
    let (batch, specs) = (spec.dim(0)?, spec.dim(1)?);
    let mut state = LinearBound {
        bias: Tensor::zeros((batch, specs), DType::F32, spec.device())?,
        coefficients: spec,
    };
    for index in (0..end).rev() {
        if let (Some(record), Layer::Relu) = (record.as_deref_mut(), &net.layers()[index]) {
            record[index] = Some(state.coefficients.clone());
        }
        let slope = slopes.get(index).and_then(Option::as_ref);
        state = backward_through_layer(net, index, state, relu_bounds, slope, normalization)?;
    }
    Ok(state)
}

/// The minimum over the input box of a linear bound on the input.
fn concretise(state: &LinearBound, input: &Interval) -> Result<Tensor, BoundsError> {
    // min over the box of A·x is A·centre − |A|·radius.
    let coefficients = state.coefficients.flatten_from(2)?;
    let centre = ((&input.upper + &input.lower)? * 0.5)?
        .flatten_from(1)?
        .unsqueeze(2)?;
    let radius = ((&input.upper - &input.lower)? * 0.5)?
        .flatten_from(1)?
        .unsqueeze(2)?;
    let value = (coefficients.matmul(&centre)? - coefficients.abs()?.matmul(&radius)?)?;
    Ok((value.squeeze(2)? + &state.bias)?)
}

/// Lower and upper bounds of `spec · activation_end` in one backward pass over `[spec; −spec]`.
pub(crate) fn backward_bounds(
    net: &Net,
    end: usize,
    spec: &Tensor,
    input: &Interval,
    relu_bounds: &ReluBounds,
    normalization: Normalization<'_>,
) -> Result<Interval, BoundsError> {
    let specs = spec.dim(1)?;
    let both = Tensor::cat(&[spec, &spec.neg()?], 1)?;
    let lower_both = backward_lower_bound(net, end, both, input, relu_bounds, normalization)?;
    Ok(Interval {
        lower: lower_both.narrow(1, 0, specs)?,
        upper: lower_both.narrow(1, specs, specs)?.neg()?,
    })
}

fn backward_through_layer(
    net: &Net,
    index: usize,
    state: LinearBound,
    relu_bounds: &ReluBounds,
    lower_slope: Option<&Tensor>,
    normalization: Normalization<'_>,
) -> Result<LinearBound, BoundsError> {
    let LinearBound { coefficients, bias } = state;
    let (batch, specs) = (coefficients.dim(0)?, coefficients.dim(1)?);
    let input_shape = net.shapes()[index];
    Ok(match &net.layers()[index] {
        Layer::Linear {
            weight,
            bias: layer_bias,
        } => LinearBound {
            bias: (bias
                + coefficients
                    .broadcast_matmul(&layer_bias.unsqueeze(1)?)?
                    .squeeze(2)?)?,
            coefficients: coefficients.broadcast_matmul(weight)?,
        },
        Layer::Conv2d {
            weight,
            bias: layer_bias,
            stride,
            padding,
        } => {
            let (_, _, channels, height, width) = coefficients.dims5()?;
            let per_channel = coefficients.flatten_from(3)?.sum(3)?; // [B, S, C_out]
            let bias_term = per_channel
                .reshape((batch * specs, channels))?
                .matmul(&layer_bias.unsqueeze(1)?)?
                .reshape((batch, specs))?;
            let bias = (bias + bias_term)?;
            let flat = coefficients.reshape((batch * specs, channels, height, width))?;
            let dims = input_shape.batch_dims(batch * specs);
            let back = conv_transpose2d(&flat, weight, *stride, *padding, dims[2], dims[3])?;
            LinearBound {
                coefficients: back.reshape((batch, specs, dims[1], dims[2], dims[3]))?,
                bias,
            }
        }
        Layer::Flatten => {
            let mut dims = vec![batch, specs];
            dims.extend(&input_shape.batch_dims(1)[1..]);
            LinearBound {
                coefficients: coefficients.reshape(dims)?,
                bias,
            }
        }
        Layer::Normalize { mean, std } => {
            let (scale, shift) = Layer::normalize_scale_shift(mean, std)?;
            affine_backward(coefficients, bias, &scale, &shift)?
        }
        Layer::BatchNorm { .. } => {
            let (scale, shift) = net.batch_norm_affine(index, normalization)?;
            affine_backward(coefficients, bias, &scale, &shift)?
        }
        Layer::Relu => {
            let bounds = relu_bounds[index]
                .as_ref()
                .ok_or(BoundsError::MissingReluBounds { layer: index })?;
            let relaxation = ReluRelaxation::new(bounds)?;
            let positive = relu(&coefficients)?;
            let negative = (&coefficients - &positive)?;
            // Σ_d A⁻[b, s, d] · intercept[b, d] as a batched matrix-vector product.
            let intercept = relaxation.upper_intercept.flatten_from(1)?.unsqueeze(2)?;
            let bias_term = negative.flatten_from(2)?.matmul(&intercept)?.squeeze(2)?;
            let lower_part = match lower_slope {
                Some(per_spec) => (&positive * per_spec)?,
                None => spec_mul(&positive, &relaxation.lower_slope)?,
            };
            LinearBound {
                coefficients: (lower_part + spec_mul(&negative, &relaxation.upper_slope)?)?,
                bias: (bias + bias_term)?,
            }
        }
    })
}

/// Backward step through `x ↦ scale[c]·x + shift[c]` on channel axis 1 of the activation.
fn affine_backward(
    coefficients: Tensor,
    bias: Tensor,
    scale: &Tensor,
    shift: &Tensor,
) -> Result<LinearBound, BoundsError> {
    // Coefficients carry a spec axis: fold it into the batch so the channel axis is 1 again.
    let dims = coefficients.dims().to_vec();
    let (batch, specs, channels) = (dims[0], dims[1], dims[2]);
    let mut folded = vec![batch * specs];
    folded.extend(&dims[2..]);
    let flat = coefficients.reshape(folded)?;
    let per_channel = if flat.rank() > 2 {
        flat.flatten_from(2)?.sum(2)? // [B·S, C]
    } else {
        flat.clone()
    };
    let bias_term = per_channel
        .matmul(&shift.reshape((channels, 1))?)?
        .reshape((batch, specs))?;
    let scaled = channel_affine(&flat, scale, &scale.zeros_like()?)?;
    Ok(LinearBound {
        bias: (bias + bias_term)?,
        coefficients: scaled.reshape(dims)?,
    })
}

/// Linear relaxation of ReLU on `[l, u]`: `lower_slope·x ≤ relu(x) ≤ upper_slope·x + upper_intercept`.
pub(crate) struct ReluRelaxation {
    pub(crate) lower_slope: Tensor,
    pub(crate) upper_slope: Tensor,
    pub(crate) upper_intercept: Tensor,
}

impl ReluRelaxation {
    /// Adaptive CROWN relaxation: stable neurons exact; unstable ones get the chord above and
    /// slope 1 below when `u > −l`, else slope 0 (the choice that minimises the relaxed area).
    pub(crate) fn new(bounds: &Interval) -> Result<ReluRelaxation, BoundsError> {
        let (lower, upper) = (&bounds.lower, &bounds.upper);
        let zero = lower.zeros_like()?;
        let one = lower.ones_like()?;
        let unstable = lower.lt(&zero)?.mul(&upper.gt(&zero)?)?;
        let active = lower.ge(&zero)?;
        // Masked denominators keep the gradient finite where u = l.
        let width = unstable.where_cond(&(upper - lower)?, &one)?;
        let chord = (upper / width)?;
        let upper_slope = unstable.where_cond(&chord, &active.where_cond(&one, &zero)?)?;
        let upper_intercept = unstable.where_cond(&(chord.neg()? * lower)?, &zero)?;
        let steep = upper.gt(&lower.neg()?)?;
        let lower_slope = unstable.where_cond(
            &steep.where_cond(&one, &zero)?,
            &active.where_cond(&one, &zero)?,
        )?;
        Ok(ReluRelaxation {
            lower_slope: lower_slope.detach(),
            upper_slope,
            upper_intercept,
        })
    }
}

/// Full CROWN bounds on every ReLU input. `Intersected`: each neuron the interval image of the
/// refined earlier bounds leaves unstable gets its own backward pass from its layer to the
/// input, intersected with that image. `Plain`: every neuron gets the backward pass's bound.
pub(crate) fn crown_relu_bounds(
    net: &Net,
    input: &Interval,
    normalization: Normalization<'_>,
    end: usize,
    intermediate: CrownIntermediate,
) -> Result<ReluBounds, BoundsError> {
    crown_relu_bounds_with(net, input, normalization, end, intermediate, None)
}

/// [`crown_relu_bounds`], with each refined bound also optimised by α-CROWN under `alpha` when
/// given (and intersected with CROWN's; both are sound).
pub(crate) fn crown_relu_bounds_with(
    net: &Net,
    input: &Interval,
    normalization: Normalization<'_>,
    end: usize,
    intermediate: CrownIntermediate,
    alpha: Option<&AlphaConfig>,
) -> Result<ReluBounds, BoundsError> {
    let layers = net.layers();
    let mut relu_bounds: ReluBounds = vec![None; layers.len()];
    let mut current = input.clone();
    let mut segment_start = 0;
    for index in 0..end {
        if let Layer::Relu = layers[index] {
            let candidate = current.clone();
            let refined = if interval_is_exact(net, segment_start, index) {
                candidate
            } else {
                refine_with(
                    net,
                    index,
                    &candidate,
                    (input, &relu_bounds),
                    normalization,
                    intermediate,
                    alpha,
                )?
            };
            current = propagate_layer(net, index, &refined, normalization)?;
            relu_bounds[index] = Some(refined);
            segment_start = index + 1;
        } else {
            current = propagate_layer(net, index, &current, normalization)?;
        }
    }
    Ok(relu_bounds)
}

/// True when the interval image of the input box through layers `start..end` is exact: they
/// start at the input and hold at most one dense map (conv or linear) among per-channel
/// rescalings, so CROWN could not tighten it.
pub(crate) fn interval_is_exact(net: &Net, start: usize, end: usize) -> bool {
    let dense_maps = net.layers()[start..end]
        .iter()
        .filter(|l| matches!(l, Layer::Conv2d { .. } | Layer::Linear { .. }))
        .count();
    start == 0 && dense_maps <= 1
}

/// CROWN bounds at the input of layer `index` from `candidate`, their interval image:
/// intersected with it on its unstable entries, or (`Plain`) CROWN's bounds on every entry.
pub(crate) fn refine(
    net: &Net,
    index: usize,
    candidate: &Interval,
    (input, relu_bounds): (&Interval, &ReluBounds),
    normalization: Normalization<'_>,
    intermediate: CrownIntermediate,
) -> Result<Interval, BoundsError> {
    refine_with(
        net,
        index,
        candidate,
        (input, relu_bounds),
        normalization,
        intermediate,
        None,
    )
}

/// [`refine`], each neuron's CROWN bounds intersected with α-CROWN's under `alpha` when given.
fn refine_with(
    net: &Net,
    index: usize,
    candidate: &Interval,
    (input, relu_bounds): (&Interval, &ReluBounds),
    normalization: Normalization<'_>,
    intermediate: CrownIntermediate,
    alpha: Option<&AlphaConfig>,
) -> Result<Interval, BoundsError> {
    let plain = intermediate == CrownIntermediate::Plain;
    let batch = candidate.lower.dim(0)?;
    let shape = net.shapes()[index];
    let neurons = shape.numel();
    let lower = candidate.lower.flatten_from(1)?.to_vec2::<f32>()?;
    let upper = candidate.upper.flatten_from(1)?.to_vec2::<f32>()?;
    let unstable: Vec<Vec<usize>> = (0..batch)
        .map(|b| {
            (0..neurons)
                .filter(|&n| plain || (lower[b][n] < 0.0 && upper[b][n] > 0.0))
                .collect()
        })
        .collect();
    let widest = net.shapes()[..=index]
        .iter()
        .map(|s| s.numel())
        .max()
        .unwrap_or(1);
    let mut refined_lower = lower.clone();
    let mut refined_upper = upper.clone();
    let max_unstable = unstable.iter().map(Vec::len).max().unwrap_or(0);
    if max_unstable > 0 {
        // Rows per pass: two signs per neuron, every sample of the batch, widest activation.
        let chunk = (COEFFICIENT_BUDGET / (2 * batch * widest)).clamp(1, max_unstable);
        let mut spec_dims = vec![batch, chunk];
        spec_dims.extend(&shape.batch_dims(1)[1..]);
        for start in (0..max_unstable).step_by(chunk) {
            let rows = chunk.min(max_unstable - start);
            let mut one_hot = vec![0f32; batch * chunk * neurons];
            for (b, neurons_of_sample) in unstable.iter().enumerate() {
                for row in 0..rows {
                    if let Some(&neuron) = neurons_of_sample.get(start + row) {
                        one_hot[(b * chunk + row) * neurons + neuron] = 1.0;
                    }
                }
            }
            let spec = Tensor::from_vec(one_hot, spec_dims.clone(), &Device::Cpu)?;
            let mut bounds = backward_bounds(net, index, &spec, input, relu_bounds, normalization)?;
            if let Some(alpha) = alpha {
                let both = Tensor::cat(&[&spec, &spec.neg()?], 1)?;
                let optimised = alpha_lower_bounds_until(
                    net,
                    index,
                    input,
                    &both,
                    relu_bounds,
                    alpha,
                    normalization,
                )?;
                let lower = optimised.narrow(1, 0, chunk)?;
                let upper = optimised.narrow(1, chunk, chunk)?.neg()?;
                bounds = Interval {
                    lower: bounds.lower.maximum(&lower)?,
                    upper: bounds.upper.minimum(&upper)?,
                };
            }
            let chunk_lower = bounds.lower.to_vec2::<f32>()?;
            let chunk_upper = bounds.upper.to_vec2::<f32>()?;
            for (b, neurons_of_sample) in unstable.iter().enumerate() {
                for row in 0..rows {
                    if let Some(&neuron) = neurons_of_sample.get(start + row) {
                        let (crown_lower, crown_upper) = (chunk_lower[b][row], chunk_upper[b][row]);
                        // Both bounds are sound, so their intersection is too.
                        let (lower, upper) =
                            (&mut refined_lower[b][neuron], &mut refined_upper[b][neuron]);
                        if plain {
                            (*lower, *upper) = (crown_lower, crown_upper);
                        } else {
                            *lower = lower.max(crown_lower);
                            *upper = upper.min(crown_upper);
                        }
                    }
                }
            }
        }
    }
    let dims = shape.batch_dims(batch);
    let to_tensor =
        |rows: Vec<Vec<f32>>| Tensor::from_vec(rows.concat(), dims.clone(), &Device::Cpu);
    Ok(Interval {
        lower: to_tensor(refined_lower)?,
        upper: to_tensor(refined_upper)?,
    })
}
