//! Trial writes: starting a RUNNING trial, intermediate values, heartbeats, attributes,
//! finishing it, and failing the ones a dead process left RUNNING.

use super::types::{StoredParam, StoredTrial, StudyId, TrialHandle, TrialOutcome, TrialState};
use super::{ParamDistribution, Store, StoreError, attrs, encode_json, encode_value, now_utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;
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
        for (i, p) in params.iter().enumerate() {
            p.distribution.validate(&p.name)?;
            if params[..i].iter().any(|q| q.name == p.name) {
                return Err(StoreError::InvalidParam {
                    name: p.name.clone(),
                    reason: "given twice".to_string(),
                });
            }
        }
        let tx = self.write_tx()?;
        let e = |err| self.sql_err(err);
        let study_name: String = tx
            .query_row(
                "SELECT study_name FROM studies WHERE study_id = ?1",
                [study.0],
                |r| r.get(0),
            )
            .optional()
            .map_err(e)?
            .ok_or_else(|| StoreError::StudyNotFound {
                path: self.db_path.clone(),
                name: format!("<id {}>", study.0),
                known: String::new(),
            })?;
        for p in params {
            let stored: Option<Option<String>> = tx
                .query_row(
                    "SELECT p.distribution_json FROM trial_params p \
                     JOIN trials t ON t.trial_id = p.trial_id \
                     WHERE t.study_id = ?1 AND p.param_name = ?2 LIMIT 1",
                    params![study.0, p.name],
                    |r| r.get(0),
                )
                .optional()
                .map_err(e)?;
            if let Some(stored) = stored.flatten() {
                let old = ParamDistribution::from_optuna_json(&stored)
                    .ok_or_else(|| self.corrupt(format!("distribution_json {stored:?}")))?;
                if let Some(reason) = old.incompatibility(&p.distribution) {
                    return Err(StoreError::IncompatibleDistribution {
                        path: self.db_path.clone(),
                        study: study_name,
                        name: p.name.clone(),
                        reason,
                        stored,
                    });
                }
            }
        }
        let now = now_utc();
        tx.execute(
            "INSERT INTO trials (number, study_id, state, datetime_start) \
             VALUES (NULL, ?1, 'RUNNING', ?2)",
            params![study.0, now],
        )
        .map_err(e)?;
        let trial_id = tx.last_insert_rowid();
        let number: i64 = tx
            .query_row(
                "SELECT count(*) FROM trials WHERE study_id = ?1 AND trial_id < ?2",
                params![study.0, trial_id],
                |r| r.get(0),
            )
            .map_err(e)?;
        tx.execute(
            "UPDATE trials SET number = ?1 WHERE trial_id = ?2",
            params![number, trial_id],
        )
        .map_err(e)?;
        for p in params {
            tx.execute(
                "INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    trial_id,
                    p.name,
                    p.internal,
                    p.distribution.to_optuna_json()
                ],
            )
            .map_err(e)?;
        }
        tx.execute(
            "INSERT INTO trial_heartbeats (trial_id, heartbeat) VALUES (?1, ?2)",
            params![trial_id, now],
        )
        .map_err(e)?;
        tx.commit().map_err(e)?;
        Ok(TrialHandle {
            study_id: study,
            trial_id,
            number,
        })
    }

    /// Checks inside a write transaction that the trial exists and is RUNNING; returns its
    /// number and study id.
    fn require_running(&self, tx: &Connection, trial_id: i64) -> Result<(i64, i64), StoreError> {
        let row: Option<(Option<i64>, Option<i64>, String)> = tx
            .query_row(
                "SELECT number, study_id, state FROM trials WHERE trial_id = ?1",
                [trial_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(|e| self.sql_err(e))?;
        let (number, study_id, state) = row.ok_or(StoreError::TrialNotFound {
            path: self.db_path.clone(),
            trial_id,
        })?;
        let number = number.unwrap_or(-1);
        let state = TrialState::from_optuna_str(&state)
            .ok_or_else(|| self.corrupt(format!("trial state {state:?}")))?;
        if state != TrialState::Running {
            return Err(StoreError::TrialNotRunning {
                path: self.db_path.clone(),
                number,
                state,
            });
        }
        Ok((number, study_id.unwrap_or(-1)))
    }

    fn upsert_heartbeat(
        &self,
        tx: &Connection,
        trial_id: i64,
        now: &str,
    ) -> Result<(), StoreError> {
        tx.execute(
            "INSERT INTO trial_heartbeats (trial_id, heartbeat) VALUES (?1, ?2) \
             ON CONFLICT (trial_id) DO UPDATE SET heartbeat = excluded.heartbeat",
            params![trial_id, now],
        )
        .map_err(|e| self.sql_err(e))?;
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
        let tx = self.write_tx()?;
        self.require_running(&tx, trial.trial_id)?;
        let (value, value_type) = encode_value(value);
        tx.execute(
            "INSERT INTO trial_intermediate_values \
             (trial_id, step, intermediate_value, intermediate_value_type) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (trial_id, step) DO UPDATE SET \
             intermediate_value = excluded.intermediate_value, \
             intermediate_value_type = excluded.intermediate_value_type",
            params![trial.trial_id, step, value, value_type],
        )
        .map_err(|e| self.sql_err(e))?;
        self.upsert_heartbeat(&tx, trial.trial_id, &now_utc())?;
        tx.commit().map_err(|e| self.sql_err(e))
    }

    /// Refreshes the heartbeat of a RUNNING trial (call it during long epochs so that other
    /// processes do not take the trial for an abandoned one).
    pub fn record_heartbeat(&self, trial: &TrialHandle) -> Result<(), StoreError> {
        let tx = self.write_tx()?;
        self.require_running(&tx, trial.trial_id)?;
        self.upsert_heartbeat(&tx, trial.trial_id, &now_utc())?;
        tx.commit().map_err(|e| self.sql_err(e))
    }

    /// Sets (or replaces) a user attribute of a RUNNING trial.
    pub fn set_trial_user_attr(
        &self,
        trial: &TrialHandle,
        key: &str,
        value: &Value,
    ) -> Result<(), StoreError> {
        let tx = self.write_tx()?;
        self.require_running(&tx, trial.trial_id)?;
        self.set_attr_in(&tx, trial.trial_id, key, value)?;
        tx.commit().map_err(|e| self.sql_err(e))
    }

    pub(super) fn set_attr_in(
        &self,
        tx: &Connection,
        trial_id: i64,
        key: &str,
        value: &Value,
    ) -> Result<(), StoreError> {
        tx.execute(
            "INSERT INTO trial_user_attributes (trial_id, key, value_json) VALUES (?1, ?2, ?3) \
             ON CONFLICT (trial_id, key) DO UPDATE SET value_json = excluded.value_json",
            params![trial_id, key, encode_json(value)],
        )
        .map_err(|e| self.sql_err(e))?;
        Ok(())
    }

    /// Ends a RUNNING trial: COMPLETE with one value per study direction (NaN refused), FAIL
    /// with its reason (user attribute `failure_reason`), or PRUNED; sets `datetime_complete`.
    pub fn finish_trial(
        &self,
        trial: &TrialHandle,
        outcome: &TrialOutcome,
    ) -> Result<(), StoreError> {
        let tx = self.write_tx()?;
        let e = |err| self.sql_err(err);
        let (number, study_id) = self.require_running(&tx, trial.trial_id)?;
        let state = match outcome {
            TrialOutcome::Complete { values } => {
                let n_directions = self.directions_in(&tx, StudyId(study_id))?.len();
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
                        params![trial.trial_id, objective as i64, value, value_type],
                    )
                    .map_err(e)?;
                }
                TrialState::Complete
            }
            TrialOutcome::Fail { reason } | TrialOutcome::Interrupted { reason } => {
                self.set_attr_in(
                    &tx,
                    trial.trial_id,
                    attrs::FAILURE_REASON,
                    &Value::from(reason.as_str()),
                )?;
                if matches!(outcome, TrialOutcome::Interrupted { .. }) {
                    self.set_attr_in(&tx, trial.trial_id, attrs::INTERRUPTED, &Value::Bool(true))?;
                }
                TrialState::Fail
            }
            TrialOutcome::Pruned => TrialState::Pruned,
        };
        tx.execute(
            "UPDATE trials SET state = ?1, datetime_complete = ?2 WHERE trial_id = ?3",
            params![state.as_optuna_str(), now_utc(), trial.trial_id],
        )
        .map_err(e)?;
        tx.commit().map_err(e)
    }

    /// Marks the study's RUNNING trials whose last heartbeat (or start) is at least
    /// `older_than` ago as interrupted ([`TrialOutcome::Interrupted`] with `reason`), for resuming after a
    /// killed process; returns them as they are now. With several processes on one study,
    /// pass a grace period longer than their heartbeat interval.
    pub fn mark_stale_running_as_failed(
        &self,
        study: StudyId,
        older_than: Duration,
        reason: &str,
    ) -> Result<Vec<StoredTrial>, StoreError> {
        let tx = self.write_tx()?;
        let e = |err| self.sql_err(err);
        let now = now_utc();
        let ids: Vec<i64> = self.query_rows(
            &tx,
            "SELECT t.trial_id FROM trials t \
             LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id \
             WHERE t.study_id = ?1 AND t.state = 'RUNNING' \
             AND (julianday(COALESCE(h.heartbeat, t.datetime_start)) IS NULL \
                  OR julianday(COALESCE(h.heartbeat, t.datetime_start)) \
                     <= julianday(?2) - ?3 / 86400.0)",
            params![study.0, now, older_than.as_secs_f64()],
            |r| r.get(0),
        )?;
        for id in &ids {
            self.set_attr_in(&tx, *id, attrs::FAILURE_REASON, &Value::from(reason))?;
            self.set_attr_in(&tx, *id, attrs::INTERRUPTED, &Value::Bool(true))?;
            tx.execute(
                "UPDATE trials SET state = 'FAIL', datetime_complete = ?1 WHERE trial_id = ?2",
                params![now, id],
            )
            .map_err(e)?;
        }
        let trials = self.trials_in(&tx, study)?;
        tx.commit().map_err(e)?;
        Ok(trials
            .into_iter()
            .filter(|t| ids.contains(&t.trial_id))
            .collect())
    }
}
