//! What a study is: the study file (`studies/*.yaml`) merged with command-line overrides.

use super::StudyError;
use super::fidelity::{Fidelity, FidelityKind, RungScoring};
use crate::data::DatasetName;
use crate::model::BUILTIN_ARCHITECTURES;
use crate::space::Space;
use crate::train::Method;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How trials are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ObjectiveKind {
    /// Maximise `w_nat·natural + w_adv·adversarial + w_cert·certified` (CTRAIN's default).
    #[default]
    Weighted,
    /// Maximise natural and certified accuracy jointly (Pareto front, ParEGO scalarisations).
    Pareto,
}

/// Weights of the three accuracies in the weighted objective.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectiveWeights {
    /// Weight of natural accuracy.
    #[serde(default = "one")]
    pub natural: f64,
    /// Weight of adversarial (PGD) accuracy.
    #[serde(default = "one")]
    pub adversarial: f64,
    /// Weight of certified accuracy.
    #[serde(default = "one")]
    pub certified: f64,
}

fn one() -> f64 {
    1.0
}

impl Default for ObjectiveWeights {
    fn default() -> Self {
        ObjectiveWeights {
            natural: 1.0,
            adversarial: 1.0,
            certified: 1.0,
        }
    }
}

impl ObjectiveWeights {
    /// Parses `nat=1,adv=1,cert=2` (also `natural=`, `adversarial=`, `certified=`).
    pub fn parse(text: &str) -> Result<ObjectiveWeights, StudyError> {
        let mut weights = ObjectiveWeights {
            natural: 0.0,
            adversarial: 0.0,
            certified: 0.0,
        };
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').ok_or_else(|| {
                StudyError::invalid("--weights", format!("`{part}` is not key=value"))
            })?;
            let value: f64 = value.trim().parse().map_err(|_| {
                StudyError::invalid("--weights", format!("`{value}` is not a number"))
            })?;
            match key.trim() {
                "nat" | "natural" => weights.natural = value,
                "adv" | "adversarial" => weights.adversarial = value,
                "cert" | "certified" => weights.certified = value,
                other => {
                    return Err(StudyError::invalid(
                        "--weights",
                        format!("unknown key `{other}` (use nat, adv, cert)"),
                    ));
                }
            }
        }
        weights.validate("--weights")?;
        Ok(weights)
    }

    /// Checks that every weight is finite and ≥ 0 and that one is positive; `field` names
    /// where the weights came from (`--weights`, or the study file's `weights`).
    pub fn validate(&self, field: &str) -> Result<(), StudyError> {
        for (key, value) in [
            ("natural", self.natural),
            ("adversarial", self.adversarial),
            ("certified", self.certified),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(StudyError::invalid(
                    field,
                    format!("weight {key} = {value} must be finite and ≥ 0"),
                ));
            }
        }
        if self.natural + self.adversarial + self.certified <= 0.0 {
            return Err(StudyError::invalid(field, "all weights are zero".into()));
        }
        Ok(())
    }
}

pub use crate::opt::SurrogateKind;

