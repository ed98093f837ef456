//! The trainer: every method's default configuration learns and certifies clearly more than
//! standard training on embedded MNIST, κ belongs to IBP and CROWN-IBP only, schedules hit their
//! values, divergence is an error, runs are deterministic, checkpoints load.

use candle_core::Tensor;
use cthpo::bounds::BoundMethod;
use cthpo::data::embedded_mnist;
use cthpo::eval::{EvalConfig, EvalReport, evaluate};
use cthpo::model::{Net, NetSpec};
use cthpo::train::{
    Method, NoObserver, OptimizerKind, Schedule, Sidecar, TrainConfig, TrainError, TrainOptions,
    TrainState, fit, fit_epochs, load_checkpoint, save_checkpoint, smoothed_ramp,
};
use std::collections::BTreeMap;
use std::sync::OnceLock;

struct Data {
    train: (Tensor, Tensor),
    validation: (Tensor, Tensor),
}

fn data() -> &'static Data {
    static DATA: OnceLock<Data> = OnceLock::new();
    DATA.get_or_init(|| {
        let splits = embedded_mnist().unwrap();
        let (train, validation) = splits.train.split(1000, 0);
        Data {
            train: train.take(3000).tensors().unwrap(),
            validation: validation.take(300).tensors().unwrap(),
        }
    })
}

/// Small-batch settings for the tests that only need a few quick steps.
fn quick_config() -> TrainConfig {
    TrainConfig {
        batch_size: 64,
        learning_rate: 1e-3,
        ..TrainConfig::default()
    }
}

/// Trains `method` with its **default** configuration (what a study seeds and `cthpo train`
/// uses) for 6 epochs on 3,000 images (72 steps of 256) and scores it on 300 images.
fn train_and_score(method: Method) -> EvalReport {
    let spec = NetSpec::builtin("cnn-small", [1, 28, 28], 10, None).unwrap();
    let mut net = Net::new(&spec, method.initialization(), 0).unwrap();
    let (images, labels) = &data().train;
    let options = TrainOptions {
        epochs: 6,
        eps: 0.1,
        seed: 0,
    };
    fit(
        &mut net,
        method,
        &TrainConfig::defaults(method),
        &options,
        images,
        labels,
        &mut NoObserver,
    )
    .unwrap();
    let mut eval = EvalConfig::cascade(0.1);
    eval.methods = vec![BoundMethod::Ibp, BoundMethod::CrownIbp];
    eval.pgd.steps = 20;
    eval.pgd.restarts = 1;
    let (images, labels) = &data().validation;
    evaluate(&net, images, labels, &eval, |_, _| {}).unwrap()
}

fn standard_certified() -> f64 {
    static STANDARD: OnceLock<f64> = OnceLock::new();
    *STANDARD.get_or_init(|| {
        let report = train_and_score(Method::Standard);
        assert!(
            report.natural_accuracy > 0.8,
            "standard training learns: {report:?}"
        );
        report.certified_accuracy
    })
}

/// A regression floor for each certified method's defaults at a small budget. Measured (6
/// epochs × 3,000 images, 300 validation images, IBP + CROWN-IBP): standard certifies ~9 %;
/// the certified methods' defaults reach 60–92 % natural and 39–69 % certified. Chance is 10 %:
/// the floors fail if a default stops learning (the old 5e-4 learning rate sat at chance).
fn assert_default_learns_and_certifies(method: Method) {
    let report = train_and_score(method);
    let baseline = standard_certified();
    println!(
        "{method}: natural {:.3} adversarial {:.3} certified {:.3} (standard certifies {baseline:.3})",
        report.natural_accuracy, report.adversarial_accuracy, report.certified_accuracy
    );
    assert!(
        report.natural_accuracy >= 0.5,
        "{method}: natural {:.3}",
        report.natural_accuracy
    );
    assert!(
        report.certified_accuracy >= 0.25 && report.certified_accuracy >= baseline + 0.15,
        "{method}: certified {:.3} vs standard {baseline:.3}",
        report.certified_accuracy
    );
}

#[test]
fn ibp_default_learns_and_certifies() {
    assert_default_learns_and_certifies(Method::Ibp);
}

#[test]
fn crown_ibp_default_learns_and_certifies() {
    assert_default_learns_and_certifies(Method::CrownIbp);
}

#[test]
fn sabr_default_learns_and_certifies() {
    assert_default_learns_and_certifies(Method::Sabr);
}

#[test]
fn taps_default_learns_and_certifies() {
    assert_default_learns_and_certifies(Method::Taps);
}

#[test]
fn staps_default_learns_and_certifies() {
    assert_default_learns_and_certifies(Method::Staps);
}

#[test]
fn mtl_ibp_default_learns_and_certifies() {
    assert_default_learns_and_certifies(Method::MtlIbp);
}

