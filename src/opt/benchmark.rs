//! Standard test functions for measuring the optimiser's sample efficiency (Branin, Hartmann-6 and
//! a mixed space with a conditional parameter), defined exactly as `benches/opt_reference.py`
//! defines them for SMAC3 and Optuna, and the loop that runs a strategy on one of them.

use super::{Optimizer, OptimizerOptions, Outcome, SurrogateKind};
use crate::space::{Config, Space, Value};

/// A function to minimise over a space, with its known minimum.
pub struct Problem {
    /// Short name (`branin`, `hartmann6`, `mixed`).
    pub name: &'static str,
    /// The space it is defined on.
    pub space: Space,
    /// The global minimum (regret is measured against it).
    pub minimum: f64,
    /// The function.
    pub function: fn(&Config) -> f64,
}

/// How configurations are chosen in a benchmark run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Uniformly random configurations.
    Random,
    /// The optimiser with the random forest.
    Forest,
    /// The optimiser with the Gaussian process.
    Gp,
}

impl Strategy {
    /// Name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Random => "random",
            Strategy::Forest => "rf_bo",
            Strategy::Gp => "gp_bo",
        }
    }
}

/// Best-so-far regret after each of `evaluations` evaluations of `problem` by `strategy`.
pub fn regret_curve(
    problem: &Problem,
    strategy: Strategy,
    seed: u64,
    evaluations: usize,
) -> Vec<f64> {
    regret_curve_with(
        problem,
        strategy,
        seed,
        evaluations,
        &OptimizerOptions::default(),
    )
}

/// [`regret_curve`] with the optimiser's other options (polish, nugget, initial design...) taken
/// from `base`.
pub fn regret_curve_with(
    problem: &Problem,
    strategy: Strategy,
    seed: u64,
    evaluations: usize,
    base: &OptimizerOptions,
) -> Vec<f64> {
    let options = OptimizerOptions {
        seed,
        trial_budget: evaluations,
        // Benchmarks compare search strategies, not literature defaults.
        skip_default: true,
        random_interleave: (strategy == Strategy::Random).then_some(1.0),
        surrogate: if strategy == Strategy::Gp {
            SurrogateKind::Gp
        } else {
            SurrogateKind::Rf
        },
        ..base.clone()
    };
    let mut optimizer = Optimizer::new(problem.space.clone(), options);
    let mut best = f64::INFINITY;
    (0..evaluations)
        .map(|_| {
            let config = if strategy == Strategy::Random {
                // Plain random search: no initial design either.
                optimizer.ask_random()
            } else {
                optimizer.ask()
            };
            let value = (problem.function)(&config);
            best = best.min(value);
            optimizer.tell(&config, Outcome::Cost(value));
            (best - problem.minimum).max(0.0)
        })
        .collect()
}

/// Best-so-far regret after each of `evaluations` evaluations of `problem` by the optimiser
/// with `surrogate`, run by `workers` simulated parallel workers: each ask sees the other
/// workers' configurations as pending, and evaluations finish in the order they started;
/// other options from `base`.
pub fn regret_curve_parallel(
    problem: &Problem,
    surrogate: SurrogateKind,
    seed: u64,
    evaluations: usize,
    (workers, base): (usize, &OptimizerOptions),
) -> Vec<f64> {
    let options = OptimizerOptions {
        seed,
        trial_budget: evaluations,
        skip_default: true,
        surrogate,
        ..base.clone()
    };
    let mut optimizer = Optimizer::new(problem.space.clone(), options);
    let mut running = std::collections::VecDeque::new();
    let mut asked = 0;
    let mut best = f64::INFINITY;
    let mut curve = Vec::with_capacity(evaluations);
    while curve.len() < evaluations {
        while running.len() < workers.max(1) && asked < evaluations {
            let config = optimizer.ask();
            optimizer.mark_pending(&config);
            running.push_back(config);
            asked += 1;
        }
        let Some(config) = running.pop_front() else {
            break;
        };
        let value = (problem.function)(&config);
        best = best.min(value);
        optimizer.tell(&config, Outcome::Cost(value));
        curve.push((best - problem.minimum).max(0.0));
    }
    curve
}

fn number(config: &Config, key: &str) -> f64 {
    config
        .get(key)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("benchmark configuration lacks the number `{key}`"))
}