/// A study file: every field optional so the command line can fill or override it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyFile {
    /// Study name (default derived from method, dataset, architecture and ε).
    pub name: Option<String>,
    /// Certified-training method to tune.
    pub method: Option<String>,
    /// Dataset name: mnist, fashion-mnist or cifar10.
    pub dataset: Option<String>,
    /// Directory with the dataset files.
    pub data_dir: Option<PathBuf>,
    /// Builtin architecture.
    pub arch: Option<String>,
    /// ℓ∞ radius to certify.
    pub eps: Option<f64>,
    /// Epochs per trial.
    pub epochs: Option<usize>,
    /// Training images per trial (default: all of the training split).
    pub train_samples: Option<usize>,
    /// Validation images scored per trial.
    pub val_samples: Option<usize>,
    /// Number of trials (default 20, or no limit when `time_budget` is set).
    pub trials: Option<usize>,
    /// Wall-clock budget of the whole study, e.g. `2h`, `45m`.
    pub time_budget: Option<String>,
    /// Wall-clock limit of one trial, e.g. `20m`.
    pub trial_timeout: Option<String>,
    /// Surrogate model (default: the GP on mostly numeric spaces, see
    /// [`SurrogateKind::for_space`]).
    pub surrogate: Option<SurrogateKind>,
    /// Objective kind.
    pub objective: Option<ObjectiveKind>,
    /// Weights of the weighted objective.
    pub weights: Option<ObjectiveWeights>,
    /// A YAML configuration to evaluate first (the user's default).
    pub default_config: Option<PathBuf>,
    /// Skip the space's default configuration in the initial design.
    pub no_default: Option<bool>,
    /// Seed for data split, design, initialisation and batch order.
    pub seed: Option<u64>,
    /// Multi-fidelity scheme: none, successive-halving or hyperband.
    pub fidelity: Option<FidelityKind>,
    /// Epochs of the smallest rung of a multi-fidelity study.
    pub min_epochs: Option<usize>,
    /// Reduction factor η of a multi-fidelity study.
    pub eta: Option<usize>,
    /// How a multi-fidelity study scores rungs below the full budget (default quick).
    pub rung_scoring: Option<RungScoring>,
    /// Lowest acceptable natural accuracy in [0, 1]: trials below it are infeasible.
    pub min_natural: Option<f64>,
    /// Lowest acceptable certified accuracy in [0, 1]: trials below it are infeasible.
    pub min_certified: Option<f64>,
}

impl StudyFile {
    /// Reads a study file, naming the file and the problem on failure.
    pub fn load(path: &Path) -> Result<StudyFile, StudyError> {
        let file_error = |source: super::Cause| StudyError::File {
            path: path.to_path_buf(),
            source,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_error(e.into()))?;
        let file: StudyFile = serde_saphyr::from_str(&text).map_err(|e| file_error(e.into()))?;
        // The file's paths mean what they say wherever cthpo runs: relative to the file.
        let base = path.parent().unwrap_or(Path::new(""));
        Ok(StudyFile {
            data_dir: file.data_dir.map(|p| absolute_path(&p, base)),
            default_config: file.default_config.map(|p| absolute_path(&p, base)),
            ..file
        })
    }

    /// Fields set here replace those of `base` (command line over study file).
    pub fn over(self, base: StudyFile) -> StudyFile {
        StudyFile {
            name: self.name.or(base.name),
            method: self.method.or(base.method),
            dataset: self.dataset.or(base.dataset),
            data_dir: self.data_dir.or(base.data_dir),
            arch: self.arch.or(base.arch),
            eps: self.eps.or(base.eps),
            epochs: self.epochs.or(base.epochs),
            train_samples: self.train_samples.or(base.train_samples),
            val_samples: self.val_samples.or(base.val_samples),
            trials: self.trials.or(base.trials),
            time_budget: self.time_budget.or(base.time_budget),
            trial_timeout: self.trial_timeout.or(base.trial_timeout),
            surrogate: self.surrogate.or(base.surrogate),
            objective: self.objective.or(base.objective),
            weights: self.weights.or(base.weights),
            default_config: self.default_config.or(base.default_config),
            no_default: self.no_default.or(base.no_default),
            seed: self.seed.or(base.seed),
            fidelity: self.fidelity.or(base.fidelity),
            min_epochs: self.min_epochs.or(base.min_epochs),
            eta: self.eta.or(base.eta),
            rung_scoring: self.rung_scoring.or(base.rung_scoring),
            min_natural: self.min_natural.or(base.min_natural),
            min_certified: self.min_certified.or(base.min_certified),
        }
    }
}

/// `path` as an absolute path: `~/…` under the home directory, a relative path under `base`
/// (itself taken from the working directory when relative). Nothing needs to exist.
pub fn absolute_path(path: &Path, base: &Path) -> PathBuf {
    let path = match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => base.join(path),
    };
    std::path::absolute(&path).unwrap_or(path)
}

/// The trial budget of a study given neither `trials` nor `time_budget`.
pub const DEFAULT_TRIALS: usize = 20;

