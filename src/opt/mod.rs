//! The Bayesian optimiser behind an ask/tell API: initial design, surrogate, acquisition.
//!
//! `ask` proposes the user's (or the space's) default first, then a Latin hypercube of size
//! equal to the number of searched hyperparameters (CTRAIN's choice, capped at a quarter of the
//! trial budget), then maximises log expected improvement of a SMAC-style random forest over
//! random candidates refined by a local search, with a 20 % chance of a random configuration.
//! Costs are minimised; several objectives are scalarised by ParEGO's random augmented
//! Chebyshev weights. A history of told trials rebuilds the same optimiser (resume).

mod acquisition;
mod forest;

pub use acquisition::{erfc, log_expected_improvement, log_h};
pub use forest::Forest;

use crate::space::{Config, Space};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::collections::{HashSet, VecDeque};

/// The result of a trial as the optimiser sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// One cost to minimise.
    Cost(f64),
    /// Several costs to minimise jointly (Pareto mode).
    Costs(Vec<f64>),
    /// The trial failed: it counts as the worst cost observed.
    Failed,
}

/// How the optimiser behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerOptions {
    /// Seed of every random choice.
    pub seed: u64,
    /// The study's trial budget (caps the initial design at a quarter of it).
    pub trial_budget: usize,
    /// A configuration to evaluate first (the user's default); else the space default.
    pub first: Option<Config>,
    /// Leave the default configuration out of the initial design.
    pub skip_default: bool,
    /// Probability of proposing a random configuration after the initial design (SMAC: 0.2).
    pub random_interleave: f64,
    /// Random candidates scored by the acquisition per ask.
    pub candidates: usize,
}

impl Default for OptimizerOptions {
    fn default() -> Self {
        OptimizerOptions {
            seed: 0,
            trial_budget: 50,
            first: None,
            skip_default: false,
            random_interleave: 0.2,
            candidates: 1000,
        }
    }
}

/// The ask/tell optimiser.
pub struct Optimizer {
    space: Space,
    options: OptimizerOptions,
    rng: StdRng,
    design: VecDeque<Config>,
    history: Vec<(Config, Outcome)>,
    seen: HashSet<u64>,
}

impl Optimizer {
    /// A fresh optimiser (its initial design is drawn now, from the seed).
    pub fn new(space: Space, options: OptimizerOptions) -> Optimizer {
        let mut rng = StdRng::seed_from_u64(options.seed);
        let mut design = VecDeque::new();
        if let Some(first) = &options.first {
            design.push_back(first.clone());
        } else if !options.skip_default {
            design.push_back(space.default_config());
        }
        let size = space
            .dimension()
            .min((options.trial_budget / 4).max(1))
            .max(1);
        for point in latin_hypercube(size, space.dimension(), &mut rng) {
            design.push_back(space.decode(&point));
        }
        Optimizer {
            space,
            options,
            rng,
            design,
            history: Vec::new(),
            seen: HashSet::new(),
        }
    }

    /// The space searched.
    pub fn space(&self) -> &Space {
        &self.space
    }

    /// Records a finished trial.
    pub fn tell(&mut self, config: &Config, outcome: Outcome) {
        self.seen.insert(Space::config_hash(config));
        self.history.push((config.clone(), outcome));
    }

    /// Marks a configuration another process is running, so it is not proposed again.
    pub fn mark_pending(&mut self, config: &Config) {
        self.seen.insert(Space::config_hash(config));
    }

    /// Proposes the next configuration to evaluate (never one already told or pending).
    pub fn ask(&mut self) -> Config {
        while let Some(config) = self.design.pop_front() {
            if self.seen.insert(Space::config_hash(&config)) {
                return config;
            }
        }
        let proposal =
            if self.costs().len() < 2 || self.rng.random_bool(self.options.random_interleave) {
                None
            } else {
                self.maximise_acquisition()
            };
        let config = match proposal {
            Some(config) => config,
            None => self.fresh_random(),
        };
        self.seen.insert(Space::config_hash(&config));
        config
    }

