//! `cthpo train` end to end: writes a checkpoint `cthpo verify` reads through its sidecar, and
//! rejects bad hyperparameters with the key named.

use std::process::Command;

fn cthpo(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cthpo"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn train_writes_a_checkpoint_that_verify_reads() {
    let out = std::env::temp_dir().join(format!("cthpo-cli-train-{}", std::process::id()));
    let out_str = out.to_str().unwrap();
    let trained = cthpo(&[
        "train",
        "--method",
        "sabr",
        "--epochs",
        "1",
        "--train-samples",
        "300",
        "--val-samples",
        "50",
        "--set",
        "batch_size=64",
        "--set",
        "pgd_steps=2",
        "--out",
        out_str,
    ]);
    assert!(
        trained.status.success(),
        "{}",
        String::from_utf8_lossy(&trained.stderr)
    );
    assert!(String::from_utf8_lossy(&trained.stdout).contains("certified"));
    let sidecar: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("model.json")).unwrap()).unwrap();
    assert_eq!(sidecar["method"], "sabr");
    assert_eq!(sidecar["config"]["pgd_steps"], 2);
    assert_eq!(sidecar["arch"], "cnn-small");
    assert!(sidecar["metrics"]["natural_accuracy"].is_f64());

    let verified = cthpo(&[
        "verify",
        "--model",
        out_str,
        "--samples",
        "30",
        "--pgd-steps",
        "3",
        "--json",
    ]);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&verified.stdout).unwrap();
    assert_eq!(report["eps"], 0.1);
    assert_eq!(report["samples"], 30);
}

#[test]
fn train_rejects_unknown_methods_and_keys() {
    let out = std::env::temp_dir().join(format!("cthpo-cli-train-bad-{}", std::process::id()));
    let unknown_key = cthpo(&[
        "train",
        "--method",
        "ibp",
        "--set",
        "subselection_ratio=0.2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!unknown_key.status.success());
    let message = String::from_utf8_lossy(&unknown_key.stderr);
    assert!(
        message.contains("subselection_ratio") && message.contains("not a hyperparameter of ibp"),
        "{message}"
    );
    let unknown_method = cthpo(&[
        "train",
        "--method",
        "diffai",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!unknown_method.status.success());
    assert!(String::from_utf8_lossy(&unknown_method.stderr).contains("mtl_ibp"));
    assert!(
        !out.join("model.json").exists(),
        "nothing is written for a rejected run"
    );
}
