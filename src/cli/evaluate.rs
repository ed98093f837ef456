//! `cthpo evaluate`: the final evaluation of a study's chosen configurations on the test split.
//!
//! Each chosen configuration is trained again from scratch on the study's training and
//! validation images together, then scored on the test split (which no study reads): natural
//! accuracy, PGD accuracy, certified accuracy by the full cascade (with α-CROWN) at several
//! radii and the area under that curve, and the unstable ReLUs. Results are stored as the
//! trial's `test_evaluation` user attribute and printed as a table.

use crate::data::{DataSource, DatasetName};
use crate::eval::{
    BabConfig, BabVerdict, EvalConfig, RadiusReport, complete_undecided, evaluate_radii,
};
use crate::model::{Net, NetSpec};
use crate::store::{Direction, StoredTrial, TrialState, attrs, pareto_optimal};
use crate::study::{SPEC_ATTRIBUTE, StudySpec};
use crate::train::{Method, NoObserver, TrainConfig, TrainOptions, fit};
use anyhow::{Context, bail};
use candle_core::Tensor;
use clap::{ArgGroup, Args};
use std::collections::BTreeMap;
use std::time::Instant;

/// Arguments of `cthpo evaluate`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("choice").required(true).args(["top", "trial", "pareto"])))]
pub struct EvaluateArgs {
    /// Study name.
    name: String,
    /// Study database and directory.
    #[command(flatten)]
    place: super::StorageArgs,
    /// Evaluate the K best completed trials (by the study's objective).
    #[arg(long, value_name = "K")]
    top: Option<usize>,
    /// Evaluate the trial with this number.
    #[arg(long, value_name = "N")]
    trial: Option<i64>,
    /// Evaluate every Pareto-optimal trial (natural against certified accuracy).
    #[arg(long)]
    pareto: bool,
    /// Epochs to retrain for (default: the study's budget).
    #[arg(long)]
    epochs: Option<usize>,
    /// Test images to evaluate (the first N of the test split).
    #[arg(long, default_value_t = 1000)]
    samples: usize,
    /// PGD restarts (at least 5 for the final figures).
    #[arg(long, default_value_t = 5)]
    pgd_restarts: usize,
    /// PGD steps per restart.
    #[arg(long, default_value_t = 50)]
    pgd_steps: usize,
    /// Also decide every sample the cascade leaves undecided at ε by branch and bound
    /// (complete verification): certified, falsified or unknown.
    #[arg(long)]
    complete: bool,
    /// Branch and bound's time limit per sample with `--complete` (`30s`, `2m`, `500ms`).
    #[arg(long, value_parser = crate::study::parse_duration, default_value = "30s")]
    timeout: std::time::Duration,
    /// Print one JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

/// One evaluated configuration.
struct Evaluated {
    number: i64,
    report: RadiusReport,
    /// Branch and bound's verdict counts at ε (certified, falsified, unknown) and its seconds.
    complete: Option<([usize; 3], f64)>,
    train_seconds: f64,
    seconds: f64,
}

/// Runs `cthpo evaluate`.
pub fn run(args: EvaluateArgs) -> anyhow::Result<()> {
    if args.samples == 0 {
        bail!("--samples must be at least 1");
    }
    if args.epochs == Some(0) {
        bail!("--epochs must be at least 1");
    }
    if args.top == Some(0) {
        bail!("--top must be at least 1");
    }
    let store = args.place.open_existing()?;
    let info = store.require_study(&args.name)?;
    let Some(stored) = info.user_attrs.get(SPEC_ATTRIBUTE) else {
        bail!(
            "study `{}` was not created by `cthpo run` (no stored settings)",
            args.name
        );
    };
    let spec: StudySpec = serde_json::from_value(stored.clone())
        .with_context(|| format!("reading the stored settings of study `{}`", args.name))?;
    let trials = store.trials(info.id)?;
    let chosen = choose(&args, &trials, &info.directions)?;
    drop(store);

    let method: Method = spec.method.parse()?;
    let dataset: DatasetName = spec.dataset.parse()?;
    let splits = crate::data::load(dataset, &DataSource::from(spec.data_dir.clone()))
        .with_context(|| format!("loading the {dataset} dataset"))?;
    if args.samples > splits.test.len() {
        bail!(
            "--samples {}: the {dataset} test split has {} images",
            args.samples,
            splits.test.len()
        );
    }
    let (train, validation) =
        splits.train_validation(spec.val_samples, spec.train_samples, spec.seed)?;
    let (train_images, train_labels) = train.tensors()?;
    let (validation_images, validation_labels) = validation.tensors()?;
    let images = Tensor::cat(&[&train_images, &validation_images], 0)?;
    let labels = Tensor::cat(&[&train_labels, &validation_labels], 0)?;
    let train_count = images.dim(0)?;
    let (test_images, test_labels) = splits.test.take(args.samples).tensors()?;
    let net_spec = NetSpec::builtin(
        &spec.arch,
        dataset.input_shape(),
        dataset.num_classes(),
        dataset.normalization(),
    )?;
    let epochs = args.epochs.unwrap_or(spec.epochs);
    let mut eval = EvalConfig::full_cascade(spec.eps);
    eval.pgd.restarts = args.pgd_restarts;
    eval.pgd.steps = args.pgd_steps;
    eval.seed = spec.seed;

    let mut results = Vec::with_capacity(chosen.len());
    for trial in chosen {
        let start = Instant::now();
        let values: BTreeMap<String, serde_json::Value> =
            trial.param_values().into_iter().collect();
        let config = TrainConfig::from_map(method, &values)
            .with_context(|| format!("trial #{}'s configuration", trial.number))?;
        let mut net = Net::new(&net_spec, method.initialization(), spec.seed)?;
        let options = TrainOptions {
            epochs,
            eps: spec.eps,
            seed: spec.seed,
        };
        errln(&format!(
            "trial #{}: training {method} for {epochs} epochs on {} images",
            trial.number, train_count
        ));
        let summary = fit(
            &mut net,
            method,
            &config,
            &options,
            &images,
            &labels,
            &mut NoObserver,
        )
        .with_context(|| format!("retraining trial #{}", trial.number))?;
        errln(&format!(
            "trial #{}: evaluating on {} test images",
            trial.number, args.samples
        ));
        let report = evaluate_radii(&net, &test_images, &test_labels, &eval, |_, _, _| {})
            .with_context(|| format!("evaluating trial #{}", trial.number))?;
        let complete = if args.complete {
            let bab = BabConfig {
                timeout: args.timeout,
                ..BabConfig::default()
            };
            let done = complete_undecided(
                &net,
                &test_images,
                report.at_eps.clone(),
                eval.seed,
                &bab,
                |_, _| {},
            )
            .with_context(|| format!("branch and bound on trial #{}", trial.number))?;
            let counts = [
                BabVerdict::Certified,
                BabVerdict::Falsified,
                BabVerdict::Unknown,
            ]
            .map(|v| done.count(v));
            let seconds: f64 = done.searched.iter().map(|(_, o)| o.seconds).sum();
            Some((counts, seconds))
        } else {
            None
        };
        let evaluated = Evaluated {
            number: trial.number,
            report,
            complete,
            train_seconds: summary.seconds,
            seconds: start.elapsed().as_secs_f64(),
        };
        let store = args.place.storage().and_then(|storage| {
            crate::store::Store::open_existing_at(&storage, &args.place.dir)
                .context("cannot open the study database")
        })?;
        store.set_finished_trial_user_attr(
            trial.trial_id,
            attrs::TEST_EVALUATION,
            &stored_json(&evaluated, epochs, train_count, &eval),
        )?;
        results.push(evaluated);
    }
    if args.json {
        let all = serde_json::Value::Array(
            results
                .iter()
                .map(|r| stored_json(r, epochs, train_count, &eval))
                .collect(),
        );
        outln!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        print_table(&args.name, spec.eps, &results)?;
    }
    Ok(())
}

/// A progress line on standard error (the table goes to standard output).
fn errln(text: &str) {
    eprintln!("{text}");
}

/// The trials `--top`, `--trial` or `--pareto` choose, best first.
fn choose<'a>(
    args: &EvaluateArgs,
    trials: &'a [StoredTrial],
    directions: &[Direction],
) -> anyhow::Result<Vec<&'a StoredTrial>> {
    let complete: Vec<&StoredTrial> = trials
        .iter()
        .filter(|t| t.state == TrialState::Complete)
        .collect();
    if let Some(number) = args.trial {
        return match trials.iter().find(|t| t.number == number) {
            Some(t) if t.state == TrialState::Complete => Ok(vec![t]),
            Some(t) => bail!(
                "trial #{number} of study `{}` is {}, not complete",
                args.name,
                t.state.as_optuna_str()
            ),
            None => bail!("study `{}` has no trial #{number}", args.name),
        };
    }
    if complete.is_empty() {
        bail!("study `{}` has no completed trial", args.name);
    }
    if args.pareto {
        return Ok(pareto_optimal(trials, directions));
    }
    let score = |t: &StoredTrial| -> f64 {
        match (directions, t.values.as_deref()) {
            ([Direction::Maximize], Some([v])) => *v,
            ([Direction::Minimize], Some([v])) => -v,
            _ => t
                .user_attr_f64(attrs::OBJECTIVE)
                .unwrap_or(f64::NEG_INFINITY),
        }
    };
    let mut ranked = complete;
    ranked.sort_by(|a, b| score(b).total_cmp(&score(a)).then(a.number.cmp(&b.number)));
    ranked.truncate(args.top.unwrap_or(1));
    Ok(ranked)
}

