//! Natural, adversarial and certified accuracy, including the IBP → CROWN-IBP → CROWN (→ α-CROWN)
//! cascade.
//!
//! Order of work per batch: clean prediction, PGD on the correctly classified samples, then the
//! bound methods cheapest first, each only on samples still undecided. A sample PGD breaks is
//! never handed to a verifier, and a certificate on a sample PGD broke is reported as an error
//! (it would mean an unsound bound).

mod bab;
mod radius;

pub use bab::{
    BabConfig, BabOutcome, BabVerdict, CompleteReport, bab_verify_sample, complete_undecided,
    is_counterexample, verify_complete,
};

pub use radius::{
    RADIUS_FACTORS, RadiusPoint, RadiusReport, curve_area, evaluate_radii, mean_unstable_relus,
};

use crate::attack::{AttackError, PgdConfig, pgd_attack, predictions};
use crate::bounds::{BoundMethod, BoundsError, Interval, margin_lower_bounds};
use crate::model::{ModelError, Net, Normalization};
use candle_core::{DType, Device, Tensor};
use rand::{SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// How to evaluate a network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalConfig {
    /// ℓ∞ radius in [0, 1] pixel units.
    pub eps: f64,
    /// The attack used for adversarial accuracy.
    pub pgd: PgdConfig,
    /// Bound methods tried in order on still-undecided samples (the cascade).
    pub methods: Vec<BoundMethod>,
    /// Samples per batch for the attack and the cheap bound methods.
    pub batch_size: usize,
    /// Samples per batch for full CROWN and α-CROWN, whose memory grows with batch × neurons.
    pub crown_batch_size: usize,
    /// Seed of the attack's random starts.
    pub seed: u64,
}

impl EvalConfig {
    /// The cascade IBP → CROWN-IBP → CROWN studies validate with, and the evaluation PGD, at
    /// radius `eps`.
    pub fn cascade(eps: f64) -> EvalConfig {
        EvalConfig {
            eps,
            pgd: PgdConfig::evaluation(),
            methods: BoundMethod::FAST.to_vec(),
            batch_size: 256,
            crown_batch_size: 16,
            seed: 0,
        }
    }

    /// A cheaper, still sound evaluation for scores that only rank configurations (rungs
    /// below a multi-fidelity study's full budget): the quick attack
    /// ([`PgdConfig::quick_evaluation`]) and the cascade IBP → CROWN-IBP, without CROWN. It
    /// certifies a subset of what [`EvalConfig::cascade`] certifies.
    pub fn quick(eps: f64) -> EvalConfig {
        EvalConfig {
            pgd: PgdConfig::quick_evaluation(),
            methods: vec![BoundMethod::Ibp, BoundMethod::CrownIbp],
            ..EvalConfig::cascade(eps)
        }
    }

    /// The full cascade IBP → CROWN-IBP → CROWN → α-CROWN at radius `eps`.
    pub fn full_cascade(eps: f64) -> EvalConfig {
        EvalConfig {
            methods: BoundMethod::ALL.to_vec(),
            ..EvalConfig::cascade(eps)
        }
    }
}

/// Verdict on one sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleResult {
    /// True class.
    pub label: u32,
    /// Predicted class on the clean input.
    pub predicted: u32,
    /// Correct on the clean input.
    pub correct: bool,
    /// Correct and PGD found no misclassified point.
    pub adversarially_robust: bool,
    /// The first cascade method that proved robustness, if any.
    pub certified_by: Option<BoundMethod>,
}

/// What one cascade stage did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageReport {
    /// The bound method of this stage.
    pub method: BoundMethod,
    /// Samples handed to it (correct, PGD-robust, not certified by an earlier stage).
    pub attempted: usize,
    /// Samples it certified.
    pub certified: usize,
    /// Wall time spent in it.
    pub seconds: f64,
}

/// Accuracies of a network on a sample set, with per-sample verdicts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Number of samples evaluated.
    pub samples: usize,
    /// ℓ∞ radius used.
    pub eps: f64,
    /// Share classified correctly.
    pub natural_accuracy: f64,
    /// Share correct and not broken by PGD.
    pub adversarial_accuracy: f64,
    /// Share correct and certified by some stage.
    pub certified_accuracy: f64,
    /// Per bound method, in cascade order.
    pub stages: Vec<StageReport>,
    /// Wall time of the attack.
    pub attack_seconds: f64,
    /// Total wall time.
    pub seconds: f64,
    /// Per-sample verdicts, in input order.
    pub per_sample: Vec<SampleResult>,
}

