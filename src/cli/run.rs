//! `cthpo run`: runs or continues a study.

use crate::space::Config;
use crate::study::{
    FidelityKind, HEARTBEAT_EVERY, ObjectiveKind, ObjectiveWeights, RungScoring, StudyDisplay,
    StudyFile, StudySpec, SurrogateKind, TrialFailure, TrialScores, Workspace, absolute_path,
    format_duration, parse_duration, run_study,
};
use crate::train::BatchProgress;
use anyhow::Context;
use clap::{Args, ValueEnum};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// `--surrogate` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SurrogateArg {
    /// SMAC-style random forest (10 bootstrapped trees; robust with categoricals, conditions
    /// and many trials).
    Rf,
    /// Gaussian process (egobox-gp, Matérn 5/2, categoricals one-hot; often more
    /// sample-efficient on smooth, mostly continuous spaces).
    Gp,
}

/// `--objective` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ObjectiveArg {
    /// Maximise the weighted sum of natural, adversarial and certified accuracy.
    Weighted,
    /// Maximise natural and certified accuracy jointly (Pareto front).
    Pareto,
}

/// Arguments of `cthpo run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Method to tune: standard, pgd, ibp, crown_ibp, sabr, taps, staps, mtl_ibp.
    #[arg(long)]
    method: Option<String>,
    /// A study file (YAML, see studies/); flags override its fields.
    #[arg(long)]
    study_file: Option<PathBuf>,
    /// Study name (default: <method>-<dataset>-<arch>-eps<ε>, so rerunning continues it).
    #[arg(long)]
    name: Option<String>,
    /// Study database and directory.
    #[command(flatten)]
    place: super::StorageArgs,
    /// Heartbeat interval of this worker's running trial, e.g. 20s (default); a RUNNING trial
    /// whose heartbeat is 6 intervals old is taken for a dead worker's, failed as interrupted
    /// and run again. Give all workers of a study the same value.
    #[arg(long, value_name = "DURATION")]
    heartbeat: Option<String>,
    /// Trial budget (trials already stored count; in a multi-fidelity study each promotion
    /// to a higher rung is a trial). Default 20, or no limit when --time-budget is given.
    #[arg(long)]
    trials: Option<usize>,
    /// Wall-clock budget of the study, e.g. 2h, 45m (time already spent counts); without
    /// --trials it is the study's only limit.
    #[arg(long)]
    time_budget: Option<String>,
    /// Wall-clock limit of one trial, e.g. 20m; a trial over it is recorded as failed.
    #[arg(long)]
    trial_timeout: Option<String>,
    /// Epochs per trial (default 5).
    #[arg(long)]
    epochs: Option<usize>,
    /// ℓ∞ radius to certify (default 0.1).
    #[arg(long, allow_negative_numbers = true)]
    eps: Option<f64>,
    /// Dataset: mnist (default, embedded subset), fashion-mnist, cifar10.
    #[arg(long)]
    dataset: Option<String>,
    /// Directory with the dataset files.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Builtin architecture (default cnn-small).
    #[arg(long)]
    arch: Option<String>,
    /// Training images per trial (default: the whole training split).
    #[arg(long)]
    train_samples: Option<usize>,
    /// Surrogate model of the optimiser [default: gp when at least two thirds of the searched
    /// parameters are numbers, as in every builtin space; rf otherwise].
    #[arg(long, value_enum)]
    surrogate: Option<SurrogateArg>,
    /// Objective.
    #[arg(long, value_enum)]
    objective: Option<ObjectiveArg>,
    /// Weights of the weighted objective, e.g. nat=1,adv=1,cert=2.
    #[arg(long)]
    weights: Option<String>,
    /// A YAML configuration to evaluate first.
    #[arg(long, conflicts_with = "no_default")]
    default: Option<PathBuf>,
    /// Do not evaluate the space's default configuration first.
    #[arg(long)]
    no_default: bool,
    /// Validation images scored per trial (default 1000).
    #[arg(long)]
    val_samples: Option<usize>,
    /// Seed of split, design, initialisation and batch order (default 0).
    #[arg(long)]
    seed: Option<u64>,
    /// Lowest acceptable natural accuracy in [0, 1], e.g. 0.95: trials below it are infeasible
    /// (stored as Optuna's `constraints`; `best`, `status` and plots pass over them).
    #[arg(long, value_name = "ACCURACY")]
    min_natural: Option<f64>,
    /// Lowest acceptable certified accuracy in [0, 1]: trials below it are infeasible.
    #[arg(long, value_name = "ACCURACY")]
    min_certified: Option<f64>,
    /// Multi-fidelity scheme (default none): successive-halving or hyperband stop weak
    /// configurations at rungs of --min-epochs·η^i epochs (--epochs is the largest budget);
    /// promoted ones continue from their checkpoint. The default configuration (--default, or
    /// the space's) is never stopped: it goes on to --epochs first.
    #[arg(long, value_enum)]
    fidelity: Option<FidelityArg>,
    /// Epochs of the smallest rung (default 1).
    #[arg(long)]
    min_epochs: Option<usize>,
    /// Reduction factor η of the rungs (default 3): each rung trains η times longer and keeps
    /// the best 1/η.
    #[arg(long)]
    eta: Option<usize>,
    /// How a multi-fidelity study scores rungs below --epochs (default reached); the last rung
    /// is always scored in full at --eps.
    #[arg(long, value_enum)]
    rung_scoring: Option<RungScoringArg>,
}

