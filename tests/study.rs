//! Studies end to end: `cthpo run` on the embedded data, continuing a study, failures recorded
//! while the study goes on, and a SIGKILL mid-trial followed by a resume that loses nothing.

use cthpo::store::{Store, TrialState, attrs};
use cthpo::study::{ObjectiveWeights, StudyFile, StudySpec, parse_duration};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cthpo-study-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn cthpo(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cthpo"))
        .args(args)
        .output()
        .unwrap()
}

fn trials(dir: &Path, name: &str) -> Vec<cthpo::store::StoredTrial> {
    let store = Store::open_existing(dir).unwrap();
    let study = store.require_study(name).unwrap();
    store.trials(study.id).unwrap()
}

const TINY: &[&str] = &[
    "--method",
    "standard",
    "--epochs",
    "1",
    "--train-samples",
    "400",
    "--val-samples",
    "40",
];

#[test]
fn run_records_trials_and_a_rerun_continues_the_same_study() {
    let dir = temp_dir("continue");
    let d = dir.to_str().unwrap();
    let first = cthpo(&[&["run", "--trials", "2", "--dir", d], TINY].concat());
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let name = "standard-mnist-cnn-small-eps0.1";
    let stored = trials(&dir, name);
    assert_eq!(stored.len(), 2);
    for trial in &stored {
        assert_eq!(trial.state, TrialState::Complete);
        let natural = trial.user_attr_f64(attrs::NATURAL_ACCURACY).unwrap();
        let certified = trial.user_attr_f64(attrs::CERTIFIED_ACCURACY).unwrap();
        assert!((0.0..=1.0).contains(&natural) && certified <= natural);
        let checkpoint = trial.user_attr_str(attrs::CHECKPOINT_PATH).unwrap();
        assert!(dir.join(checkpoint).join("model.safetensors").is_file());
        assert!(
            !trial.intermediate_values.is_empty(),
            "learning curve recorded"
        );
    }
    let plotted = cthpo(&["plot", name, "--dir", d]);
    assert!(
        plotted.status.success(),
        "{}",
        String::from_utf8_lossy(&plotted.stderr)
    );
    for chart in ["pareto", "history"] {
        for extension in ["png", "svg"] {
            let file = dir
                .join("plots")
                .join(format!("{name}-{chart}.{extension}"));
            assert!(file.is_file(), "{} missing", file.display());
        }
    }
    let second = cthpo(&[&["run", "--trials", "3", "--dir", d], TINY].concat());
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let stored = trials(&dir, name);
    assert_eq!(stored.len(), 3, "the budget counts the trials already done");
    let params: Vec<_> = stored.iter().map(|t| format!("{:?}", t.params)).collect();
    assert!(
        params[2] != params[0] && params[2] != params[1],
        "no configuration is repeated"
    );
    // A different ε under the same name is refused rather than mixed in.
    let clash = cthpo(
        &[
            &[
                "run", "--trials", "4", "--dir", d, "--name", name, "--eps", "0.3",
            ],
            TINY,
        ]
        .concat(),
    );
    assert!(!clash.status.success());
    assert!(String::from_utf8_lossy(&clash.stderr).contains("already exists"));
}

#[test]
fn a_gp_guided_study_records_how_each_configuration_was_chosen() {
    let dir = temp_dir("gp");
    let d = dir.to_str().unwrap();
    let output = cthpo(
        &[
            &[
                "run",
                "--trials",
                "4",
                "--surrogate",
                "gp",
                "--dir",
                d,
                "--min-natural",
                "0.5",
                "--min-certified",
                "0.25",
            ],
            TINY,
        ]
        .concat(),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("not built"), "{stderr}");
    let stored = trials(&dir, "standard-mnist-cnn-small-eps0.1");
    assert_eq!(stored.len(), 4);
    let proposals: Vec<&str> = stored
        .iter()
        .map(|t| t.user_attr_str(attrs::PROPOSAL).unwrap())
        .collect();
    assert_eq!(proposals[0], "initial design", "{proposals:?}");
    assert!(
        proposals[2..]
            .iter()
            .all(|p| ["surrogate model", "random"].contains(p)),
        "{proposals:?}"
    );
    assert!(stored.iter().all(|t| t.state == TrialState::Complete));
    // The bounds are constraint values in Optuna's convention (≤ 0 feasible), and the study
    // keeps them for `resume`; other bounds under the same name are refused.
    for trial in &stored {
        let natural = trial.user_attr_f64(attrs::NATURAL_ACCURACY).unwrap();
        let certified = trial.user_attr_f64(attrs::CERTIFIED_ACCURACY).unwrap();
        let constraints = trial.constraints().unwrap();
        assert_eq!(constraints.len(), 2);
        assert!(
            (constraints[0] - (0.5 - natural)).abs() < 1e-9,
            "{constraints:?}"
        );
        assert!(
            (constraints[1] - (0.25 - certified)).abs() < 1e-9,
            "{constraints:?}"
        );
        assert_eq!(trial.is_feasible(), natural >= 0.5 && certified >= 0.25);
    }
    let store = Store::open_existing(&dir).unwrap();
    let info = store
        .require_study("standard-mnist-cnn-small-eps0.1")
        .unwrap();
    let spec: StudySpec =
        serde_json::from_value(info.user_attrs[cthpo::study::SPEC_ATTRIBUTE].clone()).unwrap();
    assert_eq!(
        (spec.min_natural, spec.min_certified),
        (Some(0.5), Some(0.25))
    );
    let clash = cthpo(
        &[
            &["run", "--trials", "5", "--dir", d, "--min-natural", "0.6"],
            TINY,
        ]
        .concat(),
    );
    let stderr = String::from_utf8_lossy(&clash.stderr);
    assert!(
        !clash.status.success() && stderr.contains("min_natural"),
        "{stderr}"
    );
}

