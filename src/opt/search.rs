//! Maximising the acquisition over a space: score many random and quasi-random configurations,
//! then climb from the best of them (and from the best observed ones) by one-parameter moves,
//! as SMAC's local search does. Configurations already evaluated or pending are never returned.

use super::acquisition::{
    log_expected_improvement, log_expected_improvement_gradient, log_probability_of_feasibility,
    log_probability_of_feasibility_gradient,
};
use super::design::halton;
use super::lbfgs::maximise_in_unit_box;
use super::surrogate::{Axes, Surrogate};
use crate::space::{Config, ParamKind, Space};
use rand::rngs::StdRng;
use rand::{Rng, seq::SliceRandom};
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;
use std::collections::HashSet;

/// Local searches started per ask (SMAC3: 10).
const LOCAL_STARTS: usize = 10;
/// Steps a local search may take before it stops (each step moves to the best neighbour).
const MAX_STEPS: usize = 40;
/// Gaussian moves per numeric parameter in a neighbourhood (SMAC3: 4), and their spreads on the
/// unit axis, coarse (SMAC3's 0.2) to fine.
const NUMERIC_MOVES: usize = 4;
const SPREADS: [f64; 4] = [0.2, 0.05, 0.0125, 0.003];
/// Local optima of the neighbourhood search whose continuous coordinates are then polished by
/// L-BFGS along the acquisition's gradient (differentiable surrogates only).
const POLISH_STARTS: usize = 5;
/// L-BFGS iterations per polished point.
const POLISH_ITERATIONS: usize = 40;

/// Batches at least this large are predicted in parallel, one slice per thread.
const PARALLEL_BATCH: usize = 64;

/// Predictions of `model` at `points`, the slices of a large batch on separate threads (a GP's
/// prediction is most of an ask's time: each point costs a triangular solve against the
/// correlation matrix).
fn predict_batch(model: &dyn Surrogate, points: &[Vec<Option<f64>>]) -> Vec<(f64, f64)> {
    let threads = rayon::current_num_threads();
    if points.len() < PARALLEL_BATCH || threads < 2 {
        return model.predict(points);
    }
    points
        .par_chunks(points.len().div_ceil(threads))
        .map(|slice| model.predict(slice))
        .collect::<Vec<_>>()
        .concat()
}

/// One local search in progress: its acquisition value, where it is, and its spread index.
struct Climb {
    value: f64,
    at: Located,
    spread: usize,
}

/// What the maximiser needs to know besides the surrogate.
pub struct SearchInput<'a> {
    /// The space searched.
    pub space: &'a Space,
    /// Its unit-cube axes.
    pub axes: &'a Axes,
    /// Hashes of configurations that must not be proposed.
    pub seen: &'a HashSet<u64>,
    /// The best transformed cost of a feasible trial (EI's incumbent); `None` when no trial
    /// is feasible yet, and the search maximises the probability of feasibility alone.
    pub incumbent: Option<f64>,
    /// Models of the constraint values (≤ 0 feasible); the acquisition adds the log
    /// probability that each is met.
    pub feasibility: &'a [Box<dyn Surrogate>],
    /// Observed configurations worth climbing from (best first).
    pub starts: Vec<Config>,
    /// Random plus quasi-random candidates scored before the local search.
    pub candidates: usize,
    /// Whether the best local optima are polished by L-BFGS along the acquisition's gradient.
    pub polish: bool,
}

/// A configuration with the full unit-cube point it came from (inactive coordinates included,
/// so a parent switched on finds its child a value).
#[derive(Clone)]
struct Located {
    point: Vec<f64>,
    /// `space.encode(&space.decode(&point))`: what the surrogate scores (two points are the
    /// same configuration when these are equal).
    encoded: Vec<Option<f64>>,
}

