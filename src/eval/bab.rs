//! Branch and bound: complete verification of one sample by splitting unstable ReLUs.
//!
//! The ε-ball is first attacked with PGD, then bounded by α-CROWN. While some sub-domain's
//! bound is not positive, the sub-domains with the lowest bounds are each split on the unstable
//! ReLU with the largest BaBSR-style score into an active and an inactive half, and the halves
//! are bounded in one batch ([`bound_subdomains`]). The point of the box that minimises each
//! half's linear bound is checked by a forward pass and attacked by a short PGD. A sample ends
//! certified when no sub-domain is left, falsified when a point of the ball ∩ [0, 1] is
//! misclassified (checked by a forward pass), or unknown at the timeout (or when a sub-domain
//! with no unstable neuron left stays unproved: without β-CROWN's multipliers the split
//! constraints of the first ReLU layer do not shrink the box, so such a sub-domain is
//! undecidable here).

use super::EvalError;
use crate::attack::{PgdConfig, pgd_attack, pgd_attack_from, predictions};
use crate::bounds::{
    AlphaConfig, Interval, ReluSplit, Subdomain, SubdomainBound, bound_subdomains, margin_spec,
};
use crate::model::Net;
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// Settings of branch and bound.
#[derive(Debug, Clone, PartialEq)]
pub struct BabConfig {
    /// Wall time allowed per sample; the sample is unknown when it runs out.
    pub timeout: Duration,
    /// Sub-domains bounded per batch (each split makes two).
    pub batch_domains: usize,
    /// Largest number of open sub-domains kept; beyond it the sample is unknown.
    pub max_domains: usize,
    /// α-CROWN's settings on the whole ball.
    pub root_alpha: AlphaConfig,
    /// α-CROWN's settings on the sub-domains.
    pub domain_alpha: AlphaConfig,
    /// The attack on the whole ball before branching.
    pub pgd: PgdConfig,
    /// PGD steps from each new sub-domain's candidate point (0: only check the point).
    pub domain_pgd_steps: usize,
}

impl Default for BabConfig {
    fn default() -> Self {
        BabConfig {
            timeout: Duration::from_secs(30),
            batch_domains: 64,
            max_domains: 20_000,
            root_alpha: AlphaConfig::default(),
            domain_alpha: AlphaConfig {
                iterations: 5,
                ..AlphaConfig::default()
            },
            pgd: PgdConfig::evaluation(),
            domain_pgd_steps: 10,
        }
    }
}

/// Branch and bound's verdict on one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BabVerdict {
    /// Every point of the ball ∩ [0, 1] is classified correctly.
    Certified,
    /// A point of the ball ∩ [0, 1] is misclassified (the counterexample was checked).
    Falsified,
    /// Undecided within the timeout or the domain limit.
    Unknown,
}

/// What branch and bound found for one sample.
#[derive(Debug, Clone, PartialEq)]
pub struct BabOutcome {
    /// The verdict.
    pub verdict: BabVerdict,
    /// For a falsified sample: a misclassified point of the ball (flat, checked).
    pub counterexample: Option<Vec<f32>>,
    /// Sub-domains bounded (the ball itself counts as one).
    pub domains: usize,
    /// Wall time spent on the sample.
    pub seconds: f64,
}

/// One open sub-domain: its splits, its bound and which rows are still unproved.
struct Domain {
    splits: Vec<ReluSplit>,
    bound: SubdomainBound,
    open: Vec<bool>,
}

impl Domain {
    /// Lowest bound among the rows still open (the priority: lowest first).
    fn worst(&self) -> f32 {
        self.bound
            .lower
            .iter()
            .zip(&self.open)
            .filter(|(_, open)| **open)
            .map(|(&l, _)| l)
            .fold(f32::INFINITY, f32::min)
    }
}

/// Whether `point` (`[1, *input]`) is a counterexample for `image` (`[1, *input]`) with label
/// `label` at radius `eps`: inside the ball ∩ [0, 1] and classified as another class.
pub fn is_counterexample(
    net: &Net,
    image: &Tensor,
    label: u32,
    eps: f64,
    point: &Tensor,
) -> Result<bool, EvalError> {
    if point.dims() != image.dims() {
        return Ok(false);
    }
    let ball = Interval::linf_ball(image, eps)?;
    let values = point.flatten_all()?.to_vec1::<f32>()?;
    let lower = ball.lower.flatten_all()?.to_vec1::<f32>()?;
    let upper = ball.upper.flatten_all()?.to_vec1::<f32>()?;
    let inside = values
        .iter()
        .zip(lower.iter().zip(&upper))
        .all(|(&v, (&l, &u))| l <= v && v <= u);
    if !inside {
        return Ok(false);
    }
    Ok(predictions(&net.forward(point)?)?[0] != label)
}