#[test]
fn failing_trials_are_recorded_and_the_study_goes_on() {
    let dir = temp_dir("failures");
    let d = dir.to_str().unwrap();
    let output = cthpo(
        &[
            &[
                "run",
                "--trials",
                "2",
                "--dir",
                d,
                "--trial-timeout",
                "0.001",
            ],
            TINY,
        ]
        .concat(),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stored = trials(&dir, "standard-mnist-cnn-small-eps0.1");
    assert_eq!(stored.len(), 2, "the study went on after the first failure");
    for trial in stored {
        assert_eq!(trial.state, TrialState::Fail);
        let reason = trial.user_attr_str(attrs::FAILURE_REASON).unwrap();
        assert!(reason.contains("time limit"), "{reason}");
    }
}

/// `cthpo run` of a study of IBP trials long enough (seconds each) to be stopped mid-trial.
fn ibp_study<'a>(d: &'a str, trials: &'a str) -> [&'a str; 13] {
    [
        "run",
        "--method",
        "ibp",
        "--epochs",
        "3",
        "--train-samples",
        "2000",
        "--val-samples",
        "40",
        "--trials",
        trials,
        "--dir",
        d,
    ]
}

const IBP_NAME: &str = "ibp-mnist-cnn-small-eps0.1";

/// Starts `args` and waits until a trial numbered `min_number` or more is RUNNING; returns the
/// process and that trial's number.
fn spawn_until_running(dir: &Path, args: &[&str], min_number: i64) -> (Child, i64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cthpo"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let number = loop {
        if start.elapsed() > Duration::from_secs(120) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
        let Ok(store) = Store::open_read_only(dir) else {
            continue;
        };
        let Ok(Some(study)) = store.study_by_name(IBP_NAME) else {
            continue;
        };
        let Ok(stored) = store.trials(study.id) else {
            continue;
        };
        if let Some(running) = stored
            .iter()
            .find(|t| t.state == TrialState::Running && t.number >= min_number)
        {
            break Some(running.number);
        }
    };
    let Some(number) = number else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("study never reached trial {min_number}");
    };
    (child, number)
}

