//! The trainer's typed hyperparameters and the method names, with literature defaults.
//!
//! Names match the parameters of `spaces/*.yaml`, so a configuration proposed by the optimiser
//! is deserialised straight into [`TrainConfig`]. Epoch-dependent settings are fractions of the
//! epoch budget so one configuration serves any budget.

use super::TrainError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::str::FromStr;

/// A certified-training method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Natural cross-entropy only.
    Standard,
    /// PGD adversarial training (Madry et al.).
    Pgd,
    /// Interval bound propagation with Shi et al.'s initialisation and regulariser.
    Ibp,
    /// CROWN-IBP (Zhang et al.): β·CROWN-IBP + (1−β)·IBP margins, β from 1 to `end_beta`.
    CrownIbp,
    /// SABR (Müller et al.): IBP on a small box around an adversarial point.
    Sabr,
    /// TAPS (Mao et al.): IBP through a feature extractor, PGD in the latent box.
    Taps,
    /// TAPS with SABR's small box for the extractor.
    Staps,
    /// MTL-IBP (De Palma et al.): convex combination of IBP and PGD losses.
    MtlIbp,
}

impl Method {
    /// Every method, in the order users compare them.
    pub const ALL: [Method; 8] = [
        Method::Standard,
        Method::Pgd,
        Method::Ibp,
        Method::CrownIbp,
        Method::Sabr,
        Method::Taps,
        Method::Staps,
        Method::MtlIbp,
    ];

    /// The method's name as used on the command line and in `spaces/`.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Standard => "standard",
            Method::Pgd => "pgd",
            Method::Ibp => "ibp",
            Method::CrownIbp => "crown_ibp",
            Method::Sabr => "sabr",
            Method::Taps => "taps",
            Method::Staps => "staps",
            Method::MtlIbp => "mtl_ibp",
        }
    }

    /// Whether the method trains against a bound (and so uses the ε ramp and Shi terms).
    pub fn is_certified(&self) -> bool {
        !matches!(self, Method::Standard | Method::Pgd)
    }

    /// Whether the loss mixes the natural loss in by κ (`κ·L_nat + (1 − κ)·L_rob`).
    ///
    /// Only IBP and CROWN-IBP do (Shi et al., Zhang et al., CTRAIN); SABR, TAPS, STAPS and
    /// MTL-IBP train on their robust loss alone once ε > 0 (MTL-IBP's α is its own mix).
    pub fn mixes_natural_loss(&self) -> bool {
        matches!(self, Method::Ibp | Method::CrownIbp)
    }

    /// How fresh networks for this method are initialised (IBP-family: Shi et al.).
    pub fn initialization(&self) -> crate::model::Initialization {
        if self.is_certified() {
            crate::model::Initialization::Ibp
        } else {
            crate::model::Initialization::Default
        }
    }

    /// The configuration keys this method reads.
    pub fn keys(&self) -> Vec<&'static str> {
        let mut keys = COMMON_KEYS.to_vec();
        let specific: &[&str] = match self {
            Method::Standard => &[],
            Method::Pgd => &[
                "pgd_steps",
                "pgd_alpha",
                "train_eps_factor",
                "warm_up_fraction",
                "ramp_up_fraction",
            ],
            Method::Ibp => KAPPA_KEYS,
            Method::CrownIbp => &["start_kappa", "end_kappa", "end_beta"],
            Method::Sabr => &[
                "subselection_ratio",
                "pgd_steps",
                "pgd_alpha",
                "pgd_eps_factor",
            ],
            Method::Taps => &[
                "pgd_steps",
                "pgd_alpha",
                "gradient_expansion_alpha",
                "block_split_point",
            ],
            Method::Staps => &[
                "pgd_steps",
                "pgd_alpha",
                "gradient_expansion_alpha",
                "block_split_point",
                "sabr_subselection_ratio",
                "sabr_pgd_steps",
                "sabr_pgd_alpha",
                "sabr_pgd_eps_factor",
            ],
            Method::MtlIbp => &[
                "mtl_ibp_alpha",
                "pgd_steps",
                "pgd_alpha",
                "mtl_ibp_eps_factor",
            ],
        };
        if self.is_certified() {
            keys.extend(CERTIFIED_KEYS);
        }
        keys.extend(specific);
        keys
    }
}

