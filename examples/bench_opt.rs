//! Sample efficiency and ask() latency of the optimiser.
//!
//! `cargo run --release --example bench_opt -- [--functions branin,hartmann6,mixed]
//! [--strategies random,rf_bo,gp_bo] [--seeds 20] [--evals 50] [--json FILE]` runs every strategy
//! on every function for each seed and prints the median and quartiles of simple regret after 20
//! evaluations and at the end (the same functions and summary as `benches/opt_reference.py`
//! computes for SMAC3 and Optuna). `--workers N` runs the optimiser's strategies as N simulated
//! parallel workers (each ask sees the others' configurations as pending; evaluations finish in
//! the order they started). `--polish` turns on the L-BFGS polish of the acquisition search
//! (`OptimizerOptions::polish`), `--fantasy cl|kb` chooses how pending trials join the model
//! (constant liar, kriging believer), `--nugget X` sets the GP's nugget and `--design N` the
//! size of the initial Latin hypercube.
//!
//! `cargo run --release --example bench_opt -- --latency [--surrogate rf|gp]` times ask() on a
//! 12-parameter space with 50, 200 and 500 trials in the history: the first ask of a fresh
//! optimiser (a cold fit) and the next one after telling its result (warm-started from the
//! first's fit, as in a running study).

use cthpo::opt::benchmark::{Strategy, problems, regret_curve_parallel, regret_curve_with};
use cthpo::opt::{Fantasy, Optimizer, OptimizerOptions, Outcome, Proposal, SurrogateKind};
use cthpo::space::Space;
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::time::Instant;

#[path = "common/args.rs"]
mod args;
use args::Args;
#[path = "common/stats.rs"]
mod stats;
use stats::quartiles;

/// CPU seconds this process has used, all threads (on a machine shared with other jobs, the
/// time an ask costs rather than how long it waited for a core).
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Wall and CPU milliseconds of `f`.
fn timed<T>(f: impl FnOnce() -> T) -> (T, f64, f64) {
    let (wall, cpu) = (Instant::now(), cpu_seconds());
    let value = f();
    (
        value,
        wall.elapsed().as_secs_f64() * 1e3,
        (cpu_seconds() - cpu) * 1e3,
    )
}

fn latency(surrogate: SurrogateKind) {
    let mut yaml = String::from("hyperparameters:\n");
    for i in 0..4 {
        yaml += &format!(
            "  - {{name: log{i}, type: float, lower: 1.0e-5, upper: 1, log: true, default: 0.001}}\n"
        );
        yaml += &format!("  - {{name: lin{i}, type: float, lower: 0, upper: 1, default: 0.5}}\n");
    }
    yaml += "  - {name: steps, type: int, lower: 1, upper: 50, default: 10}\n";
    yaml += "  - {name: width, type: int, lower: 8, upper: 512, log: true, default: 64}\n";
    yaml += "  - {name: opt, type: categorical, choices: [adam, adamw, radam], default: adam}\n";
    yaml += "  - {name: sched, type: categorical, choices: [step, cosine], default: step}\n";
    let space = Space::from_yaml(&yaml, "latency").expect("a valid space");
    println!(
        "ask() latency, {} parameters, surrogate {surrogate:?}:",
        space.dimension()
    );
    println!(
        "| trials in history | first ask (cold fit): median wall ms / CPU ms | next ask (warm): wall ms / CPU ms |"
    );
    println!("|---|---|---|");
    for history in [50, 200, 500] {
        let mut rng = StdRng::seed_from_u64(history as u64);
        let (mut cold, mut cold_cpu, mut warm, mut warm_cpu) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for repeat in 0..5 {
            let mut optimizer = Optimizer::new(
                space.clone(),
                OptimizerOptions {
                    seed: repeat,
                    trial_budget: history + 10,
                    surrogate,
                    random_interleave: Some(0.0),
                    ..OptimizerOptions::default()
                },
            );
            for _ in 0..history {
                let config = space.sample(&mut rng);
                optimizer.tell(&config, Outcome::Cost(rng.random_range(0.0..1.0)));
            }
            // Past the initial design, so that the ask fits the surrogate and searches.
            loop {
                let (config, wall, cpu) = timed(|| optimizer.ask());
                optimizer.tell(&config, Outcome::Cost(rng.random_range(0.0..1.0)));
                if optimizer.last_proposal() != Some(Proposal::Design) {
                    cold.push(wall);
                    cold_cpu.push(cpu);
                    break;
                }
            }
            let (_, wall, cpu) = timed(|| optimizer.ask());
            warm.push(wall);
            warm_cpu.push(cpu);
        }
        let median = |v: &[f64]| quartiles(v).1;
        println!(
            "| {history} | {:.0} / {:.0} | {:.0} / {:.0} |",
            median(&cold),
            median(&cold_cpu),
            median(&warm),
            median(&warm_cpu)
        );
    }
}

