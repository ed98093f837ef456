//! Soundness of IBP, CROWN-IBP, CROWN and α-CROWN: points sampled inside the ε-box must land inside the
//! computed bounds, on builtin architectures and random small networks, with and without BatchNorm;
//! and tight: IBP equals an independent f64 interval computation, every method is exact on a point.

mod common;

use candle_core::{Device, Tensor};
use cthpo::bounds::{
    AlphaConfig, BoundMethod, CrownIntermediate, Interval, alpha_crown_lower_bounds,
    crown_spec_bounds, interval_trace, margin_spec, robust_logits, spec_bounds, spec_lower_bounds,
};
use cthpo::model::{Initialization, LayerSpec, Net, NetSpec, Normalization};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// Absolute slack for float rounding in the comparisons (the bounds are computed in f32).
const TOLERANCE: f32 = 2e-4;

fn random_inputs(rng: &mut StdRng, batch: usize, shape: [usize; 3]) -> Tensor {
    let count = batch * shape.iter().product::<usize>();
    // Mix of interior values and values at the edges of [0, 1] so clipping is exercised.
    let values: Vec<f32> = (0..count)
        .map(|_| match rng.random_range(0..10) {
            0 => 0.0,
            1 => 1.0,
            _ => rng.random_range(0.0..1.0),
        })
        .collect();
    Tensor::from_vec(values, (batch, shape[0], shape[1], shape[2]), &Device::Cpu).unwrap()
}

/// Points inside the box: half of them vertices (where linear bounds are tightest), half uniform.
fn sample_points(rng: &mut StdRng, interval: &Interval, per_sample: usize) -> (Tensor, Vec<usize>) {
    let lower = interval
        .lower
        .flatten_from(1)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let upper = interval
        .upper
        .flatten_from(1)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let mut values = Vec::new();
    let mut owner = Vec::new();
    for (b, (lo, hi)) in lower.iter().zip(&upper).enumerate() {
        for p in 0..per_sample {
            for (l, u) in lo.iter().zip(hi) {
                let t: f32 = if p % 2 == 0 {
                    if rng.random_bool(0.5) { 1.0 } else { 0.0 }
                } else {
                    rng.random_range(0.0..=1.0)
                };
                values.push(l + t * (u - l));
            }
            owner.push(b);
        }
    }
    let mut dims = interval.lower.dims().to_vec();
    dims[0] = owner.len();
    (Tensor::from_vec(values, dims, &Device::Cpu).unwrap(), owner)
}

/// An input normalisation with random per-channel mean and std.
fn random_normalize(rng: &mut StdRng, channels: usize) -> LayerSpec {
    LayerSpec::Normalize {
        mean: (0..channels).map(|_| rng.random_range(0.2..0.6)).collect(),
        std: (0..channels).map(|_| rng.random_range(0.2..0.5)).collect(),
    }
}

/// A hidden linear layer of 4–12 units, then (with `batch_norm`, half the time) BatchNorm, then ReLU.
fn push_hidden_linear(rng: &mut StdRng, layers: &mut Vec<LayerSpec>, batch_norm: bool) {
    layers.push(LayerSpec::Linear {
        out_features: rng.random_range(4..=12),
    });
    if batch_norm && rng.random_bool(0.5) {
        layers.push(LayerSpec::BatchNorm {});
    }
    layers.push(LayerSpec::Relu);
}

/// The output layer: 3–5 classes.
fn push_dense_output(rng: &mut StdRng, layers: &mut Vec<LayerSpec>) {
    layers.push(LayerSpec::Linear {
        out_features: rng.random_range(3..=5),
    });
}

