//! Multi-fidelity studies: rungs at geometric epoch budgets, Hyperband brackets, and
//! asynchronous (ASHA) promotion of the best configurations of a rung to the next.
//!
//! A configuration trains up to its rung's budget in one trial; the trial ends PRUNED with its
//! rung scores (a pause, not a loss: its checkpoint and training state stay). A later trial
//! *continues* it (user attribute `continues_trial`) from that checkpoint up to the next rung,
//! once it ranks in the top `1/η` of the trials that reached its rung. The last rung's trial is
//! COMPLETE. Whether a trial has been continued is read from the stored trials (a continuation
//! that was not interrupted), so promotions survive restarts and are decided inside the store
//! transaction that starts the continuation.

use super::StudyError;
use crate::eval::EvalConfig;
use crate::store::{StoredTrial, TrialState, attrs};
use serde::{Deserialize, Serialize};

/// How a study spends epochs on configurations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FidelityKind {
    /// Every trial trains for the full epoch budget.
    #[default]
    None,
    /// One bracket from the smallest rung: the top `1/η` of each rung continue to the next.
    SuccessiveHalving,
    /// Brackets starting at every rung, new configurations spread over them as Hyperband does.
    Hyperband,
}

/// How a multi-fidelity study scores a trial stopped at a rung below the full budget (the
/// full-budget rung is always scored in full).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RungScoring {
    /// The study's full validation ([`EvalConfig::cascade`]): evaluation PGD and
    /// IBP → CROWN-IBP → CROWN. The default of studies stored before the setting existed.
    #[default]
    Full,
    /// A cheaper, still sound validation ([`EvalConfig::quick`]): a 10-step, 1-restart PGD and
    /// IBP → CROWN-IBP on the same validation images, at the study's ε.
    Quick,
    /// The quick validation at the ε the trial's ε schedule has reached at the rung's last
    /// epoch (at least [`REACHED_EPS_FLOOR`] of the study's ε): rungs are scored on the radius
    /// they have been trained for, so slow ε ramps are not pruned for being mid-schedule.
    Reached,
    /// The quick validation at the study's ε times the rung's share of the full budget (rung
    /// epochs / `--epochs`, at least [`REACHED_EPS_FLOOR`]): one radius for every trial of a
    /// rung, so a rung ranks its trials by one yardstick rather than each at its own
    /// schedule's radius.
    Share,
}

/// The smallest share of the study's ε a `reached` rung is scored at, used while the trial's
/// ε schedule is still in warm-up (ε = 0): the score is then close to natural accuracy, which
/// is what the trial has been trained for so far, but still a sound certificate at ε > 0.
pub const REACHED_EPS_FLOOR: f64 = 0.01;

impl RungScoring {
    /// The setting's name (`full`, `quick`), also the value of the trial attribute `scoring`.
    pub fn name(&self) -> &'static str {
        match self {
            RungScoring::Full => "full",
            RungScoring::Quick => "quick",
            RungScoring::Reached => "reached",
            RungScoring::Share => "share",
        }
    }

    /// The radius a rung is scored at, given the study's `eps`, the share of it the trial's
    /// ε schedule has reached (`reached_share`, in [0, 1]) and the rung's share of the full
    /// budget (`budget_share`, rung epochs / `--epochs`).
    pub fn scoring_eps(&self, eps: f64, reached_share: f64, budget_share: f64) -> f64 {
        match self {
            RungScoring::Full | RungScoring::Quick => eps,
            RungScoring::Reached => eps * reached_share.clamp(REACHED_EPS_FLOOR, 1.0),
            RungScoring::Share => eps * budget_share.clamp(REACHED_EPS_FLOOR, 1.0),
        }
    }

    /// The evaluation this scoring runs at radius `eps`.
    pub fn eval_config(&self, eps: f64) -> EvalConfig {
        match self {
            RungScoring::Full => EvalConfig::cascade(eps),
            RungScoring::Quick | RungScoring::Reached | RungScoring::Share => {
                EvalConfig::quick(eps)
            }
        }
    }
}