const COMMON_KEYS: &[&str] = &[
    "learning_rate",
    "optimizer",
    "weight_decay",
    "lr_decay_factor",
    "lr_decay_fraction_1",
    "lr_decay_fraction_2",
    "l1_reg_weight",
    "batch_size",
    "grad_clip_norm",
];

const CERTIFIED_KEYS: &[&str] = &[
    "warm_up_fraction",
    "ramp_up_fraction",
    "train_eps_factor",
    "shi_reg_weight",
];

/// The natural/robust mix of the methods that [`Method::mixes_natural_loss`].
const KAPPA_KEYS: &[&str] = &["start_kappa", "end_kappa"];

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Method {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase().replace('-', "_");
        Method::ALL
            .into_iter()
            .find(|m| m.name() == wanted)
            .ok_or_else(|| TrainError::UnknownMethod {
                name: s.to_string(),
                known: Method::ALL.map(|m| m.name()).join(", "),
            })
    }
}

/// Parameter update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// Adam (Kingma & Ba) with L2-free updates.
    Adam,
    /// Adam with decoupled weight decay (Loshchilov & Hutter).
    Adamw,
    /// Rectified Adam (Liu et al.): no adaptive step until the variance estimate is reliable.
    Radam,
}

/// Every hyperparameter of every method (a method reads the subset [`Method::keys`] lists).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Base learning rate (CTBench's 5e-4 is for ~16k GPU steps; at CPU budgets of 100–5,000
    /// steps 1e-2 learns where 5e-4 stays at chance, see `docs/training.md`).
    pub learning_rate: f64,
    /// Update rule.
    pub optimizer: OptimizerKind,
    /// Decoupled weight decay of AdamW.
    pub weight_decay: f64,
    /// Learning-rate multiplier at each of the two decays (CTBench: 0.2).
    pub lr_decay_factor: f64,
    /// First decay at `(warm_up_fraction + ramp_up_fraction + lr_decay_fraction_1)·epochs`.
    pub lr_decay_fraction_1: f64,
    /// Second decay `lr_decay_fraction_2·epochs` after the first.
    pub lr_decay_fraction_2: f64,
    /// Weight of the L1 penalty on conv and linear weights.
    pub l1_reg_weight: f64,
    /// Samples per batch.
    pub batch_size: usize,
    /// Global L2 norm gradients are clipped to (0: no clipping).
    pub grad_clip_norm: f64,
    /// Share of the epochs trained naturally (ε = 0) before the ramp.
    pub warm_up_fraction: f64,
    /// Share of the epochs over which ε rises to its training value.
    pub ramp_up_fraction: f64,
    /// Training ε as a multiple of the certified ε.
    pub train_eps_factor: f64,
    /// Weight of Shi et al.'s regulariser during the ramp.
    pub shi_reg_weight: f64,
    /// Natural-loss weight κ at the start of the ramp.
    pub start_kappa: f64,
    /// Natural-loss weight κ from the end of the ramp on.
    pub end_kappa: f64,
    /// CROWN-IBP weight β at the end of the ramp (it starts at 1).
    pub end_beta: f64,
    /// SABR: radius of the propagated box as a share λ of ε.
    pub subselection_ratio: f64,
    /// PGD steps of the method's attack.
    pub pgd_steps: usize,
    /// PGD step size as a multiple of the attack radius.
    pub pgd_alpha: f64,
    /// SABR: attack radius as a multiple of ε.
    pub pgd_eps_factor: f64,
    /// TAPS: gradient expansion α of the TAPS loss.
    pub gradient_expansion_alpha: f64,
    /// TAPS: where the extractor ends, as a share of the network's ReLU blocks.
    pub block_split_point: f64,
    /// STAPS: SABR's λ.
    pub sabr_subselection_ratio: f64,
    /// STAPS: SABR's PGD steps.
    pub sabr_pgd_steps: usize,
    /// STAPS: SABR's PGD step size factor.
    pub sabr_pgd_alpha: f64,
    /// STAPS: SABR's attack radius factor.
    pub sabr_pgd_eps_factor: f64,
    /// MTL-IBP: weight α of the IBP loss in `α·L_IBP + (1−α)·L_PGD`.
    pub mtl_ibp_alpha: f64,
    /// MTL-IBP: attack radius as a multiple of ε.
    pub mtl_ibp_eps_factor: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            learning_rate: 1e-2,
            optimizer: OptimizerKind::Adam,
            weight_decay: 1e-2,
            lr_decay_factor: 0.2,
            lr_decay_fraction_1: 0.25,
            lr_decay_fraction_2: 0.1,
            l1_reg_weight: 1e-6,
            batch_size: 256,
            grad_clip_norm: 10.0,
            warm_up_fraction: 0.0,
            ramp_up_fraction: 0.6,
            train_eps_factor: 1.0,
            shi_reg_weight: 0.5,
            start_kappa: 1.0,
            end_kappa: 0.0,
            end_beta: 0.0,
            subselection_ratio: 0.4,
            pgd_steps: 8,
            pgd_alpha: 0.5,
            pgd_eps_factor: 1.0,
            gradient_expansion_alpha: 5.0,
            block_split_point: 0.5,
            sabr_subselection_ratio: 0.4,
            sabr_pgd_steps: 8,
            sabr_pgd_alpha: 0.5,
            sabr_pgd_eps_factor: 1.0,
            mtl_ibp_alpha: 0.02,
            mtl_ibp_eps_factor: 1.0,
        }
    }
}

