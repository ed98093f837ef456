//! Store tests: round trips, resume, concurrency, bad files, and Optuna reading our databases.
//!
//! The suite runs on both engines: each engine-independent test is a function of a [`Db`],
//! run as `sqlite::<name>` and as `postgres::<name>`. The PostgreSQL variants need a server
//! (`CTHPO_TEST_POSTGRES_URL`, a URL whose user may create databases); they are ignored by
//! default and `.ci/run` runs them with `--ignored` against a server it starts.

use cthpo::store::{
    self, Direction, ParamDistribution, ParamValue, StartRules, Started, Storage, Store,
    StoreError, StoredParam, StoredTrial, TrialHandle, TrialOutcome, TrialState,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod common;

/// Ends a trial as COMPLETE with these values.
fn complete(store: &Store, trial: &TrialHandle, values: Vec<f64>) {
    store
        .finish_trial(trial, &TrialOutcome::Complete { values })
        .unwrap();
}

/// Ends a trial as FAIL with this reason.
fn fail(store: &Store, trial: &TrialHandle, reason: &str) {
    store
        .finish_trial(
            trial,
            &TrialOutcome::Fail {
                reason: reason.into(),
            },
        )
        .unwrap();
}

/// A fresh, empty directory for one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cthpo-store-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A fresh, empty study database of one engine for one test (dropped afterwards).
struct Db {
    /// The storage URL with its password (what `--storage` takes).
    url: String,
    storage: Storage,
    dir: PathBuf,
    /// The PostgreSQL database created for the test.
    pg: Option<common::PgDatabase>,
}

impl Db {
    fn sqlite(name: &str) -> Db {
        let dir = temp_dir(name);
        let storage = Storage::sqlite_in(&dir);
        Db {
            url: storage.to_string(),
            storage,
            dir,
            pg: None,
        }
    }

    fn postgres(name: &str) -> Db {
        let pg = common::PgDatabase::create(name);
        Db {
            storage: Storage::parse(&pg.url).unwrap(),
            url: pg.url.clone(),
            dir: temp_dir(&format!("pg-{name}")),
            pg: Some(pg),
        }
    }

    fn open(&self) -> Store {
        Store::open_at(&self.storage, &self.dir).unwrap()
    }

    fn open_existing(&self) -> Store {
        Store::open_existing_at(&self.storage, &self.dir).unwrap()
    }

    fn is_sqlite(&self) -> bool {
        self.pg.is_none()
    }

    /// What tests/python/optuna_check.py takes: the SQLite file or the PostgreSQL URL.
    fn python_arg(&self) -> String {
        match &self.storage {
            Storage::Sqlite { path } => path.display().to_string(),
            Storage::Postgres(_) => self.url.clone(),
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs each named test function on SQLite (`sqlite::name`) and PostgreSQL (`postgres::name`).
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    super::$name(&super::Db::sqlite(stringify!($name)));
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                #[ignore = "needs a PostgreSQL server (CTHPO_TEST_POSTGRES_URL); .ci/run runs it with --ignored"]
                fn $name() {
                    super::$name(&super::Db::postgres(stringify!($name)));
                }
            )*
        }
    };
}

on_both_engines!(
    round_trip_complete_failed_running,
    invalid_inputs_are_refused_without_writing,
    stale_running_trials_become_failed,
    concurrent_writers_get_distinct_numbers,
    concurrent_processes_get_distinct_numbers,
    checked_starts_respect_budget_and_uniqueness,
    inspection_commands_report_and_export_the_best_trial,
    constraints_decide_the_best_trial_and_the_front,
);