/// The multi-fidelity settings of a study.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fidelity {
    /// Successive halving, Hyperband, or none.
    pub kind: FidelityKind,
    /// Epochs of the smallest rung.
    pub min_epochs: usize,
    /// Reduction factor: each rung has η times the epochs of the one below, and keeps 1/η of
    /// its configurations.
    pub eta: usize,
    /// How trials stopped at a rung below the full budget are scored (full in studies stored
    /// before the setting existed).
    #[serde(default)]
    pub rung_scoring: RungScoring,
}

impl Default for Fidelity {
    fn default() -> Self {
        Fidelity {
            kind: FidelityKind::None,
            min_epochs: 1,
            eta: 3,
            rung_scoring: RungScoring::Full,
        }
    }
}

/// One Hyperband bracket: the rung its configurations start at and how many configurations
/// each of its rungs holds in one synchronous round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bracket {
    /// The rung (index into [`Fidelity::rung_epochs`]) new configurations of the bracket start at.
    pub first_rung: usize,
    /// Configurations per rung, from the first rung to the last.
    pub sizes: Vec<usize>,
}

impl Fidelity {
    /// Checks the settings against the study's largest budget, `epochs`.
    pub fn validate(&self, epochs: usize) -> Result<(), StudyError> {
        if self.eta < 2 {
            return Err(StudyError::invalid(
                "eta",
                format!("η = {} must be at least 2", self.eta),
            ));
        }
        if self.min_epochs == 0 {
            return Err(StudyError::invalid(
                "min_epochs",
                "must be at least 1".into(),
            ));
        }
        if self.kind == FidelityKind::None && self.rung_scoring != RungScoring::Full {
            return Err(StudyError::invalid(
                "rung_scoring",
                format!(
                    "`{}` only applies to multi-fidelity studies (--fidelity successive-halving \
                     or hyperband); a study without rungs scores every trial in full",
                    self.rung_scoring.name()
                ),
            ));
        }
        if self.kind != FidelityKind::None && self.min_epochs >= epochs {
            return Err(StudyError::invalid(
                "min_epochs",
                format!(
                    "{} epochs leave no smaller rung below the largest budget of {epochs} epochs \
                     (--epochs); lower --min-epochs or raise --epochs",
                    self.min_epochs
                ),
            ));
        }
        Ok(())
    }

    /// Whether trials stop at rungs below the full budget.
    pub fn is_multi_fidelity(&self) -> bool {
        self.kind != FidelityKind::None
    }

    /// How a trial that trains `until` epochs of the largest budget `epochs` is scored: the
    /// rung scoring below the full budget, in full at it.
    pub fn scoring_at(&self, until: usize, epochs: usize) -> RungScoring {
        if until < epochs {
            self.rung_scoring
        } else {
            RungScoring::Full
        }
    }

    /// Epoch budgets of the rungs: `min_epochs·η^i` below the largest budget `epochs`, which is
    /// the last rung (one rung of `epochs` without multi-fidelity).
    pub fn rung_epochs(&self, epochs: usize) -> Vec<usize> {
        if !self.is_multi_fidelity() {
            return vec![epochs];
        }
        let mut rungs = Vec::new();
        let mut budget = self.min_epochs;
        while budget < epochs {
            rungs.push(budget);
            budget = budget.saturating_mul(self.eta);
        }
        rungs.push(epochs);
        rungs
    }

    /// Where rung `rung` (of the largest budget `epochs`) lies between the smallest rung (0) and
    /// the full budget (1), on the log scale of the geometric rungs (1, 3, 9 epochs: 0, ½, 1):
    /// the budget input of the surrogate. A study without rungs has only the full budget.
    pub fn rung_budget(&self, epochs: usize, rung: usize) -> f64 {
        let rungs = self.rung_epochs(epochs);
        let (low, high) = (rungs[0] as f64, epochs as f64);
        match rungs.get(rung) {
            Some(&at) if high > low => (at as f64 / low).ln() / (high / low).ln(),
            _ => 1.0,
        }
    }

