//! A hand-written reverse pass for the natural and IBP training losses.
//!
//! candle's autograd gives every input of every graph node a zero-filled gradient tensor and
//! adds each contribution into it, and BatchNorm takes several nodes (moments, affine, ReLU),
//! each adding into the activation's gradient again: on a `cnn7` step about 2 GB of memory
//! traffic that computes nothing. Here the forward passes run the same kernels, each layer keeps
//! what its backward needs, and each gradient is written once. The two passes of an IBP step
//! (clean and interval) run backward in lockstep, layer by layer, because BatchNorm's batch
//! statistics join them. Steps this pass does not cover (other methods, Shi's regulariser, a
//! robust loss on a net whose last layer is not linear) use autograd; `tests/backprop.rs`
//! checks both give the same loss and gradients.

use super::TrainError;
use super::config::Method;
use super::schedule::ScheduleValues;
use crate::bounds::margin_spec;
use crate::kernels::{
    BoxGradient, WinogradInput, abs_linear_weight_gradient, batch_norm_input_gradient,
    box_statistics, channel_affine, channel_affine_gradient, channel_affine_relu,
    channel_gradient_sums, channel_moments, channel_sum, conv_transpose2d, conv2d_columns,
    conv2d_from_columns, conv2d_weight_gradient_from_columns, l1_penalty_gradient, linear,
    linear_input_gradient, linear_weight_gradient, relu, relu_box_centre, relu_box_gradient,
    relu_box_radius, relu_gradient, winograd_conv2d_input_gradient, winograd_conv2d_keeping_input,
    winograd_conv2d_weight_gradient_from, winograd_supports,
};
use crate::model::{BATCH_NORM_EPS, Layer, Net};
use candle_core::{Tensor, TensorId};
use std::collections::HashMap;

/// Parameter gradients by tensor id, read by the optimiser as it reads candle's `GradStore`.
#[derive(Debug, Default)]
pub struct Gradients(HashMap<TensorId, Tensor>);

impl Gradients {
    /// The gradient of `parameter`, if the loss depends on it.
    pub fn get(&self, parameter: &Tensor) -> Option<&Tensor> {
        self.0.get(&parameter.id())
    }

    fn add(&mut self, parameter: &Tensor, gradient: Tensor) -> Result<(), TrainError> {
        let gradient = match self.0.remove(&parameter.id()) {
            Some(sum) => (sum + gradient)?,
            None => gradient,
        };
        self.0.insert(parameter.id(), gradient);
        Ok(())
    }
}

/// The loss of one step this pass covers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Objective {
    /// Cross-entropy of the clean logits.
    Natural,
    /// `κ·natural + (1 − κ)·` robust cross-entropy of IBP margin bounds over the ε-box.
    Ibp {
        /// Radius of the ℓ∞ input box.
        eps: f64,
        /// Weight of the natural loss.
        kappa: f64,
        /// Weight of Shi et al.'s regulariser on the interval pass (0: off).
        shi_weight: f64,
    },
}

impl Objective {
    /// The objective of a step of `method` with the schedule at `values` (Shi's regulariser
    /// weighted by `shi_weight`), or `None` when autograd must run it (a robust loss other than
    /// IBP's, or no final linear layer).
    pub fn for_step(
        net: &Net,
        method: Method,
        values: ScheduleValues,
        shi_weight: f64,
    ) -> Option<Objective> {
        let eps = values.eps;
        if method == Method::Standard || eps <= 0.0 {
            return Some(Objective::Natural);
        }
        let kappa = match method {
            Method::Ibp => values.kappa,
            // TAPS trains on the plain IBP loss while ε ramps (its own loss starts at full ε).
            Method::Taps if values.ramp_progress < 1.0 => 0.0,
            _ => return None,
        };
        let last_is_linear = matches!(net.layers().last(), Some(Layer::Linear { .. }));
        last_is_linear.then_some(Objective::Ibp {
            eps,
            kappa,
            shi_weight,
        })
    }
}

/// A step's loss and the gradients of every trainable parameter it depends on.
#[derive(Debug)]
pub struct StepGradients {
    /// The loss value (including the L1 penalty).
    pub loss: f64,
    /// Its gradients.
    pub gradients: Gradients,
}

/// BatchNorm at one layer as the affine map it applies with this batch's statistics.
struct BatchNormAffine {
    scale: Vec<f32>,
    shift: Vec<f32>,
    scale_tensor: Tensor,
    shift_tensor: Tensor,
    mean: Vec<f32>,
    sigma: Vec<f32>,
    gamma: Vec<f32>,
    /// Elements per channel the statistics were taken over.
    count: usize,
}

/// What a clean layer (or BatchNorm fused with its ReLU) keeps for its backward.
enum CleanSaved {
    Normalize {
        scale: Tensor,
    },
    Conv {
        input: ConvInput,
    },
    Linear {
        input: Tensor,
    },
    BatchNorm {
        input: Tensor,
        relu: bool,
    },
    Relu {
        input: Tensor,
    },
    Flatten {
        dims: Vec<usize>,
    },
    /// A Flatten the next linear layer reads through.
    Implicit,
}

/// A convolution's input as its backward reads it, in the form the forward kernels built once
/// for the forward pass and the kernel gradient.
struct ConvInput {
    /// Input height and width (the size of the input gradient).
    size: (usize, usize),
    kept: KeptInput,
}

