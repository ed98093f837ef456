//! Trial writes: starting a RUNNING trial (with the budget and duplicate checks several
//! workers need), intermediate values, heartbeats, attributes, finishing it, and failing the
//! ones a dead process left RUNNING.

use super::engine::Tx;
use super::time::parse_utc;
use super::types::{
    LEGACY_INTERRUPTED, StartRules, Started, StoredParam, StoredTrial, StudyId, TrialHandle,
    TrialOutcome, TrialState,
};
use super::{ParamDistribution, Store, StoreError, attrs, encode_json, encode_value, now_utc};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

impl Store {
    /// Records a new RUNNING trial with its params, start time and first heartbeat; its
    /// number is the count of the study's earlier trials. Each param's distribution must be
    /// compatible with the one earlier trials of the study used for that name.
    pub fn start_trial(
        &self,
        study: StudyId,
        params: &[StoredParam],
    ) -> Result<TrialHandle, StoreError> {
        match self.start_trial_checked(study, params, StartRules::default())? {
            Started::Trial(handle) => Ok(handle),
            other => Err(self.corrupt(format!("no rules given, yet the start was {other:?}"))),
        }
    }

    /// [`Store::start_trial`] unless `rules` decline it: the budget is spent, or another trial
    /// has these params. The checks and the insert are one transaction that holds the study's
    /// lock, so concurrent workers never overrun the budget or run one configuration twice.
    pub fn start_trial_checked(
        &self,
        study: StudyId,
        params: &[StoredParam],
        rules: StartRules,
    ) -> Result<Started, StoreError> {
        for (i, p) in params.iter().enumerate() {
            p.distribution.validate(&p.name)?;
            if params[..i].iter().any(|q| q.name == p.name) {
                return Err(StoreError::InvalidParam {
                    name: p.name.clone(),
                    reason: "given twice".to_string(),
                });
            }
        }
        self.write(|tx| {
            let e = |err| self.db_err(err);
            let study_name = tx
                .query_opt(
                    "SELECT study_name FROM studies WHERE study_id = ?1 FOR UPDATE",
                    &[study.0.into()],
                )
                .map_err(e)?
                .map(|r| r.text(0))
                .transpose()
                .map_err(e)?
                .ok_or_else(|| StoreError::StudyNotFound {
                    path: self.db_path.clone(),
                    name: format!("<id {}>", study.0),
                    known: String::new(),
                })?;
            self.check_distributions(tx, study, &study_name, params)?;
            if let Some(budget) = rules.budget
                && self.counted_trials(tx, study, rules.interrupted_uncounted)? >= budget as i64
            {
                return Ok(Started::BudgetSpent);
            }
            if rules.unique
                && let Some(number) = self.trial_with_params(tx, study, params)?
            {
                return Ok(Started::Duplicate { number });
            }
            self.insert_trial(tx, study, params).map(Started::Trial)
        })
    }

    /// Inserts a RUNNING trial with its params and first heartbeat; its number is the count of
    /// the study's earlier trials (the caller holds the study's lock).
    pub(super) fn insert_trial(
        &self,
        tx: &mut Tx<'_>,
        study: StudyId,
        params: &[StoredParam],
    ) -> Result<TrialHandle, StoreError> {
        let e = |err| self.db_err(err);
        let now = now_utc();
        let trial_id = self
            .query_int(
                tx,
                "INSERT INTO trials (number, study_id, state, datetime_start) \
                 VALUES (NULL, ?1, 'RUNNING', ?2) RETURNING trial_id",
                &[study.0.into(), now.as_str().into()],
            )?
            .ok_or_else(|| self.corrupt("no id for the new trial"))?;
        let number = self
            .query_int(
                tx,
                "SELECT count(*) FROM trials WHERE study_id = ?1 AND trial_id < ?2",
                &[study.0.into(), trial_id.into()],
            )?
            .unwrap_or(0);
        tx.execute(
            "UPDATE trials SET number = ?1 WHERE trial_id = ?2",
            &[number.into(), trial_id.into()],
        )
        .map_err(e)?;
        for p in params {
            tx.execute(
                "INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json) \
                 VALUES (?1, ?2, ?3, ?4)",
                &[
                    trial_id.into(),
                    p.name.as_str().into(),
                    p.internal.into(),
                    p.distribution.to_optuna_json().into(),
                ],
            )
            .map_err(e)?;
        }
        tx.execute(
            "INSERT INTO trial_heartbeats (trial_id, heartbeat) VALUES (?1, ?2)",
            &[trial_id.into(), now.as_str().into()],
        )
        .map_err(e)?;
        Ok(TrialHandle {
            study_id: study,
            trial_id,
            number,
        })
    }

