//! Trial reads: every trial of a study with its params, values, attributes and intermediate
//! values, each table read in one query and attached to its trial.

use super::types::{StoredParam, StoredTrial, StudyId, TrialState};
use super::{ParamDistribution, Store, StoreError, decode_json, decode_value};
use rusqlite::Connection;
use std::collections::{BTreeMap, HashMap};

/// A study's trials in number order, found by trial id while their details are attached.
struct Trials {
    list: Vec<StoredTrial>,
    by_id: HashMap<i64, usize>,
}

impl Trials {
    fn new(list: Vec<StoredTrial>) -> Trials {
        let by_id = list
            .iter()
            .enumerate()
            .map(|(i, t)| (t.trial_id, i))
            .collect();
        Trials { list, by_id }
    }

    /// The trial with this id (rows of other studies' trials find none).
    fn get_mut(&mut self, trial_id: i64) -> Option<&mut StoredTrial> {
        let i = *self.by_id.get(&trial_id)?;
        self.list.get_mut(i)
    }
}

impl Store {
    /// All trials of a study, by number, with params, values, attributes and intermediate values.
    pub fn trials(&self, study: StudyId) -> Result<Vec<StoredTrial>, StoreError> {
        let tx = self.read_tx()?;
        let trials = self.trials_in(&tx, study)?;
        tx.commit().map_err(|e| self.sql_err(e))?;
        Ok(trials)
    }

    /// Rows `(trial_id, key, value)` of a float table (`trial_values` or
    /// `trial_intermediate_values`) for a study's trials, decoded from Optuna's value types.
    fn float_rows(
        &self,
        conn: &Connection,
        table: &str,
        key: &str,
        value: &str,
        study: StudyId,
    ) -> Result<Vec<(i64, i64, f64)>, StoreError> {
        let sql = format!(
            "SELECT v.trial_id, v.{key}, v.{value}, v.{value}_type FROM {table} v \
             JOIN trials t ON t.trial_id = v.trial_id WHERE t.study_id = ?1"
        );
        let rows: Vec<(i64, i64, Option<f64>, String)> =
            self.query_rows(conn, &sql, [study.0], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?;
        rows.into_iter()
            .map(|(trial_id, k, v, value_type)| {
                decode_value(v, &value_type)
                    .map(|v| (trial_id, k, v))
                    .ok_or_else(|| {
                        self.corrupt(format!("{table}: trial {trial_id} type {value_type:?}"))
                    })
            })
            .collect()
    }

    /// Every trial of a study inside one transaction: the trial rows first, then each detail
    /// table attached to its trial.
    pub(super) fn trials_in(
        &self,
        conn: &Connection,
        study: StudyId,
    ) -> Result<Vec<StoredTrial>, StoreError> {
        let mut trials = Trials::new(self.trial_rows(conn, study)?);
        self.attach_params(conn, study, &mut trials)?;
        self.attach_values(conn, study, &mut trials)?;
        self.attach_intermediate_values(conn, study, &mut trials)?;
        self.attach_attrs(conn, study, &mut trials)?;
        Ok(trials.list)
    }

    /// The study's trials from the `trials` table (with duration and heartbeat), details empty.
    fn trial_rows(
        &self,
        conn: &Connection,
        study: StudyId,
    ) -> Result<Vec<StoredTrial>, StoreError> {
        type TrialRow = (
            i64,
            Option<i64>,
            String,
            Option<String>,
            Option<String>,
            Option<f64>,
            Option<String>,
        );
        let rows: Vec<TrialRow> = self.query_rows(
            conn,
            "SELECT t.trial_id, t.number, t.state, t.datetime_start, t.datetime_complete, \
             (julianday(t.datetime_complete) - julianday(t.datetime_start)) * 86400.0, \
             h.heartbeat \
             FROM trials t LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id \
             WHERE t.study_id = ?1 ORDER BY t.number, t.trial_id",
            [study.0],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            },
        )?;
        rows.into_iter()
            .map(
                |(trial_id, number, state, start, complete, duration, heartbeat)| {
                    let state = TrialState::from_optuna_str(&state)
                        .ok_or_else(|| self.corrupt(format!("trial {trial_id} state {state:?}")))?;
                    Ok(StoredTrial {
                        trial_id,
                        number: number.unwrap_or(-1),
                        state,
                        params: Vec::new(),
                        values: None,
                        user_attrs: BTreeMap::new(),
                        system_attrs: BTreeMap::new(),
                        intermediate_values: BTreeMap::new(),
                        datetime_start: start,
                        datetime_complete: complete,
                        duration_seconds: duration,
                        heartbeat,
                    })
                },
            )
            .collect()
    }