    /// The brackets: successive halving has one from the smallest rung; Hyperband one from
    /// every rung, bracket `b` starting `n = ⌈(s+1)/(s−b+1)·η^(s−b)⌉` configurations at rung
    /// `b` (with `s + 1` rungs) and keeping `⌊n/η^i⌋` at its `i`-th rung.
    pub fn brackets(&self, epochs: usize) -> Vec<Bracket> {
        let top = self.rung_epochs(epochs).len() - 1;
        let bracket = |first: usize| {
            let halvings = (top - first) as u32;
            let start = if self.kind == FidelityKind::Hyperband {
                ((top + 1) * self.eta.pow(halvings)).div_ceil(halvings as usize + 1)
            } else {
                self.eta.pow(halvings)
            };
            Bracket {
                first_rung: first,
                sizes: (0..=halvings).map(|i| start / self.eta.pow(i)).collect(),
            }
        };
        match self.kind {
            FidelityKind::Hyperband => (0..=top).map(bracket).collect(),
            _ => vec![bracket(0)],
        }
    }

    /// The bracket (index into [`Fidelity::brackets`]) of the `index`-th new configuration of
    /// the study: brackets take turns in proportion to their first rung's size, as in one round
    /// of synchronous Hyperband.
    pub fn bracket_of(&self, epochs: usize, index: usize) -> usize {
        let brackets = self.brackets(epochs);
        let round: usize = brackets.iter().map(|b| b.sizes[0]).sum();
        let mut position = index % round.max(1);
        for (number, bracket) in brackets.iter().enumerate() {
            if position < bracket.sizes[0] {
                return number;
            }
            position -= bracket.sizes[0];
        }
        0
    }
}

/// What one stored trial of a multi-fidelity study says about its configuration's place.
#[derive(Debug, Clone, PartialEq)]
pub struct RungEntry {
    /// Trial number.
    pub number: i64,
    /// Bracket.
    pub bracket: usize,
    /// Rung reached.
    pub rung: usize,
    /// Values at the rung (every one maximised).
    pub values: Vec<f64>,
    /// Whether a trial that was not interrupted continues it.
    pub continued: bool,
    /// Whether this worker can read its checkpoint (same machine).
    pub reachable: bool,
    /// Whether it is the study's seeded default configuration, which is never pruned.
    pub exempt: bool,
}

impl RungEntry {
    /// The paused (PRUNED, scored) trials of a study as rung entries; `reachable` tells which
    /// checkpoints this worker can read, `exempt` which trials run the seeded default
    /// configuration.
    pub fn from_trials(
        trials: &[StoredTrial],
        reachable: impl Fn(&StoredTrial) -> bool,
        exempt: impl Fn(&StoredTrial) -> bool,
    ) -> Vec<RungEntry> {
        let continued: Vec<i64> = trials
            .iter()
            .filter(|t| !t.is_interrupted())
            .filter_map(|t| t.user_attr_f64(attrs::CONTINUES).map(|n| n as i64))
            .collect();
        trials
            .iter()
            .filter(|t| t.state == TrialState::Pruned)
            .filter_map(|t| {
                Some(RungEntry {
                    number: t.number,
                    bracket: t.user_attr_f64(attrs::BRACKET)? as usize,
                    rung: t.user_attr_f64(attrs::RUNG)? as usize,
                    values: t.values.clone().filter(|v| !v.is_empty())?,
                    continued: continued.contains(&t.number),
                    reachable: reachable(t),
                    exempt: exempt(t),
                })
            })
            .collect()
    }
}

