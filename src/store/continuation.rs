//! Continuations: a new RUNNING trial that carries an earlier trial's configuration further
//! (a promotion to the next rung of a multi-fidelity study), chosen and started in one
//! transaction so that of several workers exactly one continues each trial.

use super::types::{StartRules, StoredTrial, StudyId, TrialHandle};
use super::{Store, StoreError};
use serde_json::Value;

/// Which trial to continue and the user attributes its continuation starts with.
#[derive(Debug, Clone, PartialEq)]
pub struct Continuation {
    /// Number of the trial whose params the new trial takes.
    pub from: i64,
    /// User attributes written with the new trial, in the same transaction.
    pub attrs: Vec<(String, Value)>,
}

impl Store {
    /// Holding the study's lock: unless `rules.budget` is spent, lets `choose` pick from the
    /// study's trials one to continue, and starts the continuation (a RUNNING trial with the
    /// chosen trial's params and the attributes `choose` gave). What `choose` sees is what the
    /// other workers have committed, and they wait for this transaction, so a trial `choose`
    /// recognises as continued (by the attributes it writes) is never continued twice.
    /// Returns the continued trial and the new trial's handle.
    pub fn start_continuation(
        &self,
        study: StudyId,
        rules: StartRules,
        choose: impl Fn(&[StoredTrial]) -> Option<Continuation>,
    ) -> Result<Option<(StoredTrial, TrialHandle)>, StoreError> {
        self.write(|tx| {
            self.lock_study_in(tx, study)?;
            if let Some(budget) = rules.budget
                && self.counted_trials(tx, study, rules.interrupted_uncounted)? >= budget as i64
            {
                return Ok(None);
            }
            let trials = self.trials_in(tx, study)?;
            let Some(choice) = choose(&trials) else {
                return Ok(None);
            };
            let Some(from) = trials.into_iter().find(|t| t.number == choice.from) else {
                return Err(self.corrupt(format!(
                    "the continuation of trial {}, which the study does not have",
                    choice.from
                )));
            };
            let handle = self.insert_trial(tx, study, &from.params)?;
            for (key, value) in &choice.attrs {
                self.set_attr_in(tx, handle.trial_id, key, value)?;
            }
            Ok(Some((from, handle)))
        })
    }
}
