//! Configuration spaces: typed hyperparameters, conditions, YAML I/O, sampling and unit-cube encoding.
//!
//! The YAML format follows ConfigSpace's:
//! ```yaml
//! hyperparameters:
//!   - {name: learning_rate, type: float, lower: 1.0e-5, upper: 0.1, log: true, default: 5.0e-4}
//!   - {name: pgd_steps, type: int, lower: 1, upper: 10, default: 8}
//!   - {name: optimizer, type: categorical, choices: [adam, adamw, radam], default: adam}
//!   - {name: batch_size, type: constant, value: 256}
//! conditions:
//!   - {child: weight_decay, parent: optimizer, values: [adamw]}
//! ```

use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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

/// A search space.
#[derive(Debug, Clone, PartialEq)]
pub struct Space {
    params: Vec<Param>,
    conditions: Vec<Condition>,
}

/// What can go wrong with a space or a configuration.
#[derive(Debug, thiserror::Error)]
pub enum SpaceError {
    /// A space file could not be read or parsed.
    #[error("space {origin}: {problem}")]
    File {
        /// File name (or `builtin:<method>`).
        origin: String,
        /// What is wrong.
        problem: String,
    },
    /// A parameter of a space is invalid.
    #[error("space {origin}, parameter `{param}`: {problem}")]
    Param {
        /// File name.
        origin: String,
        /// The parameter.
        param: String,
        /// What is wrong.
        problem: String,
    },
    /// No builtin space for this method.
    #[error("no builtin space for method `{0}` (known: {known})", known = BUILTIN_METHODS.join(", "))]
    UnknownMethod(String),
    /// A configuration value is invalid for the space.
    #[error("configuration value `{key}`: {problem}")]
    Value {
        /// The key.
        key: String,
        /// What is wrong.
        problem: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParam {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    lower: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upper: Option<f64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    log: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    default: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    choices: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<Value>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpace {
    hyperparameters: Vec<RawParam>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    conditions: Vec<Condition>,
}

/// Methods with a builtin space (`spaces/<method>.yaml`, compiled into the binary).
pub const BUILTIN_METHODS: &[&str] = &[
    "standard",
    "pgd",
    "ibp",
    "crown_ibp",
    "sabr",
    "taps",
    "staps",
    "mtl_ibp",
];

fn builtin_text(method: &str) -> Option<&'static str> {
    Some(match method {
        "standard" => include_str!("../../spaces/standard.yaml"),
        "pgd" => include_str!("../../spaces/pgd.yaml"),
        "ibp" => include_str!("../../spaces/ibp.yaml"),
        "crown_ibp" => include_str!("../../spaces/crown_ibp.yaml"),
        "sabr" => include_str!("../../spaces/sabr.yaml"),
        "taps" => include_str!("../../spaces/taps.yaml"),
        "staps" => include_str!("../../spaces/staps.yaml"),
        "mtl_ibp" => include_str!("../../spaces/mtl_ibp.yaml"),
        _ => return None,
    })
}

impl Space {
    /// The builtin space of a training method.
    pub fn builtin(method: &str) -> Result<Space, SpaceError> {
        let text = builtin_text(method).ok_or_else(|| SpaceError::UnknownMethod(method.into()))?;
        Space::from_yaml(text, &format!("builtin:{method}"))
    }

    /// Reads a space file.
    pub fn from_file(path: &Path) -> Result<Space, SpaceError> {
        let text = std::fs::read_to_string(path).map_err(|e| SpaceError::File {
            origin: path.display().to_string(),
            problem: e.to_string(),
        })?;
        Space::from_yaml(&text, &path.display().to_string())
    }

    /// Parses and validates a space; `origin` names it in errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Space, SpaceError> {
        let raw: RawSpace = serde_saphyr::from_str(text).map_err(|e| SpaceError::File {
            origin: origin.into(),
            problem: e.to_string(),
        })?;
        let mut params: Vec<Param> = Vec::new();
        for p in raw.hyperparameters {
            let error = |problem: String| SpaceError::Param {
                origin: origin.into(),
                param: p.name.clone(),
                problem,
            };
            if params.iter().any(|q| q.name == p.name) {
                return Err(error("duplicate name".into()));
            }
            let (kind, default) = match p.kind.as_str() {
                "float" | "int" => {
                    let (Some(lower), Some(upper)) = (p.lower, p.upper) else {
                        return Err(error("needs `lower` and `upper`".into()));
                    };
                    if lower.is_nan() || upper.is_nan() || lower >= upper {
                        return Err(error(format!("lower {lower} must be < upper {upper}")));
                    }
                    if p.log && lower <= 0.0 {
                        return Err(error(format!("log scale needs lower > 0, got {lower}")));
                    }
                    let default = p
                        .default
                        .clone()
                        .ok_or_else(|| error("needs a `default`".into()))?;
                    let number = match default {
                        Value::Int(i) => i as f64,
                        Value::Float(x) => x,
                        Value::Str(_) => return Err(error("default must be a number".into())),
                    };
                    if number < lower || number > upper {
                        return Err(error(format!(
                            "default {number} outside [{lower}, {upper}]"
                        )));
                    }
                    if p.kind == "float" {
                        (
                            ParamKind::Float {
                                lower,
                                upper,
                                log: p.log,
                            },
                            Value::Float(number),
                        )
                    } else {
                        if lower.fract() != 0.0 || upper.fract() != 0.0 || number.fract() != 0.0 {
                            return Err(error(
                                "int bounds and default must be whole numbers".into(),
                            ));
                        }
                        let kind = ParamKind::Int {
                            lower: lower as i64,
                            upper: upper as i64,
                            log: p.log,
                        };
                        (kind, Value::Int(number as i64))
                    }
                }
                "categorical" => {
                    let choices = p.choices.clone().filter(|c| !c.is_empty());
                    let choices =
                        choices.ok_or_else(|| error("needs a non-empty `choices` list".into()))?;
                    let default = match &p.default {
                        Some(Value::Str(s)) if choices.contains(s) => Value::Str(s.clone()),
                        Some(other) => {
                            return Err(error(format!(
                                "default `{other}` is not one of the choices"
                            )));
                        }
                        None => Value::Str(choices[0].clone()),
                    };
                    (ParamKind::Categorical { choices }, default)
                }
                "constant" => {
                    let value = p
                        .value
                        .clone()
                        .ok_or_else(|| error("needs a `value`".into()))?;
                    (ParamKind::Constant, value)
                }
                other => {
                    return Err(error(format!(
                        "unknown type `{other}` (use float, int, categorical, constant)"
                    )));
                }
            };
            params.push(Param {
                name: p.name,
                kind,
                default,
            });
        }
        for c in &raw.conditions {
            let error = |problem: String| SpaceError::Param {
                origin: origin.into(),
                param: c.child.clone(),
                problem,
            };
            if !params.iter().any(|p| p.name == c.child) {
                return Err(error(
                    "condition on a parameter the space does not have".into(),
                ));
            }
            match params.iter().find(|p| p.name == c.parent).map(|p| &p.kind) {
                Some(ParamKind::Categorical { choices }) => {
                    if let Some(v) = c.values.iter().find(|v| !choices.contains(v)) {
                        return Err(error(format!(
                            "condition value `{v}` is not a choice of `{}`",
                            c.parent
                        )));
                    }
                }
                Some(_) => {
                    return Err(error(format!(
                        "condition parent `{}` is not categorical",
                        c.parent
                    )));
                }
                None => {
                    return Err(error(format!(
                        "condition parent `{}` does not exist",
                        c.parent
                    )));
                }
            }
        }
        Ok(Space {
            params,
            conditions: raw.conditions,
        })
    }

    /// The space in its YAML format (what `from_yaml` reads back as the same space).
    pub fn to_yaml(&self) -> String {
        let raw = RawSpace {
            hyperparameters: self
                .params
                .iter()
                .map(|p| {
                    let bounds = |lower: f64, upper: f64, log: bool, kind: &str| RawParam {
                        name: p.name.clone(),
                        kind: kind.into(),
                        lower: Some(lower),
                        upper: Some(upper),
                        log,
                        default: Some(p.default.clone()),
                        choices: None,
                        value: None,
                    };
                    match &p.kind {
                        ParamKind::Float { lower, upper, log } => {
                            bounds(*lower, *upper, *log, "float")
                        }
                        ParamKind::Int { lower, upper, log } => {
                            bounds(*lower as f64, *upper as f64, *log, "int")
                        }
                        ParamKind::Categorical { choices } => RawParam {
                            choices: Some(choices.clone()),
                            lower: None,
                            upper: None,
                            ..bounds(0.0, 0.0, false, "categorical")
                        },
                        ParamKind::Constant => RawParam {
                            value: Some(p.default.clone()),
                            default: None,
                            lower: None,
                            upper: None,
                            ..bounds(0.0, 0.0, false, "constant")
                        },
                    }
                })
                .collect(),
            conditions: self.conditions.clone(),
        };
        serde_saphyr::to_string(&raw).expect("a space always serialises")
    }

    /// Every parameter, in file order.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// The searched (non-constant) parameters: the unit cube's axes, in order.
    pub fn searched(&self) -> Vec<&Param> {
        self.params
            .iter()
            .filter(|p| p.kind != ParamKind::Constant)
            .collect()
    }

    /// Number of searched parameters.
    pub fn dimension(&self) -> usize {
        self.searched().len()
    }

    fn is_active(&self, name: &str, config: &Config) -> bool {
        self.conditions
            .iter()
            .filter(|c| c.child == name)
            .all(|c| matches!(config.get(&c.parent), Some(Value::Str(v)) if c.values.contains(v)))
    }

    /// Removes parameters whose conditions do not hold (parents are decided first).
    fn prune(&self, mut config: Config) -> Config {
        let names: Vec<String> = config.keys().cloned().collect();
        for name in names {
            if !self.is_active(&name, &config) {
                config.remove(&name);
            }
        }
        config
    }

    /// The default configuration (literature defaults, inactive parameters left out).
    pub fn default_config(&self) -> Config {
        self.prune(
            self.params
                .iter()
                .map(|p| (p.name.clone(), p.default.clone()))
                .collect(),
        )
    }

    /// Decodes a point of the unit cube (one coordinate per searched parameter).
    pub fn decode(&self, point: &[f64]) -> Config {
        let mut config = Config::new();
        let mut axes = point.iter();
        for p in &self.params {
            let value = match &p.kind {
                ParamKind::Constant => p.default.clone(),
                kind => from_unit(kind, axes.next().copied().unwrap_or(0.5).clamp(0.0, 1.0)),
            };
            config.insert(p.name.clone(), value);
        }
        self.prune(config)
    }

    /// Encodes a configuration in the unit cube; inactive parameters become `None`.
    pub fn encode(&self, config: &Config) -> Vec<Option<f64>> {
        self.searched()
            .into_iter()
            .map(|p| config.get(&p.name).and_then(|v| to_unit(&p.kind, v)))
            .collect()
    }

    /// A uniformly random configuration.
    pub fn sample(&self, rng: &mut impl Rng) -> Config {
        let point: Vec<f64> = (0..self.dimension())
            .map(|_| rng.random_range(0.0..1.0))
            .collect();
        self.decode(&point)
    }

    /// Checks (and normalises) a configuration read from a file or given by the user: every
    /// key must be a parameter, values in range; missing parameters take their defaults.
    pub fn complete(&self, values: &Config) -> Result<Config, SpaceError> {
        let mut config = Config::new();
        for key in values.keys() {
            if !self.params.iter().any(|p| &p.name == key) {
                return Err(SpaceError::Value {
                    key: key.clone(),
                    problem: format!(
                        "not a parameter of this space (valid: {})",
                        self.params
                            .iter()
                            .map(|p| p.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
        }
        for p in &self.params {
            let value = match values.get(&p.name) {
                Some(v) => check_value(p, v)?,
                None => p.default.clone(),
            };
            config.insert(p.name.clone(), value);
        }
        Ok(self.prune(config))
    }

    /// Applies a `key=value` override to a configuration, range-checked.
    pub fn apply_override(&self, config: &mut Config, assignment: &str) -> Result<(), SpaceError> {
        let (key, text) = assignment
            .split_once('=')
            .ok_or_else(|| SpaceError::Value {
                key: assignment.into(),
                problem: "expected key=value".into(),
            })?;
        let (key, text) = (key.trim(), text.trim());
        let value = if let Ok(i) = text.parse::<i64>() {
            Value::Int(i)
        } else if let Ok(x) = text.parse::<f64>() {
            Value::Float(x)
        } else {
            Value::Str(text.into())
        };
        let mut values = config.clone();
        values.insert(key.into(), value);
        *config = self.complete(&values)?;
        Ok(())
    }

    /// A stable hash of a configuration (FNV-1a over its canonical text), equal on every
    /// platform and run; used to never propose the same configuration twice.
    pub fn config_hash(config: &Config) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for (key, value) in config {
            let text = match value {
                Value::Float(x) => format!("{key}=f{:e};", x),
                Value::Int(i) => format!("{key}=i{i};"),
                Value::Str(s) => format!("{key}=s{s};"),
            };
            for byte in text.bytes() {
                hash ^= byte as u64;
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        }
        hash
    }
}

fn check_value(p: &Param, value: &Value) -> Result<Value, SpaceError> {
    let error = |problem: String| SpaceError::Value {
        key: p.name.clone(),
        problem,
    };
    match (&p.kind, value) {
        (ParamKind::Float { lower, upper, .. }, Value::Float(_) | Value::Int(_)) => {
            let x = match value {
                Value::Int(i) => *i as f64,
                Value::Float(x) => *x,
                Value::Str(_) => unreachable!(),
            };
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

fn from_unit(kind: &ParamKind, u: f64) -> Value {
    let scale = |lower: f64, upper: f64, log: bool| {
        if log {
            (lower.ln() + u * (upper.ln() - lower.ln())).exp()
        } else {
            lower + u * (upper - lower)
        }
    };
    match kind {
        ParamKind::Float { lower, upper, log } => {
            Value::Float(scale(*lower, *upper, *log).clamp(*lower, *upper))
        }
        ParamKind::Int { lower, upper, log } => {
            // Widen by half a step each side so every integer gets an equal share of the axis.
            let (lo, hi) = (*lower as f64 - 0.4999, *upper as f64 + 0.4999);
            let x = if *log {
                let (lo, hi) = ((*lower as f64 - 0.4999).max(0.5), hi);
                (lo.ln() + u * (hi.ln() - lo.ln())).exp()
            } else {
                lo + u * (hi - lo)
            };
            Value::Int((x.round() as i64).clamp(*lower, *upper))
        }
        ParamKind::Categorical { choices } => {
            let index = ((u * choices.len() as f64) as usize).min(choices.len() - 1);
            Value::Str(choices[index].clone())
        }
        ParamKind::Constant => unreachable!("constants are not on the unit cube"),
    }
}

fn to_unit(kind: &ParamKind, value: &Value) -> Option<f64> {
    let number = |v: &Value| match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(x) => Some(*x),
        Value::Str(_) => None,
    };
    Some(
        match kind {
            ParamKind::Float { lower, upper, log } => {
                let x = number(value)?;
                if *log {
                    (x.ln() - lower.ln()) / (upper.ln() - lower.ln())
                } else {
                    (x - lower) / (upper - lower)
                }
            }
            ParamKind::Int { lower, upper, log } => {
                let x = number(value)?;
                let (lo, hi) = (*lower as f64 - 0.4999, *upper as f64 + 0.4999);
                if *log {
                    let lo = lo.max(0.5);
                    (x.ln() - lo.ln()) / (hi.ln() - lo.ln())
                } else {
                    (x - lo) / (hi - lo)
                }
            }
            ParamKind::Categorical { choices } => {
                let Value::Str(s) = value else { return None };
                let index = choices.iter().position(|c| c == s)?;
                (index as f64 + 0.5) / choices.len() as f64
            }
            ParamKind::Constant => return None,
        }
        .clamp(0.0, 1.0),
    )
}

/// Reads a configuration YAML map (e.g. from `cthpo best --export`) and checks it against a space.
pub fn load_config_file(space: &Space, path: &Path) -> Result<Config, SpaceError> {
    let text = std::fs::read_to_string(path).map_err(|e| SpaceError::File {
        origin: path.display().to_string(),
        problem: e.to_string(),
    })?;
    let values: Config = serde_saphyr::from_str(&text).map_err(|e| SpaceError::File {
        origin: path.display().to_string(),
        problem: format!("not a YAML map of hyperparameters: {e}"),
    })?;
    space.complete(&values).map_err(|e| SpaceError::File {
        origin: path.display().to_string(),
        problem: e.to_string(),
    })
}

/// The trainer's view of a configuration: `key → JSON value`.
pub fn to_json_map(config: &Config) -> BTreeMap<String, serde_json::Value> {
    config
        .iter()
        .map(|(k, v)| {
            let json = match v {
                Value::Int(i) => serde_json::Value::from(*i),
                Value::Float(x) => serde_json::Value::from(*x),
                Value::Str(s) => serde_json::Value::from(s.clone()),
            };
            (k.clone(), json)
        })
        .collect()
}

/// Where the builtin spaces live in the source tree (for documentation and tests).
pub fn spaces_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("spaces")
}