fn random_spec(rng: &mut StdRng) -> NetSpec {
    let channels = rng.random_range(1..=3);
    let size = rng.random_range(6..=10);
    let mut layers = Vec::new();
    if rng.random_bool(0.3) {
        layers.push(random_normalize(rng, channels));
    }
    let with_bn = rng.random_bool(0.5);
    for _ in 0..rng.random_range(1..=2) {
        layers.push(LayerSpec::Conv2d {
            out_channels: rng.random_range(2..=5),
            kernel_size: rng.random_range(2..=3),
            stride: rng.random_range(1..=2),
            padding: rng.random_range(0..=1),
        });
        if with_bn {
            layers.push(LayerSpec::BatchNorm {});
        }
        layers.push(LayerSpec::Relu);
    }
    layers.push(LayerSpec::Flatten);
    for _ in 0..rng.random_range(0..=2) {
        push_hidden_linear(rng, &mut layers, with_bn);
    }
    push_dense_output(rng, &mut layers);
    NetSpec {
        input_shape: [channels, size, size],
        layers,
    }
}

/// Checks every method's margin bounds (and IBP's per-layer boxes) against sampled points.
fn check_soundness(net: &Net, rng: &mut StdRng, batch: usize, eps: f64, per_sample: usize) {
    let shape = net.spec().input_shape;
    let inputs = random_inputs(rng, batch, shape);
    let labels: Vec<u32> = (0..batch)
        .map(|_| rng.random_range(0..net.num_classes() as u32))
        .collect();
    let labels = Tensor::new(labels.as_slice(), &Device::Cpu).unwrap();
    let spec = margin_spec(&labels, net.num_classes()).unwrap();
    let input = Interval::linf_ball(&inputs, eps).unwrap();
    let (points, owner) = sample_points(rng, &input, per_sample);
    let logits = net.forward(&points).unwrap();

    // Margins of every sampled point: C[owner] · logits.
    let owner_index = Tensor::new(
        owner
            .iter()
            .map(|&b| b as u32)
            .collect::<Vec<_>>()
            .as_slice(),
        &Device::Cpu,
    )
    .unwrap();
    let point_spec = spec.index_select(&owner_index, 0).unwrap();
    let margins = point_spec
        .matmul(&logits.unsqueeze(2).unwrap())
        .unwrap()
        .squeeze(2)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();

    let below_every_point = |label: &str, lower: &[Vec<f32>]| {
        for (p, &b) in owner.iter().enumerate() {
            for (row, &value) in margins[p].iter().enumerate() {
                assert!(
                    lower[b][row] <= value + TOLERANCE,
                    "{label}: margin {row} of sample {b} is {value}, below {}",
                    lower[b][row]
                );
            }
        }
    };
    let contains_every_point = |label: &str, bounds: &Interval| -> Vec<Vec<f32>> {
        let lower = bounds.lower.to_vec2::<f32>().unwrap();
        let upper = bounds.upper.to_vec2::<f32>().unwrap();
        for (p, &b) in owner.iter().enumerate() {
            for (row, &value) in margins[p].iter().enumerate() {
                assert!(
                    lower[b][row] <= value + TOLERANCE && value <= upper[b][row] + TOLERANCE,
                    "{label}: margin {row} of sample {b} is {value}, outside [{}, {}]",
                    lower[b][row],
                    upper[b][row]
                );
            }
        }
        lower
    };
    let plain = crown_spec_bounds(
        net,
        &input,
        &spec,
        CrownIntermediate::Plain,
        Normalization::Population,
    )
    .unwrap();
    contains_every_point("CROWN with plain intermediate bounds", &plain);
    for method in BoundMethod::ALL {
        let bounds = spec_bounds(net, &input, &spec, method, Normalization::Population).unwrap();
        let lower = contains_every_point(method.name(), &bounds);
        // The lower-only path must agree with the two-sided one.
        let lower_only = spec_lower_bounds(net, &input, &spec, method, Normalization::Population)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        if method == BoundMethod::AlphaCrown {
            // The lower-only path stops optimising certified samples, so it may differ.
            below_every_point("alpha-crown (lower only)", &lower_only);
            continue;
        }
        for (a, b) in lower_only.iter().flatten().zip(lower.iter().flatten()) {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "{method}: {a} vs {b}"
            );
        }
    }

    // IBP boxes at every layer contain the activations of every sampled point.
    let trace = interval_trace(net, &input, Normalization::Population).unwrap();
    let index_of = |t: &Tensor| t.index_select(&owner_index, 0).unwrap();
    let mut activation = points.clone();
    let detached = net.detached();
    for layer_index in 0..trace.len() {
        let bounds = trace.activation(layer_index).unwrap();
        let lo = index_of(&bounds.lower);
        let hi = index_of(&bounds.upper);
        let below = (lo - &activation)
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let above = (&activation - hi)
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            below <= TOLERANCE && above <= TOLERANCE,
            "IBP box at layer {layer_index} violated by {below} / {above}"
        );
        if layer_index < detached.layers().len() {
            activation = forward_one_layer(&detached, layer_index, &activation);
        }
    }
}

