//! The data step of the charts: which trials become points, the accuracy front, the history
//! series. Pure functions of stored trials, so tests check them without drawing.

use crate::store::{self, Direction, StoredTrial, StudyInfo, TrialState, attrs};

/// One trial as a point of certified vs natural accuracy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AccuracyPoint {
    /// Trial number.
    pub number: i64,
    /// Natural accuracy (x).
    pub natural: f64,
    /// Certified accuracy (y).
    pub certified: f64,
    /// Whether the trial meets the study's constraints (only feasible trials form the front).
    pub feasible: bool,
}

/// The COMPLETE trials that record both natural and certified accuracy.
pub fn accuracy_points(trials: &[StoredTrial]) -> Vec<AccuracyPoint> {
    trials
        .iter()
        .filter(|t| t.state == TrialState::Complete)
        .filter_map(|t| {
            accuracy_point(
                t,
                t.user_attr_f64(attrs::NATURAL_ACCURACY)?,
                t.user_attr_f64(attrs::CERTIFIED_ACCURACY)?,
            )
        })
        .collect()
}

/// The trials `cthpo evaluate` scored on the test split (attribute
/// [`attrs::TEST_EVALUATION`]), as points of their test-set natural and certified accuracy.
pub fn test_accuracy_points(trials: &[StoredTrial]) -> Vec<AccuracyPoint> {
    trials
        .iter()
        .filter_map(|t| {
            let evaluation = t.user_attrs.get(attrs::TEST_EVALUATION)?;
            accuracy_point(
                t,
                evaluation.get("natural_accuracy")?.as_f64()?,
                evaluation.get("certified_accuracy")?.as_f64()?,
            )
        })
        .collect()
}

/// `t`'s point at these accuracies, if both are finite.
fn accuracy_point(t: &StoredTrial, natural: f64, certified: f64) -> Option<AccuracyPoint> {
    (natural.is_finite() && certified.is_finite()).then_some(AccuracyPoint {
        number: t.number,
        natural,
        certified,
        feasible: t.is_feasible(),
    })
}

/// The Pareto-optimal feasible points (both accuracies maximised), sorted by natural accuracy.
pub fn accuracy_front(points: &[AccuracyPoint]) -> Vec<AccuracyPoint> {
    let points: Vec<AccuracyPoint> = points.iter().filter(|p| p.feasible).copied().collect();
    let coords: Vec<Vec<f64>> = points
        .iter()
        .map(|p| vec![p.natural, p.certified])
        .collect();
    let mut front: Vec<AccuracyPoint> =
        store::pareto_front_indices(&coords, &[Direction::Maximize, Direction::Maximize])
            .into_iter()
            .map(|i| points[i])
            .collect();
    front.sort_by(|a, b| {
        a.natural
            .total_cmp(&b.natural)
            .then(b.certified.total_cmp(&a.certified))
    });
    front.dedup_by(|a, b| a.natural == b.natural && a.certified == b.certified);
    front
}

/// The staircase through a front sorted by natural accuracy: the boundary of what it dominates.
pub fn staircase(front: &[AccuracyPoint]) -> Vec<(f64, f64)> {
    let mut line = Vec::with_capacity(front.len() * 2);
    for (i, p) in front.iter().enumerate() {
        line.push((p.natural, p.certified));
        if let Some(next) = front.get(i + 1) {
            line.push((p.natural, next.certified));
        }
    }
    line
}

/// The scalar a study optimises, per trial, as plotted in the history chart.
#[derive(Debug, Clone, PartialEq)]
pub struct HistorySeries {
    /// Axis label of the value.
    pub label: String,
    /// Direction in which the value improves.
    pub direction: Direction,
    /// (trial number, value) of COMPLETE trials with a finite value.
    pub points: Vec<(i64, f64)>,
    /// (trial number, rung score) of PRUNED trials with a finite value (multi-fidelity studies
    /// stop configurations at rungs below the full budget).
    pub pruned: Vec<(i64, f64)>,
    /// Numbers of FAIL trials.
    pub failed: Vec<i64>,
}

/// Chooses the scalar to plot: the single objective; for several objectives the weighted
/// [`attrs::OBJECTIVE`] attribute when trials have it, else the first objective.
pub fn history_series(info: &StudyInfo, trials: &[StoredTrial]) -> HistorySeries {
    let weighted = info.directions.len() > 1
        && trials
            .iter()
            .any(|t| t.user_attr_f64(attrs::OBJECTIVE).is_some());
    let direction = if weighted {
        Direction::Maximize
    } else {
        info.directions
            .first()
            .copied()
            .unwrap_or(Direction::Minimize)
    };
    let better = match direction {
        Direction::Minimize => "lower is better",
        Direction::Maximize => "higher is better",
    };
    let label = if weighted {
        format!("weighted objective ({better})")
    } else if info.directions.len() > 1 {
        format!("objective 1 of {} ({better})", info.directions.len())
    } else {
        format!("objective ({better})")
    };
    let mut points = Vec::new();
    let mut pruned = Vec::new();
    let mut failed = Vec::new();
    for t in trials {
        let value = if weighted {
            t.user_attr_f64(attrs::OBJECTIVE)
        } else {
            t.values.as_ref().and_then(|v| v.first().copied())
        };
        let value = value.filter(|v| v.is_finite());
        match (t.state, value) {
            (TrialState::Complete, Some(v)) => points.push((t.number, v)),
            (TrialState::Pruned, Some(v)) => pruned.push((t.number, v)),
            (TrialState::Fail, _) => failed.push(t.number),
            _ => {}
        }
    }
    points.sort_by_key(|p| p.0);
    failed.sort();
    HistorySeries {
        label,
        direction,
        points,
        pruned,
        failed,
    }
}

/// The running best of a history as a step line that extends to trial `last_number`:
/// (trial number, best value so far) at every improvement and at the end.
pub fn best_so_far(series: &HistorySeries, last_number: i64) -> Vec<(f64, f64)> {
    let mut line: Vec<(f64, f64)> = Vec::new();
    let mut best: Option<f64> = None;
    for &(n, v) in &series.points {
        if best.is_none_or(|b| series.direction.better(v, b)) {
            if let Some(b) = best {
                line.push((n as f64, b));
            }
            best = Some(v);
            line.push((n as f64, v));
        }
    }
    if let Some(b) = best {
        line.push((last_number as f64, b));
    }
    line
}
