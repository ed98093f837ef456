//! What a study run achieved, for comparing multi-fidelity settings at equal time: per study of
//! each given study directory, the configurations evaluated, the trials that reached the full
//! budget, the best validation objective, and the hypervolume of the validation front.
//!
//! `cargo run --release --example study_summary -- [--within SECONDS] DIR [DIR ...]`
//!
//! With `--within S` only trials that ended within S seconds of the study's first trial's
//! start count (equal time for runs whose last trial overran the time budget, which a study
//! lets finish).
//! Configurations are the distinct parameter sets of trials that were not interrupted (a
//! promotion to a higher rung is the same configuration). The best objective and the front
//! count only COMPLETE trials (the full budget, scored in full): a multi-fidelity study's
//! pruned trials are scored at a rung, often with the quick scoring, and are not comparable.
//! The hypervolume is the area dominated by the (natural, certified) accuracies of the
//! complete trials, from the reference point (0, 0); the largest possible is 1.
//!
//! With `--rungs`, two more tables ask whether a multi-fidelity study's rungs carried
//! information: for each rung, over the promotions from it (a configuration's weighted objective
//! at the rung and at the next one up, the same validation images), the mean and standard
//! deviation of the change, Spearman's rank correlation and the least-squares slope of the next
//! rung's score on this rung's, per directory and pooled over all of them (each directory's
//! scores centred per rung, so differences between seeds do not count as agreement, and the
//! mean change is then 0); and the spread
//! (standard deviation) of the full-budget objectives of each study, to set against the noise
//! of one score.

#[path = "common/rank.rs"]
mod rank;

use cthpo::store::{Store, StoredTrial, TrialState, attrs};
use rank::spearman;
use std::collections::BTreeMap;

/// (rung promoted from, its score, the next rung's score) of each promotion.
type Promotion = (i64, f64, f64);

