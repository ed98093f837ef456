//! A hand-written reverse pass for the natural, IBP, CROWN-IBP, SABR, PGD-AT, MTL-IBP, TAPS
//! and STAPS training losses, and the input-gradient pass of training attacks.
//!
//! candle's autograd gives every input of every graph node a zero-filled gradient tensor and
//! adds each contribution into it, and BatchNorm takes several nodes (moments, affine, ReLU),
//! each adding into the activation's gradient again: on a `cnn7` step about 2 GB of memory
//! traffic that computes nothing. Here the forward passes run the same kernels, each layer keeps
//! what its backward needs, and each gradient is written once. A step runs up to three passes
//! (clean in [`clean`], interval over a box in [`interval`], clean again at an attack point with
//! the clean batch's BatchNorm maps) and runs them backward in lockstep, layer by layer, because
//! BatchNorm's batch statistics join them; [`shi`] differentiates Shi et al.'s regulariser on the
//! interval pass and [`loss`] the losses at the top. [`crown_ibp`] is CROWN's bound pass over
//! the margins, relaxing each ReLU on the interval pass's box, and its reverse, which hands the
//! interval pass's backward the gradients of those boxes. [`input`] is the clean pass's
//! input-only backward that every training attack differentiates through. [`latent`] is TAPS'
//! classifier part: the latent attack on that input-only backward, the pivot points' pass and
//! the gradient connector, which hands the interval pass the gradient of the latent box. Steps
//! on a net whose last layer is not linear use autograd; the unit tests in `tests.rs` check
//! that both give the same loss and gradients.

mod clean;
mod conv;
mod crown_ibp;
mod input;
mod interval;
mod latent;
mod loss;
mod shi;
#[cfg(test)]
mod tests;

use super::TrainError;
use super::config::{Method, TrainConfig};
use super::methods::{LatentAttack, PointSearch, small_box_around, split_index};
use super::schedule::ScheduleValues;
use crate::bounds::{Interval, margin_spec};
use crate::kernels::{BoxGradient, l1_penalty_gradient};
use crate::model::{Layer, Net};
use candle_core::{Tensor, TensorId};
use clean::{BatchNormAffine, BatchNormSums, BatchNorms, CleanPass, CleanSaved};
use crown_ibp::{CrownNet, ReluBoxGradients};
pub(crate) use input::{InputGradientPass, fixed_batch_norms};
use interval::{BoxSaved, MarginBounds};
use latent::LatentPart;
use loss::{cross_entropy_gradient, robust_cross_entropy_gradient, scaled};
use rand::rngs::StdRng;
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
#[derive(Debug, Clone, PartialEq)]
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
    /// CROWN-IBP: `κ·natural + (1 − κ)·` robust cross-entropy of the margins
    /// `β·CROWN-IBP + (1 − β)·IBP` over the ε-box.
    CrownIbp {
        /// Radius of the ℓ∞ input box.
        eps: f64,
        /// Weight of the natural loss.
        kappa: f64,
        /// Weight of CROWN-IBP's margins (0: IBP's alone, no CROWN pass).
        beta: f64,
        /// Weight of Shi et al.'s regulariser on the interval pass (0: off).
        shi_weight: f64,
    },
    /// SABR: robust cross-entropy of IBP margins over a box of radius `ratio·ε` around a PGD
    /// point (its centre kept inside the ε-box).
    Sabr {
        /// Radius of the full ℓ∞ box.
        eps: f64,
        /// The small box's radius as a fraction of ε.
        ratio: f64,
        /// Weight of Shi et al.'s regulariser on the interval pass (0: off).
        shi_weight: f64,
        /// The centre search.
        search: PointSearch,
    },
    /// PGD adversarial training: cross-entropy at a PGD point.
    Pgd {
        /// The attack.
        search: PointSearch,
    },
    /// MTL-IBP: `α·` robust cross-entropy of IBP margins over the ε-box `+ (1 − α)·`
    /// cross-entropy at a PGD point.
    MtlIbp {
        /// Radius of the ℓ∞ input box.
        eps: f64,
        /// Weight of the IBP loss.
        alpha: f64,
        /// Weight of Shi et al.'s regulariser on the interval pass (0: off).
        shi_weight: f64,
        /// The attack.
        search: PointSearch,
    },
    /// TAPS at full ε: `GradExpander(L_TAPS, α)·L_IBP`, `L_IBP` the robust cross-entropy of IBP
    /// margins over the box, `L_TAPS` that of the classifier's margins at the latent attack's
    /// pivot points in the box IBP gives the classifier's input, tied to that box by the
    /// gradient connector. STAPS: the same over SABR's small box.
    Taps {
        /// Radius of the full ℓ∞ box.
        eps: f64,
        /// STAPS' small box: its radius as a fraction of ε and its centre search.
        small_box: Option<(f64, PointSearch)>,
        /// The first classifier layer.
        split: usize,
        /// The gradient expansion α.
        expansion: f64,
        /// The pivot search in the latent box.
        attack: LatentAttack,
        /// Weight of Shi et al.'s regulariser on the interval pass (0: off).
        shi_weight: f64,
    },
}