fn main() {
    let args = Args::from_env();
    if args.has("--latency") {
        let surrogate = match args.value("--surrogate", "rf").as_str() {
            "gp" => SurrogateKind::Gp,
            _ => SurrogateKind::Rf,
        };
        latency(surrogate);
        return;
    }
    let functions = args.value("--functions", "branin,hartmann6,mixed");
    let strategies: Vec<Strategy> = args
        .value("--strategies", "random,rf_bo,gp_bo")
        .split(',')
        .map(|s| match s {
            "random" => Strategy::Random,
            "rf_bo" => Strategy::Forest,
            "gp_bo" => Strategy::Gp,
            other => panic!("unknown strategy `{other}` (random, rf_bo, gp_bo)"),
        })
        .collect();
    let seeds: u64 = args
        .value("--seeds", "20")
        .parse()
        .expect("--seeds takes a number");
    let evals: usize = args
        .value("--evals", "50")
        .parse()
        .expect("--evals takes a number");
    let mut base = OptimizerOptions {
        polish: args.has("--polish"),
        ..OptimizerOptions::default()
    };
    match args.value("--fantasy", "default").as_str() {
        "cl" => base.fantasy = Fantasy::ConstantLiar,
        "kb" => base.fantasy = Fantasy::KrigingBeliever,
        "default" => {}
        other => panic!("unknown fantasy `{other}` (cl, kb)"),
    }
    if let Some(nugget) = args.optional("--nugget") {
        base.nugget = nugget.parse().expect("--nugget takes a number");
    }
    if let Some(design) = args.optional("--design") {
        base.initial_design = Some(design.parse().expect("--design takes a number"));
    }
    let workers: usize = args
        .value("--workers", "1")
        .parse()
        .expect("--workers takes a number");
    let mut report = serde_json::Map::new();
    println!(
        "| function | strategy | regret@20 median [q25, q75] | regret@{evals} median [q25, q75] | s per run |"
    );
    println!("|---|---|---|---|---|");
    for problem in problems()
        .into_iter()
        .filter(|p| functions.split(',').any(|f| f == p.name))
    {
        let mut per_function = serde_json::Map::new();
        per_function.insert("minimum".into(), problem.minimum.into());
        for &strategy in &strategies {
            let start = Instant::now();
            let curves: Vec<Vec<f64>> = (0..seeds)
                .map(|seed| match strategy {
                    Strategy::Forest | Strategy::Gp if workers > 1 => {
                        let surrogate = if strategy == Strategy::Gp {
                            SurrogateKind::Gp
                        } else {
                            SurrogateKind::Rf
                        };
                        regret_curve_parallel(&problem, surrogate, seed, evals, (workers, &base))
                    }
                    _ => regret_curve_with(&problem, strategy, seed, evals, &base),
                })
                .collect();
            let seconds = start.elapsed().as_secs_f64() / seeds as f64;
            let at =
                |n: usize| -> Vec<f64> { curves.iter().map(|c| c[n.min(evals) - 1]).collect() };
            let (q25, median, q75) = quartiles(&at(evals));
            let (e25, early, e75) = quartiles(&at(20));
            println!(
                "| {} | {} | {early:.4} [{e25:.4}, {e75:.4}] | {median:.4} [{q25:.4}, {q75:.4}] | {seconds:.2} |",
                problem.name,
                strategy.name()
            );
            per_function.insert(
                strategy.name().into(),
                serde_json::json!({
                    "curves": curves,
                    "seconds_per_run": seconds,
                    "final": {"median": median, "q25": q25, "q75": q75},
                    "at_20": {"median": early, "q25": e25, "q75": e75},
                }),
            );
        }
        report.insert(problem.name.into(), per_function.into());
    }
    if args.has("--json") {
        let path = args.optional("--json").expect("--json takes a file name");
        std::fs::write(&path, serde_json::to_string_pretty(&report).expect("JSON"))
            .expect("writing the report");
        println!("wrote {path}");
    }
}
