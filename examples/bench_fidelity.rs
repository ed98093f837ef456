//! Multi-fidelity sample efficiency on synthetic functions: cthpo's Hyperband brackets, ASHA
//! promotion (`study::next_promotion`) and optimiser, as the study driver uses them, on Branin
//! and Hartmann-6 with a fidelity-dependent bias and noise.
//!
//! `cargo run --release --example bench_fidelity -- [--functions branin,hartmann6]
//! [--seeds 20] [--first-seed 0] [--budget 300] [--fidelity hyperband|successive-halving|none]
//! [--surrogate rf|gp] [--rung-model budget-input|corrected] [--no-default]`
//!
//! `--rung-model` overrides how the surrogate learns from the rung scores (its own default
//! otherwise, see `opt::SurrogateKind::rung_model`).
//!
//! As a study does, the optimiser proposes the space's default configuration (the domain's
//! centre here) first, and the brackets never prune it (it goes on to the full budget first);
//! `--no-default` leaves it out, as `cthpo run --no-default` does.
//!
//! Budgets are "epochs" 1, 3 and 9 (η = 3); fidelity `s = epochs / 9`. An evaluation at `s`
//! observes `f_s(x) + σ·(0.1 + 1 − s)·N(0, 1)` where `f_s` is the multi-fidelity Branin or
//! Hartmann-6 of Kandasamy et al. (`opt::benchmark::branin_at`, `hartmann6_at`) and σ is 1
//! (Branin) or 0.05 (Hartmann-6). Like a trial continuing its checkpoint, a promotion from `a`
//! to `b` epochs costs `b − a`; a new configuration costs its first rung's epochs. The
//! incumbent is the configuration with the best observation at the highest budget evaluated
//! so far; its regret is `f_1(x) − min f_1` (no noise). The table gives the median (and
//! quartiles) over seeds of the regret once the cumulative cost reaches each checkpoint, the
//! same summary `benches/fidelity_reference.py` prints for SMAC3's Hyperband facade and
//! Optuna's TPE with the Hyperband pruner.

use cthpo::opt::benchmark::{branin_at, hartmann6_at, problems};
use cthpo::opt::{Optimizer, OptimizerOptions, Outcome, RungModel, SurrogateKind};
use cthpo::space::{Config, Space};
use cthpo::study::{Fidelity, FidelityKind, RungEntry, next_promotion};
use rand::{Rng, SeedableRng, rngs::StdRng};

#[path = "common/args.rs"]
mod args;
use args::Args;
#[path = "common/stats.rs"]
mod stats;
use stats::quartiles;

const EPOCHS: usize = 9;
const CHECKPOINTS: [f64; 5] = [27.0, 54.0, 108.0, 216.0, 300.0];

/// One evaluation: a configuration at a rung.
struct Record {
    config: Config,
    bracket: usize,
    rung: usize,
    observed: f64,
    continued: bool,
}

/// A synthetic multi-fidelity problem.
struct Synthetic {
    name: &'static str,
    space: Space,
    minimum: f64,
    at: fn(&Config, f64) -> f64,
    sigma: f64,
}

fn gaussian(rng: &mut StdRng) -> f64 {
    let (u, v): (f64, f64) = (rng.random_range(f64::EPSILON..1.0), rng.random());
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

/// Regret of the incumbent (best observation at the highest rung reached) of `records`.
fn regret(problem: &Synthetic, records: &[Record]) -> f64 {
    let top = records.iter().map(|r| r.rung).max().unwrap_or(0);
    records
        .iter()
        .filter(|r| r.rung == top)
        .min_by(|a, b| a.observed.total_cmp(&b.observed))
        .map_or(f64::INFINITY, |r| {
            (problem.at)(&r.config, 1.0) - problem.minimum
        })
}

/// Regret after each evaluation and the cumulative cost at it, until `budget` is spent.
fn run(
    problem: &Synthetic,
    (fidelity, surrogate, rung_model): (&Fidelity, SurrogateKind, Option<RungModel>),
    seed: u64,
    budget: f64,
    with_default: bool,
) -> Vec<(f64, f64)> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xf1de);
    let rungs = fidelity.rung_epochs(EPOCHS);
    let brackets = fidelity.brackets(EPOCHS);
    let mut records: Vec<Record> = Vec::new();
    let default = with_default.then(|| problem.space.default_config());
    let mut new_configs = 0;
    let mut cost = 0.0;
    let mut curve = Vec::new();
    while cost < budget {
        let entries: Vec<RungEntry> = records
            .iter()
            .enumerate()
            .filter(|(_, r)| r.rung + 1 < rungs.len())
            .map(|(number, r)| RungEntry {
                number: number as i64,
                bracket: r.bracket,
                rung: r.rung,
                values: vec![-r.observed],
                continued: r.continued,
                reachable: true,
                // As the driver: the space's default, asked first, is never pruned.
                exempt: default.as_ref() == Some(&r.config),
            })
            .collect();
        let (config, bracket, rung, spent) = match next_promotion(fidelity, EPOCHS, &entries) {
            Some((number, rung)) => {
                let from = &mut records[number as usize];
                from.continued = true;
                let spent = rungs[rung] - rungs[from.rung];
                (from.config.clone(), from.bracket, rung, spent)
            }
            None => {
                // As the driver: the optimiser rebuilt from every rung score, at its budget.
                let mut optimizer = Optimizer::new(
                    problem.space.clone(),
                    OptimizerOptions {
                        seed,
                        trial_budget: 100,
                        surrogate,
                        skip_default: !with_default,
                        rung_model,
                        ..OptimizerOptions::default()
                    },
                );
                for record in &records {
                    let budget = fidelity.rung_budget(EPOCHS, record.rung);
                    let outcome = Outcome::Cost(record.observed);
                    optimizer.tell_at_budget(&record.config, budget, outcome, None);
                }
                let config = optimizer.ask();
                let bracket = fidelity.bracket_of(EPOCHS, new_configs);
                new_configs += 1;
                let rung = brackets[bracket].first_rung;
                (config, bracket, rung, rungs[rung])
            }
        };
        let s = rungs[rung] as f64 / EPOCHS as f64;
        let noise = problem.sigma * (0.1 + 1.0 - s) * gaussian(&mut rng);
        records.push(Record {
            observed: (problem.at)(&config, s) + noise,
            config,
            bracket,
            rung,
            continued: false,
        });
        cost += spent as f64;
        curve.push((cost, regret(problem, &records)));
    }
    curve
}

