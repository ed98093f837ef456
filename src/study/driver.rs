//! The study loop: ask → train → score → store → tell until the trial or time budget is spent.
//!
//! Every trial is RUNNING in the database before training starts and is finished (COMPLETE or
//! FAIL with a reason) as soon as it ends, so a killed worker leaves evidence: the next worker
//! to look (or the next run) marks its trial interrupted and runs its configuration again, as
//! it does for a trial stopped with Ctrl-C. The optimiser is rebuilt from the stored trials
//! before every ask, so workers on one study (processes, or machines sharing a PostgreSQL
//! server) share what they learn and never run a configuration another one is running.

use super::StudyError;
use super::progress;
use super::rungs;
use super::spec::{ObjectiveKind, StudySpec};
use super::trial::{Segment, StudyData, TrialFailure, TrialHooks, TrialScores, run_trial};
use crate::opt::{Optimizer, OptimizerOptions, Outcome};
use crate::space::{Config, ParamKind, Space, Value};
use crate::store::{
    Direction, ParamDistribution, ParamValue, StartRules, Started, Storage, Store, StoreError,
    StoredParam, StoredTrial, TrialHandle, TrialOutcome, TrialState, attrs,
};
use crate::train::BatchProgress;
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Study user attribute holding the resolved [`StudySpec`] (what `cthpo resume` reruns).
pub const SPEC_ATTRIBUTE: &str = "cthpo_spec";
/// Failure reason of a trial whose worker died; such trials are stored as interrupted and run
/// again.
pub const INTERRUPTED: &str = "interrupted";
/// How the trial user attribute `proposal` names the re-run of an interrupted trial.
const RERUN_PROPOSAL: &str = "rerun of an interrupted trial";
/// How the trial user attribute `proposal` names a promotion to the next rung.
const PROMOTION_PROPOSAL: &str = "promotion to the next rung";
/// Proposals in a row that may clash with stored trials before a random one is asked for.
const MAX_DUPLICATES: usize = 20;
/// How often a running trial refreshes its heartbeat by default.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(20);
/// A RUNNING trial whose heartbeat is this many intervals old belongs to a dead worker.
pub const STALE_AFTER_BEATS: u32 = 6;

/// What the driver reports to a display (progress bars, logs).
pub trait StudyDisplay {
    /// A trial starts: its number, the count done so far, the trial budget (None: time only),
    /// and its configuration.
    fn trial_started(&mut self, number: i64, done: usize, budget: Option<usize>, config: &Config);
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
    /// Trials stopped at a rung below the full budget (multi-fidelity studies).
    pub pruned: usize,
    /// Best weighted objective so far.
    pub best_objective: Option<f64>,
    /// The user stopped the run (Ctrl-C).
    pub interrupted: bool,
}

/// Where a study runs: its database, this worker's checkpoint directory, and how often this
/// worker's running trial proves it is alive.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// The study database (SQLite file or PostgreSQL server).
    pub storage: Storage,
    /// The study directory: this worker's checkpoints (and the default SQLite database).
    pub dir: PathBuf,
    /// How often a running trial refreshes its heartbeat; a RUNNING trial whose heartbeat is
    /// [`STALE_AFTER_BEATS`] intervals old belongs to a dead worker. Give every worker of a
    /// study the same interval.
    pub heartbeat: Duration,
}

impl Workspace {
    /// The default workspace of a study directory: `<dir>/cthpo.db`, default heartbeat.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Workspace {
        let dir = dir.into();
        Workspace {
            storage: Storage::sqlite_in(&dir),
            dir,
            heartbeat: HEARTBEAT_EVERY,
        }
    }

    /// How old a RUNNING trial's heartbeat must be before the trial counts as abandoned.
    pub fn stale_after(&self) -> Duration {
        self.heartbeat * STALE_AFTER_BEATS
    }
}