/// `--rung-scoring` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RungScoringArg {
    /// The quick validation at the ε the trial's ε schedule has reached at the rung (at least
    /// 1 % of --eps while the schedule is still at ε = 0); ranks configurations with slow ε
    /// ramps far better than scoring at --eps mid-schedule.
    Reached,
    /// The quick validation at --eps times the rung's share of the budget (rung epochs /
    /// --epochs): every trial of a rung scored at one radius.
    Share,
    /// A cheaper, still sound validation: PGD with 10 steps and 1 restart, certification by
    /// IBP then CROWN-IBP (no CROWN), on the same validation images, at --eps.
    Quick,
    /// The full validation: PGD with 40 steps and 5 restarts, IBP → CROWN-IBP → CROWN.
    Full,
}

/// `--fidelity` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FidelityArg {
    /// Every trial trains for --epochs.
    None,
    /// One bracket from the smallest rung (asynchronous successive halving).
    SuccessiveHalving,
    /// Brackets from every rung (asynchronous Hyperband).
    Hyperband,
}

/// Set by Ctrl-C: the running trial stops, is recorded as interrupted, and the study ends.
static CANCEL: AtomicBool = AtomicBool::new(false);

/// Runs `cthpo run`.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let base = match &args.study_file {
        Some(path) => StudyFile::load(path)?,
        None => StudyFile::default(),
    };
    let weights = args
        .weights
        .as_deref()
        .map(ObjectiveWeights::parse)
        .transpose()?;
    let overrides = StudyFile {
        name: args.name.clone(),
        method: args.method.clone(),
        dataset: args.dataset.clone(),
        data_dir: args.data_dir.clone(),
        arch: args.arch.clone(),
        eps: args.eps,
        epochs: args.epochs,
        train_samples: args.train_samples,
        val_samples: args.val_samples,
        trials: args.trials,
        time_budget: args.time_budget.clone(),
        trial_timeout: args.trial_timeout.clone(),
        surrogate: args.surrogate.map(|s| match s {
            SurrogateArg::Rf => SurrogateKind::Rf,
            SurrogateArg::Gp => SurrogateKind::Gp,
        }),
        objective: args.objective.map(|o| match o {
            ObjectiveArg::Weighted => ObjectiveKind::Weighted,
            ObjectiveArg::Pareto => ObjectiveKind::Pareto,
        }),
        weights,
        default_config: args.default.clone(),
        no_default: args.no_default.then_some(true),
        seed: args.seed,
        fidelity: args.fidelity.map(|f| match f {
            FidelityArg::None => FidelityKind::None,
            FidelityArg::SuccessiveHalving => FidelityKind::SuccessiveHalving,
            FidelityArg::Hyperband => FidelityKind::Hyperband,
        }),
        min_epochs: args.min_epochs,
        eta: args.eta,
        rung_scoring: args.rung_scoring.map(|r| match r {
            RungScoringArg::Reached => RungScoring::Reached,
            RungScoringArg::Share => RungScoring::Share,
            RungScoringArg::Quick => RungScoring::Quick,
            RungScoringArg::Full => RungScoring::Full,
        }),
        min_natural: args.min_natural,
        min_certified: args.min_certified,
    };
    // Paths are stored with the study, which `resume` may continue from anywhere.
    let here = Path::new("");
    let overrides = StudyFile {
        data_dir: overrides.data_dir.map(|p| absolute_path(&p, here)),
        default_config: overrides.default_config.map(|p| absolute_path(&p, here)),
        ..overrides
    };
    let spec = StudySpec::resolve(overrides.over(base))?;
    let workspace = workspace(&args.place, args.heartbeat.as_deref())?;
    execute(&spec, &workspace)
}

/// The workspace of `--dir`, `--storage` and `--heartbeat` (shared with `resume`).
pub(crate) fn workspace(
    place: &super::StorageArgs,
    heartbeat: Option<&str>,
) -> anyhow::Result<Workspace> {
    let heartbeat = match heartbeat {
        Some(text) => {
            parse_duration(text).map_err(|problem| anyhow::anyhow!("--heartbeat: {problem}"))?
        }
        None => HEARTBEAT_EVERY,
    };
    Ok(Workspace {
        storage: place.storage()?,
        dir: place.dir.clone(),
        heartbeat,
    })
}

