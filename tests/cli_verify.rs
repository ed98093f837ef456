//! `cthpo verify` end to end: a saved network on the embedded MNIST data, JSON output, and
//! clear errors for bad input.

use cthpo::model::{Initialization, Net, NetSpec};
use std::path::PathBuf;
use std::process::Command;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cthpo-cli-verify-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn cthpo(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cthpo"))
        .args(args)
        .output()
        .unwrap()
}

fn saved_net(dir: &std::path::Path, arch: &str) -> PathBuf {
    let spec = NetSpec::builtin(arch, [1, 28, 28], 10, None).unwrap();
    let path = dir.join(format!("{arch}.safetensors"));
    Net::new(&spec, Initialization::Default, 7)
        .unwrap()
        .save(&path)
        .unwrap();
    path
}

#[test]
fn verify_prints_json_with_consistent_accuracies() {
    let dir = temp_dir("json");
    let model = saved_net(&dir, "cnn-small");
    let output = cthpo(&[
        "verify",
        "--model",
        model.to_str().unwrap(),
        "--arch",
        "cnn-small",
        "--eps",
        "0.001",
        "--samples",
        "40",
        "--pgd-steps",
        "5",
        "--json",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["samples"], 40);
    let natural = report["natural_accuracy"].as_f64().unwrap();
    let adversarial = report["adversarial_accuracy"].as_f64().unwrap();
    let certified = report["certified_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&natural));
    assert!(natural >= adversarial && adversarial >= certified);
    assert!(report["seconds"].as_f64().unwrap() > 0.0);
    let stages = report["stages"].as_object().unwrap();
    for method in ["ibp", "crown-ibp", "crown"] {
        assert!(
            stages[method]["certified"].is_u64(),
            "stage {method} missing"
        );
        assert!(stages[method]["seconds"].is_f64());
    }
    // An untrained net still classifies some of the 40 images correctly by chance, and at
    // ε = 0.001 its correct samples are provably robust.
    let certified_count: u64 = stages
        .values()
        .map(|s| s["certified"].as_u64().unwrap())
        .sum();
    assert_eq!(certified_count as f64 / 40.0, certified);
}

#[test]
fn verify_table_output_names_the_stages() {
    let dir = temp_dir("table");
    let model = saved_net(&dir, "fc");
    let output = cthpo(&[
        "verify",
        "--model",
        model.to_str().unwrap(),
        "--arch",
        "fc",
        "--samples",
        "20",
        "--method",
        "ibp",
        "--pgd-steps",
        "3",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("natural accuracy") && text.contains("certified accuracy"),
        "{text}"
    );
    assert!(
        text.contains("ibp") && !text.contains("crown-ibp"),
        "{text}"
    );
}

#[test]
fn verify_reports_bad_input_clearly() {
    let dir = temp_dir("errors");
    let model = saved_net(&dir, "cnn-small");
    let missing = cthpo(&[
        "verify",
        "--model",
        "/nonexistent/net.safetensors",
        "--arch",
        "fc",
    ]);
    assert!(!missing.status.success());
    let message = String::from_utf8_lossy(&missing.stderr);
    assert!(
        message.contains("/nonexistent/net.safetensors") && message.contains("not found"),
        "{message}"
    );

    let mismatch = cthpo(&["verify", "--model", model.to_str().unwrap(), "--arch", "fc"]);
    assert!(!mismatch.status.success());
    let message = String::from_utf8_lossy(&mismatch.stderr);
    assert!(
        message.contains("missing key") && message.contains("unexpected key"),
        "{message}"
    );

    let dataset = cthpo(&[
        "verify",
        "--model",
        model.to_str().unwrap(),
        "--arch",
        "cnn-small",
        "--dataset",
        "imagenet",
    ]);
    assert!(!dataset.status.success());
    let message = String::from_utf8_lossy(&dataset.stderr);
    assert!(
        message.contains("imagenet") && message.contains("mnist"),
        "{message}"
    );

    let no_arch = cthpo(&["verify", "--model", model.to_str().unwrap()]);
    assert!(!no_arch.status.success());
    assert!(String::from_utf8_lossy(&no_arch.stderr).contains("--arch"));

    let bad_dir = cthpo(&[
        "verify",
        "--model",
        model.to_str().unwrap(),
        "--arch",
        "cnn-small",
        "--data-dir",
        dir.to_str().unwrap(),
    ]);
    assert!(!bad_dir.status.success());
    let message = String::from_utf8_lossy(&bad_dir.stderr);
    assert!(message.contains(dir.to_str().unwrap()), "{message}");
}

#[test]
fn verify_by_branch_and_bound_gives_every_sample_a_verdict() {
    let dir = temp_dir("bab");
    let model = saved_net(&dir, "fc");
    let output = cthpo(&[
        "verify",
        "--model",
        model.to_str().unwrap(),
        "--arch",
        "fc",
        "--eps",
        "0.01",
        "--samples",
        "30",
        "--pgd-steps",
        "5",
        "--method",
        "bab",
        "--timeout",
        "2s",
        "--json",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let bab = &report["bab"];
    let count = |key: &str| bab[key].as_u64().unwrap();
    assert_eq!(
        count("certified") + count("falsified") + count("unknown"),
        30
    );
    // Branch and bound decides at least what the cascade decided: every certificate and every
    // misclassified clean image.
    let certified = report["certified_accuracy"].as_f64().unwrap();
    let natural = report["natural_accuracy"].as_f64().unwrap();
    assert!(count("certified") as f64 >= (certified * 30.0).round());
    assert!(count("falsified") as f64 >= ((1.0 - natural) * 30.0).round());
    assert_eq!(bab["timeout_seconds"].as_f64().unwrap(), 2.0);
}

#[test]
fn verify_refuses_a_bad_timeout() {
    let dir = temp_dir("bad-timeout");
    let model = saved_net(&dir, "fc");
    for bad in ["soon", "0s", "5parsecs", "3x"] {
        let output = cthpo(&[
            "verify",
            "--model",
            model.to_str().unwrap(),
            "--arch",
            "fc",
            "--method",
            "bab",
            "--timeout",
            bad,
        ]);
        assert!(!output.status.success(), "--timeout {bad} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("--timeout"), "{stderr}");
    }
}
