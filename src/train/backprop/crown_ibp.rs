//! CROWN-IBP's margin bounds off the autograd graph: CROWN's backward linear-relaxation pass
//! from the margin specification down to the input box, with each ReLU relaxed on the interval
//! pass's box at its input, and the reverse of that pass.
//!
//! The bound pass walks the layers top-down carrying coefficients `A` (`[n·S, …]`, a row per
//! margin of each of a chunk's `n` samples) and a constant per row; the bound is the constant
//! plus the minimum of the input coefficients over the input box. Its reverse walks bottom-up
//! carrying the gradient of the coefficients, reading (and then dropping) the coefficients each
//! step kept. A chunk's reverse runs right after its bounds (each sample's loss gradient depends
//! on its own margins alone), so one chunk's coefficients are alive at a time: weights get their gradients from the
//! coefficient maps, biases (and BatchNorm's shift) from the constants, BatchNorm's scale and
//! shift sums go to the clean pass's BatchNorm backward, and each ReLU hands the gradient of
//! its relaxation's upper slope and intercept to the interval pass's backward as a gradient of
//! the box at its input.

use super::Gradients;
use super::clean::{BatchNormAffine, BatchNormSums, accumulate_sums};
use super::conv::{convolve, kernel_gradient};
use super::interval::BoxSaved;
use super::loss::{robust_cross_entropy_gradient, scaled};
use crate::kernels::{
    channel_affine, channel_dot, channel_gradient_sums, conv_transpose2d, crown_box_minimum,
    crown_box_minimum_gradient, crown_relu_step, crown_relu_step_gradient, linear,
    linear_input_gradient, linear_weight_gradient, scale_and_add_outer, weighted_channel_sums,
    winograd_conv2d_input_gradient, winograd_supports,
};
use crate::model::{ActivationShape, Layer};
use crate::train::TrainError;
use candle_core::Tensor;
use std::collections::HashMap;

/// Per ReLU layer, the gradient of the loss with respect to its input box `(∂centre, ∂radius)`.
pub(super) type ReluBoxGradients = HashMap<usize, (Tensor, Tensor)>;

/// A channel-affine map's per-channel scale and shift.
type ChannelMap = (Vec<f32>, Vec<f32>);

/// CROWN's view of a net for one step: its layers and activation shapes, each channel-affine
/// layer's map, each ReLU's input box from the interval pass and the input box, all over the
/// whole batch; [`CrownNet::robust_term`] bounds the batch chunk by chunk.
pub(super) struct CrownNet<'a> {
    layers: &'a [Layer],
    shapes: &'a [ActivationShape],
    /// Per layer, the channel-affine map CROWN steps through (Normalize, BatchNorm).
    affine: HashMap<usize, ChannelMap>,
    /// Per ReLU layer, the box at its input it is relaxed on, `[B, …]`.
    relu_boxes: HashMap<usize, (Tensor, Tensor)>,
    /// Centre and radius of the input box, `[B, …]`.
    input: (Tensor, Tensor),
}

/// CROWN-IBP's robust loss over a batch and what the rest of the reverse pass reads.
pub(super) struct CrownIbpTerm {
    /// The robust cross-entropy of the mixed margins (mean over the batch, unweighted).
    pub(super) loss: f64,
    /// The gradient of the weighted loss in the mixed margins, `[B, S]`.
    pub(super) margin_gradient: Tensor,
    /// The gradients of the ReLU input boxes through CROWN's relaxations.
    pub(super) relu_gradients: ReluBoxGradients,
}

/// One chunk's CROWN lower bounds on the margins and what its reverse reads.
struct CrownPass {
    /// Per layer, the coefficients of its output that its backward step read, `[R, …]`.
    kept: Vec<Tensor>,
    /// The coefficients of the input, `[n, S, …]`.
    input_coefficients: Tensor,
    /// The chunk's first sample and sample count.
    samples: (usize, usize),
    /// The margins' lower bounds `[n, S]`.
    margins: Tensor,
}

/// Samples per chunk of CROWN's pass over a batch of `batch` samples with `specs` margin rows
/// each: a chunk carries about as many coefficient rows as the batch has samples, so each of
/// its coefficient maps is the size of one of the batch's activations (the interval pass keeps
/// two per layer) rather than `specs` times that.
fn chunk_samples(batch: usize, specs: usize) -> usize {
    batch.div_ceil(specs.max(1)).max(1)
}

