//! What a study run achieved, for comparing multi-fidelity settings at equal time: per study of
//! each given study directory, the configurations evaluated, the trials that reached the full
//! budget, the best validation objective, and the hypervolume of the validation front.
//!
//! `cargo run --release --example study_summary -- DIR [DIR ...]`
//!
//! Configurations are the distinct parameter sets of trials that were not interrupted (a
//! promotion to a higher rung is the same configuration). The best objective and the front
//! count only COMPLETE trials (the full budget, scored in full): a multi-fidelity study's
//! pruned trials are scored at a rung, often with the quick scoring, and are not comparable.
//! The hypervolume is the area dominated by the (natural, certified) accuracies of the
//! complete trials, from the reference point (0, 0); the largest possible is 1.

use cthpo::store::{Store, StoredTrial, TrialState, attrs};

fn main() {
    let dirs: Vec<String> = std::env::args().skip(1).collect();
    if dirs.is_empty() {
        eprintln!("usage: study_summary DIR [DIR ...]");
        std::process::exit(2);
    }
    println!(
        "| directory | study | trials | configurations | full-budget trials | best objective | hypervolume (natural, certified) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for dir in &dirs {
        let store = Store::open_existing(dir).unwrap_or_else(|e| panic!("{dir}: {e}"));
        for study in store.studies().expect("studies") {
            let trials = store.trials(study.id).expect("trials");
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
