//! One trial: a configuration trained (from scratch, or on from an earlier trial's checkpoint
//! in a multi-fidelity study) and scored on the validation subset, with time limits,
//! cancellation and panics turned into failures instead of crashes.

use super::StudyError;
use super::fidelity::RungScoring;
use super::spec::{ObjectiveKind, StudySpec};
use crate::data::{DataSource, DatasetName};
use crate::eval::evaluate;
use crate::model::{ModelError, Net, NetSpec};
use crate::train::{
    BatchProgress, CheckpointMetrics, Control, EpochReport, Method, Sidecar, TrainConfig,
    TrainError, TrainObserver, TrainOptions, TrainState, WEIGHTS_FILE, fit_epochs,
    reached_eps_share, save_checkpoint,
};
use candle_core::Tensor;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The tensors every trial of a study trains and scores on (loaded once per study).
pub struct StudyData {
    /// Training images `[N, C, H, W]`.
    pub train_images: Tensor,
    /// Training labels `[N]`.
    pub train_labels: Tensor,
    /// Validation images (held out of the training split by the study seed).
    pub validation_images: Tensor,
    /// Validation labels.
    pub validation_labels: Tensor,
    /// The network every trial starts from (fresh weights per trial).
    pub net: NetSpec,
}

impl StudyData {
    /// Loads the dataset, splits off `val_samples` validation images by the study seed and
    /// takes `train_samples` training images.
    pub fn load(spec: &StudySpec) -> Result<StudyData, StudyError> {
        let dataset: DatasetName = spec
            .dataset
            .parse()
            .map_err(|e: crate::data::DataError| StudyError::setting("dataset", e))?;
        let splits = crate::data::load(dataset, &DataSource::from(spec.data_dir.clone()))?;
        let (train, validation) = splits
            .train_validation(spec.val_samples, spec.train_samples, spec.seed)
            .map_err(|e| {
                let field = match e {
                    crate::data::DataError::TrainingImages { .. } => "train_samples",
                    _ => "val_samples",
                };
                StudyError::setting(field, e)
            })?;
        let net = NetSpec::builtin(
            &spec.arch,
            dataset.input_shape(),
            dataset.num_classes(),
            dataset.normalization(),
        )
        .map_err(|e| StudyError::setting("arch", e))?;
        let (train_images, train_labels) = train.tensors()?;
        let (validation_images, validation_labels) = validation.tensors()?;
        Ok(StudyData {
            train_images,
            train_labels,
            validation_images,
            validation_labels,
            net,
        })
    }
}

/// Scores of a completed trial.
#[derive(Debug, Clone, PartialEq)]
pub struct TrialScores {
    /// Natural accuracy on the validation subset.
    pub natural_accuracy: f64,
    /// PGD accuracy.
    pub adversarial_accuracy: f64,
    /// Certified accuracy (IBP → CROWN-IBP → CROWN cascade).
    pub certified_accuracy: f64,
    /// Weighted objective (higher is better).
    pub objective: f64,
    /// Values stored for the study's directions: `[objective]`, or `[natural, certified]`.
    pub values: Vec<f64>,
    /// Training wall time.
    pub train_seconds: f64,
    /// Evaluation wall time.
    pub eval_seconds: f64,
    /// How the trial was scored (quick below the full budget of a multi-fidelity study).
    pub scoring: RungScoring,
    /// The radius the accuracies were scored at: the study's ε, or less for a rung scored at
    /// the ε its schedule has reached.
    pub scored_eps: f64,
}

/// How far a trial trains: up to `until` epochs of the study's schedules (which span the
/// study's full epoch budget), from scratch or from the checkpoint and training state in
/// `continue_from`.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// Epochs trained when the trial ends.
    pub until: usize,
    /// Checkpoint directory (weights and training state) of the trial this one continues.
    pub continue_from: Option<std::path::PathBuf>,
}

impl Segment {
    /// A whole run from scratch to `epochs`.
    pub fn whole(epochs: usize) -> Segment {
        Segment {
            until: epochs,
            continue_from: None,
        }
    }
}

/// Hooks the driver gives a running trial.
pub trait TrialHooks {
    /// After every epoch: the validation natural accuracy as a learning-curve point.
    fn on_epoch(&mut self, epoch: usize, validation_accuracy: f64);
    /// After every batch (progress display, heartbeats).
    fn on_batch(&mut self, progress: &BatchProgress);
}

