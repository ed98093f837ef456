//! Do rung scores rank configurations as their full-budget scores do? Trains random
//! configurations of one method to the full budget, scoring each at every rung on the way.
//!
//! `cargo run --release --example rung_correlation -- [--method ibp] [--configs 20]
//! [--epochs 9] [--min-epochs 1] [--eta 3] [--train-samples 5000] [--val-samples 300]
//! [--eps 0.1] [--seed 0] [--per-rung] [--from 0] [--rows-only] [--reached-eps]`
//!
//! Each configuration trains with the schedules of the full budget and is scored (weighted
//! objective: natural + PGD + certified accuracy, on the validation split) at every rung, as a
//! multi-fidelity study scores it: below the full budget both with the full evaluation and with
//! the quick one at the study's ε (`--rung-scoring quick`), at the full budget
//! with the full evaluation. With `--per-rung` each rung is also trained separately from
//! scratch with schedules compressed into the rung's epochs (the alternative design, full
//! scoring). Prints one row per configuration (full / quick score per rung), the Spearman rank
//! correlation of each rung's full and quick scores with the full budget's score, and the
//! seconds each scoring took. `--from F` starts at configuration F (of the same sequence), and
//! `--rows-only` prints only the rows, so several processes can share the configurations;
//! feed their rows back with `--rows FILE` (no training) for the correlations.
//! `--reached-eps` also scores each rung below the full budget quick at the ε its schedule has
//! reached by then (at least 1 % of ε) instead of the study's ε: a third value per cell, the
//! scoring of `--rung-scoring reached` (a multi-fidelity study's default). `--floors` (with
//! `--reached-eps`) also scores each rung below the full budget at the reached ε with each
//! candidate floor of `FLOORS` instead of 1 %: one more value per cell and floor.

#[path = "common/args.rs"]
mod args;
#[path = "common/rank.rs"]
mod rank;

use args::Args;
use cthpo::data::{DataSource, DatasetName, load};
use cthpo::eval::{EvalConfig, evaluate};
use cthpo::model::{Net, NetSpec};
use cthpo::opt::{Optimizer, OptimizerOptions};
use cthpo::space::{Space, to_json_map};
use cthpo::study::{Fidelity, FidelityKind, RungScoring};
use cthpo::train::{Method, NoObserver, TrainConfig, TrainOptions, fit_epochs, reached_eps_share};
use rank::spearman;

