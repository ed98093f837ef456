//! A network built from a [`NetSpec`]: parameters as candle `Var`s, forward passes, BatchNorm modes.

use super::ModelError;
use super::init::{Initialization, ParameterRng};
use super::spec::{ActivationShape, LayerSpec, NetSpec};
use candle_core::{DType, Device, Tensor, Var};

/// BatchNorm's numerical epsilon and running-statistics momentum (PyTorch defaults).
pub const BATCH_NORM_EPS: f64 = 1e-5;
const BATCH_NORM_MOMENTUM: f64 = 0.1;

/// One built layer: the tensors bound propagation and the forward pass read.
///
/// Parameter tensors share storage with the network's `Var`s, so optimiser updates are seen here.
#[derive(Debug, Clone)]
pub enum Layer {
    /// Per-channel `(x - mean) / std`, `mean` and `std` of shape `[C]`.
    Normalize {
        /// Per-channel mean, shape `[C]`.
        mean: Tensor,
        /// Per-channel standard deviation, shape `[C]`.
        std: Tensor,
    },
    /// Convolution with weight `[C_out, C_in, k, k]` and bias `[C_out]`.
    Conv2d {
        /// Kernel, shape `[C_out, C_in, k, k]`.
        weight: Tensor,
        /// Bias, shape `[C_out]`.
        bias: Tensor,
        /// Stride in both directions.
        stride: usize,
        /// Zero padding on every side.
        padding: usize,
    },
    /// Affine map with weight `[out, in]` and bias `[out]`.
    Linear {
        /// Weight matrix, shape `[out, in]`.
        weight: Tensor,
        /// Bias, shape `[out]`.
        bias: Tensor,
    },
    /// Rectified linear unit.
    Relu,
    /// Reshape `[B, C, H, W]` to `[B, C·H·W]`.
    Flatten,
    /// Batch normalisation with affine parameters and running statistics, each of shape `[C]`.
    BatchNorm {
        /// Scale γ.
        weight: Tensor,
        /// Shift β.
        bias: Tensor,
        /// Population mean used at evaluation.
        running_mean: Tensor,
        /// Population variance used at evaluation.
        running_var: Tensor,
    },
}

impl Layer {
    /// The per-channel `(scale, shift)` = `(1/std, −mean/std)` a Normalize layer applies as
    /// `x·scale + shift`: the one form every pass (forward, interval, linear bounds, reverse)
    /// uses.
    pub fn normalize_scale_shift(
        mean: &Tensor,
        std: &Tensor,
    ) -> Result<(Tensor, Tensor), candle_core::Error> {
        Ok((std.recip()?, (mean.neg()? / std)?))
    }
}

/// Per-BatchNorm-layer statistics (mean and biased variance, each `[C]`) of one clean batch.
#[derive(Debug, Clone, Default)]
pub struct BatchStatistics {
    per_layer: Vec<Option<(Tensor, Tensor)>>,
}

impl BatchStatistics {
    /// The same statistics cut from the gradient graph (for attacks, which must not
    /// backpropagate into the training step).
    pub fn detached(&self) -> BatchStatistics {
        BatchStatistics {
            per_layer: self
                .per_layer
                .iter()
                .map(|entry| entry.as_ref().map(|(m, v)| (m.detach(), v.detach())))
                .collect(),
        }
    }

    /// Statistics of the BatchNorm layer at `layer_index`, if it is one.
    pub fn get(&self, layer_index: usize) -> Option<&(Tensor, Tensor)> {
        self.per_layer.get(layer_index).and_then(Option::as_ref)
    }
}

/// Which statistics BatchNorm layers normalise with.
#[derive(Debug, Clone, Copy)]
pub enum Normalization<'a> {
    /// Running (population) statistics: evaluation behaviour.
    Population,
    /// Statistics recorded from a clean training batch, reused by its bound passes (CTBench).
    Batch(&'a BatchStatistics),
}

/// A parameter or buffer of the network under its PyTorch `nn.Sequential` state-dict name.
#[derive(Debug, Clone)]
pub struct NamedVar {
    /// State-dict key, e.g. `3.weight` or `1.running_var`.
    pub name: String,
    /// The variable holding the values.
    pub var: Var,
    /// Whether the optimiser updates it (false for running statistics).
    pub trainable: bool,
}

/// One parameter or buffer a network of a given spec has: its state-dict name and shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ParameterSlot {
    /// State-dict key, `<layer index>.<role>`.
    pub name: String,
    /// Index of the layer it belongs to.
    pub layer: usize,
    /// `weight`, `bias`, `running_mean` or `running_var`.
    pub role: &'static str,
    /// Tensor dimensions.
    pub dims: Vec<usize>,
}