impl Objective {
    /// The objective of a step of `method` with the schedule at `values` (Shi's regulariser
    /// weighted by `shi_weight`), or `None` when autograd must run it (TAPS' loss, or no
    /// final linear layer).
    pub fn for_step(
        net: &Net,
        method: Method,
        values: ScheduleValues,
        shi_weight: f64,
        config: &TrainConfig,
    ) -> Option<Objective> {
        let eps = values.eps;
        if method == Method::Standard || eps <= 0.0 {
            return Some(Objective::Natural);
        }
        let objective = match method {
            Method::Ibp => Objective::Ibp {
                eps,
                kappa: values.kappa,
                shi_weight,
            },
            Method::CrownIbp => Objective::CrownIbp {
                eps,
                kappa: values.kappa,
                beta: values.beta,
                shi_weight,
            },
            // TAPS trains on the plain IBP loss while ε ramps, STAPS on SABR's (their own loss
            // starts at full ε).
            Method::Taps if values.ramp_progress < 1.0 => Objective::Ibp {
                eps,
                kappa: 0.0,
                shi_weight,
            },
            Method::Staps if values.ramp_progress < 1.0 => Objective::Sabr {
                eps,
                ratio: config.sabr_subselection_ratio,
                shi_weight,
                search: staps_search(eps, config),
            },
            Method::Taps | Method::Staps => Objective::Taps {
                eps,
                small_box: (method == Method::Staps)
                    .then(|| (config.sabr_subselection_ratio, staps_search(eps, config))),
                split: split_index(net, config.block_split_point).ok()?,
                expansion: config.gradient_expansion_alpha,
                attack: LatentAttack::from_config(config),
                shi_weight,
            },
            Method::Sabr => Objective::Sabr {
                eps,
                ratio: config.subselection_ratio,
                shi_weight,
                search: PointSearch::sabr(
                    eps,
                    config.pgd_eps_factor,
                    config.pgd_steps,
                    config.pgd_alpha,
                ),
            },
            Method::Pgd => Objective::Pgd {
                search: PointSearch::training(eps, config.pgd_steps, config.pgd_alpha),
            },
            Method::MtlIbp => Objective::MtlIbp {
                eps,
                alpha: config.mtl_ibp_alpha,
                shi_weight,
                search: PointSearch::training(
                    eps * config.mtl_ibp_eps_factor,
                    config.pgd_steps,
                    config.pgd_alpha,
                ),
            },
            Method::Standard => Objective::Natural,
        };
        let last_is_linear = matches!(net.layers().last(), Some(Layer::Linear { .. }));
        last_is_linear.then_some(objective)
    }

    /// The weights of the step's terms: the natural loss, the IBP loss over the box, the
    /// cross-entropy at the attack point.
    fn weights(&self) -> (f64, f64, f64) {
        match self {
            Objective::Natural => (1.0, 0.0, 0.0),
            Objective::Ibp { kappa, .. } | Objective::CrownIbp { kappa, .. } => {
                (*kappa, 1.0 - kappa, 0.0)
            }
            Objective::Sabr { .. } | Objective::Taps { .. } => (0.0, 1.0, 0.0),
            Objective::Pgd { .. } => (0.0, 0.0, 1.0),
            Objective::MtlIbp { alpha, .. } => (0.0, *alpha, 1.0 - alpha),
        }
    }

    /// TAPS' first classifier layer, gradient expansion and latent attack, at its full-ε steps.
    fn latent(&self) -> Option<(usize, f64, &LatentAttack)> {
        match self {
            Objective::Taps {
                split,
                expansion,
                attack,
                ..
            } => Some((*split, *expansion, attack)),
            _ => None,
        }
    }