/// Trials whose stored constraint values are not all ≤ 0 are passed over by `best_trial`,
/// `pareto_optimal`, `cthpo best` and `cthpo status`.
fn constraints_decide_the_best_trial_and_the_front(db: &Db) {
    let d = db.dir.to_str().unwrap();
    let storage = db.url.as_str();
    {
        let store = db.open();
        let single = store
            .create_or_load_study("constrained", &[Direction::Maximize], &BTreeMap::new())
            .unwrap();
        // The highest value (#1) misses its constraint; #2 has none and counts as feasible.
        for (width, value, constraints) in [
            (16, 0.5, Some(json!([-0.1, 0.0]))),
            (32, 0.9, Some(json!([-0.2, 0.05]))),
            (64, 0.6, None),
        ] {
            let t = store
                .start_trial(single, &params("sgd", 0.01, width))
                .unwrap();
            if let Some(constraints) = constraints {
                store
                    .set_trial_system_attr(&t, store::attrs::CONSTRAINTS, &constraints)
                    .unwrap();
            }
            complete(&store, &t, vec![value]);
        }
        let trials = store.trials(single).unwrap();
        assert_eq!(by_number(&trials, 1).constraints(), Some(vec![-0.2, 0.05]));
        assert!(!by_number(&trials, 1).is_feasible());
        assert!(by_number(&trials, 0).is_feasible() && by_number(&trials, 2).is_feasible());
        let best = store::best_trial(&trials, &[Direction::Maximize]).unwrap();
        assert_eq!(best.number, 2);

        let multi = store
            .create_or_load_study(
                "constrained-front",
                &[Direction::Maximize, Direction::Maximize],
                &BTreeMap::new(),
            )
            .unwrap();
        for (width, values, feasible) in [(16, [0.6, 0.9], true), (32, [0.9, 0.95], false)] {
            let t = store
                .start_trial(multi, &params("adam", 0.01, width))
                .unwrap();
            let margin = if feasible { -0.1 } else { 0.1 };
            store
                .set_trial_system_attr(&t, store::attrs::CONSTRAINTS, &json!([margin]))
                .unwrap();
            complete(&store, &t, values.to_vec());
        }
        let trials = store.trials(multi).unwrap();
        let directions = [Direction::Maximize, Direction::Maximize];
        let front: Vec<i64> = store::pareto_optimal(&trials, &directions)
            .iter()
            .map(|t| t.number)
            .collect();
        assert_eq!(
            front,
            vec![0],
            "the infeasible trial dominates but is left out"
        );

        // Nothing feasible: no best trial, and the commands say why.
        let none = store
            .create_or_load_study("infeasible", &[Direction::Maximize], &BTreeMap::new())
            .unwrap();
        let t = store.start_trial(none, &params("sgd", 0.01, 8)).unwrap();
        store
            .set_trial_system_attr(&t, store::attrs::CONSTRAINTS, &json!([0.3]))
            .unwrap();
        complete(&store, &t, vec![0.7]);
        assert!(store::best_trial(&store.trials(none).unwrap(), &[Direction::Maximize]).is_none());
    }
    let detail = stdout_of(&["status", "constrained", "--dir", d, "--storage", storage]);
    assert!(detail.contains("best trial  #2"), "{detail}");
    assert!(
        detail.contains("2 of 3 complete trials meet the constraints"),
        "{detail}"
    );
    let detail = stdout_of(&["status", "infeasible", "--dir", d, "--storage", storage]);
    assert!(detail.contains("no feasible trial yet"), "{detail}");
    let refused = cthpo(&["best", "infeasible", "--dir", d, "--storage", storage]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("meets the study's constraints"), "{stderr}");
}

fn params(optimizer: &str, lr: f64, width: i64) -> Vec<StoredParam> {
    vec![
        StoredParam::categorical("optimizer", &["sgd", "adam"], optimizer).unwrap(),
        StoredParam::float("lr", 1e-5, 0.1, true, lr).unwrap(),
        StoredParam::int("width", 8, 256, false, width).unwrap(),
    ]
}

fn attrs(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn by_number(trials: &[StoredTrial], number: i64) -> &StoredTrial {
    trials.iter().find(|t| t.number == number).unwrap()
}

fn round_trip_complete_failed_running(db: &Db) {
    let dir = &db.dir;
    {
        let store = db.open();
        let journal = if db.is_sqlite() { "wal" } else { "server" };
        assert_eq!(store.journal_mode().unwrap(), journal);
        let study = store
            .create_or_load_study(
                "mnist-sabr",
                &[Direction::Minimize],
                &attrs(&[("method", json!("sabr"))]),
            )
            .unwrap();

        let a = store.start_trial(study, &params("adam", 1e-3, 64)).unwrap();
        assert_eq!(a.number, 0);
        for epoch in 0..3 {
            store
                .report_intermediate(&a, epoch, 0.5 + 0.1 * epoch as f64)
                .unwrap();
        }
        store
            .set_trial_user_attr(&a, store::attrs::NATURAL_ACCURACY, &json!(0.97))
            .unwrap();
        store
            .set_trial_user_attr(&a, store::attrs::CERTIFIED_ACCURACY, &json!(0.81))
            .unwrap();
        let ckpt = Store::checkpoint_rel_path("mnist-sabr", a.number);
        store
            .set_trial_user_attr(
                &a,
                store::attrs::CHECKPOINT_PATH,
                &json!(ckpt.to_str().unwrap()),
            )
            .unwrap();
        complete(&store, &a, vec![0.19]);

        let b = store.start_trial(study, &params("sgd", 0.05, 8)).unwrap();
        assert_eq!(b.number, 1);
        store.report_intermediate(&b, 0, f64::NAN).unwrap();
        fail(&store, &b, "loss diverged (NaN) at epoch 1");

        let c = store
            .start_trial(study, &params("adam", 1e-5, 256))
            .unwrap();
        assert_eq!(c.number, 2);
        let d = store.start_trial(study, &params("sgd", 0.1, 9)).unwrap();
        complete(&store, &d, vec![f64::INFINITY]);

        // A finished trial cannot change any more.
        let err = store
            .finish_trial(&a, &TrialOutcome::Pruned { values: vec![] })
            .expect_err("finishing twice");
        assert!(matches!(err, StoreError::TrialNotRunning { number: 0, .. }));
        assert!(store.set_trial_user_attr(&b, "late", &json!(1)).is_err());
    }

    // Reopen and read everything back.
    let store = db.open_existing();
    let names: Vec<String> = store
        .studies()
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, vec!["mnist-sabr".to_string()]);
    let info = store.require_study("mnist-sabr").unwrap();
    assert_eq!(info.directions, vec![Direction::Minimize]);
    assert_eq!(info.user_attrs["method"], json!("sabr"));
    let trials = store.trials(info.id).unwrap();
    assert_eq!(trials.len(), 4);

    let a = by_number(&trials, 0);
    assert_eq!(a.state, TrialState::Complete);
    assert_eq!(a.values, Some(vec![0.19]));
    assert_eq!(a.param("optimizer").unwrap().internal, 1.0);
    assert_eq!(
        a.param("optimizer").unwrap().value(),
        Some(ParamValue::Choice(json!("adam")))
    );
    assert_eq!(
        a.param("lr").unwrap().value(),
        Some(ParamValue::Float(1e-3))
    );
    assert_eq!(a.param("width").unwrap().value(), Some(ParamValue::Int(64)));
    assert_eq!(
        a.param("lr").unwrap().distribution,
        ParamDistribution::Float {
            low: 1e-5,
            high: 0.1,
            log: true,
            step: None
        }
    );
    assert_eq!(
        a.intermediate_values
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect::<Vec<_>>(),
        vec![(0, 0.5), (1, 0.6), (2, 0.7)]
    );
    assert_eq!(a.user_attr_f64("natural_accuracy"), Some(0.97));
    assert_eq!(a.user_attr_f64("certified_accuracy"), Some(0.81));
    assert_eq!(
        store.resolve_checkpoint_path(a.user_attr_str("checkpoint_path").unwrap()),
        dir.join("mnist-sabr").join("trial-0")
    );
    assert!(a.datetime_start.is_some() && a.datetime_complete.is_some());
    assert!(a.duration_seconds.unwrap() >= 0.0);

    let b = by_number(&trials, 1);
    assert_eq!(b.state, TrialState::Fail);
    assert_eq!(b.values, None);
    assert!(b.intermediate_values[&0].is_nan());
    assert_eq!(
        b.user_attr_str("failure_reason"),
        Some("loss diverged (NaN) at epoch 1")
    );

    let c = by_number(&trials, 2);
    assert_eq!(c.state, TrialState::Running);
    assert!(c.datetime_complete.is_none() && c.heartbeat.is_some());

    let d = by_number(&trials, 3);
    assert_eq!(d.values, Some(vec![f64::INFINITY]));

    assert_eq!(
        store::best_trial(&trials, &info.directions).map(|t| t.number),
        Some(0)
    );
    store.integrity_check().unwrap();

    // Loading the study again keeps its trials and existing attributes.
    let again = store
        .create_or_load_study(
            "mnist-sabr",
            &[Direction::Minimize],
            &attrs(&[("method", json!("other")), ("extra", json!(1))]),
        )
        .unwrap();
    assert_eq!(again, info.id);
    let info = store.require_study("mnist-sabr").unwrap();
    assert_eq!(info.user_attrs["method"], json!("sabr"));
    assert_eq!(info.user_attrs["extra"], json!(1));
}

