//! Value types of the store: directions, trial states, stored params, studies and trials.

use super::StoreError;
use super::distribution::{ParamDistribution, ParamValue, json_number};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

/// Row id of a study in the `studies` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct StudyId(pub i64);

/// Optimisation direction of one objective (Optuna's `StudyDirection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Lower values are better.
    Minimize,
    /// Higher values are better.
    Maximize,
}

impl Direction {
    /// The text Optuna stores in `study_directions.direction`.
    pub fn as_optuna_str(self) -> &'static str {
        match self {
            Direction::Minimize => "MINIMIZE",
            Direction::Maximize => "MAXIMIZE",
        }
    }

    /// Parses the text of `study_directions.direction`.
    pub fn from_optuna_str(text: &str) -> Option<Direction> {
        match text {
            "MINIMIZE" => Some(Direction::Minimize),
            "MAXIMIZE" => Some(Direction::Maximize),
            _ => None,
        }
    }

    /// True when `a` is strictly better than `b` in this direction.
    pub fn better(self, a: f64, b: f64) -> bool {
        match self {
            Direction::Minimize => a < b,
            Direction::Maximize => a > b,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Minimize => "minimize",
            Direction::Maximize => "maximize",
        })
    }
}

/// State of a trial (Optuna's `TrialState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TrialState {
    /// Training or evaluation is under way (or the process that ran it died).
    Running,
    /// Finished with objective values.
    Complete,
    /// Stopped early by a pruner.
    Pruned,
    /// Failed (diverged, panicked, timed out, interrupted); see `failure_reason`.
    Fail,
    /// Enqueued but not started (only written by Optuna itself).
    Waiting,
}

impl TrialState {
    /// All states, in display order.
    pub const ALL: [TrialState; 5] = [
        TrialState::Complete,
        TrialState::Running,
        TrialState::Fail,
        TrialState::Pruned,
        TrialState::Waiting,
    ];

    /// The text Optuna stores in `trials.state`.
    pub fn as_optuna_str(self) -> &'static str {
        match self {
            TrialState::Running => "RUNNING",
            TrialState::Complete => "COMPLETE",
            TrialState::Pruned => "PRUNED",
            TrialState::Fail => "FAIL",
            TrialState::Waiting => "WAITING",
        }
    }

    /// Parses the text of `trials.state`.
    pub fn from_optuna_str(text: &str) -> Option<TrialState> {
        TrialState::ALL
            .into_iter()
            .find(|state| state.as_optuna_str() == text)
    }
}

impl fmt::Display for TrialState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_optuna_str())
    }
}

/// One parameter of a trial: its name, distribution and value in Optuna's internal form.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredParam {
    /// Parameter name (unique within a trial).
    pub name: String,
    /// The distribution it was drawn from.
    pub distribution: ParamDistribution,
    /// Optuna's internal value: the float itself, the int as float, or the choice index.
    pub internal: f64,
}

impl StoredParam {
    /// Builds a param from its external value, validating the distribution and the value.
    pub fn new(
        name: impl Into<String>,
        distribution: ParamDistribution,
        value: ParamValue,
    ) -> Result<StoredParam, StoreError> {
        let name = name.into();
        distribution.validate(&name)?;
        let internal = distribution.to_internal(&name, &value)?;
        Ok(StoredParam {
            name,
            distribution,
            internal,
        })
    }

    /// A float param.
    pub fn float(
        name: impl Into<String>,
        low: f64,
        high: f64,
        log: bool,
        value: f64,
    ) -> Result<StoredParam, StoreError> {
        let distribution = ParamDistribution::Float {
            low,
            high,
            log,
            step: None,
        };
        StoredParam::new(name, distribution, ParamValue::Float(value))
    }

    /// An integer param with step 1.
    pub fn int(
        name: impl Into<String>,
        low: i64,
        high: i64,
        log: bool,
        value: i64,
    ) -> Result<StoredParam, StoreError> {
        let distribution = ParamDistribution::Int {
            low,
            high,
            log,
            step: 1,
        };
        StoredParam::new(name, distribution, ParamValue::Int(value))
    }

