//! `cthpo train`: trains one network and evaluates it.

use clap::Args;

/// Arguments of `cthpo train`.
#[derive(Debug, Args)]
pub struct TrainArgs {}

/// Runs `cthpo train`.
pub fn run(_args: TrainArgs) -> anyhow::Result<()> {
    anyhow::bail!("`cthpo train` is not built yet (issue #3)")
}
