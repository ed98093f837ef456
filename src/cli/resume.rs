//! `cthpo resume`: continues a stored study by name with the settings it was started with.

use crate::store::{DEFAULT_STUDY_DIR, Store};
use crate::study::{SPEC_ATTRIBUTE, StudySpec};
use anyhow::{Context, bail};
use clap::Args;
use std::path::PathBuf;

/// Arguments of `cthpo resume`.
#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// The study to continue.
    name: String,
    /// Study directory holding cthpo.db.
    #[arg(long, default_value = DEFAULT_STUDY_DIR)]
    dir: PathBuf,
    /// Raise the trial budget.
    #[arg(long)]
    trials: Option<usize>,
}

/// Runs `cthpo resume`.
pub fn run(args: ResumeArgs) -> anyhow::Result<()> {
    let store = Store::open_existing(&args.dir)?;
    let info = store.require_study(&args.name)?;
    let Some(stored) = info.user_attrs.get(SPEC_ATTRIBUTE) else {
        bail!(
            "study `{}` was not created by `cthpo run` (no stored settings)",
            args.name
        );
    };
    let mut spec: StudySpec = serde_json::from_value(stored.clone())
        .with_context(|| format!("reading the stored settings of study `{}`", args.name))?;
    if let Some(trials) = args.trials {
        if trials == 0 {
            bail!("--trials must be at least 1");
        }
        spec.trials = trials;
    }
    drop(store);
    super::run::execute(&spec, &args.dir)
}