/// The `test_evaluation` attribute: settings and every figure of one evaluated configuration.
fn stored_json(
    result: &Evaluated,
    epochs: usize,
    train_images: usize,
    eval: &EvalConfig,
) -> serde_json::Value {
    let report = &result.report;
    let stages: serde_json::Map<String, serde_json::Value> = report
        .at_eps
        .stages
        .iter()
        .map(|s| {
            (
                s.method.name().to_string(),
                serde_json::json!({"attempted": s.attempted, "certified": s.certified, "seconds": s.seconds}),
            )
        })
        .collect();
    serde_json::json!({
        "trial": result.number,
        "epochs": epochs,
        "train_images": train_images,
        "test_samples": report.at_eps.samples,
        "eps": report.at_eps.eps,
        "pgd_restarts": eval.pgd.restarts,
        "pgd_steps": eval.pgd.steps,
        "natural_accuracy": report.at_eps.natural_accuracy,
        "adversarial_accuracy": report.at_eps.adversarial_accuracy,
        "certified_accuracy": report.at_eps.certified_accuracy,
        "certified_curve": report.curve.iter().map(|p| serde_json::json!({
            "eps": p.eps, "certified_accuracy": p.certified_accuracy,
            "adversarial_accuracy": p.adversarial_accuracy,
        })).collect::<Vec<_>>(),
        "certified_auc": report.certified_auc,
        "unstable_relus": report.unstable_relus,
        "stages": stages,
        "train_seconds": result.train_seconds,
        "seconds": result.seconds,
        "complete": result.complete.map(|(counts, seconds)| serde_json::json!({
            "certified": counts[0], "falsified": counts[1], "unknown": counts[2],
            "seconds": seconds,
        })),
    })
}