    /// The weight β of CROWN-IBP's margins against IBP's, when the step runs the CROWN pass.
    fn crown_weight(&self) -> Option<f64> {
        match self {
            Objective::CrownIbp { beta, .. } if *beta > 0.0 => Some(*beta),
            _ => None,
        }
    }

    /// The attack the step runs, if any.
    fn search(&self) -> Option<&PointSearch> {
        match self {
            Objective::Sabr { search, .. }
            | Objective::Pgd { search }
            | Objective::MtlIbp { search, .. }
            | Objective::Taps {
                small_box: Some((_, search)),
                ..
            } => Some(search),
            Objective::Natural
            | Objective::Ibp { .. }
            | Objective::CrownIbp { .. }
            | Objective::Taps {
                small_box: None, ..
            } => None,
        }
    }

    /// The box the interval pass bounds (`point`: the attack's), with Shi's weight on it.
    fn input_box(
        &self,
        images: &Tensor,
        point: Option<&Tensor>,
    ) -> Result<Option<(Interval, f64)>, TrainError> {
        Ok(match self {
            Objective::Natural | Objective::Pgd { .. } => None,
            Objective::Ibp {
                eps, shi_weight, ..
            }
            | Objective::MtlIbp {
                eps, shi_weight, ..
            }
            | Objective::CrownIbp {
                eps, shi_weight, ..
            }
            | Objective::Taps {
                eps,
                small_box: None,
                shi_weight,
                ..
            } => Some((Interval::linf_ball(images, *eps)?, *shi_weight)),
            Objective::Sabr {
                eps,
                ratio,
                shi_weight,
                ..
            }
            | Objective::Taps {
                eps,
                small_box: Some((ratio, _)),
                shi_weight,
                ..
            } => {
                let point = point.ok_or_else(|| {
                    TrainError::internal("SABR's small box without its centre search".into())
                })?;
                Some((small_box_around(images, point, *eps, *ratio)?, *shi_weight))
            }
        })
    }
}

