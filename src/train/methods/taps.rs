//! TAPS (Mao et al.) and STAPS: IBP through a feature extractor, PGD inside the latent box.
//!
//! The network is split after a ReLU: IBP bounds the extractor's output by a box; for every
//! class `j ≠ y` a PGD attack inside that box finds a latent point estimating the worst margin
//! `z_y − z_j` of the classifier. The latent points are tied back to the box bounds by the
//! "rectified linear gradient link" so training tightens the box where the attacks pushed on
//! its faces. The loss is `GradExpander(L_TAPS, α) · L_IBP`. STAPS runs it on SABR's small box.

use super::{RobustLoss, StepContext, TrainingMethod, robust_cross_entropy, small_box};
use crate::attack::keep_better_rows;
use crate::bounds::{Interval, interval_spec_bounds, interval_trace, margin_spec};
use crate::kernels::box_signed_step;
use crate::model::{Layer, Net, Normalization};
use crate::train::TrainError;
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, rngs::StdRng};

/// Width share of the box, at each face, inside which the gradient link is active (CTRAIN: 0.5).
pub(crate) const LINK_SLACK: f64 = 0.5;

/// TAPS, or STAPS when `small_box` is set.
pub(crate) struct Taps {
    pub small_box: bool,
}

/// Index of the first classifier layer for a split point in (0, 1).
///
/// As CTRAIN does, the extractor is the first `⌈s·n⌉` of the network's `n` layers (every layer
/// counts: conv, BatchNorm, ReLU, flatten, linear), so 0.5 on `cnn-small` (conv, ReLU, flatten,
/// linear, ReLU, linear) leaves linear, ReLU, linear as the classifier. A leading `normalize`
/// layer is not counted (CTRAIN normalises in its data loader), and both parts keep at least
/// one layer.
pub(crate) fn split_index(net: &Net, split_point: f64) -> Result<usize, TrainError> {
    let layers = net.layers();
    let offset = layers
        .iter()
        .take_while(|layer| matches!(layer, Layer::Normalize { .. }))
        .count();
    let count = layers.len() - offset;
    if count < 2 {
        return Err(TrainError::Config {
            key: "block_split_point".into(),
            problem: format!(
                "TAPS splits the network into an extractor and a classifier, which needs at \
                 least 2 layers (this one has {count})"
            ),
        });
    }
    let extractor = ((split_point * count as f64).ceil() as usize).clamp(1, count - 1);
    Ok(offset + extractor)
}

/// `GradExpander(x, α)`: the value of `x` with its gradient multiplied by α.
fn grad_expander(x: &Tensor, alpha: f64) -> Result<Tensor, TrainError> {
    Ok(((x * alpha)? - (x.detach() * (alpha - 1.0))?)?)
}

impl TrainingMethod for Taps {
    fn robust_loss(&self, context: &mut StepContext<'_>) -> Result<RobustLoss, TrainError> {
        let config = context.config;
        let input = if self.small_box {
            let (ratio, steps, alpha, factor) = (
                config.sabr_subselection_ratio,
                config.sabr_pgd_steps,
                config.sabr_pgd_alpha,
                config.sabr_pgd_eps_factor,
            );
            small_box(context, ratio, steps, alpha, factor)?
        } else {
            Interval::linf_ball(context.images, context.schedule.eps)?
        };
        let net = context.net;
        let normalization = Normalization::Batch(context.statistics);
        let split = split_index(net, config.block_split_point)?;
        let classes = net.num_classes();
        let trace = interval_trace(net, &input, normalization)?;
        let spec = margin_spec(context.labels, classes)?;
        let ibp_margins = interval_spec_bounds(net, &trace, &spec)?.lower;
        let ibp_loss = robust_cross_entropy(&ibp_margins, context.labels)?;
        if context.schedule.ramp_progress < 1.0 {
            // CTRAIN trains the IBP (TAPS) or SABR (STAPS) loss, with Shi's regulariser, while ε
            // ramps, and the TAPS loss only at full ε: latent attacks on the loose boxes of a
            // fresh network give no useful signal.
            return Ok(RobustLoss {
                loss: ibp_loss,
                trace: Some((trace, input)),
            });
        }

        // One latent box per (sample, other class): rows b·(K−1) + r.
        let batch = context.labels.dim(0)?;
        let rows = classes - 1;
        let repeat: Vec<u32> = (0..batch as u32)
            .flat_map(|b| std::iter::repeat_n(b, rows))
            .collect();
        let repeat = Tensor::from_vec(repeat, batch * rows, &Device::Cpu)?;
        let latent = trace.activation(split)?;
        let lower = latent.lower.index_select(&repeat, 0)?;
        let upper = latent.upper.index_select(&repeat, 0)?;
        let row_spec = spec.reshape((batch * rows, classes))?;

        let attack = LatentAttack::from_config(config);
        let detached = net.detached();
        let statistics = context.statistics.detached();
        let mut margins = autograd_margins(
            &detached,
            split,
            &row_spec,
            Normalization::Batch(&statistics),
        );
        let pivot = attack.run(
            (&lower.detach(), &upper.detach()),
            &mut margins,
            context.rng,
        )?;
        let linked = gradient_link(&pivot, &lower, &upper)?;
        let logits = net.forward_range(&linked, split, net.layers().len(), normalization)?;
        let margins = row_spec
            .unsqueeze(1)?
            .matmul(&logits.unsqueeze(2)?)?
            .reshape((batch, rows))?;
        let taps_loss = robust_cross_entropy(&margins, context.labels)?;
        let loss = (grad_expander(&taps_loss, config.gradient_expansion_alpha)? * ibp_loss)?;
        Ok(RobustLoss {
            loss,
            trace: Some((trace, input)),
        })
    }
}

