//! The driver's side of multi-fidelity studies: which rung a started trial trains to and from
//! which checkpoint, promotions started in a store transaction, and what the surrogate learns.

use super::StudyError;
use super::fidelity::{RungEntry, next_promotion};
use super::spec::StudySpec;
use super::trial::Segment;
use crate::store::{
    Continuation, StartRules, Store, StoredTrial, StudyId, TrialHandle, TrialState, attrs,
};
use crate::train::STATE_FILE;

/// Where a started trial of a multi-fidelity study trains to.
pub(super) struct Plan {
    /// Epochs and starting checkpoint.
    pub segment: Segment,
    bracket: usize,
    rung: usize,
    continues: Option<i64>,
}

impl Plan {
    /// A note for the display: `trial 12: bracket 0, rung 1 (3 epochs), continues trial 4`.
    pub fn describe(&self, number: i64) -> String {
        let continues = self
            .continues
            .map_or_else(String::new, |n| format!(", continues trial {n}"));
        format!(
            "trial {number}: bracket {}, rung {} ({} epochs){continues}",
            self.bracket, self.rung, self.segment.until
        )
    }
}

/// The plan of the started trial `handle`: a promotion (rung attributes written when it was
/// started) continues its trial's checkpoint, after copying that trial's rung scores as its
/// own first intermediate values; a new configuration starts at the first rung of its bracket
/// (the bracket of the `i`-th configuration of the study, counting trials that continue none
/// and were not interrupted), written as its attributes.
pub(super) fn plan(
    spec: &StudySpec,
    store: &Store,
    trials: &[StoredTrial],
    handle: &TrialHandle,
) -> Result<Plan, StudyError> {
    let rungs = spec.fidelity.rung_epochs(spec.epochs);
    let this = trials.iter().find(|t| t.trial_id == handle.trial_id);
    let attr = |key| this.and_then(|t| t.user_attr_f64(key)).map(|v| v as usize);
    if let (Some(bracket), Some(rung)) = (attr(attrs::BRACKET), attr(attrs::RUNG))
        && rung < rungs.len()
    {
        let continues = this
            .and_then(|t| t.user_attr_f64(attrs::CONTINUES))
            .map(|n| n as i64);
        let continue_from = continues.map(|n| store.checkpoint_dir(&spec.name, n));
        if let Some(from) = continues.and_then(|n| trials.iter().find(|t| t.number == n)) {
            for (&step, &value) in &from.intermediate_values {
                store.report_intermediate(handle, step, value)?;
            }
        }
        return Ok(Plan {
            segment: Segment {
                until: rungs[rung],
                continue_from,
            },
            bracket,
            rung,
            continues,
        });
    }
    let index = trials
        .iter()
        .filter(|t| t.number < handle.number && !t.is_interrupted())
        .filter(|t| !t.user_attrs.contains_key(attrs::CONTINUES))
        .count();
    let bracket = spec.fidelity.bracket_of(spec.epochs, index);
    let rung = spec.fidelity.brackets(spec.epochs)[bracket].first_rung;
    for (key, value) in [
        (attrs::BRACKET, bracket),
        (attrs::RUNG, rung),
        (attrs::RUNG_EPOCHS, rungs[rung]),
    ] {
        store.set_trial_user_attr(handle, key, &value.into())?;
    }
    Ok(Plan {
        segment: Segment {
            until: rungs[rung],
            continue_from: None,
        },
        bracket,
        rung,
        continues: None,
    })
}

/// Starts the next ASHA promotion, if there is one whose checkpoint this worker can read and
/// the budget allows (the seeded default configuration, told by `is_default`, first and at
/// every rung): the choice and the new RUNNING trial are one store transaction, so two
/// workers never continue one trial. Returns the continued trial and the new one.
pub(super) fn promote(
    spec: &StudySpec,
    store: &Store,
    study: StudyId,
    rules: StartRules,
    is_default: impl Fn(&StoredTrial) -> bool,
) -> Result<Option<(StoredTrial, TrialHandle)>, StudyError> {
    let rungs = spec.fidelity.rung_epochs(spec.epochs);
    let reachable = |trial: &StoredTrial| {
        store
            .checkpoint_dir(&spec.name, trial.number)
            .join(STATE_FILE)
            .is_file()
    };
    let choose = |trials: &[StoredTrial]| {
        let entries = RungEntry::from_trials(trials, reachable, &is_default);
        let (number, rung) = next_promotion(&spec.fidelity, spec.epochs, &entries)?;
        let bracket = entries.iter().find(|e| e.number == number)?.bracket;
        Some(Continuation {
            from: number,
            attrs: vec![
                (attrs::BRACKET.into(), bracket.into()),
                (attrs::RUNG.into(), rung.into()),
                (attrs::RUNG_EPOCHS.into(), rungs[rung].into()),
                (attrs::CONTINUES.into(), number.into()),
            ],
        })
    };
    Ok(store.start_continuation(study, rules, choose)?)
}

