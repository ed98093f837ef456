//! Unit-cube encoding of configurations (one axis per searched parameter) and sampling.

use super::{Config, ParamKind, Space, Value};
use rand::Rng;

impl Space {
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
}

/// The value at coordinate `u` in [0, 1] of a searched parameter's axis.
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

/// The coordinate in [0, 1] of a value on its parameter's axis (`None` if it does not fit).
fn to_unit(kind: &ParamKind, value: &Value) -> Option<f64> {
    Some(
        match kind {
            ParamKind::Float { lower, upper, log } => {
                let x = value.as_f64()?;
                if *log {
                    (x.ln() - lower.ln()) / (upper.ln() - lower.ln())
                } else {
                    (x - lower) / (upper - lower)
                }
            }
            ParamKind::Int { lower, upper, log } => {
                let x = value.as_f64()?;
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