/// The parameters and buffers a network of this spec has, in state-dict order.
pub fn parameter_slots(spec: &NetSpec, shapes: &[ActivationShape]) -> Vec<ParameterSlot> {
    let mut slots = Vec::new();
    for (layer, layer_spec) in spec.layers.iter().enumerate() {
        let input = shapes[layer];
        let mut push = |role: &'static str, dims: Vec<usize>| {
            slots.push(ParameterSlot {
                name: format!("{layer}.{role}"),
                layer,
                role,
                dims,
            })
        };
        match layer_spec {
            LayerSpec::Conv2d {
                out_channels,
                kernel_size,
                ..
            } => {
                push(
                    "weight",
                    vec![*out_channels, input.channels(), *kernel_size, *kernel_size],
                );
                push("bias", vec![*out_channels]);
            }
            LayerSpec::Linear { out_features } => {
                push("weight", vec![*out_features, input.numel()]);
                push("bias", vec![*out_features]);
            }
            LayerSpec::BatchNorm {} => {
                for role in ["weight", "bias", "running_mean", "running_var"] {
                    push(role, vec![input.channels()]);
                }
            }
            _ => {}
        }
    }
    slots
}

impl NetSpec {
    /// Refuses a network that cannot fit in this machine's memory and swap when trained with
    /// `batch` samples per step: its weights, their gradients and one batch's activations are
    /// a floor on what training needs, checked before anything is allocated (an allocation
    /// that fails aborts the process).
    pub fn check_fits_memory(&self, batch: usize) -> Result<(), ModelError> {
        let shapes = self.activation_shapes()?;
        let mut per_layer = vec![0u128; self.layers.len()];
        for slot in parameter_slots(self, &shapes) {
            per_layer[slot.layer] += slot.dims.iter().map(|&d| d as u128).product::<u128>();
        }
        let parameters: u128 = per_layer.iter().sum();
        let activations: u128 = shapes.iter().map(|s| s.numel() as u128).sum();
        let needed = 4 * (2 * parameters + batch.max(1) as u128 * activations);
        let Some(available) = crate::kernels::memory_and_swap_bytes() else {
            return Ok(());
        };
        if needed <= available as u128 {
            return Ok(());
        }
        let layer = (0..per_layer.len())
            .max_by_key(|&i| per_layer[i])
            .unwrap_or(0);
        Err(ModelError::TooLarge {
            parameters,
            layer,
            activations,
            batch,
            needed_gb: needed as f64 / 1e9,
            available_gb: available as f64 / 1e9,
        })
    }
}

/// A feed-forward network built from a [`NetSpec`].
#[derive(Debug, Clone)]
pub struct Net {
    spec: NetSpec,
    shapes: Vec<ActivationShape>,
    layers: Vec<Layer>,
    vars: Vec<NamedVar>,
    batch_norm_steps: Vec<u64>,
}

impl Net {
    /// Builds a network with freshly initialised parameters drawn from a seeded generator.
    pub fn new(spec: &NetSpec, init: Initialization, seed: u64) -> Result<Net, ModelError> {
        spec.check_fits_memory(1)?;
        let shapes = spec.activation_shapes()?;
        let mut rng = ParameterRng::new(seed);
        let last_affine = spec
            .layers
            .iter()
            .rposition(|l| matches!(l, LayerSpec::Linear { .. } | LayerSpec::Conv2d { .. }));
        let mut parameters = Vec::new();
        let mut pending_bias = None;
        for slot in parameter_slots(spec, &shapes) {
            let tensor = match (&spec.layers[slot.layer], slot.role) {
                (LayerSpec::BatchNorm {}, "weight" | "running_var") => {
                    Tensor::ones(slot.dims.clone(), DType::F32, &Device::Cpu)?
                }
                (LayerSpec::BatchNorm {}, _) => {
                    Tensor::zeros(slot.dims.clone(), DType::F32, &Device::Cpu)?
                }
                (_, "weight") => {
                    let fan_in = slot.dims[1..].iter().product();
                    let is_last = Some(slot.layer) == last_affine;
                    let (weight, bias) = rng.affine(init, is_last, fan_in, &slot.dims)?;
                    pending_bias = Some(bias);
                    weight
                }
                _ => pending_bias
                    .take()
                    .expect("a bias slot follows its weight slot"),
            };
            parameters.push((slot.name, tensor));
        }
        Net::from_parameters(spec, shapes, parameters)
    }