/// Runs a resolved study with progress display and Ctrl-C handling (shared with `resume`).
pub(crate) fn execute(spec: &StudySpec, workspace: &Workspace) -> anyhow::Result<()> {
    // A failure to install the handler only loses graceful Ctrl-C; the study still runs.
    let _ = ctrlc::set_handler(|| {
        if CANCEL.swap(true, Ordering::SeqCst) {
            // A second Ctrl-C: stop at once. The running trial stays RUNNING in the database
            // and is found interrupted (its process gone) and run again by the next run.
            eprintln!(
                "\nstopping now; the running trial will run again when the study is continued"
            );
            std::process::exit(super::INTERRUPTED_EXIT_CODE);
        }
        eprintln!(
            "\nstopping: a trial in training is recorded as interrupted and runs again when the study continues, one being scored is finished first (Ctrl-C again to stop at once)"
        );
    });
    eprintln!(
        "study `{}`: {} on {} ({}, ε = {}), {} of {} epochs, database {}, checkpoints in {}",
        spec.name,
        spec.method,
        spec.dataset,
        spec.arch,
        spec.eps,
        match (spec.trials, spec.time_budget) {
            (Some(trials), _) => format!("{trials} trials"),
            (None, Some(budget)) => format!("trials for {}", format_duration(budget)),
            (None, None) => "trials".to_string(),
        },
        spec.epochs,
        workspace.storage,
        workspace.dir.display()
    );
    let mut display = BarDisplay::new();
    let outcome = run_study(spec, workspace, &mut display, &CANCEL)
        .with_context(|| format!("running study `{}`", spec.name))?;
    display.clear();
    outln!(
        "study `{}`: {} completed, {} failed{}; best objective {}",
        spec.name,
        outcome.completed,
        outcome.failed,
        if spec.fidelity.is_multi_fidelity() {
            format!(", {} pruned at a rung", outcome.pruned)
        } else {
            String::new()
        },
        outcome
            .best_objective
            .map(|b| format!("{b:.4}"))
            .unwrap_or_else(|| "none yet".into())
    );
    if outcome.interrupted {
        outln!(
            "stopped by the user; run the same command (or `cthpo resume {}`) to continue",
            spec.name
        );
        return Err(super::Interrupted.into());
    }
    Ok(())
}

/// Two bars: trials of the study and batches of the running trial.
struct BarDisplay {
    _multi: MultiProgress,
    trials: ProgressBar,
    batches: ProgressBar,
}

impl BarDisplay {
    fn new() -> BarDisplay {
        let multi = MultiProgress::new();
        let trials = multi.add(
            ProgressBar::new(0).with_style(
                ProgressStyle::with_template(
                    "trials {bar:25} {pos}/{len} {msg} [{elapsed_precise}]",
                )
                .expect("static template"),
            ),
        );
        let batches = multi.add(
            ProgressBar::new(0).with_style(
                ProgressStyle::with_template("  {prefix} {bar:25} {pos}/{len} {msg}")
                    .expect("static template"),
            ),
        );
        BarDisplay {
            _multi: multi,
            trials,
            batches,
        }
    }

    fn clear(&self) {
        self.batches.finish_and_clear();
        self.trials.finish_and_clear();
    }
}

fn short(config: &Config) -> String {
    config
        .iter()
        .map(|(k, v)| match v {
            crate::space::Value::Float(x) => format!("{k}={x:.3e}"),
            other => format!("{k}={other}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl BarDisplay {
    /// Prints a line above the bars, or to stderr when the bars are hidden (not a terminal).
    fn line(&self, text: String) {
        if self.trials.is_hidden() {
            eprintln!("{text}");
        } else {
            self.trials.println(text);
        }
    }
}

impl StudyDisplay for BarDisplay {
    fn trial_started(&mut self, number: i64, done: usize, budget: Option<usize>, config: &Config) {
        if let Some(budget) = budget {
            self.trials.set_length(budget as u64);
        } else if self.trials.length() == Some(0) {
            // Limited by time alone: count the trials without a bar.
            self.trials.set_style(
                ProgressStyle::with_template("trials {pos} {msg} [{elapsed_precise}]")
                    .expect("static template"),
            );
        }
        self.trials.set_position(done as u64);
        self.line(format!("trial {number}: {}", short(config)));
    }

    fn batch(&mut self, progress: &BatchProgress) {
        self.batches.set_length(progress.batches as u64);
        self.batches.set_position(progress.batch as u64);
        self.batches.set_prefix(format!("epoch {}", progress.epoch));
        self.batches
            .set_message(format!("loss {:.4} ε {:.4}", progress.loss, progress.eps));
    }

    fn trial_finished(
        &mut self,
        number: i64,
        result: &Result<TrialScores, TrialFailure>,
        best: Option<f64>,
    ) {
        let line = match result {
            Ok(s) => format!(
                "trial {number}: natural {:.2} %, adversarial {:.2} %, certified {:.2} %, objective {:.4} ({} training)",
                100.0 * s.natural_accuracy,
                100.0 * s.adversarial_accuracy,
                100.0 * s.certified_accuracy,
                s.objective,
                format_duration(std::time::Duration::from_secs_f64(s.train_seconds))
            ),
            Err(f) => format!("trial {number}: FAILED: {}", f.reason),
        };
        self.line(line);
        self.trials.inc(1);
        if let Some(best) = best {
            self.trials.set_message(format!("best {best:.4}"));
        }
    }

    fn note(&mut self, message: &str) {
        self.line(format!("note: {message}"));
    }
}