fn invalid_inputs_are_refused_without_writing(db: &Db) {
    let store = db.open();
    let study = store
        .create_or_load_study("s", &[Direction::Minimize], &BTreeMap::new())
        .unwrap();
    let err = store
        .create_or_load_study("s", &[Direction::Maximize], &BTreeMap::new())
        .unwrap_err();
    assert!(err.to_string().contains("directions"), "{err}");
    assert!(
        store
            .create_or_load_study("a/b", &[Direction::Minimize], &BTreeMap::new())
            .is_err()
    );

    // Values outside the distribution, unknown choices, bad distributions.
    assert!(StoredParam::float("lr", 1e-5, 0.1, true, 0.5).is_err());
    assert!(StoredParam::float("lr", 0.0, 0.1, true, 0.05).is_err());
    assert!(StoredParam::categorical("opt", &["sgd"], "adam").is_err());
    assert!(StoredParam::int("w", 8, 64, false, 65).is_err());

    let t = store.start_trial(study, &params("sgd", 1e-3, 8)).unwrap();
    // NaN and wrong arity are refused; the trial stays RUNNING.
    assert!(
        store
            .finish_trial(
                &t,
                &TrialOutcome::Complete {
                    values: vec![f64::NAN]
                }
            )
            .is_err()
    );
    assert!(
        store
            .finish_trial(
                &t,
                &TrialOutcome::Complete {
                    values: vec![1.0, 2.0]
                }
            )
            .is_err()
    );
    // The same name with another kind of distribution is refused (Optuna would refuse it).
    let bad = vec![StoredParam::float("width", 8.0, 256.0, false, 9.5).unwrap()];
    let err = store.start_trial(study, &bad).unwrap_err();
    assert!(
        matches!(err, StoreError::IncompatibleDistribution { .. }),
        "{err}"
    );
    let bad = vec![StoredParam::categorical("optimizer", &["sgd", "rmsprop"], "sgd").unwrap()];
    assert!(store.start_trial(study, &bad).is_err());
    let trials = store.trials(study).unwrap();
    assert_eq!(trials.len(), 1);
    assert_eq!(trials[0].state, TrialState::Running);
    assert_eq!(trials[0].values, None);
}

