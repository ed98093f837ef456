//! CROWN-IBP's margin bounds off the autograd graph: CROWN's backward linear-relaxation pass
//! from the margin specification down to the input box, with each ReLU relaxed on the interval
//! pass's box at its input, and the reverse of that pass.
//!
//! The bound pass walks the layers top-down carrying coefficients `A` (`[B·S, …]`, a row per
//! margin) and a constant per row; the bound is the constant plus the minimum of the input
//! coefficients over the input box. Its reverse walks bottom-up carrying the gradient of the
//! coefficients, reading the coefficients each step kept: weights get their gradients from the
//! coefficient maps, biases (and BatchNorm's shift) from the constants, BatchNorm's scale and
//! shift sums go to the clean pass's BatchNorm backward, and each ReLU hands the gradient of
//! its relaxation's upper slope and intercept to the interval pass's backward as a gradient of
//! the box at its input.

use super::Gradients;
use super::clean::{BatchNormAffine, BatchNormSums, accumulate_sums};
use super::conv::{convolve, kernel_gradient};
use super::interval::BoxSaved;
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

/// CROWN's lower bounds on the margins and what the reverse pass reads.
pub(super) struct CrownPass {
    /// Per layer, the coefficients of its output that its backward step read, `[B·S, …]`.
    kept: Vec<Tensor>,
    /// The coefficients of the input, `[B, S, …]`.
    input_coefficients: Tensor,
    /// Centre and radius of the input box.
    input: (Tensor, Tensor),
    /// Per layer, the channel-affine map CROWN stepped through (Normalize, BatchNorm).
    affine: HashMap<usize, ChannelMap>,
    /// Per ReLU layer, the box at its input it was relaxed on.
    relu_boxes: HashMap<usize, (Tensor, Tensor)>,
    /// The margins' lower bounds `[B, S]`.
    pub(super) margins: Tensor,
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

/// The ReLU input box the interval pass kept at layer `index`.
fn relu_box(boxes: &[BoxSaved], index: usize) -> Result<(&Tensor, &Tensor), TrainError> {
    match boxes.get(index) {
        Some(BoxSaved::Relu { centre, radius }) => Ok((centre, radius)),
        _ => Err(TrainError::internal(format!(
            "no interval box kept for the ReLU at layer {index}"
        ))),
    }
}

impl CrownPass {
    /// CROWN's lower bounds of `spec · logits` (`spec` `[B, S, K]`) over the box `input`
    /// (centre, radius), each ReLU relaxed on the box the interval pass kept at its input
    /// (`boxes`), BatchNorm at
    /// the clean batch's maps; `shapes` are the net's activation shapes.
    pub(super) fn forward(
        layers: &[Layer],
        shapes: &[ActivationShape],
        spec: &Tensor,
        (boxes, input): (&[BoxSaved], (Tensor, Tensor)),
        batch_norms: &HashMap<usize, BatchNormAffine>,
    ) -> Result<CrownPass, TrainError> {
        let (batch, specs, classes) = spec.dims3()?;
        let rows = batch * specs;
        let mut a = spec.reshape((rows, classes))?;
        let mut constant = vec![0f32; rows];
        let add = |constant: &mut Vec<f32>, term: Vec<f32>| {
            for (c, t) in constant.iter_mut().zip(term) {
                *c += t;
            }
        };
        let mut kept = vec![a.clone(); layers.len()];
        let mut affine = HashMap::new();
        let mut relu_boxes = HashMap::new();
        for (index, layer) in layers.iter().enumerate().rev() {
            let in_dims = with_rows(rows, &shapes[index]);
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
                    let (scale, shift) = affine_map(layer, index, batch_norms)?
                        .expect("normalisations are channel-affine");
                    add(&mut constant, channel_dot(&a, &shift)?);
                    let device = a.device().clone();
                    let stepped = channel_affine(
                        &a,
                        &Tensor::new(scale.as_slice(), &device)?,
                        &Tensor::zeros(scale.len(), candle_core::DType::F32, &device)?,
                    )?;
                    affine.insert(index, (scale, shift));
                    stepped
                }
                Layer::Relu => {
                    let (centre, radius) = relu_box(boxes, index)?;
                    let (stepped, term) = crown_relu_step(&per_sample(&a, batch)?, centre, radius)?;
                    add(&mut constant, term.flatten_all()?.to_vec1()?);
                    relu_boxes.insert(index, (centre.clone(), radius.clone()));
                    stepped.reshape(in_dims)?
                }
                Layer::Flatten => a.reshape(in_dims)?,
            };
        }
        let input_coefficients = per_sample(&a, batch)?;
        let minimum = crown_box_minimum(&input_coefficients, &input.0, &input.1)?;
        let constant = Tensor::from_vec(constant, (batch, specs), spec.device())?;
        Ok(CrownPass {
            kept,
            input_coefficients,
            input,
            affine,
            relu_boxes,
            margins: (minimum + constant)?,
        })
    }

    /// The reverse pass from the margins' gradient `[B, S]`: every parameter's gradient into
    /// `gradients`, BatchNorm's scale and shift sums into `sums`; returns the gradients of the
    /// ReLU input boxes, for the interval pass's backward.
    pub(super) fn backward(
        &self,
        layers: &[Layer],
        d_margins: &Tensor,
        gradients: &mut Gradients,
        sums: &mut BatchNormSums,
    ) -> Result<ReluBoxGradients, TrainError> {
        let batch = d_margins.dim(0)?;
        let rows = d_margins.elem_count();
        let (centre, radius) = &self.input;
        let d_input =
            crown_box_minimum_gradient(&self.input_coefficients, centre, radius, d_margins)?;
        let mut g = d_input.reshape(row_dims(&d_input, rows))?;
        let d_constant = d_margins.flatten_all()?;
        let mut boxes = ReluBoxGradients::new();
        let top = layers.len() - 1;
        for (index, layer) in layers.iter().enumerate() {
            let a = &self.kept[index];
            g = match layer {
                Layer::Linear { weight, bias } => {
                    gradients.add(weight, linear_weight_gradient(&g, a)?)?;
                    let d_bias = weighted_channel_sums(a, &d_constant)?;
                    gradients.add(bias, Tensor::new(d_bias.as_slice(), a.device())?)?;
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
                    gradients.add(weight, kernel_gradient(&kept_input, a, weight.dim(2)?)?)?;
                    let d_bias = weighted_channel_sums(a, &d_constant)?;
                    gradients.add(bias, Tensor::new(d_bias.as_slice(), a.device())?)?;
                    scale_and_add_outer(&through, None, &d_constant, &bias.to_vec1()?)?
                }
                Layer::Normalize { .. } | Layer::BatchNorm { .. } => {
                    let (scale, shift) = &self.affine[&index];
                    if let Layer::BatchNorm { .. } = layer {
                        let (d_scale, _) = channel_gradient_sums(a, scale, shift, &g, false)?;
                        let d_shift = weighted_channel_sums(a, &d_constant)?;
                        accumulate_sums(sums, index, (d_scale, d_shift));
                    }
                    scale_and_add_outer(&g, Some(scale), &d_constant, shift)?
                }
                Layer::Relu => {
                    let (centre, radius) = &self.relu_boxes[&index];
                    let (through, d_centre, d_radius) = crown_relu_step_gradient(
                        &per_sample(a, batch)?,
                        (centre, radius),
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
