//! Multi-fidelity studies end to end: configurations stop (PRUNED) at rungs and promotions
//! continue their checkpoints, a study stopped mid-bracket resumes the same brackets, and two
//! processes on one study never continue a trial twice, on SQLite and on PostgreSQL (the
//! PostgreSQL test needs `CTHPO_TEST_POSTGRES_URL`; ignored by default, `.ci/run` runs it).

use cthpo::store::{Storage, Store, StoredTrial, TrialState, attrs, split_checkpoint_host};
use cthpo::train::read_sidecar;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod common;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cthpo-fidelity-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

const NAME: &str = "standard-mnist-cnn-small-eps0.1";

/// Successive halving over rungs of 1, 2 and 4 epochs (η = 2) with fast standard training,
/// without the seeded default configuration (which is never pruned; see
/// [`with_the_default`]), so that every promotion is by rank.
fn halving_study<'a>(d: &'a str, trials: &'a str) -> Vec<&'a str> {
    vec![
        "run",
        "--method",
        "standard",
        "--fidelity",
        "successive-halving",
        "--epochs",
        "4",
        "--min-epochs",
        "1",
        "--eta",
        "2",
        "--train-samples",
        "300",
        "--val-samples",
        "30",
        "--trials",
        trials,
        "--dir",
        d,
        "--no-default",
    ]
}

/// The same study with the space's default configuration trained first.
fn with_the_default(mut args: Vec<&str>) -> Vec<&str> {
    args.retain(|&a| a != "--no-default");
    args
}

