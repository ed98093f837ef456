//! The study loop: ask → train → score → store → tell until the trial or time budget is spent.
//!
//! Every trial is RUNNING in the database before training starts and is finished (COMPLETE or
//! FAIL with a reason) as soon as it ends, so a killed process leaves evidence: on the next run
//! its trial is marked interrupted and its configuration is run again first, as is the
//! configuration of a trial stopped with Ctrl-C. The
//! optimiser is rebuilt from the stored trials before every ask, so two processes on one study
//! share what they learn and never propose a configuration the other is running.

use super::StudyError;
use super::spec::{ObjectiveKind, StudySpec};
use super::trial::{StudyData, TrialFailure, TrialHooks, TrialScores, run_trial};
use crate::opt::{Optimizer, OptimizerOptions, Outcome};
use crate::space::{Config, ParamKind, Space, Value};
use crate::store::{
    Direction, ParamDistribution, ParamValue, Store, StoredParam, StoredTrial, TrialHandle,
    TrialOutcome, TrialState, attrs,
};
use crate::train::BatchProgress;
use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Study user attribute holding the resolved [`StudySpec`] (what `cthpo resume` reruns).
pub const SPEC_ATTRIBUTE: &str = "cthpo_spec";
/// Failure reason of a trial whose process died (stored as interrupted, so it runs again).
pub const PROCESS_STOPPED: &str = "interrupted: the process running it stopped";
/// A RUNNING trial whose heartbeat is older than this belongs to a dead process.
const STALE_AFTER: Duration = Duration::from_secs(120);
/// How often a running trial refreshes its heartbeat.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(20);

/// What the driver reports to a display (progress bars, logs).
pub trait StudyDisplay {
    /// A trial starts: its number, the count done so far, the budget, and its configuration.
    fn trial_started(&mut self, number: i64, done: usize, budget: usize, config: &Config);
    /// Progress inside the running trial.
    fn batch(&mut self, progress: &BatchProgress);
    /// A trial finished (scores) or failed (reason).
    fn trial_finished(
        &mut self,
        number: i64,
        result: &Result<TrialScores, TrialFailure>,
        best: Option<f64>,
    );
    /// A note for the user (resume, budgets).
    fn note(&mut self, message: &str);
}

/// How a study run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct StudyOutcome {
    /// Trials completed in the study (all runs).
    pub completed: usize,
    /// Trials failed (all runs, not counting interrupted ones).
    pub failed: usize,
    /// Best weighted objective so far.
    pub best_objective: Option<f64>,
    /// The user stopped the run (Ctrl-C).
    pub interrupted: bool,
}