/// Every weight after training `method` from `seed` on the first `count` training images.
fn trained_weights(
    method: Method,
    config: &TrainConfig,
    count: usize,
    epochs: usize,
    seed: u64,
) -> Vec<Vec<f32>> {
    let (images, labels) = &data().train;
    let images = images.narrow(0, 0, count).unwrap();
    let labels = labels.narrow(0, 0, count).unwrap();
    let spec = NetSpec::builtin("cnn-small", [1, 28, 28], 10, None).unwrap();
    let mut net = Net::new(&spec, method.initialization(), seed).unwrap();
    let options = TrainOptions {
        epochs,
        eps: 0.1,
        seed,
    };
    fit(
        &mut net,
        method,
        config,
        &options,
        &images,
        &labels,
        &mut NoObserver,
    )
    .unwrap();
    net.named_vars()
        .iter()
        .map(|v| v.var.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect()
}

/// Every weight after two steps at full ε from the same seed.
fn weights_after_two_steps(method: Method, config: &TrainConfig) -> Vec<Vec<f32>> {
    let config = TrainConfig {
        batch_size: 64,
        ramp_up_fraction: 0.0,
        ..config.clone()
    };
    trained_weights(method, &config, 128, 1, 1)
}

#[test]
fn only_ibp_and_crown_ibp_read_kappa() {
    let natural_heavy = |method| TrainConfig {
        start_kappa: 0.9,
        end_kappa: 0.9,
        ..TrainConfig::defaults(method)
    };
    let robust_only = |method| TrainConfig {
        start_kappa: 0.0,
        end_kappa: 0.0,
        ..TrainConfig::defaults(method)
    };
    for method in [Method::Sabr, Method::Taps, Method::Staps, Method::MtlIbp] {
        assert!(!method.keys().contains(&"start_kappa"), "{method}");
        assert!(!method.keys().contains(&"end_kappa"), "{method}");
        let mut values = BTreeMap::new();
        values.insert("end_kappa".to_string(), serde_json::json!(0.5));
        assert!(TrainConfig::from_map(method, &values).is_err(), "{method}");
        assert_eq!(
            weights_after_two_steps(method, &natural_heavy(method)),
            weights_after_two_steps(method, &robust_only(method)),
            "{method}: κ changed the training"
        );
    }
    for method in [Method::Ibp, Method::CrownIbp] {
        assert!(method.keys().contains(&"end_kappa"), "{method}");
        assert_ne!(
            weights_after_two_steps(method, &natural_heavy(method)),
            weights_after_two_steps(method, &robust_only(method)),
            "{method}: κ must mix the natural loss in"
        );
    }
}

#[test]
fn pgd_training_is_more_robust_to_pgd_than_standard() {
    let standard = train_and_score(Method::Standard);
    let pgd = train_and_score(Method::Pgd);
    assert!(
        pgd.adversarial_accuracy >= standard.adversarial_accuracy + 0.1,
        "PGD training {:.3} vs standard {:.3}",
        pgd.adversarial_accuracy,
        standard.adversarial_accuracy
    );
}

#[test]
fn smoothed_ramp_is_continuous_and_monotone() {
    assert_eq!(smoothed_ramp(0.0), 0.0);
    assert!((smoothed_ramp(1.0) - 1.0).abs() < 1e-12);
    let below = smoothed_ramp(0.25 - 1e-9);
    let above = smoothed_ramp(0.25 + 1e-9);
    assert!((below - above).abs() < 1e-7);
    // Polynomial part: value at a quarter of the ramp ∝ p⁴, so at 1/8 it is 1/16 of that.
    assert!((smoothed_ramp(0.125) / smoothed_ramp(0.25) - 1.0 / 16.0).abs() < 1e-9);
    let mut previous = 0.0;
    for i in 1..=100 {
        let value = smoothed_ramp(i as f64 / 100.0);
        assert!(value > previous);
        previous = value;
    }
}

#[test]
fn schedule_values_at_chosen_steps() {
    let config = TrainConfig {
        warm_up_fraction: 0.1,
        ramp_up_fraction: 0.5,
        train_eps_factor: 2.0,
        start_kappa: 1.0,
        end_kappa: 0.2,
        end_beta: 0.0,
        learning_rate: 1e-3,
        lr_decay_factor: 0.1,
        lr_decay_fraction_1: 0.2,
        lr_decay_fraction_2: 0.1,
        ..TrainConfig::default()
    };
    // 10 epochs × 10 steps: warm-up steps 0..10, ramp 10..60, decays at epochs 8 and 9.
    let schedule = Schedule::new(&config, true, 0.1, 10, 10);
    let at = |step| schedule.at(step);
    assert_eq!(at(0).eps, 0.0);
    assert_eq!(at(9).eps, 0.0);
    assert!(at(10).eps > 0.0 && at(10).eps < 0.01);
    assert!((at(59).eps - 0.2).abs() < 1e-12);
    assert!((at(99).eps - 0.2).abs() < 1e-12);
    assert!((at(34).ramp_progress - 0.5).abs() < 1e-12);
    assert!((at(34).kappa - 0.6).abs() < 1e-12);
    assert!((at(34).beta - 0.5).abs() < 1e-12);
    assert!((at(70).kappa - 0.2).abs() < 1e-12);
    assert!((at(79).learning_rate - 1e-3).abs() < 1e-15);
    assert!((at(80).learning_rate - 1e-4).abs() < 1e-15);
    assert!((at(90).learning_rate - 1e-5).abs() < 1e-15);
    // Standard training has no ramp: full ε and κ at its end value from the start.
    let standard = Schedule::new(&config, false, 0.1, 10, 10);
    assert!((standard.at(0).eps - 0.2).abs() < 1e-12);
}

#[test]
fn an_absurd_learning_rate_diverges_with_a_typed_error() {
    let spec = NetSpec::builtin("cnn-small", [1, 28, 28], 10, None).unwrap();
    let mut net = Net::new(&spec, Method::Ibp.initialization(), 0).unwrap();
    let (images, labels) = &data().train;
    let images = images.narrow(0, 0, 512).unwrap();
    let labels = labels.narrow(0, 0, 512).unwrap();
    let config = TrainConfig {
        learning_rate: 1e12,
        grad_clip_norm: 0.0,
        batch_size: 64,
        ..TrainConfig::default()
    };
    let options = TrainOptions {
        epochs: 3,
        eps: 0.1,
        seed: 0,
    };
    let result = fit(
        &mut net,
        Method::Ibp,
        &config,
        &options,
        &images,
        &labels,
        &mut NoObserver,
    );
    assert!(
        matches!(result, Err(TrainError::Diverged { .. })),
        "expected divergence, got {result:?}"
    );
}

#[test]
fn same_seed_gives_identical_weights() {
    let run = |seed| trained_weights(Method::Sabr, &quick_config(), 256, 2, seed);
    let first = run(3);
    assert_eq!(first, run(3));
    assert_ne!(first, run(4));
}

#[test]
fn configuration_errors_name_the_key() {
    let mut values = BTreeMap::new();
    values.insert("subselection_ratio".to_string(), serde_json::json!(0.2));
    let error = TrainConfig::from_map(Method::Ibp, &values)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("subselection_ratio") && error.contains("shi_reg_weight"),
        "{error}"
    );
    assert_eq!(
        TrainConfig::from_map(Method::Sabr, &values)
            .unwrap()
            .subselection_ratio,
        0.2
    );
    values.insert("learning_rate".into(), serde_json::json!("fast"));
    let error = TrainConfig::from_map(Method::Sabr, &values)
        .unwrap_err()
        .to_string();
    assert!(error.contains("learning_rate"), "{error}");
    let (key, value) = TrainConfig::parse_assignment("pgd_steps=3").unwrap();
    assert_eq!((key.as_str(), value), ("pgd_steps", serde_json::json!(3)));
    let bad = TrainConfig::parse_assignment("ramp_up_fraction")
        .unwrap_err()
        .to_string();
    assert!(bad.contains("key=value"));
    let mut ramp = BTreeMap::new();
    ramp.insert("warm_up_fraction".to_string(), serde_json::json!(0.5));
    ramp.insert("ramp_up_fraction".to_string(), serde_json::json!(0.75));
    let error = TrainConfig::from_map(Method::Ibp, &ramp)
        .unwrap_err()
        .to_string();
    assert!(error.contains("must not exceed 1"), "{error}");
    assert!(
        "sabrr"
            .parse::<Method>()
            .unwrap_err()
            .to_string()
            .contains("mtl_ibp")
    );
    assert_eq!("crown-ibp".parse::<Method>().unwrap(), Method::CrownIbp);
}

