//! The accuracy chart: certified vs natural accuracy with Pareto fronts, for one study or several.

use super::data::{
    AccuracyPoint, accuracy_front, accuracy_points, staircase, test_accuracy_points,
};
use super::render::{
    BEST, CERTIFIED_LABEL, Chart, DrawResult, FONT, GREY, Marker, NATURAL_LABEL, PALETTE, backend,
    draw_mesh, padded_range, percent_formatter, render,
};
use super::{DrawError, PlotError};
use crate::store::{self, StoredTrial, StudyInfo, attrs};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

struct FrontSeries {
    label: String,
    color: RGBColor,
    points: Vec<AccuracyPoint>,
    front: Vec<AccuracyPoint>,
}

struct FrontChart {
    title: String,
    series: Vec<FrontSeries>,
    /// The same study's trials scored on the test split by `cthpo evaluate`, single-study charts
    /// only; each is joined to its validation point.
    test: Option<FrontSeries>,
    /// Highlighted trial (the study's best), single-study charts only.
    best: Option<AccuracyPoint>,
    /// One study: legend entries describe the marks; several: one entry per study.
    single: bool,
}

impl Chart for FrontChart {
    fn title(&self) -> String {
        self.title.clone()
    }

    fn legend(&self) -> Vec<(String, Marker)> {
        let mut entries = Vec::new();
        if self.single {
            if let Some(s) = self.series.first() {
                if s.points.iter().any(|p| p.feasible && !s.front.contains(p)) {
                    entries.push(("dominated trials".into(), Marker::Dot(GREY.mix(0.35))));
                }
                if s.points.iter().any(|p| !p.feasible) {
                    entries.push((
                        "infeasible trials (constraints)".into(),
                        Marker::Cross(GREY),
                    ));
                }
                let front = if self.test.is_some() {
                    "Pareto front (validation)"
                } else {
                    "Pareto front"
                };
                entries.push((front.into(), Marker::LineDot(s.color)));
            }
            if let Some(test) = &self.test {
                entries.push((
                    "test split front (cthpo evaluate)".into(),
                    Marker::LineDot(test.color),
                ));
                if test.points.iter().any(|p| !test.front.contains(p)) {
                    entries.push((
                        "test split, dominated".into(),
                        Marker::Dot(test.color.mix(0.35)),
                    ));
                }
            }
        } else {
            for s in &self.series {
                entries.push((s.label.clone(), Marker::LineDot(s.color)));
            }
            entries.push((
                "faded: dominated trials".into(),
                Marker::Dot(GREY.mix(0.35)),
            ));
        }
        if let Some(best) = self.best {
            entries.push((format!("best (trial #{})", best.number), Marker::Ring(BEST)));
        }
        entries
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let all = || {
            self.series
                .iter()
                .chain(&self.test)
                .flat_map(|s| s.points.iter())
        };
        let (x0, x1) = padded_range(all().map(|p| p.natural)).ok_or(DrawError::NoPoints)?;
        let (y0, y1) = padded_range(all().map(|p| p.certified)).ok_or(DrawError::NoPoints)?;
        let mut chart = ChartBuilder::on(area)
            .margin(16)
            .x_label_area_size(56)
            .y_label_area_size(84)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(backend)?;
        let (fx, fy) = (percent_formatter(x1 - x0), percent_formatter(y1 - y0));
        draw_mesh(&mut chart, [NATURAL_LABEL, CERTIFIED_LABEL], &fx, &fy)?;

        for s in &self.series {
            let faded = if self.single { GREY } else { s.color }.mix(0.35);
            chart
                .draw_series(
                    s.points
                        .iter()
                        .filter(|p| p.feasible && !s.front.contains(p))
                        .map(|p| Circle::new((p.natural, p.certified), 5, faded.filled())),
                )
                .map_err(backend)?;
            let crossed = if self.single { GREY } else { s.color };
            chart
                .draw_series(
                    s.points
                        .iter()
                        .filter(|p| !p.feasible)
                        .map(|p| Cross::new((p.natural, p.certified), 5, crossed.stroke_width(2))),
                )
                .map_err(backend)?;
        }
        if let (Some(test), Some(validation)) = (&self.test, self.series.first()) {
            for t in &test.points {
                if let Some(v) = validation.points.iter().find(|v| v.number == t.number) {
                    chart
                        .draw_series(LineSeries::new(
                            [(v.natural, v.certified), (t.natural, t.certified)],
                            GREY.mix(0.6).stroke_width(1),
                        ))
                        .map_err(backend)?;
                }
            }
            chart
                .draw_series(
                    test.points
                        .iter()
                        .filter(|p| !test.front.contains(p))
                        .map(|p| {
                            Circle::new((p.natural, p.certified), 5, test.color.mix(0.35).filled())
                        }),
                )
                .map_err(backend)?;
        }
        for s in self.series.iter().chain(&self.test) {
            let color = s.color;
            chart
                .draw_series(LineSeries::new(staircase(&s.front), color.stroke_width(2)))
                .map_err(backend)?;
            chart
                .draw_series(
                    s.front
                        .iter()
                        .map(|p| Circle::new((p.natural, p.certified), 6, color.filled())),
                )
                .map_err(backend)?;
            if self.single && s.front.len() <= 15 {
                let style = (FONT, 14).into_font().color(&RGBColor(60, 60, 60));
                chart
                    .draw_series(s.front.iter().map(|p| {
                        EmptyElement::at((p.natural, p.certified))
                            + Text::new(format!("#{}", p.number), (9, 2), style.clone())
                    }))
                    .map_err(backend)?;
            }
        }
        if let Some(best) = self.best {
            chart
                .draw_series([Circle::new(
                    (best.natural, best.certified),
                    11,
                    BEST.stroke_width(3),
                )])
                .map_err(backend)?;
        }
        Ok(())
    }
}

