//! Charts from stored trials: Pareto fronts of certified vs natural accuracy (with the test-split
//! front of the trials `cthpo evaluate` scored), optimisation history, and the fronts of several
//! studies on one chart. Each chart is written as PNG and SVG.
//!
//! Text is drawn with DejaVu Sans, embedded in the binary (see `assets/fonts/`), so plotting
//! needs neither fontconfig nor system fonts.

#![warn(missing_docs)]

mod data;
mod front;
mod history;
mod render;

pub use data::{
    AccuracyPoint, HistorySeries, accuracy_front, accuracy_points, best_so_far, history_series,
    staircase, test_accuracy_points,
};
pub use front::{comparison_chart, pareto_chart};
pub use history::history_chart;
pub use render::{CERTIFIED_LABEL, CHART_SIZE, NATURAL_LABEL, TRIAL_LABEL};

use crate::store::{Store, StoreError};
use std::path::{Path, PathBuf};

/// Errors of chart drawing; each names the file or study concerned.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// Reading the studies failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The output folder could not be created.
    #[error("{path}")]
    Io {
        /// The folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// plotters failed to draw or write a file.
    #[error("{path}: drawing failed")]
    Draw {
        /// The output file.
        path: PathBuf,
        /// What plotters reported.
        source: DrawError,
    },
    /// Nothing to draw.
    #[error("{what}")]
    NoData {
        /// What is missing.
        what: String,
    },
    /// The embedded font could not be loaded (a build problem).
    #[error("the embedded font DejaVu Sans could not be registered")]
    Font,
}

/// Why a chart could not be drawn on a plotters backend.
#[derive(Debug, thiserror::Error)]
pub enum DrawError {
    /// The backend (bitmap or SVG writer) failed.
    #[error(transparent)]
    Backend(Box<dyn std::error::Error + Send + Sync>),
    /// The chart has no point to set its axes by.
    #[error("no points to draw")]
    NoPoints,
}

/// A file-name-safe version of a study name.
pub fn file_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// What [`plot_studies`] wrote and what it had to leave out.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PlotSummary {
    /// Files written (PNG and SVG).
    pub files: Vec<PathBuf>,
    /// Charts not drawn, with the reason (e.g. no completed trials yet).
    pub skipped: Vec<String>,
}

/// Draws, for each named study, `<out>/<study>-pareto` and `<out>/<study>-history`, and with
/// two or more studies `<out>/comparison-pareto` (PNG and SVG each).
pub fn plot_studies(
    store: &Store,
    names: &[String],
    out_dir: &Path,
) -> Result<PlotSummary, PlotError> {
    let mut studies = Vec::with_capacity(names.len());
    for name in names {
        let info = store.require_study(name)?;
        let trials = store.trials(info.id)?;
        studies.push((info, trials));
    }
    let mut summary = PlotSummary::default();
    let mut keep = |result: Result<Vec<PathBuf>, PlotError>| -> Result<(), PlotError> {
        match result {
            Ok(files) => summary.files.extend(files),
            Err(PlotError::NoData { what }) => summary.skipped.push(what),
            Err(e) => return Err(e),
        }
        Ok(())
    };
    for (info, trials) in &studies {
        let stem = file_stem(&info.name);
        keep(pareto_chart(
            info,
            trials,
            &out_dir.join(format!("{stem}-pareto")),
        ))?;
        keep(history_chart(
            info,
            trials,
            &out_dir.join(format!("{stem}-history")),
        ))?;
    }
    if studies.len() > 1 {
        keep(comparison_chart(
            &studies,
            &out_dir.join("comparison-pareto"),
        ))?;
    }
    Ok(summary)
}
