//! The clean pass: the forward pass keeping what each layer's backward reads, and its
//! backward into the parameters (BatchNorm's also through the interval pass's sums).

use super::Gradients;
use super::conv::{ConvInput, convolve, input_gradient, kernel_gradient};
use crate::kernels::{
    batch_norm_input_gradient, channel_affine, channel_affine_relu, channel_gradient_sums,
    channel_moments, channel_sum, linear, linear_input_gradient, linear_weight_gradient, relu,
    relu_gradient,
};
use crate::model::{BATCH_NORM_EPS, Layer, Net};
use crate::train::TrainError;
use candle_core::Tensor;
use std::collections::HashMap;

/// BatchNorm at one layer as the affine map it applies, with the statistics it was built from
/// when this pass took them from its own batch.
pub(crate) struct BatchNormAffine {
    scale: Vec<f32>,
    shift: Vec<f32>,
    /// The per-channel scale γ/σ.
    pub(super) scale_tensor: Tensor,
    /// The per-channel shift β − μ·γ/σ.
    pub(super) shift_tensor: Tensor,
    /// `None` for a map fixed from outside (another pass's batch, or the running statistics).
    moments: Option<Moments>,
}

/// The batch statistics a BatchNorm map was built from, which its backward differentiates.
struct Moments {
    mean: Vec<f32>,
    sigma: Vec<f32>,
    gamma: Vec<f32>,
    /// Elements per channel the statistics were taken over.
    count: usize,
}

impl BatchNormAffine {
    /// A fixed map `x ↦ scale·x + shift` (per channel); its backward yields scale and shift
    /// gradient sums for the pass that owns the statistics, if any.
    pub(crate) fn fixed(scale: &Tensor, shift: &Tensor) -> Result<BatchNormAffine, TrainError> {
        let (scale, shift) = (scale.detach(), shift.detach());
        Ok(BatchNormAffine {
            scale: scale.to_vec1()?,
            shift: shift.to_vec1()?,
            scale_tensor: scale,
            shift_tensor: shift,
            moments: None,
        })
    }

    /// The same map held fixed (an attack point's pass reads the clean batch's statistics as
    /// constants and hands its scale and shift sums to the clean pass).
    pub(super) fn held_fixed(&self) -> BatchNormAffine {
        BatchNormAffine {
            scale: self.scale.clone(),
            shift: self.shift.clone(),
            scale_tensor: self.scale_tensor.clone(),
            shift_tensor: self.shift_tensor.clone(),
            moments: None,
        }
    }
}