fn forward_one_layer(net: &Net, index: usize, x: &Tensor) -> Tensor {
    // IBP of a degenerate box is the layer's exact image, which gives a layer-by-layer forward.
    let point = Interval {
        lower: x.clone(),
        upper: x.clone(),
    };
    cthpo::bounds::propagate_layer(net, index, &point, Normalization::Population)
        .unwrap()
        .lower
}

#[test]
fn builtin_architectures_are_sound() {
    let mut rng = StdRng::seed_from_u64(11);
    for (name, shape, normalization) in [
        ("fc", [1, 28, 28], None),
        ("cnn-small", [1, 28, 28], None),
        ("cnn-medium", [1, 28, 28], None),
        (
            "cnn-small",
            [3, 32, 32],
            Some((vec![0.4914, 0.4822, 0.4465], vec![0.2470, 0.2435, 0.2616])),
        ),
    ] {
        let spec = NetSpec::builtin(name, shape, 10, normalization).unwrap();
        for init in [Initialization::Default, Initialization::Ibp] {
            let net = Net::new(&spec, init, rng.random()).unwrap();
            check_soundness(&net, &mut rng, 2, 0.02, 200);
        }
    }
}

#[test]
fn cnn7_interval_bounds_are_sound() {
    // Full CROWN on CNN7 takes minutes, so this checks CNN7's BatchNorm layers with IBP and
    // CROWN-IBP at a tiny ε; full CROWN is covered on narrow CNN7-shaped random nets below.
    let mut rng = StdRng::seed_from_u64(12);
    let spec = NetSpec::builtin("cnn7", [1, 28, 28], 10, None).unwrap();
    let net = Net::new(&spec, Initialization::Ibp, 5).unwrap();
    common::randomise_batch_norm(&net, &mut rng);
    let inputs = random_inputs(&mut rng, 2, [1, 28, 28]);
    let labels = Tensor::new(&[3u32, 7], &Device::Cpu).unwrap();
    let spec = margin_spec(&labels, 10).unwrap();
    let input = Interval::linf_ball(&inputs, 0.001).unwrap();
    let (points, owner) = sample_points(&mut rng, &input, 20);
    let logits = net.forward(&points).unwrap().to_vec2::<f32>().unwrap();
    for method in [BoundMethod::Ibp, BoundMethod::CrownIbp] {
        let bounds = spec_bounds(&net, &input, &spec, method, Normalization::Population).unwrap();
        let lower = bounds.lower.to_vec2::<f32>().unwrap();
        let upper = bounds.upper.to_vec2::<f32>().unwrap();
        for (p, &b) in owner.iter().enumerate() {
            let label = [3usize, 7][b];
            for (row, other) in (0..10).filter(|&j| j != label).enumerate() {
                let margin = logits[p][label] - logits[p][other];
                let slack = TOLERANCE * (1.0 + margin.abs());
                assert!(lower[b][row] <= margin + slack && margin <= upper[b][row] + slack);
            }
        }
    }
}