    /// A categorical param over string choices.
    pub fn categorical(
        name: impl Into<String>,
        choices: &[&str],
        value: &str,
    ) -> Result<StoredParam, StoreError> {
        let distribution = ParamDistribution::Categorical {
            choices: choices.iter().map(|c| Value::from(*c)).collect(),
        };
        StoredParam::new(name, distribution, ParamValue::Choice(Value::from(value)))
    }

    /// The external value (`None` if the stored internal value does not fit the distribution).
    pub fn value(&self) -> Option<ParamValue> {
        self.distribution.to_external(self.internal)
    }
}

/// How a RUNNING trial ends.
#[derive(Debug, Clone, PartialEq)]
pub enum TrialOutcome {
    /// Finished: one value per study direction (finite or ±inf, never NaN).
    Complete {
        /// The objective values, in the order of the study's directions.
        values: Vec<f64>,
    },
    /// Failed; `reason` goes to the user attribute `failure_reason`.
    Fail {
        /// Human-readable cause (divergence, panic message, time limit, interrupted…).
        reason: String,
    },
    /// Stopped from outside (Ctrl-C, a killed process) before it could finish: stored as FAIL
    /// with `reason` and the user attribute `interrupted` = true (see
    /// [`StoredTrial::is_interrupted`]).
    Interrupted {
        /// Human-readable cause.
        reason: String,
    },
    /// Stopped early by a pruner, with the values it scored when it stopped (one per study
    /// direction, as Optuna keeps a pruned trial's last intermediate value; or none).
    Pruned {
        /// The objective values at the stop, in the order of the study's directions, or empty.
        values: Vec<f64>,
    },
}

/// A new trial just recorded as RUNNING.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrialHandle {
    /// The study it belongs to.
    pub study_id: StudyId,
    /// Row id in `trials` (unique across the database).
    pub trial_id: i64,
    /// Number within the study, from 0 (Optuna's `trial.number`).
    pub number: i64,
}

/// Conditions under which [`crate::store::Store::start_trial_checked`] declines to start a
/// trial, checked inside the transaction that assigns its number (so concurrent workers agree).
#[derive(Debug, Clone, Copy, Default)]
pub struct StartRules {
    /// Decline once the study counts this many trials.
    pub budget: Option<usize>,
    /// Whether interrupted trials ([`StoredTrial::is_interrupted`]) are left out of the
    /// budget's count (their re-runs count instead).
    pub interrupted_uncounted: bool,
    /// Decline when a trial of the study that did not fail has exactly these params (another
    /// worker runs, or ran, this configuration).
    pub unique: bool,
}

/// What [`crate::store::Store::start_trial_checked`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// The trial is recorded as RUNNING.
    Trial(TrialHandle),
    /// Trial `number` already has these params; nothing was written.
    Duplicate {
        /// The trial with the same params.
        number: i64,
    },
    /// The study's trial budget is spent; nothing was written.
    BudgetSpent,
}

/// A study row with its directions and attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct StudyInfo {
    /// Row id.
    pub id: StudyId,
    /// Unique study name.
    pub name: String,
    /// One direction per objective.
    pub directions: Vec<Direction>,
    /// `study_user_attributes`, JSON-decoded.
    pub user_attrs: BTreeMap<String, Value>,
}

