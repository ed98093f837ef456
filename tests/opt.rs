//! The optimiser: beats random search on Branin, never repeats, rebuilds from history, and the
//! acquisition and Pareto helpers compute what they should.

use cthpo::opt::benchmark::{Strategy, branin, mixed, mixed_minimum, problems, regret_curve};
use cthpo::opt::{
    Fantasy, Forest, Gp, Kernel, Optimizer, OptimizerOptions, Outcome, Prediction, Proposal,
    SurrogateKind, ThetaStart, halton, hypervolume_2d, latin_hypercube, log_expected_improvement,
    log_expected_improvement_gradient, log_h, log_normal_cdf, log_probability_of_feasibility,
    log_probability_of_feasibility_gradient, non_dominated,
};
use cthpo::space::{Space, Value};
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::collections::HashSet;

fn branin_space() -> Space {
    problems().remove(0).space
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn median_regret(strategy: Strategy, seeds: u64, evaluations: usize) -> f64 {
    let problem = problems().remove(0);
    median(
        (0..seeds)
            .map(|seed| regret_curve(&problem, strategy, seed, evaluations)[evaluations - 1])
            .collect(),
    )
}

#[test]
fn both_surrogates_beat_random_search_on_branin() {
    let random = median_regret(Strategy::Random, 9, 30);
    let forest = median_regret(Strategy::Forest, 9, 30);
    let gp = median_regret(Strategy::Gp, 9, 30);
    println!(
        "median simple regret after 30 evaluations: random {random:.4}, RF-BO {forest:.4}, GP-BO {gp:.4}"
    );
    assert!(forest < random * 0.7, "RF-BO {forest} vs random {random}");
    assert!(gp < random * 0.2, "GP-BO {gp} vs random {random}");
}

/// A smooth function of two inputs and 60 space-filling training points; errors are measured
/// on 300 random held-out points against the spread of the function there.
fn held_out_error(predict: impl Fn(&[f64]) -> f64) -> f64 {
    let truth = |p: &[f64]| (3.0 * p[0]).sin() + 2.0 * (p[1] - 0.4).powi(2);
    let mut rng = StdRng::seed_from_u64(11);
    let test: Vec<Vec<f64>> = (0..300)
        .map(|_| vec![rng.random_range(0.0..1.0), rng.random_range(0.0..1.0)])
        .collect();
    let values: Vec<f64> = test.iter().map(|p| truth(p)).collect();
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let spread = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 300.0).sqrt();
    let error = (test
        .iter()
        .zip(&values)
        .map(|(p, v)| (predict(p) - v).powi(2))
        .sum::<f64>()
        / 300.0)
        .sqrt();
    error / spread
}

fn smooth_training_set() -> (Vec<Vec<f64>>, Vec<f64>) {
    let x = latin_hypercube(60, 2, &mut StdRng::seed_from_u64(5));
    let y = x
        .iter()
        .map(|p| (3.0 * p[0]).sin() + 2.0 * (p[1] - 0.4).powi(2))
        .collect();
    (x, y)
}

#[test]
fn forest_and_gp_fit_a_smooth_function() {
    let (x, y) = smooth_training_set();
    let forest = Forest::fit(&x, &y, &mut StdRng::seed_from_u64(1));
    let forest_error = held_out_error(|p| forest.predict(p).0);
    let matern = Gp::fit(&x, &y, Kernel::Matern52).unwrap();
    let matern_error = held_out_error(|p| matern.predict(p).unwrap().0);
    let squared = Gp::fit(&x, &y, Kernel::SquaredExponential).unwrap();
    let squared_error = held_out_error(|p| squared.predict(p).unwrap().0);
    println!(
        "held-out RMSE / spread: forest {forest_error:.4}, GP Matérn 5/2 {matern_error:.5}, GP squared exponential {squared_error:.5}"
    );
    assert!(forest_error < 0.4, "forest {forest_error}");
    assert!(matern_error < 0.02, "Matérn GP {matern_error}");
    assert!(
        squared_error < 0.02,
        "squared-exponential GP {squared_error}"
    );
    // The GP is nearly exact at its training points, and unsure away from them.
    let (mean, variance) = matern.predict(&x[3]).unwrap();
    assert!((mean - y[3]).abs() < 1e-3 && variance < 1e-3);
    let far = matern.predict(&[2.0, -1.0]).unwrap().1;
    assert!(far > 100.0 * variance.max(1e-9), "far variance {far}");
    // The forest's variance across trees is larger between sparse points than its minimum.
    let (_, spread) = forest.predict(&[0.5, 0.5]);
    assert!(spread.is_finite() && spread >= 0.0);
}

