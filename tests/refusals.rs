//! Hostile but realistic inputs, end to end through the binary: every bad input is refused
//! before any work with a message naming what is wrong, nothing is written or lost, and a
//! closed pipe or a full disk end a command cleanly (Ctrl-C in a study: tests/study.rs).

use cthpo::store::{Store, StoredTrial};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cthpo-refusals-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn cthpo_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cthpo"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

fn cthpo(args: &[&str]) -> Output {
    cthpo_in(Path::new(env!("CARGO_MANIFEST_DIR")), args)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts the command failed with an error message containing every one of `needles`.
fn refused(output: &Output, needles: &[&str]) -> String {
    let text = stderr(output);
    assert!(!output.status.success(), "accepted: {text}");
    assert!(!text.contains("panicked"), "{text}");
    for needle in needles {
        assert!(text.contains(needle), "`{needle}` not in: {text}");
    }
    text
}

fn trials(dir: &Path, name: &str) -> Vec<StoredTrial> {
    let store = Store::open_read_only(dir).unwrap();
    let study = store.require_study(name).unwrap();
    store.trials(study.id).unwrap()
}

/// `flags` with one-epoch training of `standard` on 200 images, scored on 50, where `flags`
/// do not say otherwise (clap refuses a flag given twice).
fn tiny<'a>(command: &'a str, flags: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![command];
    args.extend_from_slice(flags);
    for (flag, value) in [
        ("--method", "standard"),
        ("--epochs", "1"),
        ("--train-samples", "200"),
        ("--val-samples", "50"),
    ] {
        if !flags.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    args
}

const TINY_NAME: &str = "standard-mnist-cnn-small-eps0.1";

fn run_tiny(dir: &Path, extra: &[&str]) -> Output {
    let d = dir.to_str().unwrap();
    cthpo(&tiny("run", &[&["--dir", d], extra].concat()))
}

/// A fresh study directory `name` holding the one-trial study [`TINY_NAME`].
fn tiny_study(name: &str) -> PathBuf {
    let dir = temp_dir(name);
    let made = run_tiny(&dir, &["--trials", "1"]);
    assert!(made.status.success(), "{}", stderr(&made));
    dir
}

#[test]
fn a_refused_setting_leaves_no_study_behind() {
    let dir = temp_dir("nothing-left");
    let d = dir.to_str().unwrap();
    let long_name = "n".repeat(300);
    let zero_weights = dir.with_extension("weights.yaml");
    std::fs::write(
        &zero_weights,
        "method: standard\nweights: {natural: 0, adversarial: 0, certified: 0}\n",
    )
    .unwrap();
    let negative_weight = dir.with_extension("negative.yaml");
    std::fs::write(
        &negative_weight,
        "method: standard\nweights: {natural: -1}\n",
    )
    .unwrap();
    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        (vec!["--dataset", "imagenet"], &["dataset", "imagenet"]),
        (vec!["--arch", "resnet50"], &["arch", "resnet50", "cnn7"]),
        (
            vec!["--val-samples", "20000"],
            &["val_samples", "20000", "10000"],
        ),
        (
            vec!["--train-samples", "0"],
            &["train_samples", "at least 1"],
        ),
        (
            vec!["--train-samples", "20000"],
            &["train_samples", "20000", "10000", "9950"],
        ),
        (vec!["--name", &long_name], &["name", "255 bytes"]),
        (vec!["--eps", "-0.1"], &["eps", "-0.1", "(0, 1]"]),
        (
            vec!["--study-file", zero_weights.to_str().unwrap()],
            &["weights", "all weights are zero"],
        ),
        (
            vec!["--study-file", negative_weight.to_str().unwrap()],
            &["weights", "natural = -1"],
        ),
    ];
    for (flags, needles) in cases {
        let output = cthpo(&tiny(
            "run",
            &[&["--dir", d, "--trials", "1"], flags.as_slice()].concat(),
        ));
        refused(&output, needles);
        assert!(
            !dir.join("cthpo.db").exists(),
            "{flags:?} left a database behind"
        );
    }
    // The corrected command then runs.
    let fixed = run_tiny(&dir, &["--trials", "1"]);
    assert!(fixed.status.success(), "{}", stderr(&fixed));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(zero_weights);
    let _ = std::fs::remove_file(negative_weight);
}