/// STAPS' centre search for its small box (its `sabr_*` hyperparameters).
fn staps_search(eps: f64, config: &TrainConfig) -> PointSearch {
    PointSearch::sabr(
        eps,
        config.sabr_pgd_eps_factor,
        config.sabr_pgd_steps,
        config.sabr_pgd_alpha,
    )
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
/// [`Net::forward_train`] does. `labels` are `u32`; `l1_weight` scales `Σ |W|`; `rng` draws the
/// attack's random start.
pub fn loss_and_gradients(
    net: &mut Net,
    (images, labels): (&Tensor, &Tensor),
    objective: &Objective,
    l1_weight: f64,
    rng: &mut StdRng,
) -> Result<StepGradients, TrainError> {
    let layers: Vec<Layer> = net.layers().to_vec();
    let label_values = labels.to_vec1::<u32>()?;
    let (natural_weight, box_weight, point_weight) = objective.weights();
    let (batch, classes) = (images.dim(0)?, net.num_classes());
    // The clean pass matters for the natural loss and for BatchNorm's batch statistics only.
    let has_batch_norm = layers
        .iter()
        .any(|layer| matches!(layer, Layer::BatchNorm { .. }));
    let clean = if natural_weight != 0.0 || has_batch_norm {
        clean::forward(BatchNorms::Own(net), &layers, images, true)?
    } else {
        CleanPass::skipped()?
    };
    let (natural_loss, natural_gradient) = if natural_weight != 0.0 {
        cross_entropy_gradient(&clean.logits.to_vec2::<f32>()?, &label_values)?
    } else {
        (0.0, Vec::new())
    };

    // Attacks and the attack point's pass read the clean batch's maps as constants; the
    // gradient through its statistics reaches them by the BatchNorm sums.
    let fixed: HashMap<usize, BatchNormAffine> = clean
        .batch_norms
        .iter()
        .map(|(index, affine)| (*index, affine.held_fixed()))
        .collect();
    let point = match objective.search() {
        Some(search) => {
            let network = InputGradientPass::new(&layers, &fixed);
            Some(search.run(&network, images, labels, rng)?)
        }
        None => None,
    };

    let mut loss = natural_weight * natural_loss;
    let mut gradients = Gradients::default();
    let mut robust = None;
    if let Some((input, shi_weight)) = objective.input_box(images, point.as_ref())? {
        let Some(Layer::Linear { weight, bias }) = layers.last() else {
            return Err(TrainError::Data(
                "the IBP reverse pass needs a final linear layer".into(),
            ));
        };
        let latent = objective.latent();
        let pass = interval::forward(
            &layers,
            (&input.lower, &input.upper),
            &clean.batch_norms,
            latent.map(|(split, ..)| split),
        )?;
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
            spec.clone(),
        )?;
        let mut sums = BatchNormSums::new();
        let (margin_gradient, mut box_gradients, latent_gradient) = match objective.crown_weight() {
            Some(beta) => {
                let crown = CrownNet::new(
                    &layers,
                    net.shapes(),
                    &pass.saved,
                    (&input.lower, &input.upper),
                    &clean.batch_norms,
                )?;
                let term = crown.robust_term(
                    &spec,
                    &bounds.margins,
                    &label_values,
                    (beta, box_weight),
                    &mut gradients,
                    &mut sums,
                )?;
                loss += box_weight * term.loss;
                (
                    (&term.margin_gradient * (1.0 - beta))?,
                    term.relu_gradients,
                    None,
                )
            }
            None => {
                let (robust_loss, margin_gradient) = robust_cross_entropy_gradient(
                    &bounds.margins.to_vec2::<f32>()?,
                    &label_values,
                    batch,
                )?;
                // TAPS multiplies its loss, its gradient expanded by α, with the IBP loss: each
                // one's gradient is scaled by the other's value.
                let (weight, latent_gradient) = match latent {
                    Some((split, expansion, attack)) => {
                        let part = LatentPart {
                            layers: &layers,
                            split,
                            attack,
                            batch_norms: &fixed,
                            sample_activations: net
                                .shapes()
                                .iter()
                                .map(crate::model::ActivationShape::numel)
                                .sum(),
                        };
                        let latent_box = pass.kept.as_ref().ok_or_else(|| {
                            TrainError::internal(
                                "TAPS' latent box not kept by the interval pass".into(),
                            )
                        })?;
                        let (taps_loss, box_gradient) = part.loss_and_box_gradient(
                            (&latent_box.0, &latent_box.1),
                            (&spec, &label_values),
                            expansion * robust_loss,
                            &mut gradients,
                            &mut sums,
                            rng,
                        )?;
                        (taps_loss, Some((split, box_gradient)))
                    }
                    None => (box_weight, None),
                };
                loss += weight * robust_loss;
                let margin_gradient = Tensor::from_vec(
                    scaled(&margin_gradient, weight),
                    (batch, classes - 1),
                    images.device(),
                )?;
                (margin_gradient, ReluBoxGradients::new(), latent_gradient)
            }
        };
        let shi_gradients = match shi {
            Some((value, gradients)) => {
                loss += value;
                gradients
            }
            None => HashMap::new(),
        };
        let (d_weight, d_bias, mut d_centre, mut d_radius) = bounds.backward(&margin_gradient)?;
        gradients.add(weight, d_weight)?;
        gradients.add(bias, d_bias)?;
        match latent_gradient {
            // The latent box is the one the last layer reads.
            Some((split, (dc, dr))) if split == layers.len() - 1 => {
                d_centre = (d_centre + dc)?;
                d_radius = (d_radius + dr)?;
            }
            Some((split, gradient)) => {
                box_gradients.insert(split, gradient);
            }
            None => {}
        }
        robust = Some(RobustTop {
            boxes: pass.saved,
            box_gradient: (d_centre, d_radius),
            shi_gradients,
            outside_gradients: box_gradients,
            sums,
        });
    }
    let mut attacked = None;
    if let Some(point) = point.filter(|_| point_weight > 0.0) {
        let pass = clean::forward(BatchNorms::Fixed(&fixed), &layers, &point, true)?;
        let (point_loss, point_gradient) =
            cross_entropy_gradient(&pass.logits.to_vec2::<f32>()?, &label_values)?;
        loss += point_weight * point_loss;
        let gradient = Tensor::from_vec(
            scaled(&point_gradient, point_weight),
            (batch, classes),
            images.device(),
        )?;
        attacked = Some((pass.saved, gradient));
    }
    let clean_gradient = (natural_weight != 0.0)
        .then(|| {
            Tensor::from_vec(
                scaled(&natural_gradient, natural_weight),
                (batch, classes),
                images.device(),
            )
        })
        .transpose()?;
    let tops = Tops {
        clean: (clean.saved, clean_gradient),
        robust,
        attacked,
    };
    backward(&layers, tops, (&clean.batch_norms, &fixed), &mut gradients)?;
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
/// last layer read, Shi's regulariser's gradients of ReLU input boxes by ReLU layer, the
/// gradients of input boxes by layer that reach the box from outside the pass (CROWN's at each
/// ReLU, TAPS' connector at the split), and the BatchNorm scale and shift sums of the passes
/// that read the clean batch's maps.
struct RobustTop {
    boxes: Vec<BoxSaved>,
    box_gradient: (Tensor, Tensor),
    shi_gradients: HashMap<usize, BoxGradient>,
    outside_gradients: ReluBoxGradients,
    sums: BatchNormSums,
}

/// What each pass kept and the gradient of its output: the clean pass (`None`: its output
/// does not reach the loss), the interval pass, the attack point's clean pass.
struct Tops {
    clean: (Vec<(usize, CleanSaved)>, Option<Tensor>),
    robust: Option<RobustTop>,
    attacked: Option<(Vec<(usize, CleanSaved)>, Tensor)>,
}

/// Every pass backward from the top, layer by layer: at each layer the interval pass and the
/// attack point's before the clean step starting there (a BatchNorm's clean backward reads the
/// others' scale and shift sums). `batch_norms` are the clean batch's maps, owned and fixed.
fn backward(
    layers: &[Layer],
    tops: Tops,
    (owned, fixed): (
        &HashMap<usize, BatchNormAffine>,
        &HashMap<usize, BatchNormAffine>,
    ),
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
    let (boxes, mut box_gradient, shi_gradients, outside_gradients, mut sums) = match tops.robust {
        Some(top) => (
            top.boxes,
            Some(top.box_gradient),
            top.shi_gradients,
            top.outside_gradients,
            top.sums,
        ),
        None => (
            Vec::new(),
            None,
            HashMap::new(),
            ReluBoxGradients::new(),
            BatchNormSums::new(),
        ),
    };
    let (clean, mut g) = tops.clean;
    let mut clean_steps = clean.into_iter().rev().peekable();
    let (attacked, mut attack_g) = match tops.attacked {
        Some((saved, gradient)) => (saved, Some(gradient)),
        None => (Vec::new(), None),
    };
    let mut attack_steps = attacked.into_iter().rev().peekable();
    for index in (first_parameter..count).rev() {
        let needs_input = index > first_parameter;
        if index < count - 1
            && let Some(box_gradients) = box_gradient.take()
        {
            box_gradient = interval::backward(
                &layers[index],
                &boxes[index],
                box_gradients,
                (owned.get(&index), shi_gradients.get(&index)),
                needs_input,
                gradients,
                &mut sums,
                index,
            )?;
            if let Some((outside_dc, outside_dr)) = outside_gradients.get(&index)
                && let Some((dc, dr)) = box_gradient.take()
            {
                box_gradient = Some(((dc + outside_dc)?, (dr + outside_dr)?));
            }
        }
        if attack_steps.peek().map(|(start, _)| *start) == Some(index) {
            let (_, saved) = attack_steps.next().expect("peeked");
            if let Some(gradient) = attack_g.take() {
                attack_g = Some(clean::backward(
                    (index, &layers[index]),
                    saved,
                    gradient,
                    fixed.get(&index),
                    &mut sums,
                    needs_input,
                    Some(gradients),
                )?);
            }
        }
        if clean_steps.peek().map(|(start, _)| *start) == Some(index) {
            let (_, saved) = clean_steps.next().expect("peeked");
            // A clean pass whose output the loss does not read matters from its first BatchNorm
            // down, through the batch statistics the other passes read.
            let gradient = match g.take() {
                Some(gradient) => Some(gradient),
                None => match &saved {
                    CleanSaved::BatchNorm { input, .. } if sums.contains_key(&index) => {
                        Some(input.zeros_like()?)
                    }
                    _ => None,
                },
            };
            if let Some(gradient) = gradient {
                g = Some(clean::backward(
                    (index, &layers[index]),
                    saved,
                    gradient,
                    owned.get(&index),
                    &mut sums,
                    needs_input,
                    Some(gradients),
                )?);
            }
        }
    }
    Ok(())
}
