//! `cthpo best`: exports a study's best configuration.

use clap::Args;

/// Arguments of `cthpo best`.
#[derive(Debug, Args)]
pub struct BestArgs {}

/// Runs `cthpo best`.
pub fn run(_args: BestArgs) -> anyhow::Result<()> {
    anyhow::bail!("`cthpo best` is not built yet (issue #5)")
}