fn main() {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0") };
    }
    cthpo::kernels::retain_freed_memory();
    let args = Args::from_env();
    let method: Method = args
        .value("--method", "ibp")
        .parse()
        .expect("a method name");
    let configs: u64 = args.parsed("--configs", "20");
    let epochs: usize = args.parsed("--epochs", "9");
    let fidelity = Fidelity {
        kind: FidelityKind::SuccessiveHalving,
        min_epochs: args.parsed("--min-epochs", "1"),
        eta: args.parsed("--eta", "3"),
        ..Fidelity::default()
    };
    let train_samples: usize = args.parsed("--train-samples", "5000");
    let val_samples: usize = args.parsed("--val-samples", "300");
    let eps: f64 = args.parsed("--eps", "0.1");
    let seed: u64 = args.parsed("--seed", "0");
    let per_rung = args.has("--per-rung");
    let from: u64 = args.parsed("--from", "0");
    let rows_only = args.has("--rows-only");
    let reached_eps = args.has("--reached-eps");
    let with_floors = reached_eps && args.has("--floors");
    if let Some(file) = args.optional("--rows") {
        let (scores, quick, reached, floors) = read_rows(&file);
        let rungs = fidelity.rung_epochs(epochs);
        correlations(&rungs, &scores, &quick, &reached, &[]);
        floor_correlations(&rungs, &scores, &floors);
        return;
    }
    let splits = load(DatasetName::Mnist, &DataSource::default()).expect("embedded MNIST");
    let (train, validation) = splits
        .train_validation(val_samples, Some(train_samples), seed)
        .expect("split");
    let (images, labels) = train.tensors().expect("tensors");
    let (val_images, val_labels) = validation.tensors().expect("tensors");
    let spec = NetSpec::builtin(
        "cnn-small",
        [1, 28, 28],
        10,
        DatasetName::Mnist.normalization(),
    )
    .expect("cnn-small");
    let space = Space::builtin(method.name()).expect("space");
    let rungs = fidelity.rung_epochs(epochs);
    // Seconds spent in each scoring, below the full budget.
    let mut seconds = [0.0f64; 2];
    let train_count = images.dim(0).expect("training images");
    let score_at = |net: &Net, scoring: RungScoring, eps: f64| {
        let mut eval: EvalConfig = scoring.eval_config(eps);
        eval.seed = seed;
        let r = evaluate(net, &val_images, &val_labels, &eval, |_, _| {}).expect("evaluation");
        (
            r.natural_accuracy + r.adversarial_accuracy + r.certified_accuracy,
            r.seconds,
        )
    };
    let score = |net: &Net, scoring: RungScoring| score_at(net, scoring, eps);
    // scores[c][r]: configuration c at rung r (mid-schedule, full scoring); quick[c][r] the
    // same scored quick (the full budget scored in full); separate[c][r]: rung r trained alone
    // with its own schedules.
    let mut scores: Vec<Vec<f64>> = Vec::new();
    let mut quick: Vec<Vec<f64>> = Vec::new();
    let mut reached: Vec<Vec<f64>> = Vec::new();
    // floors[f][c][r]: configuration c at rung r scored at the reached ε with floor f.
    let mut floors: Vec<Table> = vec![Vec::new(); FLOORS.len()];
    let mut separate: Vec<Vec<f64>> = Vec::new();
    if !rows_only {
        println!(
            "| config | {} |",
            rungs
                .iter()
                .map(|e| format!("{e} ep"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    for c in from..configs {
        let config = Optimizer::new(
            space.clone(),
            OptimizerOptions {
                seed: seed.wrapping_add(c * 7919),
                ..OptimizerOptions::default()
            },
        )
        .ask_random();
        let config = TrainConfig::from_map(method, &to_json_map(&config)).expect("config");
        let options = TrainOptions { epochs, eps, seed };
        let mut net = Net::new(&spec, method.initialization(), seed).expect("net");
        let mut state = None;
        let mut row = Vec::new();
        let mut quick_row = Vec::new();
        let mut reached_row = Vec::new();
        let mut floor_rows: Vec<Vec<f64>> = vec![Vec::new(); FLOORS.len()];
        for &until in &rungs {
            let result = fit_epochs(
                &mut net,
                method,
                &config,
                &options,
                (&images, &labels),
                state.take(),
                until,
                &mut NoObserver,
            );
            match result {
                Ok((_, next)) => {
                    state = Some(next);
                    let (full, full_seconds) = score(&net, RungScoring::Full);
                    row.push(full);
                    if until < epochs {
                        let (cheap, cheap_seconds) = score(&net, RungScoring::Quick);
                        quick_row.push(cheap);
                        seconds[0] += full_seconds;
                        seconds[1] += cheap_seconds;
                        if reached_eps {
                            let share =
                                reached_eps_share(method, &config, &options, train_count, until);
                            let budget_share = until as f64 / epochs as f64;
                            let at = RungScoring::Reached.scoring_eps(eps, share, budget_share);
                            reached_row.push(score_at(&net, RungScoring::Reached, at).0);
                            for ((_, floor), floor_row) in FLOORS.iter().zip(&mut floor_rows) {
                                if with_floors {
                                    let at = eps * share.max(floor(until, epochs)).min(1.0);
                                    floor_row.push(score_at(&net, RungScoring::Reached, at).0);
                                }
                            }
                        }
                    } else {
                        quick_row.push(full);
                        if reached_eps {
                            reached_row.push(full);
                        }
                        for floor_row in floor_rows.iter_mut().filter(|_| with_floors) {
                            floor_row.push(full);
                        }
                    }
                }
                Err(_) => break,
            }
        }
        if row.len() < rungs.len() {
            eprintln!("configuration {c} diverged; left out");
            continue;
        }
        if per_rung {
            let mut alone = Vec::new();
            for &budget in &rungs[..rungs.len() - 1] {
                let mut net = Net::new(&spec, method.initialization(), seed).expect("net");
                let options = TrainOptions {
                    epochs: budget,
                    eps,
                    seed,
                };
                let ok = fit_epochs(
                    &mut net,
                    method,
                    &config,
                    &options,
                    (&images, &labels),
                    None,
                    budget,
                    &mut NoObserver,
                )
                .is_ok();
                alone.push(if ok {
                    score(&net, RungScoring::Full).0
                } else {
                    f64::NAN
                });
            }
            alone.push(row[row.len() - 1]);
            separate.push(alone);
        }
        println!(
            "| {c} | {} |",
            row.iter()
                .zip(&quick_row)
                .enumerate()
                .map(|(r, (full, quick))| {
                    let mut cell = format!("{full:.3} / {quick:.3}");
                    let others = reached_row.get(r).into_iter();
                    for value in others.chain(floor_rows.iter().filter_map(|f| f.get(r))) {
                        cell.push_str(&format!(" / {value:.3}"));
                    }
                    cell
                })
                .collect::<Vec<_>>()
                .join(" | ")
        );
        scores.push(row);
        quick.push(quick_row);
        if reached_eps {
            reached.push(reached_row);
        }
        if with_floors {
            for (table, row) in floors.iter_mut().zip(floor_rows) {
                table.push(row);
            }
        }
    }
    if rows_only {
        return;
    }
    correlations(
        &rungs,
        &scores,
        &quick,
        &reached,
        if per_rung { &separate } else { &[] },
    );
    if with_floors {
        floor_correlations(&rungs, &scores, &floors);
    }
    println!(
        "scoring below the full budget: full {:.1} s, quick {:.1} s in all",
        seconds[0], seconds[1]
    );
}

/// Prints the Spearman correlation of every rung below the full budget with the full budget:
/// full scoring, quick scoring, and (when given) quick scoring at the reached ε and each rung
/// trained alone.
fn correlations(
    rungs: &[usize],
    scores: &[Vec<f64>],
    quick: &[Vec<f64>],
    reached: &[Vec<f64>],
    separate: &[Vec<f64>],
) {
    let last = rungs.len() - 1;
    let column = |table: &[Vec<f64>], r: usize| table.iter().map(|row| row[r]).collect::<Vec<_>>();
    for (r, budget) in rungs.iter().enumerate().take(last) {
        println!(
            "Spearman(rung {budget} ep mid-schedule, {} ep) = {:.3} over {} configurations",
            rungs[last],
            spearman(&column(scores, r), &column(scores, last)),
            scores.len()
        );
        println!(
            "Spearman(rung {budget} ep mid-schedule quick scoring, {} ep) = {:.3}",
            rungs[last],
            spearman(&column(quick, r), &column(scores, last)),
        );
        if !reached.is_empty() {
            println!(
                "Spearman(rung {budget} ep mid-schedule quick scoring at the reached ε, {} ep) = {:.3}",
                rungs[last],
                spearman(&column(reached, r), &column(scores, last)),
            );
        }
        if !separate.is_empty() {
            println!(
                "Spearman(rung {budget} ep own schedule, {} ep) = {:.3}",
                rungs[last],
                spearman(&column(separate, r), &column(separate, last))
            );
        }
    }
}

/// A floor of the share of ε a rung is scored at, from the rung's epochs and the full budget.
type Floor = fn(usize, usize) -> f64;

/// Candidate floors of the `reached` rung scoring (the share of ε a rung is scored at, at
/// least), by rung epochs and full budget: what `--floors` compares with the 1 % of
/// [`cthpo::study::REACHED_EPS_FLOOR`].
const FLOORS: [(&str, Floor); 3] = [
    ("10 % of ε", |_, _| 0.1),
    (
        "the schedule's share (rung epochs / epochs)",
        |until, epochs| until as f64 / epochs as f64,
    ),
    ("half the schedule's share", |until, epochs| {
        0.5 * until as f64 / epochs as f64
    }),
];

/// The Spearman correlation with the full budget of each rung scored at the reached ε with
/// each candidate floor of [`FLOORS`].
fn floor_correlations(rungs: &[usize], scores: &[Vec<f64>], floors: &[Table]) {
    let last = rungs.len() - 1;
    let column = |table: &[Vec<f64>], r: usize| table.iter().map(|row| row[r]).collect::<Vec<_>>();
    for ((name, _), table) in FLOORS.iter().zip(floors).filter(|(_, t)| !t.is_empty()) {
        for (r, budget) in rungs.iter().enumerate().take(last) {
            println!(
                "Spearman(rung {budget} ep at the reached ε, floor {name}, {} ep) = {:.3}",
                rungs[last],
                spearman(&column(table, r), &column(scores, last)),
            );
        }
    }
}

/// Scores per configuration (rows) and rung (columns).
type Table = Vec<Vec<f64>>;

/// Full, quick and (if present) reached-ε scores, and the scores with each candidate floor,
/// from the rows `| c | full / quick [/ reached [/ floor...]] | ... |` of earlier runs.
fn read_rows(file: &str) -> (Table, Table, Table, Vec<Table>) {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{file}: {e}"));
    let (mut scores, mut quick, mut reached) = (Vec::new(), Vec::new(), Vec::new());
    let mut floors: Vec<Table> = vec![Vec::new(); FLOORS.len()];
    for line in text.lines() {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        if cells.len() < 2 || cells[0].parse::<u64>().is_err() {
            continue;
        }
        let values: Vec<Vec<f64>> = cells[1..]
            .iter()
            .map(|cell| {
                cell.split('/')
                    .map(|v| v.trim().parse().expect("a score"))
                    .collect()
            })
            .collect();
        scores.push(values.iter().map(|v| v[0]).collect());
        quick.push(values.iter().map(|v| v[1]).collect());
        if values.iter().all(|v| v.len() > 2) {
            reached.push(values.iter().map(|v| v[2]).collect());
        }
        for (f, table) in floors.iter_mut().enumerate() {
            if values.iter().all(|v| v.len() > 3 + f) {
                table.push(values.iter().map(|v| v[3 + f]).collect());
            }
        }
    }
    (scores, quick, reached, floors)
}
