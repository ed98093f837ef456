//! Soundness of branch and bound: sub-domain bounds hold at sampled points that satisfy the
//! splits, falsified samples carry real counterexamples, certified samples survive PGD and
//! dense sampling of the ball, on random small networks.

mod common;

use candle_core::{Device, Tensor};
use cthpo::attack::{PgdConfig, pgd_attack, predictions};
use cthpo::bounds::{
    AlphaConfig, DomainReluBounds, Interval, ReluSplit, Subdomain, bound_subdomains, margin_spec,
};
use cthpo::eval::{BabConfig, BabVerdict, bab_verify_sample};
use cthpo::model::{Initialization, LayerSpec, Net, NetSpec, Normalization};
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::time::Duration;

/// Absolute slack for float rounding (the bounds are computed in f32).
const TOLERANCE: f32 = 2e-4;

/// A small net: optionally a conv layer (with BatchNorm half the time), then 1–2 hidden dense
/// ReLU layers and 3 classes.
fn random_net(rng: &mut StdRng, seed: u64, conv: bool) -> Net {
    let mut layers = Vec::new();
    let shape = if conv {
        layers.push(LayerSpec::Conv2d {
            out_channels: rng.random_range(2..=3),
            kernel_size: 2,
            stride: 1,
            padding: 0,
        });
        if rng.random_bool(0.5) {
            layers.push(LayerSpec::BatchNorm {});
        }
        layers.push(LayerSpec::Relu);
        [1, 4, 4]
    } else {
        [1, 1, 2]
    };
    layers.push(LayerSpec::Flatten);
    for _ in 0..rng.random_range(1..=2) {
        layers.push(LayerSpec::Linear {
            out_features: rng.random_range(4..=8),
        });
        layers.push(LayerSpec::Relu);
    }
    layers.push(LayerSpec::Linear { out_features: 3 });
    let spec = NetSpec {
        input_shape: shape,
        layers,
    };
    Net::new(&spec, Initialization::Default, seed).unwrap()
}

fn random_image(rng: &mut StdRng, net: &Net) -> Tensor {
    let [c, h, w] = net.spec().input_shape;
    let values: Vec<f32> = (0..c * h * w).map(|_| rng.random_range(0.0..1.0)).collect();
    Tensor::from_vec(values, (1, c, h, w), &Device::Cpu).unwrap()
}

/// `count` points of the box: a third vertices, the rest uniform.
fn box_points(rng: &mut StdRng, input: &Interval, count: usize) -> Tensor {
    let lower = input.lower.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let upper = input.upper.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut values = Vec::with_capacity(count * lower.len());
    for p in 0..count {
        for (l, u) in lower.iter().zip(&upper) {
            let t: f32 = if p % 3 == 0 {
                if rng.random_bool(0.5) { 1.0 } else { 0.0 }
            } else {
                rng.random_range(0.0..=1.0)
            };
            values.push(l + t * (u - l));
        }
    }
    let mut dims = input.lower.dims().to_vec();
    dims[0] = count;
    Tensor::from_vec(values, dims, &Device::Cpu).unwrap()
}

/// The pre-activations `[N, neurons]` at the ReLU layer `layer` for a batch of points.
fn pre_activations(net: &Net, points: &Tensor, layer: usize) -> Vec<Vec<f32>> {
    net.forward_range(points, 0, layer, Normalization::Population)
        .unwrap()
        .flatten_from(1)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
}