/// The scale and shift of layer `index` if it is a channel-affine map.
fn affine_map(
    layer: &Layer,
    index: usize,
    batch_norms: &HashMap<usize, BatchNormAffine>,
) -> Result<Option<ChannelMap>, TrainError> {
    let (scale, shift) = match layer {
        Layer::Normalize { mean, std } => Layer::normalize_scale_shift(mean, std)?,
        Layer::BatchNorm { .. } => {
            let affine = &batch_norms[&index];
            (affine.scale_tensor.clone(), affine.shift_tensor.clone())
        }
        _ => return Ok(None),
    };
    Ok(Some((
        scale.flatten_all()?.to_vec1()?,
        shift.flatten_all()?.to_vec1()?,
    )))
}

/// `[rows, *shape]`.
fn with_rows(rows: usize, shape: &ActivationShape) -> Vec<usize> {
    shape.batch_dims(rows)
}

/// `[B, S, …]` from `[B·S, …]`.
fn per_sample(coefficients: &Tensor, batch: usize) -> Result<Tensor, TrainError> {
    let dims = coefficients.dims();
    let mut split = vec![batch, dims[0] / batch.max(1)];
    split.extend(&dims[1..]);
    Ok(coefficients.reshape(split)?)
}

/// Samples `start..start + count` of a `[B, …]` tensor.
fn samples_of(t: &Tensor, (start, count): (usize, usize)) -> Result<Tensor, TrainError> {
    Ok(t.narrow(0, start, count)?)
}