/// Runs (or continues) the study `spec` in `workspace`, as one of possibly many workers.
///
/// Each round, the worker first takes over one trial a dead worker left RUNNING (failed as
/// `interrupted` and re-run here, by exactly one worker); else it rebuilds the optimiser from
/// the shared history, asks it for a configuration and starts the trial only if the budget
/// allows and no other trial has that configuration (both checked in the transaction that
/// assigns the trial's number). Once the budget is reached, the worker waits for the other
/// workers' running trials, so that one of theirs that dies is still re-run.
pub fn run_study(
    spec: &StudySpec,
    workspace: &Workspace,
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
    // The configuration the initial design trains first: a multi-fidelity study never prunes it.
    let seeded_default = first
        .clone()
        .or_else(|| (!spec.no_default).then(|| space.default_config()));
    // Everything a trial needs (the data loads, the sample counts fit, the network builds on
    // its images) is checked before the study is created or its settings are written.
    let data = StudyData::load(spec)?;
    let store = Store::open_at(&workspace.storage, &workspace.dir)?;
    check_same_study(&store, spec)?;
    let directions = match spec.objective {
        ObjectiveKind::Weighted => vec![Direction::Maximize],
        ObjectiveKind::Pareto => vec![Direction::Maximize, Direction::Maximize],
    };
    let spec_json = serde_json::to_value(spec)?;
    let mut study_attrs = BTreeMap::new();
    study_attrs.insert(SPEC_ATTRIBUTE.to_string(), spec_json);
    let study = store.create_or_load_study(&spec.name, &directions, &study_attrs)?;

    // Trials stopped by Ctrl-C (and dead workers' trials taken over but not re-run) run again
    // first; a worker that finds one already re-run by another gets a duplicate and moves on.
    let stored = store.trials(study)?;
    let mut rerun: VecDeque<Config> = interrupted_not_rerun(&stored)
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
    let previously_spent: f64 = stored.iter().filter_map(|t| t.duration_seconds).sum();
    let mut interrupted = false;
    let mut waiting_noted = false;
    let mut duplicates = 0;
    // The last ask's GP fits: the next rebuilt optimiser's likelihood search starts from them.
    let mut fits = crate::opt::FitCache::default();
    let rules = StartRules {
        budget: spec.trials,
        interrupted_uncounted: true,
        unique: true,
    };
    let run = Run {
        spec,
        workspace,
        store: &store,
        data: &data,
        directions: &directions,
        cancel,
    };
    loop {
        if cancel.load(Ordering::SeqCst) {
            interrupted = true;
            break;
        }
        // Liveness: heartbeats, and on SQLite (one machine) also whether the owner still exists.
        let dead = if workspace.storage.is_server() {
            Vec::new()
        } else {
            dead_local_trials(&store.trials(study)?)
        };
        if let Some((old, handle)) =
            store.take_over_trial(study, workspace.stale_after(), &dead, INTERRUPTED)?
        {
            display.note(&format!(
                "trial {} was left running by a stopped worker: marked failed (interrupted), running it again as trial {}",
                old.number, handle.number
            ));
            let counted = count_trials(&store.trials(study)?);
            if run.stored_trial(&space, handle, &old, RERUN_PROPOSAL, counted, display)? {
                interrupted = true;
                break;
            }
            continue;
        }
        let trials = store.trials(study)?;
        let counted = count_trials(&trials);
        if spec.trials.is_some_and(|budget| counted >= budget) {
            let running = trials
                .iter()
                .filter(|t| t.state == TrialState::Running)
                .count();
            if running == 0 {
                break;
            }
            if !waiting_noted {
                display.note(&format!(
                    "trial budget reached; waiting for {running} running trial(s) of other workers"
                ));
                waiting_noted = true;
            }
            sleep_unless_cancelled(workspace.heartbeat, cancel);
            continue;
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
        if spec.fidelity.is_multi_fidelity()
            && let Some((from, handle)) = rungs::promote(spec, &store, study, rules, |t| {
                seeded_default.is_some() && stored_config(&space, t) == seeded_default
            })?
        {
            if run.stored_trial(&space, handle, &from, PROMOTION_PROPOSAL, counted, display)? {
                interrupted = true;
                break;
            }
            continue;
        }
        let rerun_config = rerun.pop_front();
        let rerunning = rerun_config.is_some();
        let (config, proposal) = match rerun_config {
            Some(config) => (config, RERUN_PROPOSAL),
            None => {
                let mut optimizer = rebuild_optimizer(&space, spec, first.clone(), &trials);
                optimizer.set_fit_cache(std::mem::take(&mut fits));
                // A proposal that keeps clashing with stored trials (ones the rebuilt optimiser
                // cannot read back) gives way to a random configuration.
                let config = if duplicates < MAX_DUPLICATES {
                    optimizer.ask()
                } else {
                    optimizer.ask_random()
                };
                let proposal = optimizer.last_proposal().map_or("design", |p| p.describe());
                fits = optimizer.fit_cache().clone();
                (config, proposal)
            }
        };
        // Ctrl-C while the optimiser was thinking: stop before a trial is started.
        if cancel.load(Ordering::SeqCst) {
            interrupted = true;
            break;
        }
        let params = stored_params(&space, &config)?;
        // Declined starts (another worker took this configuration or the last place in the
        // budget) go round again with the fresh history.
        match store.start_trial_checked(study, &params, rules)? {
            Started::Trial(handle) => {
                duplicates = 0;
                if run.trial(handle, &config, proposal, counted, display)? {
                    interrupted = true;
                    break;
                }
            }
            Started::Duplicate { .. } if rerunning => {}
            Started::Duplicate { .. } => duplicates += 1,
            Started::BudgetSpent => {}
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
        pruned: trials
            .iter()
            .filter(|t| t.state == TrialState::Pruned)
            .count(),
        best_objective: best_objective(&trials, &directions),
        interrupted,
    })
}

/// Trials that count against the trial budget (all but interrupted ones).
fn count_trials(trials: &[StoredTrial]) -> usize {
    trials.iter().filter(|t| !t.is_interrupted()).count()
}

/// Sleeps for `duration`, waking early when the user cancels.
fn sleep_unless_cancelled(duration: Duration, cancel: &AtomicBool) {
    let until = Instant::now() + duration;
    while Instant::now() < until && !cancel.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100).min(until - Instant::now()));
    }
}

