//! The optimiser: beats random search on Branin, never repeats, rebuilds from history, and the
//! acquisition and Pareto helpers compute what they should.

use cthpo::opt::{
    Optimizer, OptimizerOptions, Outcome, hypervolume_2d, latin_hypercube, log_h, non_dominated,
};
use cthpo::space::{Config, Space, Value};
use rand::{SeedableRng, rngs::StdRng};
use std::collections::HashSet;

const BRANIN_MIN: f64 = 0.397_887;

fn branin_space() -> Space {
    Space::from_yaml(
        "hyperparameters:\n  - {name: x1, type: float, lower: -5, upper: 10, default: 2.5}\n  - {name: x2, type: float, lower: 0, upper: 15, default: 7.5}\n",
        "branin",
    )
    .unwrap()
}

fn branin(config: &Config) -> f64 {
    let get = |k: &str| match config[k] {
        Value::Float(x) => x,
        _ => unreachable!(),
    };
    let (x1, x2) = (get("x1"), get("x2"));
    let pi = std::f64::consts::PI;
    let (b, c, r, s, t) = (5.1 / (4.0 * pi * pi), 5.0 / pi, 6.0, 10.0, 1.0 / (8.0 * pi));
    (x2 - b * x1 * x1 + c * x1 - r).powi(2) + s * (1.0 - t) * x1.cos() + s
}

fn best_regret(seed: u64, evaluations: usize, random_only: bool) -> f64 {
    let space = branin_space();
    let options = OptimizerOptions {
        seed,
        trial_budget: evaluations,
        random_interleave: if random_only { 1.0 } else { 0.2 },
        candidates: 500,
        ..OptimizerOptions::default()
    };
    let mut optimizer = Optimizer::new(space, options);
    let mut best = f64::INFINITY;
    for _ in 0..evaluations {
        let config = optimizer.ask();
        let cost = branin(&config);
        best = best.min(cost);
        optimizer.tell(&config, Outcome::Cost(cost));
    }
    best - BRANIN_MIN
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[test]
fn random_forest_bo_beats_random_search_on_branin() {
    let bo: Vec<f64> = (0..9).map(|s| best_regret(s, 30, false)).collect();
    let random: Vec<f64> = (0..9).map(|s| best_regret(s, 30, true)).collect();
    let (bo, random) = (median(bo), median(random));
    println!("median simple regret after 30 evaluations: RF-BO {bo:.4}, random {random:.4}");
    assert!(bo < random * 0.7, "RF-BO {bo} vs random {random}");
}

#[test]
fn ask_never_repeats_and_starts_with_the_default() {
    let space = Space::builtin("sabr").unwrap();
    let default = space.default_config();
    let mut optimizer = Optimizer::new(
        space,
        OptimizerOptions {
            trial_budget: 40,
            ..OptimizerOptions::default()
        },
    );
    let mut seen = HashSet::new();
    for i in 0..40 {
        let config = optimizer.ask();
        if i == 0 {
            assert_eq!(config, default);
        }
        assert!(
            seen.insert(Space::config_hash(&config)),
            "repeated at ask {i}"
        );
        let cost = match &config["learning_rate"] {
            Value::Float(lr) => (lr.ln() - (1e-3f64).ln()).powi(2),
            _ => unreachable!(),
        };
        let outcome = if i % 7 == 3 {
            Outcome::Failed
        } else {
            Outcome::Cost(cost)
        };
        optimizer.tell(&config, outcome);
    }
}

#[test]
fn rebuilding_from_history_gives_the_same_next_ask() {
    let options = OptimizerOptions {
        seed: 4,
        trial_budget: 20,
        ..OptimizerOptions::default()
    };
    let mut live = Optimizer::new(branin_space(), options.clone());
    let mut history = Vec::new();
    for _ in 0..8 {
        let config = live.ask();
        let cost = branin(&config);
        live.tell(&config, Outcome::Cost(cost));
        history.push((config, cost));
    }
    // A resumed optimiser replays the design asks (they are cheap) and tells the history.
    let mut rebuilt = Optimizer::new(branin_space(), options);
    for (config, cost) in &history {
        let asked = rebuilt.ask();
        assert_eq!(&asked, config);
        rebuilt.tell(config, Outcome::Cost(*cost));
    }
    assert_eq!(live.ask(), rebuilt.ask());
}

#[test]
fn log_h_is_accurate_and_finite_far_in_the_tail() {
    // h(0) = φ(0) = 1/√(2π).
    assert!((log_h(0.0) - (-0.918_938_533_2)).abs() < 1e-6);
    // Continuity where the asymptotic series takes over.
    assert!((log_h(-7.999_999) - log_h(-8.000_001)).abs() < 1e-3);
    // Against an exact value: log h(−5) = −16.744301 (Python's math.erfc, no cancellation issue at z = −5).
    assert!((log_h(-5.0) + 16.744_301).abs() < 1e-4);
    for z in [-10.0, -40.0, -1000.0] {
        let value = log_h(z);
        assert!(value.is_finite() && value < log_h(z / 2.0));
    }
    // For large positive z, h(z) ≈ z.
    assert!((log_h(6.0) - 6f64.ln()).abs() < 1e-3);
}

#[test]
fn latin_hypercube_fills_every_stratum() {
    let points = latin_hypercube(7, 3, &mut StdRng::seed_from_u64(1));
    for axis in 0..3 {
        let mut strata: Vec<usize> = points.iter().map(|p| (p[axis] * 7.0) as usize).collect();
        strata.sort();
        assert_eq!(strata, (0..7).collect::<Vec<_>>());
    }
}

#[test]
fn pareto_helpers() {
    let points = vec![
        vec![1.0, 5.0],
        vec![2.0, 2.0],
        vec![3.0, 3.0],
        vec![5.0, 1.0],
    ];
    assert_eq!(non_dominated(&points), vec![0, 1, 3]);
    // Staircase area under reference (6, 6): 5·1 + 4·3 + 1·1 = 18.
    assert!((hypervolume_2d(&points, [6.0, 6.0]) - 18.0).abs() < 1e-12);
}
