//! `cthpo run`: runs or continues a study.

use clap::Args;

/// Arguments of `cthpo run`.
#[derive(Debug, Args)]
pub struct RunArgs {}

/// Runs `cthpo run`.
pub fn run(_args: RunArgs) -> anyhow::Result<()> {
    anyhow::bail!("`cthpo run` is not built yet (issue #5)")
}