fn stale_running_trials_become_failed(db: &Db) {
    let store = db.open();
    let study = store
        .create_or_load_study("resume-me", &[Direction::Minimize], &BTreeMap::new())
        .unwrap();
    let done = store.start_trial(study, &params("sgd", 1e-3, 16)).unwrap();
    complete(&store, &done, vec![0.3]);
    let killed = store.start_trial(study, &params("adam", 1e-2, 32)).unwrap();
    drop(store);

    let store = db.open();
    // A generous grace period leaves the recent trial alone.
    let none = store
        .mark_stale_running_as_failed(study, Duration::from_secs(3600), "interrupted")
        .unwrap();
    assert!(none.is_empty());
    let marked = store
        .mark_stale_running_as_failed(study, Duration::ZERO, "its process stopped")
        .unwrap();
    assert_eq!(marked.len(), 1);
    assert_eq!(marked[0].number, killed.number);
    assert_eq!(marked[0].state, TrialState::Fail);
    assert_eq!(
        marked[0].user_attr_str("failure_reason"),
        Some("its process stopped")
    );
    assert!(marked[0].is_interrupted(), "marked interrupted, not failed");
    assert!(marked[0].datetime_complete.is_some());
    let trials = store.trials(study).unwrap();
    assert_eq!(by_number(&trials, 0).state, TrialState::Complete);
    assert_eq!(by_number(&trials, 1).state, TrialState::Fail);
    assert!(!by_number(&trials, 0).is_interrupted());
    // A trial that fails on its own is not interrupted; one stopped from outside is.
    let failed = store.start_trial(study, &params("sgd", 1e-4, 64)).unwrap();
    fail(&store, &failed, "diverged");
    let stopped = store.start_trial(study, &params("sgd", 1e-4, 128)).unwrap();
    let outcome = TrialOutcome::Interrupted {
        reason: "stopped by the user".into(),
    };
    store.finish_trial(&stopped, &outcome).unwrap();
    let trials = store.trials(study).unwrap();
    assert!(!by_number(&trials, failed.number).is_interrupted());
    assert!(by_number(&trials, stopped.number).is_interrupted());
    assert_eq!(by_number(&trials, stopped.number).state, TrialState::Fail);
    // The next trial continues the numbering.
    let next = store.start_trial(study, &params("sgd", 1e-4, 8)).unwrap();
    assert_eq!(next.number, 4);
}

fn checked_starts_respect_budget_and_uniqueness(db: &Db) {
    let store = db.open();
    let study = store
        .create_or_load_study("checked", &[Direction::Minimize], &BTreeMap::new())
        .unwrap();
    let rules = StartRules {
        budget: Some(3),
        interrupted_uncounted: true,
        unique: true,
    };
    let started = |p: Vec<StoredParam>| store.start_trial_checked(study, &p, rules).unwrap();
    let Started::Trial(a) = started(params("sgd", 1e-3, 8)) else {
        panic!("first start declined");
    };
    // The same configuration while trial 0 runs (and after it completes) is declined.
    assert_eq!(
        started(params("sgd", 1e-3, 8)),
        Started::Duplicate { number: 0 }
    );
    complete(&store, &a, vec![0.5]);
    assert_eq!(
        started(params("sgd", 1e-3, 8)),
        Started::Duplicate { number: 0 }
    );
    // A failed configuration may run again (it is how an interrupted trial is re-run).
    let Started::Trial(b) = started(params("adam", 1e-3, 8)) else {
        panic!("second start declined");
    };
    fail(&store, &b, "interrupted");
    let Started::Trial(c) = started(params("adam", 1e-3, 8)) else {
        panic!("re-run of a failed configuration declined");
    };
    assert_eq!(c.number, 2);
    // Interrupted trials do not count against the budget of 3; others do.
    let Started::Trial(d) = started(params("sgd", 1e-2, 9)) else {
        panic!("third counted start declined");
    };
    fail(&store, &d, "diverged");
    assert_eq!(started(params("sgd", 1e-2, 10)), Started::BudgetSpent);
    assert_eq!(store.trials(study).unwrap().len(), 4);
}

fn concurrent_writers_get_distinct_numbers(db: &Db) {
    // Both writers open (and so possibly create) the database at the same time.
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let (storage, dir) = (db.storage.clone(), db.dir.clone());
            std::thread::spawn(move || {
                let store = Store::open_at(&storage, &dir).unwrap();
                let study = store
                    .create_or_load_study("shared", &[Direction::Minimize], &BTreeMap::new())
                    .unwrap();
                let mut numbers = Vec::new();
                for i in 0..20 {
                    let t = store
                        .start_trial(study, &params(["sgd", "adam"][w], 1e-3, 8 + i))
                        .unwrap();
                    store.report_intermediate(&t, 0, i as f64).unwrap();
                    store.set_trial_user_attr(&t, "worker", &json!(w)).unwrap();
                    complete(&store, &t, vec![i as f64]);
                    numbers.push(t.number);
                }
                numbers
            })
        })
        .collect();
    let mut numbers: Vec<i64> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    numbers.sort();
    assert_eq!(numbers, (0..40).collect::<Vec<i64>>());

    let store = db.open_existing();
    let study = store.require_study("shared").unwrap();
    let trials = store.trials(study.id).unwrap();
    assert_eq!(trials.len(), 40);
    assert!(trials.iter().all(|t| t.state == TrialState::Complete));
    store.integrity_check().unwrap();
}