/// What every trial of one worker's run shares.
struct Run<'a> {
    spec: &'a StudySpec,
    workspace: &'a Workspace,
    store: &'a Store,
    data: &'a StudyData,
    directions: &'a [Direction],
    cancel: &'a AtomicBool,
}

impl Run<'_> {
    /// Runs a started trial with the configuration of an earlier stored trial (a re-run or a
    /// promotion); fails it when that configuration no longer fits the space. Returns true when
    /// the user stopped it.
    fn stored_trial(
        &self,
        space: &Space,
        handle: TrialHandle,
        earlier: &StoredTrial,
        proposal: &str,
        counted: usize,
        display: &mut dyn StudyDisplay,
    ) -> Result<bool, StudyError> {
        match stored_config(space, earlier) {
            Some(config) => self.trial(handle, &config, proposal, counted, display),
            None => {
                self.store.finish_trial(
                    &handle,
                    &TrialOutcome::Fail {
                        reason: "its configuration does not fit the method's space".into(),
                    },
                )?;
                Ok(false)
            }
        }
    }

    /// Points a started trial's `segment` at the newest progress checkpoint an interrupted
    /// trial of its configuration left (see [`progress::find`]), copying that trial's
    /// learning curve up to there and noting where it resumed in the trial's attributes.
    fn resume_progress(
        &self,
        handle: &TrialHandle,
        values: &BTreeMap<String, serde_json::Value>,
        segment: &mut Segment,
        display: &mut dyn StudyDisplay,
    ) -> Result<(), StudyError> {
        let (store, spec) = (self.store, self.spec);
        let trials = store.trials(handle.study_id)?;
        let Some(found) = progress::find(spec, store, &trials, handle, values, segment) else {
            return Ok(());
        };
        if let Some(source) = trials.iter().find(|t| t.number == found.trial) {
            for (&step, &value) in source.intermediate_values.range(..=found.epoch as i64) {
                store.report_intermediate(handle, step, value)?;
            }
        }
        store.set_trial_user_attr(handle, progress::RESUMED_FROM, &found.trial.into())?;
        store.set_trial_user_attr(handle, progress::RESUMED_AT_EPOCH, &found.epoch.into())?;
        display.note(&format!(
            "trial {} continues interrupted trial {} from its checkpoint after epoch {}",
            handle.number, found.trial, found.epoch
        ));
        segment.continue_from = Some(found.dir);
        Ok(())
    }

    /// Runs a started trial: trains and scores `config` while a thread keeps the trial's
    /// heartbeat fresh, then stores the result. Returns true when the user stopped it.
    fn trial(
        &self,
        handle: TrialHandle,
        config: &Config,
        proposal: &str,
        counted: usize,
        display: &mut dyn StudyDisplay,
    ) -> Result<bool, StudyError> {
        let (store, spec) = (self.store, self.spec);
        store.set_trial_user_attr(&handle, OWNER_ATTRIBUTE, &owner().into())?;
        store.set_trial_user_attr(&handle, attrs::PROPOSAL, &proposal.into())?;
        let mut segment = if spec.fidelity.is_multi_fidelity() {
            let trials = store.trials(handle.study_id)?;
            let plan = rungs::plan(spec, store, &trials, &handle)?;
            display.note(&plan.describe(handle.number));
            plan.segment
        } else {
            Segment::whole(spec.epochs)
        };
        let values = crate::space::to_json_map(config);
        self.resume_progress(&handle, &values, &mut segment, display)?;
        display.trial_started(handle.number, counted, spec.trials, config);
        let checkpoint = store.checkpoint_dir(&spec.name, handle.number);
        let beating = Heartbeat::start(store, handle, self.workspace.heartbeat)?;
        let mut hooks = Hooks {
            store,
            handle,
            display: &mut *display,
            learning_curve: !spec.fidelity.is_multi_fidelity(),
        };
        let trial_start = Instant::now();
        let result = run_trial(
            spec,
            self.data,
            &values,
            &segment,
            &checkpoint,
            &mut hooks,
            self.cancel,
        );
        beating.stop();
        if !matches!(&result, Err(failure) if failure.interrupted) {
            let trials = store.trials(handle.study_id)?;
            progress::clear_after(spec, store, &trials, &handle, segment.until);
        }
        match finish(self, &handle, &segment, &result, trial_start.elapsed()) {
            Err(StudyError::Store(StoreError::TrialNotRunning { .. })) => {
                display.note(&format!(
                    "trial {} was taken over by another worker while this one could not refresh \
                     its heartbeat; its result is dropped (the re-run counts)",
                    handle.number
                ));
                return Ok(false);
            }
            other => other?,
        }
        let best = best_objective(&store.trials(handle.study_id)?, self.directions);
        display.trial_finished(handle.number, &result, best);
        Ok(matches!(&result, Err(failure) if failure.interrupted))
    }
}

