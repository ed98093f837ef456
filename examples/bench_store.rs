//! Throughput of the store's trial round trip with concurrent workers, on SQLite or PostgreSQL.
//!
//! `cargo run --release --example bench_store -- [--storage URL] [--workers 1,4,8]
//! [--trials 200]` runs, for each worker count, that many threads (each with its own
//! connection, as separate processes would have) on one fresh study until `--trials` trials
//! are done, and prints trials per second. Each trial is what `cthpo run` writes around an
//! instant training run: read the study's trials (to rebuild the optimiser), start a trial
//! with the budget and duplicate checks, record its owner and proposal, then its duration,
//! three accuracies, objective and checkpoint path, and finish it COMPLETE. Without
//! `--storage`, a temporary SQLite database is used.

use cthpo::store::{
    Direction, StartRules, Started, Storage, Store, StoredParam, TrialOutcome, attrs,
};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[path = "common/args.rs"]
mod args;
use args::Args;

const USAGE: &str = "the doc comment of examples/bench_store.rs";

/// Runs one worker until the study's budget is spent; returns the trials it finished.
fn worker(storage: &Storage, study_name: &str, budget: usize, next: &AtomicU64) -> usize {
    let dir = std::env::temp_dir();
    let store = Store::open_at(storage, &dir).expect("open the storage");
    let study = store
        .create_or_load_study(study_name, &[Direction::Maximize], &BTreeMap::new())
        .expect("create the study");
    let rules = StartRules {
        budget: Some(budget),
        interrupted_uncounted: true,
        unique: true,
    };
    let mut done = 0;
    loop {
        let trials = store.trials(study).expect("read trials");
        if trials.len() >= budget {
            return done;
        }
        // Distinct configurations, as the optimiser proposes them.
        let k = next.fetch_add(1, Ordering::SeqCst);
        let params = vec![
            StoredParam::float(
                "learning_rate",
                1e-5,
                1.0,
                true,
                1e-3 * (1.0 + k as f64 / 1e4),
            )
            .unwrap(),
            StoredParam::int("width", 1, 1_000_000, false, 1 + k as i64 % 1_000_000).unwrap(),
            StoredParam::categorical("optimizer", &["adam", "sgd"], "adam").unwrap(),
        ];
        let handle = match store.start_trial_checked(study, &params, rules).unwrap() {
            Started::Trial(handle) => handle,
            Started::Duplicate { .. } => continue,
            Started::BudgetSpent => return done,
        };
        let set = |key: &str, value: serde_json::Value| {
            store.set_trial_user_attr(&handle, key, &value).unwrap()
        };
        set("cthpo_owner", json!("bench:1"));
        set(attrs::PROPOSAL, json!("design"));
        set(attrs::DURATION_SECONDS, json!(0.0));
        set(attrs::NATURAL_ACCURACY, json!(0.9));
        set(attrs::ADVERSARIAL_ACCURACY, json!(0.8));
        set(attrs::CERTIFIED_ACCURACY, json!(0.7));
        set(attrs::OBJECTIVE, json!(2.4));
        set(attrs::CHECKPOINT_PATH, json!("bench/trial"));
        store
            .finish_trial(&handle, &TrialOutcome::Complete { values: vec![2.4] })
            .unwrap();
        done += 1;
    }
}

fn main() {
    let args = Args::from_env();
    args.check_known(&["--storage", "--workers", "--trials"], &[], USAGE);
    let temp = std::env::temp_dir().join(format!("cthpo-bench-store-{}", std::process::id()));
    let storage = match args.optional("--storage") {
        Some(url) => Storage::parse(&url).expect("--storage"),
        None => {
            std::fs::create_dir_all(&temp).unwrap();
            Storage::sqlite_in(&temp)
        }
    };
    let budget: usize = args.parsed("--trials", "200");
    let counts: Vec<usize> = args
        .value("--workers", "1,4,8")
        .split(',')
        .map(|w| w.trim().parse().expect("--workers takes numbers"))
        .collect();
    println!("storage {storage}, {budget} instant trials per run");
    println!("workers  trials/s  seconds");
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for workers in counts {
        let study_name = format!("bench-store-{stamp}-{workers}");
        // One connection first, so that the schema and study exist before the clock starts.
        Store::open_at(&storage, &temp)
            .unwrap()
            .create_or_load_study(&study_name, &[Direction::Maximize], &BTreeMap::new())
            .unwrap();
        let next = AtomicU64::new(0);
        let start = Instant::now();
        let done: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| scope.spawn(|| worker(&storage, &study_name, budget, &next)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        let seconds = start.elapsed().as_secs_f64();
        assert_eq!(done, budget, "every trial is finished exactly once");
        println!(
            "{workers:>7}  {:>8.1}  {seconds:>7.2}",
            done as f64 / seconds
        );
    }
    let _ = std::fs::remove_dir_all(&temp);
}
