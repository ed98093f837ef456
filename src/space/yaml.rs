//! The space's YAML format (close to ConfigSpace's): parsing with validation, and writing.

use super::{Condition, Param, ParamKind, Space, SpaceError, Value};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
/// One entry of `hyperparameters:` as written in the file.
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
/// A space file as written.
struct RawSpace {
    hyperparameters: Vec<RawParam>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    conditions: Vec<Condition>,
}

impl Space {
    /// Parses and validates a space; `origin` names it in errors.
    ///
    /// ```
    /// use cthpo::space::{Space, Value};
    /// let yaml = "
    /// hyperparameters:
    ///   - {name: lr, type: float, lower: 1.0e-4, upper: 0.1, log: true, default: 1.0e-3}
    ///   - {name: optimizer, type: categorical, choices: [adam, sgd]}
    ///   - {name: momentum, type: float, lower: 0.0, upper: 0.99, default: 0.9}
    /// conditions:
    ///   - {child: momentum, parent: optimizer, values: [sgd]}
    /// ";
    /// let space = Space::from_yaml(yaml, "example")?;
    /// assert_eq!(space.dimension(), 3);
    /// let defaults = space.default_config(); // momentum is inactive under adam
    /// assert_eq!(defaults.get("optimizer"), Some(&Value::Str("adam".into())));
    /// assert!(!defaults.contains_key("momentum"));
    /// # Ok::<(), cthpo::space::SpaceError>(())
    /// ```
    pub fn from_yaml(text: &str, origin: &str) -> Result<Space, SpaceError> {
        let raw: RawSpace = serde_saphyr::from_str(text).map_err(|e| SpaceError::File {
            origin: origin.into(),
            problem: e.to_string(),
        })?;
        let mut params: Vec<Param> = Vec::new();
        for p in raw.hyperparameters {
            if params.iter().any(|q| q.name == p.name) {
                return Err(param_error(origin, &p.name, "duplicate name".into()));
            }
            params.push(parse_param(p, origin)?);
        }
        for c in &raw.conditions {
            check_condition(c, &params, origin)?;
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
}

/// The error for parameter `param` of the space `origin`.
fn param_error(origin: &str, param: &str, problem: String) -> SpaceError {
    SpaceError::Param {
        origin: origin.into(),
        param: param.into(),
        problem,
    }
}

/// One parameter of a space file, checked.
fn parse_param(p: RawParam, origin: &str) -> Result<Param, SpaceError> {
    let error = |problem: String| param_error(origin, &p.name, problem);
    let (kind, default) = match p.kind.as_str() {
        "float" | "int" => numeric_param(&p).map_err(error)?,
        "categorical" => categorical_param(&p).map_err(error)?,
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
    Ok(Param {
        name: p.name,
        kind,
        default,
    })
}

/// Kind and default of a `float` or `int` parameter; `Err` is the problem.
fn numeric_param(p: &RawParam) -> Result<(ParamKind, Value), String> {
    let (Some(lower), Some(upper)) = (p.lower, p.upper) else {
        return Err("needs `lower` and `upper`".into());
    };
    if lower.is_nan() || upper.is_nan() || lower >= upper {
        return Err(format!("lower {lower} must be < upper {upper}"));
    }
    if p.log && lower <= 0.0 {
        return Err(format!("log scale needs lower > 0, got {lower}"));
    }
    let default = p.default.as_ref().ok_or("needs a `default`")?;
    let number = default.as_f64().ok_or("default must be a number")?;
    if number < lower || number > upper {
        return Err(format!("default {number} outside [{lower}, {upper}]"));
    }
    if p.kind == "float" {
        let kind = ParamKind::Float {
            lower,
            upper,
            log: p.log,
        };
        return Ok((kind, Value::Float(number)));
    }
    if lower.fract() != 0.0 || upper.fract() != 0.0 || number.fract() != 0.0 {
        return Err("int bounds and default must be whole numbers".into());
    }
    let kind = ParamKind::Int {
        lower: lower as i64,
        upper: upper as i64,
        log: p.log,
    };
    Ok((kind, Value::Int(number as i64)))
}

/// Kind and default (the first choice unless given) of a `categorical`; `Err` is the problem.
fn categorical_param(p: &RawParam) -> Result<(ParamKind, Value), String> {
    let choices = p.choices.clone().filter(|c| !c.is_empty());
    let choices = choices.ok_or("needs a non-empty `choices` list")?;
    let default = match &p.default {
        Some(Value::Str(s)) if choices.contains(s) => Value::Str(s.clone()),
        Some(other) => return Err(format!("default `{other}` is not one of the choices")),
        None => Value::Str(choices[0].clone()),
    };
    Ok((ParamKind::Categorical { choices }, default))
}

/// A condition must tie an existing parameter to values of an existing categorical.
fn check_condition(c: &Condition, params: &[Param], origin: &str) -> Result<(), SpaceError> {
    let error = |problem: String| param_error(origin, &c.child, problem);
    if !params.iter().any(|p| p.name == c.child) {
        return Err(error(
            "condition on a parameter the space does not have".into(),
        ));
    }
    match params.iter().find(|p| p.name == c.parent).map(|p| &p.kind) {
        Some(ParamKind::Categorical { choices }) => {
            match c.values.iter().find(|v| !choices.contains(v)) {
                Some(v) => Err(error(format!(
                    "condition value `{v}` is not a choice of `{}`",
                    c.parent
                ))),
                None => Ok(()),
            }
        }
        Some(_) => Err(error(format!(
            "condition parent `{}` is not categorical",
            c.parent
        ))),
        None => Err(error(format!(
            "condition parent `{}` does not exist",
            c.parent
        ))),
    }
}