/// Helper run in a child process by `concurrent_processes_get_distinct_numbers`; does nothing
/// when run as a normal test.
#[test]
fn child_writer_process() {
    let (Ok(url), Some(dir)) = (
        std::env::var("CTHPO_STORE_CHILD_STORAGE"),
        std::env::var_os("CTHPO_STORE_CHILD_DIR"),
    ) else {
        return;
    };
    let store = Store::open_at(&Storage::parse(&url).unwrap(), dir).unwrap();
    let study = store
        .create_or_load_study("procs", &[Direction::Minimize], &BTreeMap::new())
        .unwrap();
    for i in 0..20 {
        let t = store
            .start_trial(study, &params("sgd", 1e-3, 8 + i))
            .unwrap();
        store.report_intermediate(&t, 0, i as f64).unwrap();
        complete(&store, &t, vec![i as f64]);
    }
}

fn concurrent_processes_get_distinct_numbers(db: &Db) {
    let exe = std::env::current_exe().unwrap();
    let spawned: Vec<_> = (0..2)
        .map(|_| {
            Command::new(&exe)
                .args(["--exact", "child_writer_process", "--test-threads", "1"])
                .env("CTHPO_STORE_CHILD_DIR", &db.dir)
                .env("CTHPO_STORE_CHILD_STORAGE", &db.url)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in spawned {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "child writer failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let store = db.open_existing();
    let study = store.require_study("procs").unwrap();
    let mut numbers: Vec<i64> = store
        .trials(study.id)
        .unwrap()
        .iter()
        .map(|t| t.number)
        .collect();
    numbers.sort();
    assert_eq!(numbers, (0..40).collect::<Vec<i64>>());
    store.integrity_check().unwrap();
}

#[test]
fn foreign_and_garbage_files_are_refused() {
    // Missing database: open_existing does not create one.
    let dir = temp_dir("missing");
    let err = Store::open_existing(&dir).unwrap_err();
    assert!(matches!(err, StoreError::Missing { .. }), "{err}");
    assert!(!dir.join(store::DB_FILE_NAME).exists());

    // Garbage bytes.
    let dir = temp_dir("garbage");
    let db = dir.join(store::DB_FILE_NAME);
    std::fs::write(
        &db,
        b"this is not a database, just some text that is long enough".repeat(100),
    )
    .unwrap();
    let before = std::fs::read(&db).unwrap();
    let err = Store::open(&dir).unwrap_err();
    assert!(matches!(err, StoreError::NotADatabase { .. }), "{err}");
    assert!(err.to_string().contains("cthpo.db"), "{err}");
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "garbage file must stay untouched"
    );

    // An SQLite database of another application.
    let dir = temp_dir("foreign");
    let db = dir.join(store::DB_FILE_NAME);
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("CREATE TABLE recipes (id INTEGER PRIMARY KEY, name TEXT);")
            .unwrap();
    }
    let err = Store::open(&dir).unwrap_err();
    assert!(matches!(err, StoreError::NotOptuna { .. }), "{err}");
    assert!(err.to_string().contains("recipes"), "{err}");

    // An Optuna database of another schema version.
    let dir = temp_dir("oldschema");
    drop(Store::open(&dir).unwrap());
    {
        let conn = rusqlite::Connection::open(dir.join(store::DB_FILE_NAME)).unwrap();
        conn.execute_batch(
            "UPDATE version_info SET schema_version = 11; \
             UPDATE alembic_version SET version_num = 'v3.0.0.d';",
        )
        .unwrap();
    }
    let err = Store::open(&dir).unwrap_err();
    assert!(matches!(err, StoreError::SchemaVersion { .. }), "{err}");
    assert!(err.to_string().contains("v3.0.0.d"), "{err}");
    for name in ["missing", "garbage", "foreign", "oldschema"] {
        let _ = std::fs::remove_dir_all(
            std::env::temp_dir().join(format!("cthpo-store-{}-{name}", std::process::id())),
        );
    }
}

// ------------------------------------------------------------------ Optuna compatibility

/// The schema rows of a database, with whitespace normalised.
fn schema_rows(db: &Path) -> Vec<(String, String, String)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT type, name, coalesce(sql, '') FROM sqlite_master ORDER BY type, name")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, String>(2)?)))
        .unwrap()
        .map(|r| {
            let (t, n, s) = r.unwrap();
            (t, n, s.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .collect()
}

/// The PostgreSQL schema of a database as comparable lines: columns with types, nullability
/// and defaults, constraints, indexes, enum types and sequences.
fn postgres_schema(url: &str) -> Vec<String> {
    let mut client = ::postgres::Client::connect(url, ::postgres::NoTls).unwrap();
    let mut lines = Vec::new();
    for sql in [
        "SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type || ' ' || \
         udt_name || ' ' || is_nullable || ' ' || coalesce(column_default, '') || ' ' || \
         coalesce(character_maximum_length::text, '') FROM information_schema.columns \
         WHERE table_schema = 'public'",
        "SELECT 'constraint ' || conrelid::regclass::text || ' ' || conname::text || ' ' || \
         pg_get_constraintdef(oid) FROM pg_constraint WHERE connamespace = 'public'::regnamespace",
        "SELECT 'index ' || indexname::text || ' ' || indexdef FROM pg_indexes \
         WHERE schemaname = 'public'",
        "SELECT 'enum ' || t.typname::text || ' ' || \
         string_agg(e.enumlabel::text, ',' ORDER BY e.enumsortorder) \
         FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid GROUP BY t.typname",
        "SELECT 'sequence ' || sequencename::text || ' ' || data_type::text FROM pg_sequences \
         WHERE schemaname = 'public'",
    ] {
        for row in client.query(sql, &[]).unwrap() {
            lines.push(row.get::<_, String>(0));
        }
    }
    lines.sort();
    lines
}

#[test]
#[ignore = "needs Python with optuna 5.0.0 (./.venv or CTHPO_OPTUNA_PYTHON); .ci/run runs it with --ignored"]
fn optuna_reads_our_studies_and_we_read_optunas() {
    optuna_round_trip(&Db::sqlite("optuna"), &Db::sqlite("optuna-made"));
}

#[test]
#[ignore = "needs Python with optuna 5.0.0 and psycopg2 (./.venv or CTHPO_OPTUNA_PYTHON) and a \
            PostgreSQL server (CTHPO_TEST_POSTGRES_URL); .ci/run runs it with --ignored"]
fn optuna_reads_our_postgres_studies_and_we_read_optunas() {
    optuna_round_trip(&Db::postgres("optuna"), &Db::postgres("optuna_made"));
}

/// Optuna reads what cthpo wrote to `ours`, writes into it, and creates `theirs`, which must
/// have exactly our schema and which cthpo must read.
fn optuna_round_trip(ours: &Db, theirs: &Db) {
    let python = common::optuna_python();
    let db_arg = ours.python_arg();
    let db_text = db_arg.as_str();
    {
        let store = ours.open();
        // Single objective: complete, fail, complete with intermediate values.
        let single = store
            .create_or_load_study(
                "single",
                &[Direction::Minimize],
                &attrs(&[("method", json!("ibp"))]),
            )
            .unwrap();
        let t0 = store
            .start_trial(single, &params("adam", 1e-3, 64))
            .unwrap();
        store.report_intermediate(&t0, 0, 0.4).unwrap();
        store.report_intermediate(&t0, 1, 0.3).unwrap();
        store
            .set_trial_user_attr(&t0, "certified_accuracy", &json!(0.7))
            .unwrap();
        complete(&store, &t0, vec![0.3]);
        let t1 = store.start_trial(single, &params("sgd", 0.01, 8)).unwrap();
        fail(&store, &t1, "diverged");
        let t2 = store
            .start_trial(single, &params("sgd", 2e-5, 200))
            .unwrap();
        complete(&store, &t2, vec![0.1]);
        // Stopped at a rung as a multi-fidelity study stops it: its rung score is its last
        // intermediate value and its value, better than every complete one (Optuna's best
        // trial must still be a complete one).
        let t3 = store.start_trial(single, &params("adam", 0.1, 9)).unwrap();
        store.report_intermediate(&t3, 3, 0.05).unwrap();
        store.set_trial_user_attr(&t3, "rung", &json!(1)).unwrap();
        store
            .finish_trial(&t3, &TrialOutcome::Pruned { values: vec![0.05] })
            .unwrap();

        // Multi-objective: maximise certified and natural accuracy.
        let multi = store
            .create_or_load_study(
                "multi",
                &[Direction::Maximize, Direction::Maximize],
                &BTreeMap::new(),
            )
            .unwrap();
        // Constraint values (≤ 0 feasible): trial 1 misses its constraint, so the front among
        // the feasible ones is trial 0 alone.
        for (opt, lr, w, values, constraint) in [
            ("adam", 1e-3, 32, [0.6, 0.9], -0.1),
            ("sgd", 1e-2, 64, [0.7, 0.8], 0.05),
            ("sgd", 1e-4, 16, [0.5, 0.7], 0.0),
        ] {
            let t = store.start_trial(multi, &params(opt, lr, w)).unwrap();
            store
                .set_trial_system_attr(&t, store::attrs::CONSTRAINTS, &json!([constraint]))
                .unwrap();
            complete(&store, &t, values.to_vec());
        }
        let running = store
            .start_trial(multi, &params("adam", 0.05, 128))
            .unwrap();
        assert_eq!(running.number, 3);
    }

    let single = common::run_python(&python, &["dump", db_text, "single"]);
    assert_eq!(single["studies"], json!(["single", "multi"]));
    assert_eq!(single["directions"], json!(["MINIMIZE"]));
    assert_eq!(single["user_attrs"], json!({"method": "ibp"}));
    let trials = single["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 4);
    let states: Vec<&str> = trials
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["COMPLETE", "FAIL", "COMPLETE", "PRUNED"]);
    assert_eq!(
        trials[0]["params"],
        json!({"optimizer": "adam", "lr": 1e-3, "width": 64})
    );
    assert_eq!(trials[0]["values"], json!([0.3]));
    assert_eq!(
        trials[0]["intermediate_values"],
        json!({"0": 0.4, "1": 0.3})
    );
    assert_eq!(trials[0]["user_attrs"], json!({"certified_accuracy": 0.7}));
    assert_eq!(
        trials[0]["distributions"]["lr"],
        json!({"name": "FloatDistribution", "attributes": {"step": null, "low": 1e-5, "high": 0.1, "log": true}})
    );
    assert_eq!(
        trials[0]["distributions"]["optimizer"],
        json!({"name": "CategoricalDistribution", "attributes": {"choices": ["sgd", "adam"]}})
    );
    assert_eq!(
        trials[0]["distributions"]["width"],
        json!({"name": "IntDistribution", "attributes": {"log": false, "step": 1, "low": 8, "high": 256}})
    );
    assert_eq!(
        trials[1]["user_attrs"],
        json!({"failure_reason": "diverged"})
    );
    assert_eq!(trials[1]["values"], Value::Null);
    assert_eq!(
        trials[2]["params"],
        json!({"optimizer": "sgd", "lr": 2e-5, "width": 200})
    );
    assert_eq!(trials[3]["values"], json!([0.05]));
    assert_eq!(trials[3]["intermediate_values"], json!({"3": 0.05}));
    assert_eq!(trials[3]["user_attrs"], json!({"rung": 1}));
    assert!(trials.iter().all(|t| t["has_start"] == json!(true)));
    assert!(trials.iter().all(|t| t["has_complete"] == json!(true)));
    assert_eq!(single["best_number"], json!(2));

    let multi = common::run_python(&python, &["dump", db_text, "multi"]);
    assert_eq!(multi["directions"], json!(["MAXIMIZE", "MAXIMIZE"]));
    let trials = multi["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 4);
    assert_eq!(trials[1]["values"], json!([0.7, 0.8]));
    assert_eq!(trials[3]["state"], json!("RUNNING"));
    assert_eq!(trials[1]["constraints"], json!({"0": 0.05}));
    assert_eq!(trials[2]["constraints"], json!({"0": 0.0}));
    assert_eq!(trials[3]["constraints"], json!({}));
    assert_eq!(multi["feasible_numbers"], json!([0, 2]));
    assert_eq!(
        multi["best_numbers"],
        json!([0]),
        "Optuna's front of feasible trials"
    );

    // Optuna writes into our study (checking our distributions against its own) and we read it.
    let told = common::run_python(&python, &["tell", db_text, "multi"]);
    assert_eq!(told["number"], json!(4));
    let store = ours.open_existing();
    let info = store.require_study("multi").unwrap();
    let trials = store.trials(info.id).unwrap();
    let t4 = by_number(&trials, 4);
    assert_eq!(t4.state, TrialState::Complete);
    assert_eq!(t4.values, Some(vec![0.5, 0.5]));
    assert_eq!(t4.user_attr_str("written_by"), Some("optuna"));
    assert_eq!(t4.params.len(), 3);
    for p in &t4.params {
        let ours = &trials[0].param(&p.name).unwrap().distribution;
        assert_eq!(&p.distribution, ours, "{}", p.name);
    }
    // Our next trial continues after Optuna's.
    let next = store
        .start_trial(info.id, &params("sgd", 1e-3, 10))
        .unwrap();
    assert_eq!(next.number, 5);
    let told = common::run_python(&python, &["tell", db_text, "single"]);
    assert_eq!(told["number"], json!(4));
    let info = store.require_study("single").unwrap();
    let trials = store.trials(info.id).unwrap();
    let t4 = by_number(&trials, 4);
    assert_eq!(t4.values, Some(vec![0.5]));
    assert_eq!(t4.intermediate_values.get(&0), Some(&0.25));
    let pruned = by_number(&trials, 3);
    assert_eq!(pruned.state, TrialState::Pruned);
    assert_eq!(pruned.values, Some(vec![0.05]));
    store.integrity_check().unwrap();

    // A database Optuna creates has exactly our schema, and we read its study.
    common::run_python(&python, &["create", &theirs.python_arg()]);
    match (&ours.storage, &theirs.storage) {
        (Storage::Sqlite { path: a }, Storage::Sqlite { path: b }) => {
            assert_eq!(schema_rows(b), schema_rows(a));
        }
        _ => assert_eq!(postgres_schema(&theirs.url), postgres_schema(&ours.url)),
    }
    let theirs = theirs.open_existing();
    let info = theirs.require_study("from-optuna").unwrap();
    assert_eq!(info.directions, vec![Direction::Maximize]);
    let trials = theirs.trials(info.id).unwrap();
    assert_eq!(trials.len(), 2);
    for t in &trials {
        assert_eq!(t.state, TrialState::Complete);
        assert_eq!(t.values, Some(vec![0.75]));
        assert_eq!(t.user_attr_f64("natural_accuracy"), Some(0.9));
        let Some(ParamValue::Int(width)) = t.param("width").and_then(|p| p.value()) else {
            panic!("width is not an int: {t:?}");
        };
        assert!((8..=64).contains(&width) && width % 8 == 0);
        assert!(matches!(
            t.param("act").and_then(|p| p.value()),
            Some(ParamValue::Choice(Value::String(_)))
        ));
    }
}

// ------------------------------------------------------------------ inspection commands

fn cthpo(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cthpo"))
        .args(args)
        .output()
        .expect("run cthpo")
}

fn stdout_of(args: &[&str]) -> String {
    let out = cthpo(args);
    assert!(
        out.status.success(),
        "cthpo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn inspection_commands_report_and_export_the_best_trial(db: &Db) {
    let dir = &db.dir;
    let d = dir.to_str().unwrap();
    let storage = db.url.as_str();
    {
        let store = db.open();
        let study = store
            .create_or_load_study("cli-study", &[Direction::Minimize], &BTreeMap::new())
            .unwrap();
        for (i, (opt, lr, width, value)) in [
            ("sgd", 0.01, 16, 0.4),
            ("adam", 2.5e-4, 128, 0.2),
            ("sgd", 0.05, 32, 0.3),
        ]
        .into_iter()
        .enumerate()
        {
            let t = store.start_trial(study, &params(opt, lr, width)).unwrap();
            let rel = Store::checkpoint_rel_path("cli-study", t.number);
            let ckpt = store.checkpoint_dir("cli-study", t.number);
            std::fs::create_dir_all(ckpt.join("sub")).unwrap();
            std::fs::write(ckpt.join("model.safetensors"), format!("weights {i}")).unwrap();
            std::fs::write(ckpt.join("sub/log.txt"), "epoch 1").unwrap();
            store
                .set_trial_user_attr(
                    &t,
                    store::attrs::CHECKPOINT_PATH,
                    &json!(rel.to_str().unwrap()),
                )
                .unwrap();
            for (key, v) in [
                (store::attrs::NATURAL_ACCURACY, 0.9 - value / 10.0),
                (store::attrs::ADVERSARIAL_ACCURACY, 0.8 - value / 10.0),
                (store::attrs::CERTIFIED_ACCURACY, 0.7 - value / 10.0),
            ] {
                store.set_trial_user_attr(&t, key, &json!(v)).unwrap();
            }
            complete(&store, &t, vec![value]);
        }
        let failed = store.start_trial(study, &params("sgd", 0.1, 8)).unwrap();
        fail(&store, &failed, "out, of \"time\"");
    }

    let overview = stdout_of(&["status", "--dir", d, "--storage", storage]);
    assert!(overview.contains("cli-study"), "{overview}");
    assert!(overview.contains("#1"), "{overview}");
    let detail = stdout_of(&["status", "cli-study", "--dir", d, "--storage", storage]);
    assert!(detail.contains("best trial  #1"), "{detail}");
    assert!(
        detail.contains("68.0%"),
        "certified accuracy of the best: {detail}"
    );
    let json_of = |command: &str| -> Value {
        let args = [
            command,
            "cli-study",
            "--dir",
            d,
            "--storage",
            storage,
            "--json",
        ];
        serde_json::from_str(&stdout_of(&args)).unwrap()
    };
    let status = json_of("status");
    assert_eq!(status["states"]["COMPLETE"], json!(3));
    assert_eq!(status["states"]["FAIL"], json!(1));
    assert_eq!(status["best"]["number"], json!(1));

    let list = json_of("trials");
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 4);
    assert_eq!(
        list[1]["params"],
        json!({"optimizer": "adam", "lr": 2.5e-4, "width": 128})
    );
    assert_eq!(list[3]["state"], json!("FAIL"));
    let csv = stdout_of(&[
        "trials",
        "cli-study",
        "--dir",
        d,
        "--storage",
        storage,
        "--csv",
    ]);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 5, "{csv}");
    assert!(lines[0].starts_with("number,state,"), "{csv}");
    assert!(
        lines[0].contains("params_optimizer") && lines[0].contains("user_attrs_failure_reason")
    );
    assert!(
        lines[4].contains("\"out, of \"\"time\"\"\""),
        "CSV quoting: {csv}"
    );
    let table = stdout_of(&["trials", "cli-study", "--dir", d, "--storage", storage]);
    assert!(table.contains("failed: out, of \"time\""), "{table}");

    let yaml_path = dir.join("best.yaml");
    let copy = dir.join("best-checkpoint");
    let y = yaml_path.to_str().unwrap();
    let c = copy.to_str().unwrap();
    stdout_of(&[
        "best",
        "cli-study",
        "--dir",
        d,
        "--storage",
        storage,
        "--export",
        y,
        "--checkpoint",
        c,
    ]);
    let exported: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(&yaml_path).unwrap()).unwrap();
    assert_eq!(
        exported,
        json!({"optimizer": "adam", "lr": 2.5e-4, "width": 128})
    );
    assert_eq!(
        std::fs::read_to_string(copy.join("model.safetensors")).unwrap(),
        "weights 1"
    );
    assert_eq!(
        std::fs::read_to_string(copy.join("sub/log.txt")).unwrap(),
        "epoch 1"
    );
    // A non-empty destination is never overwritten.
    let again = cthpo(&[
        "best",
        "cli-study",
        "--dir",
        d,
        "--storage",
        storage,
        "--checkpoint",
        c,
    ]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("best-checkpoint"));
    // Printing to stdout gives the same YAML.
    let printed: Value = serde_saphyr::from_str(&stdout_of(&[
        "best",
        "cli-study",
        "--dir",
        d,
        "--storage",
        storage,
    ]))
    .unwrap();
    assert_eq!(printed, exported);

    // Clear errors for a wrong directory or study name.
    let missing = cthpo(&["status", "--dir", dir.join("nope").to_str().unwrap()]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cthpo.db"));
    let unknown = cthpo(&["trials", "no-such-study", "--dir", d, "--storage", storage]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("cli-study"));
}