fn cthpo(args: &[&str]) {
    let output = Command::new(env!("CARGO_BIN_EXE_cthpo"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn trials(dir: &Path) -> Vec<StoredTrial> {
    trials_at(&Storage::sqlite_in(dir), dir)
}

fn trials_at(storage: &Storage, dir: &Path) -> Vec<StoredTrial> {
    let store = Store::open_existing_at(storage, dir).unwrap();
    let study = store.require_study(NAME).unwrap();
    store.trials(study.id).unwrap()
}

fn attr(trial: &StoredTrial, key: &str) -> Option<i64> {
    trial.user_attr_f64(key).map(|v| v as i64)
}

/// What every multi-fidelity study of [`halving_study`] must satisfy (`sequential`: run by one
/// worker at a time); returns the numbers of the trials continued.
fn check_rungs(dir: &Path, trials: &[StoredTrial], sequential: bool) -> Vec<i64> {
    let rung_epochs: [i64; 3] = [1, 2, 4];
    let mut continued = Vec::new();
    for trial in trials.iter().filter(|t| !t.is_interrupted()) {
        let rung = attr(trial, attrs::RUNG).expect("every trial has a rung") as usize;
        assert_eq!(attr(trial, attrs::BRACKET), Some(0), "one bracket");
        assert_eq!(attr(trial, attrs::RUNG_EPOCHS), Some(rung_epochs[rung]));
        let expected = if rung < 2 {
            TrialState::Pruned
        } else {
            TrialState::Complete
        };
        assert_eq!(trial.state, expected, "trial {}", trial.number);
        // Rungs below the full budget are scored quick at the reached ε (the default), the
        // last one in full; standard training has no ε schedule, so every rung is scored at
        // the study's ε.
        let scoring = if rung < 2 { "reached" } else { "full" };
        assert_eq!(
            trial.user_attr_str(attrs::SCORING),
            Some(scoring),
            "trial {}",
            trial.number
        );
        assert_eq!(trial.user_attr_f64(attrs::RUNG_EPS), Some(0.1));
        // The rung score is the last intermediate value and (one objective) the value.
        let values = trial.values.clone().unwrap();
        assert_eq!(
            trial.intermediate_values.get(&rung_epochs[rung]),
            Some(&values[0])
        );
        // Relative to the study directory, or host:/absolute/path with a server storage.
        let stored = trial.user_attr_str(attrs::CHECKPOINT_PATH).unwrap();
        let checkpoint = dir.join(split_checkpoint_host(stored).1);
        let sidecar = read_sidecar(&checkpoint.join("model.json")).unwrap();
        assert_eq!(
            sidecar.epochs as i64, rung_epochs[rung],
            "trial {}",
            trial.number
        );
        match attr(trial, attrs::CONTINUES) {
            None => assert_eq!(rung, 0, "a new configuration starts at the first rung"),
            Some(from) => {
                let source = trials.iter().find(|t| t.number == from).unwrap();
                assert_eq!(source.state, TrialState::Pruned);
                assert_eq!(attr(source, attrs::RUNG), Some(rung as i64 - 1));
                assert_eq!(source.params, trial.params, "same configuration");
                assert!(source.number < trial.number);
                // The continuation's learning curve starts with the source's rung scores.
                for (step, value) in &source.intermediate_values {
                    assert_eq!(trial.intermediate_values.get(step), Some(value));
                }
                continued.push(from);
            }
        }
    }
    let mut unique = continued.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        continued.len(),
        "a trial was continued twice: {continued:?}"
    );
    if sequential {
        // One worker: when continuation `c` started, the trials that had reached its source's
        // rung were those numbered below `c`; the source ranked in the top ⌊n/η⌋ of them.
        for trial in trials.iter().filter(|t| !t.is_interrupted()) {
            let Some(from) = attr(trial, attrs::CONTINUES) else {
                continue;
            };
            let rung = attr(trial, attrs::RUNG).unwrap() - 1;
            let score = |t: &StoredTrial| t.values.as_ref().unwrap()[0];
            let mut reached: Vec<&StoredTrial> = trials
                .iter()
                .filter(|t| t.number < trial.number && t.state == TrialState::Pruned)
                .filter(|t| attr(t, attrs::RUNG) == Some(rung))
                .collect();
            reached.sort_by(|a, b| score(b).total_cmp(&score(a)));
            let places = reached.len() / 2;
            assert!(
                reached[..places].iter().any(|t| t.number == from),
                "trial {from} promoted by trial {} outside the top {places} of rung {rung}",
                trial.number
            );
        }
    }
    continued
}

#[test]
fn a_halving_study_stops_at_rungs_and_resumes_mid_bracket() {
    let dir = temp_dir("resume");
    let d = dir.to_str().unwrap();
    cthpo(&halving_study(d, "3"));
    let first = trials(&dir);
    assert_eq!(first.len(), 3);
    // Two configurations at the first rung; the better one goes on to the second.
    let continued = check_rungs(&dir, &first, true);
    assert_eq!(continued.len(), 1);
    let best = first[..2]
        .iter()
        .max_by(|a, b| a.values.as_ref().unwrap()[0].total_cmp(&b.values.as_ref().unwrap()[0]))
        .unwrap();
    assert_eq!(continued, [best.number]);
    assert!(first.iter().all(|t| t.state == TrialState::Pruned));

    // `resume` continues the stored brackets (it takes the settings from the study).
    cthpo(&["resume", NAME, "--dir", d, "--trials", "9"]);
    let all = trials(&dir);
    assert_eq!(all.len(), 9);
    assert_eq!(&all[..3], &first[..], "stored trials are left alone");
    check_rungs(&dir, &all, true);
    assert!(
        all.iter().any(|t| t.state == TrialState::Complete),
        "a configuration reached the full budget"
    );
    // The surrogate learns every rung's scores; a configuration paused at a rung is never
    // proposed again as a new one (only continued).
    assert!(
        all.iter()
            .any(|t| t.user_attr_str("proposal") == Some("surrogate model")),
        "the surrogate proposed some trials"
    );
    let new_configurations: Vec<&StoredTrial> = all
        .iter()
        .filter(|t| attr(t, "continues_trial").is_none())
        .collect();
    for (i, a) in new_configurations.iter().enumerate() {
        for b in &new_configurations[i + 1..] {
            assert_ne!(a.params, b.params, "trials {} and {}", a.number, b.number);
        }
    }
    // `trials`, `status` and the history plot show the rungs and the pruned trials.
    let output = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_cthpo"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let listed = output(&["trials", NAME, "--dir", d]);
    assert!(listed.contains("PRUNED"), "{listed}");
    let promotion = format!(
        "rung 1 (2 epochs), continues #{}, quick scoring at ε = 0.1000",
        best.number
    );
    assert!(listed.contains(&promotion), "{listed}");
    let status = output(&["status", NAME, "--dir", d]);
    assert!(
        status.contains("rung  epochs  pruned  complete  running"),
        "{status}"
    );
    output(&["plot", NAME, "--dir", d]);
    let svg =
        std::fs::read_to_string(dir.join("plots").join(format!("{NAME}-history.svg"))).unwrap();
    assert!(svg.contains("pruned trial (rung score)"));
    // Other fidelity settings under the same name are refused, not mixed in.
    let mut clash = halving_study(d, "10");
    clash[4] = "hyperband";
    let output = Command::new(env!("CARGO_BIN_EXE_cthpo"))
        .args(&clash)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("fidelity"));
}

#[test]
fn rung_scoring_full_scores_every_rung_in_full_and_needs_rungs() {
    let dir = temp_dir("full-scoring");
    let d = dir.to_str().unwrap();
    let mut args = halving_study(d, "3");
    args.extend_from_slice(&["--rung-scoring", "full"]);
    cthpo(&args);
    let all = trials(&dir);
    assert_eq!(all.len(), 3);
    for trial in &all {
        assert_eq!(trial.state, TrialState::Pruned);
        assert_eq!(trial.user_attr_str(attrs::SCORING), Some("full"));
    }
    // The setting is stored with the study: a quick-scored run under the name is refused.
    let refused = Command::new(env!("CARGO_BIN_EXE_cthpo"))
        .args(halving_study(d, "4"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("rung_scoring"));
    // Quick scoring without rungs is refused before any work.
    let mut none = halving_study(d, "1");
    none[4] = "none";
    none.extend_from_slice(&["--rung-scoring", "quick", "--name", "no-rungs"]);
    let refused = Command::new(env!("CARGO_BIN_EXE_cthpo"))
        .args(&none)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("rung_scoring"), "{stderr}");
    assert!(
        !study_exists(&dir, "no-rungs"),
        "a refused setting starts no study"
    );
}

#[test]
fn the_seeded_default_is_never_pruned_and_scores_as_in_a_study_without_rungs() {
    let dir = temp_dir("default");
    let d = dir.to_str().unwrap();
    cthpo(&with_the_default(halving_study(d, "4")));
    let all = trials(&dir);
    assert_eq!(all.len(), 4);
    check_rungs(&dir, &all, false);
    // Trial 0, the default, is alone at the first rung (⌊1/2⌋ = 0 places: ranked, it would
    // wait there), yet it goes on at once to 2 and then 4 epochs, before any new
    // configuration.
    let chain: Vec<(Option<i64>, Option<i64>, TrialState)> = all[..3]
        .iter()
        .map(|t| (attr(t, attrs::RUNG), attr(t, attrs::CONTINUES), t.state))
        .collect();
    assert_eq!(
        chain,
        [
            (Some(0), None, TrialState::Pruned),
            (Some(1), Some(0), TrialState::Pruned),
            (Some(2), Some(1), TrialState::Complete),
        ]
    );
    assert!(all[..3].iter().all(|t| t.params == all[0].params));
    assert_eq!(attr(&all[3], attrs::CONTINUES), None);
    assert_ne!(all[3].params, all[0].params, "then a new configuration");
    // Its full-budget score is, bit for bit, the one a study without rungs gives it (same
    // seed, continuation equal to uninterrupted training, the same full scoring).
    let plain = temp_dir("default-none");
    let mut none = with_the_default(halving_study(plain.to_str().unwrap(), "1"));
    none[4] = "none";
    cthpo(&none);
    let without_rungs = trials(&plain);
    assert_eq!(without_rungs[0].params, all[0].params);
    assert_eq!(without_rungs[0].values, all[2].values);
    for key in [attrs::NATURAL_ACCURACY, attrs::CERTIFIED_ACCURACY] {
        assert_eq!(
            without_rungs[0].user_attr_f64(key),
            all[2].user_attr_f64(key),
            "{key}"
        );
    }
}

fn study_exists(dir: &Path, name: &str) -> bool {
    let store = Store::open_existing_at(&Storage::sqlite_in(dir), dir).unwrap();
    store.study_by_name(name).unwrap().is_some()
}

/// Two `cthpo run` processes share one successive-halving study of 16 trials in `dir` (and
/// `extra` arguments, e.g. a storage): no trial is continued twice, and promotions happened.
fn two_processes_share_a_study(dir: &Path, extra: &[&str]) {
    let d = dir.to_str().unwrap();
    // Create the study first so that both workers join it.
    let mut first = with_the_default(halving_study(d, "1"));
    first.extend_from_slice(extra);
    cthpo(&first);
    let mut args = with_the_default(halving_study(d, "16"));
    args.extend_from_slice(extra);
    let workers: Vec<_> = (0..2)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_cthpo"))
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for worker in workers {
        let output = worker.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let storage = match extra {
        ["--storage", url] => Storage::parse(url).unwrap(),
        _ => Storage::sqlite_in(dir),
    };
    let all = trials_at(&storage, dir);
    assert_eq!(all.len(), 16);
    let owners: std::collections::BTreeSet<_> = all
        .iter()
        .filter_map(|t| t.user_attr_str("cthpo_owner"))
        .collect();
    assert!(owners.len() >= 2, "both workers ran trials: {owners:?}");
    let continued = check_rungs(dir, &all, false);
    assert!(continued.len() >= 4, "promotions happened: {continued:?}");
    // The default configuration (trial 0) went on to the full budget, each rung once.
    let default_rungs: Vec<i64> = all
        .iter()
        .filter(|t| t.params == all[0].params && !t.is_interrupted())
        .filter_map(|t| attr(t, attrs::RUNG))
        .collect();
    assert_eq!(default_rungs, [0, 1, 2]);
}

#[test]
fn two_processes_never_continue_one_trial_twice() {
    two_processes_share_a_study(&temp_dir("workers"), &[]);
}

#[test]
#[ignore = "needs a PostgreSQL server (CTHPO_TEST_POSTGRES_URL); .ci/run runs it with --ignored"]
fn postgres_two_processes_never_continue_one_trial_twice() {
    let pg = common::PgDatabase::create("fidelity");
    two_processes_share_a_study(&temp_dir("workers-pg"), &["--storage", &pg.url]);
}

/// The finished trials of a 4-trial successive-halving IBP study named `name` in `dir` (rungs
/// of 1, 2 and 4 epochs; IBP has an ε schedule), run with `extra` arguments.
fn ibp_halving_trials(dir: &Path, name: &str, extra: &[&str]) -> Vec<StoredTrial> {
    let d = dir.to_str().unwrap();
    let mut args = halving_study(d, "4");
    args[2] = "ibp";
    args.extend_from_slice(&["--name", name]);
    args.extend_from_slice(extra);
    cthpo(&args);
    let store = Store::open_existing_at(&Storage::sqlite_in(dir), dir).unwrap();
    let study = store.require_study(name).unwrap();
    let finished: Vec<StoredTrial> = store
        .trials(study.id)
        .unwrap()
        .into_iter()
        .filter(|t| !t.is_interrupted())
        .collect();
    assert!(finished.len() >= 3, "{} trials", finished.len());
    finished
}

#[test]
fn rungs_of_an_eps_schedule_are_scored_at_the_reached_eps_and_the_full_budget_at_the_studys() {
    let dir = temp_dir("reached-eps");
    let d = dir.to_str().unwrap();
    let finished = ibp_halving_trials(&dir, "ibp-halving", &[]);
    let mut below = 0;
    for trial in &finished {
        let eps = trial
            .user_attr_f64(attrs::RUNG_EPS)
            .expect("rung_eps stored");
        let rung = attr(trial, attrs::RUNG).unwrap();
        if rung < 2 {
            assert_eq!(trial.user_attr_str(attrs::SCORING), Some("reached"));
            // Never below the floor of 1 % of ε, never above ε.
            assert!(
                (0.001..=0.1).contains(&eps),
                "trial {}: ε {eps}",
                trial.number
            );
            below += usize::from(eps < 0.1);
        } else {
            assert_eq!(trial.user_attr_str(attrs::SCORING), Some("full"));
            assert_eq!(eps, 0.1, "the full budget is scored at the study's ε");
        }
    }
    assert!(
        below > 0,
        "one epoch of four stops mid-way through some ε ramp"
    );
    let listed = Command::new(env!("CARGO_BIN_EXE_cthpo"))
        .args(["trials", "ibp-halving", "--dir", d])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains("quick scoring at ε = 0.0"), "{listed}");
}

#[test]
fn share_scoring_scores_every_trial_of_a_rung_at_its_share_of_the_budget() {
    let dir = temp_dir("share-eps");
    let finished = ibp_halving_trials(&dir, "ibp-share", &["--rung-scoring", "share"]);
    // Rungs of 1, 2 and 4 epochs of 4: ε = 0.1 · 1/4, 0.1 · 2/4, and the full budget's 0.1,
    // whatever each configuration's ε schedule reached.
    for trial in &finished {
        let (rung, eps) = (
            attr(trial, attrs::RUNG).unwrap(),
            trial.user_attr_f64(attrs::RUNG_EPS).unwrap(),
        );
        let (scoring, expected) = match rung {
            0 => ("share", 0.025),
            1 => ("share", 0.05),
            _ => ("full", 0.1),
        };
        assert_eq!(trial.user_attr_str(attrs::SCORING), Some(scoring));
        assert!(
            (eps - expected).abs() < 1e-12,
            "trial {}: ε {eps}",
            trial.number
        );
    }
}