/// The next promotion ASHA makes: the seeded default configuration (an `exempt` entry) as soon
/// as it has reached a rung, whatever its rank; else, from the highest rung down, the
/// best-ranked trial of a rung that is in the top `⌊n/η⌋` of the `n` trials of its bracket that
/// reached the rung and is not continued yet. Returns the trial's number and the rung it is
/// promoted to.
pub fn next_promotion(
    fidelity: &Fidelity,
    epochs: usize,
    entries: &[RungEntry],
) -> Option<(i64, usize)> {
    let top = fidelity.rung_epochs(epochs).len() - 1;
    // The user's known-good point goes to the full budget first, so that a study never ends
    // below what the default alone gives, even when its early rungs rank it low.
    if let Some(default) = entries
        .iter()
        .filter(|e| e.exempt && e.rung < top && !e.continued && e.reachable)
        .max_by_key(|e| e.rung)
    {
        return Some((default.number, default.rung + 1));
    }
    let brackets = fidelity.brackets(epochs).len();
    for rung in (0..top).rev() {
        for bracket in 0..brackets {
            let reached: Vec<&RungEntry> = entries
                .iter()
                .filter(|e| e.bracket == bracket && e.rung == rung)
                .collect();
            let places = reached.len() / fidelity.eta;
            let values: Vec<Vec<f64>> = reached.iter().map(|e| e.values.clone()).collect();
            if let Some(entry) = promotion_order(&values)
                .into_iter()
                .take(places)
                .map(|i| reached[i])
                .find(|e| !e.continued && e.reachable)
            {
                return Some((entry.number, rung + 1));
            }
        }
    }
    None
}

/// Indices of `values` (every coordinate maximised) best first: one value by value (ties by
/// trial order); several by non-dominated fronts, the front's points by crowding distance
/// (boundary points first), so whole fronts are promoted before any of the next.
pub fn promotion_order(values: &[Vec<f64>]) -> Vec<usize> {
    let mut left: Vec<usize> = (0..values.len()).collect();
    let mut order = Vec::with_capacity(values.len());
    while !left.is_empty() {
        let minimised: Vec<Vec<f64>> = left
            .iter()
            .map(|&i| values[i].iter().map(|v| -v).collect())
            .collect();
        let mut front: Vec<usize> = crate::pareto::non_dominated(&minimised)
            .into_iter()
            .map(|k| left[k])
            .collect();
        if front.is_empty() {
            // Only NaN-valued points are left: they go last, in trial order.
            order.append(&mut left);
            break;
        }
        let crowding = crowding_distances(values, &front);
        let mut ranked: Vec<(usize, f64)> = front.iter().copied().zip(crowding).collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        front = ranked.into_iter().map(|(i, _)| i).collect();
        left.retain(|i| !front.contains(i));
        order.extend(front);
    }
    order
}

