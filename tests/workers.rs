//! Several `cthpo run` workers on one PostgreSQL study, as on several machines: distinct trial
//! numbers and configurations, the budget kept, and a worker killed mid-trial whose trial
//! another worker fails as interrupted and runs again, exactly once.
//!
//! Needs a PostgreSQL server (`CTHPO_TEST_POSTGRES_URL`) and Python with optuna and psycopg2
//! (`./.venv` or `CTHPO_OPTUNA_PYTHON`); ignored by default, `.ci/run` runs it with `--ignored`.
//! The restart test also needs the server's directory and port (`CTHPO_TEST_POSTGRES_DIR`,
//! `CTHPO_TEST_POSTGRES_PORT`, as `scripts/postgres-local.sh start` took them) and stops the
//! server for a while, so the tests run one at a time (`--test-threads 1`).

use cthpo::store::{Storage, Store, StoredTrial, TrialState, attrs};
use serde_json::json;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

const STUDY: &str = "workers";
const TRIALS: usize = 16;

fn trials(storage: &Storage, dir: &Path) -> Vec<StoredTrial> {
    let Ok(store) = Store::open_existing_at(storage, dir) else {
        return Vec::new();
    };
    let Ok(Some(study)) = store.study_by_name(STUDY) else {
        return Vec::new();
    };
    store.trials(study.id).unwrap_or_default()
}

/// One worker, as on its own machine: its own checkpoint directory, the shared database;
/// `method` trains `train_samples` images for one epoch per trial.
fn worker(url: &str, dir: &Path, method: &str, train_samples: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_cthpo"))
        .args(["run", "--method", method, "--name", STUDY])
        .args(["--epochs", "1", "--train-samples", train_samples])
        .args(["--val-samples", "50"])
        .args(["--trials", &TRIALS.to_string(), "--heartbeat", "1s"])
        .arg("--dir")
        .arg(dir)
        .args(["--storage", url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Fails the test, naming the trial, its failure and `context`, unless the trial is COMPLETE.
fn assert_complete(t: &StoredTrial, context: &str) {
    assert_eq!(
        t.state,
        TrialState::Complete,
        "trial {} ({:?}) {context}",
        t.number,
        t.user_attr_str(attrs::FAILURE_REASON)
    );
}

fn owner_pid(trial: &StoredTrial) -> Option<u32> {
    trial
        .user_attr_str("cthpo_owner")?
        .rsplit_once(':')?
        .1
        .parse()
        .ok()
}

#[test]
#[ignore = "needs a PostgreSQL server (CTHPO_TEST_POSTGRES_URL) and Python with optuna and \
            psycopg2; .ci/run runs it with --ignored"]
fn four_workers_share_a_study_and_rerun_a_killed_workers_trial_once() {
    let pg = common::PgDatabase::create("workers");
    let storage = Storage::parse(&pg.url).unwrap();
    let root = std::env::temp_dir().join(format!("cthpo-workers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let dirs: Vec<PathBuf> = (0..4).map(|i| root.join(format!("machine-{i}"))).collect();
    let mut workers: Vec<Option<Child>> = dirs
        .iter()
        .map(|d| Some(worker(&pg.url, d, "standard", "200")))
        .collect();

    // Kill -9 a worker while its trial runs (after a few trials are done).
    let start = Instant::now();
    let (killed_trial, killed_pid) = 'kill: loop {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no worker was caught mid-trial"
        );
        std::thread::sleep(Duration::from_millis(100));
        let stored = trials(&storage, &root);
        if stored
            .iter()
            .filter(|t| t.state == TrialState::Complete)
            .count()
            < 3
        {
            continue;
        }
        for trial in stored.iter().filter(|t| t.state == TrialState::Running) {
            let Some(pid) = owner_pid(trial) else {
                continue;
            };
            let Some(slot) = workers
                .iter_mut()
                .find(|w| w.as_ref().is_some_and(|c| c.id() == pid))
            else {
                continue;
            };
            let mut child = slot.take().unwrap();
            child.kill().unwrap();
            child.wait().unwrap();
            // The trial may have ended just before the kill: then catch another worker.
            let now = trials(&storage, &root);
            if now
                .iter()
                .any(|t| t.trial_id == trial.trial_id && t.state == TrialState::Running)
            {
                break 'kill (trial.number, pid);
            }
        }
    };

    for child in workers.into_iter().flatten() {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "a worker failed:\n{stderr}");
        assert!(
            !stderr.contains(pg.password().unwrap_or("\u{0}")),
            "the password shows in a worker's output:\n{stderr}"
        );
    }

    let stored = trials(&storage, &root);
    let numbers: Vec<i64> = stored.iter().map(|t| t.number).collect();
    assert_eq!(
        numbers,
        (0..stored.len() as i64).collect::<Vec<_>>(),
        "distinct, gap-free trial numbers"
    );
    let interrupted: Vec<&StoredTrial> = stored
        .iter()
        .filter(|t| t.user_attr_str(attrs::FAILURE_REASON) == Some("interrupted"))
        .collect();
    assert_eq!(interrupted.len(), 1, "only the killed worker's trial");
    let killed = interrupted[0];
    assert_eq!(killed.number, killed_trial);
    assert_eq!(killed.state, TrialState::Fail);
    let counted: Vec<&StoredTrial> = stored.iter().filter(|t| t.number != killed_trial).collect();
    assert_eq!(counted.len(), TRIALS, "the budget is kept across workers");
    for t in &counted {
        assert_complete(t, "");
        // Checkpoints are files on the machine that ran the trial, named in checkpoint_path.
        let path = t.user_attr_str(attrs::CHECKPOINT_PATH).unwrap();
        let (host, local) = cthpo::store::split_checkpoint_host(path);
        assert!(host.is_some(), "{path}");
        assert!(
            Path::new(local).join("model.safetensors").is_file(),
            "{path}"
        );
    }
    let configs: BTreeSet<String> = counted.iter().map(|t| format!("{:?}", t.params)).collect();
    assert_eq!(configs.len(), TRIALS, "no configuration ran twice");
    let reruns: Vec<&&StoredTrial> = counted
        .iter()
        .filter(|t| t.params == killed.params)
        .collect();
    assert_eq!(reruns.len(), 1, "the killed trial ran again exactly once");
    assert_eq!(
        reruns[0].user_attr_str(attrs::PROPOSAL),
        Some("rerun of an interrupted trial")
    );
    assert_ne!(owner_pid(reruns[0]), Some(killed_pid), "by another worker");

    // The password is in no stored attribute.
    let password = pg.password().unwrap_or("\u{0}");
    let store = Store::open_existing_at(&storage, &root).unwrap();
    let study = store.require_study(STUDY).unwrap();
    assert!(!format!("{:?}", study.user_attrs).contains(password));
    for t in &stored {
        assert!(!format!("{:?}{:?}", t.user_attrs, t.system_attrs).contains(password));
    }

    // Optuna reads the study the workers wrote.
    let python = common::optuna_python();
    let dump = common::run_python(&python, &["dump", &pg.url, STUDY]);
    let theirs = dump["trials"].as_array().unwrap();
    assert_eq!(theirs.len(), TRIALS + 1);
    assert_eq!(theirs[killed_trial as usize]["state"], json!("FAIL"));
    let _ = std::fs::remove_dir_all(&root);
}

/// Runs `scripts/postgres-local.sh` with these arguments.
fn local_server(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/postgres-local.sh");
    let out = Command::new(script).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "postgres-local.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The test server stopped; dropping it starts the server again (also when the test fails).
struct Outage<'a> {
    server: &'a str,
    port: &'a str,
}

impl<'a> Outage<'a> {
    fn begin(server: &'a str, port: &'a str) -> Outage<'a> {
        local_server(&["stop", server]);
        Outage { server, port }
    }
}

impl Drop for Outage<'_> {
    fn drop(&mut self) {
        local_server(&["start", self.server, self.port]);
    }
}