#[test]
fn gp_rejects_inconsistent_data_instead_of_panicking() {
    assert!(Gp::fit(&[], &[], Kernel::Matern52).is_err());
    assert!(Gp::fit(&[vec![0.1, 0.2], vec![0.3]], &[1.0, 2.0], Kernel::Matern52).is_err());
    assert!(Gp::fit(&[vec![0.1, 0.2]], &[1.0, 2.0], Kernel::Matern52).is_err());
    let two = [vec![0.1, 0.2], vec![0.3, 0.4]];
    let one_bound = [(0.3, 30.0)];
    assert!(Gp::fit_bounded(&two, &[1.0, 2.0], Kernel::Matern52, &one_bound).is_err());
}

#[test]
fn a_floor_on_theta_keeps_uncertainty_between_the_points() {
    // A smooth response on 5 points: the unbounded fit explains it by a long length scale and
    // is nearly certain between the points; a floor on θ (a shorter length scale) keeps the
    // uncertainty there that lets the acquisition explore.
    let x: Vec<Vec<f64>> = (0..5).map(|i| vec![f64::from(i) / 4.0]).collect();
    let y: Vec<f64> = x.iter().map(|p| 0.2 + 0.5 * p[0]).collect();
    let wide = Gp::fit_bounded(&x, &y, Kernel::Matern52, &[(0.01, 10.0)]).unwrap();
    let floored = Gp::fit_bounded(&x, &y, Kernel::Matern52, &[(20.0, 30.0)]).unwrap();
    let between = [0.125];
    let (_, wide_variance) = wide.predict(&between).unwrap();
    let (_, floored_variance) = floored.predict(&between).unwrap();
    assert!(
        floored_variance > 2.0 * wide_variance,
        "variance between points: floored {floored_variance}, wide {wide_variance}"
    );
}

#[test]
fn initial_design_is_the_default_then_a_latin_hypercube() {
    let space = Space::builtin("sabr").unwrap();
    let dimension = space.dimension();
    let mut optimizer = Optimizer::new(
        space.clone(),
        OptimizerOptions {
            trial_budget: 100,
            ..OptimizerOptions::default()
        },
    );
    assert_eq!(optimizer.ask(), space.default_config());
    let design: Vec<Vec<Option<f64>>> = (0..dimension)
        .map(|_| {
            let config = optimizer.ask();
            assert_eq!(optimizer.last_proposal(), Some(Proposal::Design));
            space.encode(&config)
        })
        .collect();
    optimizer.tell(&space.default_config(), Outcome::Cost(1.0));
    // Covering the space: on every always-active numeric axis each of the `dimension` strata
    // holds exactly one design point.
    for (axis, param) in space.searched().iter().enumerate() {
        let values: Vec<f64> = design.iter().filter_map(|p| p[axis]).collect();
        if values.len() < dimension
            || matches!(
                param.kind,
                cthpo::space::ParamKind::Categorical { .. } | cthpo::space::ParamKind::Int { .. }
            )
        {
            continue;
        }
        let mut strata: Vec<usize> = values
            .iter()
            .map(|u| ((u * dimension as f64) as usize).min(dimension - 1))
            .collect();
        strata.sort();
        assert_eq!(
            strata,
            (0..dimension).collect::<Vec<_>>(),
            "axis {}",
            param.name
        );
    }
    // The design is capped at a quarter of a small budget.
    let mut small = Optimizer::new(
        space.clone(),
        OptimizerOptions {
            trial_budget: 8,
            skip_default: true,
            ..OptimizerOptions::default()
        },
    );
    small.ask();
    small.ask();
    assert_eq!(small.last_proposal(), Some(Proposal::Design));
    let config = small.ask();
    assert_ne!(small.last_proposal(), Some(Proposal::Design));
    small.tell(&config, Outcome::Cost(0.0));
}

