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

use cthpo::store::{Store, StoredTrial, TrialState, attrs};

fn main() {
    let mut dirs: Vec<String> = std::env::args().skip(1).collect();
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
        eprintln!("usage: study_summary [--within SECONDS] DIR [DIR ...]");
        std::process::exit(2);
    }
    println!(
        "| directory | study | trials | configurations | full-budget trials | best objective | hypervolume (natural, certified) |"
    );
    println!("|---|---|---|---|---|---|---|");
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
            let best = complete
                .iter()
                .filter_map(|t| t.user_attr_f64(attrs::OBJECTIVE))
                .fold(None, |best: Option<f64>, x| {
                    Some(best.map_or(x, |b| b.max(x)))
                });
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
        }
    }
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
