//! Summaries of stored trials: counts by state, Pareto-optimal trials, the best trial.

use super::attrs;
use super::types::{Direction, StoredTrial, TrialState};

/// Number of trials in each state, in [`TrialState::ALL`] order.
pub fn state_counts(trials: &[StoredTrial]) -> Vec<(TrialState, usize)> {
    TrialState::ALL
        .into_iter()
        .map(|s| (s, trials.iter().filter(|t| t.state == s).count()))
        .collect()
}

/// Indices of the points that no other point dominates (`directions` per coordinate), in input
/// order: the crate's one dominance rule ([`crate::pareto::non_dominated`]) with maximised
/// coordinates negated.
pub fn pareto_front_indices(points: &[Vec<f64>], directions: &[Direction]) -> Vec<usize> {
    let minimised: Vec<Vec<f64>> = points
        .iter()
        .map(|p| {
            p.iter()
                .zip(directions)
                .map(|(v, d)| match d {
                    Direction::Minimize => *v,
                    Direction::Maximize => -v,
                })
                .collect()
        })
        .collect();
    crate::pareto::non_dominated(&minimised)
}

/// The feasible COMPLETE trials ([`StoredTrial::is_feasible`]) whose objective values no other
/// such trial dominates, by number.
pub fn pareto_optimal<'a>(
    trials: &'a [StoredTrial],
    directions: &[Direction],
) -> Vec<&'a StoredTrial> {
    let complete: Vec<&StoredTrial> = trials
        .iter()
        .filter(|t| {
            t.state == TrialState::Complete
                && t.is_feasible()
                && t.values
                    .as_ref()
                    .is_some_and(|v| v.len() == directions.len())
        })
        .collect();
    let points: Vec<Vec<f64>> = complete
        .iter()
        .map(|t| t.values.clone().unwrap_or_default())
        .collect();
    let mut front: Vec<&StoredTrial> = pareto_front_indices(&points, directions)
        .into_iter()
        .map(|i| complete[i])
        .collect();
    front.sort_by_key(|t| t.number);
    front
}

/// The best feasible COMPLETE trial ([`StoredTrial::is_feasible`]; none when no trial meets
/// the study's constraints, as Optuna): for one objective the best value in the study's direction (lowest
/// number on ties); for several, the highest weighted [`attrs::OBJECTIVE`] user attribute if
/// any trial has one, else the first Pareto-optimal trial.
pub fn best_trial<'a>(
    trials: &'a [StoredTrial],
    directions: &[Direction],
) -> Option<&'a StoredTrial> {
    let mut complete: Vec<&StoredTrial> = trials
        .iter()
        .filter(|t| t.state == TrialState::Complete && t.is_feasible())
        .collect();
    complete.sort_by_key(|t| t.number);
    if let [direction] = directions {
        let mut best: Option<(&StoredTrial, f64)> = None;
        for t in complete {
            let Some(v) = t.values.as_ref().and_then(|v| v.first().copied()) else {
                continue;
            };
            if v.is_nan() {
                continue;
            }
            if best.is_none_or(|(_, b)| direction.better(v, b)) {
                best = Some((t, v));
            }
        }
        return best.map(|(t, _)| t);
    }
    let mut best: Option<(&StoredTrial, f64)> = None;
    for t in &complete {
        if let Some(v) = t.user_attr_f64(attrs::OBJECTIVE).filter(|v| !v.is_nan())
            && best.is_none_or(|(_, b)| v > b)
        {
            best = Some((t, v));
        }
    }
    if let Some((t, _)) = best {
        return Some(t);
    }
    pareto_optimal(trials, directions).into_iter().next()
}