#[test]
fn gp_handles_categoricals_and_conditions_without_falling_back() {
    let problem = problems().remove(2);
    let mut optimizer = Optimizer::new(
        problem.space.clone(),
        OptimizerOptions {
            seed: 3,
            trial_budget: 30,
            skip_default: true,
            random_interleave: Some(0.0),
            surrogate: SurrogateKind::Gp,
            candidates: 300,
            ..OptimizerOptions::default()
        },
    );
    let mut seen = HashSet::new();
    let mut best = f64::INFINITY;
    for i in 0..30 {
        let config = optimizer.ask();
        if i >= 5 {
            assert_eq!(optimizer.last_proposal(), Some(Proposal::Model), "ask {i}");
        }
        assert!(
            seen.insert(Space::config_hash(&config)),
            "repeated at ask {i}"
        );
        let value = mixed(&config);
        best = best.min(value);
        optimizer.tell(&config, Outcome::Cost(value));
    }
    println!("mixed: best {best:.4}, minimum {:.4}", mixed_minimum());
    assert!(
        best - mixed_minimum() < 1.0,
        "regret {}",
        best - mixed_minimum()
    );
}

#[test]
fn a_study_rebuilding_the_optimiser_per_ask_still_interleaves_random_configurations() {
    // The study driver rebuilds the optimiser from its trials before every ask; each round must
    // still draw afresh (a fixed generator would make every ask random, or none).
    let space = branin_space();
    let options = OptimizerOptions {
        seed: 9,
        trial_budget: 60,
        candidates: 200,
        ..OptimizerOptions::default()
    };
    let mut history = Vec::new();
    let mut kinds = Vec::new();
    for _ in 0..60 {
        let mut optimizer = Optimizer::new(space.clone(), options.clone());
        for (config, cost) in &history {
            optimizer.tell(config, Outcome::Cost(*cost));
        }
        let config = optimizer.ask();
        kinds.push(optimizer.last_proposal().unwrap());
        history.push((config.clone(), branin(&config)));
    }
    let random = kinds.iter().filter(|k| **k == Proposal::Random).count();
    let model = kinds.iter().filter(|k| **k == Proposal::Model).count();
    println!("60 asks: {random} random, {model} model");
    assert!((4..=22).contains(&random), "{random} random asks");
    assert!(model >= 30, "{model} model asks");
}

#[test]
fn halton_points_are_even() {
    let points = halton(256, 3, &mut StdRng::seed_from_u64(2));
    for axis in 0..3 {
        let mut counts = [0usize; 8];
        for p in &points {
            assert!((0.0..1.0).contains(&p[axis]));
            counts[(p[axis] * 8.0) as usize] += 1;
        }
        // A random set would stray by ±6 or so; a low-discrepancy one by one or two.
        assert!(
            counts.iter().all(|c| c.abs_diff(32) <= 2),
            "axis {axis}: {counts:?}"
        );
    }
}

#[test]
fn ask_never_repeats_and_starts_with_the_default() {
    for surrogate in [SurrogateKind::Rf, SurrogateKind::Gp] {
        never_repeats(surrogate);
    }
}

