//! `cthpo verify`: measures natural, adversarial and certified accuracy of a trained network.

use crate::bounds::BoundMethod;
use crate::eval::{
    BabConfig, BabVerdict, CompleteReport, EvalConfig, EvalReport, evaluate, verify_complete,
};
use crate::model::Net;
use anyhow::Context;
use candle_core::Tensor;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use std::time::Duration;

/// Which verifier decides certification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VerifyMethod {
    /// Interval bound propagation only.
    Ibp,
    /// CROWN-IBP only.
    CrownIbp,
    /// Full CROWN only.
    Crown,
    /// α-CROWN (CROWN with optimised lower ReLU slopes) only.
    AlphaCrown,
    /// IBP, then CROWN-IBP, then CROWN, then α-CROWN on what is still undecided.
    Cascade,
    /// The cascade, then branch and bound (complete verification) on what is still undecided:
    /// every sample ends certified, falsified or unknown (timeout).
    Bab,
}

/// Arguments of `cthpo verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The network and its test data.
    #[command(flatten)]
    checkpoint: super::checkpoint::CheckpointArgs,
    /// Certification method.
    #[arg(long, value_enum, default_value_t = VerifyMethod::Cascade)]
    method: VerifyMethod,
    /// Number of test images to evaluate (the first N of the test split).
    #[arg(long, default_value_t = 1000)]
    samples: usize,
    /// PGD steps per restart for adversarial accuracy.
    #[arg(long, default_value_t = 50)]
    pgd_steps: usize,
    /// PGD restarts.
    #[arg(long, default_value_t = 2)]
    pgd_restarts: usize,
    /// Samples per batch (full CROWN and α-CROWN use at most 16).
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Seed of the attack's random starts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Branch and bound's time limit per sample (`30s`, `2m`, `500ms`; a bare number is
    /// seconds); only with `--method bab`.
    #[arg(long, value_parser = crate::study::parse_duration, default_value = "30s")]
    timeout: Duration,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs `cthpo verify`.
pub fn run(args: VerifyArgs) -> anyhow::Result<()> {
    let super::checkpoint::Loaded {
        net,
        weights,
        test,
        eps,
        ..
    } = args.checkpoint.load(args.samples)?;
    let (images, labels) = test.tensors()?;
    let mut config = EvalConfig::cascade(eps);
    config.methods = match args.method {
        VerifyMethod::Ibp => vec![BoundMethod::Ibp],
        VerifyMethod::CrownIbp => vec![BoundMethod::CrownIbp],
        VerifyMethod::Crown => vec![BoundMethod::Crown],
        VerifyMethod::AlphaCrown => vec![BoundMethod::AlphaCrown],
        VerifyMethod::Cascade | VerifyMethod::Bab => BoundMethod::ALL.to_vec(),
    };
    config.pgd.steps = args.pgd_steps;
    config.pgd.restarts = args.pgd_restarts;
    config.batch_size = args.batch_size.max(1);
    config.crown_batch_size = config.crown_batch_size.min(config.batch_size);
    config.seed = args.seed;

    if args.method == VerifyMethod::Bab {
        let bab = BabConfig {
            timeout: args.timeout,
            ..BabConfig::default()
        };
        return run_complete(&net, (&images, &labels), &config, &bab, &weights, args.json);
    }
    let progress = ProgressBar::new(test.len() as u64).with_style(
        ProgressStyle::with_template("verifying {bar:30} {pos}/{len} samples [{elapsed_precise}]")
            .expect("static template"),
    );
    let report = evaluate(&net, &images, &labels, &config, |done, _| {
        progress.set_position(done as u64)
    })
    .with_context(|| format!("evaluating {}", weights.display()))?;
    progress.finish_and_clear();
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report_json(&report))?);
    } else {
        print_table(&report, &weights)?;
    }
    Ok(())
}

fn report_json(report: &EvalReport) -> serde_json::Value {
    let stages: serde_json::Map<String, serde_json::Value> = report
        .stages
        .iter()
        .map(|stage| {
            (
                stage.method.name().to_string(),
                serde_json::json!({
                    "attempted": stage.attempted,
                    "certified": stage.certified,
                    "seconds": stage.seconds,
                }),
            )
        })
        .collect();
    serde_json::json!({
        "samples": report.samples,
        "eps": report.eps,
        "natural_accuracy": report.natural_accuracy,
        "adversarial_accuracy": report.adversarial_accuracy,
        "certified_accuracy": report.certified_accuracy,
        "stages": stages,
        "attack_seconds": report.attack_seconds,
        "seconds": report.seconds,
    })
}

