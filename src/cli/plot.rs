//! `cthpo plot`: draws Pareto fronts and optimisation history.

use crate::plot;
use anyhow::{Context, bail};
use clap::Args;
use std::path::PathBuf;

/// Arguments of `cthpo plot`.
#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Studies to draw; with two or more, their fronts are also compared on one chart.
    #[arg(required = true, num_args = 1..)]
    pub names: Vec<String>,
    /// Study database and directory.
    #[command(flatten)]
    pub place: super::StorageArgs,
    /// Output folder for the PNG and SVG files [default: <dir>/plots].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Runs `cthpo plot`.
pub fn run(args: PlotArgs) -> anyhow::Result<()> {
    let store = args.place.open_existing()?;
    let out = args.out.unwrap_or_else(|| args.place.dir.join("plots"));
    if out.exists() && !out.is_dir() {
        bail!(
            "--out {} is a file; give a folder for the charts",
            out.display()
        );
    }
    let summary = plot::plot_studies(&store, &args.names, &out).context("plotting failed")?;
    for note in &summary.skipped {
        eprintln!("note: skipped a chart: {note}");
    }
    if summary.files.is_empty() {
        bail!("nothing to plot yet");
    }
    for file in &summary.files {
        outln!("{}", file.display());
    }
    Ok(())
}
