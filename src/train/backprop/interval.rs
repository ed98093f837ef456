//! The interval (IBP) pass: the forward pass of centre and radius keeping what each layer's
//! backward reads, the margins' lower bounds with the spec folded into the last linear layer,
//! and the backward of both.

use super::Gradients;
use super::clean::{BatchNormAffine, BatchNormSums, accumulate_sums, flatten_is_implicit};
use super::conv::{ConvInput, convolve, input_gradient, kernel_gradient};
use crate::kernels::{
    BoxGradient, abs_linear_weight_gradient, channel_affine, channel_affine_gradient, channel_sum,
    linear, linear_input_gradient, linear_weight_gradient, relu_box_centre, relu_box_gradient,
    relu_box_radius,
};
use crate::model::Layer;
use crate::train::TrainError;
use candle_core::Tensor;
use std::collections::HashMap;

/// What an interval layer keeps for its backward.
pub(super) enum BoxSaved {
    Normalize {
        scale: Tensor,
    },
    Conv {
        centre: ConvInput,
        radius: ConvInput,
        absolute: Tensor,
    },
    Affine {
        centre: Tensor,
        radius: Tensor,
        absolute: Tensor,
    },
    BatchNorm {
        centre: Tensor,
        radius: Tensor,
    },
    Relu {
        centre: Tensor,
        radius: Tensor,
    },
    Flatten {
        dims: Vec<usize>,
    },
    Implicit,
}

/// The interval pass's output box before the last (linear) layer and what its backward reads.
pub(super) struct IntervalPass {
    /// Per layer but the last, what it kept.
    pub(super) saved: Vec<BoxSaved>,
    /// Centre of the box the last layer reads.
    pub(super) centre: Tensor,
    /// Radius of the box the last layer reads.
    pub(super) radius: Tensor,
    /// Mean input radius in the units the first non-normalising layer sees (Shi's r̄₀).
    pub(super) input_radius: Option<f64>,
    /// The box `(centre, radius)` at the input of the layer asked for (TAPS' latent box).
    pub(super) kept: Option<(Tensor, Tensor)>,
}

impl IntervalPass {
    /// Each ReLU's input box `(layer, centre, radius)`, for Shi's regulariser.
    pub(super) fn relu_boxes(&self) -> Vec<(usize, &Tensor, &Tensor)> {
        self.saved
            .iter()
            .enumerate()
            .filter_map(|(index, saved)| match saved {
                BoxSaved::Relu { centre, radius } => Some((index, centre, radius)),
                _ => None,
            })
            .collect()
    }
}

/// IBP through every layer but the last over the input box `[lower, upper]`, with BatchNorm at
/// the clean batch's statistics, keeping the box at the input of layer `keep` if asked.
pub(super) fn forward(
    layers: &[Layer],
    (lower, upper): (&Tensor, &Tensor),
    batch_norms: &HashMap<usize, BatchNormAffine>,
    keep: Option<usize>,
) -> Result<IntervalPass, TrainError> {
    let count = layers.len();
    let mut centre = ((upper + lower)? * 0.5)?;
    let mut radius = ((upper - lower)? * 0.5)?;
    // Shi's tightness term compares against the input radius in the units the first
    // non-normalising layer sees (auto_LiRPA and CTRAIN normalise in the data loader).
    let mut input_radius = None;
    let mut saved_layers = Vec::with_capacity(count);
    let mut kept = None;
    for (index, layer) in layers[..count - 1].iter().enumerate() {
        if keep == Some(index) {
            kept = Some((centre.clone(), radius.clone()));
        }
        if input_radius.is_none() && !matches!(layer, Layer::Normalize { .. }) {
            input_radius = Some(f64::from(radius.mean_all()?.to_scalar::<f32>()?));
        }
        let (next, saved) = match layer {
            Layer::Normalize { mean, std } => {
                let (scale, shift) = Layer::normalize_scale_shift(mean, std)?;
                let zero = shift.zeros_like()?;
                let next = (
                    channel_affine(&centre, &scale, &shift)?,
                    channel_affine(&radius, &scale, &zero)?,
                );
                (next, BoxSaved::Normalize { scale })
            }
            Layer::Conv2d {
                weight,
                bias,
                stride,
                padding,
            } => {
                let weight = weight.detach();
                let absolute = weight.abs()?;
                let (next_centre, centre) = convolve(
                    centre,
                    &weight,
                    Some(&bias.detach()),
                    (*stride, *padding),
                    true,
                )?;
                let (next_radius, radius) =
                    convolve(radius, &absolute, None, (*stride, *padding), true)?;
                (
                    (next_centre, next_radius),
                    BoxSaved::Conv {
                        centre,
                        radius,
                        absolute,
                    },
                )
            }
            Layer::Linear { weight, bias } => {
                let weight = weight.detach();
                let absolute = weight.abs()?;
                let zero = bias.zeros_like()?;
                let next = (
                    linear(&centre, &weight, &bias.detach())?,
                    linear(&radius, &absolute, &zero)?,
                );
                (
                    next,
                    BoxSaved::Affine {
                        centre,
                        radius,
                        absolute,
                    },
                )
            }
            Layer::BatchNorm { .. } => {
                let affine = &batch_norms[&index];
                let zero = affine.shift_tensor.zeros_like()?;
                let next = (
                    channel_affine(&centre, &affine.scale_tensor, &affine.shift_tensor)?,
                    channel_affine(&radius, &affine.scale_tensor.abs()?, &zero)?,
                );
                (next, BoxSaved::BatchNorm { centre, radius })
            }
            Layer::Relu => {
                let next = (
                    relu_box_centre(&centre, &radius)?,
                    relu_box_radius(&centre, &radius)?,
                );
                (next, BoxSaved::Relu { centre, radius })
            }
            Layer::Flatten if flatten_is_implicit(layers, index) => {
                ((centre, radius), BoxSaved::Implicit)
            }
            Layer::Flatten => {
                let dims = centre.dims().to_vec();
                let next = (centre.flatten_from(1)?, radius.flatten_from(1)?);
                (next, BoxSaved::Flatten { dims })
            }
        };
        saved_layers.push(saved);
        (centre, radius) = next;
    }
    if keep == Some(count - 1) {
        kept = Some((centre.clone(), radius.clone()));
    }
    Ok(IntervalPass {
        saved: saved_layers,
        centre,
        radius,
        input_radius,
        kept,
    })
}

