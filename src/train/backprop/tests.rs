//! The reverse pass against candle autograd on nets with every layer kind, and Shi's
//! regulariser's gradient against finite differences.

use super::shi::shi_regularizer;
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

/// Seeded uniform values in `[low, high)`: candle's `Tensor::rand` cannot be seeded, and an
/// unlucky draw near a ReLU's kink made a comparison with autograd fail once in 40 runs.
fn uniform(shape: &[usize], (low, high): (f32, f32), seed: u64) -> Tensor {
    let mut rng = StdRng::seed_from_u64(seed);
    let values: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|_| rng.random_range(low..high))
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

fn batch(spec: &NetSpec, classes: usize) -> (Tensor, Tensor) {
    let [c, h, w] = spec.input_shape;
    let images = uniform(&[7, c, h, w], (0.0, 1.0), 17);
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
        // The attacking methods: their attack points by the input-gradient pass (the same
        // random starts on both sides), then the losses at them.
        (Method::Sabr, 0.1, 0.5, 0.0, 0.0),
        (Method::Sabr, 0.05, 0.5, 1e-3, 0.5),
        (Method::Pgd, 0.1, 0.5, 0.0, 0.0),
        (Method::Pgd, 0.05, 0.5, 1e-3, 0.0),
        (Method::MtlIbp, 0.1, 0.5, 0.0, 0.0),
        (Method::MtlIbp, 0.05, 0.5, 1e-3, 0.5),
    ];
    for (spec_index, spec) in specs().iter().enumerate() {
        for &(method, eps, kappa, l1, shi) in &cases {
            let label = format!("net {spec_index}, {method} ε={eps} κ={kappa} l1={l1} shi={shi}");
            let config = TrainConfig {
                l1_reg_weight: l1,
                shi_reg_weight: shi,
                mtl_ibp_alpha: 0.3,
                ..TrainConfig::default()
            };
            let schedule = ramping(eps, kappa, 0.5);
            assert_step_matches_autograd(&label, spec, method, schedule, &config);
        }
    }
}

