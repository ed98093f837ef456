//! A SMAC-style random forest: bootstrapped trees with random split thresholds, predicting a mean
//! and the variance across trees.

use rand::Rng;
use rand::rngs::StdRng;

/// Trees in the forest (SMAC3: 10).
const TREES: usize = 10;
/// Fewest samples a node needs to be split, and a leaf may hold (SMAC3: 3 and 1; we keep 3/1).
const MIN_SPLIT: usize = 3;
const MIN_LEAF: usize = 1;
const MAX_DEPTH: usize = 20;
/// Random thresholds tried per split (the best by variance reduction wins).
const CANDIDATE_SPLITS: usize = 8;

enum Node {
    Leaf(f64),
    Split {
        feature: usize,
        threshold: f64,
        left: Box<Node>,
        right: Box<Node>,
    },
}

/// A fitted forest over points of the unit cube (inactive coordinates imputed as −1).
pub struct Forest {
    trees: Vec<Node>,
}

impl Forest {
    /// Fits the forest to `(x, y)` with bootstrap samples drawn from `rng`.
    pub fn fit(x: &[Vec<f64>], y: &[f64], rng: &mut StdRng) -> Forest {
        let n = x.len();
        let trees = (0..TREES)
            .map(|_| {
                let sample: Vec<usize> = (0..n).map(|_| rng.random_range(0..n)).collect();
                build(x, y, sample, 0, rng)
            })
            .collect();
        Forest { trees }
    }

    /// Predictive mean and variance (across trees) at `point`.
    pub fn predict(&self, point: &[f64]) -> (f64, f64) {
        let values: Vec<f64> = self.trees.iter().map(|t| evaluate(t, point)).collect();
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64;
        (mean, variance)
    }
}

fn evaluate(node: &Node, point: &[f64]) -> f64 {
    match node {
        Node::Leaf(value) => *value,
        Node::Split {
            feature,
            threshold,
            left,
            right,
        } => {
            if point[*feature] <= *threshold {
                evaluate(left, point)
            } else {
                evaluate(right, point)
            }
        }
    }
}

fn mean_of(y: &[f64], rows: &[usize]) -> f64 {
    rows.iter().map(|&r| y[r]).sum::<f64>() / rows.len().max(1) as f64
}

fn sum_squares(y: &[f64], rows: &[usize]) -> f64 {
    let mean = mean_of(y, rows);
    rows.iter().map(|&r| (y[r] - mean).powi(2)).sum()
}

fn build(x: &[Vec<f64>], y: &[f64], rows: Vec<usize>, depth: usize, rng: &mut StdRng) -> Node {
    if rows.len() < MIN_SPLIT || depth >= MAX_DEPTH || sum_squares(y, &rows) < 1e-12 {
        return Node::Leaf(mean_of(y, &rows));
    }
    let features = x[0].len();
    let mut best: Option<(f64, usize, f64)> = None;
    for _ in 0..CANDIDATE_SPLITS {
        let feature = rng.random_range(0..features);
        let (lo, hi) = rows
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &r| {
                (lo.min(x[r][feature]), hi.max(x[r][feature]))
            });
        if hi - lo < 1e-12 {
            continue;
        }
        let threshold = rng.random_range(lo..hi);
        let (left, right): (Vec<usize>, Vec<usize>) =
            rows.iter().partition(|&&r| x[r][feature] <= threshold);
        if left.len() < MIN_LEAF || right.len() < MIN_LEAF {
            continue;
        }
        let score = sum_squares(y, &left) + sum_squares(y, &right);
        if best.is_none_or(|(s, _, _)| score < s) {
            best = Some((score, feature, threshold));
        }
    }
    let Some((_, feature, threshold)) = best else {
        return Node::Leaf(mean_of(y, &rows));
    };
    let (left, right): (Vec<usize>, Vec<usize>) =
        rows.iter().partition(|&&r| x[r][feature] <= threshold);
    Node::Split {
        feature,
        threshold,
        left: Box::new(build(x, y, left, depth + 1, rng)),
        right: Box::new(build(x, y, right, depth + 1, rng)),
    }
}