/// IBP lower bounds of the margins with the spec folded into the last linear layer, as
/// `bounds::interval_spec_bounds` computes them, kept for the backward.
pub(super) struct MarginBounds {
    centre: Tensor,
    radius: Tensor,
    input_dims: Vec<usize>,
    spec_rows: Tensor,
    folded: Tensor,
    /// The margins' lower bounds `[B, K−1]`.
    pub(super) margins: Tensor,
}

impl MarginBounds {
    pub(super) fn new(
        centre: &Tensor,
        radius: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        spec: Tensor,
    ) -> Result<MarginBounds, TrainError> {
        let input_dims = centre.dims().to_vec();
        let (centre, radius) = (centre.flatten_from(1)?, radius.flatten_from(1)?);
        let (batch, specs, classes) = spec.dims3()?;
        let spec_rows = spec.reshape((batch * specs, classes))?;
        let folded = spec_rows
            .matmul(weight)?
            .reshape((batch, specs, weight.dim(1)?))?;
        let folded_bias = spec_rows
            .matmul(&bias.unsqueeze(1)?)?
            .reshape((batch, specs))?;
        let centre_part = folded.matmul(&centre.unsqueeze(2)?)?.squeeze(2)?;
        let radius_part = folded.abs()?.matmul(&radius.unsqueeze(2)?)?.squeeze(2)?;
        let margins = ((centre_part + folded_bias)? - radius_part)?;
        Ok(MarginBounds {
            centre,
            radius,
            input_dims,
            spec_rows,
            folded,
            margins,
        })
    }

    /// `(∂W, ∂b, ∂centre, ∂radius)` from the margins' gradient `[B, K−1]`.
    pub(super) fn backward(
        &self,
        d_margins: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor, Tensor), TrainError> {
        let (batch, specs, features) = self.folded.dims3()?;
        let ones = self.folded.ones_like()?;
        let sign = self.folded.ge(0.0)?.where_cond(&ones, &ones.neg()?)?;
        let column = d_margins.unsqueeze(2)?;
        // ∂m/∂F = c − sign(F)⊙r per spec row F.
        let through_centre = column.broadcast_mul(&self.centre.unsqueeze(1)?)?;
        let through_radius = column.broadcast_mul(&self.radius.unsqueeze(1)?)?;
        let d_folded = (through_centre - (through_radius * &sign)?)?;
        let d_folded = d_folded.reshape((batch * specs, features))?;
        let d_weight = self.spec_rows.t()?.matmul(&d_folded)?;
        let d_bias = self
            .spec_rows
            .t()?
            .matmul(&d_margins.reshape((batch * specs, 1))?)?
            .squeeze(1)?;
        let row = d_margins.unsqueeze(1)?;
        let d_centre = row.matmul(&self.folded)?.squeeze(1)?;
        let d_radius = row.matmul(&self.folded.abs()?)?.squeeze(1)?.neg()?;
        Ok((
            d_weight,
            d_bias,
            d_centre.reshape(self.input_dims.as_slice())?,
            d_radius.reshape(self.input_dims.as_slice())?,
        ))
    }
}