    /// Adds `trial_params` rows, in storage order, to their trials.
    fn attach_params(
        &self,
        conn: &Connection,
        study: StudyId,
        trials: &mut Trials,
    ) -> Result<(), StoreError> {
        type ParamRow = (i64, Option<String>, Option<f64>, Option<String>);
        let params: Vec<ParamRow> = self.query_rows(
            conn,
            "SELECT p.trial_id, p.param_name, p.param_value, p.distribution_json \
             FROM trial_params p JOIN trials t ON t.trial_id = p.trial_id \
             WHERE t.study_id = ?1 ORDER BY p.param_id",
            [study.0],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
        for (trial_id, name, value, dist) in params {
            let name = name.unwrap_or_default();
            let dist_text = dist.unwrap_or_default();
            let distribution =
                ParamDistribution::from_optuna_json(&dist_text).ok_or_else(|| {
                    self.corrupt(format!(
                        "trial {trial_id} param {name:?}: distribution_json {dist_text:?}"
                    ))
                })?;
            if let Some(trial) = trials.get_mut(trial_id) {
                trial.params.push(StoredParam {
                    name,
                    distribution,
                    internal: value.unwrap_or(f64::NAN),
                });
            }
        }
        Ok(())
    }

    /// Adds `trial_values` to their trials, one slot per objective.
    fn attach_values(
        &self,
        conn: &Connection,
        study: StudyId,
        trials: &mut Trials,
    ) -> Result<(), StoreError> {
        for (trial_id, objective, value) in
            self.float_rows(conn, "trial_values", "objective", "value", study)?
        {
            if let (Some(trial), Ok(objective)) =
                (trials.get_mut(trial_id), usize::try_from(objective))
            {
                let values = trial.values.get_or_insert_with(Vec::new);
                if values.len() <= objective {
                    values.resize(objective + 1, f64::NAN);
                }
                values[objective] = value;
            }
        }
        Ok(())
    }

    /// Adds `trial_intermediate_values` to their trials, by step.
    fn attach_intermediate_values(
        &self,
        conn: &Connection,
        study: StudyId,
        trials: &mut Trials,
    ) -> Result<(), StoreError> {
        for (trial_id, step, value) in self.float_rows(
            conn,
            "trial_intermediate_values",
            "step",
            "intermediate_value",
            study,
        )? {
            if let Some(trial) = trials.get_mut(trial_id) {
                trial.intermediate_values.insert(step, value);
            }
        }
        Ok(())
    }

    /// Adds user and system attributes, JSON-decoded, to their trials.
    fn attach_attrs(
        &self,
        conn: &Connection,
        study: StudyId,
        trials: &mut Trials,
    ) -> Result<(), StoreError> {
        for (table, system) in [
            ("trial_user_attributes", false),
            ("trial_system_attributes", true),
        ] {
            let sql = format!(
                "SELECT a.trial_id, a.key, a.value_json FROM {table} a \
                 JOIN trials t ON t.trial_id = a.trial_id WHERE t.study_id = ?1"
            );
            let rows: Vec<(i64, Option<String>, Option<String>)> =
                self.query_rows(conn, &sql, [study.0], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
            for (trial_id, key, value) in rows {
                if let Some(trial) = trials.get_mut(trial_id) {
                    let map = if system {
                        &mut trial.system_attrs
                    } else {
                        &mut trial.user_attrs
                    };
                    map.insert(key.unwrap_or_default(), decode_json(value));
                }
            }
        }
        Ok(())
    }
}
