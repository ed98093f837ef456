//! A SMAC-style random forest: bootstrapped trees whose splits minimise the residual sum of
//! squares with the threshold drawn uniformly between the two neighbouring values (as pyrfr
//! does), predicting a mean and the variance across trees.

use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// Trees in the forest (SMAC3: 10).
const TREES: usize = 10;
/// Fewest samples a node needs to be split, and a leaf may hold.
const MIN_SPLIT: usize = 3;
const MIN_LEAF: usize = 1;
const MAX_DEPTH: usize = 20;
/// Share of the features considered at each split (the default of SMAC3's forest).
const FEATURE_RATIO: f64 = 5.0 / 6.0;

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

/// The best split of `rows` on `feature`: (residual sum of squares, threshold).
fn best_split_on(
    x: &[Vec<f64>],
    y: &[f64],
    rows: &[usize],
    feature: usize,
    rng: &mut StdRng,
) -> Option<(f64, f64)> {
    let mut sorted: Vec<(f64, f64)> = rows.iter().map(|&r| (x[r][feature], y[r])).collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = sorted.len();
    let total: f64 = sorted.iter().map(|p| p.1).sum();
    let total_squares: f64 = sorted.iter().map(|p| p.1 * p.1).sum();
    let (mut left_sum, mut left_squares) = (0.0, 0.0);
    let mut best: Option<(f64, usize)> = None;
    for i in 0..n - 1 {
        left_sum += sorted[i].1;
        left_squares += sorted[i].1 * sorted[i].1;
        let left_count = (i + 1) as f64;
        let right_count = (n - i - 1) as f64;
        // Only between distinct values, and with enough samples on each side.
        if sorted[i + 1].0 - sorted[i].0 < 1e-12 || i + 1 < MIN_LEAF || n - i - 1 < MIN_LEAF {
            continue;
        }
        let right_sum = total - left_sum;
        let rss = (left_squares - left_sum * left_sum / left_count)
            + (total_squares - left_squares - right_sum * right_sum / right_count);
        if best.is_none_or(|(b, _)| rss < b) {
            best = Some((rss, i));
        }
    }
    best.map(|(rss, i)| (rss, rng.random_range(sorted[i].0..sorted[i + 1].0)))
}

fn build(x: &[Vec<f64>], y: &[f64], rows: Vec<usize>, depth: usize, rng: &mut StdRng) -> Node {
    let mean = mean_of(y, &rows);
    let spread: f64 = rows.iter().map(|&r| (y[r] - mean).powi(2)).sum();
    if rows.len() < MIN_SPLIT || depth >= MAX_DEPTH || spread < 1e-12 {
        return Node::Leaf(mean);
    }
    let mut features: Vec<usize> = (0..x[0].len()).collect();
    features.shuffle(rng);
    features.truncate(((features.len() as f64 * FEATURE_RATIO).ceil() as usize).max(1));
    let mut best: Option<(f64, usize, f64)> = None;
    for feature in features {
        if let Some((rss, threshold)) = best_split_on(x, y, &rows, feature, rng)
            && best.is_none_or(|(b, _, _)| rss < b)
        {
            best = Some((rss, feature, threshold));
        }
    }
    let Some((_, feature, threshold)) = best else {
        return Node::Leaf(mean);
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
