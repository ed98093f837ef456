//! PGD and evaluation: attacks never break certified samples, find what exact bounds say exists,
//! and the cascade reports consistent accuracies.

use candle_core::{Device, Tensor};
use cthpo::attack::{AttackLoss, PgdConfig, pgd_attack};
use cthpo::bounds::{BoundMethod, Interval, margin_lower_bounds};
use cthpo::eval::{EvalConfig, certify_rows, evaluate};
use cthpo::model::{Initialization, LayerSpec, Net, NetSpec, Normalization};
use rand::{Rng, SeedableRng, rngs::StdRng};

fn random_images(rng: &mut StdRng, count: usize, shape: [usize; 3]) -> Tensor {
    let values: Vec<f32> = (0..count * shape.iter().product::<usize>())
        .map(|_| rng.random_range(0.0..1.0))
        .collect();
    Tensor::from_vec(values, (count, shape[0], shape[1], shape[2]), &Device::Cpu).unwrap()
}

/// Labels the network's own clean predictions, so every sample starts correctly classified.
fn own_labels(net: &Net, images: &Tensor) -> Tensor {
    net.forward(images).unwrap().argmax(1).unwrap()
}

fn small_relu_net(seed: u64) -> Net {
    let spec = NetSpec {
        input_shape: [1, 8, 8],
        layers: vec![
            LayerSpec::Conv2d {
                out_channels: 4,
                kernel_size: 3,
                stride: 2,
                padding: 1,
            },
            LayerSpec::Relu,
            LayerSpec::Flatten,
            LayerSpec::Linear { out_features: 16 },
            LayerSpec::Relu,
            LayerSpec::Linear { out_features: 4 },
        ],
    };
    Net::new(&spec, Initialization::Default, seed).unwrap()
}

#[test]
fn pgd_is_exact_on_a_linear_classifier() {
    // For an affine network the interval bound is the exact worst case, so PGD (which walks to
    // a vertex of the box) must break exactly the samples whose exact worst margin is negative.
    let spec = NetSpec {
        input_shape: [1, 6, 6],
        layers: vec![LayerSpec::Flatten, LayerSpec::Linear { out_features: 5 }],
    };
    let mut rng = StdRng::seed_from_u64(1);
    let net = Net::new(&spec, Initialization::Default, 4).unwrap();
    let images = random_images(&mut rng, 64, [1, 6, 6]);
    let labels = own_labels(&net, &images);
    let eps = 0.03;
    let input = Interval::linf_ball(&images, eps).unwrap();
    let worst = margin_lower_bounds(
        &net,
        &input,
        &labels,
        BoundMethod::Ibp,
        Normalization::Population,
    )
    .unwrap()
    .min_keepdim(1)
    .unwrap()
    .flatten_all()
    .unwrap()
    .to_vec1::<f32>()
    .unwrap();
    let outcome = pgd_attack(
        &net,
        &images,
        &labels,
        eps,
        &PgdConfig::evaluation(),
        &mut rng,
    )
    .unwrap();
    let mut breakable = 0;
    for (i, &w) in worst.iter().enumerate() {
        if w > 1e-4 {
            assert!(
                outcome.robust[i],
                "sample {i} has certified margin {w} but PGD broke it"
            );
        } else if w < -1e-4 {
            breakable += 1;
            assert!(
                !outcome.robust[i],
                "sample {i} has exact worst margin {w} but PGD missed it"
            );
        }
    }
    assert!(
        (5..=59).contains(&breakable),
        "ε should split the samples; {breakable} breakable"
    );
    // Adversarial examples stay in the clipped ball.
    let lower = (input.lower - 1e-6).unwrap();
    let upper = (input.upper + 1e-6).unwrap();
    let adv = &outcome.adversarial;
    assert_eq!(
        adv.ge(&lower)
            .unwrap()
            .min_all()
            .unwrap()
            .to_scalar::<u8>()
            .unwrap(),
        1
    );
    assert_eq!(
        adv.le(&upper)
            .unwrap()
            .min_all()
            .unwrap()
            .to_scalar::<u8>()
            .unwrap(),
        1
    );
}

#[test]
fn pgd_never_breaks_a_certified_sample() {
    let mut rng = StdRng::seed_from_u64(5);
    let mut certified_total = 0;
    let mut broken_total = 0;
    for seed in 0..6 {
        let net = small_relu_net(seed);
        let images = random_images(&mut rng, 48, [1, 8, 8]);
        let labels = own_labels(&net, &images);
        let rows: Vec<usize> = (0..48).collect();
        let mut strong = PgdConfig::evaluation();
        strong.steps = 100;
        strong.restarts = 3;
        for eps in [0.005, 0.02, 0.05] {
            let outcome = pgd_attack(&net, &images, &labels, eps, &strong, &mut rng).unwrap();
            broken_total += outcome.robust.iter().filter(|r| !**r).count();
            for method in BoundMethod::ALL {
                let certified = certify_rows(&net, &images, &labels, &rows, eps, method).unwrap();
                for (i, ok) in certified.iter().enumerate() {
                    if *ok {
                        certified_total += 1;
                        assert!(
                            outcome.robust[i],
                            "{method} certified sample {i} that PGD broke"
                        );
                    }
                }
            }
        }
    }
    assert!(
        certified_total > 100,
        "too few certificates ({certified_total}) to mean anything"
    );
    assert!(
        broken_total > 20,
        "too few attacks succeeded ({broken_total}) to mean anything"
    );
}

