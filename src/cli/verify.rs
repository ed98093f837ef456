//! `cthpo verify`: measures natural, adversarial and certified accuracy.

use clap::Args;

/// Arguments of `cthpo verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {}

/// Runs `cthpo verify`.
pub fn run(_args: VerifyArgs) -> anyhow::Result<()> {
    anyhow::bail!("`cthpo verify` is not built yet (issue #2)")
}