impl<'a> CrownNet<'a> {
    /// CROWN over `layers` (activation shapes `shapes`) from the box `[lower, upper]`, each ReLU
    /// relaxed on the box the interval pass kept at its input (`boxes`), BatchNorm at the clean
    /// batch's maps.
    pub(super) fn new(
        layers: &'a [Layer],
        shapes: &'a [ActivationShape],
        boxes: &[BoxSaved],
        (lower, upper): (&Tensor, &Tensor),
        batch_norms: &HashMap<usize, BatchNormAffine>,
    ) -> Result<CrownNet<'a>, TrainError> {
        let mut affine = HashMap::new();
        let mut relu_boxes = HashMap::new();
        for (index, layer) in layers.iter().enumerate() {
            if let Some(map) = affine_map(layer, index, batch_norms)? {
                affine.insert(index, map);
            }
            if let Layer::Relu = layer {
                match boxes.get(index) {
                    Some(BoxSaved::Relu { centre, radius }) => {
                        relu_boxes.insert(index, (centre.clone(), radius.clone()));
                    }
                    _ => {
                        return Err(TrainError::internal(format!(
                            "no interval box kept for the ReLU at layer {index}"
                        )));
                    }
                }
            }
        }
        let centre = ((upper + lower)? * 0.5)?;
        let radius = ((upper - lower)? * 0.5)?;
        Ok(CrownNet {
            layers,
            shapes,
            affine,
            relu_boxes,
            input: (centre, radius),
        })
    }

    /// CROWN-IBP's robust loss of the margins `β·CROWN + (1 − β)·IBP` (`ibp_margins` `[B, S]`)
    /// of `spec · logits` (`spec` `[B, S, K]`), weighted by `box_weight` in the step's loss,
    /// and its reverse: a chunk of samples at a time, CROWN's bounds, the loss's gradient in
    /// them (each sample's depends on its own margins alone), and the reverse pass, so only one
    /// chunk's coefficient maps are ever alive. Every parameter's gradient goes into
    /// `gradients`, BatchNorm's scale and shift sums into `sums`.
    pub(super) fn robust_term(
        &self,
        spec: &Tensor,
        ibp_margins: &Tensor,
        labels: &[u32],
        weights: (f64, f64),
        gradients: &mut Gradients,
        sums: &mut BatchNormSums,
    ) -> Result<CrownIbpTerm, TrainError> {
        let (batch, specs, _) = spec.dims3()?;
        let chunk = chunk_samples(batch, specs);
        self.robust_term_in_chunks(spec, ibp_margins, labels, weights, gradients, sums, chunk)
    }

    /// [`CrownNet::robust_term`] `chunk` samples at a time.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn robust_term_in_chunks(
        &self,
        spec: &Tensor,
        ibp_margins: &Tensor,
        labels: &[u32],
        (beta, box_weight): (f64, f64),
        gradients: &mut Gradients,
        sums: &mut BatchNormSums,
        chunk: usize,
    ) -> Result<CrownIbpTerm, TrainError> {
        let (batch, specs, _) = spec.dims3()?;
        let chunk = chunk.max(1);
        let mut loss = 0.0;
        let mut margin_gradients = Vec::with_capacity(batch.div_ceil(chunk));
        let mut relu_parts: HashMap<usize, (Vec<Tensor>, Vec<Tensor>)> = HashMap::new();
        for start in (0..batch).step_by(chunk) {
            let samples = (start, chunk.min(batch - start));
            let crown = self.forward(&samples_of(spec, samples)?, samples)?;
            let margins =
                ((&crown.margins * beta)? + (samples_of(ibp_margins, samples)? * (1.0 - beta))?)?;
            let labels = &labels[start..start + samples.1];
            let (part, gradient) =
                robust_cross_entropy_gradient(&margins.to_vec2::<f32>()?, labels, batch)?;
            loss += part;
            let gradient = Tensor::from_vec(
                scaled(&gradient, box_weight),
                (samples.1, specs),
                spec.device(),
            )?;
            let boxes = crown.backward(self, &(&gradient * beta)?, gradients, sums)?;
            for (index, (d_centre, d_radius)) in boxes {
                let parts = relu_parts.entry(index).or_default();
                parts.0.push(d_centre);
                parts.1.push(d_radius);
            }
            margin_gradients.push(gradient);
        }
        let mut relu_gradients = ReluBoxGradients::new();
        for (index, (centres, radii)) in relu_parts {
            relu_gradients.insert(index, (Tensor::cat(&centres, 0)?, Tensor::cat(&radii, 0)?));
        }
        Ok(CrownIbpTerm {
            loss,
            margin_gradient: Tensor::cat(&margin_gradients, 0)?,
            relu_gradients,
        })
    }

    /// CROWN's lower bounds of `spec · logits` (`spec` `[n, S, K]`) for the batch's samples
    /// `samples` (first, count).
    fn forward(&self, spec: &Tensor, samples: (usize, usize)) -> Result<CrownPass, TrainError> {
        let (batch, specs, classes) = spec.dims3()?;
        let rows = batch * specs;
        let mut a = spec.reshape((rows, classes))?;
        let mut constant = vec![0f32; rows];
        let add = |constant: &mut Vec<f32>, term: Vec<f32>| {
            for (c, t) in constant.iter_mut().zip(term) {
                *c += t;
            }
        };
        let layers = self.layers;
        let mut kept = vec![a.clone(); layers.len()];
        for (index, layer) in layers.iter().enumerate().rev() {
            let in_dims = with_rows(rows, &self.shapes[index]);
            kept[index] = a.clone();
            a = match layer {
                Layer::Linear { weight, bias } => {
                    add(&mut constant, channel_dot(&a, &bias.to_vec1()?)?);
                    linear_input_gradient(&a, &weight.detach(), &in_dims)?
                }
                Layer::Conv2d {
                    weight,
                    bias,
                    stride,
                    padding,
                } => {
                    add(&mut constant, channel_dot(&a, &bias.to_vec1()?)?);
                    transposed_convolution(&a, &weight.detach(), (*stride, *padding), &in_dims)?
                }
                Layer::Normalize { .. } | Layer::BatchNorm { .. } => {
                    let (scale, shift) = &self.affine[&index];
                    add(&mut constant, channel_dot(&a, shift)?);
                    let device = a.device().clone();
                    channel_affine(
                        &a,
                        &Tensor::new(scale.as_slice(), &device)?,
                        &Tensor::zeros(scale.len(), candle_core::DType::F32, &device)?,
                    )?
                }
                Layer::Relu => {
                    let (centre, radius) = &self.relu_boxes[&index];
                    let (stepped, term) = crown_relu_step(
                        &per_sample(&a, batch)?,
                        &samples_of(centre, samples)?,
                        &samples_of(radius, samples)?,
                    )?;
                    add(&mut constant, term.flatten_all()?.to_vec1()?);
                    stepped.reshape(in_dims)?
                }
                Layer::Flatten => a.reshape(in_dims)?,
            };
        }
        let input_coefficients = per_sample(&a, batch)?;
        drop(a);
        let (centre, radius) = &self.input;
        let minimum = crown_box_minimum(
            &input_coefficients,
            &samples_of(centre, samples)?,
            &samples_of(radius, samples)?,
        )?;
        let constant = Tensor::from_vec(constant, (batch, specs), spec.device())?;
        Ok(CrownPass {
            kept,
            input_coefficients,
            samples,
            margins: (minimum + constant)?,
        })
    }
}