fn never_repeats(surrogate: SurrogateKind) {
    let space = Space::builtin("sabr").unwrap();
    let default = space.default_config();
    let mut optimizer = Optimizer::new(
        space,
        OptimizerOptions {
            trial_budget: 40,
            surrogate,
            candidates: 300,
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
    for surrogate in [SurrogateKind::Rf, SurrogateKind::Gp] {
        rebuilds(surrogate);
    }
}

fn rebuilds(surrogate: SurrogateKind) {
    let options = OptimizerOptions {
        seed: 4,
        trial_budget: 20,
        surrogate,
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

#[test]
fn log_normal_cdf_is_accurate_and_finite_far_in_the_tail() {
    // erfc is a rational approximation of relative error ≈ 1e-7.
    assert!((log_normal_cdf(0.0) - 0.5f64.ln()).abs() < 1e-6);
    // Against Python's math.erfc: log Φ(−3) = −6.6077262215, log Φ(−10) = −53.2312851505.
    assert!((log_normal_cdf(-3.0) + 6.607_726_221_5).abs() < 1e-6);
    assert!((log_normal_cdf(-10.0) + 53.231_285_150_5).abs() < 1e-6);
    assert!((log_normal_cdf(-7.999_999) - log_normal_cdf(-8.000_001)).abs() < 1e-3);
    for x in [-40.0, -1000.0] {
        let value = log_normal_cdf(x);
        assert!(value.is_finite() && value < log_normal_cdf(x / 2.0));
    }
    assert!(log_normal_cdf(8.0).abs() < 1e-6);
}

/// Minimises (x−2)² + (y−2)² subject to x + y ≤ 0 (optimum 8 at the origin; the unconstrained
/// optimum, 0 at (2, 2), is infeasible) and returns the best feasible cost and how many of the
/// model's proposals were feasible, out of how many.
fn constrained_run(surrogate: SurrogateKind, seed: u64, constrained: bool) -> (f64, usize, usize) {
    let yaml = "hyperparameters:\n  - {name: x, type: float, lower: -5.0, upper: 5.0, default: 4.0}\n  - {name: y, type: float, lower: -5.0, upper: 5.0, default: 4.0}\n";
    let space = Space::from_yaml(yaml, "constrained").unwrap();
    let options = OptimizerOptions {
        seed,
        trial_budget: 30,
        candidates: 300,
        surrogate,
        // The GP's runs also exercise the gradient polish of the acquisition search.
        polish: surrogate == SurrogateKind::Gp,
        ..Default::default()
    };
    let mut optimizer = Optimizer::new(space, options);
    let (mut best, mut feasible_proposals, mut proposals) = (f64::INFINITY, 0, 0);
    for _ in 0..30 {
        let config = optimizer.ask();
        let (x, y) = (config["x"].as_f64().unwrap(), config["y"].as_f64().unwrap());
        let cost = (x - 2.0).powi(2) + (y - 2.0).powi(2);
        let constraint = x + y;
        if optimizer.last_proposal() == Some(Proposal::Model) {
            proposals += 1;
            feasible_proposals += usize::from(constraint <= 0.0);
        }
        if constraint <= 0.0 {
            best = best.min(cost);
        }
        if constrained {
            optimizer.tell_constrained(&config, Outcome::Cost(cost), vec![constraint]);
        } else {
            optimizer.tell(&config, Outcome::Cost(cost));
        }
    }
    (best, feasible_proposals, proposals)
}

#[test]
fn constrained_search_finds_the_feasible_optimum() {
    for surrogate in [SurrogateKind::Gp, SurrogateKind::Rf] {
        let runs: Vec<(f64, usize, usize)> = (0..3)
            .map(|seed| constrained_run(surrogate, seed, true))
            .collect();
        let blind: Vec<(f64, usize, usize)> = (0..3)
            .map(|seed| constrained_run(surrogate, seed, false))
            .collect();
        let share = |runs: &[(f64, usize, usize)]| {
            runs.iter().map(|r| r.1).sum::<usize>() as f64
                / runs.iter().map(|r| r.2).sum::<usize>().max(1) as f64
        };
        // The GP finds the constrained optimum; the forest, coarse on a smooth bowl, is held
        // only to proposing feasible configurations far more often than without the constraint
        // model (measured over these seeds: the GP's best feasible costs 8.00–8.01, the
        // forest's 9.9–18.7 against 14.9–18.8 blind; feasible shares 0.48 (the GP's proposals
        // hug the boundary, where the optimum is) and 0.66, against 0.06 and 0.09 blind).
        if surrogate == SurrogateKind::Gp {
            assert!(
                median(runs.iter().map(|r| r.0).collect()) < 8.5,
                "best feasible costs {runs:?}, the optimum is 8"
            );
        }
        assert!(
            share(&runs) > share(&blind) + 0.3,
            "{surrogate:?}: feasible share of model proposals {} (without the constraint model {})",
            share(&runs),
            share(&blind)
        );
    }
}

/// Whether an analytic derivative matches a central difference (to 0.1 %: `erfc`'s relative
/// error of 1e-7 over a step of 1e-5 is noise of that order where the GP is steep).
fn close(analytic: f64, numeric: f64) -> bool {
    (analytic - numeric).abs() <= 1e-3 * analytic.abs().max(numeric.abs()) + 1e-8
}

#[test]
fn gp_and_log_ei_gradients_match_finite_differences() {
    let (x, y) = smooth_training_set();
    let best = y.iter().copied().fold(f64::INFINITY, f64::min);
    for kernel in [Kernel::Matern52, Kernel::SquaredExponential] {
        let gp = Gp::fit(&x, &y, kernel).unwrap();
        let log_ei = |p: &[f64]| {
            let (mean, variance) = gp.predict(p).unwrap();
            log_expected_improvement(mean, variance, best)
        };
        // A constraint whose boundary passes near the point (the informative region).
        let feasibility = |p: &[f64], shift: f64| {
            let (mean, variance) = gp.predict(p).unwrap();
            log_probability_of_feasibility(mean - shift, variance)
        };
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..5 {
            let point: Vec<f64> = (0..x[0].len())
                .map(|_| rng.random_range(0.1..0.9))
                .collect();
            let at = gp.predict_with_gradients(&point).unwrap();
            let (_, ei_gradient) = log_expected_improvement_gradient(&at, best);
            let shift = at.mean + at.variance.sqrt();
            let shifted = Prediction {
                mean: at.mean - shift,
                ..at.clone()
            };
            let (_, pof_gradient) = log_probability_of_feasibility_gradient(&shifted);
            for axis in 0..point.len() {
                let h = 1e-5;
                let (mut up, mut down) = (point.clone(), point.clone());
                up[axis] += h;
                down[axis] -= h;
                let (mu_up, var_up) = gp.predict(&up).unwrap();
                let (mu_down, var_down) = gp.predict(&down).unwrap();
                let numeric = [
                    (mu_up - mu_down) / (2.0 * h),
                    (var_up - var_down) / (2.0 * h),
                    (log_ei(&up) - log_ei(&down)) / (2.0 * h),
                    (feasibility(&up, shift) - feasibility(&down, shift)) / (2.0 * h),
                ];
                let analytic = [
                    at.mean_gradient[axis],
                    at.variance_gradient[axis],
                    ei_gradient[axis],
                    pof_gradient[axis],
                ];
                for (what, (a, n)) in ["mean", "variance", "log EI", "log P(feasible)"]
                    .iter()
                    .zip(analytic.iter().zip(numeric))
                {
                    assert!(close(*a, n), "{kernel:?} {what} along {axis}: {a} vs {n}");
                }
            }
        }
    }
}

#[test]
fn pending_configurations_push_parallel_asks_apart() {
    for fantasy in [Fantasy::ConstantLiar, Fantasy::KrigingBeliever] {
        parallel_asks_spread(fantasy);
    }
}

/// Two asks in a row, the first still running: with it pending the second lands elsewhere,
/// not next to it.
fn parallel_asks_spread(fantasy: Fantasy) {
    let space = branin_space();
    let mut optimizer = Optimizer::new(
        space.clone(),
        OptimizerOptions {
            seed: 4,
            trial_budget: 30,
            candidates: 300,
            surrogate: SurrogateKind::Gp,
            fantasy,
            ..Default::default()
        },
    );
    for _ in 0..12 {
        let config = optimizer.ask();
        let value = branin(&config);
        optimizer.tell(&config, Outcome::Cost(value));
    }
    let unit = |c: &cthpo::space::Config| -> Vec<f64> {
        space.encode(c).into_iter().map(|v| v.unwrap()).collect()
    };
    let mut distances = Vec::new();
    for _ in 0..4 {
        let first = optimizer.ask();
        optimizer.mark_pending(&first);
        let second = optimizer.ask();
        let (a, b) = (unit(&first), unit(&second));
        distances.push(
            a.iter()
                .zip(&b)
                .map(|(x, y)| (x - y).powi(2))
                .sum::<f64>()
                .sqrt(),
        );
        optimizer.mark_pending(&second);
        for config in [first, second] {
            let value = branin(&config);
            optimizer.tell(&config, Outcome::Cost(value));
        }
    }
    assert!(
        distances.iter().all(|d| *d > 0.02),
        "{fantasy:?}: unit-cube distances between concurrent asks: {distances:?}"
    );
}

/// A smooth 4-input response on a Latin hypercube, wavy enough that no length scale sits at
/// the bounds.
fn smooth_4d(count: usize) -> (Vec<Vec<f64>>, Vec<f64>) {
    let x = latin_hypercube(count, 4, &mut StdRng::seed_from_u64(11));
    let y = x
        .iter()
        .map(|p| (9.0 * p[0]).sin() + (7.0 * p[1]).cos() * p[2] + 0.5 * (5.0 * p[3]).sin())
        .collect();
    (x, y)
}

#[test]
fn a_warm_started_fit_is_as_likely_as_a_cold_one_and_unchanged_data_reuses_theta() {
    let bounds = [(0.3, 30.0); 4];
    let (x, y) = smooth_4d(40);
    let settings = Kernel::Matern52.into();
    // The previous ask's fit saw 32 of the points.
    let earlier = Gp::fit_from(&x[..32], &y[..32], settings, &bounds, ThetaStart::Cold).unwrap();
    let cold = Gp::fit_from(&x, &y, settings, &bounds, ThetaStart::Cold).unwrap();
    let warm = Gp::fit_from(
        &x,
        &y,
        settings,
        &bounds,
        ThetaStart::Warm(&earlier.theta()),
    )
    .unwrap();
    let (cold_l, warm_l) = (cold.likelihood(), warm.likelihood());
    println!(
        "likelihood: cold {cold_l:.4} (θ {:?}), warm {warm_l:.4} (θ {:?})",
        cold.theta(),
        warm.theta()
    );
    assert!(
        warm_l >= cold_l - 0.02 * cold_l.abs(),
        "warm {warm_l} against cold {cold_l}"
    );
    // The warm start moved θ (the data changed), and stayed inside the bounds.
    assert_ne!(warm.theta(), earlier.theta());
    let within = |t: &f64| (0.3 - 1e-9..=30.0 + 1e-9).contains(t);
    assert!(warm.theta().iter().all(within), "θ {:?}", warm.theta());
    // A fixed θ refits nothing: the same θ, the same predictions.
    let fixed = Gp::fit_from(&x, &y, settings, &bounds, ThetaStart::Fixed(&warm.theta())).unwrap();
    assert_eq!(fixed.theta(), warm.theta());
    let probe = [0.3, 0.6, 0.2, 0.9];
    assert_eq!(
        fixed.predict(&probe).unwrap(),
        warm.predict(&probe).unwrap()
    );
    // A starting θ of the wrong length is an error, not a panic.
    let short = [1.0, 1.0];
    assert!(Gp::fit_from(&x, &y, settings, &bounds, ThetaStart::Warm(&short)).is_err());
    assert!(Gp::fit_from(&x, &y, settings, &bounds, ThetaStart::Fixed(&short)).is_err());
}

#[test]
fn conditioning_on_the_posterior_mean_keeps_the_mean_and_removes_the_variance() {
    let (x, y) = smooth_4d(30);
    let gp = Gp::fit_bounded(&x, &y, Kernel::Matern52, &[(0.3, 30.0); 4]).unwrap();
    let pending = vec![0.45, 0.55, 0.35, 0.65];
    let (mean, variance) = gp.predict(&pending).unwrap();
    let believed = gp
        .with_points(std::slice::from_ref(&pending), &[mean])
        .unwrap();
    let (after_mean, after_variance) = believed.predict(&pending).unwrap();
    assert!(
        (after_mean - mean).abs() < 1e-6,
        "{after_mean} against {mean}"
    );
    assert!(
        after_variance < 1e-3 * variance,
        "variance {variance} → {after_variance}"
    );
    // Elsewhere the mean stays (a belief equal to the mean is no news) and θ is unchanged.
    let elsewhere = [0.1, 0.9, 0.8, 0.2];
    let (far_before, _) = gp.predict(&elsewhere).unwrap();
    let (far_after, _) = believed.predict(&elsewhere).unwrap();
    assert!((far_before - far_after).abs() < 1e-6);
    assert_eq!(believed.theta(), gp.theta());
}

#[test]
fn the_fit_cache_is_reused_until_the_history_changes_and_rebuilds_the_same_ask() {
    let problem = problems().remove(1);
    let options = OptimizerOptions {
        seed: 3,
        trial_budget: 40,
        candidates: 200,
        surrogate: SurrogateKind::Gp,
        ..Default::default()
    };
    let mut live = Optimizer::new(problem.space.clone(), options.clone());
    let mut history = Vec::new();
    for _ in 0..14 {
        let config = live.ask();
        let cost = (problem.function)(&config);
        live.tell(&config, Outcome::Cost(cost));
        history.push((config, cost));
    }
    let unanswered = live.ask();
    assert_eq!(live.last_proposal(), Some(Proposal::Model));
    let fitted = live.fit_cache().theta(0).expect("a GP was fitted").to_vec();
    // Another ask on an unchanged history (nothing told since) reuses θ as it is.
    let again = live.ask();
    assert_eq!(live.fit_cache().theta(0), Some(fitted.as_slice()));
    // New results invalidate it: the next ask fits again.
    for config in [unanswered, again] {
        let cost = (problem.function)(&config);
        live.tell(&config, Outcome::Cost(cost));
        history.push((config, cost));
    }
    let asked = live.ask();
    let refitted = live.fit_cache().theta(0).unwrap().to_vec();
    assert_ne!(refitted, fitted);
    let cost = (problem.function)(&asked);
    live.tell(&asked, Outcome::Cost(cost));
    history.push((asked, cost));
    // A study driver rebuilds the optimiser from its trials and hands it the last ask's
    // cache: it asks what the live optimiser asks.
    let mut rebuilt = Optimizer::new(problem.space.clone(), options);
    for (config, cost) in &history {
        rebuilt.tell(config, Outcome::Cost(*cost));
    }
    rebuilt.set_fit_cache(live.fit_cache().clone());
    assert_eq!(rebuilt.ask(), live.ask());
}