/// Step-size decays of the latent attack: ×0.1 after steps 4 and 7 (CTRAIN's TAPS defaults).
const LATENT_DECAY_STEPS: [usize; 2] = [4, 7];
/// Step-size multiplier at each of [`LATENT_DECAY_STEPS`].
const LATENT_DECAY_FACTOR: f64 = 0.1;

/// The classifier's margins at latent points (one per row) and, when asked, the gradient of
/// their sum with respect to the points: what TAPS' latent attack reads.
type LatentMargins<'a> =
    dyn FnMut(&Tensor, bool) -> Result<(Vec<f32>, Option<Tensor>), TrainError> + 'a;

/// TAPS' search for pivot points: PGD inside the latent box, one attack per (sample, class).
#[derive(Debug, Clone, PartialEq)]
pub struct LatentAttack {
    /// Gradient steps (the start and every step are scored).
    pub steps: usize,
    /// Step size as a share of the box width `u − l`.
    pub step_factor: f64,
}

impl LatentAttack {
    /// The attack of a run's hyperparameters (`pgd_steps`, `pgd_alpha`).
    pub(crate) fn from_config(config: &crate::train::TrainConfig) -> LatentAttack {
        LatentAttack {
            steps: config.pgd_steps,
            step_factor: config.pgd_alpha,
        }
    }

    /// For each row, the point of `[lower, upper]` with the lowest margin (as `margins`
    /// computes it) among a random start and `steps` signed-gradient steps of
    /// `step_factor·(u − l)` (decayed after [`LATENT_DECAY_STEPS`]).
    pub(crate) fn run(
        &self,
        (lower, upper): (&Tensor, &Tensor),
        margins: &mut LatentMargins<'_>,
        rng: &mut StdRng,
    ) -> Result<Tensor, TrainError> {
        let start = Self::random_start((lower, upper), rng)?;
        self.search_from(start, (lower, upper), margins)
    }

    /// A point drawn uniformly from `[lower, upper]`: the attack's start.
    pub(crate) fn random_start(
        (lower, upper): (&Tensor, &Tensor),
        rng: &mut StdRng,
    ) -> Result<Tensor, TrainError> {
        let noise: Vec<f32> = (0..lower.elem_count())
            .map(|_| rng.random_range(0.0f32..=1.0))
            .collect();
        let width = (upper - lower)?;
        Ok((lower + Tensor::from_vec(noise, lower.dims(), &Device::Cpu)?.mul(&width)?)?)
    }