#[test]
fn ctrl_c_mid_trial_is_interrupted_and_run_again_first_without_counting() {
    let dir = temp_dir("sigint");
    let args = ibp_study(dir.to_str().unwrap(), "1");
    let (child, number) = spawn_until_running(&dir, &args, 0);
    // SAFETY: sends SIGINT (what Ctrl-C sends) to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130));
    let stopped = trials(&dir, IBP_NAME);
    assert_eq!(stopped.len(), 1);
    assert_eq!(stopped[0].number, number);
    assert_eq!(stopped[0].state, TrialState::Fail);
    assert!(stopped[0].is_interrupted(), "{:?}", stopped[0].user_attrs);
    let reason = stopped[0].user_attr_str(attrs::FAILURE_REASON).unwrap();
    assert!(reason.contains("interrupted"), "{reason}");

    // The same command again: the interrupted configuration runs first, and the budget of one
    // trial is met by it, not by the interrupted one.
    let again = cthpo(&args);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let after = trials(&dir, IBP_NAME);
    assert_eq!(after.len(), 2, "the interrupted trial did not count");
    assert_eq!(after[1].state, TrialState::Complete);
    assert_eq!(after[1].params, after[0].params, "same configuration rerun");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_killed_study_resumes_without_losing_completed_trials() {
    let dir = temp_dir("kill");
    let d = dir.to_str().unwrap();
    let name = IBP_NAME;
    // Wait until one trial is complete and the next is running, then SIGKILL.
    let (mut child, killed_number) = spawn_until_running(&dir, &ibp_study(d, "3"), 1);
    child.kill().unwrap();
    child.wait().unwrap();
    let before = trials(&dir, name);
    let killed = before.iter().find(|t| t.number == killed_number).unwrap();
    assert_eq!(killed.state, TrialState::Running, "the kill left evidence");
    let completed_before: Vec<_> = before
        .iter()
        .filter(|t| t.state == TrialState::Complete)
        .cloned()
        .collect();
    assert!(!completed_before.is_empty());

    let resumed = cthpo(&["resume", name, "--dir", d]);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let after = trials(&dir, name);
    for trial in &completed_before {
        let same = after.iter().find(|t| t.number == trial.number).unwrap();
        assert_eq!(
            same.values, trial.values,
            "completed trial {} kept",
            trial.number
        );
    }
    let killed = after.iter().find(|t| t.number == killed_number).unwrap();
    assert_eq!(killed.state, TrialState::Fail);
    assert!(killed.is_interrupted(), "{:?}", killed.user_attrs);
    let rerun = after
        .iter()
        .find(|t| t.number > killed_number && t.params == killed.params)
        .expect("the interrupted configuration ran again");
    assert_eq!(rerun.state, TrialState::Complete);
    assert_eq!(
        after
            .iter()
            .filter(|t| t.state == TrialState::Complete)
            .count(),
        3
    );
    Store::open_existing(&dir)
        .unwrap()
        .integrity_check()
        .unwrap();
}

#[test]
fn study_settings_parse_with_clear_errors() {
    assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
    assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
    assert!(
        parse_duration("2 weeks")
            .unwrap_err()
            .contains("unknown unit")
    );
    let weights = ObjectiveWeights::parse("nat=1,cert=2").unwrap();
    assert_eq!(
        (weights.natural, weights.adversarial, weights.certified),
        (1.0, 0.0, 2.0)
    );
    assert!(
        ObjectiveWeights::parse("speed=1")
            .unwrap_err()
            .to_string()
            .contains("speed")
    );
    let missing = StudySpec::resolve(StudyFile::default())
        .unwrap_err()
        .to_string();
    assert!(missing.contains("--method"), "{missing}");
    let spec = StudySpec::resolve(StudyFile {
        method: Some("sabr".into()),
        ..StudyFile::default()
    })
    .unwrap();
    assert_eq!(spec.name, "sabr-mnist-cnn-small-eps0.1");
    // Every spelling of a method or dataset names one study.
    for (method, dataset) in [
        ("crown-ibp", "fmnist"),
        ("CROWN_IBP", "fashion_mnist"),
        ("crown_ibp", "Fashion-MNIST"),
    ] {
        let spec = StudySpec::resolve(StudyFile {
            method: Some(method.into()),
            dataset: Some(dataset.into()),
            ..StudyFile::default()
        })
        .unwrap();
        assert_eq!(spec.name, "crown_ibp-fashion-mnist-cnn-small-eps0.1");
        assert_eq!(
            (spec.method.as_str(), spec.dataset.as_str()),
            ("crown_ibp", "fashion-mnist")
        );
    }
    for file in ["quick", "mnist-0.1", "mnist-0.3", "fashion-mnist-0.1"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("studies/{file}.yaml"));
        StudySpec::resolve(StudyFile::load(&path).unwrap()).unwrap();
    }
    let out_of_range = StudySpec::resolve(StudyFile {
        method: Some("ibp".into()),
        min_certified: Some(1.5),
        ..StudyFile::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        out_of_range.contains("min_certified") && out_of_range.contains("1.5"),
        "{out_of_range}"
    );
    let bad = std::env::temp_dir().join(format!("cthpo-bad-study-{}.yaml", std::process::id()));
    std::fs::write(&bad, "method: ibp\nepochz: 3\n").unwrap();
    let error = with_causes(&StudyFile::load(&bad).unwrap_err());
    assert!(
        error.contains("cthpo-bad-study") && error.contains("epochz"),
        "{error}"
    );
}

/// An error and its chain of causes as the command line prints them (`a: b: c`).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text = format!("{text}: {inner}");
        cause = inner.source();
    }
    text
}