    /// Refuses params whose distribution conflicts with the one earlier trials used.
    fn check_distributions(
        &self,
        tx: &mut Tx<'_>,
        study: StudyId,
        study_name: &str,
        params: &[StoredParam],
    ) -> Result<(), StoreError> {
        let e = |err| self.db_err(err);
        for p in params {
            let stored = tx
                .query_opt(
                    "SELECT p.distribution_json FROM trial_params p \
                     JOIN trials t ON t.trial_id = p.trial_id \
                     WHERE t.study_id = ?1 AND p.param_name = ?2 LIMIT 1",
                    &[study.0.into(), p.name.as_str().into()],
                )
                .map_err(e)?
                .map(|r| r.opt_text(0))
                .transpose()
                .map_err(e)?
                .flatten();
            if let Some(stored) = stored {
                let old = ParamDistribution::from_optuna_json(&stored)
                    .ok_or_else(|| self.corrupt(format!("distribution_json {stored:?}")))?;
                if let Some(reason) = old.incompatibility(&p.distribution) {
                    return Err(StoreError::IncompatibleDistribution {
                        path: self.db_path.clone(),
                        study: study_name.to_string(),
                        name: p.name.clone(),
                        reason,
                        stored,
                    });
                }
            }
        }
        Ok(())
    }

    /// The study's trials that count against a budget: all, or (`interrupted_uncounted`) all
    /// but the interrupted ones, as [`StoredTrial::is_interrupted`] tells them.
    pub(super) fn counted_trials(
        &self,
        tx: &mut Tx<'_>,
        study: StudyId,
        interrupted_uncounted: bool,
    ) -> Result<i64, StoreError> {
        if !interrupted_uncounted {
            return self
                .query_int(
                    tx,
                    "SELECT count(*) FROM trials WHERE study_id = ?1",
                    &[study.0.into()],
                )
                .map(Option::unwrap_or_default);
        }
        self.query_int(
            tx,
            "SELECT count(*) FROM trials t WHERE t.study_id = ?1 AND NOT (t.state = 'FAIL' \
             AND EXISTS (SELECT 1 FROM trial_user_attributes a WHERE a.trial_id = t.trial_id \
             AND ((a.key = ?2 AND a.value_json = ?3) OR (a.key = ?4 AND a.value_json = ?5))))",
            &[
                study.0.into(),
                attrs::INTERRUPTED.into(),
                encode_json(&Value::Bool(true)).into(),
                attrs::FAILURE_REASON.into(),
                encode_json(&Value::from(LEGACY_INTERRUPTED)).into(),
            ],
        )
        .map(Option::unwrap_or_default)
    }

    /// The number of a trial of the study, not FAIL, whose params are exactly `params`.
    fn trial_with_params(
        &self,
        tx: &mut Tx<'_>,
        study: StudyId,
        params: &[StoredParam],
    ) -> Result<Option<i64>, StoreError> {
        let e = |err| self.db_err(err);
        let rows = tx
            .query(
                "SELECT t.number, p.param_name, p.param_value FROM trials t \
                 JOIN trial_params p ON p.trial_id = t.trial_id \
                 WHERE t.study_id = ?1 AND t.state <> 'FAIL' ORDER BY t.number",
                &[study.0.into()],
            )
            .map_err(e)?;
        let mut by_trial: BTreeMap<i64, BTreeMap<String, Option<f64>>> = BTreeMap::new();
        for row in rows {
            by_trial
                .entry(row.opt_int(0).map_err(e)?.unwrap_or(-1))
                .or_default()
                .insert(
                    row.opt_text(1).map_err(e)?.unwrap_or_default(),
                    row.opt_float(2).map_err(e)?,
                );
        }
        let ours: BTreeMap<String, Option<f64>> = params
            .iter()
            .map(|p| (p.name.clone(), Some(p.internal)))
            .collect();
        Ok(by_trial
            .into_iter()
            .find(|(_, theirs)| *theirs == ours)
            .map(|(number, _)| number))
    }