/// `sign(W) ⊙ g` with candle's `sign(0) = +1` (the gradient of `g` through `|W|`).
fn through_absolute(weight: &Tensor, g: &Tensor) -> Result<Tensor, TrainError> {
    Ok(weight.ge(0.0)?.where_cond(g, &g.neg()?)?)
}

/// Backward of one interval layer; returns the gradients of its input box (`None` below the
/// first parameter). BatchNorm's scale and shift gradients go to `interval_sums`; `extra` is
/// a regulariser's gradient with respect to a ReLU's input box.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    layer: &Layer,
    saved: &BoxSaved,
    (gc, gr): (Tensor, Tensor),
    (batch_norm, extra): (Option<&BatchNormAffine>, Option<&BoxGradient>),
    needs_input: bool,
    gradients: &mut Gradients,
    interval_sums: &mut BatchNormSums,
    index: usize,
) -> Result<Option<(Tensor, Tensor)>, TrainError> {
    let next = match (layer, saved) {
        (Layer::Normalize { .. }, BoxSaved::Normalize { scale }) => {
            let zero = scale.zeros_like()?;
            (
                channel_affine(&gc, scale, &zero)?,
                channel_affine(&gr, scale, &zero)?,
            )
        }
        (
            Layer::Conv2d {
                weight,
                bias,
                stride,
                padding,
            },
            BoxSaved::Conv {
                centre,
                radius,
                absolute,
            },
        ) => {
            let size = weight.dim(2)?;
            let through_centre = kernel_gradient(centre, &gc, size)?;
            let through_radius = kernel_gradient(radius, &gr, size)?;
            gradients.add(
                weight,
                (through_centre + through_absolute(weight, &through_radius)?)?,
            )?;
            gradients.add(bias, channel_sum(&gc)?)?;
            if !needs_input {
                return Ok(None);
            }
            (
                input_gradient(&gc, &weight.detach(), *stride, *padding, centre)?,
                input_gradient(&gr, absolute, *stride, *padding, radius)?,
            )
        }
        (
            Layer::Linear { weight, bias },
            BoxSaved::Affine {
                centre,
                radius,
                absolute,
            },
        ) => {
            let weight_gradient = (linear_weight_gradient(centre, &gc)?
                + abs_linear_weight_gradient(radius, &gr, weight)?)?;
            gradients.add(weight, weight_gradient)?;
            gradients.add(bias, gc.sum(0)?)?;
            if !needs_input {
                return Ok(None);
            }
            (
                linear_input_gradient(&gc, &weight.detach(), centre.dims())?,
                linear_input_gradient(&gr, absolute, radius.dims())?,
            )
        }
        (Layer::BatchNorm { .. }, BoxSaved::BatchNorm { centre, radius }) => {
            let affine = batch_norm.expect("every BatchNorm has its affine map");
            let zero = affine.shift_tensor.zeros_like()?;
            let absolute = affine.scale_tensor.abs()?;
            let (dc, d_scale, d_shift) = channel_affine_gradient(
                centre,
                &affine.scale_tensor,
                &affine.shift_tensor,
                &gc,
                false,
            )?;
            let (dr, d_absolute, _) =
                channel_affine_gradient(radius, &absolute, &zero, &gr, false)?;
            let d_scale = (d_scale + through_absolute(&affine.scale_tensor, &d_absolute)?)?;
            accumulate_sums(
                interval_sums,
                index,
                (d_scale.to_vec1()?, d_shift.to_vec1()?),
            );
            (dc, dr)
        }
        (Layer::Relu, BoxSaved::Relu { centre, radius }) => {
            relu_box_gradient(centre, radius, &gc, &gr, extra)?
        }
        (Layer::Flatten, BoxSaved::Flatten { dims }) => {
            (gc.reshape(dims.as_slice())?, gr.reshape(dims.as_slice())?)
        }
        (Layer::Flatten, BoxSaved::Implicit) => (gc, gr),
        _ => unreachable!("saved state matches its layer"),
    };
    Ok(needs_input.then_some(next))
}