/// Runs (or continues) the study `spec` in the study directory `dir`.
pub fn run_study(
    spec: &StudySpec,
    dir: &Path,
    display: &mut dyn StudyDisplay,
    cancel: &AtomicBool,
) -> Result<StudyOutcome, StudyError> {
    let space = Space::builtin(&spec.method).map_err(|e| StudyError::setting("method", e))?;
    let first = match &spec.default_config {
        Some(path) => Some(
            crate::space::load_config_file(&space, path)
                .map_err(|e| StudyError::setting("default_config", e))?,
        ),
        None => None,
    };
    // Everything a trial needs (the data loads, the sample counts fit, the network builds on
    // its images) is checked before the study is created or its settings are written.
    let data = StudyData::load(spec)?;
    let store = Store::open(dir)?;
    check_same_study(&store, spec)?;
    let directions = match spec.objective {
        ObjectiveKind::Weighted => vec![Direction::Maximize],
        ObjectiveKind::Pareto => vec![Direction::Maximize, Direction::Maximize],
    };
    let spec_json = serde_json::to_value(spec)?;
    let mut study_attrs = BTreeMap::new();
    study_attrs.insert(SPEC_ATTRIBUTE.to_string(), spec_json);
    let study = store.create_or_load_study(&spec.name, &directions, &study_attrs)?;

    let mut stale = fail_dead_local_trials(&store, study)?;
    stale.extend(store.mark_stale_running_as_failed(study, STALE_AFTER, PROCESS_STOPPED)?);
    if !stale.is_empty() {
        display.note(&format!(
            "{} trial(s) left running by a stopped process were marked interrupted",
            stale.len()
        ));
    }
    let mut rerun: VecDeque<Config> = interrupted_not_rerun(&store.trials(study)?)
        .into_iter()
        .filter_map(|t| stored_config(&space, t))
        .collect();
    if !rerun.is_empty() {
        display.note(&format!(
            "{} interrupted trial(s) will run again first",
            rerun.len()
        ));
    }
    let start = Instant::now();
    let previously_spent: f64 = store
        .trials(study)?
        .iter()
        .filter_map(|t| t.duration_seconds)
        .sum();
    let mut interrupted = false;
    loop {
        let trials = store.trials(study)?;
        let counted = trials.iter().filter(|t| !t.is_interrupted()).count();
        if counted >= spec.trials {
            break;
        }
        if let Some(budget) = spec.time_budget {
            let spent = previously_spent + start.elapsed().as_secs_f64();
            if spent >= budget.as_secs_f64() {
                display.note(&format!(
                    "time budget of {} spent",
                    super::format_duration(budget)
                ));
                break;
            }
        }
        if cancel.load(Ordering::SeqCst) {
            interrupted = true;
            break;
        }
        let (config, proposal) = match rerun.pop_front() {
            Some(config) => (config, "rerun of an interrupted trial"),
            None => {
                let mut optimizer = rebuild_optimizer(&space, spec, first.clone(), &trials);
                let config = optimizer.ask();
                let how = optimizer.last_proposal().map_or("design", |p| p.describe());
                (config, how)
            }
        };
        // Ctrl-C while the optimiser was thinking: stop before a trial is started.
        if cancel.load(Ordering::SeqCst) {
            interrupted = true;
            break;
        }
        let params = stored_params(&space, &config)?;
        let handle = store.start_trial(study, &params)?;
        store.set_trial_user_attr(&handle, OWNER_ATTRIBUTE, &owner().into())?;
        store.set_trial_user_attr(&handle, attrs::PROPOSAL, &proposal.into())?;
        display.trial_started(handle.number, counted, spec.trials, &config);
        let checkpoint = store.checkpoint_dir(&spec.name, handle.number);
        let mut hooks = Hooks {
            store: &store,
            handle,
            display: &mut *display,
            last_heartbeat: Instant::now(),
        };
        let trial_start = Instant::now();
        let result = run_trial(
            spec,
            &data,
            &crate::space::to_json_map(&config),
            &checkpoint,
            &mut hooks,
            cancel,
        );
        finish(&store, &handle, spec, &result, trial_start.elapsed())?;
        let best = best_objective(&store.trials(study)?, &directions);
        display.trial_finished(handle.number, &result, best);
        if let Err(failure) = &result
            && failure.interrupted
        {
            interrupted = true;
            break;
        }
    }
    let trials = store.trials(study)?;
    Ok(StudyOutcome {
        completed: trials
            .iter()
            .filter(|t| t.state == TrialState::Complete)
            .count(),
        failed: trials
            .iter()
            .filter(|t| t.state == TrialState::Fail && !t.is_interrupted())
            .count(),
        best_objective: best_objective(&trials, &directions),
        interrupted,
    })
}

/// Trial user attribute `host:pid` of the process running it, so a rerun on the same machine
/// can tell at once that a RUNNING trial's process is gone (kill -9, power loss).
pub const OWNER_ATTRIBUTE: &str = "cthpo_owner";

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown-host".into())
}

fn owner() -> String {
    format!("{}:{}", hostname(), std::process::id())
}

/// Marks FAIL "interrupted" the RUNNING trials of this machine whose process no longer exists
/// (other machines' trials are left to the heartbeat rule).
fn fail_dead_local_trials(
    store: &Store,
    study: crate::store::StudyId,
) -> Result<Vec<StoredTrial>, StudyError> {
    let host = hostname();
    let mut failed = Vec::new();
    for trial in store.trials(study)? {
        if trial.state != TrialState::Running {
            continue;
        }
        let Some((trial_host, pid)) = trial
            .user_attr_str(OWNER_ATTRIBUTE)
            .and_then(|o| o.rsplit_once(':'))
        else {
            continue;
        };
        let alive = Path::new(&format!("/proc/{pid}")).exists();
        if trial_host == host && !alive && Path::new("/proc/self").exists() {
            let handle = TrialHandle {
                study_id: study,
                trial_id: trial.trial_id,
                number: trial.number,
            };
            let outcome = TrialOutcome::Interrupted {
                reason: PROCESS_STOPPED.into(),
            };
            // Another process may have finished it in the meantime: then it is not ours to fail.
            if store.finish_trial(&handle, &outcome).is_ok() {
                failed.push(trial);
            }
        }
    }
    Ok(failed)
}