/// What one stored trial tells the surrogate (see [`surrogate_view`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Told {
    /// Its values (and constraint values), at its rung.
    Score,
    /// Its configuration failed: the worst cost.
    Failure,
    /// It is running towards its rung: pending, its result fantasised.
    Pending,
}

/// The rung of a stored trial: its `rung` attribute, else (a study without rungs, or one
/// Optuna wrote) the full budget, `top`.
fn rung_of(trial: &StoredTrial, top: usize) -> usize {
    trial
        .user_attr_f64(attrs::RUNG)
        .map_or(top, |rung| (rung as usize).min(top))
}

/// Whether a trial ended with values (a COMPLETE trial, or a PRUNED one at its rung).
fn scored(trial: &StoredTrial) -> bool {
    matches!(trial.state, TrialState::Complete | TrialState::Pruned)
        && trial.values.as_ref().is_some_and(|v| !v.is_empty())
}

/// What the surrogate learns from the stored trials, in trial order, each with the rung
/// (`0..=top`) it was made at: every rung score of every configuration (a configuration
/// promoted twice gives three observations, one per rung; the rung is an input of the model),
/// a running trial as pending at the rung it trains to, and a configuration whose latest trial
/// that was not interrupted failed, at any rung, as one failure instead of its scores (a
/// configuration that diverges or crashes is bad whatever the budget). Interrupted trials
/// tell nothing (their configurations run again first). In a study without rungs every trial
/// is at the one rung, so this is the latest trial of each configuration.
pub(super) fn surrogate_view(
    trials: &[StoredTrial],
    top: usize,
) -> Vec<(&StoredTrial, usize, Told)> {
    let mut told = Vec::new();
    for (index, trial) in trials.iter().enumerate() {
        if trial.is_interrupted() {
            continue;
        }
        let same = |t: &&StoredTrial| t.params == trial.params && !t.is_interrupted();
        let later: Vec<&StoredTrial> = trials[index + 1..].iter().filter(same).collect();
        let latest = later.last().copied().unwrap_or(trial);
        let rung = rung_of(trial, top);
        let failed = latest.state == TrialState::Fail
            || (latest.state != TrialState::Running && !scored(latest));
        let entry = if failed {
            std::ptr::eq(latest, trial).then_some(Told::Failure)
        } else if scored(trial) {
            // A re-run at the same rung (a rare duplicate) replaces the earlier score.
            let rescored = later.iter().any(|t| scored(t) && rung_of(t, top) == rung);
            (!rescored).then_some(Told::Score)
        } else {
            (trial.state == TrialState::Running).then_some(Told::Pending)
        };
        if let Some(how) = entry {
            told.push((trial, rung, how));
        }
    }
    told
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ParamDistribution, ParamValue, StoredParam};
    use serde_json::Value;

    /// A hand-built trial of configuration `x` (one float hyperparameter).
    fn trial(number: i64, x: f64, state: TrialState, rung: Option<usize>) -> StoredTrial {
        let distribution = ParamDistribution::Float {
            low: 0.0,
            high: 10.0,
            log: false,
            step: None,
        };
        let mut user_attrs = std::collections::BTreeMap::new();
        if let Some(rung) = rung {
            user_attrs.insert(attrs::RUNG.to_string(), Value::from(rung));
        }
        StoredTrial {
            trial_id: number + 100,
            number,
            state,
            params: vec![StoredParam::new("x", distribution, ParamValue::Float(x)).unwrap()],
            values: None,
            user_attrs,
            system_attrs: Default::default(),
            intermediate_values: Default::default(),
            datetime_start: None,
            datetime_complete: None,
            duration_seconds: None,
            heartbeat: None,
        }
    }

    /// A PRUNED (below `top`) or COMPLETE trial of `x` scored `value` at `rung`.
    fn scored_at(number: i64, x: f64, rung: usize, top: usize, value: f64) -> StoredTrial {
        let state = if rung < top {
            TrialState::Pruned
        } else {
            TrialState::Complete
        };
        StoredTrial {
            values: Some(vec![value]),
            ..trial(number, x, state, Some(rung))
        }
    }

    fn interrupted(number: i64, x: f64, rung: usize) -> StoredTrial {
        let mut t = trial(number, x, TrialState::Fail, Some(rung));
        t.user_attrs
            .insert(attrs::INTERRUPTED.to_string(), Value::Bool(true));
        t
    }

    fn told(view: &[(&StoredTrial, usize, Told)]) -> Vec<(i64, usize, Told)> {
        view.iter()
            .map(|(t, rung, how)| (t.number, *rung, *how))
            .collect()
    }

    #[test]
    fn the_surrogate_learns_every_rung_score_at_its_rung() {
        let top = 2;
        let trials = vec![
            scored_at(0, 1.0, 0, top, 0.5),              // a at rung 0
            scored_at(1, 2.0, 0, top, 0.9),              // b at rung 0
            scored_at(2, 3.0, 0, top, 0.4),              // c at rung 0 only
            scored_at(3, 1.0, 1, top, 0.7),              // a continued to rung 1
            scored_at(4, 2.0, 1, top, 0.8),              // b continued to rung 1
            trial(5, 4.0, TrialState::Fail, Some(0)),    // d failed at rung 0
            scored_at(6, 5.0, 0, top, 0.6),              // e at rung 0
            trial(7, 6.0, TrialState::Running, Some(0)), // f running to rung 0
            interrupted(8, 7.0, 0),                      // g interrupted, to be re-run
            trial(9, 5.0, TrialState::Running, Some(1)), // e running to rung 1
            interrupted(10, 2.0, 2),                     // b's promotion to rung 2 stopped
            scored_at(11, 8.0, 2, top, 0.95),            // h started at the full budget
            scored_at(12, 1.0, 2, top, 0.75),            // a continued to the full budget
        ];
        assert_eq!(
            told(&surrogate_view(&trials, top)),
            [
                (0, 0, Told::Score),
                (1, 0, Told::Score),
                (2, 0, Told::Score),
                (3, 1, Told::Score),
                (4, 1, Told::Score), // b's interrupted promotion aside
                (5, 0, Told::Failure),
                (6, 0, Told::Score), // e's rung-0 score while its promotion runs
                (7, 0, Told::Pending), // f
                (9, 1, Told::Pending), // e's promotion
                (11, 2, Told::Score),
                (12, 2, Told::Score),
            ]
        );
        // A promotion that fails makes its configuration one failure, whatever rung it held.
        let mut failed = trials.clone();
        failed.push(trial(13, 2.0, TrialState::Fail, Some(2)));
        let view = told(&surrogate_view(&failed, top));
        assert!(view.contains(&(13, 2, Told::Failure)));
        assert!(!view.iter().any(|&(n, _, _)| n == 1 || n == 4), "{view:?}");
    }

    #[test]
    fn without_rungs_every_configuration_is_told_its_latest_trial() {
        // A `--fidelity none` study (no rung attributes): one rung, the full budget.
        let top = 0;
        let complete = |number, x, value| StoredTrial {
            values: Some(vec![value]),
            ..trial(number, x, TrialState::Complete, None)
        };
        let trials = vec![
            complete(0, 1.0, 0.5),
            trial(1, 2.0, TrialState::Fail, None),
            interrupted(2, 3.0, 0),
            complete(3, 3.0, 0.7), // the re-run of trial 2
            trial(4, 4.0, TrialState::Running, None),
            complete(5, 5.0, 0.1),
            interrupted(6, 5.0, 0), // a later interrupted trial leaves the score alone
            StoredTrial {
                values: None,
                ..trial(7, 6.0, TrialState::Complete, None)
            }, // finished without values: a failure, as before rungs existed
        ];
        assert_eq!(
            told(&surrogate_view(&trials, top)),
            [
                (0, 0, Told::Score),
                (1, 0, Told::Failure),
                (3, 0, Told::Score),
                (4, 0, Told::Pending),
                (5, 0, Told::Score),
                (7, 0, Told::Failure),
            ]
        );
    }
}