    /// Builds a network from named tensors (PyTorch state-dict keys); used by loading and `new`.
    pub(crate) fn from_parameters(
        spec: &NetSpec,
        shapes: Vec<ActivationShape>,
        parameters: Vec<(String, Tensor)>,
    ) -> Result<Net, ModelError> {
        let mut vars = Vec::with_capacity(parameters.len());
        let mut layers = Vec::with_capacity(spec.layers.len());
        let mut lookup = std::collections::HashMap::new();
        for (name, tensor) in parameters {
            let var = Var::from_tensor(&tensor.to_dtype(DType::F32)?.contiguous()?)?;
            let trainable = !name.ends_with("running_mean") && !name.ends_with("running_var");
            lookup.insert(name.clone(), var.clone());
            vars.push(NamedVar {
                name,
                var,
                trainable,
            });
        }
        let fetch = |index: usize, what: &str, trainable: bool| -> Result<Tensor, ModelError> {
            let key = format!("{index}.{what}");
            let var = lookup.get(&key).ok_or_else(|| ModelError::InvalidSpec {
                layer: Some(index),
                problem: format!("parameter {key} missing"),
            })?;
            // Buffers are read without gradient tracking; parameters are the Var itself.
            Ok(if trainable {
                var.as_tensor().clone()
            } else {
                var.as_tensor().detach()
            })
        };
        for (index, layer) in spec.layers.iter().enumerate() {
            layers.push(match layer {
                LayerSpec::Normalize { mean, std } => Layer::Normalize {
                    mean: Tensor::new(mean.as_slice(), &Device::Cpu)?,
                    std: Tensor::new(std.as_slice(), &Device::Cpu)?,
                },
                LayerSpec::Conv2d {
                    stride, padding, ..
                } => Layer::Conv2d {
                    weight: fetch(index, "weight", true)?,
                    bias: fetch(index, "bias", true)?,
                    stride: *stride,
                    padding: *padding,
                },
                LayerSpec::Linear { .. } => Layer::Linear {
                    weight: fetch(index, "weight", true)?,
                    bias: fetch(index, "bias", true)?,
                },
                LayerSpec::Relu => Layer::Relu,
                LayerSpec::Flatten => Layer::Flatten,
                LayerSpec::BatchNorm {} => Layer::BatchNorm {
                    weight: fetch(index, "weight", true)?,
                    bias: fetch(index, "bias", true)?,
                    running_mean: fetch(index, "running_mean", false)?,
                    running_var: fetch(index, "running_var", false)?,
                },
            });
        }
        Ok(Net {
            spec: spec.clone(),
            shapes,
            layers,
            vars,
            batch_norm_steps: vec![0; spec.layers.len()],
        })
    }

    /// The description this network was built from.
    pub fn spec(&self) -> &NetSpec {
        &self.spec
    }

    /// The built layers, in order (bound propagation walks these).
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// Activation shapes: entry `i` is the input of layer `i`, the last is the logits.
    pub fn shapes(&self) -> &[ActivationShape] {
        &self.shapes
    }

    /// Number of output classes.
    pub fn num_classes(&self) -> usize {
        self.shapes.last().map(ActivationShape::numel).unwrap_or(0)
    }

    /// Every parameter and buffer under its PyTorch state-dict name.
    pub fn named_vars(&self) -> &[NamedVar] {
        &self.vars
    }

    /// The variables an optimiser updates (weights, biases, BatchNorm affine parameters).
    pub fn trainable_vars(&self) -> Vec<Var> {
        self.vars
            .iter()
            .filter(|v| v.trainable)
            .map(|v| v.var.clone())
            .collect()
    }

    /// Weight tensors of linear and convolution layers (what an L1 penalty sums over).
    pub fn affine_weights(&self) -> Vec<Tensor> {
        self.layers
            .iter()
            .filter_map(|layer| match layer {
                Layer::Conv2d { weight, .. } | Layer::Linear { weight, .. } => Some(weight.clone()),
                _ => None,
            })
            .collect()
    }