/// Why a trial stopped without scores; recorded as a FAIL with this text.
#[derive(Debug, Clone, PartialEq)]
pub struct TrialFailure {
    /// Human-readable reason.
    pub reason: String,
    /// The user asked to stop the study (Ctrl-C) rather than the trial failing on its own:
    /// stored as interrupted ([`crate::store::TrialOutcome::Interrupted`]), run again first.
    pub interrupted: bool,
}

impl TrialFailure {
    /// The trial failed on its own (not stopped by the user); `cause` is the recorded reason.
    fn failed(cause: impl std::fmt::Display) -> TrialFailure {
        TrialFailure {
            reason: cause.to_string(),
            interrupted: false,
        }
    }
}

/// Trains and scores one configuration; every way it can go wrong becomes a [`TrialFailure`].
pub fn run_trial(
    spec: &StudySpec,
    data: &StudyData,
    values: &BTreeMap<String, serde_json::Value>,
    segment: &Segment,
    checkpoint_dir: &Path,
    hooks: &mut dyn TrialHooks,
    cancel: &AtomicBool,
) -> Result<TrialScores, TrialFailure> {
    let method: Method = spec
        .method
        .parse()
        .map_err(|e: TrainError| TrialFailure::failed(e))?;
    let config = TrainConfig::from_map(method, values).map_err(TrialFailure::failed)?;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let run = TrialRun {
            method,
            config: &config,
            segment,
            checkpoint_dir,
        };
        train_and_score(spec, data, &run, hooks, cancel)
    }));
    // Only an interrupted trial's progress is worth keeping: its configuration runs again.
    if !matches!(&outcome, Ok(Err(failure)) if failure.interrupted) {
        super::progress::remove(checkpoint_dir);
    }
    match outcome {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(TrialFailure::failed(format!("trial panicked: {message}")))
        }
    }
}

struct Observer<'a> {
    hooks: &'a mut dyn TrialHooks,
    cancel: &'a AtomicBool,
    deadline: Option<(Instant, Duration)>,
    validation: (&'a Tensor, &'a Tensor),
    /// The trial's checkpoint folder and the sidecar of its progress checkpoints.
    progress: (&'a Path, Sidecar),
}

impl TrainObserver for Observer<'_> {
    fn on_batch(&mut self, progress: &BatchProgress) -> Control {
        self.hooks.on_batch(progress);
        if self.cancel.load(Ordering::SeqCst) {
            return Control::Interrupt;
        }
        if let Some((deadline, limit)) = self.deadline
            && Instant::now() > deadline
        {
            return Control::Stop(format!(
                "exceeded the trial time limit of {}",
                super::format_duration(limit)
            ));
        }
        Control::Continue
    }

    fn on_epoch_state(&mut self, net: &Net, state: &dyn Fn() -> TrainState) -> Control {
        let (dir, sidecar) = &self.progress;
        match super::progress::save(dir, net, sidecar, &state()) {
            Ok(()) => Control::Continue,
            Err(e) => Control::Stop(format!("could not write the epoch checkpoint: {e}")),
        }
    }

    fn on_epoch(&mut self, report: &EpochReport, net: &Net) -> Control {
        if let Ok(accuracy) = natural_accuracy(net, self.validation.0, self.validation.1) {
            self.hooks.on_epoch(report.epoch, accuracy);
        }
        Control::Continue
    }
}

/// Share of the validation images the network classifies correctly.
fn natural_accuracy(net: &Net, images: &Tensor, labels: &Tensor) -> Result<f64, ModelError> {
    let detached = net.detached();
    let total = images.dim(0)?;
    let mut correct = 0usize;
    let labels = labels.to_vec1::<u32>()?;
    for offset in (0..total).step_by(512) {
        let count = 512.min(total - offset);
        let batch = images.narrow(0, offset, count)?;
        let predicted = detached.forward(&batch)?.argmax(1)?.to_vec1::<u32>()?;
        correct += predicted
            .iter()
            .zip(&labels[offset..offset + count])
            .filter(|(p, l)| p == l)
            .count();
    }
    Ok(correct as f64 / total.max(1) as f64)
}