/// Writes `<stem>.png` and `<stem>.svg`: certified vs natural accuracy of a study's COMPLETE
/// trials, dominated trials faded, infeasible ones (outside the study's constraints) crossed, the Pareto front joined as a staircase, the best trial
/// (see [`store::best_trial`]) circled. Trials `cthpo evaluate` scored on the test split
/// (attribute [`attrs::TEST_EVALUATION`]) add their test-split front in a second colour, each
/// test point joined to the trial's validation point by a thin grey line.
pub fn pareto_chart(
    info: &StudyInfo,
    trials: &[StoredTrial],
    stem: &Path,
) -> Result<Vec<PathBuf>, PlotError> {
    let points = accuracy_points(trials);
    if points.is_empty() {
        return Err(PlotError::NoData {
            what: format!(
                "study {:?} has no COMPLETE trial with {} and {}",
                info.name,
                attrs::NATURAL_ACCURACY,
                attrs::CERTIFIED_ACCURACY
            ),
        });
    }
    let best = store::best_trial(trials, &info.directions)
        .and_then(|b| points.iter().find(|p| p.number == b.number).copied());
    let test_points = test_accuracy_points(trials);
    let test = (!test_points.is_empty()).then(|| FrontSeries {
        label: format!("{} (test split)", info.name),
        color: PALETTE[1],
        front: accuracy_front(&test_points),
        points: test_points,
    });
    let title = if test.is_some() {
        format!(
            "{}: certified vs natural accuracy, validation and test",
            info.name
        )
    } else {
        format!("{}: certified vs natural accuracy", info.name)
    };
    let chart = FrontChart {
        title,
        series: vec![FrontSeries {
            label: info.name.clone(),
            color: PALETTE[0],
            front: accuracy_front(&points),
            points,
        }],
        test,
        best,
        single: true,
    };
    render(&chart, stem)
}

/// Writes `<stem>.png` and `<stem>.svg`: the accuracy fronts of several studies (e.g. one per
/// method) on one chart, one colour and legend entry per study. Studies without accuracies are
/// left out; it is an error if none has any.
pub fn comparison_chart(
    studies: &[(StudyInfo, Vec<StoredTrial>)],
    stem: &Path,
) -> Result<Vec<PathBuf>, PlotError> {
    let series: Vec<FrontSeries> = studies
        .iter()
        .map(|(info, trials)| (info, accuracy_points(trials)))
        .filter(|(_, points)| !points.is_empty())
        .enumerate()
        .map(|(i, (info, points))| FrontSeries {
            label: info.name.clone(),
            color: PALETTE[i % PALETTE.len()],
            front: accuracy_front(&points),
            points,
        })
        .collect();
    if series.is_empty() {
        return Err(PlotError::NoData {
            what: "none of the studies has COMPLETE trials with accuracies".to_string(),
        });
    }
    let chart = FrontChart {
        title: "Pareto fronts: certified vs natural accuracy".to_string(),
        series,
        test: None,
        best: None,
        single: false,
    };
    render(&chart, stem)
}