impl CrownPass {
    /// The reverse pass from the margins' gradient `[n, S]`, each layer's coefficients dropped
    /// once its step has read them: every parameter's gradient into `gradients`, BatchNorm's
    /// scale and shift sums into `sums`; returns the gradients of the chunk's ReLU input boxes,
    /// for the interval pass's backward.
    fn backward(
        self,
        net: &CrownNet<'_>,
        d_margins: &Tensor,
        gradients: &mut Gradients,
        sums: &mut BatchNormSums,
    ) -> Result<ReluBoxGradients, TrainError> {
        let CrownPass {
            kept,
            input_coefficients,
            samples,
            ..
        } = self;
        let batch = d_margins.dim(0)?;
        let rows = d_margins.elem_count();
        let (centre, radius) = &net.input;
        let d_input = crown_box_minimum_gradient(
            &input_coefficients,
            &samples_of(centre, samples)?,
            &samples_of(radius, samples)?,
            d_margins,
        )?;
        drop(input_coefficients);
        let mut g = d_input.reshape(row_dims(&d_input, rows))?;
        drop(d_input);
        let d_constant = d_margins.flatten_all()?;
        let mut boxes = ReluBoxGradients::new();
        let layers = net.layers;
        let top = layers.len() - 1;
        for ((index, layer), a) in layers.iter().enumerate().zip(kept) {
            g = match layer {
                Layer::Linear { weight, bias } => {
                    gradients.add(weight, linear_weight_gradient(&g, &a)?)?;
                    let d_bias = weighted_channel_sums(&a, &d_constant)?;
                    gradients.add(bias, Tensor::new(d_bias.as_slice(), a.device())?)?;
                    drop(a);
                    if index == top {
                        break;
                    }
                    let zero = bias.zeros_like()?;
                    let through = linear(&g, &weight.detach(), &zero)?;
                    scale_and_add_outer(&through, None, &d_constant, &bias.to_vec1()?)?
                }
                Layer::Conv2d {
                    weight,
                    bias,
                    stride,
                    padding,
                } => {
                    let (through, kept_input) =
                        convolve(g, &weight.detach(), None, (*stride, *padding), true)?;
                    gradients.add(weight, kernel_gradient(&kept_input, &a, weight.dim(2)?)?)?;
                    drop(kept_input);
                    let d_bias = weighted_channel_sums(&a, &d_constant)?;
                    gradients.add(bias, Tensor::new(d_bias.as_slice(), a.device())?)?;
                    drop(a);
                    scale_and_add_outer(&through, None, &d_constant, &bias.to_vec1()?)?
                }
                Layer::Normalize { .. } | Layer::BatchNorm { .. } => {
                    let (scale, shift) = &net.affine[&index];
                    if let Layer::BatchNorm { .. } = layer {
                        let (d_scale, _) = channel_gradient_sums(&a, scale, shift, &g, false)?;
                        let d_shift = weighted_channel_sums(&a, &d_constant)?;
                        accumulate_sums(sums, index, (d_scale, d_shift));
                    }
                    drop(a);
                    scale_and_add_outer(&g, Some(scale), &d_constant, shift)?
                }
                Layer::Relu => {
                    let (centre, radius) = &net.relu_boxes[&index];
                    let (through, d_centre, d_radius) = crown_relu_step_gradient(
                        &per_sample(&a, batch)?,
                        (&samples_of(centre, samples)?, &samples_of(radius, samples)?),
                        &per_sample(&g, batch)?,
                        d_margins,
                    )?;
                    boxes.insert(index, (d_centre, d_radius));
                    through.reshape(a.dims())?
                }
                Layer::Flatten => g.reshape(a.dims())?,
            };
        }
        Ok(boxes)
    }
}

/// `[rows, …]` from `[B, S, …]`.
fn row_dims(t: &Tensor, rows: usize) -> Vec<usize> {
    let mut dims = vec![rows];
    dims.extend(&t.dims()[2..]);
    dims
}

/// The adjoint of a convolution with `weight` (`(stride, padding)`) onto `[R, Ci, H, W]`:
/// Winograd's input gradient where it applies, the transposed convolution otherwise.
fn transposed_convolution(
    a: &Tensor,
    weight: &Tensor,
    (stride, padding): (usize, usize),
    in_dims: &[usize],
) -> Result<Tensor, TrainError> {
    Ok(
        if winograd_supports(in_dims, weight.dims(), stride, padding) {
            winograd_conv2d_input_gradient(a, weight)?
        } else {
            conv_transpose2d(a, weight, stride, padding, in_dims[2], in_dims[3])?
        },
    )
}