/// What [`train_and_score`] trains, besides the study's settings.
struct TrialRun<'a> {
    method: Method,
    config: &'a TrainConfig,
    segment: &'a Segment,
    checkpoint_dir: &'a Path,
}

fn train_and_score(
    spec: &StudySpec,
    data: &StudyData,
    run: &TrialRun<'_>,
    hooks: &mut dyn TrialHooks,
    cancel: &AtomicBool,
) -> Result<TrialScores, TrialFailure> {
    let TrialRun {
        method,
        config,
        segment,
        checkpoint_dir,
    } = *run;
    let (mut net, resume) = match &segment.continue_from {
        None => (
            Net::new(&data.net, method.initialization(), spec.seed)
                .map_err(TrialFailure::failed)?,
            None,
        ),
        Some(dir) => {
            let net =
                Net::load(&data.net, &dir.join(WEIGHTS_FILE)).map_err(TrialFailure::failed)?;
            (
                net,
                Some(TrainState::load(dir).map_err(TrialFailure::failed)?),
            )
        }
    };
    let options = TrainOptions {
        epochs: spec.epochs,
        eps: spec.eps,
        seed: spec.seed,
    };
    let progress = Sidecar::new(
        &net,
        Some(spec.arch.clone()),
        &spec.dataset,
        method,
        config,
        spec.eps,
        0,
        spec.seed,
        0.0,
    );
    let start = Instant::now();
    let mut observer = Observer {
        hooks,
        cancel,
        deadline: spec.trial_timeout.map(|limit| (start + limit, limit)),
        validation: (&data.validation_images, &data.validation_labels),
        progress: (checkpoint_dir, progress),
    };
    let (summary, state) = fit_epochs(
        &mut net,
        method,
        config,
        &options,
        (&data.train_images, &data.train_labels),
        resume,
        segment.until,
        &mut observer,
    )
    .map_err(|e| TrialFailure {
        interrupted: matches!(e, TrainError::Interrupted),
        reason: e.to_string(),
    })?;
    let eval_start = Instant::now();
    let scoring = spec.fidelity.scoring_at(segment.until, spec.epochs);
    let train_count = data.train_images.dim(0).map_err(TrialFailure::failed)?;
    let reached_share = reached_eps_share(method, config, &options, train_count, segment.until);
    let budget_share = segment.until as f64 / spec.epochs as f64;
    let scored_eps = scoring.scoring_eps(spec.eps, reached_share, budget_share);
    let mut eval = scoring.eval_config(scored_eps);
    eval.seed = spec.seed;
    let report = evaluate(
        &net,
        &data.validation_images,
        &data.validation_labels,
        &eval,
        |_, _| {},
    )
    .map_err(|e| TrialFailure::failed(format!("evaluation failed: {e}")))?;
    let weights = spec.weights;
    let objective = weights.natural * report.natural_accuracy
        + weights.adversarial * report.adversarial_accuracy
        + weights.certified * report.certified_accuracy;
    let values = match spec.objective {
        ObjectiveKind::Weighted => vec![objective],
        ObjectiveKind::Pareto => vec![report.natural_accuracy, report.certified_accuracy],
    };
    let mut sidecar = Sidecar::new(
        &net,
        Some(spec.arch.clone()),
        &spec.dataset,
        method,
        config,
        spec.eps,
        segment.until,
        spec.seed,
        summary.seconds,
    );
    sidecar.metrics = Some(CheckpointMetrics {
        samples: report.samples,
        natural_accuracy: report.natural_accuracy,
        adversarial_accuracy: report.adversarial_accuracy,
        certified_accuracy: report.certified_accuracy,
    });
    save_checkpoint(checkpoint_dir, &net, &sidecar).map_err(TrialFailure::failed)?;
    if segment.until < spec.epochs {
        // A trial stopped at a rung may be continued later.
        state.save(checkpoint_dir).map_err(TrialFailure::failed)?;
    }
    Ok(TrialScores {
        natural_accuracy: report.natural_accuracy,
        adversarial_accuracy: report.adversarial_accuracy,
        certified_accuracy: report.certified_accuracy,
        objective,
        values,
        train_seconds: summary.seconds,
        eval_seconds: eval_start.elapsed().as_secs_f64(),
        scoring,
        scored_eps,
    })
}
