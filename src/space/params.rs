//! Hyperparameters: values, kinds, parameters, conditions, and the range check of one value.

use super::SpaceError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A hyperparameter value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// An integer.
    Int(i64),
    /// A real number.
    Float(f64),
    /// A categorical choice.
    Str(String),
}

impl Value {
    /// The value as a number: integers widened to `f64`, `None` for a categorical choice.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(x) => Some(*x),
            Value::Str(_) => None,
        }
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Str(s) => f.write_str(s),
        }
    }
}

/// A configuration: the active hyperparameters of a space, by name.
pub type Config = BTreeMap<String, Value>;

/// What kind of values a hyperparameter takes.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamKind {
    /// Real numbers in `[lower, upper]`, sampled uniformly on a log scale if `log`.
    Float {
        /// Smallest value.
        lower: f64,
        /// Largest value.
        upper: f64,
        /// Log scale.
        log: bool,
    },
    /// Integers in `[lower, upper]`.
    Int {
        /// Smallest value.
        lower: i64,
        /// Largest value.
        upper: i64,
        /// Log scale.
        log: bool,
    },
    /// One of a list of names.
    Categorical {
        /// The choices, in order.
        choices: Vec<String>,
    },
    /// A fixed value (part of the configuration, never searched).
    Constant,
}

/// One hyperparameter.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// Name (the trainer's configuration key).
    pub name: String,
    /// Value kind and range.
    pub kind: ParamKind,
    /// Default value (literature default).
    pub default: Value,
}

/// `child` is active only when `parent` (a categorical) takes one of `values`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// The conditional parameter.
    pub child: String,
    /// The categorical it depends on.
    pub parent: String,
    /// Parent values for which the child is active.
    pub values: Vec<String>,
}

/// Checks one value against its parameter; numbers for a float parameter become floats.
pub(super) fn check_value(p: &Param, value: &Value) -> Result<Value, SpaceError> {
    let error = |problem: String| SpaceError::Value {
        key: p.name.clone(),
        problem,
    };
    match (&p.kind, value) {
        (ParamKind::Float { lower, upper, .. }, Value::Float(_) | Value::Int(_)) => {
            let x = value.as_f64().unwrap_or(f64::NAN);
            if x < *lower || x > *upper || !x.is_finite() {
                return Err(error(format!("{x} outside [{lower}, {upper}]")));
            }
            Ok(Value::Float(x))
        }
        (ParamKind::Int { lower, upper, .. }, Value::Int(i)) => {
            if i < lower || i > upper {
                return Err(error(format!("{i} outside [{lower}, {upper}]")));
            }
            Ok(Value::Int(*i))
        }
        (ParamKind::Categorical { choices }, Value::Str(s)) if choices.contains(s) => {
            Ok(value.clone())
        }
        (ParamKind::Categorical { choices }, other) => Err(error(format!(
            "`{other}` is not one of {}",
            choices.join(", ")
        ))),
        (ParamKind::Constant, v) if v == &p.default => Ok(v.clone()),
        (ParamKind::Constant, v) => Err(error(format!(
            "is fixed at {} in this space, got {v}",
            p.default
        ))),
        (ParamKind::Int { .. }, other) => Err(error(format!("`{other}` is not an integer"))),
        (ParamKind::Float { .. }, other) => Err(error(format!("`{other}` is not a number"))),
    }
}