/// Decides one sample (`image` `[1, *input]` in [0, 1], its `label`) at radius `eps` by branch
/// and bound.
pub fn bab_verify_sample(
    net: &Net,
    image: &Tensor,
    label: u32,
    eps: f64,
    config: &BabConfig,
    rng: &mut StdRng,
) -> Result<BabOutcome, EvalError> {
    let start = Instant::now();
    let net = net.detached();
    let labels = Tensor::from_vec(vec![label], 1, &Device::Cpu)?;
    let finish = |verdict, counterexample, domains| BabOutcome {
        verdict,
        counterexample,
        domains,
        seconds: start.elapsed().as_secs_f64(),
    };
    let attack = pgd_attack(&net, image, &labels, eps, &config.pgd, rng)?;
    if !attack.robust[0] && is_counterexample(&net, image, label, eps, &attack.adversarial)? {
        let point = attack.adversarial.flatten_all()?.to_vec1::<f32>()?;
        return Ok(finish(BabVerdict::Falsified, Some(point), 0));
    }
    let input = Interval::linf_ball(image, eps)?;
    let spec = margin_spec(&labels, net.num_classes())?;
    let rows = spec.dim(1)?;
    let root = bound_subdomains(
        &net,
        &input,
        &spec,
        &[Subdomain {
            parent: None,
            splits: &[],
        }],
        &[vec![true; rows]],
        &config.root_alpha,
    )?;
    let mut bounded = 1;
    let mut queue: Vec<Domain> = Vec::new();
    let mut candidates = Vec::new();
    for bound in root {
        if let Some(domain) = still_open(Vec::new(), bound, &vec![true; rows]) {
            candidates.push(domain.bound.candidate.clone());
            queue.push(domain);
        }
    }
    if let Some(point) = find_counterexample(&net, image, label, eps, &candidates, config, rng)? {
        return Ok(finish(BabVerdict::Falsified, Some(point), bounded));
    }
    let half_batch = (config.batch_domains / 2).max(1);
    while !queue.is_empty() {
        if start.elapsed() >= config.timeout || queue.len() > config.max_domains {
            return Ok(finish(BabVerdict::Unknown, None, bounded));
        }
        // Lowest bounds last, so the batch pops the hardest sub-domains.
        queue.sort_by(|a, b| b.worst().total_cmp(&a.worst()));
        let picked: Vec<Domain> = queue.split_off(queue.len().saturating_sub(half_batch));
        let mut child_splits: Vec<Vec<ReluSplit>> = Vec::with_capacity(2 * picked.len());
        let mut parents: Vec<usize> = Vec::with_capacity(2 * picked.len());
        for (p, domain) in picked.iter().enumerate() {
            let Some((layer, neuron)) = domain.bound.branch else {
                // Nothing left to split and the bound is still not positive: undecidable here.
                return Ok(finish(BabVerdict::Unknown, None, bounded));
            };
            for active in [true, false] {
                let mut splits = domain.splits.clone();
                splits.push(ReluSplit {
                    layer,
                    neuron,
                    active,
                });
                child_splits.push(splits);
                parents.push(p);
            }
        }
        let subdomains: Vec<Subdomain<'_>> = child_splits
            .iter()
            .zip(&parents)
            .map(|(splits, &p)| Subdomain {
                parent: Some(&picked[p].bound.relu_bounds),
                splits,
            })
            .collect();
        let open_rows: Vec<Vec<bool>> = parents.iter().map(|&p| picked[p].open.clone()).collect();
        let bounds = bound_subdomains(
            &net,
            &input,
            &spec,
            &subdomains,
            &open_rows,
            &config.domain_alpha,
        )?;
        bounded += bounds.len();
        let mut candidates = Vec::new();
        for ((bound, splits), open) in bounds.into_iter().zip(child_splits).zip(&open_rows) {
            if let Some(domain) = still_open(splits, bound, open) {
                candidates.push(domain.bound.candidate.clone());
                queue.push(domain);
            }
        }
        if let Some(point) = find_counterexample(&net, image, label, eps, &candidates, config, rng)?
        {
            return Ok(finish(BabVerdict::Falsified, Some(point), bounded));
        }
    }
    Ok(finish(BabVerdict::Certified, None, bounded))
}

/// The sub-domain if some row is still unproved on it (`None` when it is empty or proved).
fn still_open(
    splits: Vec<ReluSplit>,
    bound: SubdomainBound,
    parent_open: &[bool],
) -> Option<Domain> {
    if !bound.feasible {
        return None;
    }
    let open: Vec<bool> = parent_open
        .iter()
        .zip(&bound.lower)
        .map(|(&open, &lower)| open && lower <= 0.0)
        .collect();
    open.iter().any(|&o| o).then_some(Domain {
        splits,
        bound,
        open,
    })
}