    fn fresh_random(&mut self) -> Config {
        for _ in 0..1000 {
            let config = self.space.sample(&mut self.rng);
            if !self.seen.contains(&Space::config_hash(&config)) {
                return config;
            }
        }
        self.space.sample(&mut self.rng)
    }

    /// Scalar costs of the history (failures at the worst; Pareto costs scalarised), transformed
    /// as SMAC does: scaled to [0,1], then log.
    fn costs(&mut self) -> Vec<(Vec<f64>, f64)> {
        let objectives = self
            .history
            .iter()
            .find_map(|(_, o)| match o {
                Outcome::Costs(c) => Some(c.len()),
                Outcome::Cost(_) => Some(1),
                Outcome::Failed => None,
            })
            .unwrap_or(1);
        let finite: Vec<Vec<f64>> = self
            .history
            .iter()
            .filter_map(|(_, o)| match o {
                Outcome::Cost(c) if c.is_finite() => Some(vec![*c]),
                Outcome::Costs(c) if c.iter().all(|v| v.is_finite()) => Some(c.clone()),
                _ => None,
            })
            .collect();
        if finite.is_empty() {
            return Vec::new();
        }
        let (lows, highs): (Vec<f64>, Vec<f64>) = (0..objectives)
            .map(|i| {
                finite
                    .iter()
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), c| {
                        (lo.min(c[i]), hi.max(c[i]))
                    })
            })
            .unzip();
        // ParEGO: one random weight vector per ask.
        let mut weights: Vec<f64> = (0..objectives)
            .map(|_| self.rng.random_range(0.0..1.0))
            .collect();
        let total: f64 = weights.iter().sum::<f64>().max(1e-12);
        weights.iter_mut().for_each(|w| *w /= total);
        let scalarise = |c: &[f64]| -> f64 {
            if objectives == 1 {
                return c[0];
            }
            let normalised: Vec<f64> = c
                .iter()
                .enumerate()
                .map(|(i, v)| (v - lows[i]) / (highs[i] - lows[i]).max(1e-12))
                .collect();
            let chebyshev = normalised
                .iter()
                .zip(&weights)
                .map(|(v, w)| v * w)
                .fold(f64::MIN, f64::max);
            chebyshev
                + 0.05
                    * normalised
                        .iter()
                        .zip(&weights)
                        .map(|(v, w)| v * w)
                        .sum::<f64>()
        };
        let raw: Vec<Option<f64>> = self
            .history
            .iter()
            .map(|(_, o)| match o {
                Outcome::Cost(c) if c.is_finite() => Some(scalarise(&[*c])),
                Outcome::Costs(c) if c.iter().all(|v| v.is_finite()) => Some(scalarise(c)),
                _ => None,
            })
            .collect();
        let worst = raw
            .iter()
            .flatten()
            .fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        let best = raw.iter().flatten().fold(f64::INFINITY, |a, &b| a.min(b));
        let span = (worst - best).max(1e-12);
        self.history
            .iter()
            .zip(raw)
            .map(|((config, _), cost)| {
                let scaled = (cost.unwrap_or(worst) - best) / span;
                let point = impute(&self.space.encode(config));
                (point, (scaled + 1e-3).ln())
            })
            .collect()
    }

    fn maximise_acquisition(&mut self) -> Option<Config> {
        let data = self.costs();
        let (x, y): (Vec<Vec<f64>>, Vec<f64>) = data.into_iter().unzip();
        let forest = Forest::fit(&x, &y, &mut self.rng);
        let incumbent = y.iter().copied().fold(f64::INFINITY, f64::min);
        let score = |config: &Config| {
            let (mean, variance) = forest.predict(&impute(&self.space.encode(config)));
            log_expected_improvement(mean, variance, incumbent)
        };
        let dimension = self.space.dimension();
        let mut scored: Vec<(f64, Config)> = Vec::new();
        let mut candidates: Vec<Config> = (0..self.options.candidates)
            .map(|_| self.space.sample(&mut self.rng))
            .collect();
        // Neighbours of the best observed configurations too (SMAC's local-search seeds).
        let mut order: Vec<usize> = (0..y.len()).collect();
        order.sort_by(|&a, &b| y[a].total_cmp(&y[b]));
        for &i in order.iter().take(5) {
            candidates.push(self.history[i].0.clone());
        }
        for config in candidates {
            let s = score(&config);
            scored.push((s, config));
        }
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored.truncate(10);
        let mut best: Option<(f64, Config)> = None;
        for (mut value, mut config) in scored {
            // Local search: move one coordinate at a time while the acquisition improves.
            for _ in 0..50 {
                let mut point = impute(&self.space.encode(&config))
                    .into_iter()
                    .map(|v| {
                        if v < 0.0 {
                            self.rng.random_range(0.0..1.0)
                        } else {
                            v
                        }
                    })
                    .collect::<Vec<f64>>();
                let mut axes: Vec<usize> = (0..dimension).collect();
                axes.shuffle(&mut self.rng);
                let mut improved = false;
                for &axis in axes.iter().take(4) {
                    let old = point[axis];
                    point[axis] = (old + self.rng.random_range(-0.2..0.2)).clamp(0.0, 1.0);
                    let neighbour = self.space.decode(&point);
                    let s = score(&neighbour);
                    if s > value && !self.seen.contains(&Space::config_hash(&neighbour)) {
                        value = s;
                        config = neighbour;
                        improved = true;
                        break;
                    }
                    point[axis] = old;
                }
                if !improved {
                    break;
                }
            }
            if self.seen.contains(&Space::config_hash(&config)) {
                continue;
            }
            if best.as_ref().is_none_or(|(b, _)| value > *b) {
                best = Some((value, config));
            }
        }
        best.map(|(_, config)| config)
    }
}

