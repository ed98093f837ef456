//! The driver's side of multi-fidelity studies: which rung a started trial trains to and from
//! which checkpoint, promotions started in a store transaction, and what the surrogate learns.

use super::StudyError;
use super::fidelity::{RungEntry, next_promotion};
use super::spec::StudySpec;
use super::trial::Segment;
use crate::store::{Continuation, StartRules, Store, StoredTrial, StudyId, TrialHandle, attrs};
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

/// The trials the surrogate learns from: per configuration only the latest trial that was not
/// interrupted (a promotion's score at its higher rung replaces the paused trial's, a running
/// promotion leaves the configuration pending, a failed one makes it a failure).
pub(super) fn latest_per_configuration(trials: &[StoredTrial]) -> Vec<&StoredTrial> {
    trials
        .iter()
        .filter(|t| {
            !trials.iter().any(|later| {
                later.number > t.number && later.params == t.params && !later.is_interrupted()
            })
        })
        .collect()
}
