//! `cthpo resume`: continues a stored study.

use clap::Args;

/// Arguments of `cthpo resume`.
#[derive(Debug, Args)]
pub struct ResumeArgs {}

/// Runs `cthpo resume`.
pub fn run(_args: ResumeArgs) -> anyhow::Result<()> {
    anyhow::bail!("`cthpo resume` is not built yet (issue #5)")
}