    /// A copy sharing storage but recording no gradient graph: for evaluation and attacks.
    pub fn detached(&self) -> Net {
        let detach = |t: &Tensor| t.detach();
        let layers = self
            .layers
            .iter()
            .map(|layer| match layer {
                Layer::Conv2d {
                    weight,
                    bias,
                    stride,
                    padding,
                } => Layer::Conv2d {
                    weight: detach(weight),
                    bias: detach(bias),
                    stride: *stride,
                    padding: *padding,
                },
                Layer::Linear { weight, bias } => Layer::Linear {
                    weight: detach(weight),
                    bias: detach(bias),
                },
                Layer::BatchNorm {
                    weight,
                    bias,
                    running_mean,
                    running_var,
                } => Layer::BatchNorm {
                    weight: detach(weight),
                    bias: detach(bias),
                    running_mean: running_mean.clone(),
                    running_var: running_var.clone(),
                },
                other => other.clone(),
            })
            .collect();
        Net {
            layers,
            ..self.clone()
        }
    }

    /// Whether any layer is BatchNorm (training then needs batch statistics).
    pub fn has_batch_norm(&self) -> bool {
        self.layers
            .iter()
            .any(|l| matches!(l, Layer::BatchNorm { .. }))
    }

    /// Logits with population statistics in BatchNorm layers (evaluation behaviour).
    pub fn forward(&self, input: &Tensor) -> Result<Tensor, ModelError> {
        self.forward_with(input, Normalization::Population)
    }

    /// Logits with BatchNorm using the given statistics.
    pub fn forward_with(
        &self,
        input: &Tensor,
        normalization: Normalization<'_>,
    ) -> Result<Tensor, ModelError> {
        self.forward_range(input, 0, self.layers.len(), normalization)
    }

    /// Applies layers `start..end` to `input` (the activation at index `start`); TAPS runs the
    /// extractor and the classifier halves of a network separately with it.
    pub fn forward_range(
        &self,
        input: &Tensor,
        start: usize,
        end: usize,
        normalization: Normalization<'_>,
    ) -> Result<Tensor, ModelError> {
        let mut x = input.clone();
        let mut index = start;
        while index < end {
            x = match &self.layers[index] {
                Layer::BatchNorm { .. } => {
                    let (scale, shift) = self.batch_norm_affine(index, normalization)?;
                    let (y, fused_relu) = self.apply_batch_norm(&x, &scale, &shift, index, end)?;
                    index += usize::from(fused_relu);
                    y
                }
                _ if self.flatten_is_implicit(index, end) => x,
                layer => apply_parameter_free_or_affine(layer, &x)?,
            };
            index += 1;
        }
        Ok(x)
    }

    /// Training forward pass: BatchNorm normalises with this batch's statistics, which are
    /// returned for the bound passes of the same batch and folded into the running statistics.
    pub fn forward_train(
        &mut self,
        input: &Tensor,
    ) -> Result<(Tensor, BatchStatistics), ModelError> {
        let mut statistics = BatchStatistics {
            per_layer: vec![None; self.layers.len()],
        };
        let mut x = input.clone();
        let end = self.layers.len();
        let mut index = 0;
        while index < end {
            x = match &self.layers[index] {
                Layer::BatchNorm { .. } => {
                    let (mean, variance) = batch_moments(&x)?;
                    self.update_running_statistics(index, &mean, &variance, &x)?;
                    statistics.per_layer[index] = Some((mean, variance));
                    let (scale, shift) =
                        self.batch_norm_affine(index, Normalization::Batch(&statistics))?;
                    let (y, fused_relu) = self.apply_batch_norm(&x, &scale, &shift, index, end)?;
                    index += usize::from(fused_relu);
                    y
                }
                _ if self.flatten_is_implicit(index, end) => x,
                layer => apply_parameter_free_or_affine(layer, &x)?,
            };
            index += 1;
        }
        Ok((x, statistics))
    }

    /// Whether layer `index` is a Flatten feeding a linear layer inside `..end`, which reads its
    /// input as `[B, features]` anyway (the reshape would only add a graph node).
    pub(crate) fn flatten_is_implicit(&self, index: usize, end: usize) -> bool {
        matches!(self.layers[index], Layer::Flatten)
            && index + 1 < end
            && matches!(self.layers[index + 1], Layer::Linear { .. })
    }

    /// Whether layer `index + 1` is a ReLU inside `..end`, so BatchNorm and it run as one op.
    fn relu_follows(&self, index: usize, end: usize) -> bool {
        index + 1 < end && matches!(self.layers[index + 1], Layer::Relu)
    }

    /// The BatchNorm at `index` as its affine map, fused with the ReLU after it when one follows
    /// before `end` (one pass instead of two); says whether that ReLU was consumed.
    fn apply_batch_norm(
        &self,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        index: usize,
        end: usize,
    ) -> Result<(Tensor, bool), ModelError> {
        if self.relu_follows(index, end) {
            Ok((crate::kernels::channel_affine_relu(x, scale, shift)?, true))
        } else {
            Ok((channel_affine(x, scale, shift)?, false))
        }
    }