#[test]
fn subdomain_bounds_hold_at_sampled_points_that_satisfy_the_splits() {
    let mut rng = StdRng::seed_from_u64(1401);
    let alpha = AlphaConfig {
        iterations: 5,
        stop_when_positive: false,
        ..AlphaConfig::default()
    };
    let (mut checked_points, mut split_domains, mut empty_domains) = (0, 0, 0);
    for case in 0..30u64 {
        let net = random_net(&mut rng, case, case % 2 == 0).detached();
        common::randomise_batch_norm(&net, &mut rng);
        let image = random_image(&mut rng, &net);
        let label = rng.random_range(0..3u32);
        let labels = Tensor::new(&[label], &Device::Cpu).unwrap();
        let spec = margin_spec(&labels, 3).unwrap();
        let input = Interval::linf_ball(&image, rng.random_range(0.05..0.3)).unwrap();
        let root = bound_subdomains(
            &net,
            &input,
            &spec,
            &[Subdomain {
                parent: None,
                splits: &[],
            }],
            &[vec![true; 2]],
            &alpha,
        )
        .unwrap()
        .remove(0);
        // Up to three random splits, each child bounded from its parent's bounds.
        let mut parent: DomainReluBounds = root.relu_bounds.clone();
        let mut splits: Vec<ReluSplit> = Vec::new();
        let mut domains = vec![(Vec::new(), root)];
        for _ in 0..rng.random_range(1..=3) {
            let unstable = parent.unstable();
            if unstable.is_empty() {
                break;
            }
            let (layer, neuron) = unstable[rng.random_range(0..unstable.len())];
            splits.push(ReluSplit {
                layer,
                neuron,
                active: rng.random_bool(0.5),
            });
            let child = bound_subdomains(
                &net,
                &input,
                &spec,
                &[Subdomain {
                    parent: Some(&parent),
                    splits: &splits,
                }],
                &[vec![true; 2]],
                &alpha,
            )
            .unwrap()
            .remove(0);
            parent = child.relu_bounds.clone();
            domains.push((splits.clone(), child));
        }
        let points = box_points(&mut rng, &input, 600);
        let margins = spec
            .broadcast_as((600, 2, 3))
            .unwrap()
            .matmul(&net.forward(&points).unwrap().unsqueeze(2).unwrap())
            .unwrap()
            .squeeze(2)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let relu_layers: Vec<usize> = (0..net.layers().len())
            .filter(|&i| parent.layers[i].is_some())
            .collect();
        let pre: Vec<Vec<Vec<f32>>> = relu_layers
            .iter()
            .map(|&l| pre_activations(&net, &points, l))
            .collect();
        for (splits, bound) in &domains {
            if !splits.is_empty() {
                split_domains += 1;
            }
            let satisfies = |p: usize| {
                splits.iter().all(|s| {
                    let at = relu_layers.iter().position(|&l| l == s.layer).unwrap();
                    let z = pre[at][p][s.neuron];
                    if s.active { z >= 0.0 } else { z <= 0.0 }
                })
            };
            let inside: Vec<usize> = (0..600).filter(|&p| satisfies(p)).collect();
            if !bound.feasible {
                empty_domains += 1;
                assert!(
                    inside.is_empty(),
                    "case {case}: an empty sub-domain holds a point"
                );
                continue;
            }
            for &p in &inside {
                checked_points += 1;
                for (row, &m) in margins[p].iter().enumerate() {
                    assert!(
                        m >= bound.lower[row] - TOLERANCE,
                        "case {case}, splits {splits:?}: margin {m} below the bound {}",
                        bound.lower[row]
                    );
                }
                for (at, &layer) in relu_layers.iter().enumerate() {
                    let (lower, upper) = bound.relu_bounds.layers[layer].as_ref().unwrap();
                    for (n, &z) in pre[at][p].iter().enumerate() {
                        assert!(
                            z >= lower[n] - TOLERANCE && z <= upper[n] + TOLERANCE,
                            "case {case}: layer {layer} neuron {n}: {z} outside [{}, {}]",
                            lower[n],
                            upper[n]
                        );
                    }
                }
            }
        }
    }
    assert!(
        split_domains >= 20,
        "only {split_domains} split sub-domains"
    );
    assert!(
        checked_points > 5_000,
        "only {checked_points} points checked"
    );
    let _ = empty_domains;
}

/// Settings for tiny nets: a short timeout, small batches so that branching happens.
fn tiny_config() -> BabConfig {
    BabConfig {
        timeout: Duration::from_secs(5),
        batch_domains: 8,
        ..BabConfig::default()
    }
}

/// Multiplies the first layer's weights by `factor`, so that the decision regions of a tiny
/// net cut through the unit square instead of covering it.
fn steepen_first_layer(net: &Net, factor: f64) {
    for named in net.named_vars() {
        if named.name.starts_with("1.weight") {
            let scaled = (named.var.as_tensor() * factor).unwrap();
            named.var.set(&scaled).unwrap();
        }
    }
}

/// Whether some point of a dense grid over the (2-D) ball is misclassified.
fn grid_finds_counterexample(net: &Net, image: &Tensor, label: u32, eps: f64) -> bool {
    let ball = Interval::linf_ball(image, eps).unwrap();
    let lower = ball.lower.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let upper = ball.upper.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let steps = 200;
    let mut values = Vec::with_capacity(steps * steps * 2);
    for i in 0..steps {
        for j in 0..steps {
            let (s, t) = (i as f32 / (steps - 1) as f32, j as f32 / (steps - 1) as f32);
            values.push(lower[0] + s * (upper[0] - lower[0]));
            values.push(lower[1] + t * (upper[1] - lower[1]));
        }
    }
    let points = Tensor::from_vec(values, (steps * steps, 1, 1, 2), &Device::Cpu).unwrap();
    let predicted = predictions(&net.forward(&points).unwrap()).unwrap();
    predicted.iter().any(|&p| p != label)
}