    /// Checks inside a write transaction that the trial exists and is RUNNING (locking its
    /// row); returns its number and study id.
    fn require_running(&self, tx: &mut Tx<'_>, trial_id: i64) -> Result<(i64, i64), StoreError> {
        let e = |err| self.db_err(err);
        let row = tx
            .query_opt(
                "SELECT number, study_id, state FROM trials WHERE trial_id = ?1 FOR UPDATE",
                &[trial_id.into()],
            )
            .map_err(e)?
            .ok_or(StoreError::TrialNotFound {
                path: self.db_path.clone(),
                trial_id,
            })?;
        let number = row.opt_int(0).map_err(e)?.unwrap_or(-1);
        let study_id = row.opt_int(1).map_err(e)?.unwrap_or(-1);
        let state = row.text(2).map_err(e)?;
        let state = TrialState::from_optuna_str(&state)
            .ok_or_else(|| self.corrupt(format!("trial state {state:?}")))?;
        if state != TrialState::Running {
            return Err(StoreError::TrialNotRunning {
                path: self.db_path.clone(),
                number,
                state,
            });
        }
        Ok((number, study_id))
    }

    fn upsert_heartbeat(
        &self,
        tx: &mut Tx<'_>,
        trial_id: i64,
        now: &str,
    ) -> Result<(), StoreError> {
        tx.execute(
            "INSERT INTO trial_heartbeats (trial_id, heartbeat) VALUES (?1, ?2) \
             ON CONFLICT (trial_id) DO UPDATE SET heartbeat = excluded.heartbeat",
            &[trial_id.into(), now.into()],
        )
        .map_err(|e| self.db_err(e))?;
        Ok(())
    }