/// A checked counterexample among the candidate points (flat), or found by PGD started from
/// them.
fn find_counterexample(
    net: &Net,
    image: &Tensor,
    label: u32,
    eps: f64,
    candidates: &[Vec<f32>],
    config: &BabConfig,
    rng: &mut StdRng,
) -> Result<Option<Vec<f32>>, EvalError> {
    if candidates.is_empty() {
        return Ok(None);
    }
    let count = candidates.len();
    let mut dims = image.dims().to_vec();
    dims[0] = count;
    let starts = Tensor::from_vec(candidates.concat(), dims.as_slice(), &Device::Cpu)?;
    let images = image.broadcast_as(dims.as_slice())?.contiguous()?;
    let labels = Tensor::from_vec(vec![label; count], count, &Device::Cpu)?;
    let pgd = PgdConfig {
        steps: config.domain_pgd_steps,
        restarts: 1,
        random_start: false,
        ..config.pgd.clone()
    };
    // With zero steps the attack only classifies the starts.
    let attack = pgd_attack_from(net, &images, &labels, eps, &starts, &pgd, rng)?;
    let checked_points = [&starts, &attack.adversarial];
    for points in checked_points {
        let predicted = predictions(&net.forward(points)?)?;
        for (row, &class) in predicted.iter().enumerate() {
            if class == label {
                continue;
            }
            let point = points.narrow(0, row, 1)?;
            if is_counterexample(net, image, label, eps, &point)? {
                return Ok(Some(point.flatten_all()?.to_vec1::<f32>()?));
            }
        }
    }
    Ok(None)
}

/// Complete verification of a sample set: the cascade first, then branch and bound on every
/// sample it leaves undecided.
#[derive(Debug, Clone, PartialEq)]
pub struct CompleteReport {
    /// The cascade's report (natural, PGD and incomplete certified accuracy).
    pub cascade: super::EvalReport,
    /// Per sample, in input order: the final verdict.
    pub verdicts: Vec<BabVerdict>,
    /// Samples handed to branch and bound and its outcome on each (input index, outcome).
    pub searched: Vec<(usize, BabOutcome)>,
    /// Total wall time.
    pub seconds: f64,
}

impl CompleteReport {
    /// How many samples ended with `verdict`.
    pub fn count(&self, verdict: BabVerdict) -> usize {
        self.verdicts.iter().filter(|&&v| v == verdict).count()
    }
}

/// Runs the cascade of `cascade` on `images` / `labels`, then [`complete_undecided`].
pub fn verify_complete(
    net: &Net,
    images: &Tensor,
    labels: &Tensor,
    cascade: &super::EvalConfig,
    bab: &BabConfig,
    on_progress: impl FnMut(usize, usize),
) -> Result<CompleteReport, EvalError> {
    let start = Instant::now();
    let report = super::evaluate(net, images, labels, cascade, |_, _| {})?;
    let mut complete = complete_undecided(net, images, report, cascade.seed, bab, on_progress)?;
    complete.seconds = start.elapsed().as_secs_f64();
    Ok(complete)
}

/// Runs [`bab_verify_sample`] on every sample of a cascade's `report` (on `images`, at its ε)
/// that the cascade neither certified nor found misclassified on the clean input. A certificate
/// on a sample the cascade's PGD broke is reported as a soundness violation.
/// `on_progress(done, total)` is called after each branch-and-bound sample.
pub fn complete_undecided(
    net: &Net,
    images: &Tensor,
    report: super::EvalReport,
    seed: u64,
    bab: &BabConfig,
    mut on_progress: impl FnMut(usize, usize),
) -> Result<CompleteReport, EvalError> {
    use rand::SeedableRng;
    let start = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed ^ 0xbab);
    let verdicts: Vec<BabVerdict> = report
        .per_sample
        .iter()
        .map(|sample| {
            if !sample.correct {
                BabVerdict::Falsified
            } else if sample.certified_by.is_some() {
                BabVerdict::Certified
            } else {
                BabVerdict::Unknown
            }
        })
        .collect();
    let todo: Vec<usize> = (0..verdicts.len())
        .filter(|&i| verdicts[i] == BabVerdict::Unknown)
        .collect();
    let mut complete = CompleteReport {
        verdicts,
        searched: Vec::with_capacity(todo.len()),
        seconds: 0.0,
        cascade: report,
    };
    for (done, &i) in todo.iter().enumerate() {
        let image = images.narrow(0, i, 1)?;
        let sample = &complete.cascade.per_sample[i];
        let outcome = bab_verify_sample(
            net,
            &image,
            sample.label,
            complete.cascade.eps,
            bab,
            &mut rng,
        )?;
        if outcome.verdict == BabVerdict::Certified && !sample.adversarially_robust {
            return Err(EvalError::BabSoundnessViolation { sample: i });
        }
        complete.verdicts[i] = outcome.verdict;
        complete.searched.push((i, outcome));
        on_progress(done + 1, todo.len());
    }
    complete.seconds = complete.cascade.seconds + start.elapsed().as_secs_f64();
    Ok(complete)
}
