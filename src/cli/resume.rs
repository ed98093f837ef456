//! `cthpo resume`: continues a stored study by name with the settings it was started with.

use crate::study::{SPEC_ATTRIBUTE, StudySpec};
use anyhow::{Context, bail};
use clap::Args;

/// Arguments of `cthpo resume`.
#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// The study to continue.
    name: String,
    /// Study database and directory.
    #[command(flatten)]
    place: super::StorageArgs,
    /// Heartbeat interval of this worker's trials, e.g. 20s (see `cthpo run --help`).
    #[arg(long, value_name = "DURATION")]
    heartbeat: Option<String>,
    /// Set the trial budget (also gives one to a study limited by its time budget alone).
    #[arg(long)]
    trials: Option<usize>,
}

/// Runs `cthpo resume`.
pub fn run(args: ResumeArgs) -> anyhow::Result<()> {
    let store = args.place.open_existing()?;
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
        spec.trials = Some(trials);
    }
    drop(store);
    let workspace = super::run::workspace(&args.place, args.heartbeat.as_deref())?;
    super::run::execute(&spec, &workspace)
}