#[test]
fn checkpoints_round_trip_with_their_sidecar() {
    let spec = NetSpec::builtin("cnn-small", [1, 28, 28], 10, None).unwrap();
    let net = Net::new(&spec, Method::Ibp.initialization(), 5).unwrap();
    let dir = std::env::temp_dir().join(format!("cthpo-train-ckpt-{}", std::process::id()));
    let sidecar = Sidecar::new(
        &net,
        Some("cnn-small".into()),
        "mnist",
        Method::Ibp,
        &TrainConfig::default(),
        0.1,
        3,
        5,
        1.5,
    );
    save_checkpoint(&dir, &net, &sidecar).unwrap();
    let (loaded, read) = load_checkpoint(&dir).unwrap();
    assert_eq!(read, sidecar);
    let (images, _) = &data().validation;
    let batch = images.narrow(0, 0, 8).unwrap();
    let a = net.forward(&batch).unwrap().to_vec2::<f32>().unwrap();
    let b = loaded.forward(&batch).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(a, b);
    // The weights file alone finds the sidecar beside it.
    let (_, again) = load_checkpoint(&dir.join("model.safetensors")).unwrap();
    assert_eq!(again.method, Method::Ibp);
    let missing = load_checkpoint(&dir.join("nothing-here"))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("nothing-here"), "{missing}");
}