/// Everything stored about one trial.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTrial {
    /// Row id in `trials`.
    pub trial_id: i64,
    /// Number within the study, from 0.
    pub number: i64,
    /// Current state.
    pub state: TrialState,
    /// Parameters in the order they were stored.
    pub params: Vec<StoredParam>,
    /// Objective values (`None` until the trial completes; Optuna also keeps a value for some
    /// PRUNED trials).
    pub values: Option<Vec<f64>>,
    /// User attributes, JSON-decoded (unparsable JSON, e.g. Python's `NaN`, is kept as a string).
    pub user_attrs: BTreeMap<String, Value>,
    /// System attributes, JSON-decoded.
    pub system_attrs: BTreeMap<String, Value>,
    /// Intermediate values by step (per-epoch validation metric).
    pub intermediate_values: BTreeMap<i64, f64>,
    /// Start time, naive UTC text as Optuna stores it (`YYYY-MM-DD HH:MM:SS.ffffff`).
    pub datetime_start: Option<String>,
    /// Completion time, naive UTC text.
    pub datetime_complete: Option<String>,
    /// Seconds from start to completion, when both are known.
    pub duration_seconds: Option<f64>,
    /// Last heartbeat, naive UTC text.
    pub heartbeat: Option<String>,
}

impl StoredTrial {
    /// The param with this name.
    pub fn param(&self, name: &str) -> Option<&StoredParam> {
        self.params.iter().find(|p| p.name == name)
    }

    /// A user attribute read as a number (accepts JSON numbers and numeric strings).
    pub fn user_attr_f64(&self, key: &str) -> Option<f64> {
        match self.user_attrs.get(key)? {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// External param values as JSON, in stored order (a value that does not fit its
    /// distribution is shown as its raw internal number).
    pub fn param_values(&self) -> Vec<(String, Value)> {
        self.params
            .iter()
            .map(|p| {
                let value = p
                    .value()
                    .map_or_else(|| json_number(p.internal), |v| v.to_json());
                (p.name.clone(), value)
            })
            .collect()
    }

    /// A user attribute read as a string.
    pub fn user_attr_str(&self, key: &str) -> Option<&str> {
        self.user_attrs.get(key).and_then(Value::as_str)
    }

    /// The trial's constraint values, as Optuna reads them: the list under the system attribute
    /// [`super::attrs::CONSTRAINTS`] (what cthpo writes) followed by any `constraints:<name>`
    /// system attributes (what Optuna's `set_constraint` writes); `None` without any, or when
    /// one is not a number (such a trial counts as infeasible).
    pub fn constraints(&self) -> Option<Vec<f64>> {
        let prefix = format!("{}:", super::attrs::CONSTRAINTS);
        let list = match self.system_attrs.get(super::attrs::CONSTRAINTS) {
            Some(Value::Array(values)) => values.iter().collect(),
            Some(other) => vec![other],
            None => Vec::new(),
        };
        let named = self
            .system_attrs
            .iter()
            .filter(|(key, _)| key.starts_with(&prefix))
            .map(|(_, value)| value);
        let values: Vec<&Value> = list.into_iter().chain(named).collect();
        if values.is_empty() {
            return None;
        }
        values.into_iter().map(Value::as_f64).collect()
    }

    /// Whether the trial satisfies its constraints (every value ≤ 0, Optuna's convention);
    /// a trial without constraint values is feasible, one with unreadable values is not.
    pub fn is_feasible(&self) -> bool {
        let constrained = self.system_attrs.keys().any(|key| {
            key == super::attrs::CONSTRAINTS
                || key.starts_with(&format!("{}:", super::attrs::CONSTRAINTS))
        });
        !constrained
            || self
                .constraints()
                .is_some_and(|c| c.iter().all(|v| *v <= 0.0))
    }

    /// Whether the trial was interrupted rather than failed on its own: a FAIL stored as
    /// [`TrialOutcome::Interrupted`] (or, in databases older than that attribute, with the
    /// failure reason `interrupted`).
    pub fn is_interrupted(&self) -> bool {
        self.state == TrialState::Fail
            && (self.user_attrs.get(super::attrs::INTERRUPTED) == Some(&Value::Bool(true))
                || self.user_attr_str(super::attrs::FAILURE_REASON) == Some(LEGACY_INTERRUPTED))
    }
}

/// The failure reason that marked an interrupted trial before [`super::attrs::INTERRUPTED`].
pub(crate) const LEGACY_INTERRUPTED: &str = "interrupted";