/// A thread that refreshes a running trial's heartbeat on its own connection, so a trial stays
/// alive through long epochs and evaluations.
struct Heartbeat {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Heartbeat {
    fn start(store: &Store, handle: TrialHandle, every: Duration) -> Result<Heartbeat, StoreError> {
        let beat_store = store.reopen()?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every)
            {
                // A missed beat is retried at the next one; only a long outage lets another
                // worker take the trial over.
                let _ = beat_store.record_heartbeat(&handle);
            }
        });
        Ok(Heartbeat { stop, thread })
    }

    fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
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

/// Ids of the RUNNING trials of this machine whose process no longer exists (other machines'
/// trials are left to the heartbeat rule).
fn dead_local_trials(trials: &[StoredTrial]) -> Vec<i64> {
    if !Path::new("/proc/self").exists() {
        return Vec::new();
    }
    let host = hostname();
    trials
        .iter()
        .filter(|t| t.state == TrialState::Running)
        .filter(|t| {
            t.user_attr_str(OWNER_ATTRIBUTE)
                .and_then(|o| o.rsplit_once(':'))
                .is_some_and(|(trial_host, pid)| {
                    trial_host == host && !Path::new(&format!("/proc/{pid}")).exists()
                })
        })
        .map(|t| t.trial_id)
        .collect()
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
    let fidelity =
        |f: &super::Fidelity| serde_json::to_string(f).unwrap_or_else(|_| format!("{f:?}"));
    let bound = |b: Option<f64>| b.map_or_else(|| "none".to_string(), |b| b.to_string());
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
        (
            "fidelity",
            fidelity(&spec.fidelity),
            fidelity(&stored.fidelity),
        ),
        (
            "min_natural",
            bound(spec.min_natural),
            bound(stored.min_natural),
        ),
        (
            "min_certified",
            bound(spec.min_certified),
            bound(stored.min_certified),
        ),
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
/// ones count as the worst, running ones (another process) are pending. In a multi-fidelity
/// study every rung score is told at its rung's budget ([`rungs::surrogate_view`],
/// [`super::Fidelity::rung_budget`]), and the surrogate learns from them as its
/// [`crate::opt::RungModel`] says.
fn rebuild_optimizer(
    space: &Space,
    spec: &StudySpec,
    first: Option<Config>,
    trials: &[StoredTrial],
) -> Optimizer {
    let options = OptimizerOptions {
        seed: spec.seed,
        // Sizes the initial design; a study limited by time alone gets the default's.
        trial_budget: spec.trials.unwrap_or(super::spec::DEFAULT_TRIALS),
        first,
        skip_default: spec.no_default,
        surrogate: spec.surrogate,
        ..OptimizerOptions::default()
    };
    let mut optimizer = Optimizer::new(space.clone(), options);
    let top = spec.fidelity.rung_epochs(spec.epochs).len() - 1;
    for (trial, rung, told) in rungs::surrogate_view(trials, top) {
        let Some(config) = stored_config(space, trial) else {
            continue;
        };
        let budget = spec.fidelity.rung_budget(spec.epochs, rung);
        match (told, &trial.values) {
            (rungs::Told::Score, Some(values)) => {
                let costs: Vec<f64> = values.iter().map(|v| -v).collect();
                let outcome = if costs.len() == 1 {
                    Outcome::Cost(costs[0])
                } else {
                    Outcome::Costs(costs)
                };
                optimizer.tell_at_budget(&config, budget, outcome, trial.constraints());
            }
            (rungs::Told::Pending, _) => optimizer.mark_pending_at_budget(&config, budget),
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
    run: &Run<'_>,
    handle: &TrialHandle,
    segment: &Segment,
    result: &Result<TrialScores, TrialFailure>,
    duration: Duration,
) -> Result<(), StudyError> {
    let store = run.store;
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
            if let Some(constraints) = run
                .spec
                .constraint_values(scores.natural_accuracy, scores.certified_accuracy)
            {
                store.set_trial_system_attr(handle, attrs::CONSTRAINTS, &constraints.into())?;
            }
            set(
                attrs::CHECKPOINT_PATH,
                checkpoint_attribute(run, handle).into(),
            )?;
            if run.spec.fidelity.is_multi_fidelity() {
                set(attrs::SCORING, scores.scoring.name().into())?;
                set(attrs::RUNG_EPS, scores.scored_eps.into())?;
            }
            if segment.until < run.spec.epochs {
                // A rung below the full budget: the rung score is the trial's last
                // intermediate value and its values, as Optuna keeps them for pruned trials.
                store.report_intermediate(handle, segment.until as i64, scores.objective)?;
                TrialOutcome::Pruned {
                    values: scores.values.clone(),
                }
            } else {
                if run.spec.fidelity.is_multi_fidelity() {
                    store.report_intermediate(handle, segment.until as i64, scores.objective)?;
                }
                TrialOutcome::Complete {
                    values: scores.values.clone(),
                }
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

/// The trial's `checkpoint_path`: relative to the study directory on SQLite; with a server
/// storage, whose workers run on several machines, `host:/absolute/path`, naming the machine
/// that holds the files.
fn checkpoint_attribute(run: &Run<'_>, handle: &TrialHandle) -> String {
    let relative = Store::checkpoint_rel_path(&run.spec.name, handle.number);
    if !run.workspace.storage.is_server() {
        return relative.display().to_string();
    }
    let absolute = std::path::absolute(run.store.dir().join(&relative))
        .unwrap_or_else(|_| run.store.dir().join(&relative));
    format!("{}:{}", hostname(), absolute.display())
}

struct Hooks<'a> {
    store: &'a Store,
    handle: TrialHandle,
    display: &'a mut dyn StudyDisplay,
    /// Whether each epoch's validation accuracy is an intermediate value (not in
    /// multi-fidelity studies, whose intermediate values are the rung scores).
    learning_curve: bool,
}

impl TrialHooks for Hooks<'_> {
    fn on_epoch(&mut self, epoch: usize, validation_accuracy: f64) {
        if !self.learning_curve {
            return;
        }
        // A failed write of a learning-curve point must not kill the trial.
        let _ = self
            .store
            .report_intermediate(&self.handle, epoch as i64, validation_accuracy);
    }

    fn on_batch(&mut self, progress: &BatchProgress) {
        self.display.batch(progress);
    }
}
