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

    /// `encode(&decode(point))`, computed without building the configuration (no map, no
    /// names): what the acquisition search needs of each of its thousands of candidates.
    pub fn encode_point(&self, point: &[f64]) -> Vec<Option<f64>> {
        let mut axes = point.iter();
        let values: Vec<Value> = self
            .params
            .iter()
            .map(|p| match &p.kind {
                ParamKind::Constant => p.default.clone(),
                kind => from_unit(kind, axes.next().copied().unwrap_or(0.5).clamp(0.0, 1.0)),
            })
            .collect();
        // Pruned as `decode` prunes its map: in name order, each parameter checked against
        // the parameters still present.
        let mut present = vec![true; self.params.len()];
        let mut by_name: Vec<usize> = (0..self.params.len()).collect();
        by_name.sort_by(|&a, &b| self.params[a].name.cmp(&self.params[b].name));
        for i in by_name {
            let name = &self.params[i].name;
            let active =
                self.conditions()
                    .iter()
                    .filter(|c| &c.child == name)
                    .all(|c| {
                        self.params.iter().position(|p| p.name == c.parent).is_some_and(|parent| {
                    present[parent]
                        && matches!(&values[parent], Value::Str(v) if c.values.contains(v))
                })
                    });
            present[i] = active;
        }
        self.params
            .iter()
            .zip(values.iter().zip(&present))
            .filter(|(p, _)| p.kind != ParamKind::Constant)
            .map(|(p, (value, &present))| {
                if present {
                    to_unit(&p.kind, value)
                } else {
                    None
                }
            })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::BUILTIN_METHODS;
    use rand::{SeedableRng, rngs::StdRng};

    #[test]
    fn encode_point_is_encode_of_decode() {
        // Every builtin space, and conditions chained through a parent that can itself be off
        // (`b` names sort before and after their parents, as pruning order depends on names).
        let chained = "hyperparameters:\n  - {name: z, type: categorical, choices: [yes_z, no_z], default: yes_z}\n  - {name: a, type: categorical, choices: [x, y], default: x}\n  - {name: b, type: float, lower: 1.0e-4, upper: 1, log: true, default: 0.01}\n  - {name: n, type: int, lower: 2, upper: 300, log: true, default: 16}\n  - {name: k, type: constant, value: 3}\nconditions:\n  - {child: a, parent: z, values: [yes_z]}\n  - {child: b, parent: a, values: [y]}\n";
        let mut spaces = vec![Space::from_yaml(chained, "chained").unwrap()];
        for method in BUILTIN_METHODS {
            spaces.push(Space::builtin(method).unwrap());
        }
        let mut rng = StdRng::seed_from_u64(9);
        for space in &spaces {
            let mut inactive = 0;
            for _ in 0..300 {
                let mut point: Vec<f64> = (0..space.dimension())
                    .map(|_| rng.random_range(0.0..1.0))
                    .collect();
                // The cube's faces too, where values are clamped.
                if rng.random_bool(0.2) {
                    point[0] = if rng.random_bool(0.5) { 0.0 } else { 1.0 };
                }
                let fast = space.encode_point(&point);
                assert_eq!(fast, space.encode(&space.decode(&point)));
                inactive += fast.iter().filter(|v| v.is_none()).count();
            }
            if space.conditions().is_empty() {
                assert_eq!(inactive, 0);
            } else {
                assert!(inactive > 0, "conditions switched something off");
            }
        }
    }
}