/// A study name reused with different settings would mix incomparable trials: refuse it.
fn check_same_study(store: &Store, spec: &StudySpec) -> Result<(), StudyError> {
    let Some(info) = store.study_by_name(&spec.name)? else {
        return Ok(());
    };
    let Some(stored) = info.user_attrs.get(SPEC_ATTRIBUTE) else {
        return Ok(());
    };
    let Ok(stored) = serde_json::from_value::<StudySpec>(stored.clone()) else {
        return Ok(());
    };
    let samples = |n: Option<usize>| n.map_or_else(|| "all".to_string(), |n| n.to_string());
    let weights = |w: &super::ObjectiveWeights| {
        format!(
            "nat={},adv={},cert={}",
            w.natural, w.adversarial, w.certified
        )
    };
    let dataset = |name: &str| super::canonical_dataset(name).unwrap_or_else(|_| name.into());
    // Every setting that changes how a trial is trained or scored: trials that differ in one
    // of them are not comparable, and `best` would pick among them.
    for (field, ours, theirs) in [
        ("method", spec.method.clone(), stored.method.clone()),
        ("dataset", dataset(&spec.dataset), dataset(&stored.dataset)),
        ("arch", spec.arch.clone(), stored.arch.clone()),
        ("eps", spec.eps.to_string(), stored.eps.to_string()),
        ("epochs", spec.epochs.to_string(), stored.epochs.to_string()),
        (
            "train_samples",
            samples(spec.train_samples),
            samples(stored.train_samples),
        ),
        (
            "val_samples",
            spec.val_samples.to_string(),
            stored.val_samples.to_string(),
        ),
        ("seed", spec.seed.to_string(), stored.seed.to_string()),
        (
            "objective",
            format!("{:?}", spec.objective).to_lowercase(),
            format!("{:?}", stored.objective).to_lowercase(),
        ),
        ("weights", weights(&spec.weights), weights(&stored.weights)),
    ] {
        if ours != theirs {
            return Err(StudyError::invalid(
                field,
                format!(
                    "study `{}` already exists with {field} = {theirs}, not {ours}: pass --name to start a new study",
                    spec.name
                ),
            ));
        }
    }
    Ok(())
}

/// Interrupted trials (Ctrl-C, a stopped process) whose configuration no later trial has
/// run or is running: the configurations to run again first, oldest first.
fn interrupted_not_rerun(trials: &[StoredTrial]) -> Vec<&StoredTrial> {
    trials
        .iter()
        .filter(|t| {
            t.is_interrupted()
                && !trials
                    .iter()
                    .any(|later| later.number > t.number && later.params == t.params)
        })
        .collect()
}

/// The weighted objective of the study's best trial (the store's rule, [`crate::store::best_trial`]).
fn best_objective(trials: &[StoredTrial], directions: &[Direction]) -> Option<f64> {
    crate::store::best_trial(trials, directions).and_then(|t| t.user_attr_f64(attrs::OBJECTIVE))
}

/// The optimiser as the stored trials leave it: completed trials are told their costs, failed
/// ones count as the worst, running ones (another process) are pending.
fn rebuild_optimizer(
    space: &Space,
    spec: &StudySpec,
    first: Option<Config>,
    trials: &[StoredTrial],
) -> Optimizer {
    let options = OptimizerOptions {
        seed: spec.seed,
        trial_budget: spec.trials,
        first,
        skip_default: spec.no_default,
        surrogate: spec.surrogate,
        ..OptimizerOptions::default()
    };
    let mut optimizer = Optimizer::new(space.clone(), options);
    for trial in trials {
        let Some(config) = stored_config(space, trial) else {
            continue;
        };
        match (trial.state, &trial.values) {
            (TrialState::Complete, Some(values)) => {
                let costs: Vec<f64> = values.iter().map(|v| -v).collect();
                let outcome = if costs.len() == 1 {
                    Outcome::Cost(costs[0])
                } else {
                    Outcome::Costs(costs)
                };
                optimizer.tell(&config, outcome);
            }
            (TrialState::Running, _) => optimizer.mark_pending(&config),
            _ if trial.is_interrupted() => {}
            _ => optimizer.tell(&config, Outcome::Failed),
        }
    }
    optimizer
}