impl TrainConfig {
    /// The default configuration of `method`: [`TrainConfig::default`] with the settings its
    /// authors and CTRAIN give the method itself (PGD training: 7 steps; MTL-IBP: one PGD step
    /// of 10× the radius, which lands on a vertex of the box). `spaces/<method>.yaml` has the
    /// same defaults (a test checks it).
    pub fn defaults(method: Method) -> TrainConfig {
        let base = TrainConfig::default();
        match method {
            Method::Pgd => TrainConfig {
                pgd_steps: 7,
                ..base
            },
            Method::MtlIbp => TrainConfig {
                pgd_steps: 1,
                pgd_alpha: 10.0,
                ..base
            },
            _ => base,
        }
    }

    /// Builds a configuration for `method` from `key → value` pairs over its defaults.
    ///
    /// Keys the method does not read are an error naming the key and listing the valid ones,
    /// so a typo never silently trains with a default.
    pub fn from_map(
        method: Method,
        values: &BTreeMap<String, serde_json::Value>,
    ) -> Result<TrainConfig, TrainError> {
        let valid = method.keys();
        for key in values.keys() {
            if !valid.contains(&key.as_str()) {
                return Err(TrainError::Config {
                    key: key.clone(),
                    problem: format!(
                        "not a hyperparameter of {method} (valid: {})",
                        valid.join(", ")
                    ),
                });
            }
        }
        for (key, value) in values {
            // YAML's `.nan`/`.inf` and an empty value all arrive as JSON null.
            if value.is_null() {
                return Err(TrainError::Config {
                    key: key.clone(),
                    problem: "has no value, or one that is not a finite number (NaN, infinity)"
                        .into(),
                });
            }
        }
        let defaults = serde_json::to_value(TrainConfig::defaults(method))
            .map_err(|e| TrainError::internal(e.to_string()))?;
        let with = |entries: &mut dyn Iterator<Item = (&String, &serde_json::Value)>| {
            let mut merged = defaults.clone();
            if let serde_json::Value::Object(map) = &mut merged {
                for (key, value) in entries {
                    map.insert(key.clone(), value.clone());
                }
            }
            serde_json::from_value::<TrainConfig>(merged)
        };
        // Check keys one at a time so a type error names its key (serde's message does not).
        for (key, value) in values {
            with(&mut std::iter::once((key, value))).map_err(|e| TrainError::Config {
                key: key.clone(),
                problem: e.to_string(),
            })?;
        }
        let config = with(&mut values.iter()).map_err(|e| TrainError::internal(e.to_string()))?;
        config.validate()?;
        if values.contains_key("weight_decay") && config.optimizer != OptimizerKind::Adamw {
            return Err(TrainError::Config {
                key: "weight_decay".into(),
                problem: format!(
                    "only AdamW uses weight decay, and the optimizer is {}: set optimizer to \
                     adamw or leave weight_decay out",
                    serde_json::to_value(config.optimizer)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                ),
            });
        }
        Ok(config)
    }

