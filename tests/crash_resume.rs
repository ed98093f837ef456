//! A trial stopped mid-way (kill -9, or Ctrl-C, which counts as a kill) continues from its
//! last completed epoch when its configuration runs again, and ends with the weights and scores
//! of an uninterrupted run: with `--fidelity none`, and for a promotion of a multi-fidelity
//! study.

use cthpo::store::{Store, StoredTrial, TrialState, attrs};
use cthpo::study::{PROGRESS_DIR, RESUMED_AT_EPOCH, RESUMED_FROM, latest_progress};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NAME: &str = "standard-mnist-cnn-small-eps0.1";

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cthpo-crash-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn spawn(args: &[&str], dir: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_cthpo"))
        .args(args)
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn succeed(child: Child) -> String {
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    stderr
}

fn trials(dir: &Path) -> Vec<StoredTrial> {
    let store = Store::open_existing(dir).unwrap();
    let study = store.require_study(NAME).unwrap();
    store.trials(study.id).unwrap()
}

fn trial_dir(dir: &Path, number: i64) -> PathBuf {
    dir.join(NAME).join(format!("trial-{number}"))
}

/// Waits until trial `number` has written the progress checkpoint of epoch `epoch`.
fn wait_for_epoch(dir: &Path, number: i64, epoch: usize) {
    let start = Instant::now();
    while latest_progress(&trial_dir(dir, number)).is_none_or(|(done, _)| done < epoch) {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "trial {number} never finished epoch {epoch}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn attr(trial: &StoredTrial, key: &str) -> Option<i64> {
    trial.user_attr_f64(key).map(|v| v as i64)
}

/// `resumed` (the trial that continued an interrupted one) ends as `reference` (the same trial
/// run without interruption): same weights bit for bit, same values and learning curve.
fn assert_same_result(resumed: (&Path, &StoredTrial), reference: (&Path, &StoredTrial)) {
    let weights = |(dir, trial): (&Path, &StoredTrial)| {
        std::fs::read(trial_dir(dir, trial.number).join("model.safetensors")).unwrap()
    };
    assert!(
        weights(resumed) == weights(reference),
        "the resumed trial's weights differ from an uninterrupted run's"
    );
    assert_eq!(resumed.1.params, reference.1.params);
    assert_eq!(resumed.1.values, reference.1.values);
    assert_eq!(
        resumed.1.intermediate_values,
        reference.1.intermediate_values
    );
    assert_eq!(resumed.1.state, reference.1.state);
}

#[test]
fn a_killed_trial_resumes_from_its_last_epoch() {
    let (dir, reference_dir) = (temp_dir("kill"), temp_dir("kill-reference"));
    let args = [
        "run",
        "--method",
        "standard",
        "--epochs",
        "5",
        "--train-samples",
        "1200",
        "--val-samples",
        "30",
        "--trials",
        "1",
    ];
    let reference = spawn(&args, &reference_dir);
    let mut killed = spawn(&args, &dir);
    wait_for_epoch(&dir, 0, 1);
    killed.kill().unwrap();
    killed.wait().unwrap();
    let before = trials(&dir);
    assert_eq!(before[0].state, TrialState::Running, "killed mid-trial");
    let (epoch, _) = latest_progress(&trial_dir(&dir, 0)).unwrap();
    assert!((1..=5).contains(&epoch));

    let stderr = succeed(spawn(&["resume", NAME], &dir));
    assert!(
        stderr.contains(&format!(
            "continues interrupted trial 0 from its checkpoint after epoch {epoch}"
        )),
        "{stderr}"
    );
    let after = trials(&dir);
    assert_eq!(after.len(), 2);
    assert!(after[0].is_interrupted());
    let resumed = &after[1];
    assert_eq!(attr(resumed, RESUMED_FROM), Some(0));
    assert_eq!(attr(resumed, RESUMED_AT_EPOCH), Some(epoch as i64));
    assert_eq!(
        resumed.user_attr_str(attrs::PROPOSAL),
        Some("rerun of an interrupted trial")
    );
    succeed(reference);
    let reference_trials = trials(&reference_dir);
    assert_same_result((&dir, resumed), (&reference_dir, &reference_trials[0]));
    // Progress checkpoints go once they are stale; the checkpoint proper stays.
    for number in [0, 1] {
        assert!(!trial_dir(&dir, number).join(PROGRESS_DIR).exists());
    }
    assert!(trial_dir(&dir, 1).join("model.safetensors").is_file());
}

#[test]
fn an_interrupted_promotion_resumes_from_its_last_epoch() {
    // The default configuration at 2 epochs, then trial 1 continues it to 6 (the default is
    // never pruned), then new configurations.
    interrupted_promotion_resumes("promotion", &[], 1);
}

#[test]
fn an_interrupted_promotion_of_a_drawn_configuration_resumes_from_its_last_epoch() {
    // Without the default: three drawn configurations at 2 epochs, then trial 3 continues the
    // best of them. Their hyperparameters have all the digits of a double, which the progress
    // checkpoint's JSON must give back exactly for the resumed trial to recognise it.
    interrupted_promotion_resumes("promotion-drawn", &["--no-default"], 3);
}

/// A successive-halving study over 2 and 6 epochs (and `extra` arguments) whose promotion,
/// trial `stopped`, is stopped with Ctrl-C after epoch 3: `resume` continues the same source
/// from that trial's progress checkpoint and ends with the weights of an uninterrupted run.
fn interrupted_promotion_resumes(name: &str, extra: &[&str], stopped: i64) {
    let (dir, reference_dir) = (temp_dir(name), temp_dir(&format!("{name}-reference")));
    let mut args = vec![
        "run",
        "--method",
        "standard",
        "--fidelity",
        "successive-halving",
        "--epochs",
        "6",
        "--min-epochs",
        "2",
        "--eta",
        "3",
        "--train-samples",
        "1000",
        "--val-samples",
        "30",
        "--trials",
        "4",
    ];
    args.extend_from_slice(extra);
    let reference = spawn(&args, &reference_dir);
    let run = spawn(&args, &dir);
    wait_for_epoch(&dir, stopped, 3);
    // Ctrl-C is treated like a kill: the trial stops at its next batch, stored interrupted.
    let signal = Command::new("kill")
        .args(["-INT", &run.id().to_string()])
        .status()
        .unwrap();
    assert!(signal.success());
    let output = run.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let index = stopped as usize;
    let before = trials(&dir);
    assert_eq!(before.len(), index + 1);
    assert!(
        before[index].is_interrupted(),
        "trial {stopped} was stopped mid-way"
    );
    let promoted = attr(&before[index], attrs::CONTINUES).expect("a promotion");
    let (epoch, _) = latest_progress(&trial_dir(&dir, stopped)).unwrap();
    assert!((3..6).contains(&epoch), "stopped after epoch {epoch}");

    succeed(spawn(&["resume", NAME], &dir));
    let after = trials(&dir);
    assert_eq!(after.len(), 5);
    let resumed = &after[index + 1];
    assert_eq!(attr(resumed, attrs::CONTINUES), Some(promoted));
    assert_eq!(attr(resumed, RESUMED_FROM), Some(stopped));
    assert_eq!(attr(resumed, RESUMED_AT_EPOCH), Some(epoch as i64));
    succeed(reference);
    let reference_trials = trials(&reference_dir);
    assert_eq!(reference_trials.len(), 4);
    assert_same_result((&dir, resumed), (&reference_dir, &reference_trials[index]));
    assert!(!trial_dir(&dir, stopped).join(PROGRESS_DIR).exists());
}