/// Optuna-style params of a configuration (constants stored as one-choice categoricals).
fn stored_params(space: &Space, config: &Config) -> Result<Vec<StoredParam>, StudyError> {
    let mut params = Vec::new();
    for param in space.params() {
        let Some(value) = config.get(&param.name) else {
            continue;
        };
        let (distribution, external) = match (&param.kind, value) {
            (ParamKind::Float { lower, upper, log }, Value::Float(x)) => (
                ParamDistribution::Float {
                    low: *lower,
                    high: *upper,
                    log: *log,
                    step: None,
                },
                ParamValue::Float(*x),
            ),
            (ParamKind::Int { lower, upper, log }, Value::Int(i)) => (
                ParamDistribution::Int {
                    low: *lower,
                    high: *upper,
                    log: *log,
                    step: 1,
                },
                ParamValue::Int(*i),
            ),
            (ParamKind::Categorical { choices }, Value::Str(s)) => (
                ParamDistribution::Categorical {
                    choices: choices
                        .iter()
                        .map(|c| serde_json::Value::from(c.clone()))
                        .collect(),
                },
                ParamValue::Choice(serde_json::Value::from(s.clone())),
            ),
            (ParamKind::Constant, value) => {
                let json =
                    crate::space::to_json_map(&BTreeMap::from([(String::new(), value.clone())]))
                        .remove("")
                        .unwrap_or(serde_json::Value::Null);
                (
                    ParamDistribution::Categorical {
                        choices: vec![json.clone()],
                    },
                    ParamValue::Choice(json),
                )
            }
            (_, value) => {
                return Err(StudyError::invalid(
                    &param.name,
                    format!("value {value} does not fit the parameter"),
                ));
            }
        };
        params.push(StoredParam::new(&param.name, distribution, external)?);
    }
    Ok(params)
}

/// The configuration a stored trial ran (None if it does not fit the space any more).
fn stored_config(space: &Space, trial: &StoredTrial) -> Option<Config> {
    let mut config = Config::new();
    for param in &trial.params {
        let value = match param.value()? {
            ParamValue::Float(x) => Value::Float(x),
            ParamValue::Int(i) => Value::Int(i),
            ParamValue::Choice(serde_json::Value::String(s)) => Value::Str(s),
            ParamValue::Choice(serde_json::Value::Number(n)) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64()?),
            },
            ParamValue::Choice(_) => return None,
        };
        config.insert(param.name.clone(), value);
    }
    space.complete(&config).ok()
}

fn finish(
    store: &Store,
    handle: &TrialHandle,
    spec: &StudySpec,
    result: &Result<TrialScores, TrialFailure>,
    duration: Duration,
) -> Result<(), StudyError> {
    let set = |key: &str, value: serde_json::Value| store.set_trial_user_attr(handle, key, &value);
    set(attrs::DURATION_SECONDS, duration.as_secs_f64().into())?;
    let outcome = match result {
        Ok(scores) => {
            set(attrs::NATURAL_ACCURACY, scores.natural_accuracy.into())?;
            set(
                attrs::ADVERSARIAL_ACCURACY,
                scores.adversarial_accuracy.into(),
            )?;
            set(attrs::CERTIFIED_ACCURACY, scores.certified_accuracy.into())?;
            set(attrs::OBJECTIVE, scores.objective.into())?;
            let checkpoint = Store::checkpoint_rel_path(&spec.name, handle.number);
            set(
                attrs::CHECKPOINT_PATH,
                checkpoint.display().to_string().into(),
            )?;
            TrialOutcome::Complete {
                values: scores.values.clone(),
            }
        }
        Err(failure) if failure.interrupted => TrialOutcome::Interrupted {
            reason: failure.reason.clone(),
        },
        Err(failure) => TrialOutcome::Fail {
            reason: failure.reason.clone(),
        },
    };
    Ok(store.finish_trial(handle, &outcome)?)
}

struct Hooks<'a> {
    store: &'a Store,
    handle: TrialHandle,
    display: &'a mut dyn StudyDisplay,
    last_heartbeat: Instant,
}

impl TrialHooks for Hooks<'_> {
    fn on_epoch(&mut self, epoch: usize, validation_accuracy: f64) {
        // A failed write of a learning-curve point must not kill the trial.
        let _ = self
            .store
            .report_intermediate(&self.handle, epoch as i64, validation_accuracy);
        self.last_heartbeat = Instant::now();
    }

    fn on_batch(&mut self, progress: &BatchProgress) {
        self.display.batch(progress);
        if self.last_heartbeat.elapsed() >= HEARTBEAT_EVERY {
            let _ = self.store.record_heartbeat(&self.handle);
            self.last_heartbeat = Instant::now();
        }
    }
}
