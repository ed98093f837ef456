//! Value types of the store: directions, trial states, Optuna distributions and stored params.

use super::StoreError;
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

    /// True once the trial can no longer change (COMPLETE, PRUNED or FAIL).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            TrialState::Complete | TrialState::Pruned | TrialState::Fail
        )
    }
}

impl fmt::Display for TrialState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_optuna_str())
    }
}

/// The distribution of one parameter, as Optuna records it in `trial_params.distribution_json`.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamDistribution {
    /// Optuna's `FloatDistribution` (`step` is `None` for a continuous range; `log` excludes `step`).
    Float {
        /// Lower bound (inclusive).
        low: f64,
        /// Upper bound (inclusive).
        high: f64,
        /// Sampled on a log scale.
        log: bool,
        /// Discretisation step, if any.
        step: Option<f64>,
    },
    /// Optuna's `IntDistribution` (`log` requires `step == 1`).
    Int {
        /// Lower bound (inclusive).
        low: i64,
        /// Upper bound (inclusive).
        high: i64,
        /// Sampled on a log scale.
        log: bool,
        /// Step between admissible values (at least 1).
        step: i64,
    },
    /// Optuna's `CategoricalDistribution`; the stored value is the index of the choice.
    Categorical {
        /// The choices: JSON null, booleans, numbers or strings.
        choices: Vec<Value>,
    },
}

/// The external (user-facing) value of a parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    /// Value of a float parameter.
    Float(f64),
    /// Value of an integer parameter.
    Int(i64),
    /// The chosen element of a categorical parameter.
    Choice(Value),
}

/// A float as JSON; JSON has no inf/NaN, so those become the strings "inf", "-inf", "NaN".
pub fn json_number(x: f64) -> Value {
    serde_json::Number::from_f64(x)
        .map(Value::Number)
        .unwrap_or_else(|| Value::String(x.to_string()))
}

impl ParamValue {
    /// The value as JSON (floats that are not finite become strings, see [`json_number`]).
    pub fn to_json(&self) -> Value {
        match self {
            ParamValue::Float(x) => json_number(*x),
            ParamValue::Int(i) => Value::from(*i),
            ParamValue::Choice(value) => value.clone(),
        }
    }
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Float(x) => write!(f, "{x}"),
            ParamValue::Int(i) => write!(f, "{i}"),
            ParamValue::Choice(Value::String(s)) => f.write_str(s),
            ParamValue::Choice(value) => write!(f, "{value}"),
        }
    }
}

fn invalid(name: &str, reason: impl Into<String>) -> StoreError {
    StoreError::InvalidParam {
        name: name.to_string(),
        reason: reason.into(),
    }
}

/// Writes a float as a JSON number (Optuna's distributions never hold non-finite bounds).
fn json_f64(x: f64) -> String {
    serde_json::Number::from_f64(x)
        .map(|n| {
            let text = n.to_string();
            // Keep floats recognisable as floats, as Python's json.dumps does ("1.0", not "1").
            if text.contains(['.', 'e', 'E']) {
                text
            } else {
                format!("{text}.0")
            }
        })
        .unwrap_or_else(|| "null".to_string())
}