fn print_table(report: &EvalReport, weights: &std::path::Path) -> anyhow::Result<()> {
    outln!(
        "{} on {} samples, ε = {}",
        weights.display(),
        report.samples,
        report.eps
    );
    outln!(
        "  natural accuracy      {:>7.2} %",
        100.0 * report.natural_accuracy
    );
    outln!(
        "  adversarial accuracy  {:>7.2} %   (PGD, {:.1} s)",
        100.0 * report.adversarial_accuracy,
        report.attack_seconds
    );
    outln!(
        "  certified accuracy    {:>7.2} %",
        100.0 * report.certified_accuracy
    );
    for stage in &report.stages {
        outln!(
            "    {:<11} certified {:>5} of {:>5} attempted  ({:.2} s)",
            stage.method.name(),
            stage.certified,
            stage.attempted,
            stage.seconds
        );
    }
    outln!("  total time {:.2} s", report.seconds);
    Ok(())
}

/// `--method bab`: the cascade, then branch and bound, with a per-verdict table.
fn run_complete(
    net: &Net,
    (images, labels): (&Tensor, &Tensor),
    config: &EvalConfig,
    bab: &BabConfig,
    weights: &std::path::Path,
    json: bool,
) -> anyhow::Result<()> {
    let progress = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "branch and bound {bar:30} {pos}/{len} samples [{elapsed_precise}]",
        )
        .expect("static template"),
    );
    let report = verify_complete(net, images, labels, config, bab, |done, total| {
        progress.set_length(total as u64);
        progress.set_position(done as u64);
    })
    .with_context(|| format!("verifying {} by branch and bound", weights.display()))?;
    progress.finish_and_clear();
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&complete_json(&report, bab))?
        );
        return Ok(());
    }
    print_table(&report.cascade, weights)?;
    let samples = report.cascade.samples;
    outln!(
        "  branch and bound (timeout {:.0} s) on the {} samples left undecided:",
        bab.timeout.as_secs_f64(),
        report.searched.len()
    );
    for verdict in [
        BabVerdict::Certified,
        BabVerdict::Falsified,
        BabVerdict::Unknown,
    ] {
        let count = report.count(verdict);
        outln!(
            "    {:<10} {:>5} of {:>5}  ({:>6.2} %)",
            verdict_name(verdict),
            count,
            samples,
            100.0 * count as f64 / samples as f64
        );
    }
    let (mean, max) = search_times(&report);
    outln!(
        "  time per sample {:.2} s overall; branch and bound {:.2} s mean, {:.2} s max",
        report.seconds / samples as f64,
        mean,
        max
    );
    Ok(())
}

fn verdict_name(verdict: BabVerdict) -> &'static str {
    match verdict {
        BabVerdict::Certified => "certified",
        BabVerdict::Falsified => "falsified",
        BabVerdict::Unknown => "unknown",
    }
}

/// Mean and largest wall time of the samples branch and bound searched.
fn search_times(report: &CompleteReport) -> (f64, f64) {
    let times: Vec<f64> = report.searched.iter().map(|(_, o)| o.seconds).collect();
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    (mean, times.iter().copied().fold(0.0, f64::max))
}

fn complete_json(report: &CompleteReport, bab: &BabConfig) -> serde_json::Value {
    let mut value = report_json(&report.cascade);
    let (mean, max) = search_times(report);
    value["bab"] = serde_json::json!({
        "timeout_seconds": bab.timeout.as_secs_f64(),
        "certified": report.count(BabVerdict::Certified),
        "falsified": report.count(BabVerdict::Falsified),
        "unknown": report.count(BabVerdict::Unknown),
        "searched": report.searched.len(),
        "search_seconds_mean": mean,
        "search_seconds_max": max,
        "domains": report.searched.iter().map(|(_, o)| o.domains).sum::<usize>(),
        "seconds": report.seconds,
    });
    value
}