/// Which kernels ran a convolution, with the input as they transformed it.
enum KeptInput {
    /// Winograd, with the input in its transformed domain.
    Winograd(WinogradInput),
    /// im2col + gemm, with the im2col matrices.
    Columns(Tensor),
}

/// What an interval layer keeps for its backward.
enum BoxSaved {
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

/// Loss and gradients of `objective` on one batch, updating BatchNorm running statistics as
/// [`Net::forward_train`] does. `labels` are `u32`; `l1_weight` scales `Σ |W|`.
pub fn loss_and_gradients(
    net: &mut Net,
    images: &Tensor,
    labels: &Tensor,
    objective: Objective,
    l1_weight: f64,
) -> Result<StepGradients, TrainError> {
    let layers: Vec<Layer> = net.layers().to_vec();
    let count = layers.len();
    let label_values = labels.to_vec1::<u32>()?;

    // Clean forward pass.
    let mut clean: Vec<(usize, CleanSaved)> = Vec::with_capacity(count);
    let mut batch_norms: HashMap<usize, BatchNormAffine> = HashMap::new();
    let mut x = images.clone();
    let mut index = 0;
    while index < count {
        let (y, saved, width) = match &layers[index] {
            Layer::Normalize { mean, std } => {
                let scale = std.recip()?;
                let shift = (mean.neg()? / std)?;
                let y = channel_affine(&x, &scale, &shift)?;
                (y, CleanSaved::Normalize { scale }, 1)
            }
            Layer::Conv2d {
                weight,
                bias,
                stride,
                padding,
            } => {
                let (y, input) =
                    convolve(x, &weight.detach(), Some(&bias.detach()), *stride, *padding)?;
                (y, CleanSaved::Conv { input }, 1)
            }
            Layer::Linear { weight, bias } => {
                let y = linear(&x, &weight.detach(), &bias.detach())?;
                (y, CleanSaved::Linear { input: x }, 1)
            }
            Layer::BatchNorm { weight, bias, .. } => {
                let affine = batch_norm_affine(net, index, &x, weight, bias)?;
                let relu = matches!(layers.get(index + 1), Some(Layer::Relu));
                let y = if relu {
                    channel_affine_relu(&x, &affine.scale_tensor, &affine.shift_tensor)?
                } else {
                    channel_affine(&x, &affine.scale_tensor, &affine.shift_tensor)?
                };
                batch_norms.insert(index, affine);
                (
                    y,
                    CleanSaved::BatchNorm { input: x, relu },
                    1 + usize::from(relu),
                )
            }
            Layer::Relu => (relu(&x)?, CleanSaved::Relu { input: x }, 1),
            Layer::Flatten if net.flatten_is_implicit(index, count) => (x, CleanSaved::Implicit, 1),
            Layer::Flatten => {
                let dims = x.dims().to_vec();
                (x.flatten_from(1)?, CleanSaved::Flatten { dims }, 1)
            }
        };
        clean.push((index, saved));
        x = y;
        index += width;
    }
    let logits = x;
    let classes = logits.dim(1)?;
    let batch = label_values.len();
    let (natural_loss, natural_gradient) =
        cross_entropy_gradient(&logits.to_vec2::<f32>()?, &label_values)?;

    // Interval forward pass (all but the last, linear layer).
    let mut boxes: Vec<BoxSaved> = Vec::new();
    let mut robust = None;
    let mut kappa = 1.0;
    let mut shi = None;
    if let Objective::Ibp {
        eps,
        kappa: mix,
        shi_weight,
    } = objective
    {
        kappa = mix;
        let lower = (images - eps)?.clamp(0.0, 1.0)?;
        let upper = (images + eps)?.clamp(0.0, 1.0)?;
        let mut centre = ((&upper + &lower)? * 0.5)?;
        let mut radius = ((&upper - &lower)? * 0.5)?;
        // Shi's tightness term compares against the input radius in the units the first
        // non-normalising layer sees (auto_LiRPA and CTRAIN normalise in the data loader).
        let mut input_radius = None;
        for (index, layer) in layers[..count - 1].iter().enumerate() {
            if input_radius.is_none() && !matches!(layer, Layer::Normalize { .. }) {
                input_radius = Some(f64::from(radius.mean_all()?.to_scalar::<f32>()?));
            }
            let (next, saved) = match layer {
                Layer::Normalize { mean, std } => {
                    let scale = std.recip()?;
                    let shift = (mean.neg()? / std)?;
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
                    let (next_centre, centre) =
                        convolve(centre, &weight, Some(&bias.detach()), *stride, *padding)?;
                    let (next_radius, radius) =
                        convolve(radius, &absolute, None, *stride, *padding)?;
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
                Layer::Flatten if net.flatten_is_implicit(index, count) => {
                    ((centre, radius), BoxSaved::Implicit)
                }
                Layer::Flatten => {
                    let dims = centre.dims().to_vec();
                    let next = (centre.flatten_from(1)?, radius.flatten_from(1)?);
                    (next, BoxSaved::Flatten { dims })
                }
            };
            boxes.push(saved);
            (centre, radius) = next;
        }
        let Some(Layer::Linear { weight, bias }) = layers.last() else {
            return Err(TrainError::Data(
                "the IBP reverse pass needs a final linear layer".into(),
            ));
        };
        if shi_weight > 0.0 {
            let relu_boxes: Vec<(usize, &Tensor, &Tensor)> = boxes
                .iter()
                .enumerate()
                .filter_map(|(index, saved)| match saved {
                    BoxSaved::Relu { centre, radius } => Some((index, centre, radius)),
                    _ => None,
                })
                .collect();
            let input_radius = input_radius.ok_or_else(|| {
                TrainError::internal("an IBP step on a network of normalisations only".into())
            })?;
            shi = shi_regularizer(&relu_boxes, input_radius, shi_weight)?;
        }
        let spec = margin_spec(labels, classes)?;
        robust = Some(MarginBounds::new(
            &centre,
            &radius,
            &weight.detach(),
            &bias.detach(),
            spec,
        )?);
    }

    let mut loss = natural_loss;
    let clean_gradient = scaled(&natural_gradient, kappa);
    let mut gradients = Gradients::default();
    let mut box_gradient = None;
    if let Some(bounds) = &robust {
        let margins = bounds.margins.to_vec2::<f32>()?;
        let (robust_loss, margin_gradient) =
            robust_cross_entropy_gradient(&margins, &label_values)?;
        loss = kappa * natural_loss + (1.0 - kappa) * robust_loss;
        if let Some((value, _)) = &shi {
            loss += value;
        }
        let margin_gradient = Tensor::from_vec(
            scaled(&margin_gradient, 1.0 - kappa),
            (batch, classes - 1),
            images.device(),
        )?;
        let Some(Layer::Linear { weight, bias }) = layers.last() else {
            unreachable!("checked in the forward pass")
        };
        let (d_weight, d_bias, d_centre, d_radius) = bounds.backward(&margin_gradient)?;
        gradients.add(weight, d_weight)?;
        gradients.add(bias, d_bias)?;
        box_gradient = Some((d_centre, d_radius));
    }
    // Backward, from the top, interval layer `i` before the clean layer starting at `i`.
    let first_parameter = layers
        .iter()
        .position(|layer| {
            matches!(
                layer,
                Layer::Conv2d { .. } | Layer::Linear { .. } | Layer::BatchNorm { .. }
            )
        })
        .unwrap_or(count);
    let mut g = Tensor::from_vec(clean_gradient, (batch, classes), images.device())?;
    let mut interval_sums: HashMap<usize, (Vec<f32>, Vec<f32>)> = HashMap::new();
    let mut clean_steps = clean.into_iter().rev().peekable();
    for index in (first_parameter..count).rev() {
        let needs_input = index > first_parameter;
        if index < count - 1
            && let Some((d_centre, d_radius)) = box_gradient.take()
        {
            let saved = &boxes[index];
            let extra = shi
                .as_ref()
                .and_then(|(_, gradients)| gradients.get(&index));
            box_gradient = interval_backward(
                &layers[index],
                saved,
                (d_centre, d_radius),
                (batch_norms.get(&index), extra),
                needs_input,
                &mut gradients,
                &mut interval_sums,
                index,
            )?;
        }
        if clean_steps.peek().map(|(start, _)| *start) == Some(index) {
            let (_, saved) = clean_steps.next().expect("peeked");
            g = clean_backward(
                &layers[index],
                saved,
                g,
                batch_norms.get(&index),
                interval_sums.remove(&index),
                needs_input,
                &mut gradients,
            )?;
        }
    }
    if l1_weight > 0.0 {
        for layer in &layers {
            if let Layer::Conv2d { weight, .. } | Layer::Linear { weight, .. } = layer {
                let (sum, gradient) =
                    l1_penalty_gradient(&weight.detach(), gradients.get(weight), l1_weight as f32)?;
                loss += l1_weight * sum;
                gradients.0.insert(weight.id(), gradient);
            }
        }
    }
    Ok(StepGradients { loss, gradients })
}

fn scaled(values: &[f32], factor: f64) -> Vec<f32> {
    values
        .iter()
        .map(|v| (f64::from(*v) * factor) as f32)
        .collect()
}

/// Tolerance τ of Shi et al.'s regulariser (as in `train::regularizer`).
const SHI_TOLERANCE: f64 = 0.5;

/// Gradient of `max(x, floor)` in `x`, split at a tie as candle's `maximum` splits it.
fn above(x: f64, floor: f64) -> f64 {
    if x > floor {
        1.0
    } else if x == floor {
        0.5
    } else {
        0.0
    }
}

/// `min(x, 1/max(x, ε))` (a ratio folded into (0, 1]) and its derivative.
fn symmetric(x: f64) -> (f64, f64) {
    let floored = x.max(1e-12);
    let inverse = 1.0 / floored;
    let d_inverse = -above(x, 1e-12) / (floored * floored);
    let value = x.min(inverse);
    let derivative = if x < inverse {
        1.0
    } else if x > inverse {
        d_inverse
    } else {
        0.5 * (1.0 + d_inverse)
    };
    (value, derivative)
}

/// Shi et al.'s regulariser over the ReLU input boxes `(layer, c, r)` as
/// `train::regularizer::shi_regularizer` computes it, times `weight`: its value and the
/// gradient with respect to each box. `None` without ReLUs.
#[allow(clippy::type_complexity)]
fn shi_regularizer(
    relu_boxes: &[(usize, &Tensor, &Tensor)],
    input_radius: f64,
    weight: f64,
) -> Result<Option<(f64, HashMap<usize, BoxGradient>)>, TrainError> {
    if relu_boxes.is_empty() {
        return Ok(None);
    }
    let tau = SHI_TOLERANCE;
    let per_layer = weight / relu_boxes.len() as f64;
    let mut value = 0.0;
    let mut gradients = HashMap::new();
    for &(index, centre, radius) in relu_boxes {
        let s = box_statistics(centre, radius)?;
        let n = s.count.max(1.0);
        // Tightness: relu(τ − r̄₀ / max(mean r, ε)) / τ.
        let mean_radius = s.radius_sum / n;
        let floored = mean_radius.max(1e-12);
        let tight = tau - input_radius / floored;
        value += per_layer * tight.max(0.0) / tau;
        let d_mean_radius = if tight >= 0.0 {
            per_layer * input_radius / (floored * floored) / tau * above(mean_radius, 1e-12)
        } else {
            0.0
        };
        let mut gradient = BoxGradient {
            radius: (d_mean_radius / n) as f32,
            ..BoxGradient::default()
        };
        // Balance of the stably active and inactive centres' means and spreads.
        if s.active > 0.0 && s.inactive > 0.0 {
            let mean = s.centre_sum / n;
            let (mean_active, mean_inactive) = (s.active_centre_sum / n, s.inactive_centre_sum / n);
            let spread = |squares: f64, sum: f64, count: f64| {
                squares - 2.0 * mean * sum + mean * mean * count
            };
            let var_active = spread(s.active_square_sum, s.active_centre_sum, s.active);
            let var_inactive = spread(s.inactive_square_sum, s.inactive_centre_sum, s.inactive);
            let mean_floor = (-mean_inactive).max(1e-12);
            let var_floor = var_inactive.max(1e-12);
            let (mean_ratio, var_ratio) = (mean_active / mean_floor, var_active / var_floor);
            let (mean_sym, d_mean_sym) = symmetric(mean_ratio);
            let (var_sym, d_var_sym) = symmetric(var_ratio);
            let balance = ((tau - mean_sym).max(0.0) + (tau - var_sym).max(0.0)) / tau;
            if balance.is_finite() {
                value += per_layer * balance;
                let d_mean_ratio = if tau - mean_sym >= 0.0 {
                    -per_layer / tau * d_mean_sym
                } else {
                    0.0
                };
                let d_var_ratio = if tau - var_sym >= 0.0 {
                    -per_layer / tau * d_var_sym
                } else {
                    0.0
                };
                let d_mean_active = d_mean_ratio / mean_floor;
                let d_mean_inactive = d_mean_ratio * mean_active / (mean_floor * mean_floor)
                    * above(-mean_inactive, 1e-12);
                let d_var_active = d_var_ratio / var_floor;
                let d_var_inactive = -d_var_ratio * var_active / (var_floor * var_floor)
                    * above(var_inactive, 1e-12);
                // ∂/∂c_k of Σ (c − m)² [active] includes the path through m = mean(c).
                let offset = -2.0 / n
                    * (d_var_active * (s.active_centre_sum - mean * s.active)
                        + d_var_inactive * (s.inactive_centre_sum - mean * s.inactive));
                gradient.active = (d_mean_active / n) as f32;
                gradient.inactive = (d_mean_inactive / n) as f32;
                gradient.active_deviation = d_var_active as f32;
                gradient.inactive_deviation = d_var_inactive as f32;
                gradient.mean = mean as f32;
                gradient.offset = offset as f32;
            }
        }
        gradients.insert(index, gradient);
    }
    Ok(Some((value, gradients)))
}

/// A convolution (`bias` optional): Winograd where it applies, im2col otherwise; returns the
/// output and the input as the backward reads it.
fn convolve(
    x: Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<(Tensor, ConvInput), TrainError> {
    let (_, _, height, width) = x.dims4()?;
    let (y, kept) = if winograd_supports(x.dims(), weight.dims(), stride, padding) {
        let (y, transformed) = winograd_conv2d_keeping_input(&x, weight, bias)?;
        (y, KeptInput::Winograd(transformed))
    } else {
        let size = weight.dim(2)?;
        let out = |length: usize| (length + 2 * padding).saturating_sub(size) / stride + 1;
        let columns = conv2d_columns(&x, size, stride, padding)?;
        let y = conv2d_from_columns(&columns, weight, bias, (out(height), out(width)))?;
        (y, KeptInput::Columns(columns))
    };
    let input = ConvInput {
        size: (height, width),
        kept,
    };
    Ok((y, input))
}

/// The input gradient of [`convolve`], by the kernels that ran its forward pass.
fn input_gradient(
    g: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: usize,
    input: &ConvInput,
) -> Result<Tensor, TrainError> {
    let (height, width) = input.size;
    Ok(match input.kept {
        KeptInput::Winograd(_) => winograd_conv2d_input_gradient(g, weight)?,
        KeptInput::Columns(_) => conv_transpose2d(g, weight, stride, padding, height, width)?,
    })
}

/// The kernel gradient of [`convolve`] from the input its forward pass kept.
fn kernel_gradient(input: &ConvInput, g: &Tensor, size: usize) -> Result<Tensor, TrainError> {
    Ok(match &input.kept {
        KeptInput::Winograd(transformed) => winograd_conv2d_weight_gradient_from(transformed, g)?,
        KeptInput::Columns(columns) => conv2d_weight_gradient_from_columns(columns, g, size)?,
    })
}

/// BatchNorm `index` with this batch's statistics of `x`, which also update the running ones.
fn batch_norm_affine(
    net: &mut Net,
    index: usize,
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
) -> Result<BatchNormAffine, TrainError> {
    let moments = channel_moments(x)?;
    let (mean, variance) = (moments.get(0)?, moments.get(1)?);
    net.update_running_statistics(index, &mean, &variance, x)?;
    let mean = mean.to_vec1::<f32>()?;
    let variance = variance.to_vec1::<f32>()?;
    let gamma = weight.to_vec1::<f32>()?;
    let beta = bias.to_vec1::<f32>()?;
    let sigma: Vec<f32> = variance
        .iter()
        .map(|v| (v + BATCH_NORM_EPS as f32).sqrt())
        .collect();
    let scale: Vec<f32> = gamma.iter().zip(&sigma).map(|(g, s)| g / s).collect();
    let shift: Vec<f32> = beta
        .iter()
        .zip(mean.iter().zip(&scale))
        .map(|(b, (m, s))| b - m * s)
        .collect();
    let device = x.device();
    Ok(BatchNormAffine {
        scale_tensor: Tensor::new(scale.as_slice(), device)?,
        shift_tensor: Tensor::new(shift.as_slice(), device)?,
        scale,
        shift,
        mean,
        sigma,
        gamma,
        count: x.elem_count() / x.dim(1)?.max(1),
    })
}

/// Mean cross-entropy of `logits` rows and its gradient `(softmax − onehot)/B`.
fn cross_entropy_gradient(
    logits: &[Vec<f32>],
    labels: &[u32],
) -> Result<(f64, Vec<f32>), TrainError> {
    let batch = logits.len().max(1) as f64;
    let mut loss = 0.0;
    let mut gradient = Vec::with_capacity(logits.len() * logits.first().map_or(0, Vec::len));
    for (row, &label) in logits.iter().zip(labels) {
        let label = label as usize;
        if label >= row.len() {
            return Err(TrainError::Data(format!(
                "label {label} for {} classes",
                row.len()
            )));
        }
        let max = row
            .iter()
            .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
        let exps: Vec<f64> = row.iter().map(|&v| (f64::from(v) - max).exp()).collect();
        let total: f64 = exps.iter().sum();
        loss += total.ln() + max - f64::from(row[label]);
        for (class, e) in exps.iter().enumerate() {
            let onehot = if class == label { 1.0 } else { 0.0 };
            gradient.push(((e / total - onehot) / batch) as f32);
        }
    }
    Ok((loss / batch, gradient))
}

/// Robust cross-entropy of margin lower bounds `[B, K−1]` (logit `0` for the label, `−m` for
/// the others, as `bounds::robust_logits` places them) and its gradient in the margins.
fn robust_cross_entropy_gradient(
    margins: &[Vec<f32>],
    labels: &[u32],
) -> Result<(f64, Vec<f32>), TrainError> {
    let logits: Vec<Vec<f32>> = margins
        .iter()
        .zip(labels)
        .map(|(row, &label)| {
            let mut logits = Vec::with_capacity(row.len() + 1);
            for (r, m) in row.iter().enumerate() {
                if r == label as usize {
                    logits.push(0.0);
                }
                logits.push(-m);
            }
            if label as usize == row.len() {
                logits.push(0.0);
            }
            logits
        })
        .collect();
    let (loss, logit_gradient) = cross_entropy_gradient(&logits, labels)?;
    let classes = margins.first().map_or(1, |row| row.len() + 1);
    let mut gradient = Vec::with_capacity(margins.len() * (classes - 1));
    for (row, &label) in logit_gradient.chunks(classes).zip(labels) {
        for (class, g) in row.iter().enumerate() {
            if class != label as usize {
                gradient.push(-g);
            }
        }
    }
    Ok((loss, gradient))
}

/// IBP lower bounds of the margins with the spec folded into the last linear layer, as
/// `bounds::interval_spec_bounds` computes them, kept for the backward.
struct MarginBounds {
    centre: Tensor,
    radius: Tensor,
    input_dims: Vec<usize>,
    spec_rows: Tensor,
    folded: Tensor,
    margins: Tensor,
}

impl MarginBounds {
    fn new(
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
    fn backward(&self, d_margins: &Tensor) -> Result<(Tensor, Tensor, Tensor, Tensor), TrainError> {
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

/// Backward of one clean step; returns the gradient of its input (unchanged if not needed).
fn clean_backward(
    layer: &Layer,
    saved: CleanSaved,
    g: Tensor,
    batch_norm: Option<&BatchNormAffine>,
    interval_sums: Option<(Vec<f32>, Vec<f32>)>,
    needs_input: bool,
    gradients: &mut Gradients,
) -> Result<Tensor, TrainError> {
    Ok(match (layer, saved) {
        (Layer::Normalize { .. }, CleanSaved::Normalize { scale }) => {
            channel_affine(&g, &scale, &scale.zeros_like()?)?
        }
        (
            Layer::Conv2d {
                weight,
                bias,
                stride,
                padding,
            },
            CleanSaved::Conv { input },
        ) => {
            let size = weight.dim(2)?;
            gradients.add(weight, kernel_gradient(&input, &g, size)?)?;
            gradients.add(bias, channel_sum(&g)?)?;
            if needs_input {
                input_gradient(&g, &weight.detach(), *stride, *padding, &input)?
            } else {
                g
            }
        }
        (Layer::Linear { weight, bias }, CleanSaved::Linear { input }) => {
            gradients.add(weight, linear_weight_gradient(&input, &g)?)?;
            gradients.add(bias, g.sum(0)?)?;
            if needs_input {
                linear_input_gradient(&g, &weight.detach(), input.dims())?
            } else {
                g
            }
        }
        (Layer::BatchNorm { weight, bias, .. }, CleanSaved::BatchNorm { input, relu }) => {
            let affine = batch_norm.expect("every BatchNorm has its affine map");
            let (mut d_scale, mut d_shift) =
                channel_gradient_sums(&input, &affine.scale, &affine.shift, &g, relu)?;
            if let Some((interval_scale, interval_shift)) = interval_sums {
                add_into(&mut d_scale, &interval_scale);
                add_into(&mut d_shift, &interval_shift);
            }
            let channels = affine.scale.len();
            let (mut d_gamma, mut a, mut b) = (
                vec![0f32; channels],
                vec![0f32; channels],
                vec![0f32; channels],
            );
            let count = affine.count.max(1) as f32;
            for c in 0..channels {
                // shift = β − μ·scale and scale = γ/σ: the scale's total gradient includes the
                // path through the shift.
                let d_scale_total = d_scale[c] - d_shift[c] * affine.mean[c];
                let sigma = affine.sigma[c];
                d_gamma[c] = d_scale_total / sigma;
                let d_sigma = -d_scale_total * affine.gamma[c] / (sigma * sigma);
                let d_variance = d_sigma / (2.0 * sigma);
                let d_mean = -affine.scale[c] * d_shift[c];
                a[c] = 2.0 * d_variance / count;
                b[c] = d_mean / count - a[c] * affine.mean[c];
            }
            let device = g.device().clone();
            gradients.add(weight, Tensor::new(d_gamma.as_slice(), &device)?)?;
            gradients.add(bias, Tensor::new(d_shift.as_slice(), &device)?)?;
            if needs_input {
                batch_norm_input_gradient(
                    &input,
                    (&affine.scale, &affine.shift),
                    (&a, &b),
                    &g,
                    relu,
                )?
            } else {
                g
            }
        }
        (Layer::Relu, CleanSaved::Relu { input }) => relu_gradient(&input, &g)?,
        (Layer::Flatten, CleanSaved::Flatten { dims }) => g.reshape(dims)?,
        (Layer::Flatten, CleanSaved::Implicit) => g,
        _ => unreachable!("saved state matches its layer"),
    })
}

fn add_into(sum: &mut [f32], values: &[f32]) {
    for (s, v) in sum.iter_mut().zip(values) {
        *s += v;
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
fn interval_backward(
    layer: &Layer,
    saved: &BoxSaved,
    (gc, gr): (Tensor, Tensor),
    (batch_norm, extra): (Option<&BatchNormAffine>, Option<&BoxGradient>),
    needs_input: bool,
    gradients: &mut Gradients,
    interval_sums: &mut HashMap<usize, (Vec<f32>, Vec<f32>)>,
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
            interval_sums.insert(index, (d_scale.to_vec1()?, d_shift.to_vec1()?));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Initialization, LayerSpec, NetSpec};
    use crate::train::TrainConfig;
    use crate::train::fit::autograd_loss;
    use crate::train::methods::implementation;
    use crate::train::schedule::ScheduleValues;
    use candle_core::{DType, Device};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn conv(out_channels: usize, stride: usize) -> LayerSpec {
        LayerSpec::Conv2d {
            out_channels,
            kernel_size: 3,
            stride,
            padding: 1,
        }
    }

    fn linear(out_features: usize) -> LayerSpec {
        LayerSpec::Linear { out_features }
    }

    /// Nets covering every layer kind, BatchNorm with and without a ReLU after it, after a
    /// convolution and after a linear layer, an implicit and an explicit Flatten, im2col and
    /// Winograd convolutions.
    fn specs() -> Vec<NetSpec> {
        use LayerSpec::{BatchNorm, Flatten, Relu};
        let normalize = LayerSpec::Normalize {
            mean: vec![0.4, 0.5],
            std: vec![0.3, 0.2],
        };
        vec![
            NetSpec {
                input_shape: [1, 8, 8],
                layers: vec![conv(4, 2), Relu, Flatten, linear(12), Relu, linear(5)],
            },
            NetSpec {
                input_shape: [2, 8, 8],
                layers: vec![
                    normalize,
                    conv(4, 1),
                    BatchNorm {},
                    Relu,
                    conv(6, 2),
                    BatchNorm {},
                    conv(6, 1),
                    Relu,
                    Flatten,
                    linear(16),
                    BatchNorm {},
                    Relu,
                    linear(5),
                ],
            },
            // 16 → 16 channels at stride 1: the Winograd convolutions.
            NetSpec {
                input_shape: [1, 8, 8],
                layers: vec![
                    conv(16, 2),
                    BatchNorm {},
                    Relu,
                    conv(16, 1),
                    BatchNorm {},
                    Relu,
                    conv(16, 1),
                    Relu,
                    Flatten,
                    linear(5),
                ],
            },
            NetSpec {
                input_shape: [1, 6, 6],
                layers: vec![Flatten, Relu, linear(10), BatchNorm {}, Relu, linear(4)],
            },
        ]
    }

    /// A network whose parameters are all perturbed (BatchNorm's γ and β start at 1 and 0).
    fn network(spec: &NetSpec) -> Net {
        let net = Net::new(spec, Initialization::Default, 3).unwrap();
        let mut rng = StdRng::seed_from_u64(11);
        for var in net.trainable_vars() {
            let noise: Vec<f32> = (0..var.elem_count())
                .map(|_| rng.random_range(-0.3f32..0.3))
                .collect();
            let noise = Tensor::from_vec(noise, var.dims(), &Device::Cpu).unwrap();
            var.set(&(var.as_tensor() + noise).unwrap()).unwrap();
        }
        net
    }

    fn batch(spec: &NetSpec, classes: usize) -> (Tensor, Tensor) {
        let [c, h, w] = spec.input_shape;
        let images = Tensor::rand(0f32, 1f32, (7, c, h, w), &Device::Cpu).unwrap();
        let labels: Vec<u32> = (0..7).map(|i| (i * 3 % classes) as u32).collect();
        (
            images,
            Tensor::new(labels.as_slice(), &Device::Cpu).unwrap(),
        )
    }

    fn values(eps: f64, kappa: f64) -> ScheduleValues {
        ramping(eps, kappa, 1.0)
    }

    fn ramping(eps: f64, kappa: f64, ramp_progress: f64) -> ScheduleValues {
        ScheduleValues {
            eps,
            ramp_progress,
            kappa,
            beta: 0.0,
            learning_rate: 1e-3,
        }
    }

    /// Agreement to float tolerance relative to the tensor's largest entry, or to `floor` for a
    /// tensor whose exact value is 0 (a bias before BatchNorm), where only rounding remains.
    fn assert_close(what: &str, ours: &Tensor, reference: &Tensor, floor: f32) {
        let ours = ours.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let reference = reference.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(ours.len(), reference.len(), "{what}: sizes");
        let scale = reference.iter().fold(floor, |m, v| m.max(v.abs()));
        for (i, (a, b)) in ours.iter().zip(&reference).enumerate() {
            assert!(
                (a - b).abs() <= 2e-4 * scale,
                "{what}[{i}]: {a} vs autograd {b} (largest {scale})"
            );
        }
    }

    #[test]
    fn reverse_pass_matches_autograd_in_loss_gradients_and_running_statistics() {
        // (method, ε, κ, L1 weight, Shi weight); Shi's regulariser runs at half its weight
        // (ε is half the training ε).
        let cases = [
            (Method::Standard, 0.0, 1.0, 0.0, 0.0),
            (Method::Standard, 0.0, 1.0, 1e-2, 0.0),
            (Method::Ibp, 0.05, 0.3, 0.0, 0.0),
            (Method::Ibp, 0.2, 0.0, 1e-2, 0.0),
            (Method::Ibp, 0.05, 0.5, 0.0, 0.5),
            (Method::Ibp, 0.02, 0.0, 1e-3, 1.0),
            // TAPS while ε ramps: IBP's loss alone (κ is not TAPS'), with Shi's regulariser.
            (Method::Taps, 0.05, 0.7, 1e-3, 0.5),
        ];
        for (spec_index, spec) in specs().iter().enumerate() {
            for &(method, eps, kappa, l1, shi) in &cases {
                let label =
                    format!("net {spec_index}, {method} ε={eps} κ={kappa} l1={l1} shi={shi}");
                let mut ours = network(spec);
                let mut reference = network(spec);
                let (images, labels) = batch(spec, ours.num_classes());
                let schedule = ramping(eps, kappa, 0.5);
                let objective =
                    Objective::for_step(&ours, method, schedule, 0.5 * shi).expect("covered step");
                let step = loss_and_gradients(&mut ours, &images, &labels, objective, l1).unwrap();

                let config = TrainConfig {
                    l1_reg_weight: l1,
                    shi_reg_weight: shi,
                    ..TrainConfig::default()
                };
                let robust = implementation(method);
                let mut rng = StdRng::seed_from_u64(0);
                let loss = autograd_loss(
                    &mut reference,
                    robust.as_ref(),
                    method,
                    &config,
                    schedule,
                    2.0 * eps,
                    &images,
                    &labels,
                    &mut rng,
                )
                .unwrap();
                let expected = f64::from(loss.to_scalar::<f32>().unwrap());
                assert!(
                    (step.loss - expected).abs() <= 1e-4 * expected.abs().max(1.0),
                    "{label}: loss {} vs autograd {expected}",
                    step.loss
                );
                let grads = loss.backward().unwrap();
                let pairs: Vec<_> = ours
                    .named_vars()
                    .iter()
                    .zip(reference.named_vars())
                    .filter(|(mine, _)| mine.trainable)
                    .map(|(mine, theirs)| {
                        let expected = grads
                            .get(theirs.var.as_tensor())
                            .expect("autograd gradient");
                        let got = step
                            .gradients
                            .get(mine.var.as_tensor())
                            .unwrap_or_else(|| panic!("{label}: no gradient for {}", mine.name));
                        (mine.name.clone(), got, expected)
                    })
                    .collect();
                let largest = pairs
                    .iter()
                    .map(|(_, _, g)| {
                        g.abs()
                            .unwrap()
                            .max_all()
                            .unwrap()
                            .to_scalar::<f32>()
                            .unwrap()
                    })
                    .fold(0f32, f32::max);
                for (name, got, expected) in pairs {
                    assert_close(&format!("{label}: ∂{name}"), got, expected, 5e-2 * largest);
                }
                for (mine, theirs) in ours.named_vars().iter().zip(reference.named_vars()) {
                    assert_close(
                        &format!("{label}: {}", mine.name),
                        mine.var.as_tensor(),
                        theirs.var.as_tensor(),
                        1e-6,
                    );
                }
                assert_eq!(labels.dtype(), DType::U32);
            }
        }
    }

    #[test]
    fn shi_regularizer_gradient_agrees_with_finite_differences_when_every_term_is_active() {
        use crate::kernels::relu_box_gradient;
        // Widely spread active centres and tightly packed inactive ones make both balance
        // ratios small, so the tightness and both balance terms carry gradient.
        let mut rng = StdRng::seed_from_u64(5);
        let (centres, radii): (Vec<f32>, Vec<f32>) = (0..48)
            .map(|k| match k % 3 {
                0 => (
                    rng.random_range(1.0f32..6.0),
                    rng.random_range(0.05f32..0.3),
                ),
                1 => (
                    rng.random_range(-0.6f32..-0.5),
                    rng.random_range(0.05f32..0.2),
                ),
                _ => (
                    rng.random_range(-0.2f32..0.2),
                    rng.random_range(0.4f32..0.8),
                ),
            })
            .unzip();
        let tensor = |values: &[f32]| Tensor::new(values, &Device::Cpu).unwrap();
        let value_at = |c: &[f32], r: &[f32]| {
            let (c, r) = (tensor(c), tensor(r));
            shi_regularizer(&[(3, &c, &r)], 0.4, 0.7).unwrap().unwrap()
        };
        let (_, gradients) = value_at(&centres, &radii);
        let zeros = tensor(&vec![0f32; centres.len()]);
        let (d_centre, d_radius) = relu_box_gradient(
            &tensor(&centres),
            &tensor(&radii),
            &zeros,
            &zeros,
            Some(&gradients[&3]),
        )
        .unwrap();
        let (d_centre, d_radius) = (
            d_centre.to_vec1::<f32>().unwrap(),
            d_radius.to_vec1::<f32>().unwrap(),
        );
        let h = 1e-3f32;
        for k in 0..centres.len() {
            for (values, analytic, what) in [
                (&centres, d_centre[k], "centre"),
                (&radii, d_radius[k], "radius"),
            ] {
                let shifted = |delta: f32| {
                    let mut moved = values.clone();
                    moved[k] += delta;
                    if what == "centre" {
                        value_at(&moved, &radii).0
                    } else {
                        value_at(&centres, &moved).0
                    }
                };
                let numeric = (shifted(h) - shifted(-h)) / (2.0 * f64::from(h));
                assert!(
                    (numeric - f64::from(analytic)).abs() <= 2e-3 * numeric.abs().max(1e-2),
                    "∂/∂{what}[{k}]: finite difference {numeric} vs {analytic}"
                );
            }
        }
    }

    #[test]
    fn steps_the_reverse_pass_does_not_cover_are_left_to_autograd() {
        let spec = &specs()[0];
        let net = network(spec);
        assert_eq!(
            Objective::for_step(&net, Method::Sabr, values(0.0, 0.5), 0.0),
            Some(Objective::Natural),
            "warm-up steps of every method are natural"
        );
        assert_eq!(
            Objective::for_step(&net, Method::CrownIbp, values(0.1, 0.5), 0.0),
            None
        );
        assert_eq!(
            Objective::for_step(&net, Method::Sabr, values(0.1, 0.5), 0.0),
            None
        );
        assert_eq!(
            Objective::for_step(&net, Method::Taps, values(0.1, 0.5), 0.0),
            None,
            "TAPS' own loss at full ε"
        );
        assert_eq!(
            Objective::for_step(&net, Method::Taps, ramping(0.05, 0.5, 0.5), 0.2),
            Some(Objective::Ibp {
                eps: 0.05,
                kappa: 0.0,
                shi_weight: 0.2
            }),
            "TAPS ramps on IBP's loss without κ"
        );
        assert_eq!(
            Objective::for_step(&net, Method::Ibp, values(0.1, 0.5), 0.2),
            Some(Objective::Ibp {
                eps: 0.1,
                kappa: 0.5,
                shi_weight: 0.2
            })
        );
    }
}