#[test]
fn random_networks_with_and_without_batch_norm_are_sound() {
    let mut rng = StdRng::seed_from_u64(2024);
    let mut with_batch_norm = 0;
    for case in 0..40 {
        let spec = random_spec(&mut rng);
        let init = if case % 2 == 0 {
            Initialization::Default
        } else {
            Initialization::Ibp
        };
        let net = Net::new(&spec, init, case).unwrap();
        if net.has_batch_norm() {
            with_batch_norm += 1;
            common::randomise_batch_norm(&net, &mut rng);
        }
        let eps = [0.005, 0.02, 0.1, 0.3][case as usize % 4];
        check_soundness(&net, &mut rng, 3, eps, 150);
    }
    assert!(
        with_batch_norm >= 10,
        "only {with_batch_norm} nets had BatchNorm"
    );
}

#[test]
fn crown_is_usually_at_least_as_tight_as_ibp_without_batch_norm() {
    let mut rng = StdRng::seed_from_u64(77);
    let (mut tighter_or_equal, mut strictly_tighter, mut total) = (0usize, 0usize, 0usize);
    for case in 0..30 {
        let mut spec = random_spec(&mut rng);
        spec.layers
            .retain(|l| !matches!(l, LayerSpec::BatchNorm {}));
        let net = Net::new(&spec, Initialization::Default, case).unwrap();
        let inputs = random_inputs(&mut rng, 4, spec.input_shape);
        let labels: Vec<u32> = (0..4)
            .map(|_| rng.random_range(0..net.num_classes() as u32))
            .collect();
        let labels = Tensor::new(labels.as_slice(), &Device::Cpu).unwrap();
        let margin = margin_spec(&labels, net.num_classes()).unwrap();
        let input = Interval::linf_ball(&inputs, 0.01).unwrap();
        let lower = |method| {
            spec_lower_bounds(&net, &input, &margin, method, Normalization::Population)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let (ibp, crown) = (lower(BoundMethod::Ibp), lower(BoundMethod::Crown));
        for (i, c) in ibp.iter().zip(&crown) {
            total += 1;
            if *c >= i - 1e-5 {
                tighter_or_equal += 1;
            }
            if *c > i + 1e-5 {
                strictly_tighter += 1;
            }
        }
    }
    let share = tighter_or_equal as f64 / total as f64;
    println!(
        "CROWN ≥ IBP on {tighter_or_equal}/{total} margins ({:.1}%), strictly tighter on {strictly_tighter}",
        100.0 * share
    );
    assert!(
        share >= 0.95,
        "CROWN was at least as tight as IBP on only {share:.3} of margins"
    );
    assert!(
        strictly_tighter * 2 >= total,
        "CROWN was strictly tighter on only {strictly_tighter}/{total}"
    );
}

#[test]
fn margin_spec_and_robust_logits_layout() {
    let labels = Tensor::new(&[2u32, 0], &Device::Cpu).unwrap();
    let spec = margin_spec(&labels, 3).unwrap().to_vec3::<f32>().unwrap();
    assert_eq!(spec[0], vec![vec![-1.0, 0.0, 1.0], vec![0.0, -1.0, 1.0]]);
    assert_eq!(spec[1], vec![vec![1.0, -1.0, 0.0], vec![1.0, 0.0, -1.0]]);
    let margins = Tensor::new(&[[0.5f32, -1.0], [2.0, 3.0]], &Device::Cpu).unwrap();
    let logits = robust_logits(&margins, &labels)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(logits[0], vec![-0.5, 1.0, 0.0]);
    assert_eq!(logits[1], vec![0.0, -2.0, -3.0]);
    assert!(margin_spec(&Tensor::new(&[3u32], &Device::Cpu).unwrap(), 3).is_err());
}

#[test]
fn robust_training_bounds_are_differentiable() {
    let spec = NetSpec::builtin("cnn-small", [1, 28, 28], 10, None).unwrap();
    let net = Net::new(&spec, Initialization::Ibp, 3).unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let inputs = random_inputs(&mut rng, 4, [1, 28, 28]);
    let labels = Tensor::new(&[1u32, 2, 3, 4], &Device::Cpu).unwrap();
    let input = Interval::linf_ball(&inputs, 0.1).unwrap();
    let margin = margin_spec(&labels, 10).unwrap();
    for method in [BoundMethod::Ibp, BoundMethod::CrownIbp] {
        let lower =
            spec_lower_bounds(&net, &input, &margin, method, Normalization::Population).unwrap();
        let loss =
            candle_nn::loss::cross_entropy(&robust_logits(&lower, &labels).unwrap(), &labels)
                .unwrap();
        let grads = loss.backward().unwrap();
        for var in net.trainable_vars() {
            let grad = grads
                .get(var.as_tensor())
                .expect("every parameter gets a gradient");
            let norm = grad
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm.is_finite());
        }
        let first = grads.get(net.trainable_vars()[0].as_tensor()).unwrap();
        let norm = first
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            norm > 0.0,
            "{method}: the first layer's weight gets no gradient"
        );
    }
}