/// The Branin function on x1 ∈ [−5, 10], x2 ∈ [0, 15].
pub fn branin(config: &Config) -> f64 {
    branin_at(config, 1.0)
}

/// Branin at fidelity `s` ∈ (0, 1] (1: the function itself), biased below 1 as in the
/// multi-fidelity Branin of Kandasamy et al. (BOCA, 2017): `b − 0.01(1 − s)`,
/// `c − 0.1(1 − s)`, `t + 0.05(1 − s)`.
pub fn branin_at(config: &Config, s: f64) -> f64 {
    let (x1, x2) = (number(config, "x1"), number(config, "x2"));
    let pi = std::f64::consts::PI;
    let gap = 1.0 - s;
    let b = 5.1 / (4.0 * pi * pi) - 0.01 * gap;
    let c = 5.0 / pi - 0.1 * gap;
    let t = 1.0 / (8.0 * pi) + 0.05 * gap;
    (x2 - b * x1 * x1 + c * x1 - 6.0).powi(2) + 10.0 * (1.0 - t) * x1.cos() + 10.0
}

const HARTMANN_ALPHA: [f64; 4] = [1.0, 1.2, 3.0, 3.2];

/// The Hartmann-6 function on [0, 1]⁶ (parameters x1 … x6).
pub fn hartmann6(config: &Config) -> f64 {
    hartmann6_at(config, 1.0)
}

/// Hartmann-6 at fidelity `s` ∈ (0, 1] (1: the function itself), biased below 1 as in the
/// multi-fidelity Hartmann of Kandasamy et al. (BOCA, 2017): `α − 0.1(1 − s)`.
pub fn hartmann6_at(config: &Config, s: f64) -> f64 {
    const A: [[f64; 6]; 4] = [
        [10.0, 3.0, 17.0, 3.5, 1.7, 8.0],
        [0.05, 10.0, 17.0, 0.1, 8.0, 14.0],
        [3.0, 3.5, 1.7, 10.0, 17.0, 8.0],
        [17.0, 8.0, 0.05, 10.0, 0.1, 14.0],
    ];
    const P: [[f64; 6]; 4] = [
        [1312.0, 1696.0, 5569.0, 124.0, 8283.0, 5886.0],
        [2329.0, 4135.0, 8307.0, 3736.0, 1004.0, 9991.0],
        [2348.0, 1451.0, 3522.0, 2883.0, 3047.0, 6650.0],
        [4047.0, 8828.0, 8732.0, 5743.0, 1091.0, 381.0],
    ];
    let x: Vec<f64> = (1..=6).map(|i| number(config, &format!("x{i}"))).collect();
    hartmann_with(&x, &A, &P, 0.1 * (1.0 - s))
}

/// `−Σᵢ αᵢ exp(−Σⱼ Aᵢⱼ (xⱼ − Pᵢⱼ/10⁴)²)`, the shape shared by the Hartmann functions.
fn hartmann<const N: usize>(x: &[f64], a: &[[f64; N]; 4], p: &[[f64; N]; 4]) -> f64 {
    hartmann_with(x, a, p, 0.0)
}

/// [`hartmann`] with every `αᵢ` lowered by `alpha_shift`.
fn hartmann_with<const N: usize>(
    x: &[f64],
    a: &[[f64; N]; 4],
    p: &[[f64; N]; 4],
    alpha_shift: f64,
) -> f64 {
    -(0..4)
        .map(|i| {
            let inner: f64 = (0..N)
                .map(|j| a[i][j] * (x[j] - 1e-4 * p[i][j]).powi(2))
                .sum();
            (HARTMANN_ALPHA[i] - alpha_shift) * (-inner).exp()
        })
        .sum::<f64>()
}

/// The Hartmann-3 function on [0, 1]³.
pub fn hartmann3(x: [f64; 3]) -> f64 {
    const A: [[f64; 3]; 4] = [
        [3.0, 10.0, 30.0],
        [0.1, 10.0, 35.0],
        [3.0, 10.0, 30.0],
        [0.1, 10.0, 35.0],
    ];
    const P: [[f64; 3]; 4] = [
        [3689.0, 1170.0, 2673.0],
        [4699.0, 4387.0, 7470.0],
        [1091.0, 8732.0, 5547.0],
        [381.0, 5743.0, 8828.0],
    ];
    hartmann(&x, &A, &P)
}