/// What can go wrong while evaluating.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Images and labels disagree in count, or the set is empty.
    #[error("invalid evaluation input: {0}")]
    InvalidInput(String),
    /// A verifier certified a sample PGD broke: an unsound bound (a bug, never expected).
    #[error("soundness violation: {method} certified sample {sample}, which PGD misclassifies")]
    SoundnessViolation {
        /// The method at fault.
        method: BoundMethod,
        /// Index of the sample.
        sample: usize,
    },
    /// Branch and bound certified a sample PGD broke: an unsound bound (a bug, never expected).
    #[error(
        "soundness violation: branch and bound certified sample {sample}, which PGD misclassifies"
    )]
    BabSoundnessViolation {
        /// Index of the sample.
        sample: usize,
    },
    /// The attack failed.
    #[error(transparent)]
    Attack(#[from] AttackError),
    /// Bound propagation failed.
    #[error(transparent)]
    Bounds(#[from] BoundsError),
    /// The network failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

/// Evaluates `net` on `images` (`[N, C, H, W]` in [0, 1]) and `labels` (`[N]`).
///
/// `on_progress(done, total)` is called after each batch, for progress bars.
pub fn evaluate(
    net: &Net,
    images: &Tensor,
    labels: &Tensor,
    config: &EvalConfig,
    mut on_progress: impl FnMut(usize, usize),
) -> Result<EvalReport, EvalError> {
    let start = Instant::now();
    let total = images.dim(0)?;
    if labels.dim(0)? != total {
        return Err(EvalError::InvalidInput(format!(
            "{total} images but {} labels",
            labels.dim(0)?
        )));
    }
    if total == 0 {
        return Err(EvalError::InvalidInput("no samples to evaluate".into()));
    }
    let net = net.detached();
    let labels = labels.to_dtype(DType::U32)?;
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut per_sample = Vec::with_capacity(total);
    let mut stages: Vec<StageReport> = config
        .methods
        .iter()
        .map(|&method| StageReport {
            method,
            attempted: 0,
            certified: 0,
            seconds: 0.0,
        })
        .collect();
    let mut attack_seconds = 0.0;
    let batch_size = config.batch_size.max(1);
    for offset in (0..total).step_by(batch_size) {
        let count = batch_size.min(total - offset);
        let batch_images = images.narrow(0, offset, count)?;
        let batch_labels = labels.narrow(0, offset, count)?;
        let label_values = batch_labels.to_vec1::<u32>()?;
        let predicted = predictions(&net.forward(&batch_images)?)?;

        let attack_start = Instant::now();
        let attack = pgd_attack(
            &net,
            &batch_images,
            &batch_labels,
            config.eps,
            &config.pgd,
            &mut rng,
        )?;
        attack_seconds += attack_start.elapsed().as_secs_f64();

        let mut certified_by: Vec<Option<BoundMethod>> = vec![None; count];
        for stage in stages.iter_mut() {
            let undecided: Vec<usize> = (0..count)
                .filter(|&i| attack.robust[i] && certified_by[i].is_none())
                .collect();
            if undecided.is_empty() {
                continue;
            }
            let stage_start = Instant::now();
            let chunk = if stage.method.is_per_neuron() {
                config.crown_batch_size.max(1)
            } else {
                batch_size
            };
            for rows in undecided.chunks(chunk) {
                let certified = certify_rows(
                    &net,
                    &batch_images,
                    &batch_labels,
                    rows,
                    config.eps,
                    stage.method,
                )?;
                for (&row, ok) in rows.iter().zip(certified) {
                    if ok {
                        certified_by[row] = Some(stage.method);
                        stage.certified += 1;
                    }
                }
            }
            stage.attempted += undecided.len();
            stage.seconds += stage_start.elapsed().as_secs_f64();
        }
        for i in 0..count {
            let correct = predicted[i] == label_values[i];
            let adversarially_robust = correct && attack.robust[i];
            if certified_by[i].is_some() && !adversarially_robust {
                return Err(EvalError::SoundnessViolation {
                    method: certified_by[i].unwrap_or(BoundMethod::Ibp),
                    sample: offset + i,
                });
            }
            per_sample.push(SampleResult {
                label: label_values[i],
                predicted: predicted[i],
                correct,
                adversarially_robust,
                certified_by: certified_by[i],
            });
        }
        on_progress(offset + count, total);
    }
    let share = |f: &dyn Fn(&SampleResult) -> bool| {
        per_sample.iter().filter(|s| f(s)).count() as f64 / total as f64
    };
    let report = EvalReport {
        samples: total,
        eps: config.eps,
        natural_accuracy: share(&|s| s.correct),
        adversarial_accuracy: share(&|s| s.adversarially_robust),
        certified_accuracy: share(&|s| s.certified_by.is_some()),
        stages,
        attack_seconds,
        seconds: start.elapsed().as_secs_f64(),
        per_sample,
    };
    debug_assert!(report.natural_accuracy >= report.adversarial_accuracy);
    debug_assert!(report.adversarial_accuracy >= report.certified_accuracy);
    Ok(report)
}

/// Whether each listed sample is certified by `method`: every margin lower bound is positive.
pub fn certify_rows(
    net: &Net,
    images: &Tensor,
    labels: &Tensor,
    rows: &[usize],
    eps: f64,
    method: BoundMethod,
) -> Result<Vec<bool>, EvalError> {
    let index = Tensor::from_vec(
        rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
        rows.len(),
        &Device::Cpu,
    )?;
    let inputs = images.index_select(&index, 0)?;
    let labels = labels.index_select(&index, 0)?;
    let input = Interval::linf_ball(&inputs, eps)?;
    let lower = margin_lower_bounds(net, &input, &labels, method, Normalization::Population)?;
    let minimum = lower.min_keepdim(1)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(minimum.into_iter().map(|m| m > 0.0).collect())
}
