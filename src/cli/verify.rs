//! `cthpo verify`: measures natural, adversarial and certified accuracy of a trained network.

use crate::bounds::BoundMethod;
use crate::eval::{EvalConfig, EvalReport, evaluate};
use anyhow::Context;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

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
        VerifyMethod::Cascade => BoundMethod::ALL.to_vec(),
    };
    config.pgd.steps = args.pgd_steps;
    config.pgd.restarts = args.pgd_restarts;
    config.batch_size = args.batch_size.max(1);
    config.crown_batch_size = config.crown_batch_size.min(config.batch_size);
    config.seed = args.seed;

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