/// A fully resolved study: what `cthpo run` executes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudySpec {
    /// Study name, the key of its record in the store.
    pub name: String,
    /// Certified-training method tuned.
    pub method: String,
    /// Dataset name.
    pub dataset: String,
    /// Directory with the dataset files, if not the default source.
    pub data_dir: Option<PathBuf>,
    /// Builtin architecture.
    pub arch: String,
    /// ℓ∞ radius certified.
    pub eps: f64,
    /// Epochs per trial.
    pub epochs: usize,
    /// Training images per trial (None: the whole training split).
    pub train_samples: Option<usize>,
    /// Validation images scored per trial.
    pub val_samples: usize,
    /// Trial budget (promotions to a higher rung count as trials); `None`: only the time
    /// budget limits the study.
    pub trials: Option<usize>,
    /// Study wall-clock budget.
    pub time_budget: Option<Duration>,
    /// Per-trial wall-clock limit.
    pub trial_timeout: Option<Duration>,
    /// Surrogate model.
    pub surrogate: SurrogateKind,
    /// Objective kind.
    pub objective: ObjectiveKind,
    /// Weights of the weighted objective.
    pub weights: ObjectiveWeights,
    /// The user's configuration evaluated first, if any.
    pub default_config: Option<PathBuf>,
    /// Whether the space's default configuration is left out of the initial design.
    pub no_default: bool,
    /// Seed of everything random in the study.
    pub seed: u64,
    /// Multi-fidelity settings (none in studies stored before they existed).
    #[serde(default)]
    pub fidelity: Fidelity,
    /// Lowest acceptable natural accuracy (a constraint on results), if any.
    #[serde(default)]
    pub min_natural: Option<f64>,
    /// Lowest acceptable certified accuracy (a constraint on results), if any.
    #[serde(default)]
    pub min_certified: Option<f64>,
}

impl StudySpec {
    /// Fills defaults and validates; `method` must be given by the file or the command line.
    pub fn resolve(file: StudyFile) -> Result<StudySpec, StudyError> {
        let method = file.method.ok_or_else(|| {
            StudyError::invalid(
                "method",
                "no method given: pass --method or set `method:` in the study file".into(),
            )
        })?;
        // Canonical names, so that `fmnist` and `fashion-mnist` are one study.
        let method = method
            .parse::<Method>()
            .map_err(|e| StudyError::setting("method", e))?
            .name()
            .to_string();
        let dataset = canonical_dataset(file.dataset.as_deref().unwrap_or("mnist"))?;
        let arch = file.arch.unwrap_or_else(|| "cnn-small".into());
        if !BUILTIN_ARCHITECTURES.contains(&arch.as_str()) {
            return Err(StudyError::invalid(
                "arch",
                format!(
                    "unknown architecture `{arch}` (known: {})",
                    BUILTIN_ARCHITECTURES.join(", ")
                ),
            ));
        }
        let eps = file.eps.unwrap_or(0.1);
        if !(eps > 0.0 && eps <= 1.0) {
            return Err(StudyError::invalid(
                "eps",
                format!("ε = {eps} must be in (0, 1]"),
            ));
        }
        let epochs = file.epochs.unwrap_or(5);
        if epochs == 0 {
            return Err(StudyError::invalid("epochs", "must be at least 1".into()));
        }
        // A time budget alone limits the study by time only: a trial cap the user never set
        // would end a multi-fidelity study (whose promotions are trials) long before its time.
        let trials = match (file.trials, &file.time_budget) {
            (Some(0), _) => {
                return Err(StudyError::invalid("trials", "must be at least 1".into()));
            }
            (Some(trials), _) => Some(trials),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TRIALS),
        };
        let val_samples = file.val_samples.unwrap_or(1000);
        if val_samples == 0 {
            return Err(StudyError::invalid(
                "val_samples",
                "must be at least 1".into(),
            ));
        }
        if file.train_samples == Some(0) {
            return Err(StudyError::invalid(
                "train_samples",
                "must be at least 1 (leave it out to train on the whole training split)".into(),
            ));
        }
        let surrogate = match file.surrogate {
            Some(surrogate) => surrogate,
            None => SurrogateKind::for_space(
                &Space::builtin(&method).map_err(|e| StudyError::setting("method", e))?,
            ),
        };
        let defaults = Fidelity::default();
        let kind = file.fidelity.unwrap_or(defaults.kind);
        let fidelity = Fidelity {
            kind,
            min_epochs: file.min_epochs.unwrap_or(defaults.min_epochs),
            eta: file.eta.unwrap_or(defaults.eta),
            rung_scoring: file.rung_scoring.unwrap_or(if kind == FidelityKind::None {
                RungScoring::Full
            } else {
                RungScoring::Reached
            }),
        };
        fidelity.validate(epochs)?;
        let weights = file.weights.unwrap_or_default();
        weights.validate("weights")?;
        let time_budget = file
            .time_budget
            .as_deref()
            .map(|t| parse_duration(t).map_err(|p| StudyError::invalid("time_budget", p)))
            .transpose()?;
        let trial_timeout = file
            .trial_timeout
            .as_deref()
            .map(|t| parse_duration(t).map_err(|p| StudyError::invalid("trial_timeout", p)))
            .transpose()?;
        let name = match file.name {
            Some(name) => {
                if name.trim().is_empty() {
                    return Err(StudyError::invalid("name", "must not be blank".into()));
                }
                // The name is a folder of the study directory (trial checkpoints).
                crate::store::validate_study_name(&name)
                    .map_err(|e| StudyError::setting("name", e))?;
                name
            }
            None => default_study_name(&method, &dataset, &arch, eps),
        };
        for (field, bound) in [
            ("min_natural", file.min_natural),
            ("min_certified", file.min_certified),
        ] {
            if let Some(bound) = bound
                && !(0.0..=1.0).contains(&bound)
            {
                return Err(StudyError::invalid(
                    field,
                    format!("{bound} is not an accuracy in [0, 1]"),
                ));
            }
        }
        Ok(StudySpec {
            name,
            method,
            dataset,
            data_dir: file.data_dir,
            arch,
            eps,
            epochs,
            train_samples: file.train_samples,
            val_samples,
            trials,
            time_budget,
            trial_timeout,
            surrogate,
            objective: file.objective.unwrap_or_default(),
            weights,
            default_config: file.default_config,
            no_default: file.no_default.unwrap_or(false),
            seed: file.seed.unwrap_or(0),
            fidelity,
            min_natural: file.min_natural,
            min_certified: file.min_certified,
        })
    }
}