// ------------------------------------------------------------------ tightness

/// Interval bounds in f64, computed independently of cthpo's bound code: centre and radius
/// through every affine layer (`|W|` for the radius), ReLU on the box ends, and the margin
/// specification folded into the last linear layer. For nets of normalize, flatten, linear,
/// 1-D BatchNorm and ReLU layers only.
fn reference_ibp(net: &Net, x: &[f32], eps: f64, label: usize) -> (Vec<f64>, Vec<f64>) {
    let spec = net.spec();
    let vars: std::collections::HashMap<&str, Vec<f64>> = net
        .named_vars()
        .iter()
        .map(|v| {
            let values = v
                .var
                .flatten_all()
                .unwrap()
                .to_dtype(candle_core::DType::F64);
            (v.name.as_str(), values.unwrap().to_vec1::<f64>().unwrap())
        })
        .collect();
    let var = |i: usize, key: &str| vars[format!("{i}.{key}").as_str()].clone();
    let mut lower: Vec<f64> = x.iter().map(|&v| (v as f64 - eps).max(0.0)).collect();
    let mut upper: Vec<f64> = x.iter().map(|&v| (v as f64 + eps).min(1.0)).collect();
    let plane = spec.input_shape[1] * spec.input_shape[2];
    // y = a·x + d per feature.
    let affine = |lower: &mut Vec<f64>, upper: &mut Vec<f64>, a: &dyn Fn(usize) -> (f64, f64)| {
        for k in 0..lower.len() {
            let (scale, shift) = a(k);
            let (c, r) = ((lower[k] + upper[k]) / 2.0, (upper[k] - lower[k]) / 2.0);
            let (c, r) = (scale * c + shift, scale.abs() * r);
            (lower[k], upper[k]) = (c - r, c + r);
        }
    };
    let last = spec.layers.len() - 1;
    for (i, layer) in spec.layers.iter().enumerate() {
        match layer {
            LayerSpec::Normalize { mean, std } => affine(&mut lower, &mut upper, &|k| {
                let ch = k / plane;
                (1.0 / std[ch] as f64, -(mean[ch] as f64) / std[ch] as f64)
            }),
            LayerSpec::BatchNorm {} => {
                let (w, b) = (var(i, "weight"), var(i, "bias"));
                let (m, v) = (var(i, "running_mean"), var(i, "running_var"));
                affine(&mut lower, &mut upper, &|k| {
                    let scale = w[k] / (v[k] + 1e-5).sqrt();
                    (scale, b[k] - scale * m[k])
                })
            }
            LayerSpec::Relu => {
                lower.iter_mut().for_each(|l| *l = l.max(0.0));
                upper.iter_mut().for_each(|u| *u = u.max(0.0));
            }
            LayerSpec::Flatten => {}
            LayerSpec::Linear { out_features } => {
                let (w, b) = (var(i, "weight"), var(i, "bias"));
                let inputs = lower.len();
                let row = |o: usize| &w[o * inputs..(o + 1) * inputs];
                // The last layer's rows become the margins z_label − z_j (j ≠ label).
                let rows: Vec<(Vec<f64>, f64)> = if i == last {
                    (0..*out_features)
                        .filter(|&j| j != label)
                        .map(|j| {
                            let diff = row(label).iter().zip(row(j)).map(|(a, c)| a - c);
                            (diff.collect(), b[label] - b[j])
                        })
                        .collect()
                } else {
                    (0..*out_features)
                        .map(|o| (row(o).to_vec(), b[o]))
                        .collect()
                };
                let (mut lo, mut hi) = (Vec::new(), Vec::new());
                for (weights, bias) in rows {
                    let (mut c, mut r) = (bias, 0.0);
                    for (k, w) in weights.iter().enumerate() {
                        c += w * (lower[k] + upper[k]) / 2.0;
                        r += w.abs() * (upper[k] - lower[k]) / 2.0;
                    }
                    lo.push(c - r);
                    hi.push(c + r);
                }
                (lower, upper) = (lo, hi);
            }
            LayerSpec::Conv2d { .. } => unreachable!("the reference covers dense nets only"),
        }
    }
    (lower, upper)
}