/// Inactive coordinates become −1, outside the cube, so trees can split them off.
fn impute(encoded: &[Option<f64>]) -> Vec<f64> {
    encoded.iter().map(|v| v.unwrap_or(-1.0)).collect()
}

/// `count` points of `[0,1]^dimension`, one per stratum of every axis (Latin hypercube).
pub fn latin_hypercube(count: usize, dimension: usize, rng: &mut StdRng) -> Vec<Vec<f64>> {
    let mut points = vec![vec![0.0; dimension]; count];
    for axis in 0..dimension {
        let mut strata: Vec<usize> = (0..count).collect();
        strata.shuffle(rng);
        for (point, stratum) in points.iter_mut().zip(strata) {
            point[axis] = (stratum as f64 + rng.random_range(0.0..1.0)) / count as f64;
        }
    }
    points
}

/// Indices of the non-dominated points (every objective minimised).
pub fn non_dominated(points: &[Vec<f64>]) -> Vec<usize> {
    (0..points.len())
        .filter(|&i| {
            !points.iter().enumerate().any(|(j, q)| {
                j != i
                    && q.iter().zip(&points[i]).all(|(a, b)| a <= b)
                    && q.iter().zip(&points[i]).any(|(a, b)| a < b)
            })
        })
        .collect()
}

/// Area dominated by 2-D points (both minimised) up to `reference`.
pub fn hypervolume_2d(points: &[Vec<f64>], reference: [f64; 2]) -> f64 {
    let mut front: Vec<(f64, f64)> = non_dominated(points)
        .into_iter()
        .map(|i| (points[i][0], points[i][1]))
        .filter(|(a, b)| *a < reference[0] && *b < reference[1])
        .collect();
    front.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut area = 0.0;
    let mut previous_y = reference[1];
    for (x, y) in front {
        if y < previous_y {
            area += (reference[0] - x) * (previous_y - y);
            previous_y = y;
        }
    }
    area
}