/// One step of `method` on a perturbed net of `spec` by the reverse pass and by autograd (the
/// same random starts on both sides): the same loss, parameter gradients and running
/// statistics. The schedule's ε is half the training ε, so Shi's regulariser runs at half its
/// weight.
fn assert_step_matches_autograd(
    label: &str,
    spec: &NetSpec,
    method: Method,
    schedule: ScheduleValues,
    config: &TrainConfig,
) {
    let (eps, l1, shi) = (schedule.eps, config.l1_reg_weight, config.shi_reg_weight);
    let mut ours = network(spec);
    let mut reference = network(spec);
    let (images, labels) = batch(spec, ours.num_classes());
    let objective =
        Objective::for_step(&ours, method, schedule, 0.5 * shi, config).expect("covered step");
    let mut rng = StdRng::seed_from_u64(0);
    let step = loss_and_gradients(&mut ours, (&images, &labels), &objective, l1, &mut rng).unwrap();

    let robust = implementation(method);
    let mut rng = StdRng::seed_from_u64(0);
    let loss = autograd_loss(
        &mut reference,
        robust.as_ref(),
        method,
        config,
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

#[test]
fn crown_ibp_reverse_pass_matches_autograd_for_every_beta() {
    // (ε, κ, β, L1 weight, Shi weight): β = 0 is IBP's margins alone (no CROWN pass), β = 1
    // CROWN-IBP's alone.
    let cases = [
        (0.05, 0.0, 1.0, 0.0, 0.0),
        (0.1, 0.3, 0.5, 0.0, 0.0),
        (0.02, 0.5, 0.25, 1e-3, 0.5),
        (0.2, 0.0, 0.0, 0.0, 0.0),
        (0.05, 0.2, 1.0, 1e-2, 1.0),
    ];
    for (spec_index, spec) in specs().iter().enumerate() {
        for &(eps, kappa, beta, l1, shi) in &cases {
            let label = format!("net {spec_index}, CROWN-IBP ε={eps} κ={kappa} β={beta} shi={shi}");
            let config = TrainConfig {
                l1_reg_weight: l1,
                shi_reg_weight: shi,
                ..TrainConfig::default()
            };
            let schedule = ScheduleValues {
                beta,
                ..ramping(eps, kappa, 0.5)
            };
            assert_step_matches_autograd(&label, spec, Method::CrownIbp, schedule, &config);
        }
    }
}

/// CROWN-IBP's robust term one sample at a time, three at a time and the whole batch at once:
/// the same loss, margin gradient, ReLU box gradients, parameter gradients and BatchNorm sums.
#[test]
fn crown_ibp_robust_term_does_not_depend_on_its_chunks() {
    for (spec_index, spec) in specs().iter().enumerate() {
        let mut net = network(spec);
        let layers = net.layers().to_vec();
        let classes = net.num_classes();
        let (images, labels) = batch(spec, classes);
        let label_values = labels.to_vec1::<u32>().unwrap();
        let samples = images.dim(0).unwrap();
        let clean = clean::forward(BatchNorms::Own(&mut net), &layers, &images, true).unwrap();
        let input = Interval::linf_ball(&images, 0.05).unwrap();
        let pass = interval::forward(
            &layers,
            (&input.lower, &input.upper),
            &clean.batch_norms,
            None,
        )
        .unwrap();
        let specification = margin_spec(&labels, classes).unwrap();
        let ibp_margins = uniform(&[samples, classes - 1], (-1.0, 1.0), 23);
        let crown = CrownNet::new(
            &layers,
            net.shapes(),
            &pass.saved,
            (&input.lower, &input.upper),
            &clean.batch_norms,
        )
        .unwrap();
        let run = |chunk: usize| {
            let mut gradients = Gradients::default();
            let mut sums = BatchNormSums::new();
            let term = crown
                .robust_term_in_chunks(
                    &specification,
                    &ibp_margins,
                    &label_values,
                    (0.6, 0.8),
                    &mut gradients,
                    &mut sums,
                    chunk,
                )
                .unwrap();
            (term, gradients, sums)
        };
        let (whole, whole_gradients, whole_sums) = run(samples);
        for chunk in [1, 3] {
            let label = format!("net {spec_index}, chunks of {chunk}");
            let (term, gradients, sums) = run(chunk);
            assert!(
                (term.loss - whole.loss).abs() <= 1e-6 * whole.loss.abs().max(1.0),
                "{label}: loss {} vs {}",
                term.loss,
                whole.loss
            );
            let what = format!("{label}: margin gradient");
            assert_close(&what, &term.margin_gradient, &whole.margin_gradient, 1e-6);
            assert_eq!(term.relu_gradients.len(), whole.relu_gradients.len());
            for (index, (d_centre, d_radius)) in &whole.relu_gradients {
                let (centre, radius) = &term.relu_gradients[index];
                assert_close(&format!("{label}: ∂centre {index}"), centre, d_centre, 1e-6);
                assert_close(&format!("{label}: ∂radius {index}"), radius, d_radius, 1e-6);
            }
            for layer in &layers {
                if let Layer::Conv2d { weight, bias, .. } | Layer::Linear { weight, bias } = layer {
                    for parameter in [weight, bias] {
                        let expected = whole_gradients.get(parameter).expect("whole gradient");
                        let got = gradients.get(parameter).expect("chunked gradient");
                        assert_close(&format!("{label}: parameter"), got, expected, 1e-6);
                    }
                }
            }
            assert_eq!(sums.len(), whole_sums.len());
            for (index, (d_scale, d_shift)) in &whole_sums {
                let (scale, shift) = &sums[index];
                for (got, expected) in scale.iter().chain(shift).zip(d_scale.iter().chain(d_shift))
                {
                    assert!(
                        (got - expected).abs() <= 2e-4 * expected.abs().max(1e-3),
                        "{label}: BatchNorm sums at {index}: {got} vs {expected}"
                    );
                }
            }
        }
    }
}

#[test]
fn taps_and_staps_reverse_pass_matches_autograd_at_every_split() {
    // (method, split point, ε, gradient expansion, latent steps, L1 weight, Shi weight, ramp
    // progress). Split points 0.2, 0.5, 0.7 and 0.99 put the classifier's first layer on a
    // convolution, a ReLU, a BatchNorm, a flatten or a linear layer across the nets, and 0.99
    // leaves the last layer alone; 8 steps pass both step-size decays. At full ramp progress
    // Shi's regulariser still runs (ε is half the training ε), which training never does but
    // which checks that its gradient and the connector's add up.
    let cases = [
        (Method::Taps, 0.5, 0.05, 5.0, 8, 0.0, 0.0, 1.0),
        (Method::Taps, 0.2, 0.1, 3.0, 2, 1e-3, 0.5, 1.0),
        (Method::Taps, 0.99, 0.05, 1.0, 3, 0.0, 0.0, 1.0),
        (Method::Taps, 0.7, 0.1, 2.0, 1, 0.0, 0.0, 1.0),
        (Method::Staps, 0.5, 0.1, 5.0, 3, 0.0, 0.5, 1.0),
        (Method::Staps, 0.7, 0.05, 2.0, 8, 1e-3, 0.0, 1.0),
        (Method::Staps, 0.2, 0.1, 4.0, 2, 0.0, 0.0, 1.0),
        // While ε ramps STAPS trains on SABR's loss with its `sabr_*` settings.
        (Method::Staps, 0.5, 0.05, 5.0, 3, 1e-3, 0.5, 0.5),
    ];
    for (spec_index, spec) in specs().iter().enumerate() {
        for &(method, split, eps, expansion, steps, l1, shi, progress) in &cases {
            let label = format!(
                "net {spec_index}, {method} split {split} ε={eps} α={expansion} steps {steps} \
                 l1={l1} shi={shi} ramp {progress}"
            );
            let config = TrainConfig {
                l1_reg_weight: l1,
                shi_reg_weight: shi,
                block_split_point: split,
                gradient_expansion_alpha: expansion,
                pgd_steps: steps,
                pgd_alpha: 0.4,
                sabr_subselection_ratio: 0.3,
                sabr_pgd_steps: 3,
                sabr_pgd_alpha: 0.6,
                sabr_pgd_eps_factor: 1.5,
                ..TrainConfig::default()
            };
            let schedule = ramping(eps, 0.5, progress);
            assert_step_matches_autograd(&label, spec, method, schedule, &config);
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
fn each_step_gets_its_objective_and_nets_without_a_final_linear_layer_are_left_to_autograd() {
    let spec = &specs()[0];
    let net = network(spec);
    let config = TrainConfig::default();
    let objective = |method, values, shi| Objective::for_step(&net, method, values, shi, &config);
    assert_eq!(
        objective(Method::Sabr, values(0.0, 0.5), 0.0),
        Some(Objective::Natural),
        "warm-up steps of every method are natural"
    );
    assert_eq!(
        objective(Method::CrownIbp, values(0.1, 0.5), 0.0),
        Some(Objective::CrownIbp {
            eps: 0.1,
            kappa: 0.5,
            beta: 0.0,
            shi_weight: 0.0
        })
    );
    assert!(matches!(
        objective(Method::Sabr, values(0.1, 0.5), 0.0),
        Some(Objective::Sabr { eps: 0.1, .. })
    ));
    assert!(matches!(
        objective(Method::MtlIbp, values(0.1, 0.5), 0.0),
        Some(Objective::MtlIbp { eps: 0.1, .. })
    ));
    assert!(matches!(
        objective(Method::Pgd, values(0.1, 0.5), 0.0),
        Some(Objective::Pgd { .. })
    ));
    assert!(matches!(
        objective(Method::Taps, values(0.1, 0.5), 0.0),
        Some(Objective::Taps {
            eps: 0.1,
            small_box: None,
            split: 3,
            ..
        })
    ));
    assert!(matches!(
        objective(Method::Staps, values(0.1, 0.5), 0.0),
        Some(Objective::Taps {
            small_box: Some(_),
            ..
        })
    ));
    assert!(
        matches!(
            objective(Method::Staps, ramping(0.05, 0.5, 0.5), 0.0),
            Some(Objective::Sabr { eps: 0.05, .. })
        ),
        "STAPS ramps on SABR's loss"
    );
    let mut no_final_linear = spec.clone();
    no_final_linear.layers.push(LayerSpec::Relu);
    let net = Net::new(&no_final_linear, Initialization::Default, 3).unwrap();
    assert_eq!(
        Objective::for_step(&net, Method::Sabr, values(0.1, 0.5), 0.0, &config),
        None,
        "a net not ending in a linear layer"
    );
    assert_eq!(
        objective(Method::Taps, ramping(0.05, 0.5, 0.5), 0.2),
        Some(Objective::Ibp {
            eps: 0.05,
            kappa: 0.0,
            shi_weight: 0.2
        }),
        "TAPS ramps on IBP's loss without κ"
    );
    assert_eq!(
        objective(Method::Ibp, values(0.1, 0.5), 0.2),
        Some(Objective::Ibp {
            eps: 0.1,
            kappa: 0.5,
            shi_weight: 0.2
        })
    );
}

#[test]
fn input_gradient_pass_matches_autograd_in_logits_and_input_gradients() {
    use crate::attack::{AttackLoss, Autograd, InputGradient};
    use crate::model::Normalization;
    for (spec_index, spec) in specs().iter().enumerate() {
        let mut net = network(spec);
        let (images, labels) = batch(spec, net.num_classes());
        let (_, statistics) = net.forward_train(&images).unwrap();
        let statistics = statistics.detached();
        for normalization in [Normalization::Population, Normalization::Batch(&statistics)] {
            let maps = fixed_batch_norms(&net, normalization).unwrap();
            let ours = InputGradientPass::new(net.layers(), &maps);
            let reference = Autograd::new(&net, normalization);
            for loss in [AttackLoss::CrossEntropy, AttackLoss::Margin] {
                let label = format!("net {spec_index}, {normalization:?}, {loss:?}");
                let target = Some((&labels, loss));
                let (logits, gradient) = ours.logits_and_gradient(&images, target).unwrap();
                let (expected_logits, expected) =
                    reference.logits_and_gradient(&images, target).unwrap();
                assert_close(&format!("{label}: logits"), &logits, &expected_logits, 1e-6);
                assert_close(
                    &format!("{label}: input gradient"),
                    &gradient.unwrap(),
                    &expected.unwrap(),
                    1e-6,
                );
                let (plain, none) = ours.logits_and_gradient(&images, None).unwrap();
                assert!(none.is_none(), "{label}: a gradient nobody asked for");
                assert_close(&format!("{label}: plain logits"), &plain, &logits, 1e-6);
            }
        }
    }
}

#[test]
fn attacks_through_the_input_gradient_pass_find_what_autograd_attacks_find() {
    use crate::attack::{PgdConfig, pgd_attack_in_box, pgd_attack_through, pgd_point_through};
    use crate::model::Normalization;
    let training = PgdConfig::training(5, 0.3).with_decays_after_steps(&[2, 4], 0.1);
    let evaluation = PgdConfig {
        steps: 6,
        restarts: 2,
        ..PgdConfig::evaluation()
    };
    for (spec_index, spec) in specs().iter().enumerate() {
        let mut net = network(spec);
        let (images, labels) = batch(spec, net.num_classes());
        let (_, statistics) = net.forward_train(&images).unwrap();
        let statistics = statistics.detached();
        for (config, normalization) in [
            (&training, Normalization::Batch(&statistics)),
            (&evaluation, Normalization::Population),
        ] {
            let label = format!("net {spec_index}, {config:?}");
            let maps = fixed_batch_norms(&net, normalization).unwrap();
            let pass = InputGradientPass::new(net.layers(), &maps);
            let mut rng = StdRng::seed_from_u64(9);
            let ours = pgd_attack_through(&pass, &images, &labels, 0.2, config, &mut rng).unwrap();
            let mut rng = StdRng::seed_from_u64(9);
            let expected =
                pgd_attack_in_box(&net, &images, &labels, 0.2, config, normalization, &mut rng)
                    .unwrap();
            if !config.early_stop {
                // A training attack's point, found without classifying the clean batch first.
                let mut rng = StdRng::seed_from_u64(9);
                let point =
                    pgd_point_through(&pass, &images, &labels, 0.2, config, &mut rng).unwrap();
                assert_close(
                    &format!("{label}: the point alone"),
                    &point,
                    &ours.adversarial,
                    0.0,
                );
            }
            assert_eq!(ours.robust, expected.robust, "{label}: robust samples");
            assert_close(
                &format!("{label}: adversarial points"),
                &ours.adversarial,
                &expected.adversarial,
                1.0,
            );
        }
    }
}

/// The input-gradient pass with batch sharding turned off: the attack runs every step on the
/// whole batch, its kernels on the whole pool.
struct Unsharded<'a>(&'a InputGradientPass<'a>);

impl crate::attack::InputGradient for Unsharded<'_> {
    fn logits_and_gradient(
        &self,
        x: &Tensor,
        target: Option<(&Tensor, crate::attack::AttackLoss)>,
    ) -> Result<(Tensor, Option<Tensor>), crate::attack::AttackError> {
        self.0.logits_and_gradient(x, target)
    }
}

#[test]
fn sharded_attacks_find_the_points_of_unsharded_ones() {
    use crate::attack::{PgdConfig, pgd_attack_through};
    use crate::model::Normalization;
    let training = PgdConfig::training(5, 0.3).with_decays_after_steps(&[2, 4], 0.1);
    let last_iterate = PgdConfig {
        keep_best: false,
        ..training.clone()
    };
    let evaluation = PgdConfig {
        steps: 6,
        restarts: 2,
        ..PgdConfig::evaluation()
    };
    // 3 threads: the batch of 7 splits into shards of 2, 2 and 3 rows.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    for (spec_index, spec) in specs().iter().enumerate() {
        let mut net = network(spec);
        let (images, labels) = batch(spec, net.num_classes());
        let (_, statistics) = net.forward_train(&images).unwrap();
        let statistics = statistics.detached();
        for config in [&training, &last_iterate, &evaluation] {
            let label = format!("net {spec_index}, {config:?}");
            let maps = fixed_batch_norms(&net, Normalization::Batch(&statistics)).unwrap();
            let pass = InputGradientPass::new(net.layers(), &maps);
            let attack = |network: &dyn crate::attack::InputGradient| {
                let mut rng = StdRng::seed_from_u64(5);
                pool.install(|| {
                    pgd_attack_through(network, &images, &labels, 0.3, config, &mut rng).unwrap()
                })
            };
            let sharded = attack(&pass);
            let unsharded = attack(&Unsharded(&pass));
            assert_eq!(sharded.robust, unsharded.robust, "{label}: robust samples");
            let values = |points: &Tensor| points.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(
                values(&sharded.adversarial),
                values(&unsharded.adversarial),
                "{label}: adversarial points"
            );
            if config.early_stop {
                assert!(
                    sharded.robust.iter().any(|r| !r),
                    "{label}: the attack broke no sample, so early stop went untested"
                );
            }
        }
    }
}

#[test]
fn the_sharded_latent_attack_finds_the_points_of_the_unsharded_one() {
    use super::latent::LatentPart;
    use crate::model::Normalization;
    use crate::train::methods::LatentAttack;
    // 3 threads split the 7 samples' rows into shards of 2, 2 and 3 samples; inside
    // `sequentially` one shard attacks them all, with the same single-threaded kernels.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    let attack = LatentAttack {
        steps: 8,
        step_factor: 0.5,
    };
    for (spec_index, spec) in specs().iter().enumerate() {
        let mut net = network(spec);
        let (images, labels) = batch(spec, net.num_classes());
        let (_, statistics) = net.forward_train(&images).unwrap();
        let statistics = statistics.detached();
        let maps = fixed_batch_norms(&net, Normalization::Batch(&statistics)).unwrap();
        let classes = net.num_classes();
        let rows = classes - 1;
        let split = split_index(&net, 0.5).unwrap();
        let dims = net.shapes()[split].batch_dims(7 * rows);
        let centre = uniform(&dims, (-1.0, 1.0), 5);
        let radius = uniform(&dims, (0.0, 0.5), 6);
        let (lower, upper) = ((&centre - &radius).unwrap(), (&centre + &radius).unwrap());
        let row_spec = margin_spec(&labels, classes)
            .unwrap()
            .reshape((7 * rows, classes))
            .unwrap();
        let start =
            LatentAttack::random_start((&lower, &upper), &mut StdRng::seed_from_u64(7)).unwrap();
        let part = LatentPart {
            layers: net.layers(),
            split,
            attack: &attack,
            batch_norms: &maps,
            sample_activations: 0,
        };
        let network = InputGradientPass::from_layer(net.layers(), split, &maps);
        let search = || {
            part.search(&network, start.clone(), (&lower, &upper), &row_spec, rows)
                .unwrap()
        };
        let sharded = pool.install(search);
        let unsharded = pool.install(|| crate::kernels::sequentially(search));
        let values = |points: &Tensor| points.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(
            values(&sharded),
            values(&unsharded),
            "net {spec_index}: pivots"
        );
        assert_ne!(
            values(&sharded),
            values(&start),
            "net {spec_index}: the attack moved"
        );
    }
}