#[test]
#[ignore = "needs a PostgreSQL server started by scripts/postgres-local.sh \
            (CTHPO_TEST_POSTGRES_URL, _DIR, _PORT) that it may restart; .ci/run runs it"]
fn a_worker_rides_out_a_server_restart() {
    let server = std::env::var("CTHPO_TEST_POSTGRES_DIR")
        .expect("CTHPO_TEST_POSTGRES_DIR: the directory given to scripts/postgres-local.sh start");
    let port = std::env::var("CTHPO_TEST_POSTGRES_PORT").expect("CTHPO_TEST_POSTGRES_PORT");
    let pg = common::PgDatabase::create("restart");
    let storage = Storage::parse(&pg.url).unwrap();
    let dir = std::env::temp_dir().join(format!("cthpo-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // IBP trials of about a second each, so that the study outlasts the outage.
    let mut child = worker(&pg.url, &dir, "ibp", "2000");
    let start = Instant::now();
    while trials(&storage, &dir).len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no trial started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Down for a few seconds mid-study (connections are cut at once), then back.
    let outage = Outage::begin(&server, &port);
    assert!(
        child.try_wait().unwrap().is_none(),
        "the study ended before the server stopped"
    );
    std::thread::sleep(Duration::from_secs(4));
    drop(outage);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the worker stopped:\n{stderr}");
    let stored = trials(&storage, &dir);
    assert_eq!(stored.len(), TRIALS, "{stderr}");
    for t in &stored {
        assert_complete(t, &stderr);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