impl StudySpec {
    /// The constraint values of a trial's accuracies, in Optuna's convention (≤ 0 feasible):
    /// `bound − accuracy` for each bound set (natural first), or `None` without bounds.
    pub fn constraint_values(&self, natural: f64, certified: f64) -> Option<Vec<f64>> {
        let values: Vec<f64> = [
            self.min_natural.map(|bound| bound - natural),
            self.min_certified.map(|bound| bound - certified),
        ]
        .into_iter()
        .flatten()
        .collect();
        (!values.is_empty()).then_some(values)
    }
}

/// The canonical name of a dataset (`fmnist` → `fashion-mnist`), refusing unknown ones.
pub fn canonical_dataset(name: &str) -> Result<String, StudyError> {
    name.parse::<DatasetName>()
        .map(|d| d.as_str().to_string())
        .map_err(|e| StudyError::setting("dataset", e))
}

/// The name a study gets when none is given: running the same command twice continues it.
pub fn default_study_name(method: &str, dataset: &str, arch: &str, eps: f64) -> String {
    format!("{method}-{dataset}-{arch}-eps{eps}")
}

/// Parses `90s`, `45m`, `2h`, `1h30m`, `1d`, `500ms` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return if seconds.is_finite() && seconds > 0.0 {
            within_limit(text, seconds)
        } else {
            Err(format!("`{text}` must be a positive duration"))
        };
    }
    let mut total = 0.0;
    let mut number = String::new();
    let mut chars = text.chars().peekable();
    while let Some(ch) = chars.next() {
        if ch.is_ascii_digit() || ch == '.' {
            number.push(ch);
            continue;
        }
        let unit = match ch {
            's' => 1.0,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                0.001
            }
            'm' => 60.0,
            'h' => 3600.0,
            'd' => 86400.0,
            _ => {
                return Err(format!(
                    "`{text}`: unknown unit `{ch}` (use ms, s, m, h, d)"
                ));
            }
        };
        let value: f64 = number
            .parse()
            .map_err(|_| format!("`{text}` is not a duration like 90s, 45m, 2h or 1h30m"))?;
        total += value * unit;
        number.clear();
    }
    if !number.is_empty() || total <= 0.0 {
        return Err(format!(
            "`{text}` is not a duration like 90s, 45m, 2h or 1h30m"
        ));
    }
    within_limit(text, total)
}