    /// [`LatentAttack::run`] from the point `z` of the box instead of a random one. Rows are
    /// attacked independently, so any split of them gives the same points.
    pub(crate) fn search_from(
        &self,
        mut z: Tensor,
        (lower, upper): (&Tensor, &Tensor),
        margins: &mut LatentMargins<'_>,
    ) -> Result<Tensor, TrainError> {
        let rows = lower.dim(0)?;
        let mut best_negated_margin = vec![f32::NEG_INFINITY; rows];
        let mut best = z.clone();
        let mut step_size = self.step_factor;
        for step in 0..=self.steps {
            let last = step == self.steps;
            let (values, gradient) = margins(&z, !last)?;
            // The best pivot has the lowest margin: keep the rows whose negated margin rose.
            let negated: Vec<f32> = values.iter().map(|m| -m).collect();
            best = keep_better_rows(&negated, &mut best_negated_margin, &z, &best)?;
            let Some(gradient) = gradient.filter(|_| !last) else {
                break;
            };
            z = box_signed_step(&z, &gradient, (lower, upper), step_size as f32)?;
            if LATENT_DECAY_STEPS.contains(&(step + 1)) {
                step_size *= LATENT_DECAY_FACTOR;
            }
        }
        Ok(best)
    }
}

/// The margins `row_spec · classifier(z)` of the classifier after layer `split` of `net`
/// (detached) and their summed gradient, by candle autograd.
fn autograd_margins<'a>(
    net: &'a Net,
    split: usize,
    row_spec: &'a Tensor,
    normalization: Normalization<'a>,
) -> impl FnMut(&Tensor, bool) -> Result<(Vec<f32>, Option<Tensor>), TrainError> + 'a {
    move |z, with_gradient| {
        let variable = Var::from_tensor(z)?;
        let logits = net.forward_range(
            variable.as_tensor(),
            split,
            net.layers().len(),
            normalization,
        )?;
        let margins = (row_spec * logits)?.sum(1)?;
        let values = margins.to_vec1::<f32>()?;
        let gradient = if with_gradient {
            margins
                .sum_all()?
                .backward()?
                .get(variable.as_tensor())
                .cloned()
        } else {
            None
        };
        Ok((values, gradient))
    }
}