/// The unseen configuration of highest log expected improvement found, if any.
pub fn maximise(
    input: &SearchInput<'_>,
    surrogate: &dyn Surrogate,
    rng: &mut StdRng,
) -> Option<Config> {
    let space = input.space;
    let dimension = space.dimension();
    // Candidates are located by their encoding alone; the configuration (a map of names) is
    // decoded only for one that beats the best so far, to check it is new.
    let locate = |point: Vec<f64>| Located {
        encoded: space.encode_point(&point),
        point,
    };
    let score = |batch: &[Located]| -> Vec<f64> {
        let encoded: Vec<Vec<Option<f64>>> = batch.iter().map(|c| c.encoded.clone()).collect();
        let mut values: Vec<f64> = match input.incumbent {
            Some(incumbent) => predict_batch(surrogate, &encoded)
                .into_iter()
                .map(|(mean, variance)| log_expected_improvement(mean, variance, incumbent))
                .collect(),
            None => vec![0.0; batch.len()],
        };
        for model in input.feasibility {
            let predicted = predict_batch(model.as_ref(), &encoded);
            for (value, (mean, variance)) in values.iter_mut().zip(predicted) {
                *value += log_probability_of_feasibility(mean, variance);
            }
        }
        values
            .into_iter()
            .map(|v| if v.is_nan() { f64::NEG_INFINITY } else { v })
            .collect()
    };

    let half = input.candidates / 2;
    let mut pool: Vec<Located> = (0..input.candidates - half)
        .map(|_| locate((0..dimension).map(|_| rng.random_range(0.0..1.0)).collect()))
        .collect();
    pool.extend(halton(half, dimension, rng).into_iter().map(locate));
    let scores = score(&pool);
    let mut best: Option<(f64, Located)> = None;
    let consider = |value: f64, candidate: &Located, best: &mut Option<(f64, Located)>| {
        if best.as_ref().is_none_or(|(b, _)| value > *b)
            && !input
                .seen
                .contains(&Space::config_hash(&space.decode(&candidate.point)))
        {
            *best = Some((value, candidate.clone()));
        }
    };
    let mut ranked: Vec<(f64, Located)> = scores.into_iter().zip(pool).collect();
    for (value, candidate) in &ranked {
        consider(*value, candidate, &mut best);
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    ranked.truncate(LOCAL_STARTS);
    let observed: Vec<Located> = input
        .starts
        .iter()
        .take(LOCAL_STARTS)
        .map(|config| {
            let point = space
                .encode(config)
                .into_iter()
                .map(|v| v.unwrap_or_else(|| rng.random_range(0.0..1.0)))
                .collect();
            locate(point)
        })
        .collect();
    let observed_scores = score(&observed);
    ranked.extend(observed_scores.into_iter().zip(observed));

    // All climbs advance in lockstep so that each step scores every neighbourhood in one
    // surrogate call (a GP predicts a batch far faster than its points one by one). A climb
    // that finds no better neighbour at one spread tries a finer one before it stops, so a
    // smooth optimum is refined to well below SMAC's fixed 0.2 steps.
    let mut climbs: Vec<Climb> = ranked
        .into_iter()
        .map(|(value, at)| Climb {
            value,
            at,
            spread: 0,
        })
        .collect();
    let mut ends: Vec<(f64, Located)> = Vec::new();
    for _ in 0..MAX_STEPS {
        if climbs.is_empty() {
            break;
        }
        let neighbourhoods: Vec<Vec<Located>> = climbs
            .iter()
            .map(|c| {
                let spread = Normal::new(0.0, SPREADS[c.spread]).expect("a positive spread");
                neighbourhood(space, input.axes, &c.at, &locate, &spread, rng)
            })
            .collect();
        let batch: Vec<Located> = neighbourhoods.iter().flatten().cloned().collect();
        let mut values = score(&batch).into_iter();
        let mut next = Vec::with_capacity(climbs.len());
        for (climb, neighbours) in climbs.into_iter().zip(neighbourhoods) {
            let mut top: Option<(f64, Located)> = None;
            for neighbour in neighbours {
                let v = values.next().unwrap_or(f64::NEG_INFINITY);
                consider(v, &neighbour, &mut best);
                if top.as_ref().is_none_or(|(t, _)| v > *t) {
                    top = Some((v, neighbour));
                }
            }
            match top {
                Some((value, at)) if value > climb.value => next.push(Climb { value, at, ..climb }),
                _ if climb.spread + 1 < SPREADS.len() => next.push(Climb {
                    spread: climb.spread + 1,
                    ..climb
                }),
                // No better neighbour even at the finest spread: a local optimum.
                _ => ends.push((climb.value, climb.at)),
            }
        }
        climbs = next;
    }
    ends.extend(climbs.into_iter().map(|c| (c.value, c.at)));
    ends.sort_by(|a, b| b.0.total_cmp(&a.0));
    ends.dedup_by(|a, b| a.1.encoded == b.1.encoded);
    let polished = if input.polish { POLISH_STARTS } else { 0 };
    for (_, start) in ends.into_iter().take(polished) {
        if let Some(polished) = polish(input, surrogate, &start) {
            let polished = locate(polished);
            if let Some(&value) = score(std::slice::from_ref(&polished)).first() {
                consider(value, &polished, &mut best);
            }
        }
    }
    best.map(|(_, located)| space.decode(&located.point))
}

/// The acquisition (log EI plus the log probabilities of feasibility) at an encoded
/// configuration, with its gradient along the unit-cube axes; `None` unless every model is
/// differentiable.
fn acquisition_with_gradient(
    input: &SearchInput<'_>,
    surrogate: &dyn Surrogate,
    encoded: &[Option<f64>],
) -> Option<(f64, Vec<f64>)> {
    let (mut value, mut gradient) = match input.incumbent {
        Some(incumbent) => {
            log_expected_improvement_gradient(&surrogate.predict_with_gradient(encoded)?, incumbent)
        }
        None => (0.0, vec![0.0; encoded.len()]),
    };
    for model in input.feasibility {
        let (v, g) =
            log_probability_of_feasibility_gradient(&model.predict_with_gradient(encoded)?);
        value += v;
        gradient.iter_mut().zip(g).for_each(|(a, b)| *a += b);
    }
    Some((value, gradient))
}

/// `start` with its active float coordinates moved by L-BFGS up the acquisition's gradient
/// (ints and categoricals stay: the neighbourhood moves search them); `None` when nothing is
/// continuous or a model has no gradient.
fn polish(input: &SearchInput<'_>, surrogate: &dyn Surrogate, start: &Located) -> Option<Vec<f64>> {
    let space = input.space;
    let free: Vec<usize> = space
        .searched()
        .iter()
        .enumerate()
        .filter(|(axis, p)| {
            matches!(p.kind, ParamKind::Float { .. }) && start.encoded[*axis].is_some()
        })
        .map(|(axis, _)| axis)
        .collect();
    if free.is_empty() {
        return None;
    }
    let base = start.encoded.clone();
    let mut objective = |y: &[f64]| {
        let mut encoded = base.clone();
        for (&axis, &v) in free.iter().zip(y) {
            encoded[axis] = Some(v);
        }
        let (value, gradient) = acquisition_with_gradient(input, surrogate, &encoded)?;
        Some((value, free.iter().map(|&axis| gradient[axis]).collect()))
    };
    let y0: Vec<f64> = free.iter().map(|&axis| start.point[axis]).collect();
    let (y, _) = maximise_in_unit_box(&mut objective, &y0, POLISH_ITERATIONS)?;
    let mut point = start.point.clone();
    for (&axis, v) in free.iter().zip(y) {
        point[axis] = v;
    }
    Some(point)
}

/// Every one-parameter move from `current`: each other choice of an active categorical, and a
/// few Gaussian steps of each active number (ints that round back to the same value dropped).
fn neighbourhood(
    space: &Space,
    axes: &Axes,
    current: &Located,
    locate: &impl Fn(Vec<f64>) -> Located,
    spread: &Normal<f64>,
    rng: &mut StdRng,
) -> Vec<Located> {
    let mut moves = Vec::new();
    for (axis, param) in space.searched().iter().enumerate() {
        if current.encoded[axis].is_none() {
            continue;
        }
        let mut push = |value: f64| {
            let mut point = current.point.clone();
            point[axis] = value;
            let moved = locate(point);
            if moved.encoded != current.encoded {
                moves.push(moved);
            }
        };
        match (&param.kind, axes.choices(axis)) {
            (ParamKind::Categorical { .. }, Some(choices)) => {
                let here = ((current.point[axis] * choices as f64) as usize).min(choices - 1);
                for k in (0..choices).filter(|&k| k != here) {
                    push((k as f64 + 0.5) / choices as f64);
                }
            }
            _ => {
                for _ in 0..NUMERIC_MOVES {
                    let step = spread.sample(rng);
                    push((current.point[axis] + step).clamp(0.0, 1.0));
                }
            }
        }
    }
    moves.shuffle(rng);
    moves
}