#[test]
fn continuing_a_study_with_other_scoring_is_refused() {
    let dir = tiny_study("same-scoring");
    for (flags, field) in [
        (vec!["--weights", "nat=1,cert=2"], "weights"),
        (vec!["--val-samples", "60"], "val_samples"),
        (vec!["--train-samples", "300"], "train_samples"),
        (vec!["--seed", "7"], "seed"),
        (vec!["--objective", "pareto"], "objective"),
    ] {
        let output = run_tiny(&dir, &[&["--trials", "2"], flags.as_slice()].concat());
        refused(&output, &[field, "already exists with"]);
    }
    assert_eq!(trials(&dir, TINY_NAME).len(), 1, "nothing was added");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dataset_aliases_are_one_study_and_relative_paths_are_stored_absolute() {
    let dir = temp_dir("aliases");
    let data = dir.join("idx");
    std::fs::create_dir_all(&data).unwrap();
    let embedded = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/embedded/mnist");
    for entry in std::fs::read_dir(&embedded).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "gz") {
            std::fs::copy(&path, data.join(path.file_name().unwrap())).unwrap();
        }
    }
    // A study file with paths relative to itself, run from another directory.
    let files = dir.join("files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("first.yaml"), "learning_rate: 0.02\n").unwrap();
    std::fs::write(
        files.join("study.yaml"),
        "method: standard\ndataset: fmnist\ndata_dir: ../idx\ndefault_config: first.yaml\n\
         epochs: 1\ntrain_samples: 200\nval_samples: 50\ntrials: 1\n",
    )
    .unwrap();
    let first = cthpo_in(
        &dir,
        &["run", "--study-file", "files/study.yaml", "--dir", "out"],
    );
    assert!(first.status.success(), "{}", stderr(&first));
    let name = "standard-fashion-mnist-cnn-small-eps0.1";
    let store = Store::open_read_only(dir.join("out")).unwrap();
    let spec = &store.require_study(name).unwrap().user_attrs["cthpo_spec"];
    assert_eq!(spec["dataset"], "fashion-mnist");
    let stored_data = PathBuf::from(spec["data_dir"].as_str().unwrap());
    assert!(stored_data.is_absolute(), "{stored_data:?}");
    assert_eq!(
        stored_data.canonicalize().unwrap(),
        data.canonicalize().unwrap()
    );
    let stored_default = PathBuf::from(spec["default_config"].as_str().unwrap());
    assert!(stored_default.is_absolute() && stored_default.is_file());
    drop(store);
    // Other spellings of the dataset, and a relative --data-dir, continue the same study.
    for (alias, trials_wanted) in [("fashion-mnist", "2"), ("fashion_mnist", "3")] {
        let next = cthpo_in(
            &dir,
            &[
                "run",
                "--method",
                "standard",
                "--dataset",
                alias,
                "--data-dir",
                "idx",
                "--epochs",
                "1",
                "--train-samples",
                "200",
                "--val-samples",
                "50",
                "--trials",
                trials_wanted,
                "--dir",
                "out",
            ],
        );
        assert!(next.status.success(), "{alias}: {}", stderr(&next));
    }
    assert_eq!(trials(&dir.join("out"), name).len(), 3);
    // `resume` from anywhere finds the data through the stored absolute path.
    let out = dir.join("out");
    let resumed = cthpo(&[
        "resume",
        name,
        "--dir",
        out.to_str().unwrap(),
        "--trials",
        "4",
    ]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert_eq!(trials(&out, name).len(), 4);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn train_and_verify_refuse_bad_networks_outputs_and_values_before_work() {
    let dir = temp_dir("train");
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let cifar_net = write(
        "cifar.yaml",
        "input_shape: [3, 32, 32]\nlayers:\n  - flatten\n  - linear: {out_features: 10}\n",
    );
    let huge_net = write(
        "huge.yaml",
        "input_shape: [1, 28, 28]\nlayers:\n  - flatten\n  - linear: {out_features: 100000000000}\n  - relu\n  - linear: {out_features: 10}\n",
    );
    let big_net = write(
        "big.yaml",
        "input_shape: [1, 28, 28]\nlayers:\n  - flatten\n  - linear: {out_features: 1000000000}\n  - relu\n  - linear: {out_features: 10}\n",
    );
    let adam_decay = write("decay.yaml", "optimizer: adam\nweight_decay: 0.1\n");
    let a_file = write("a-file", "keep me\n");
    let run = dir.join("run");
    let r = run.to_str().unwrap();
    let train = |extra: &[&str]| cthpo(&tiny("train", extra));
    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        (
            vec!["--net", &cifar_net],
            &["cifar.yaml", "[3, 32, 32]", "[1, 28, 28]"],
        ),
        (vec!["--net", &huge_net], &["huge.yaml", "layer 1"]),
        (vec!["--net", &big_net], &["too large", "GB"]),
        (
            vec!["--set", "learning_rate=NaN"],
            &["learning_rate", "not a finite number"],
        ),
        (
            vec!["--set", "weight_decay=0.1"],
            &["weight_decay", "AdamW"],
        ),
        (
            vec!["--config", &adam_decay],
            &["decay.yaml", "weight_decay", "AdamW"],
        ),
        (vec!["--eps", "-0.1"], &["--eps -0.1", "[0, 1]"]),
        (vec!["--train-samples", "0"], &["0 training images", "9950"]),
        (
            vec!["--train-samples", "20000"],
            &["20000 training images", "9950"],
        ),
    ];
    for (flags, needles) in cases {
        refused(&train(&[&["--out", r], flags.as_slice()].concat()), needles);
        assert!(!run.exists(), "{flags:?} left {r} behind");
    }
    refused(&train(&["--out", &a_file]), &["a-file", "is a file"]);
    assert_eq!(std::fs::read_to_string(&a_file).unwrap(), "keep me\n");

    // A run directory that holds a checkpoint is not replaced without --force.
    let trained = train(&["--out", r]);
    assert!(trained.status.success(), "{}", stderr(&trained));
    let weights = run.join("model.safetensors");
    let before = std::fs::read(&weights).unwrap();
    refused(
        &train(&["--out", r, "--seed", "1"]),
        &["not empty", "--force"],
    );
    assert_eq!(std::fs::read(&weights).unwrap(), before);
    let forced = train(&["--out", r, "--seed", "1", "--force"]);
    assert!(forced.status.success(), "{}", stderr(&forced));
    assert_ne!(std::fs::read(&weights).unwrap(), before);

    // verify names a missing file, and refuses non-finite weights naming the tensor.
    let missing = dir.join("missing.safetensors");
    refused(
        &cthpo(&["verify", "--model", missing.to_str().unwrap()]),
        &["missing.safetensors", "not found"],
    );
    let mut tensors = candle_core::safetensors::load(&weights, &candle_core::Device::Cpu).unwrap();
    let bias = tensors["3.bias"].to_vec1::<f32>().unwrap();
    let mut poisoned = bias.clone();
    poisoned[0] = f32::NAN;
    tensors.insert(
        "3.bias".into(),
        candle_core::Tensor::new(poisoned.as_slice(), &candle_core::Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    refused(
        &cthpo(&["verify", "--model", r, "--samples", "20"]),
        &["model.safetensors", "non-finite", "3.bias"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn reading_commands_work_on_a_read_only_database_and_write_nothing() {
    let dir = tiny_study("read-only");
    // As a copy would be: the database alone, without SQLite's -wal and -shm files.
    let copy = temp_dir("read-only-copy");
    std::fs::create_dir_all(&copy).unwrap();
    {
        let conn = rusqlite::Connection::open(dir.join("cthpo.db")).unwrap();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
    }
    std::fs::copy(dir.join("cthpo.db"), copy.join("cthpo.db")).unwrap();
    let bytes = std::fs::read(copy.join("cthpo.db")).unwrap();
    // Make it read-only even for root where the file system allows (`chattr +i`).
    let immutable = Command::new("chattr")
        .args(["+i", "cthpo.db", "."])
        .current_dir(&copy)
        .status()
        .is_ok_and(|s| s.success());
    if !immutable {
        eprintln!("chattr +i unavailable: checking only that nothing is written");
    }
    let c = copy.to_str().unwrap();
    let plots = dir.join("plots");
    let commands: [Vec<&str>; 5] = [
        vec!["status", "--dir", c],
        vec!["status", TINY_NAME, "--dir", c],
        vec!["trials", TINY_NAME, "--dir", c, "--csv"],
        vec!["best", TINY_NAME, "--dir", c],
        vec![
            "plot",
            TINY_NAME,
            "--dir",
            c,
            "--out",
            plots.to_str().unwrap(),
        ],
    ];
    let outputs: Vec<Output> = commands.iter().map(|args| cthpo(args)).collect();
    if immutable {
        let _ = Command::new("chattr")
            .args(["-i", "cthpo.db", "."])
            .current_dir(&copy)
            .status();
    }
    for (args, output) in commands.iter().zip(&outputs) {
        assert!(output.status.success(), "{args:?}: {}", stderr(output));
    }
    assert!(String::from_utf8_lossy(&outputs[0].stdout).contains(TINY_NAME));
    assert_eq!(std::fs::read(copy.join("cthpo.db")).unwrap(), bytes);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&copy);
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let dir = tiny_study("pipe");
    let d = dir.to_str().unwrap();
    for args in [
        vec!["status", "--dir", d],
        vec!["trials", TINY_NAME, "--dir", d, "--json"],
        vec!["best", TINY_NAME, "--dir", d],
    ] {
        // The reader is gone before the command writes, as with `| head -0`.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let output = Command::new(env!("CARGO_BIN_EXE_cthpo"))
            .args(&args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let text = stderr(&output);
        assert!(text.is_empty(), "{args:?} printed: {text}");
        use std::os::unix::process::ExitStatusExt;
        assert!(
            output.status.success() || output.status.signal() == Some(libc::SIGPIPE),
            "{args:?}: {:?}",
            output.status
        );
        // Output that cannot be written (a full disk) is an error, not a panic.
        if let Ok(full) = std::fs::File::create("/dev/full") {
            let output = Command::new(env!("CARGO_BIN_EXE_cthpo"))
                .args(&args)
                .stdout(full)
                .output()
                .unwrap();
            refused(&output, &["writing to standard output"]);
        }
    }
    let a_file = dir.join("a-file");
    std::fs::write(&a_file, "x").unwrap();
    refused(
        &cthpo(&[
            "plot",
            TINY_NAME,
            "--dir",
            d,
            "--out",
            a_file.to_str().unwrap(),
        ]),
        &["a-file", "is a file"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn further_bad_inputs_are_refused_before_any_work() {
    let dir = temp_dir("further");
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.join("studies");
    let d = d.to_str().unwrap();
    let a_file = dir.join("a-file");
    std::fs::write(&a_file, "x").unwrap();
    let decay = dir.join("decay.yaml");
    std::fs::write(&decay, "optimizer: adam\nweight_decay: 0.01\n").unwrap();
    let run_cases: Vec<(Vec<&str>, &[&str])> = vec![
        (
            vec!["--trial-timeout", "1e30"],
            &["trial_timeout", "100 years"],
        ),
        (
            vec!["--time-budget", "99999999999999999999d"],
            &["time_budget", "100 years"],
        ),
        (
            vec!["--default", decay.to_str().unwrap()],
            &["decay.yaml", "weight_decay", "no effect", "adamw"],
        ),
    ];
    for (flags, needles) in run_cases {
        refused(
            &cthpo(&tiny("run", &[&["--dir", d], flags.as_slice()].concat())),
            needles,
        );
        assert!(!Path::new(d).exists(), "{flags:?} left {d} behind");
    }
    refused(
        &cthpo(&tiny("run", &["--dir", a_file.to_str().unwrap()])),
        &["a-file", "is a file"],
    );
    let out = dir.join("run");
    let o = out.to_str().unwrap();
    refused(
        &cthpo(&tiny("train", &["--out", o, "--val-samples", "0"])),
        &["--val-samples", "at least 1"],
    );
    assert!(!out.exists());
    // Ctrl-C during training leaves no empty run directory.
    let mut child = Command::new(env!("CARGO_BIN_EXE_cthpo"))
        .args(tiny(
            "train",
            &[
                "--out",
                o,
                "--method",
                "ibp",
                "--train-samples",
                "5000",
                "--epochs",
                "5",
            ],
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !out.exists() && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: sends SIGINT to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(child.wait().unwrap().code(), Some(130));
    assert!(!out.exists(), "Ctrl-C left {o} behind");
    let made = run_tiny(Path::new(d), &["--trials", "1"]);
    assert!(made.status.success(), "{}", stderr(&made));
    let checkpoint = Path::new(d).join(TINY_NAME).join("trial-0");
    refused(
        &cthpo(&[
            "verify",
            "--model",
            checkpoint.to_str().unwrap(),
            "--samples",
            "999999",
        ]),
        &["--samples 999999", "2000 images"],
    );
    refused(
        &cthpo(&["resume", TINY_NAME, "--dir", d, "--trials", "0"]),
        &["--trials", "at least 1"],
    );
    assert_eq!(trials(Path::new(d), TINY_NAME).len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}