/// NSGA-II crowding distance of each member of `front` (indices into `values`): the sum over
/// objectives of the normalised gap between its neighbours; the extremes get infinity.
fn crowding_distances(values: &[Vec<f64>], front: &[usize]) -> Vec<f64> {
    let mut distance = vec![0.0; front.len()];
    let objectives = values[front[0]].len();
    if objectives == 1 {
        // One objective: the front is one value, nothing to spread.
        return distance;
    }
    let columns = (0..objectives).map(|objective| {
        front
            .iter()
            .map(|&i| values[i][objective])
            .collect::<Vec<f64>>()
    });
    for column in columns {
        let mut sorted: Vec<usize> = (0..front.len()).collect();
        sorted.sort_by(|&a, &b| column[a].total_cmp(&column[b]));
        let (first, last) = (sorted[0], sorted[sorted.len() - 1]);
        distance[first] = f64::INFINITY;
        distance[last] = f64::INFINITY;
        let span = column[last] - column[first];
        if span <= 0.0 {
            continue;
        }
        for k in 1..sorted.len().saturating_sub(1) {
            distance[sorted[k]] += (column[sorted[k + 1]] - column[sorted[k - 1]]) / span;
        }
    }
    distance
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hyperband() -> Fidelity {
        Fidelity {
            kind: FidelityKind::Hyperband,
            min_epochs: 1,
            eta: 3,
            rung_scoring: RungScoring::Quick,
        }
    }

    #[test]
    fn rungs_and_brackets_of_the_textbook_example() {
        // Hand-computed: R = 9 epochs, r = 1, η = 3 → rungs 1, 3, 9; brackets
        // s = 2: 9 → 3 → 1, s = 1: ⌈3/2·3⌉ = 5 → 1, s = 0: 3.
        let fidelity = hyperband();
        assert_eq!(fidelity.rung_epochs(9), [1, 3, 9]);
        assert_eq!(
            fidelity.brackets(9),
            [
                Bracket {
                    first_rung: 0,
                    sizes: vec![9, 3, 1]
                },
                Bracket {
                    first_rung: 1,
                    sizes: vec![5, 1]
                },
                Bracket {
                    first_rung: 2,
                    sizes: vec![3]
                },
            ]
        );
        // One round is 9 + 5 + 3 = 17 new configurations.
        let brackets: Vec<usize> = (0..18).map(|i| fidelity.bracket_of(9, i)).collect();
        assert_eq!(
            brackets,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 0]
        );
        let halving = Fidelity {
            kind: FidelityKind::SuccessiveHalving,
            ..fidelity
        };
        assert_eq!(
            halving.brackets(9),
            [Bracket {
                first_rung: 0,
                sizes: vec![9, 3, 1]
            }]
        );
        assert_eq!(halving.bracket_of(9, 12), 0);
        // A largest budget off the geometric grid is the last rung itself.
        assert_eq!(fidelity.rung_epochs(10), [1, 3, 9, 10]);
        assert_eq!(
            Fidelity {
                min_epochs: 2,
                ..fidelity
            }
            .rung_epochs(9),
            [2, 6, 9]
        );
        assert_eq!(Fidelity::default().rung_epochs(7), [7]);
        // The surrogate's budget input: log-spaced from the smallest rung to the full budget.
        let budgets: Vec<f64> = (0..3).map(|r| fidelity.rung_budget(9, r)).collect();
        assert!((budgets[0] - 0.0).abs() < 1e-12 && (budgets[1] - 0.5).abs() < 1e-12);
        assert!((budgets[2] - 1.0).abs() < 1e-12);
        assert_eq!(Fidelity::default().rung_budget(7, 0), 1.0);
    }

    fn entry(number: i64, rung: usize, value: f64) -> RungEntry {
        RungEntry {
            number,
            bracket: 0,
            rung,
            values: vec![value],
            continued: false,
            reachable: true,
            exempt: false,
        }
    }

    #[test]
    fn asha_promotes_the_top_third_of_a_rung_once_each() {
        let fidelity = hyperband();
        // Two trials at rung 0: ⌊2/3⌋ = 0 places, nothing to promote.
        let mut entries = vec![entry(0, 0, 0.5), entry(1, 0, 0.9)];
        assert_eq!(next_promotion(&fidelity, 9, &entries), None);
        // A third: the best of three (trial 1) goes to rung 1.
        entries.push(entry(2, 0, 0.7));
        assert_eq!(next_promotion(&fidelity, 9, &entries), Some((1, 1)));
        entries[1].continued = true;
        assert_eq!(next_promotion(&fidelity, 9, &entries), None);
        // Nine at rung 0 (the bracket's synchronous size): 3 promotions, the best three.
        for (number, value) in [(3, 0.1), (4, 0.95), (5, 0.2), (6, 0.3), (7, 0.8), (8, 0.4)] {
            entries.push(entry(number, 0, value));
        }
        let mut promoted = Vec::new();
        while let Some((number, rung)) = next_promotion(&fidelity, 9, &entries) {
            assert_eq!(rung, 1);
            promoted.push(number);
            entries
                .iter_mut()
                .find(|e| e.number == number)
                .unwrap()
                .continued = true;
        }
        promoted.sort();
        assert_eq!(promoted, [4, 7]);
        assert_eq!(entries.iter().filter(|e| e.continued).count(), 3);
        // The three at rung 1 send exactly one on to rung 2, before any rung-0 promotion.
        for (number, value) in [(9, 0.6), (10, 0.9), (11, 0.7)] {
            entries.push(entry(number, 1, value));
        }
        entries.push(entry(12, 0, 0.99));
        assert_eq!(next_promotion(&fidelity, 9, &entries), Some((10, 2)));
        entries
            .iter_mut()
            .find(|e| e.number == 10)
            .unwrap()
            .continued = true;
        // Ten at rung 0 still give three places: 12 ranks first and is not continued yet (7
        // keeps its promotion: asynchronous promotion does not take back).
        assert_eq!(next_promotion(&fidelity, 9, &entries), Some((12, 1)));
        // A checkpoint on another machine is passed over.
        entries
            .iter_mut()
            .find(|e| e.number == 12)
            .unwrap()
            .reachable = false;
        assert_eq!(next_promotion(&fidelity, 9, &entries), None);
    }

    #[test]
    fn the_seeded_default_is_promoted_to_every_rung_whatever_its_rank() {
        let fidelity = hyperband();
        // Alone at rung 0 (⌊1/3⌋ = 0 places) and, below, ranked last of its rung: promoted.
        let mut entries = vec![RungEntry {
            exempt: true,
            ..entry(0, 0, 0.1)
        }];
        assert_eq!(next_promotion(&fidelity, 9, &entries), Some((0, 1)));
        for (number, value) in [(1, 0.9), (2, 0.8), (3, 0.7)] {
            entries.push(entry(number, 0, value));
        }
        // Ahead of the ranked promotion of trial 1.
        assert_eq!(next_promotion(&fidelity, 9, &entries), Some((0, 1)));
        entries[0].continued = true;
        assert_eq!(next_promotion(&fidelity, 9, &entries), Some((1, 1)));
        entries[1].continued = true;
        // Its continuation ranks last at rung 1 and still goes on, before the others.
        entries.push(entry(4, 1, 0.95));
        entries.push(entry(5, 1, 0.9));
        entries.push(RungEntry {
            exempt: true,
            ..entry(6, 1, 0.05)
        });
        assert_eq!(next_promotion(&fidelity, 9, &entries), Some((6, 2)));
        entries[6].continued = true;
        assert_eq!(next_promotion(&fidelity, 9, &entries), Some((4, 2)));
        // Its checkpoint on another machine: left to the worker that has it.
        entries[6].continued = false;
        entries[6].reachable = false;
        assert_eq!(next_promotion(&fidelity, 9, &entries), Some((4, 2)));
        // At the full budget there is nothing left to promote it to.
        let done = [RungEntry {
            exempt: true,
            ..entry(7, 2, 0.5)
        }];
        assert_eq!(next_promotion(&fidelity, 9, &done), None);
        // The same in a Pareto study, where it is dominated at its rung.
        let pareto = [
            RungEntry {
                values: vec![0.1, 0.1],
                exempt: true,
                ..entry(0, 0, 0.0)
            },
            RungEntry {
                values: vec![0.9, 0.5],
                ..entry(1, 0, 0.0)
            },
            RungEntry {
                values: vec![0.5, 0.9],
                ..entry(2, 0, 0.0)
            },
        ];
        assert_eq!(next_promotion(&fidelity, 9, &pareto), Some((0, 1)));
    }

    #[test]
    fn pareto_order_promotes_whole_fronts_with_extremes_first() {
        // Front 1: (0.9, 0.1), (0.5, 0.5), (0.1, 0.9), (0.45, 0.55); front 2: (0.4, 0.4).
        let values = vec![
            vec![0.9, 0.1],
            vec![0.4, 0.4],
            vec![0.5, 0.5],
            vec![0.1, 0.9],
            vec![0.45, 0.55],
        ];
        let order = promotion_order(&values);
        assert_eq!(&order[..2], [0, 3], "extremes of the first front first");
        assert_eq!(order[4], 1, "the dominated point last");
        // Crowding distances 1.125 for (0.5, 0.5) and 1.0 for (0.45, 0.55).
        assert_eq!(&order[2..4], [2, 4]);
        assert_eq!(
            promotion_order(&[vec![0.2], vec![0.8], vec![0.5]]),
            [1, 2, 0]
        );
    }

    #[test]
    fn settings_that_leave_no_rung_are_refused() {
        let fidelity = hyperband();
        assert!(fidelity.validate(9).is_ok());
        assert!(fidelity.validate(1).is_err());
        assert!(Fidelity { eta: 1, ..fidelity }.validate(9).is_err());
        assert!(
            Fidelity {
                min_epochs: 0,
                ..fidelity
            }
            .validate(9)
            .is_err()
        );
        // Quick rung scoring needs rungs.
        let none = Fidelity {
            kind: FidelityKind::None,
            ..fidelity
        };
        assert!(none.validate(9).is_err());
        assert!(
            Fidelity {
                rung_scoring: RungScoring::Full,
                ..none
            }
            .validate(9)
            .is_ok()
        );
    }

    #[test]
    fn share_scoring_uses_the_budget_share_whatever_the_schedule_reached() {
        let share = RungScoring::Share;
        assert_eq!(share.scoring_eps(0.1, 0.0, 1.0 / 3.0), 0.1 / 3.0);
        assert_eq!(share.scoring_eps(0.1, 1.0, 1.0 / 3.0), 0.1 / 3.0);
        assert_eq!(share.scoring_eps(0.3, 0.2, 1.0), 0.3);
        assert_eq!(share.eval_config(0.05), EvalConfig::quick(0.05));
        assert_eq!(share.name(), "share");
    }

    #[test]
    fn reached_scoring_uses_the_reached_share_of_eps_with_a_floor() {
        let reached = RungScoring::Reached;
        // The budget share (third argument) does not matter to `reached`.
        assert_eq!(reached.scoring_eps(0.1, 0.5, 0.9), 0.05);
        assert_eq!(reached.scoring_eps(0.1, 1.0, 0.1), 0.1);
        // In warm-up (ε = 0 so far) the floor keeps the certificate at a positive radius.
        assert_eq!(reached.scoring_eps(0.2, 0.0, 0.5), 0.2 * REACHED_EPS_FLOOR);
        assert!(reached.scoring_eps(0.1, 0.0, 0.5) > 0.0);
        assert_eq!(RungScoring::Quick.scoring_eps(0.1, 0.3, 0.5), 0.1);
        assert_eq!(RungScoring::Full.scoring_eps(0.1, 0.3, 0.5), 0.1);
        assert_eq!(reached.eval_config(0.05), EvalConfig::quick(0.05));
        let fidelity = Fidelity {
            rung_scoring: reached,
            ..hyperband()
        };
        assert_eq!(fidelity.scoring_at(3, 9), RungScoring::Reached);
        assert_eq!(fidelity.scoring_at(9, 9), RungScoring::Full);
        let stored: Fidelity = serde_json::from_str(
            r#"{"kind":"hyperband","min_epochs":1,"eta":3,"rung_scoring":"reached"}"#,
        )
        .unwrap();
        assert_eq!(stored.rung_scoring, RungScoring::Reached);
    }

    #[test]
    fn only_rungs_below_the_full_budget_get_the_rung_scoring() {
        let fidelity = hyperband();
        assert_eq!(fidelity.scoring_at(1, 9), RungScoring::Quick);
        assert_eq!(fidelity.scoring_at(3, 9), RungScoring::Quick);
        assert_eq!(fidelity.scoring_at(9, 9), RungScoring::Full);
        let full = Fidelity {
            rung_scoring: RungScoring::Full,
            ..fidelity
        };
        assert_eq!(full.scoring_at(1, 9), RungScoring::Full);
        assert_eq!(RungScoring::Quick.eval_config(0.1), EvalConfig::quick(0.1));
        // Studies stored before the setting existed scored every rung in full.
        let stored: Fidelity =
            serde_json::from_str(r#"{"kind":"hyperband","min_epochs":1,"eta":3}"#).unwrap();
        assert_eq!(stored.rung_scoring, RungScoring::Full);
    }
}