/// A dense net: optional input normalisation, 1–3 hidden linear layers (some with BatchNorm).
fn random_dense_spec(rng: &mut StdRng) -> NetSpec {
    let channels = rng.random_range(1..=3);
    let size = rng.random_range(3..=5);
    let mut layers = Vec::new();
    if rng.random_bool(0.5) {
        layers.push(random_normalize(rng, channels));
    }
    layers.push(LayerSpec::Flatten);
    for _ in 0..rng.random_range(1..=3) {
        push_hidden_linear(rng, &mut layers, true);
    }
    push_dense_output(rng, &mut layers);
    NetSpec {
        input_shape: [channels, size, size],
        layers,
    }
}

#[test]
fn ibp_margin_bounds_equal_an_independent_f64_computation() {
    // Soundness alone would accept infinite bounds: IBP must be exactly interval arithmetic.
    let mut rng = StdRng::seed_from_u64(31);
    for case in 0..20 {
        let spec = random_dense_spec(&mut rng);
        let net = Net::new(&spec, Initialization::Default, case).unwrap();
        common::randomise_batch_norm(&net, &mut rng);
        let eps = [0.01, 0.05, 0.2][case as usize % 3];
        let inputs = random_inputs(&mut rng, 2, spec.input_shape);
        let labels: Vec<u32> = (0..2)
            .map(|_| rng.random_range(0..net.num_classes() as u32))
            .collect();
        let margin = margin_spec(&Tensor::new(labels.as_slice(), &Device::Cpu).unwrap(), {
            net.num_classes()
        })
        .unwrap();
        let input = Interval::linf_ball(&inputs, eps).unwrap();
        let bounds = spec_bounds(
            &net,
            &input,
            &margin,
            BoundMethod::Ibp,
            Normalization::Population,
        )
        .unwrap();
        let lower = bounds.lower.to_vec2::<f32>().unwrap();
        let upper = bounds.upper.to_vec2::<f32>().unwrap();
        let flat = inputs.flatten_from(1).unwrap().to_vec2::<f32>().unwrap();
        for (b, x) in flat.iter().enumerate() {
            let (lo, hi) = reference_ibp(&net, x, eps, labels[b] as usize);
            for row in 0..lo.len() {
                for (ours, reference) in [(lower[b][row], lo[row]), (upper[b][row], hi[row])] {
                    assert!(
                        (ours as f64 - reference).abs() <= 1e-4 * (1.0 + reference.abs()),
                        "case {case}, sample {b}, margin {row}: {ours} vs reference {reference}"
                    );
                }
            }
        }
    }
}