/// The longest budget or time limit accepted: 100 years (longer ones cannot be stored).
const MAX_DURATION_SECONDS: f64 = 100.0 * 365.25 * 86400.0;

fn within_limit(text: &str, seconds: f64) -> Result<Duration, String> {
    if seconds > MAX_DURATION_SECONDS {
        return Err(format!("`{text}` is longer than 100 years"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ibp(file: StudyFile) -> StudySpec {
        StudySpec::resolve(StudyFile {
            method: Some("ibp".into()),
            ..file
        })
        .unwrap()
    }

    #[test]
    fn a_time_budget_without_trials_is_the_only_limit() {
        assert_eq!(ibp(StudyFile::default()).trials, Some(DEFAULT_TRIALS));
        let timed = ibp(StudyFile {
            time_budget: Some("15m".into()),
            ..StudyFile::default()
        });
        assert_eq!(timed.trials, None);
        assert_eq!(timed.time_budget, Some(Duration::from_secs(900)));
        let both = ibp(StudyFile {
            time_budget: Some("15m".into()),
            trials: Some(7),
            ..StudyFile::default()
        });
        assert_eq!(both.trials, Some(7));
        // Settings stored before the limit could be absent still load.
        let mut stored = serde_json::to_value(&both).unwrap();
        stored["trials"] = 20.into();
        let stored: StudySpec = serde_json::from_value(stored).unwrap();
        assert_eq!(stored.trials, Some(20));
    }

    #[test]
    fn the_surrogate_follows_the_space_unless_chosen() {
        assert_eq!(ibp(StudyFile::default()).surrogate, SurrogateKind::Gp);
        let forest = ibp(StudyFile {
            surrogate: Some(SurrogateKind::Rf),
            ..StudyFile::default()
        });
        assert_eq!(forest.surrogate, SurrogateKind::Rf);
    }

    #[test]
    fn multi_fidelity_studies_score_rungs_at_the_reached_eps_by_default() {
        assert_eq!(
            ibp(StudyFile::default()).fidelity.rung_scoring,
            RungScoring::Full
        );
        let hyperband = StudyFile {
            fidelity: Some(FidelityKind::Hyperband),
            epochs: Some(9),
            ..StudyFile::default()
        };
        assert_eq!(
            ibp(hyperband.clone()).fidelity.rung_scoring,
            RungScoring::Reached
        );
        let quick = ibp(StudyFile {
            rung_scoring: Some(RungScoring::Quick),
            ..hyperband.clone()
        });
        assert_eq!(quick.fidelity.rung_scoring, RungScoring::Quick);
        let full = ibp(StudyFile {
            rung_scoring: Some(RungScoring::Full),
            ..hyperband
        });
        assert_eq!(full.fidelity.rung_scoring, RungScoring::Full);
        // Quick scoring without rungs is refused, naming the setting.
        let refused = StudySpec::resolve(StudyFile {
            method: Some("ibp".into()),
            rung_scoring: Some(RungScoring::Quick),
            ..StudyFile::default()
        })
        .unwrap_err();
        assert!(refused.to_string().contains("rung_scoring"), "{refused}");
    }

    #[test]
    fn a_study_file_names_every_rung_scoring() {
        for (text, scoring) in [
            ("reached", RungScoring::Reached),
            ("share", RungScoring::Share),
            ("quick", RungScoring::Quick),
            ("full", RungScoring::Full),
        ] {
            let yaml =
                format!("method: ibp\nfidelity: hyperband\nepochs: 9\nrung_scoring: {text}\n");
            let file: StudyFile = serde_saphyr::from_str(&yaml).unwrap();
            assert_eq!(ibp(file).fidelity.rung_scoring, scoring, "{text}");
        }
    }
}
