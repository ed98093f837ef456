//! A hand-written reverse pass for the natural and IBP training losses.
//!
//! candle's autograd gives every input of every graph node a zero-filled gradient tensor and
//! adds each contribution into it, and BatchNorm takes several nodes (moments, affine, ReLU),
//! each adding into the activation's gradient again: on a `cnn7` step about 2 GB of memory
//! traffic that computes nothing. Here the forward passes run the same kernels, each layer keeps
//! what its backward needs, and each gradient is written once. The two passes of an IBP step
//! (clean in [`clean`], interval in [`interval`]) run backward in lockstep, layer by layer,
//! because BatchNorm's batch statistics join them; [`shi`] differentiates Shi et al.'s
//! regulariser on the interval pass and [`loss`] the losses at the top. Steps this pass does not
//! cover (other methods' robust losses, or a net whose last layer is not linear) use autograd;
//! the unit tests in `tests.rs` check that both give the same loss and gradients.

mod clean;
mod conv;
mod interval;
mod loss;
mod shi;
#[cfg(test)]
mod tests;

use super::TrainError;
use super::config::Method;
use super::schedule::ScheduleValues;
use crate::bounds::margin_spec;
use crate::kernels::{BoxGradient, l1_penalty_gradient};
use crate::model::{Layer, Net};
use candle_core::{Tensor, TensorId};
use clean::{BatchNormAffine, CleanSaved};
use interval::{BoxSaved, MarginBounds};
use loss::{cross_entropy_gradient, robust_cross_entropy_gradient, scaled};
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
    let label_values = labels.to_vec1::<u32>()?;
    let clean = clean::forward(net, &layers, images)?;
    let (batch, classes) = clean.logits.dims2()?;
    let (natural_loss, natural_gradient) =
        cross_entropy_gradient(&clean.logits.to_vec2::<f32>()?, &label_values)?;

    let mut loss = natural_loss;
    let mut kappa = 1.0;
    let mut gradients = Gradients::default();
    let mut robust = None;
    if let Objective::Ibp {
        eps,
        kappa: mix,
        shi_weight,
    } = objective
    {
        kappa = mix;
        let Some(Layer::Linear { weight, bias }) = layers.last() else {
            return Err(TrainError::Data(
                "the IBP reverse pass needs a final linear layer".into(),
            ));
        };
        let pass = interval::forward(net, &layers, images, eps, &clean.batch_norms)?;
        let shi = if shi_weight > 0.0 {
            let input_radius = pass.input_radius.ok_or_else(|| {
                TrainError::internal("an IBP step on a network of normalisations only".into())
            })?;
            shi::shi_regularizer(&pass.relu_boxes(), input_radius, shi_weight)?
        } else {
            None
        };
        let spec = margin_spec(labels, classes)?;
        let bounds = MarginBounds::new(
            &pass.centre,
            &pass.radius,
            &weight.detach(),
            &bias.detach(),
            spec,
        )?;
        let (robust_loss, margin_gradient) =
            robust_cross_entropy_gradient(&bounds.margins.to_vec2::<f32>()?, &label_values)?;
        loss = kappa * natural_loss + (1.0 - kappa) * robust_loss;
        let shi_gradients = match shi {
            Some((value, gradients)) => {
                loss += value;
                gradients
            }
            None => HashMap::new(),
        };
        let margin_gradient = Tensor::from_vec(
            scaled(&margin_gradient, 1.0 - kappa),
            (batch, classes - 1),
            images.device(),
        )?;
        let (d_weight, d_bias, d_centre, d_radius) = bounds.backward(&margin_gradient)?;
        gradients.add(weight, d_weight)?;
        gradients.add(bias, d_bias)?;
        robust = Some(RobustTop {
            boxes: pass.saved,
            box_gradient: (d_centre, d_radius),
            shi_gradients,
        });
    }
    let clean_gradient = Tensor::from_vec(
        scaled(&natural_gradient, kappa),
        (batch, classes),
        images.device(),
    )?;
    backward(
        &layers,
        clean.saved,
        &clean.batch_norms,
        clean_gradient,
        robust,
        &mut gradients,
    )?;
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

/// The interval pass as its backward starts: what its layers kept, the gradient of the box the
/// last layer read, and Shi's regulariser's gradients by ReLU layer.
struct RobustTop {
    boxes: Vec<BoxSaved>,
    box_gradient: (Tensor, Tensor),
    shi_gradients: HashMap<usize, BoxGradient>,
}

/// Both passes backward from the top, interval layer `i` before the clean step starting at `i`
/// (a BatchNorm's clean backward reads its interval backward's scale and shift sums).
fn backward(
    layers: &[Layer],
    clean: Vec<(usize, CleanSaved)>,
    batch_norms: &HashMap<usize, BatchNormAffine>,
    clean_gradient: Tensor,
    robust: Option<RobustTop>,
    gradients: &mut Gradients,
) -> Result<(), TrainError> {
    let count = layers.len();
    let first_parameter = layers
        .iter()
        .position(|layer| {
            matches!(
                layer,
                Layer::Conv2d { .. } | Layer::Linear { .. } | Layer::BatchNorm { .. }
            )
        })
        .unwrap_or(count);
    let (boxes, mut box_gradient, shi_gradients) = match robust {
        Some(top) => (top.boxes, Some(top.box_gradient), top.shi_gradients),
        None => (Vec::new(), None, HashMap::new()),
    };
    let mut g = clean_gradient;
    let mut interval_sums: HashMap<usize, (Vec<f32>, Vec<f32>)> = HashMap::new();
    let mut clean_steps = clean.into_iter().rev().peekable();
    for index in (first_parameter..count).rev() {
        let needs_input = index > first_parameter;
        if index < count - 1
            && let Some(box_gradients) = box_gradient.take()
        {
            box_gradient = interval::backward(
                &layers[index],
                &boxes[index],
                box_gradients,
                (batch_norms.get(&index), shi_gradients.get(&index)),
                needs_input,
                gradients,
                &mut interval_sums,
                index,
            )?;
        }
        if clean_steps.peek().map(|(start, _)| *start) == Some(index) {
            let (_, saved) = clean_steps.next().expect("peeked");
            g = clean::backward(
                &layers[index],
                saved,
                g,
                batch_norms.get(&index),
                interval_sums.remove(&index),
                needs_input,
                gradients,
            )?;
        }
    }
    Ok(())
}
