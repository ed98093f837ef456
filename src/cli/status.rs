//! `cthpo status`: summarises stored studies.

use clap::Args;

/// Arguments of `cthpo status`.
#[derive(Debug, Args)]
pub struct StatusArgs {}

/// Runs `cthpo status`.
pub fn run(_args: StatusArgs) -> anyhow::Result<()> {
    anyhow::bail!("`cthpo status` is not built yet (issue #5)")
}