#[test]
fn bab_agrees_with_dense_sampling_on_two_dimensional_nets() {
    let mut rng = StdRng::seed_from_u64(1402);
    let config = tiny_config();
    let mut counts = [0usize; 3];
    let mut branched_certificates = 0;
    for case in 0..40u64 {
        let net = random_net(&mut rng, 100 + case, false);
        steepen_first_layer(&net, 8.0);
        let image = random_image(&mut rng, &net);
        let label = predictions(&net.forward(&image).unwrap()).unwrap()[0];
        let eps = rng.random_range(0.05..0.6);
        let outcome = bab_verify_sample(&net, &image, label, eps, &config, &mut rng).unwrap();
        let broken = grid_finds_counterexample(&net, &image, label, eps);
        match outcome.verdict {
            BabVerdict::Certified => {
                counts[0] += 1;
                assert!(
                    !broken,
                    "case {case}: certified, but a grid point is misclassified"
                );
                if outcome.domains > 1 {
                    branched_certificates += 1;
                }
            }
            BabVerdict::Falsified => {
                counts[1] += 1;
                let point = outcome
                    .counterexample
                    .expect("a falsified sample has a point");
                check_counterexample(&net, &image, label, eps, &point);
            }
            BabVerdict::Unknown => counts[2] += 1,
        }
    }
    // The cases must exercise both verdicts, and branching must prove some of them.
    assert!(
        counts[0] >= 5 && counts[1] >= 5,
        "verdicts {counts:?}, {branched_certificates} after branching"
    );
    assert!(
        branched_certificates >= 1,
        "no certificate needed branching ({counts:?})"
    );
    assert!(counts[2] <= 8, "too many unknown: {counts:?}");
}

/// Asserts that `point` lies in the ball ∩ [0, 1] and is misclassified, computed here apart
/// from the library's own check.
fn check_counterexample(net: &Net, image: &Tensor, label: u32, eps: f64, point: &[f32]) {
    let centre = image.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(point.len(), centre.len());
    for (&p, &c) in point.iter().zip(&centre) {
        assert!(
            (0.0..=1.0).contains(&p),
            "counterexample outside [0, 1]: {p}"
        );
        assert!(
            (p - c).abs() as f64 <= eps + 1e-6,
            "counterexample outside the ball: |{p} − {c}| > {eps}"
        );
    }
    let point = Tensor::from_vec(point.to_vec(), image.dims(), &Device::Cpu).unwrap();
    let predicted = predictions(&net.forward(&point).unwrap()).unwrap()[0];
    assert_ne!(
        predicted, label,
        "the counterexample is classified correctly"
    );
}

#[test]
fn bab_never_certifies_what_pgd_breaks_and_its_counterexamples_hold() {
    let mut rng = StdRng::seed_from_u64(1403);
    let config = tiny_config();
    let strong = PgdConfig {
        steps: 100,
        restarts: 10,
        ..PgdConfig::evaluation()
    };
    let mut counts = [0usize; 3];
    for case in 0..30u64 {
        let net = random_net(&mut rng, 200 + case, true);
        common::randomise_batch_norm(&net, &mut rng);
        let image = random_image(&mut rng, &net);
        let label = rng.random_range(0..3u32);
        let eps = rng.random_range(0.01..0.15);
        let outcome = bab_verify_sample(&net, &image, label, eps, &config, &mut rng).unwrap();
        let labels = Tensor::new(&[label], &Device::Cpu).unwrap();
        let attack = pgd_attack(&net, &image, &labels, eps, &strong, &mut rng).unwrap();
        match outcome.verdict {
            BabVerdict::Certified => {
                counts[0] += 1;
                assert!(
                    attack.robust[0],
                    "case {case}: certified, but PGD breaks it"
                );
            }
            BabVerdict::Falsified => {
                counts[1] += 1;
                let point = outcome
                    .counterexample
                    .expect("a falsified sample has a point");
                check_counterexample(&net, &image, label, eps, &point);
            }
            BabVerdict::Unknown => counts[2] += 1,
        }
    }
    assert!(counts[0] >= 3 && counts[1] >= 3, "verdicts {counts:?}");
}