    /// Records the intermediate value (e.g. per-epoch validation metric) of a RUNNING trial at
    /// `step` (replacing an earlier one at that step) and refreshes its heartbeat.
    pub fn report_intermediate(
        &self,
        trial: &TrialHandle,
        step: i64,
        value: f64,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            self.require_running(tx, trial.trial_id)?;
            let (value, value_type) = encode_value(value);
            tx.execute(
                "INSERT INTO trial_intermediate_values \
                 (trial_id, step, intermediate_value, intermediate_value_type) \
                 VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (trial_id, step) DO UPDATE SET \
                 intermediate_value = excluded.intermediate_value, \
                 intermediate_value_type = excluded.intermediate_value_type",
                &[
                    trial.trial_id.into(),
                    step.into(),
                    value.into(),
                    value_type.into(),
                ],
            )
            .map_err(|e| self.db_err(e))?;
            self.upsert_heartbeat(tx, trial.trial_id, &now_utc())
        })
    }

    /// Refreshes the heartbeat of a RUNNING trial (call it during long epochs so that other
    /// processes do not take the trial for an abandoned one).
    pub fn record_heartbeat(&self, trial: &TrialHandle) -> Result<(), StoreError> {
        self.write(|tx| {
            self.require_running(tx, trial.trial_id)?;
            self.upsert_heartbeat(tx, trial.trial_id, &now_utc())
        })
    }

    /// Sets (or replaces) a user attribute of a RUNNING trial.
    pub fn set_trial_user_attr(
        &self,
        trial: &TrialHandle,
        key: &str,
        value: &Value,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            self.require_running(tx, trial.trial_id)?;
            self.set_attr_in(tx, trial.trial_id, key, value)
        })
    }

    /// Sets (or replaces) a user attribute of a trial in any state: for results computed after
    /// it finished (the test-set evaluation of `cthpo evaluate`). Optuna reads it as any other
    /// user attribute.
    pub fn set_finished_trial_user_attr(
        &self,
        trial_id: i64,
        key: &str,
        value: &Value,
    ) -> Result<(), StoreError> {
        self.write(|tx| self.set_attr_in(tx, trial_id, key, value))
    }

    /// Sets (or replaces) a system attribute of a RUNNING trial (Optuna's own keys, such as
    /// [`attrs::CONSTRAINTS`]).
    pub fn set_trial_system_attr(
        &self,
        trial: &TrialHandle,
        key: &str,
        value: &Value,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            self.require_running(tx, trial.trial_id)?;
            tx.execute(
                "INSERT INTO trial_system_attributes (trial_id, key, value_json) \
                 VALUES (?1, ?2, ?3) \
                 ON CONFLICT (trial_id, key) DO UPDATE SET value_json = excluded.value_json",
                &[trial.trial_id.into(), key.into(), encode_json(value).into()],
            )
            .map_err(|e| self.db_err(e))?;
            Ok(())
        })
    }

    /// Locks the study's row for the rest of the transaction, so that two workers deciding
    /// which trial to start or take over see each other's decisions (PostgreSQL; SQLite's write
    /// transaction already holds the database).
    pub(super) fn lock_study_in(&self, tx: &mut Tx<'_>, study: StudyId) -> Result<(), StoreError> {
        self.query_int(
            tx,
            "SELECT study_id FROM studies WHERE study_id = ?1 FOR UPDATE",
            &[study.0.into()],
        )?;
        Ok(())
    }

    pub(super) fn set_attr_in(
        &self,
        tx: &mut Tx<'_>,
        trial_id: i64,
        key: &str,
        value: &Value,
    ) -> Result<(), StoreError> {
        tx.execute(
            "INSERT INTO trial_user_attributes (trial_id, key, value_json) VALUES (?1, ?2, ?3) \
             ON CONFLICT (trial_id, key) DO UPDATE SET value_json = excluded.value_json",
            &[trial_id.into(), key.into(), encode_json(value).into()],
        )
        .map_err(|e| self.db_err(e))?;
        Ok(())
    }

    /// Ends a RUNNING trial: COMPLETE with one value per study direction (NaN refused), FAIL
    /// with its reason (user attribute `failure_reason`), or PRUNED; sets `datetime_complete`.
    pub fn finish_trial(
        &self,
        trial: &TrialHandle,
        outcome: &TrialOutcome,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            let e = |err| self.db_err(err);
            let (number, study_id) = self.require_running(tx, trial.trial_id)?;
            let state = match outcome {
                TrialOutcome::Complete { values } | TrialOutcome::Pruned { values }
                    if !values.is_empty() || matches!(outcome, TrialOutcome::Complete { .. }) =>
                {
                    let n_directions = self.directions_in(tx, StudyId(study_id))?.len();
                    let bad = |reason: String| StoreError::InvalidValues {
                        path: self.db_path.clone(),
                        number,
                        reason,
                    };
                    if values.len() != n_directions {
                        return Err(bad(format!(
                            "{} values for a study with {n_directions} objectives",
                            values.len()
                        )));
                    }
                    if values.iter().any(|v| v.is_nan()) {
                        return Err(bad(
                            "a NaN objective value (record the trial as FAIL)".into()
                        ));
                    }
                    for (objective, value) in values.iter().enumerate() {
                        let (value, value_type) = encode_value(*value);
                        tx.execute(
                            "INSERT INTO trial_values (trial_id, objective, value, value_type) \
                             VALUES (?1, ?2, ?3, ?4)",
                            &[
                                trial.trial_id.into(),
                                (objective as i64).into(),
                                value.into(),
                                value_type.into(),
                            ],
                        )
                        .map_err(e)?;
                    }
                    if matches!(outcome, TrialOutcome::Pruned { .. }) {
                        TrialState::Pruned
                    } else {
                        TrialState::Complete
                    }
                }
                TrialOutcome::Fail { reason } | TrialOutcome::Interrupted { reason } => {
                    self.set_attr_in(
                        tx,
                        trial.trial_id,
                        attrs::FAILURE_REASON,
                        &Value::from(reason.as_str()),
                    )?;
                    if matches!(outcome, TrialOutcome::Interrupted { .. }) {
                        self.set_attr_in(
                            tx,
                            trial.trial_id,
                            attrs::INTERRUPTED,
                            &Value::Bool(true),
                        )?;
                    }
                    TrialState::Fail
                }
                TrialOutcome::Pruned { .. } => TrialState::Pruned,
                TrialOutcome::Complete { .. } => unreachable!("complete trials are stored above"),
            };
            tx.execute(
                "UPDATE trials SET state = ?1, datetime_complete = ?2 WHERE trial_id = ?3",
                &[
                    state.as_optuna_str().into(),
                    now_utc().into(),
                    trial.trial_id.into(),
                ],
            )
            .map_err(e)?;
            Ok(())
        })
    }

    /// Marks the study's RUNNING trials whose last heartbeat (or start) is at least
    /// `older_than` ago as interrupted ([`TrialOutcome::Interrupted`] with `reason`), for
    /// resuming after a
    /// killed process; returns them as they are now. The trials are locked while they are
    /// checked, so of several workers calling this at once exactly one fails (and gets back)
    /// each stale trial. With several processes on one study, pass a grace period longer than
    /// their heartbeat interval (and keep the machines' clocks in sync).
    pub fn mark_stale_running_as_failed(
        &self,
        study: StudyId,
        older_than: Duration,
        reason: &str,
    ) -> Result<Vec<StoredTrial>, StoreError> {
        self.write(|tx| {
            let ids = self.fail_stale_in(tx, study, older_than, &[], reason, usize::MAX)?;
            let trials = self.trials_in(tx, study)?;
            Ok(trials
                .into_iter()
                .filter(|t| ids.contains(&t.trial_id))
                .collect())
        })
    }

    /// Takes over one trial of a dead worker: fails the first RUNNING trial that is in `dead`
    /// (trial ids known to be abandoned) or whose heartbeat is at least `older_than` old as
    /// `reason`, and in the same transaction starts its re-run, a new RUNNING trial with the
    /// same params. Of several workers calling this at once, exactly one takes over each dead
    /// trial, and the study's count of trials never drops in between (so no other worker fills
    /// the place of the re-run). The re-run keeps the failed trial's rung attributes
    /// ([`attrs::BRACKET`], [`attrs::RUNG`], [`attrs::RUNG_EPOCHS`], [`attrs::CONTINUES`]).
    /// Returns the failed trial and the re-run's handle.
    pub fn take_over_trial(
        &self,
        study: StudyId,
        older_than: Duration,
        dead: &[i64],
        reason: &str,
    ) -> Result<Option<(StoredTrial, TrialHandle)>, StoreError> {
        self.write(|tx| {
            self.lock_study_in(tx, study)?;
            let ids = self.fail_stale_in(tx, study, older_than, dead, reason, 1)?;
            let Some(&id) = ids.first() else {
                return Ok(None);
            };
            let Some(failed) = self
                .trials_in(tx, study)?
                .into_iter()
                .find(|t| t.trial_id == id)
            else {
                return Ok(None);
            };
            let handle = self.insert_trial(tx, study, &failed.params)?;
            // A multi-fidelity re-run trains the same rung from the same checkpoint.
            for key in [
                attrs::BRACKET,
                attrs::RUNG,
                attrs::RUNG_EPOCHS,
                attrs::CONTINUES,
            ] {
                if let Some(value) = failed.user_attrs.get(key) {
                    self.set_attr_in(tx, handle.trial_id, key, value)?;
                }
            }
            Ok(Some((failed, handle)))
        })
    }

    /// Fails (as `reason`) up to `limit` of the study's RUNNING trials that are in `dead` or
    /// whose last heartbeat (or start) is at least `older_than` ago, locking them first;
    /// returns their ids.
    fn fail_stale_in(
        &self,
        tx: &mut Tx<'_>,
        study: StudyId,
        older_than: Duration,
        dead: &[i64],
        reason: &str,
        limit: usize,
    ) -> Result<Vec<i64>, StoreError> {
        let e = |err| self.db_err(err);
        let now = now_utc();
        let rows = tx
            .query(
                "SELECT t.trial_id, t.datetime_start FROM trials t \
                 WHERE t.study_id = ?1 AND t.state = 'RUNNING' ORDER BY t.trial_id FOR UPDATE",
                &[study.0.into()],
            )
            .map_err(e)?;
        let beats = tx
            .query(
                "SELECT h.trial_id, h.heartbeat FROM trial_heartbeats h \
                 JOIN trials t ON t.trial_id = h.trial_id \
                 WHERE t.study_id = ?1 AND t.state = 'RUNNING'",
                &[study.0.into()],
            )
            .map_err(e)?;
        let mut last: BTreeMap<i64, Option<String>> = BTreeMap::new();
        for row in &rows {
            last.insert(row.int(0).map_err(e)?, row.opt_text(1).map_err(e)?);
        }
        for row in &beats {
            let id = row.int(0).map_err(e)?;
            if let Some(slot) = last.get_mut(&id) {
                *slot = row.opt_text(1).map_err(e)?;
            }
        }
        let limit_time = parse_utc(&now).unwrap_or_default() - older_than.as_micros() as i64;
        let ids: Vec<i64> = last
            .into_iter()
            .filter(|(id, time)| {
                dead.contains(id)
                    || time
                        .as_deref()
                        .and_then(parse_utc)
                        .is_none_or(|t| t <= limit_time)
            })
            .map(|(id, _)| id)
            .take(limit)
            .collect();
        for id in &ids {
            self.set_attr_in(tx, *id, attrs::FAILURE_REASON, &Value::from(reason))?;
            self.set_attr_in(tx, *id, attrs::INTERRUPTED, &Value::Bool(true))?;
            tx.execute(
                "UPDATE trials SET state = 'FAIL', datetime_complete = ?1 WHERE trial_id = ?2",
                &[now.as_str().into(), (*id).into()],
            )
            .map_err(e)?;
        }
        Ok(ids)
    }
}
