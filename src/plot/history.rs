//! The history chart: each trial's objective by trial number with the running best.

use super::PlotError;
use super::data::{HistorySeries, best_so_far, history_series};
use super::render::{
    BEST, Chart, DrawResult, Marker, PALETTE, TRIAL_LABEL, backend, draw_mesh, padded_range,
    render, value_formatter,
};
use crate::store::{StoredTrial, StudyInfo};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

struct HistoryChart {
    title: String,
    series: HistorySeries,
    last_number: i64,
}

impl Chart for HistoryChart {
    fn title(&self) -> String {
        self.title.clone()
    }

    fn legend(&self) -> Vec<(String, Marker)> {
        let mut entries = Vec::new();
        if !self.series.points.is_empty() {
            entries.push(("completed trial".into(), Marker::Dot(PALETTE[0].mix(0.7))));
            entries.push(("best so far".into(), Marker::Line(BEST)));
        }
        if !self.series.pruned.is_empty() {
            entries.push(("pruned trial (rung score)".into(), Marker::Ring(PALETTE[1])));
        }
        if !self.series.failed.is_empty() {
            entries.push(("failed trial".into(), Marker::Cross(BLACK)));
        }
        entries
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let s = &self.series;
        let (y0, y1) =
            padded_range(s.points.iter().chain(&s.pruned).map(|p| p.1)).unwrap_or((0.0, 1.0));
        let x1 = self.last_number.max(1) as f64 + 0.5;
        let mut chart = ChartBuilder::on(area)
            .margin(16)
            .x_label_area_size(56)
            .y_label_area_size(96)
            .build_cartesian_2d(-0.5..x1, y0..y1)
            .map_err(backend)?;
        let fx = |v: &f64| {
            if (v - v.round()).abs() < 1e-9 {
                format!("{}", v.round() as i64)
            } else {
                String::new()
            }
        };
        draw_mesh(&mut chart, [TRIAL_LABEL, &s.label], &fx, &value_formatter)?;

        let color = PALETTE[0].mix(0.7);
        chart
            .draw_series(
                s.points
                    .iter()
                    .map(|&(n, v)| Circle::new((n as f64, v), 5, color.filled())),
            )
            .map_err(backend)?;

        // Pruned trials' rung scores are not full-budget results: open rings, not in the best.
        chart
            .draw_series(
                s.pruned
                    .iter()
                    .map(|&(n, v)| Circle::new((n as f64, v), 5, PALETTE[1].stroke_width(2))),
            )
            .map_err(backend)?;
        // Running best as a step line that extends to the last trial.
        let line = best_so_far(s, self.last_number);
        if !line.is_empty() {
            chart
                .draw_series(LineSeries::new(line, BEST.stroke_width(2)))
                .map_err(backend)?;
        }
        // Failed trials have no value: mark them along the bottom edge.
        let y = y0 + (y1 - y0) * 0.02;
        chart
            .draw_series(
                s.failed
                    .iter()
                    .map(|&n| Cross::new((n as f64, y), 5, BLACK.stroke_width(2))),
            )
            .map_err(backend)?;
        Ok(())
    }
}

/// Writes `<stem>.png` and `<stem>.svg`: the objective of each COMPLETE trial by trial number,
/// the running best as a step line, PRUNED trials' rung scores as open rings, and FAIL trials
/// as crosses along the bottom.
pub fn history_chart(
    info: &StudyInfo,
    trials: &[StoredTrial],
    stem: &Path,
) -> Result<Vec<PathBuf>, PlotError> {
    let series = history_series(info, trials);
    if series.points.is_empty() && series.failed.is_empty() {
        return Err(PlotError::NoData {
            what: format!("study {:?} has no finished trials", info.name),
        });
    }
    let chart = HistoryChart {
        title: format!("{}: optimisation history", info.name),
        last_number: trials.iter().map(|t| t.number).max().unwrap_or(0),
        series,
    };
    render(&chart, stem)
}