fn print_table(study: &str, eps: f64, results: &[Evaluated]) -> anyhow::Result<()> {
    let Some(first) = results.first() else {
        return Ok(());
    };
    outln!(
        "study {study}: test split, {} images, ε = {eps} (certified: IBP → CROWN-IBP → CROWN → α-CROWN)",
        first.report.at_eps.samples
    );
    let mut header = format!("{:>6} {:>8} {:>8} {:>8}", "trial", "natural", "PGD", "cert");
    for point in &first.report.curve {
        header += &format!(" {:>9}", format!("@{:.4}", point.eps));
    }
    header += &format!(" {:>7} {:>9} {:>8}", "CR-AUC", "unstable", "time s");
    if first.complete.is_some() {
        header += &format!(" {:>20}", "BaB cert/fals/unk");
    }
    outln!("{header}");
    for result in results {
        let report = &result.report;
        let mut line = format!(
            "{:>6} {:>7.2}% {:>7.2}% {:>7.2}%",
            format!("#{}", result.number),
            100.0 * report.at_eps.natural_accuracy,
            100.0 * report.at_eps.adversarial_accuracy,
            100.0 * report.at_eps.certified_accuracy
        );
        for point in &report.curve {
            line += &format!(" {:>8.2}%", 100.0 * point.certified_accuracy);
        }
        line += &format!(
            " {:>7.4} {:>9.1} {:>8.1}",
            report.certified_auc, report.unstable_relus, result.seconds
        );
        if let Some((counts, _)) = result.complete {
            line += &format!(
                " {:>20}",
                format!("{}/{}/{}", counts[0], counts[1], counts[2])
            );
        }
        outln!("{line}");
    }
    Ok(())
}
