//! `cthpo evaluate` end to end: a tiny study, its best configuration retrained and scored on the
//! test split, the figures stored with the trial, and clear errors for bad choices.

use cthpo::eval::{RADIUS_FACTORS, RadiusPoint, curve_area};
use cthpo::store::{Store, attrs};
use std::path::PathBuf;
use std::process::{Command, Output};

fn cthpo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cthpo"))
        .args(args)
        .output()
        .unwrap()
}

fn study_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cthpo-evaluate-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A two-trial IBP study of one epoch on 200 images, named `tiny`.
fn tiny_study(name: &str) -> PathBuf {
    let dir = study_dir(name);
    let output = cthpo(&[
        "run",
        "--method",
        "ibp",
        "--name",
        "tiny",
        "--dir",
        dir.to_str().unwrap(),
        "--trials",
        "2",
        "--epochs",
        "1",
        "--train-samples",
        "200",
        "--val-samples",
        "50",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    dir
}

#[test]
fn evaluate_retrains_the_best_trial_and_stores_its_test_figures() {
    let dir = tiny_study("best");
    let output = cthpo(&[
        "evaluate",
        "tiny",
        "--dir",
        dir.to_str().unwrap(),
        "--top",
        "1",
        "--samples",
        "30",
        "--pgd-steps",
        "3",
        "--complete",
        "--timeout",
        "500ms",
        "--json",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let result = &printed.as_array().unwrap()[0];
    // Branch and bound gives every test image a verdict and keeps the cascade's certificates.
    let complete = &result["complete"];
    let verdicts = ["certified", "falsified", "unknown"].map(|k| complete[k].as_u64().unwrap());
    assert_eq!(verdicts.iter().sum::<u64>(), 30);
    let cascade_certified = result["certified_accuracy"].as_f64().unwrap() * 30.0;
    assert!(verdicts[0] as f64 >= cascade_certified.round());
    assert_eq!(result["test_samples"], 30);
    assert_eq!(result["train_images"], 250, "training + validation images");
    assert_eq!(result["pgd_restarts"], 5);
    let natural = result["natural_accuracy"].as_f64().unwrap();
    let adversarial = result["adversarial_accuracy"].as_f64().unwrap();
    let certified = result["certified_accuracy"].as_f64().unwrap();
    assert!(natural >= adversarial && adversarial >= certified);
    assert!(result["stages"]["alpha-crown"]["attempted"].is_u64());
    let curve: Vec<RadiusPoint> =
        serde_json::from_value(result["certified_curve"].clone()).unwrap();
    assert_eq!(curve.len(), RADIUS_FACTORS.len());
    for (point, factor) in curve.iter().zip(RADIUS_FACTORS) {
        assert!((point.eps - 0.1 * factor).abs() < 1e-9);
        assert!(point.certified_accuracy <= natural);
    }
    let at_eps = curve.iter().find(|p| (p.eps - 0.1).abs() < 1e-9).unwrap();
    assert_eq!(at_eps.certified_accuracy, certified);
    let auc = result["certified_auc"].as_f64().unwrap();
    assert!((auc - curve_area(natural, &curve)).abs() < 1e-12);
    assert!(result["unstable_relus"].as_f64().unwrap() >= 0.0);

    // The same figures are stored with the trial they came from.
    let store = Store::open_read_only(&dir).unwrap();
    let study = store.require_study("tiny").unwrap();
    let trials = store.trials(study.id).unwrap();
    let number = result["trial"].as_i64().unwrap();
    let trial = trials.iter().find(|t| t.number == number).unwrap();
    assert_eq!(&trial.user_attrs[attrs::TEST_EVALUATION], result);
    let others = trials.iter().filter(|t| t.number != number);
    assert!(
        others
            .into_iter()
            .all(|t| !t.user_attrs.contains_key(attrs::TEST_EVALUATION))
    );
}

#[test]
fn evaluate_refuses_unknown_trials_and_missing_choices() {
    let dir = tiny_study("refusals");
    let d = dir.to_str().unwrap();
    let missing = cthpo(&["evaluate", "tiny", "--dir", d, "--trial", "9"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("has no trial #9"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    let no_choice = cthpo(&["evaluate", "tiny", "--dir", d]);
    assert!(!no_choice.status.success());
    let no_study = cthpo(&["evaluate", "absent", "--dir", d, "--top", "1"]);
    assert!(!no_study.status.success());
    assert!(String::from_utf8_lossy(&no_study.stderr).contains("absent"));
}
