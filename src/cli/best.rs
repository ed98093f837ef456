//! `cthpo best`: exports a study's best configuration (and checkpoint).

use crate::store::{self, StoredTrial, attrs};
use anyhow::{Context, bail};
use clap::Args;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Arguments of `cthpo best`.
#[derive(Debug, Args)]
pub struct BestArgs {
    /// Study name.
    pub name: String,
    /// Study database and directory.
    #[command(flatten)]
    pub place: super::StorageArgs,
    /// Write the best configuration to this YAML file (name: value); without it, print it.
    #[arg(long, value_name = "FILE")]
    pub export: Option<PathBuf>,
    /// Copy the best trial's checkpoint folder to DIR (which must not exist or be empty).
    #[arg(long, value_name = "DIR")]
    pub checkpoint: Option<PathBuf>,
}

/// Params in stored order, serialised as a YAML map.
struct OrderedMap<'a>(&'a [(String, Value)]);

impl Serialize for OrderedMap<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// The best trial's params as YAML (external values: choices as themselves, ints as ints),
/// preceded by a comment naming the study, trial and accuracies.
fn config_yaml(study: &str, best: &StoredTrial) -> anyhow::Result<String> {
    let params = best.param_values();
    let body = if params.is_empty() {
        "{}\n".to_string()
    } else {
        serde_saphyr::to_string(&OrderedMap(&params))
            .context("cannot write the configuration as YAML")?
    };
    // Check the text reads back to the same values before anyone relies on it.
    let back: Value = serde_saphyr::from_str(&body).context("exported YAML does not parse")?;
    for (name, value) in &params {
        let same = match (back.get(name), value) {
            (Some(Value::Number(a)), Value::Number(b)) => a.as_f64() == b.as_f64(),
            (Some(a), b) => a == b,
            (None, _) => false,
        };
        if !same {
            bail!("exported YAML does not round-trip param {name:?} ({value})");
        }
    }
    let mut header = format!(
        "# best configuration of study {study:?}: trial #{}\n",
        best.number
    );
    let accuracies: Vec<String> = [
        ("natural", attrs::NATURAL_ACCURACY),
        ("adversarial", attrs::ADVERSARIAL_ACCURACY),
        ("certified", attrs::CERTIFIED_ACCURACY),
    ]
    .iter()
    .filter_map(|(label, key)| best.user_attr_f64(key).map(|v| format!("{label} {v:.4}")))
    .collect();
    if !accuracies.is_empty() {
        header += &format!("# accuracy: {}\n", accuracies.join(", "));
    }
    Ok(header + &body)
}

/// Copies a folder tree; refuses to write into a non-empty destination.
fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<u64> {
    if to.exists() {
        let mut entries = std::fs::read_dir(to)
            .with_context(|| format!("{} exists and is not a readable folder", to.display()))?;
        if entries.next().is_some() {
            bail!("{} is not empty; choose a new folder", to.display());
        }
    }
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    let mut bytes = 0;
    for entry in
        std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))?
    {
        let entry = entry.with_context(|| format!("cannot read {}", from.display()))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        if src.is_dir() {
            bytes += copy_tree(&src, &dst)?;
        } else {
            bytes += std::fs::copy(&src, &dst)
                .with_context(|| format!("cannot copy {} to {}", src.display(), dst.display()))?;
        }
    }
    Ok(bytes)
}

/// Runs `cthpo best`.
pub fn run(args: BestArgs) -> anyhow::Result<()> {
    let store = args.place.open_existing()?;
    let info = store.require_study(&args.name)?;
    let trials = store
        .trials(info.id)
        .with_context(|| format!("cannot read the trials of study {:?}", args.name))?;
    let Some(best) = store::best_trial(&trials, &info.directions) else {
        let complete = trials
            .iter()
            .filter(|t| t.state == store::TrialState::Complete)
            .count();
        if complete > 0 {
            bail!(
                "none of the {complete} completed trials of study {:?} meets the study's \
                 constraints (--min-natural / --min-certified)",
                args.name
            );
        }
        bail!(
            "study {:?} has no completed trial yet ({} trials in {})",
            args.name,
            trials.len(),
            store.location()
        );
    };
    // Check the checkpoint request before writing anything.
    let checkpoint = match &args.checkpoint {
        None => None,
        Some(to) => {
            let Some(stored) = best.user_attr_str(attrs::CHECKPOINT_PATH) else {
                bail!(
                    "trial #{} of study {:?} records no {} attribute",
                    best.number,
                    args.name,
                    attrs::CHECKPOINT_PATH
                );
            };
            let from = store.resolve_checkpoint_path(stored);
            if !from.is_dir() {
                let on_host = match store::split_checkpoint_host(stored) {
                    (Some(host), _) => format!(" on this machine (it was written on {host})"),
                    (None, _) => String::new(),
                };
                bail!(
                    "checkpoint folder {} of trial #{} does not exist{on_host}",
                    from.display(),
                    best.number
                );
            }
            if to.exists() && std::fs::read_dir(to).map_or(true, |mut d| d.next().is_some()) {
                bail!(
                    "{} exists and is not an empty folder; choose a new one",
                    to.display()
                );
            }
            Some((from, to))
        }
    };
    let yaml = config_yaml(&info.name, best)?;
    match &args.export {
        Some(path) => {
            std::fs::write(path, &yaml)
                .with_context(|| format!("cannot write {}", path.display()))?;
            outln!(
                "wrote the configuration of trial #{} to {}",
                best.number,
                path.display()
            );
        }
        None => out!("{yaml}"),
    }
    if let Some((from, to)) = checkpoint {
        let bytes = copy_tree(&from, to)?;
        let message = format!(
            "copied checkpoint {} to {} ({bytes} bytes)",
            from.display(),
            to.display()
        );
        // Keep stdout pure YAML when the configuration is printed there.
        if args.export.is_some() {
            outln!("{message}");
        } else {
            eprintln!("{message}");
        }
    }
    Ok(())
}