#[test]
fn every_method_is_exact_on_a_zero_width_box() {
    // A box of one point has one image: every method's bounds must close on the true margins.
    let mut rng = StdRng::seed_from_u64(32);
    for case in 0..12 {
        let spec = random_spec(&mut rng);
        let net = Net::new(&spec, Initialization::Default, case).unwrap();
        if net.has_batch_norm() {
            common::randomise_batch_norm(&net, &mut rng);
        }
        let inputs = random_inputs(&mut rng, 2, spec.input_shape);
        let labels: Vec<u32> = (0..2)
            .map(|_| rng.random_range(0..net.num_classes() as u32))
            .collect();
        let labels = Tensor::new(labels.as_slice(), &Device::Cpu).unwrap();
        let margin = margin_spec(&labels, net.num_classes()).unwrap();
        let exact = margin
            .matmul(&net.forward(&inputs).unwrap().unsqueeze(2).unwrap())
            .unwrap()
            .squeeze(2)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let input = Interval::linf_ball(&inputs, 0.0).unwrap();
        for method in BoundMethod::ALL {
            let bounds =
                spec_bounds(&net, &input, &margin, method, Normalization::Population).unwrap();
            let lower = bounds.lower.to_vec2::<f32>().unwrap();
            let upper = bounds.upper.to_vec2::<f32>().unwrap();
            for (b, row) in exact.iter().enumerate() {
                for (j, &value) in row.iter().enumerate() {
                    let slack = TOLERANCE * (1.0 + value.abs());
                    assert!(
                        (lower[b][j] - value).abs() <= slack
                            && (upper[b][j] - value).abs() <= slack,
                        "{method}, case {case}: margin {value} bounded by [{}, {}]",
                        lower[b][j],
                        upper[b][j]
                    );
                }
            }
        }
    }
}

/// Margins of sampled points, each with the index of the sample whose box it was drawn from.
type SampledMargins = Vec<(usize, Vec<f32>)>;

/// Margin lower bounds of a random net (conv, BatchNorm, normalisation as [`random_spec`] draws
/// them) by CROWN and by α-CROWN with `config`, with the sampled margins they must stay below.
fn crown_and_alpha(
    rng: &mut StdRng,
    case: u64,
    eps: f64,
    config: &AlphaConfig,
) -> (Vec<f32>, Vec<f32>, SampledMargins) {
    let spec = random_spec(rng);
    let net = Net::new(&spec, Initialization::Default, case).unwrap();
    if net.has_batch_norm() {
        common::randomise_batch_norm(&net, rng);
    }
    let batch = 3;
    let inputs = random_inputs(rng, batch, spec.input_shape);
    let labels: Vec<u32> = (0..batch)
        .map(|_| rng.random_range(0..net.num_classes() as u32))
        .collect();
    let labels = Tensor::new(labels.as_slice(), &Device::Cpu).unwrap();
    let margin = margin_spec(&labels, net.num_classes()).unwrap();
    let input = Interval::linf_ball(&inputs, eps).unwrap();
    let crown = spec_lower_bounds(
        &net,
        &input,
        &margin,
        BoundMethod::Crown,
        Normalization::Population,
    )
    .unwrap();
    let alpha =
        alpha_crown_lower_bounds(&net, &input, &margin, config, Normalization::Population).unwrap();
    let (points, owner) = sample_points(rng, &input, 100);
    let logits = net.forward(&points).unwrap();
    let owner_index = Tensor::new(
        owner
            .iter()
            .map(|&b| b as u32)
            .collect::<Vec<_>>()
            .as_slice(),
        &Device::Cpu,
    )
    .unwrap();
    let margins = margin
        .index_select(&owner_index, 0)
        .unwrap()
        .matmul(&logits.unsqueeze(2).unwrap())
        .unwrap()
        .squeeze(2)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let flat = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    (
        flat(crown),
        flat(alpha),
        owner.into_iter().zip(margins).collect(),
    )
}

