//! `cthpo plot`: draws Pareto fronts and optimisation history.

use clap::Args;

/// Arguments of `cthpo plot`.
#[derive(Debug, Args)]
pub struct PlotArgs {}

/// Runs `cthpo plot`.
pub fn run(_args: PlotArgs) -> anyhow::Result<()> {
    anyhow::bail!("`cthpo plot` is not built yet (issue #5)")
}