fn main() {
    let args = Args::from_env();
    args.check_known(
        &[
            "--functions",
            "--seeds",
            "--first-seed",
            "--budget",
            "--fidelity",
            "--surrogate",
            "--rung-model",
        ],
        &["--no-default"],
        "bench_fidelity [--functions branin,hartmann6] [--seeds 20] [--first-seed 0] [--budget 300] \
         [--fidelity hyperband|successive-halving|none] [--surrogate rf|gp] \
         [--rung-model budget-input|corrected] [--no-default]",
    );
    let with_default = !args.has("--no-default");
    let surrogate = match args.value("--surrogate", "rf").as_str() {
        "rf" => SurrogateKind::Rf,
        "gp" => SurrogateKind::Gp,
        other => panic!("--surrogate {other}: not rf or gp"),
    };
    let rung_model = args
        .optional("--rung-model")
        .map(|name| match name.as_str() {
            "budget-input" => RungModel::BudgetInput,
            "corrected" => RungModel::Corrected,
            other => panic!("--rung-model {other}: not budget-input or corrected"),
        });
    let seeds: u64 = args.parsed("--seeds", "20");
    let first_seed: u64 = args.parsed("--first-seed", "0");
    let budget: f64 = args.parsed("--budget", "300");
    let kind = match args.value("--fidelity", "hyperband").as_str() {
        "hyperband" => FidelityKind::Hyperband,
        "successive-halving" => FidelityKind::SuccessiveHalving,
        "none" => FidelityKind::None,
        other => panic!("--fidelity {other}: not hyperband, successive-halving or none"),
    };
    let fidelity = Fidelity {
        kind,
        min_epochs: 1,
        eta: 3,
        ..Fidelity::default()
    };
    let wanted = args.value("--functions", "branin,hartmann6");
    let synthetic: Vec<Synthetic> = problems()
        .into_iter()
        .filter_map(|p| {
            let (at, sigma): (fn(&Config, f64) -> f64, f64) = match p.name {
                "branin" => (branin_at, 1.0),
                "hartmann6" => (hartmann6_at, 0.05),
                _ => return None,
            };
            Some(Synthetic {
                name: p.name,
                space: p.space,
                minimum: p.minimum,
                at,
                sigma,
            })
        })
        .filter(|p| wanted.split(',').any(|w| w == p.name))
        .collect();
    let checkpoints: Vec<f64> = CHECKPOINTS
        .iter()
        .copied()
        .filter(|&c| c <= budget)
        .collect();
    let default = if with_default {
        "the default first, never pruned"
    } else {
        "no default"
    };
    let last_seed = (first_seed + seeds).saturating_sub(1);
    let rungs_told = rung_model.unwrap_or_else(|| surrogate.rung_model());
    println!(
        "cthpo {kind:?} ({surrogate:?}, rung scores {rungs_told:?}), η = 3, rungs 1/3/9, \
         seeds {first_seed}..={last_seed}, {default}"
    );
    println!(
        "| function | {} |",
        checkpoints
            .iter()
            .map(|c| format!("cost {c}"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|{}", "---|".repeat(checkpoints.len()));
    for problem in &synthetic {
        let curves: Vec<Vec<(f64, f64)>> = (first_seed..first_seed + seeds)
            .map(|seed| {
                let how = (&fidelity, surrogate, rung_model);
                run(problem, how, seed, budget, with_default)
            })
            .collect();
        let cells: Vec<String> = checkpoints
            .iter()
            .map(|&checkpoint| {
                let regrets: Vec<f64> = curves
                    .iter()
                    .map(|curve| {
                        curve
                            .iter()
                            .take_while(|(cost, _)| *cost <= checkpoint)
                            .last()
                            .map_or(f64::INFINITY, |(_, regret)| *regret)
                    })
                    .collect();
                let (low, median, high) = quartiles(&regrets);
                format!("{median:.3e} [{low:.1e}, {high:.1e}]")
            })
            .collect();
        println!("| {} | {} |", problem.name, cells.join(" | "));
    }
}