#[test]
fn alpha_crown_is_sound_and_never_looser_than_crown() {
    let mut rng = StdRng::seed_from_u64(404);
    let config = AlphaConfig {
        stop_when_positive: false,
        ..AlphaConfig::default()
    };
    let (mut gain, mut tighter) = (0f64, 0usize);
    for case in 0..25 {
        let eps = [0.01, 0.03, 0.1][case as usize % 3];
        let (crown, alpha, points) = crown_and_alpha(&mut rng, case, eps, &config);
        let rows = crown.len() / 3;
        for (c, a) in crown.iter().zip(&alpha) {
            assert!(
                *a >= c - TOLERANCE * (1.0 + c.abs()),
                "case {case}: α {a} < CROWN {c}"
            );
            gain += f64::from(a - c);
            tighter += usize::from(*a > c + 1e-4);
        }
        for (b, margins) in &points {
            for (row, value) in margins.iter().enumerate() {
                let bound = alpha[b * rows + row];
                assert!(
                    bound <= value + TOLERANCE,
                    "case {case}: {bound} above margin {value}"
                );
            }
        }
    }
    // The optimisation must actually move the slopes somewhere.
    assert!(
        tighter > 10 && gain > 0.0,
        "α-CROWN tightened only {tighter} margins"
    );
}

#[test]
fn alpha_crown_stays_sound_when_slopes_hit_the_ends_of_their_range() {
    // A huge learning rate throws every slope to 0 or 1 after one step; a bound from any slope in
    // [0, 1] must still lie below every sampled margin (an unsound iterate would be the highest
    // and so the one kept).
    let mut rng = StdRng::seed_from_u64(405);
    let config = AlphaConfig {
        iterations: 6,
        learning_rate: 1e3,
        learning_rate_decay: 1.0,
        stop_when_positive: false,
        ..AlphaConfig::default()
    };
    for case in 0..15 {
        let (_, alpha, points) = crown_and_alpha(&mut rng, case, 0.05, &config);
        let rows = alpha.len() / 3;
        for (b, margins) in &points {
            for (row, value) in margins.iter().enumerate() {
                let bound = alpha[b * rows + row];
                assert!(
                    bound <= value + TOLERANCE,
                    "case {case}: {bound} above margin {value}"
                );
            }
        }
    }
}

#[test]
fn alpha_crown_with_optimised_intermediate_slopes_is_sound_and_never_looser_than_crown() {
    // Every intermediate bound gets its own slope optimisation (intersected with CROWN's), with
    // huge steps half the time so that the slopes reach the ends of [0, 1].
    let mut rng = StdRng::seed_from_u64(406);
    let mut tighter = 0;
    for case in 0..16 {
        let config = AlphaConfig {
            iterations: 6,
            learning_rate: if case % 2 == 0 { 0.5 } else { 1e3 },
            stop_when_positive: false,
            optimise_intermediate: true,
            ..AlphaConfig::default()
        };
        let (crown, alpha, points) = crown_and_alpha(&mut rng, case, 0.08, &config);
        for (c, a) in crown.iter().zip(&alpha) {
            assert!(*a >= c - TOLERANCE, "case {case}: {a} below CROWN's {c}");
            if *a > c + 1e-4 {
                tighter += 1;
            }
        }
        let rows = alpha.len() / 3;
        for (b, margins) in &points {
            for (row, value) in margins.iter().enumerate() {
                let bound = alpha[b * rows + row];
                assert!(
                    bound <= value + TOLERANCE,
                    "case {case}: {bound} above margin {value}"
                );
            }
        }
    }
    assert!(tighter > 10, "only {tighter} margins tighter than CROWN");
}