#[test]
fn pgd_beats_random_sampling() {
    let mut rng = StdRng::seed_from_u64(9);
    let net = small_relu_net(3);
    let images = random_images(&mut rng, 64, [1, 8, 8]);
    let labels = own_labels(&net, &images);
    let eps = 0.05;
    let outcome = pgd_attack(
        &net,
        &images,
        &labels,
        eps,
        &PgdConfig::evaluation(),
        &mut rng,
    )
    .unwrap();
    let pgd_broken = outcome.robust.iter().filter(|r| !**r).count();
    // Random points of the ball, 20 per sample.
    let mut random_broken = [false; 64];
    for _ in 0..20 {
        let noise = random_images(&mut rng, 64, [1, 8, 8]);
        let offset = (((noise * 2.0).unwrap() - 1.0).unwrap() * eps).unwrap();
        let point = (&images + offset).unwrap().clamp(0.0, 1.0).unwrap();
        let predicted = net.forward(&point).unwrap().argmax(1).unwrap();
        let differs = predicted.ne(&labels).unwrap().to_vec1::<u8>().unwrap();
        for (slot, d) in random_broken.iter_mut().zip(differs) {
            *slot |= d == 1;
        }
    }
    let random_count = random_broken.iter().filter(|b| **b).count();
    assert!(
        pgd_broken > random_count,
        "PGD broke {pgd_broken}, random sampling {random_count}"
    );
    // Every sample random sampling broke, PGD must break too (it starts from a random point
    // and then climbs).
    assert!(pgd_broken >= random_count);
}

/// Per-sample cross-entropy of `net` at `images`.
fn cross_entropies(net: &Net, images: &Tensor, labels: &Tensor) -> Vec<f32> {
    let logits = net.forward(images).unwrap().to_vec2::<f32>().unwrap();
    let labels = labels.to_vec1::<u32>().unwrap();
    logits
        .iter()
        .zip(labels)
        .map(|(row, label)| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = row.iter().map(|z| (z - max).exp()).sum();
            max + sum.ln() - row[label as usize]
        })
        .collect()
}

#[test]
fn training_attack_keeps_each_samples_highest_loss_iterate() {
    let mut rng = StdRng::seed_from_u64(4);
    let net = small_relu_net(3);
    let images = random_images(&mut rng, 64, [1, 8, 8]);
    let labels = own_labels(&net, &images);
    // Large steps oscillate, so the last iterate is often not the best one.
    let best = PgdConfig::training(6, 1.5);
    assert!(best.keep_best);
    let last = PgdConfig {
        keep_best: false,
        ..best.clone()
    };
    let attack = |config: &PgdConfig| {
        let mut rng = StdRng::seed_from_u64(9);
        pgd_attack(&net, &images, &labels, 0.2, config, &mut rng)
            .unwrap()
            .adversarial
    };
    let (best_points, last_points) = (attack(&best), attack(&last));
    let best_loss = cross_entropies(&net, &best_points, &labels);
    let last_loss = cross_entropies(&net, &last_points, &labels);
    let mut strictly = 0;
    for (b, l) in best_loss.iter().zip(&last_loss) {
        assert!(b + 1e-5 >= *l, "kept iterate {b} below the last one {l}");
        strictly += usize::from(*b > l + 1e-5);
    }
    assert!(strictly > 0, "no sample's best iterate beat its last one");
    let outside = (&best_points - &images)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(outside <= 0.2 + 1e-6, "left the ball: {outside}");
}

#[test]
fn step_decays_follow_ctrain_checkpoints_whatever_the_step_count() {
    for steps in [3, 5, 8, 10] {
        let config = PgdConfig::training(steps, 0.5).with_decays_after_steps(&[4, 7], 0.1);
        // Steps are counted from 0 here: the 5th step (index 4) is the first decayed one.
        for index in 0..steps {
            let expected = 0.5 * 0.1f64.powi(i32::from(index >= 4) + i32::from(index >= 7));
            let size = config.step_size_at(index, 1.0);
            assert!(
                (size - expected).abs() < 1e-12,
                "{steps} steps, step index {index}: {size} vs {expected}"
            );
        }
    }
}