    /// Parses `key=value` (numbers, `true`/`false`, or text) into a map entry.
    pub fn parse_assignment(text: &str) -> Result<(String, serde_json::Value), TrainError> {
        let (key, value) = text.split_once('=').ok_or_else(|| TrainError::Config {
            key: text.to_string(),
            problem: "expected key=value".into(),
        })?;
        let value = value.trim();
        let key = key.trim();
        let parsed = if let Ok(i) = value.parse::<i64>() {
            serde_json::Value::from(i)
        } else if let Ok(f) = value.parse::<f64>() {
            if !f.is_finite() {
                return Err(TrainError::Config {
                    key: key.to_string(),
                    problem: format!("`{value}` is not a finite number"),
                });
            }
            serde_json::Value::from(f)
        } else if let Ok(b) = value.parse::<bool>() {
            serde_json::Value::from(b)
        } else {
            serde_json::Value::from(value)
        };
        Ok((key.to_string(), parsed))
    }

    /// Checks ranges that would make training meaningless or crash.
    pub fn validate(&self) -> Result<(), TrainError> {
        let check = |key: &str, ok: bool, problem: &str| {
            if ok {
                Ok(())
            } else {
                Err(TrainError::Config {
                    key: key.into(),
                    problem: problem.into(),
                })
            }
        };
        // Non-finite floats serialise as null: name the first one.
        if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(self)
            && let Some((key, _)) = map.iter().find(|(_, v)| v.is_null())
        {
            return check(key, false, "must be a finite number");
        }
        let unit = |x: f64| (0.0..=1.0).contains(&x);
        check(
            "learning_rate",
            self.learning_rate > 0.0 && self.learning_rate.is_finite(),
            "must be > 0",
        )?;
        check("batch_size", self.batch_size > 0, "must be ≥ 1")?;
        check("lr_decay_factor", self.lr_decay_factor > 0.0, "must be > 0")?;
        check("weight_decay", self.weight_decay >= 0.0, "must be ≥ 0")?;
        check("l1_reg_weight", self.l1_reg_weight >= 0.0, "must be ≥ 0")?;
        check(
            "grad_clip_norm",
            self.grad_clip_norm >= 0.0,
            "must be ≥ 0 (0 disables clipping)",
        )?;
        check(
            "warm_up_fraction",
            unit(self.warm_up_fraction),
            "must be in [0, 1]",
        )?;
        check(
            "ramp_up_fraction",
            unit(self.ramp_up_fraction),
            "must be in [0, 1]",
        )?;
        check(
            "ramp_up_fraction",
            self.warm_up_fraction + self.ramp_up_fraction <= 1.0 + 1e-9,
            "warm_up_fraction + ramp_up_fraction must not exceed 1",
        )?;
        check(
            "train_eps_factor",
            self.train_eps_factor > 0.0,
            "must be > 0",
        )?;
        for (key, value) in [
            ("start_kappa", self.start_kappa),
            ("end_kappa", self.end_kappa),
            ("end_beta", self.end_beta),
            ("shi_reg_weight", self.shi_reg_weight),
            ("block_split_point", self.block_split_point),
            ("mtl_ibp_alpha", self.mtl_ibp_alpha),
        ] {
            check(key, unit(value), "must be in [0, 1]")?;
        }
        for (key, value) in [
            ("subselection_ratio", self.subselection_ratio),
            ("sabr_subselection_ratio", self.sabr_subselection_ratio),
        ] {
            check(key, value > 0.0 && value <= 1.0, "must be in (0, 1]")?;
        }
        Ok(())
    }
}
