//! Trial reads: every trial of a study with its params, values, attributes and intermediate
//! values, each table read in one query and attached to its trial.

use super::engine::{Row, Tx};
use super::time::parse_utc;
use super::types::{StoredParam, StoredTrial, StudyId, TrialState};
use super::{ParamDistribution, Store, StoreError, decode_json, decode_value};
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
        self.read(|tx| self.trials_in(tx, study))
    }

    /// Runs a query of a study's rows and decodes each row with `decode`.
    fn study_rows<T>(
        &self,
        tx: &mut Tx<'_>,
        sql: &str,
        study: StudyId,
        decode: impl Fn(&Row) -> Result<T, super::engine::DbError>,
    ) -> Result<Vec<T>, StoreError> {
        let rows = tx
            .query(sql, &[study.0.into()])
            .map_err(|e| self.db_err(e))?;
        rows.iter()
            .map(|r| decode(r).map_err(|e| self.db_err(e)))
            .collect()
    }

    /// Rows `(trial_id, key, value)` of a float table (`trial_values` or
    /// `trial_intermediate_values`) for a study's trials, decoded from Optuna's value types.
    fn float_rows(
        &self,
        tx: &mut Tx<'_>,
        table: &str,
        key: &str,
        value: &str,
        study: StudyId,
    ) -> Result<Vec<(i64, i64, f64)>, StoreError> {
        let sql = format!(
            "SELECT v.trial_id, v.{key}, v.{value}, v.{value}_type FROM {table} v \
             JOIN trials t ON t.trial_id = v.trial_id WHERE t.study_id = ?1"
        );
        let rows = self.study_rows(tx, &sql, study, |r| {
            Ok((r.int(0)?, r.int(1)?, r.opt_float(2)?, r.text(3)?))
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
        tx: &mut Tx<'_>,
        study: StudyId,
    ) -> Result<Vec<StoredTrial>, StoreError> {
        let mut trials = Trials::new(self.trial_rows(tx, study)?);
        self.attach_params(tx, study, &mut trials)?;
        self.attach_values(tx, study, &mut trials)?;
        self.attach_intermediate_values(tx, study, &mut trials)?;
        self.attach_attrs(tx, study, &mut trials)?;
        Ok(trials.list)
    }

    /// The study's trials from the `trials` table (with duration and heartbeat), details empty.
    fn trial_rows(&self, tx: &mut Tx<'_>, study: StudyId) -> Result<Vec<StoredTrial>, StoreError> {
        let rows = self.study_rows(
            tx,
            "SELECT t.trial_id, t.number, t.state, t.datetime_start, t.datetime_complete, \
             h.heartbeat \
             FROM trials t LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id \
             WHERE t.study_id = ?1 ORDER BY t.number, t.trial_id",
            study,
            |r| {
                Ok((
                    r.int(0)?,
                    r.opt_int(1)?,
                    r.text(2)?,
                    r.opt_text(3)?,
                    r.opt_text(4)?,
                    r.opt_text(5)?,
                ))
            },
        )?;
        rows.into_iter()
            .map(|(trial_id, number, state, start, complete, heartbeat)| {
                let duration = match (&start, &complete) {
                    (Some(start), Some(complete)) => parse_utc(complete)
                        .zip(parse_utc(start))
                        .map(|(c, s)| (c - s) as f64 / 1e6),
                    _ => None,
                };
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
            })
            .collect()
    }

    /// Adds `trial_params` rows, in storage order, to their trials.
    fn attach_params(
        &self,
        tx: &mut Tx<'_>,
        study: StudyId,
        trials: &mut Trials,
    ) -> Result<(), StoreError> {
        let params = self.study_rows(
            tx,
            "SELECT p.trial_id, p.param_name, p.param_value, p.distribution_json \
             FROM trial_params p JOIN trials t ON t.trial_id = p.trial_id \
             WHERE t.study_id = ?1 ORDER BY p.param_id",
            study,
            |r| Ok((r.int(0)?, r.opt_text(1)?, r.opt_float(2)?, r.opt_text(3)?)),
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
        tx: &mut Tx<'_>,
        study: StudyId,
        trials: &mut Trials,
    ) -> Result<(), StoreError> {
        for (trial_id, objective, value) in
            self.float_rows(tx, "trial_values", "objective", "value", study)?
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
        tx: &mut Tx<'_>,
        study: StudyId,
        trials: &mut Trials,
    ) -> Result<(), StoreError> {
        for (trial_id, step, value) in self.float_rows(
            tx,
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
        tx: &mut Tx<'_>,
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
            let rows = self.study_rows(tx, &sql, study, |r| {
                Ok((r.int(0)?, r.opt_text(1)?, r.opt_text(2)?))
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