    /// BatchNorm at `layer_index` as a per-channel affine map `x ↦ scale·x + shift` (each `[C]`).
    pub fn batch_norm_affine(
        &self,
        layer_index: usize,
        normalization: Normalization<'_>,
    ) -> Result<(Tensor, Tensor), ModelError> {
        let Some(Layer::BatchNorm {
            weight,
            bias,
            running_mean,
            running_var,
        }) = self.layers.get(layer_index)
        else {
            return Err(ModelError::InvalidSpec {
                layer: Some(layer_index),
                problem: "not a batch_norm layer".into(),
            });
        };
        let (mean, variance) = match normalization {
            Normalization::Batch(stats) => match stats.get(layer_index) {
                Some((mean, variance)) => (mean.clone(), variance.clone()),
                None => (running_mean.clone(), running_var.clone()),
            },
            Normalization::Population => (running_mean.clone(), running_var.clone()),
        };
        let scale = weight.div(&(variance + BATCH_NORM_EPS)?.sqrt()?)?;
        let shift = bias.sub(&mean.mul(&scale)?)?;
        Ok((scale, shift))
    }

    /// Folds one batch's BatchNorm statistics at `layer_index` into the running ones.
    pub(crate) fn update_running_statistics(
        &mut self,
        layer_index: usize,
        mean: &Tensor,
        variance: &Tensor,
        activations: &Tensor,
    ) -> Result<(), ModelError> {
        let count = activations.elem_count() / mean.elem_count().max(1);
        let unbiased = if count > 1 {
            (variance.detach() * (count as f64 / (count as f64 - 1.0)))?
        } else {
            variance.detach()
        };
        for (suffix, batch_value) in [("running_mean", mean.detach()), ("running_var", unbiased)] {
            let key = format!("{layer_index}.{suffix}");
            if let Some(named) = self.vars.iter().find(|v| v.name == key) {
                let updated = ((named.var.as_tensor() * (1.0 - BATCH_NORM_MOMENTUM))?
                    + (batch_value * BATCH_NORM_MOMENTUM)?)?;
                named.var.set(&updated)?;
            }
        }
        self.batch_norm_steps[layer_index] += 1;
        Ok(())
    }

    /// Number of training batches each BatchNorm layer has seen (PyTorch's `num_batches_tracked`).
    pub(crate) fn batch_norm_steps(&self, layer_index: usize) -> u64 {
        self.batch_norm_steps.get(layer_index).copied().unwrap_or(0)
    }

    pub(crate) fn set_batch_norm_steps(&mut self, layer_index: usize, steps: u64) {
        if let Some(slot) = self.batch_norm_steps.get_mut(layer_index) {
            *slot = steps;
        }
    }
}

/// Applies every layer kind except BatchNorm (which needs statistics) to a batch.
fn apply_parameter_free_or_affine(layer: &Layer, x: &Tensor) -> Result<Tensor, ModelError> {
    Ok(match layer {
        Layer::Normalize { mean, std } => {
            let (scale, shift) = Layer::normalize_scale_shift(mean, std)?;
            channel_affine(x, &scale, &shift)?
        }
        Layer::Conv2d {
            weight,
            bias,
            stride,
            padding,
        } => crate::kernels::conv2d_bias(x, weight, bias, *stride, *padding)?,
        Layer::Linear { weight, bias } => crate::kernels::linear(x, weight, bias)?,
        Layer::Relu => crate::kernels::relu(x)?,
        Layer::Flatten => x.flatten_from(1)?,
        Layer::BatchNorm { .. } => unreachable!("BatchNorm is applied by the caller"),
    })
}

/// `scale[c]·x + shift[c]` over the channel axis (axis 1) of a `[B, C]` or `[B, C, H, W]` batch.
pub fn channel_affine(x: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor, ModelError> {
    Ok(crate::kernels::channel_affine(x, scale, shift)?)
}

/// Shape `[1, C]` or `[1, C, 1, 1]` that broadcasts a per-channel vector against a batch.
pub fn channel_view_dims(rank: usize, channels: usize) -> Vec<usize> {
    let mut dims = vec![1; rank.max(2)];
    dims[1] = channels;
    dims
}

/// Per-channel mean and biased variance of a `[B, C]` or `[B, C, H, W]` batch.
fn batch_moments(x: &Tensor) -> Result<(Tensor, Tensor), ModelError> {
    let moments = crate::kernels::channel_moments(x)?;
    Ok((moments.get(0)?, moments.get(1)?))
}
