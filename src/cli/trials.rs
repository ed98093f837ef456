//! `cthpo trials`: lists a study's trials.

use clap::Args;

/// Arguments of `cthpo trials`.
#[derive(Debug, Args)]
pub struct TrialsArgs {}

/// Runs `cthpo trials`.
pub fn run(_args: TrialsArgs) -> anyhow::Result<()> {
    anyhow::bail!("`cthpo trials` is not built yet (issue #5)")
}