/// Where a clean pass's BatchNorm layers take their affine maps from.
pub(super) enum BatchNorms<'a> {
    /// This batch's statistics, which also update the net's running ones.
    Own(&'a mut Net),
    /// Maps fixed beforehand, by layer index.
    Fixed(&'a HashMap<usize, BatchNormAffine>),
}

/// Per BatchNorm layer, the gradient sums of its scale and shift from the passes that read its
/// map without owning its statistics (interval boxes, attack points).
pub(super) type BatchNormSums = HashMap<usize, (Vec<f32>, Vec<f32>)>;

/// Adds a pass's scale and shift gradient sums at BatchNorm `index` into `sums`.
pub(super) fn accumulate_sums(
    sums: &mut BatchNormSums,
    index: usize,
    (d_scale, d_shift): (Vec<f32>, Vec<f32>),
) {
    match sums.get_mut(&index) {
        Some((scale, shift)) => {
            add_into(scale, &d_scale);
            add_into(shift, &d_shift);
        }
        None => {
            sums.insert(index, (d_scale, d_shift));
        }
    }
}

/// What a clean layer (or BatchNorm fused with its ReLU) keeps for its backward.
pub(super) enum CleanSaved {
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

/// The clean pass's logits and what its backward reads.
pub(super) struct CleanPass {
    /// The network's output on the batch.
    pub(super) logits: Tensor,
    /// Per step (a layer, or BatchNorm fused with its ReLU), its first layer and what it kept.
    pub(super) saved: Vec<(usize, CleanSaved)>,
    /// Each BatchNorm's affine map with this batch's statistics, by layer index.
    pub(super) batch_norms: HashMap<usize, BatchNormAffine>,
}

impl CleanPass {
    /// A clean pass not run (its logits unread, no BatchNorm): nothing kept, no logits.
    pub(super) fn skipped() -> Result<CleanPass, TrainError> {
        Ok(CleanPass {
            logits: Tensor::zeros(0, candle_core::DType::F32, &candle_core::Device::Cpu)?,
            saved: Vec::new(),
            batch_norms: HashMap::new(),
        })
    }
}

/// The clean forward pass over `layers` (the net's), with BatchNorm maps from `norms` (updating
/// the running statistics when they are this batch's). Without `parameter_gradients` the
/// backward will differentiate the input alone (an attack's), and convolutions keep no input.
pub(super) fn forward(
    norms: BatchNorms<'_>,
    layers: &[Layer],
    images: &Tensor,
    parameter_gradients: bool,
) -> Result<CleanPass, TrainError> {
    forward_from(norms, layers, 0, images, parameter_gradients)
}

/// [`forward`] from layer `start` on, `x` being that layer's input (TAPS' classifier part).
pub(super) fn forward_from(
    mut norms: BatchNorms<'_>,
    layers: &[Layer],
    start: usize,
    x: &Tensor,
    parameter_gradients: bool,
) -> Result<CleanPass, TrainError> {
    let count = layers.len();
    let mut saved_steps: Vec<(usize, CleanSaved)> = Vec::with_capacity(count - start.min(count));
    let mut batch_norms: HashMap<usize, BatchNormAffine> = HashMap::new();
    let mut x = x.clone();
    let mut index = start;
    while index < count {
        let (y, saved, width) = match &layers[index] {
            Layer::Normalize { mean, std } => {
                let (scale, shift) = Layer::normalize_scale_shift(mean, std)?;
                let y = channel_affine(&x, &scale, &shift)?;
                (y, CleanSaved::Normalize { scale }, 1)
            }
            Layer::Conv2d {
                weight,
                bias,
                stride,
                padding,
            } => {
                let (y, input) = convolve(
                    x,
                    &weight.detach(),
                    Some(&bias.detach()),
                    (*stride, *padding),
                    parameter_gradients,
                )?;
                (y, CleanSaved::Conv { input }, 1)
            }
            Layer::Linear { weight, bias } => {
                let y = linear(&x, &weight.detach(), &bias.detach())?;
                (y, CleanSaved::Linear { input: x }, 1)
            }
            Layer::BatchNorm { weight, bias, .. } => {
                let relu = matches!(layers.get(index + 1), Some(Layer::Relu));
                let apply = |affine: &BatchNormAffine| {
                    if relu {
                        channel_affine_relu(&x, &affine.scale_tensor, &affine.shift_tensor)
                    } else {
                        channel_affine(&x, &affine.scale_tensor, &affine.shift_tensor)
                    }
                };
                let y = match &mut norms {
                    BatchNorms::Own(net) => {
                        let affine = batch_norm_affine(net, index, &x, weight, bias)?;
                        let y = apply(&affine)?;
                        batch_norms.insert(index, affine);
                        y
                    }
                    BatchNorms::Fixed(maps) => apply(&maps[&index])?,
                };
                (
                    y,
                    CleanSaved::BatchNorm { input: x, relu },
                    1 + usize::from(relu),
                )
            }
            Layer::Relu => (relu(&x)?, CleanSaved::Relu { input: x }, 1),
            Layer::Flatten if flatten_is_implicit(layers, index) => (x, CleanSaved::Implicit, 1),
            Layer::Flatten => {
                let dims = x.dims().to_vec();
                (x.flatten_from(1)?, CleanSaved::Flatten { dims }, 1)
            }
        };
        saved_steps.push((index, saved));
        x = y;
        index += width;
    }
    Ok(CleanPass {
        logits: x,
        saved: saved_steps,
        batch_norms,
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
        moments: Some(Moments {
            mean,
            sigma,
            gamma,
            count: x.elem_count() / x.dim(1)?.max(1),
        }),
    })
}

/// Backward of the clean step starting at layer `index`; returns the gradient of its input
/// (unchanged if not needed). Without `gradients` only the input gradient is computed (an
/// attack's). A BatchNorm whose map this pass owns reads the other passes' sums at `index`; a
/// fixed one adds its own to them.
pub(super) fn backward(
    (index, layer): (usize, &Layer),
    saved: CleanSaved,
    g: Tensor,
    batch_norm: Option<&BatchNormAffine>,
    sums: &mut BatchNormSums,
    needs_input: bool,
    gradients: Option<&mut Gradients>,
) -> Result<Tensor, TrainError> {
    let Some(gradients) = gradients else {
        return input_only(layer, saved, g, batch_norm);
    };
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
            let sums_here = channel_gradient_sums(&input, &affine.scale, &affine.shift, &g, relu)?;
            let Some(moments) = &affine.moments else {
                accumulate_sums(sums, index, sums_here);
                return Ok(if needs_input {
                    fixed_batch_norm_input_gradient(&input, affine, &g, relu)?
                } else {
                    g
                });
            };
            let (mut d_scale, mut d_shift) = sums_here;
            if let Some((other_scale, other_shift)) = sums.remove(&index) {
                add_into(&mut d_scale, &other_scale);
                add_into(&mut d_shift, &other_shift);
            }
            let channels = affine.scale.len();
            let (mut d_gamma, mut a, mut b) = (
                vec![0f32; channels],
                vec![0f32; channels],
                vec![0f32; channels],
            );
            let count = moments.count.max(1) as f32;
            for c in 0..channels {
                // shift = β − μ·scale and scale = γ/σ: the scale's total gradient includes the
                // path through the shift.
                let d_scale_total = d_scale[c] - d_shift[c] * moments.mean[c];
                let sigma = moments.sigma[c];
                d_gamma[c] = d_scale_total / sigma;
                let d_sigma = -d_scale_total * moments.gamma[c] / (sigma * sigma);
                let d_variance = d_sigma / (2.0 * sigma);
                let d_mean = -affine.scale[c] * d_shift[c];
                a[c] = 2.0 * d_variance / count;
                b[c] = d_mean / count - a[c] * moments.mean[c];
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

/// The input gradient alone of one clean step (no parameter gradients: an attack's pass).
fn input_only(
    layer: &Layer,
    saved: CleanSaved,
    g: Tensor,
    batch_norm: Option<&BatchNormAffine>,
) -> Result<Tensor, TrainError> {
    Ok(match (layer, saved) {
        (Layer::Normalize { .. }, CleanSaved::Normalize { scale }) => {
            channel_affine(&g, &scale, &scale.zeros_like()?)?
        }
        (
            Layer::Conv2d {
                weight,
                stride,
                padding,
                ..
            },
            CleanSaved::Conv { input },
        ) => input_gradient(&g, &weight.detach(), *stride, *padding, &input)?,
        (Layer::Linear { weight, .. }, CleanSaved::Linear { input }) => {
            linear_input_gradient(&g, &weight.detach(), input.dims())?
        }
        (Layer::BatchNorm { .. }, CleanSaved::BatchNorm { input, relu }) => {
            let affine = batch_norm.expect("every BatchNorm has its affine map");
            fixed_batch_norm_input_gradient(&input, affine, &g, relu)?
        }
        (Layer::Relu, CleanSaved::Relu { input }) => relu_gradient(&input, &g)?,
        (Layer::Flatten, CleanSaved::Flatten { dims }) => g.reshape(dims)?,
        (Layer::Flatten, CleanSaved::Implicit) => g,
        _ => unreachable!("saved state matches its layer"),
    })
}

/// The input gradient of a BatchNorm (and the ReLU fused into it) at a map held fixed.
fn fixed_batch_norm_input_gradient(
    input: &Tensor,
    affine: &BatchNormAffine,
    g: &Tensor,
    relu: bool,
) -> Result<Tensor, TrainError> {
    let zeros = vec![0f32; affine.scale.len()];
    Ok(batch_norm_input_gradient(
        input,
        (&affine.scale, &affine.shift),
        (&zeros, &zeros),
        g,
        relu,
    )?)
}

/// Whether layer `index` is a Flatten the next (linear) layer reads through, as
/// [`Net::flatten_is_implicit`] decides for a whole net.
pub(super) fn flatten_is_implicit(layers: &[Layer], index: usize) -> bool {
    matches!(layers[index], Layer::Flatten)
        && matches!(layers.get(index + 1), Some(Layer::Linear { .. }))
}

/// Adds `values` element-wise into `sum`.
fn add_into(sum: &mut [f32], values: &[f32]) {
    for (s, v) in sum.iter_mut().zip(values) {
        *s += v;
    }
}
