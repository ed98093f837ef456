//! The driver's side of multi-fidelity studies: which rung a started trial trains to and from
//! which checkpoint, promotions started in a store transaction, and what the surrogate learns.

use super::StudyError;
use super::fidelity::{RungEntry, modelled_rung, next_promotion};
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
/// the budget allows: the choice and the new RUNNING trial are one store transaction, so two
/// workers never continue one trial. Returns the continued trial and the new one.
pub(super) fn promote(
    spec: &StudySpec,
    store: &Store,
    study: StudyId,
    rules: StartRules,
) -> Result<Option<(StoredTrial, TrialHandle)>, StudyError> {
    let rungs = spec.fidelity.rung_epochs(spec.epochs);
    let reachable = |trial: &StoredTrial| {
        store
            .checkpoint_dir(&spec.name, trial.number)
            .join(STATE_FILE)
            .is_file()
    };
    let choose = |trials: &[StoredTrial]| {
        let entries = RungEntry::from_trials(trials, reachable);
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

/// What the surrogate is told about one configuration (see [`surrogate_view`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Told {
    /// Its score at the modelled rung: the trial's values (and constraint values).
    Score,
    /// It failed: the worst cost.
    Failure,
    /// It is running towards the modelled rung: pending, its result fantasised.
    Pending,
    /// It was (or is being) trained to another rung only: never proposed again, not modelled.
    Known,
}

/// The rung the surrogate learns from and what it is told about each configuration.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct SurrogateView<'a> {
    /// The modelled rung (index into the study's rungs).
    pub rung: usize,
    /// Configurations with a score at that rung.
    pub observations: usize,
    /// One entry per configuration, in the order of its latest trial: the trial whose values
    /// (for [`Told::Score`]) or configuration the optimiser is told about, and how.
    pub told: Vec<(&'a StoredTrial, Told)>,
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

/// How many configurations have a score at each rung `0..=top`.
fn scores_per_rung(trials: &[StoredTrial], top: usize) -> Vec<usize> {
    let mut counts = vec![0; top + 1];
    for (index, trial) in trials.iter().enumerate() {
        let first_at_rung = !trials[..index].iter().any(|earlier| {
            scored(earlier)
                && earlier.params == trial.params
                && rung_of(earlier, top) == rung_of(trial, top)
        });
        if scored(trial) && first_at_rung {
            counts[rung_of(trial, top)] += 1;
        }
    }
    counts
}

/// What the optimiser learns from the stored trials: the scores at the [`modelled_rung`] of
/// the configurations scored per rung (at least `min_observations`, see
/// [`super::fidelity::model_minimum`]) and,
/// per configuration, whether it is told that score, a failure (its latest trial that was not
/// interrupted failed, at any rung: a configuration that diverges or crashes is bad whatever
/// the budget), pending (running towards the modelled rung) or only known (scored at other
/// rungs, or running towards one: excluded from proposals, not modelled). Configurations
/// whose every trial was interrupted are left out (they are run again first). In a study
/// without rungs every trial is at the one rung, so this is the latest trial of each
/// configuration.
pub(super) fn surrogate_view(
    trials: &[StoredTrial],
    top: usize,
    min_observations: usize,
) -> SurrogateView<'_> {
    let scored_per_rung = scores_per_rung(trials, top);
    let rung = modelled_rung(&scored_per_rung, min_observations);
    let observations = scored_per_rung[rung];
    let mut told = Vec::new();
    for (index, latest) in trials.iter().enumerate() {
        let same = |t: &&StoredTrial| t.params == latest.params && !t.is_interrupted();
        if latest.is_interrupted() || trials[index + 1..].iter().any(|t| same(&t)) {
            continue;
        }
        let at_rung = trials[..=index]
            .iter()
            .rev()
            .filter(same)
            .find(|t| scored(t) && rung_of(t, top) == rung);
        let entry = match (latest.state, at_rung) {
            (TrialState::Fail, _) => (latest, Told::Failure),
            (_, Some(trial)) => (trial, Told::Score),
            (TrialState::Running, None) if rung_of(latest, top) == rung => (latest, Told::Pending),
            (TrialState::Running, None) => (latest, Told::Known),
            _ if scored(latest) => (latest, Told::Known),
            // Finished without values (an odd store): as a failure, as before rungs existed.
            _ => (latest, Told::Failure),
        };
        told.push(entry);
    }
    SurrogateView {
        rung,
        observations,
        told,
    }
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

    /// The modelled rung of hand-built trials.
    fn rung_for(trials: &[StoredTrial], top: usize, minimum: usize) -> usize {
        modelled_rung(&scores_per_rung(trials, top), minimum)
    }

    fn told<'a>(view: &SurrogateView<'a>) -> Vec<(i64, Told)> {
        view.told.iter().map(|(t, how)| (t.number, *how)).collect()
    }

    #[test]
    fn the_modelled_rung_is_the_highest_with_enough_scores() {
        let top = 2;
        assert_eq!(
            rung_for(&[], top, 3),
            top,
            "nothing scored: the full budget"
        );
        let mut trials = vec![
            scored_at(0, 1.0, 0, top, 0.1),
            scored_at(1, 2.0, 0, top, 0.2),
            scored_at(2, 3.0, 0, top, 0.3),
            scored_at(3, 3.0, 1, top, 0.4),
            scored_at(4, 4.0, 2, top, 0.5),
        ];
        // Rung 0 has 3 scores, rungs 1 and 2 one each.
        assert_eq!(rung_for(&trials, top, 3), 0);
        // No rung has 4: the one with the most.
        assert_eq!(rung_for(&trials, top, 4), 0);
        // Rung 0 and rung 2 both have what is needed: the higher.
        assert_eq!(rung_for(&trials, top, 1), 2);
        // A tie in the most scores below the minimum goes to the higher rung.
        assert_eq!(rung_for(&trials[3..], top, 2), 2);
        // A configuration scored twice at one rung (a re-run) counts once; failures,
        // running and interrupted trials count nothing.
        trials.push(scored_at(5, 3.0, 1, top, 0.45));
        trials.push(trial(6, 5.0, TrialState::Running, Some(1)));
        trials.push(trial(7, 6.0, TrialState::Fail, Some(1)));
        trials.push(interrupted(8, 7.0, 1));
        assert_eq!(rung_for(&trials, top, 2), 0);
        trials.push(scored_at(9, 1.0, 1, top, 0.6));
        assert_eq!(rung_for(&trials, top, 2), 1);
    }

    #[test]
    fn the_optimiser_learns_the_modelled_rungs_scores_and_knows_the_rest() {
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
        ];
        let view = surrogate_view(&trials, top, 2);
        assert_eq!((view.rung, view.observations), (1, 2));
        assert_eq!(
            told(&view),
            [
                (2, Told::Known),   // c: scored at rung 0 only
                (3, Told::Score),   // a's rung-1 score
                (4, Told::Score),   // b's rung-1 score (its interrupted promotion aside)
                (5, Told::Failure), // d
                (7, Told::Known),   // f runs towards rung 0
                (9, Told::Pending), // e runs towards rung 1
                (11, Told::Known),  // h: scored at rung 2 only
            ]
        );
        // With a minimum of 3, rung 1 (2 scores) is not enough: rung 0 (4 scores) is modelled,
        // a and b by their rung-0 scores, and e is told its rung-0 score while its
        // promotion runs.
        let view = surrogate_view(&trials, top, 3);
        assert_eq!((view.rung, view.observations), (0, 4));
        assert_eq!(
            told(&view),
            [
                (2, Told::Score),
                (0, Told::Score),
                (1, Told::Score),
                (5, Told::Failure),
                (7, Told::Pending),
                (6, Told::Score),
                (11, Told::Known),
            ]
        );
        // A promotion that fails makes its configuration a failure, whatever rung it held.
        let mut failed = trials.clone();
        failed.push(trial(12, 1.0, TrialState::Fail, Some(2)));
        let view = surrogate_view(&failed, top, 2);
        assert!(told(&view).contains(&(12, Told::Failure)));
        assert!(!told(&view).iter().any(|&(n, _)| n == 3));
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
        ];
        let view = surrogate_view(&trials, top, 100);
        assert_eq!((view.rung, view.observations), (0, 3));
        assert_eq!(
            told(&view),
            [
                (0, Told::Score),
                (1, Told::Failure),
                (3, Told::Score),
                (4, Told::Pending),
                (5, Told::Score),
            ]
        );
    }
}