/// A mixed space built on Hartmann-3: `lr` (log float) and `n` (int) and `x` (float) are its
/// three inputs, `kind` (a, b, c) adds an offset, and `extra` (active only for kind c) decides
/// how good c is: 0.5 for a, 0 for b, −0.3 + 2(extra − 0.7)² for c.
pub fn mixed(config: &Config) -> f64 {
    let u = (number(config, "lr").log10() + 4.0) / 4.0;
    let v = (number(config, "n") - 1.0) / 31.0;
    let x = number(config, "x");
    let offset = match config.get("kind") {
        Some(Value::Str(k)) if k == "a" => 0.5,
        Some(Value::Str(k)) if k == "b" => 0.0,
        Some(Value::Str(k)) if k == "c" => -0.3 + 2.0 * (number(config, "extra") - 0.7).powi(2),
        other => panic!("mixed benchmark: kind {other:?}"),
    };
    hartmann3([u, v, x]) + offset
}

/// The minimum of [`mixed`]: `n` is on a grid, so it is Hartmann-3's minimum over (u, x) on the
/// best grid line, found by a fine grid and a shrinking pattern search, minus 0.3.
pub fn mixed_minimum() -> f64 {
    let mut best = f64::INFINITY;
    for n in 1..=32 {
        let v = (n as f64 - 1.0) / 31.0;
        let f = |u: f64, x: f64| hartmann3([u.clamp(0.0, 1.0), v, x.clamp(0.0, 1.0)]);
        let mut start = (0.5, 0.5, f(0.5, 0.5));
        for i in 0..=100 {
            for j in 0..=100 {
                let (u, x) = (i as f64 / 100.0, j as f64 / 100.0);
                let value = f(u, x);
                if value < start.2 {
                    start = (u, x, value);
                }
            }
        }
        let (mut u, mut x, mut value) = start;
        let mut step = 0.01;
        while step > 1e-12 {
            let mut moved = false;
            for (du, dx) in [(step, 0.0), (-step, 0.0), (0.0, step), (0.0, -step)] {
                let (nu, nx) = ((u + du).clamp(0.0, 1.0), (x + dx).clamp(0.0, 1.0));
                let candidate = f(nu, nx);
                if candidate < value {
                    (u, x, value) = (nu, nx, candidate);
                    moved = true;
                }
            }
            if !moved {
                step /= 2.0;
            }
        }
        best = best.min(value);
    }
    best - 0.3
}

fn space(yaml: &str, name: &str) -> Space {
    Space::from_yaml(yaml, &format!("builtin:benchmark-{name}"))
        .expect("benchmark spaces are valid")
}

/// The three benchmark problems.
pub fn problems() -> Vec<Problem> {
    let hartmann_params: String = (1..=6)
        .map(|i| format!("  - {{name: x{i}, type: float, lower: 0, upper: 1, default: 0.5}}\n"))
        .collect();
    vec![
        Problem {
            name: "branin",
            space: space(
                "hyperparameters:\n  - {name: x1, type: float, lower: -5, upper: 10, default: 2.5}\n  - {name: x2, type: float, lower: 0, upper: 15, default: 7.5}\n",
                "branin",
            ),
            minimum: 0.397_887_357_729_738,
            function: branin,
        },
        Problem {
            name: "hartmann6",
            space: space(&format!("hyperparameters:\n{hartmann_params}"), "hartmann6"),
            minimum: -3.322_368_011_415_51,
            function: hartmann6,
        },
        Problem {
            name: "mixed",
            space: space(
                "hyperparameters:\n  - {name: lr, type: float, lower: 1.0e-4, upper: 1, log: true, default: 0.01}\n  - {name: n, type: int, lower: 1, upper: 32, default: 16}\n  - {name: x, type: float, lower: 0, upper: 1, default: 0.5}\n  - {name: kind, type: categorical, choices: [a, b, c], default: a}\n  - {name: extra, type: float, lower: 0, upper: 1, default: 0.5}\nconditions:\n  - {child: extra, parent: kind, values: [c]}\n",
                "mixed",
            ),
            minimum: mixed_minimum(),
            function: mixed,
        },
    ]
}