#[test]
fn training_attack_moves_every_sample_inside_the_ball() {
    let mut rng = StdRng::seed_from_u64(2);
    let net = small_relu_net(1);
    let images = random_images(&mut rng, 16, [1, 8, 8]);
    let labels = own_labels(&net, &images);
    let config = PgdConfig::training(5, 0.5);
    assert_eq!(config.loss, AttackLoss::CrossEntropy);
    let outcome = pgd_attack(&net, &images, &labels, 0.1, &config, &mut rng).unwrap();
    assert_eq!(outcome.adversarial.dims(), images.dims());
    let moved = (&outcome.adversarial - &images)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        moved > 0.05 && moved <= 0.1 + 1e-6,
        "max displacement {moved}"
    );
}

#[test]
fn cascade_accuracies_are_ordered_and_consistent() {
    let mut rng = StdRng::seed_from_u64(21);
    let net = small_relu_net(7);
    let images = random_images(&mut rng, 100, [1, 8, 8]);
    // Mostly the net's own labels, some wrong, so natural accuracy is below 1.
    let mut labels = own_labels(&net, &images).to_vec1::<u32>().unwrap();
    for label in labels.iter_mut().step_by(7) {
        *label = (*label + 1) % 4;
    }
    let labels = Tensor::new(labels.as_slice(), &Device::Cpu).unwrap();
    let mut config = EvalConfig::cascade(0.02);
    config.batch_size = 32;
    let mut progress = Vec::new();
    let report = evaluate(&net, &images, &labels, &config, |done, total| {
        progress.push((done, total))
    })
    .unwrap();
    assert_eq!(progress.last(), Some(&(100, 100)));
    assert_eq!(report.samples, 100);
    assert!(report.natural_accuracy < 1.0 && report.natural_accuracy > 0.7);
    assert!(report.natural_accuracy >= report.adversarial_accuracy);
    assert!(report.adversarial_accuracy >= report.certified_accuracy);
    assert!(report.certified_accuracy > 0.0);
    let certified: usize = report.stages.iter().map(|s| s.certified).sum();
    assert_eq!(certified as f64 / 100.0, report.certified_accuracy);
    // Each stage only sees what the previous ones left.
    for pair in report.stages.windows(2) {
        assert_eq!(pair[1].attempted, pair[0].attempted - pair[0].certified);
    }
    // The cascade certifies at least as much as any single method.
    let rows: Vec<usize> = (0..100).collect();
    for method in BoundMethod::ALL {
        let alone = certify_rows(&net, &images, &labels, &rows, 0.02, method)
            .unwrap()
            .into_iter()
            .filter(|c| *c)
            .count();
        assert!(
            certified >= alone,
            "cascade {certified} < {method} alone {alone}"
        );
    }
    for sample in &report.per_sample {
        assert!(!sample.adversarially_robust || sample.correct);
        assert!(sample.certified_by.is_none() || sample.adversarially_robust);
    }
}

#[test]
fn quick_evaluation_certifies_a_subset_of_the_cascade() {
    let mut rng = StdRng::seed_from_u64(5);
    for seed in 0..3 {
        let net = small_relu_net(seed);
        let images = random_images(&mut rng, 64, [1, 8, 8]);
        let labels = own_labels(&net, &images);
        let mut full = EvalConfig::cascade(0.02);
        full.batch_size = 32;
        let mut quick = EvalConfig::quick(0.02);
        quick.batch_size = 32;
        assert!(quick.pgd.steps * quick.pgd.restarts < full.pgd.steps * full.pgd.restarts);
        assert!(!quick.methods.contains(&BoundMethod::Crown));
        let full = evaluate(&net, &images, &labels, &full, |_, _| {}).unwrap();
        let quick = evaluate(&net, &images, &labels, &quick, |_, _| {}).unwrap();
        assert_eq!(quick.natural_accuracy, full.natural_accuracy);
        assert!(quick.certified_accuracy <= full.certified_accuracy);
        let mut certified_by_both = 0;
        for (q, f) in quick.per_sample.iter().zip(&full.per_sample) {
            // Sound bounds: what the quick cascade certifies, the full one certifies too, and
            // no attack breaks it.
            if q.certified_by.is_some() {
                assert!(f.certified_by.is_some() && f.adversarially_robust);
                certified_by_both += 1;
            }
            assert!(q.certified_by.is_none() || q.adversarially_robust);
        }
        assert!(certified_by_both > 0, "seed {seed}: nothing certified");
    }
}

#[test]
fn certified_curve_area_is_the_trapezoid_rule_over_the_largest_radius() {
    use cthpo::eval::{RadiusPoint, curve_area};
    let point = |eps: f64, certified: f64| RadiusPoint {
        eps,
        certified_accuracy: certified,
        adversarial_accuracy: certified,
    };
    // A flat curve's area is its height.
    let flat = [point(0.05, 0.8), point(0.1, 0.8), point(0.2, 0.8)];
    assert!((curve_area(0.8, &flat) - 0.8).abs() < 1e-12);
    // Natural 1 at radius 0, then 0.5 at 0.1 and 0 at 0.2: (0.1·0.75 + 0.1·0.25) / 0.2 = 0.5.
    let falling = [point(0.1, 0.5), point(0.2, 0.0)];
    assert!((curve_area(1.0, &falling) - 0.5).abs() < 1e-12);
}