/// An empty directory of this test process under the system's temporary directory.
fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cthpo-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every parameter and buffer of `net`, flattened.
fn all_values(net: &Net) -> Vec<Vec<f32>> {
    net.named_vars()
        .iter()
        .map(|v| v.var.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect()
}

#[test]
fn a_run_continued_from_a_saved_state_equals_the_uninterrupted_run() {
    let (images, labels) = &data().train;
    let images = images.narrow(0, 0, 256).unwrap();
    let labels = labels.narrow(0, 0, 256).unwrap();
    let spec = NetSpec::builtin("cnn-small", [1, 28, 28], 10, None).unwrap();
    let options = TrainOptions {
        epochs: 3,
        eps: 0.1,
        seed: 5,
    };
    // IBP runs the hand-written reverse pass; SABR runs candle's autograd and draws random
    // attack starts; RAdam's rectification depends on the step count.
    for (method, optimizer) in [
        (Method::Ibp, OptimizerKind::Adam),
        (Method::Sabr, OptimizerKind::Radam),
    ] {
        let config = TrainConfig {
            optimizer,
            ..quick_config()
        };
        let mut whole = Net::new(&spec, method.initialization(), 5).unwrap();
        let (_, whole_state) = fit_epochs(
            &mut whole,
            method,
            &config,
            &options,
            (&images, &labels),
            None,
            3,
            &mut NoObserver,
        )
        .unwrap();
        let dir = scratch_dir(&format!("continue-{method:?}"));
        let mut first = Net::new(&spec, method.initialization(), 5).unwrap();
        let (summary, state) = fit_epochs(
            &mut first,
            method,
            &config,
            &options,
            (&images, &labels),
            None,
            1,
            &mut NoObserver,
        )
        .unwrap();
        assert_eq!(summary.epochs.len(), 1);
        assert_ne!(all_values(&first), all_values(&whole), "{method:?}");
        first.save(&dir.join("w.safetensors")).unwrap();
        state.save(&dir).unwrap();
        drop(first);
        let mut continued = Net::load(&spec, &dir.join("w.safetensors")).unwrap();
        let loaded = TrainState::load(&dir).unwrap();
        assert_eq!(loaded.epochs_done, 1);
        let (summary, continued_state) = fit_epochs(
            &mut continued,
            method,
            &config,
            &options,
            (&images, &labels),
            Some(loaded),
            3,
            &mut NoObserver,
        )
        .unwrap();
        assert_eq!(
            summary.epochs.iter().map(|e| e.epoch).collect::<Vec<_>>(),
            [2, 3]
        );
        assert_eq!(
            all_values(&continued),
            all_values(&whole),
            "{method:?}: continued weights differ from the uninterrupted run's"
        );
        assert_eq!(
            continued_state.optimizer_steps, whole_state.optimizer_steps,
            "{method:?}"
        );
    }
}

#[test]
fn a_training_state_that_does_not_fit_the_run_is_refused() {
    let (images, labels) = &data().train;
    let images = images.narrow(0, 0, 64).unwrap();
    let labels = labels.narrow(0, 0, 64).unwrap();
    let spec = NetSpec::builtin("cnn-small", [1, 28, 28], 10, None).unwrap();
    let options = TrainOptions {
        epochs: 2,
        eps: 0.1,
        seed: 0,
    };
    let mut net = Net::new(&spec, Method::Ibp.initialization(), 0).unwrap();
    let state = TrainState {
        epochs_done: 1,
        optimizer_steps: 1,
        moments: Vec::new(),
    };
    let data = (&images, &labels);
    let config = quick_config();
    let result = fit_epochs(
        &mut net,
        Method::Ibp,
        &config,
        &options,
        data,
        Some(state),
        2,
        &mut NoObserver,
    );
    assert!(result.is_err(), "an empty optimiser state was accepted");
    // Epochs beyond the run's budget are refused, not trained.
    let result = fit_epochs(
        &mut net,
        Method::Ibp,
        &config,
        &options,
        data,
        None,
        3,
        &mut NoObserver,
    );
    assert!(matches!(result, Err(TrainError::Config { .. })));
    let dir = scratch_dir("no-state");
    assert!(matches!(
        TrainState::load(&dir),
        Err(TrainError::Checkpoint { .. })
    ));
}
