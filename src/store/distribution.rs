//! Parameter distributions and values as Optuna records them: validation, Optuna's
//! `distribution_json` text (read and written), compatibility, internal ↔ external values.

use super::StoreError;
use serde_json::Value;
use std::fmt;

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
