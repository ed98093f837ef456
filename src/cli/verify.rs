//! `cthpo verify`: measures natural, adversarial and certified accuracy of a trained network.

use crate::bounds::BoundMethod;
use crate::data::{DataSource, DatasetName};
use crate::eval::{EvalConfig, EvalReport, evaluate};
use crate::model::{Net, NetSpec};
use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

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
    /// Trained weights: a safetensors file, or a run directory written by `cthpo train`.
    #[arg(long)]
    model: PathBuf,
    /// Builtin architecture of the weights (fc, cnn-small, cnn-medium, cnn7); read from the
    /// checkpoint's sidecar when omitted.
    #[arg(long, conflicts_with = "net")]
    arch: Option<String>,
    /// A YAML network description instead of a builtin architecture.
    #[arg(long)]
    net: Option<PathBuf>,
    /// Dataset to evaluate on: mnist, fashion-mnist or cifar10 (default: the checkpoint's, else
    /// mnist).
    #[arg(long)]
    dataset: Option<String>,
    /// Directory with the dataset files (default: the embedded MNIST subset; Fashion-MNIST from
    /// /usr/share/datasets/fashion-mnist).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// ℓ∞ radius in [0,1] pixel units (default: the checkpoint's, else 0.1).
    #[arg(long, allow_negative_numbers = true)]
    eps: Option<f64>,
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
    if !args.model.exists() {
        bail!(
            "--model {}: not found (give a safetensors file or a run directory written by `cthpo train`)",
            args.model.display()
        );
    }
    if let Some(eps) = args.eps
        && !(eps.is_finite() && (0.0..=1.0).contains(&eps))
    {
        bail!("--eps {eps} must be in [0, 1] (pixel units)");
    }
    let sidecar = if args.arch.is_none() && args.net.is_none() {
        let (_, sidecar) = crate::train::checkpoint_files(&args.model);
        match sidecar {
            Some(path) => Some(crate::train::read_sidecar(&path)?),
            None => None,
        }
    } else {
        None
    };
    let dataset: DatasetName = match (&args.dataset, &sidecar) {
        (Some(name), _) => name.parse()?,
        (None, Some(sidecar)) => sidecar.dataset.parse()?,
        (None, None) => DatasetName::Mnist,
    };
    let eps = args.eps.or(sidecar.as_ref().map(|s| s.eps)).unwrap_or(0.1);
    let source = match &args.data_dir {
        Some(dir) => DataSource::Dir(dir.clone()),
        None => DataSource::Default,
    };
    let (net, weights) = load_network(&args, dataset, sidecar.as_ref())?;
    let splits = crate::data::load(dataset, &source)
        .with_context(|| format!("loading the {dataset} dataset"))?;
    if args.samples == 0 {
        bail!("--samples must be at least 1");
    }
    if args.samples > splits.test.len() {
        bail!(
            "--samples {}: the {dataset} test split has {} images",
            args.samples,
            splits.test.len()
        );
    }
    let test = splits.test.take(args.samples);
    net.spec()
        .check_input_shape(test.shape(), dataset.as_str())?;
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

fn load_network(
    args: &VerifyArgs,
    dataset: DatasetName,
    sidecar: Option<&crate::train::Sidecar>,
) -> anyhow::Result<(Net, PathBuf)> {
    let (weights, _) = crate::train::checkpoint_files(&args.model);
    let spec = if let Some(path) = &args.net {
        NetSpec::from_yaml_file(path)?
    } else if let Some(arch) = &args.arch {
        NetSpec::builtin(
            arch,
            dataset.input_shape(),
            dataset.num_classes(),
            dataset.normalization(),
        )?
    } else if let Some(sidecar) = sidecar {
        sidecar.net.clone()
    } else {
        bail!(
            "{} has no sidecar (model.json) describing its architecture: pass --arch (fc, cnn-small, cnn-medium, cnn7) or --net FILE.yaml",
            args.model.display()
        );
    };
    let net = Net::load(&spec, &weights)?;
    Ok((net, weights))
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