/// `z + g·(u − u.detach()) + h·(l − l.detach())`: the value of the pivot `z`, with gradient
/// flowing to the box face it presses against (weights `g`, `h` computed without gradient).
fn gradient_link(pivot: &Tensor, lower: &Tensor, upper: &Tensor) -> Result<Tensor, TrainError> {
    let (l, u) = (lower.detach(), upper.detach());
    let slack = ((&u - &l)? * LINK_SLACK)?;
    let positive = slack.gt(0.0)?.to_dtype(DType::F32)?;
    let safe_slack = (&slack + (positive.ones_like()? - &positive)?)?; // 1 where the width is 0
    let upper_start = (&u - &slack)?;
    let lower_end = (&l + &slack)?;
    let upper_weight = ((pivot - &upper_start)?.relu()? / &safe_slack)?.mul(&positive)?;
    let lower_weight = ((&lower_end - pivot)?.relu()? / &safe_slack)?.mul(&positive)?;
    let upper_delta = (upper - &u)?;
    let lower_delta = (lower - &l)?;
    Ok(((pivot + upper_weight.mul(&upper_delta)?)? + lower_weight.mul(&lower_delta)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Initialization, NetSpec};

    fn builtin(name: &str, shape: [usize; 3], normalize: bool) -> Net {
        let stats = normalize.then(|| (vec![0.5; shape[0]], vec![0.25; shape[0]]));
        let spec = NetSpec::builtin(name, shape, 10, stats).unwrap();
        Net::new(&spec, Initialization::Ibp, 0).unwrap()
    }

    #[test]
    fn the_default_split_of_cnn_small_leaves_a_classifier_with_a_relu() {
        let net = builtin("cnn-small", [1, 28, 28], false);
        let split = split_index(&net, 0.5).unwrap();
        // conv, relu, flatten | linear, relu, linear (CTRAIN: ⌈0.5 · 6⌉ = 3 extractor layers).
        assert_eq!(split, 3);
        let classifier = &net.layers()[split..];
        assert!(classifier.iter().any(|l| matches!(l, Layer::Relu)));
        assert!(matches!(classifier[0], Layer::Linear { .. }));
    }

    #[test]
    fn split_points_map_over_every_layer_and_keep_both_parts() {
        let net = builtin("cnn-small", [1, 28, 28], false);
        let count = net.layers().len();
        assert_eq!(
            split_index(&net, 0.01).unwrap(),
            1,
            "⌈0.06⌉: the conv alone"
        );
        assert_eq!(split_index(&net, 0.34).unwrap(), 3, "⌈2.04⌉ rounds up");
        assert_eq!(
            split_index(&net, 0.99).unwrap(),
            count - 1,
            "never an empty classifier"
        );
        let mut last = 0;
        for step in 1..100 {
            let split = split_index(&net, f64::from(step) / 100.0).unwrap();
            assert!(
                (1..count).contains(&split) && split >= last,
                "monotone, in range"
            );
            last = split;
        }
    }

    #[test]
    fn the_latent_attack_finds_the_worst_vertex_of_a_linear_classifier() {
        use rand::SeedableRng;
        let mut net = builtin("fc", [1, 28, 28], false);
        let split = net.layers().len() - 1;
        let Layer::Linear { weight, bias } = &net.layers()[split] else {
            panic!("fc ends with a linear layer");
        };
        let (weight, bias) = (
            weight.to_vec2::<f32>().unwrap(),
            bias.to_vec1::<f32>().unwrap(),
        );
        let mut rng = StdRng::seed_from_u64(5);
        let images = Tensor::zeros((2, 1, 28, 28), DType::F32, &Device::Cpu).unwrap();
        let (_, statistics) = net.forward_train(&images).unwrap();
        let rows = 6;
        let width = 100;
        let centre: Vec<f32> = (0..rows * width)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let radius: Vec<f32> = (0..rows * width)
            .map(|_| rng.random_range(0.0..0.3))
            .collect();
        let lower: Vec<f32> = centre.iter().zip(&radius).map(|(c, r)| c - r).collect();
        let upper: Vec<f32> = centre.iter().zip(&radius).map(|(c, r)| c + r).collect();
        // Row r asks for z_0 − z_{r+1}.
        let mut spec = vec![0f32; rows * 10];
        for r in 0..rows {
            spec[r * 10] = 1.0;
            spec[r * 10 + r + 1] = -1.0;
        }
        let tensor = |v: &[f32], cols| Tensor::from_vec(v.to_vec(), (rows, cols), &Device::Cpu);
        let (lower_t, upper_t) = (
            tensor(&lower, width).unwrap(),
            tensor(&upper, width).unwrap(),
        );
        let spec_t = tensor(&spec, 10).unwrap();
        for (steps, step_factor) in [(1, 1.0), (8, 0.5)] {
            let attack = LatentAttack { steps, step_factor };
            let detached = net.detached();
            let mut margins =
                autograd_margins(&detached, split, &spec_t, Normalization::Batch(&statistics));
            let found = attack
                .run((&lower_t, &upper_t), &mut margins, &mut rng)
                .unwrap();
            let logits = net
                .forward_range(&found, split, split + 1, Normalization::Population)
                .unwrap();
            let margins = (&spec_t * logits)
                .unwrap()
                .sum(1)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let points = found.to_vec2::<f32>().unwrap();
            for r in 0..rows {
                let coefficient = |i: usize| weight[0][i] - weight[r + 1][i];
                let exact: f32 = bias[0] - bias[r + 1]
                    + (0..width)
                        .map(|i| {
                            let a = coefficient(i);
                            (a * lower[r * width + i]).min(a * upper[r * width + i])
                        })
                        .sum::<f32>();
                assert!(
                    (margins[r] - exact).abs() < 1e-4,
                    "{steps} steps: row {r} margin {} vs exact minimum {exact}",
                    margins[r]
                );
                for i in 0..width {
                    let z = points[r][i];
                    assert!(z >= lower[r * width + i] - 1e-6 && z <= upper[r * width + i] + 1e-6);
                }
            }
        }
    }

    #[test]
    fn a_leading_normalisation_is_not_counted() {
        let plain = builtin("cnn-small", [3, 32, 32], false);
        let normalized = builtin("cnn-small", [3, 32, 32], true);
        assert!(matches!(normalized.layers()[0], Layer::Normalize { .. }));
        for point in [0.01, 0.3, 0.5, 0.8, 0.99] {
            assert_eq!(
                split_index(&normalized, point).unwrap(),
                split_index(&plain, point).unwrap() + 1
            );
        }
    }
}
