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

mod encoding;
mod params;
mod yaml;

pub use params::{Condition, Config, Param, ParamKind, Value};

use params::check_value;
use std::collections::BTreeMap;
use std::path::Path;

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

    /// Every parameter, in file order.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// The conditions that switch parameters on and off, in file order.
    pub fn conditions(&self) -> &[Condition] {
        &self.conditions
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
    let config = space.complete(&values).map_err(|e| SpaceError::File {
        origin: path.display().to_string(),
        problem: e.to_string(),
    })?;
    // A value the configuration's conditions switch off would be silently dropped.
    if let Some(key) = values.keys().find(|k| !config.contains_key(*k)) {
        let parents: Vec<String> = space
            .conditions()
            .iter()
            .filter(|c| &c.child == key)
            .map(|c| format!("{} is one of {}", c.parent, c.values.join(", ")))
            .collect();
        return Err(SpaceError::File {
            origin: path.display().to_string(),
            problem: format!(
                "`{key}` has no effect in this configuration: it is used only when {}",
                parents.join(" and ")
            ),
        });
    }
    Ok(config)
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