impl ParamDistribution {
    /// Checks the distribution the way Optuna's constructors do; `name` is used in the error.
    pub fn validate(&self, name: &str) -> Result<(), StoreError> {
        match self {
            ParamDistribution::Float {
                low,
                high,
                log,
                step,
            } => {
                if !low.is_finite() || !high.is_finite() {
                    return Err(invalid(name, "float bounds must be finite"));
                }
                if low > high {
                    return Err(invalid(name, format!("low {low} > high {high}")));
                }
                if *log && *low <= 0.0 {
                    return Err(invalid(name, "a log-scaled float needs low > 0"));
                }
                if let Some(step) = step {
                    if *log {
                        return Err(invalid(name, "a log-scaled float cannot have a step"));
                    }
                    if !(step.is_finite() && *step > 0.0) {
                        return Err(invalid(name, "the step must be finite and > 0"));
                    }
                }
            }
            ParamDistribution::Int {
                low,
                high,
                log,
                step,
            } => {
                if low > high {
                    return Err(invalid(name, format!("low {low} > high {high}")));
                }
                if *step < 1 {
                    return Err(invalid(name, "an int step must be >= 1"));
                }
                if *log && *low < 1 {
                    return Err(invalid(name, "a log-scaled int needs low >= 1"));
                }
                if *log && *step != 1 {
                    return Err(invalid(name, "a log-scaled int needs step 1"));
                }
            }
            ParamDistribution::Categorical { choices } => {
                if choices.is_empty() {
                    return Err(invalid(name, "a categorical needs at least one choice"));
                }
                if let Some(bad) = choices
                    .iter()
                    .find(|c| matches!(c, Value::Array(_) | Value::Object(_)))
                {
                    return Err(invalid(
                        name,
                        format!("choice {bad} is not null, a boolean, a number or a string"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Optuna's `distribution_to_json` text for this distribution (same keys, same order).
    pub fn to_optuna_json(&self) -> String {
        match self {
            ParamDistribution::Float {
                low,
                high,
                log,
                step,
            } => format!(
                r#"{{"name": "FloatDistribution", "attributes": {{"step": {}, "low": {}, "high": {}, "log": {}}}}}"#,
                step.map_or_else(|| "null".to_string(), json_f64),
                json_f64(*low),
                json_f64(*high),
                log
            ),
            ParamDistribution::Int {
                low,
                high,
                log,
                step,
            } => format!(
                r#"{{"name": "IntDistribution", "attributes": {{"log": {log}, "step": {step}, "low": {low}, "high": {high}}}}}"#
            ),
            ParamDistribution::Categorical { choices } => {
                let items: Vec<String> = choices.iter().map(Value::to_string).collect();
                format!(
                    r#"{{"name": "CategoricalDistribution", "attributes": {{"choices": [{}]}}}}"#,
                    items.join(", ")
                )
            }
        }
    }

    /// Parses Optuna's distribution JSON, including the abbreviated and pre-v3 forms Optuna reads.
    pub fn from_optuna_json(text: &str) -> Option<ParamDistribution> {
        let json: Value = serde_json::from_str(text).ok()?;
        let f = |obj: &Value, key: &str| obj.get(key).and_then(Value::as_f64);
        let i = |obj: &Value, key: &str| {
            obj.get(key)
                .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|x| x as i64)))
        };
        let b = |obj: &Value, key: &str| obj.get(key).and_then(Value::as_bool).unwrap_or(false);
        if let Some(name) = json.get("name").and_then(Value::as_str) {
            let a = json.get("attributes")?;
            let dist = match name {
                "FloatDistribution" => ParamDistribution::Float {
                    low: f(a, "low")?,
                    high: f(a, "high")?,
                    log: b(a, "log"),
                    step: f(a, "step"),
                },
                "IntDistribution" => ParamDistribution::Int {
                    low: i(a, "low")?,
                    high: i(a, "high")?,
                    log: b(a, "log"),
                    step: i(a, "step").unwrap_or(1),
                },
                "CategoricalDistribution" => ParamDistribution::Categorical {
                    choices: a.get("choices")?.as_array()?.clone(),
                },
                "UniformDistribution" => ParamDistribution::Float {
                    low: f(a, "low")?,
                    high: f(a, "high")?,
                    log: false,
                    step: None,
                },
                "LogUniformDistribution" => ParamDistribution::Float {
                    low: f(a, "low")?,
                    high: f(a, "high")?,
                    log: true,
                    step: None,
                },
                "DiscreteUniformDistribution" => ParamDistribution::Float {
                    low: f(a, "low")?,
                    high: f(a, "high")?,
                    log: false,
                    step: f(a, "q"),
                },
                "IntUniformDistribution" => ParamDistribution::Int {
                    low: i(a, "low")?,
                    high: i(a, "high")?,
                    log: false,
                    step: i(a, "step").unwrap_or(1),
                },
                "IntLogUniformDistribution" => ParamDistribution::Int {
                    low: i(a, "low")?,
                    high: i(a, "high")?,
                    log: true,
                    step: 1,
                },
                _ => return None,
            };
            return Some(dist);
        }
        match json.get("type").and_then(Value::as_str)? {
            "categorical" => Some(ParamDistribution::Categorical {
                choices: json.get("choices")?.as_array()?.clone(),
            }),
            "float" => Some(ParamDistribution::Float {
                low: f(&json, "low")?,
                high: f(&json, "high")?,
                log: b(&json, "log"),
                step: f(&json, "step"),
            }),
            "int" => Some(ParamDistribution::Int {
                low: i(&json, "low")?,
                high: i(&json, "high")?,
                log: b(&json, "log"),
                step: i(&json, "step").unwrap_or(1),
            }),
            _ => None,
        }
    }

    /// Optuna's rule for two distributions of one param name in one study: same kind, same
    /// `log`, and for categoricals the same choices. `None` when compatible, else the reason.
    pub fn incompatibility(&self, other: &ParamDistribution) -> Option<String> {
        match (self, other) {
            (ParamDistribution::Float { log: a, .. }, ParamDistribution::Float { log: b, .. })
            | (ParamDistribution::Int { log: a, .. }, ParamDistribution::Int { log: b, .. }) => {
                (a != b).then(|| "the log setting differs".to_string())
            }
            (
                ParamDistribution::Categorical { choices: a },
                ParamDistribution::Categorical { choices: b },
            ) => (a != b).then(|| "the categorical choices differ".to_string()),
            _ => Some("the distribution kind differs".to_string()),
        }
    }

    /// Converts an external value to Optuna's internal float, checking it fits the distribution.
    pub fn to_internal(&self, name: &str, value: &ParamValue) -> Result<f64, StoreError> {
        match (self, value) {
            (ParamDistribution::Float { low, high, .. }, ParamValue::Float(x)) => {
                if !(x.is_finite() && *x >= *low && *x <= *high) {
                    return Err(invalid(name, format!("{x} is outside [{low}, {high}]")));
                }
                Ok(*x)
            }
            (
                ParamDistribution::Int {
                    low, high, step, ..
                },
                ParamValue::Int(i),
            ) => {
                if i < low || i > high {
                    return Err(invalid(name, format!("{i} is outside [{low}, {high}]")));
                }
                if *step > 1 && (i - low) % step != 0 {
                    return Err(invalid(name, format!("{i} is not {low} + k * {step}")));
                }
                Ok(*i as f64)
            }
            (ParamDistribution::Categorical { choices }, ParamValue::Choice(choice)) => choices
                .iter()
                .position(|c| json_equal(c, choice))
                .map(|index| index as f64)
                .ok_or_else(|| invalid(name, format!("{choice} is not one of the choices"))),
            _ => Err(invalid(
                name,
                format!("value {value} does not match the distribution kind"),
            )),
        }
    }

    /// Converts Optuna's internal float back to the external value.
    pub fn to_external(&self, internal: f64) -> Option<ParamValue> {
        match self {
            ParamDistribution::Float { .. } => Some(ParamValue::Float(internal)),
            ParamDistribution::Int { .. } => internal
                .is_finite()
                .then(|| ParamValue::Int(internal.round() as i64)),
            ParamDistribution::Categorical { choices } => {
                if !(internal.is_finite() && internal >= 0.0) {
                    return None;
                }
                choices
                    .get(internal.round() as usize)
                    .cloned()
                    .map(ParamValue::Choice)
            }
        }
    }
}

/// JSON equality that treats 1 and 1.0 as the same number, as Python's `==` does.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
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
    /// Stopped early by a pruner.
    Pruned,
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
}
