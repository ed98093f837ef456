//! `cthpo train`: trains one network with one method and configuration, then evaluates it.

use crate::data::{DataSource, DatasetName};
use crate::eval::{EvalConfig, evaluate};
use crate::model::{Net, NetSpec};
use crate::train::{
    BatchProgress, CheckpointMetrics, Control, EpochReport, Method, Sidecar, TrainConfig,
    TrainObserver, TrainOptions, fit, save_checkpoint,
};
use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Arguments of `cthpo train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Training method: standard, pgd, ibp, crown_ibp, sabr, taps, staps or mtl_ibp.
    #[arg(long)]
    method: String,
    /// Dataset: mnist, fashion-mnist or cifar10.
    #[arg(long, default_value = "mnist")]
    dataset: String,
    /// Directory with the dataset files (default: embedded MNIST subset; Fashion-MNIST from
    /// /usr/share/datasets/fashion-mnist).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Builtin architecture: fc, cnn-small, cnn-medium or cnn7.
    #[arg(long, default_value = "cnn-small", conflicts_with = "net")]
    arch: String,
    /// A YAML network description instead of a builtin architecture.
    #[arg(long)]
    net: Option<PathBuf>,
    /// ℓ∞ radius to certify, in [0,1] pixel units.
    #[arg(long, default_value_t = 0.1, allow_negative_numbers = true)]
    eps: f64,
    /// YAML map of hyperparameters (e.g. exported by `cthpo best --export`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override one hyperparameter, e.g. `--set learning_rate=1e-3` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Epochs to train.
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    /// Training images to use (default: every image of the training split).
    #[arg(long)]
    train_samples: Option<usize>,
    /// Validation images held out of the training split and scored at the end.
    #[arg(long, default_value_t = 1000)]
    val_samples: usize,
    /// Seed of the split, initialisation, batch order and attacks.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run directory to write model.safetensors and model.json into (new or empty).
    #[arg(long)]
    out: PathBuf,
    /// Replace the checkpoint of a run directory that already holds one.
    #[arg(long)]
    force: bool,
}

/// Runs `cthpo train`.
pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let created = prepare_run_dir(&args.out, args.force)?;
    if created {
        // Ctrl-C before the checkpoint is written leaves no empty run directory behind.
        let out = args.out.clone();
        let _ = ctrlc::set_handler(move || {
            let _ = std::fs::remove_dir(&out);
            std::process::exit(super::INTERRUPTED_EXIT_CODE);
        });
    }
    let result = train(&args);
    if result.is_err() && created {
        // Leave nothing behind: the directory was made for this run and is still empty.
        let _ = std::fs::remove_dir(&args.out);
    }
    result
}

/// Checks before any work that `out` can take the checkpoint: a new directory (created now,
/// returns true), an empty one, or with `force` one holding an earlier run.
fn prepare_run_dir(out: &Path, force: bool) -> anyhow::Result<bool> {
    if out.exists() && !out.is_dir() {
        bail!(
            "--out {} is a file; give a directory for model.safetensors and model.json",
            out.display()
        );
    }
    if out.is_dir() {
        let mut entries = std::fs::read_dir(out)
            .with_context(|| format!("reading --out {}", out.display()))?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect::<Vec<_>>();
        entries.sort();
        if !entries.is_empty() && !force {
            bail!(
                "--out {} is not empty ({}): pass --force to replace its checkpoint, or choose a new directory",
                out.display(),
                entries.join(", ")
            );
        }
        let probe = out.join(".cthpo-write-test");
        std::fs::write(&probe, b"")
            .with_context(|| format!("--out {} is not writable", out.display()))?;
        let _ = std::fs::remove_file(probe);
        return Ok(false);
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating --out {}", out.display()))?;
    Ok(true)
}

fn train(args: &TrainArgs) -> anyhow::Result<()> {
    if !(args.eps.is_finite() && (0.0..=1.0).contains(&args.eps)) {
        bail!("--eps {} must be in [0, 1] (pixel units)", args.eps);
    }
    let method: Method = args.method.parse()?;
    let dataset: DatasetName = args.dataset.parse()?;
    let config = load_config(method, args.config.as_deref(), &args.set)?;
    let (spec, arch) = match &args.net {
        Some(path) => (NetSpec::from_yaml_file(path)?, None),
        None => (
            NetSpec::builtin(
                &args.arch,
                dataset.input_shape(),
                dataset.num_classes(),
                dataset.normalization(),
            )?,
            Some(args.arch.clone()),
        ),
    };
    if let Some(path) = &args.net {
        spec.check_input_shape(dataset.input_shape(), dataset.as_str())
            .with_context(|| format!("--net {}", path.display()))?;
    }
    if args.epochs == 0 {
        bail!("--epochs must be at least 1");
    }
    if args.val_samples == 0 {
        bail!("--val-samples must be at least 1: the trained network is scored on them");
    }
    let splits = crate::data::load(dataset, &DataSource::from(args.data_dir.clone()))
        .with_context(|| format!("loading the {dataset} dataset"))?;
    let (train, validation) = splits
        .train_validation(args.val_samples, args.train_samples, args.seed)
        .context("--val-samples and --train-samples")?;
    let (images, labels) = train.tensors()?;
    let mut net = Net::new(&spec, method.initialization(), args.seed)?;
    let options = TrainOptions {
        epochs: args.epochs,
        eps: args.eps,
        seed: args.seed,
    };
    eprintln!(
        "training {} on {} {} images ({} epochs, ε = {}) …",
        method,
        train.len(),
        dataset,
        args.epochs,
        args.eps
    );
    let mut observer = BarObserver::new();
    let summary = fit(
        &mut net,
        method,
        &config,
        &options,
        &images,
        &labels,
        &mut observer,
    )
    .with_context(|| format!("training with {method}"))?;
    observer.bar.finish_and_clear();

    let (val_images, val_labels) = validation.tensors()?;
    let progress = ProgressBar::new(validation.len() as u64).with_style(
        ProgressStyle::with_template("evaluating {bar:30} {pos}/{len} [{elapsed_precise}]")
            .expect("static template"),
    );
    let report = evaluate(
        &net,
        &val_images,
        &val_labels,
        &EvalConfig::cascade(args.eps),
        |done, _| progress.set_position(done as u64),
    )?;
    progress.finish_and_clear();
    let mut sidecar = Sidecar::new(
        &net,
        arch,
        dataset.as_str(),
        method,
        &config,
        args.eps,
        args.epochs,
        args.seed,
        summary.seconds,
    );
    sidecar.metrics = Some(CheckpointMetrics {
        samples: report.samples,
        natural_accuracy: report.natural_accuracy,
        adversarial_accuracy: report.adversarial_accuracy,
        certified_accuracy: report.certified_accuracy,
    });
    save_checkpoint(&args.out, &net, &sidecar)?;
    outln!(
        "trained {method} in {:.1} s; on {} validation images: natural {:.2} %, adversarial {:.2} %, certified {:.2} %",
        summary.seconds,
        report.samples,
        100.0 * report.natural_accuracy,
        100.0 * report.adversarial_accuracy,
        100.0 * report.certified_accuracy
    );
    outln!("checkpoint written to {}", args.out.display());
    Ok(())
}

/// Hyperparameters from an optional YAML map plus `key=value` overrides.
pub(crate) fn load_config(
    method: Method,
    file: Option<&Path>,
    overrides: &[String],
) -> anyhow::Result<TrainConfig> {
    let mut values: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading configuration {}", path.display()))?;
        values = serde_saphyr::from_str(&text).with_context(|| {
            format!(
                "configuration {} is not a YAML map of hyperparameters",
                path.display()
            )
        })?;
    }
    for assignment in overrides {
        let (key, value) = TrainConfig::parse_assignment(assignment)?;
        values.insert(key, value);
    }
    let origin = file
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "--set".into());
    TrainConfig::from_map(method, &values).with_context(|| format!("configuration from {origin}"))
}

/// Progress bar over the batches of each epoch: loss, ε and throughput.
struct BarObserver {
    bar: ProgressBar,
}

impl BarObserver {
    fn new() -> BarObserver {
        let bar = ProgressBar::new(0).with_style(
            ProgressStyle::with_template("{prefix} {bar:30} {pos}/{len} batches {msg}")
                .expect("static template"),
        );
        BarObserver { bar }
    }
}

impl TrainObserver for BarObserver {
    fn on_batch(&mut self, progress: &BatchProgress) -> Control {
        self.bar.set_length(progress.batches as u64);
        self.bar.set_position(progress.batch as u64);
        self.bar.set_prefix(format!("epoch {}", progress.epoch));
        self.bar
            .set_message(format!("loss {:.4}  ε {:.4}", progress.loss, progress.eps));
        Control::Continue
    }

    fn on_epoch(&mut self, report: &EpochReport, _net: &Net) -> Control {
        let line = format!(
            "epoch {}/{}: loss {:.4}, ε {:.4}, lr {:.2e}, {:.0} samples/s",
            report.epoch,
            report.epochs,
            report.loss,
            report.eps,
            report.learning_rate,
            report.samples_per_second
        );
        // Hidden bars (output not a terminal, e.g. a log file) drop println: say it anyway.
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
        Control::Continue
    }
}