fn main() {
    let mut dirs: Vec<String> = std::env::args().skip(1).collect();
    let rungs = match dirs.iter().position(|a| a == "--rungs") {
        Some(i) => {
            dirs.remove(i);
            true
        }
        None => false,
    };
    let within = match dirs.iter().position(|a| a == "--within") {
        Some(i) => {
            let seconds: f64 = dirs
                .get(i + 1)
                .and_then(|s| s.parse().ok())
                .expect("--within takes seconds");
            dirs.drain(i..i + 2);
            Some(seconds)
        }
        None => None,
    };
    if dirs.is_empty() {
        eprintln!("usage: study_summary [--within SECONDS] [--rungs] DIR [DIR ...]");
        std::process::exit(2);
    }
    println!(
        "| directory | study | trials | configurations | full-budget trials | best objective | hypervolume (natural, certified) |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut promotions: Vec<(String, Vec<Promotion>)> = Vec::new();
    let mut spreads: Vec<(String, String, Vec<f64>)> = Vec::new();
    for dir in &dirs {
        let store = Store::open_existing(dir).unwrap_or_else(|e| panic!("{dir}: {e}"));
        for study in store.studies().expect("studies") {
            let mut trials = store.trials(study.id).expect("trials");
            if let Some(limit) = within {
                let start = trials
                    .iter()
                    .filter_map(|t| seconds(t.datetime_start.as_deref()?))
                    .fold(f64::INFINITY, f64::min);
                trials.retain(|t| {
                    t.datetime_complete
                        .as_deref()
                        .and_then(seconds)
                        .is_some_and(|end| end - start <= limit)
                });
            }
            let counted: Vec<&StoredTrial> =
                trials.iter().filter(|t| !t.is_interrupted()).collect();
            let mut distinct = Vec::new();
            for trial in &counted {
                if !distinct.contains(&&trial.params) {
                    distinct.push(&trial.params);
                }
            }
            let complete: Vec<&StoredTrial> = trials
                .iter()
                .filter(|t| t.state == TrialState::Complete)
                .collect();
            let objectives: Vec<f64> = complete
                .iter()
                .filter_map(|t| t.user_attr_f64(attrs::OBJECTIVE))
                .collect();
            let best = objectives.iter().copied().reduce(f64::max);
            let points: Vec<(f64, f64)> = complete
                .iter()
                .filter_map(|t| {
                    Some((
                        t.user_attr_f64(attrs::NATURAL_ACCURACY)?,
                        t.user_attr_f64(attrs::CERTIFIED_ACCURACY)?,
                    ))
                })
                .collect();
            println!(
                "| {dir} | {} | {} | {} | {} | {} | {:.4} |",
                study.name,
                counted.len(),
                distinct.len(),
                complete.len(),
                best.map_or_else(|| "none".to_string(), |b| format!("{b:.4}")),
                hypervolume(&points)
            );
            if rungs {
                promotions.push((dir.clone(), promotions_of(&trials)));
                spreads.push((dir.clone(), study.name.clone(), objectives));
            }
        }
    }
    if rungs {
        print_rungs(&promotions, &spreads);
    }
}

/// Every promotion among `trials`: a trial that continues a trial at the rung below, with both
/// weighted objectives.
fn promotions_of(trials: &[StoredTrial]) -> Vec<Promotion> {
    let by_number: BTreeMap<i64, &StoredTrial> = trials.iter().map(|t| (t.number, t)).collect();
    trials
        .iter()
        .filter_map(|trial| {
            let from = by_number.get(&(trial.user_attr_f64(attrs::CONTINUES)? as i64))?;
            Some((
                from.user_attr_f64(attrs::RUNG)? as i64,
                from.user_attr_f64(attrs::OBJECTIVE)?,
                trial.user_attr_f64(attrs::OBJECTIVE)?,
            ))
        })
        .collect()
}

/// The `--rungs` tables: rung-to-rung consistency per directory and pooled, then the spread of
/// each study's full-budget objectives.
fn print_rungs(promotions: &[(String, Vec<Promotion>)], spreads: &[(String, String, Vec<f64>)]) {
    println!();
    println!(
        "| directory | from rung | promotions | mean change | SD of change | Spearman | slope |"
    );
    println!("|---|---|---|---|---|---|---|");
    // Pooled within directories: each directory's scores are centred per rung first, so a
    // directory (seed, validation split) that scores higher overall does not pass for a rank
    // correlation between rungs.
    let pooled: Vec<Promotion> = promotions
        .iter()
        .flat_map(|(_, list)| centred(list))
        .collect();
    let mut rows: Vec<(&str, &[Promotion], bool)> = promotions
        .iter()
        .map(|(dir, p)| (dir.as_str(), p.as_slice(), false))
        .collect();
    if promotions.len() > 1 {
        rows.push(("all, centred per directory", &pooled, true));
    }
    for (dir, list, is_centred) in rows {
        let mut from_rungs: Vec<i64> = list.iter().map(|p| p.0).collect();
        from_rungs.sort_unstable();
        from_rungs.dedup();
        for rung in from_rungs {
            let (low, high) = at_rung(list, rung);
            let changes: Vec<f64> = low.iter().zip(&high).map(|(l, h)| h - l).collect();
            let (mean, sd) = mean_sd(&changes);
            let mean = if is_centred {
                "(centred)".to_string()
            } else {
                format!("{mean:+.4}")
            };
            println!(
                "| {dir} | {rung} | {} | {mean} | {sd:.4} | {:.2} | {:.2} |",
                low.len(),
                spearman(&low, &high),
                slope(&low, &high)
            );
        }
    }
    println!();
    println!("| directory | study | full-budget trials | mean objective | SD of objectives |");
    println!("|---|---|---|---|---|");
    for (dir, study, objectives) in spreads {
        let (mean, sd) = mean_sd(objectives);
        println!(
            "| {dir} | {study} | {} | {mean:.4} | {sd:.4} |",
            objectives.len()
        );
    }
}

/// The scores of the promotions from `rung`: at the rung, and at the next one up.
fn at_rung(list: &[Promotion], rung: i64) -> (Vec<f64>, Vec<f64>) {
    list.iter()
        .filter(|p| p.0 == rung)
        .map(|p| (p.1, p.2))
        .unzip()
}

/// `list` with each rung's scores (at the rung, and at the next) moved to mean 0.
fn centred(list: &[Promotion]) -> Vec<Promotion> {
    let mut means: BTreeMap<i64, (f64, f64)> = BTreeMap::new();
    for &(rung, _, _) in list {
        means.entry(rung).or_insert_with(|| {
            let (low, high) = at_rung(list, rung);
            (mean_sd(&low).0, mean_sd(&high).0)
        });
    }
    list.iter()
        .map(|&(rung, low, high)| (rung, low - means[&rung].0, high - means[&rung].1))
        .collect()
}

/// Mean and sample standard deviation (NaN for fewer than two values).
fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let squares: f64 = values.iter().map(|v| (v - mean).powi(2)).sum();
    (mean, (squares / (n - 1.0)).sqrt())
}

/// Least-squares slope of `y` on `x`.
fn slope(x: &[f64], y: &[f64]) -> f64 {
    let (mx, _) = mean_sd(x);
    let (my, _) = mean_sd(y);
    let cov: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let var: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
    cov / var
}

/// Seconds since 1970 of Optuna's naive UTC time `YYYY-MM-DD HH:MM:SS[.ffffff]`.
fn seconds(time: &str) -> Option<f64> {
    let (date, clock) = time.split_once(' ')?;
    let mut ymd = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, d) = (ymd.next()?.ok()?, ymd.next()?.ok()?, ymd.next()?.ok()?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let mut hms = clock.split(':').map(|p| p.parse::<f64>());
    let (h, min, s) = (hms.next()?.ok()?, hms.next()?.ok()?, hms.next()?.ok()?);
    Some(days as f64 * 86400.0 + h * 3600.0 + min * 60.0 + s)
}

/// Area dominated by `points` (both coordinates maximised) above the reference point (0, 0).
fn hypervolume(points: &[(f64, f64)]) -> f64 {
    let mut sorted = points.to_vec();
    // Highest first coordinate first; each point adds the strip above the best second
    // coordinate so far.
    sorted.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut area = 0.0;
    let mut covered = 0.0f64;
    for (x, y) in sorted {
        if y > covered {
            area += x * (y - covered);
            covered = y;
        }
    }
    area
}
