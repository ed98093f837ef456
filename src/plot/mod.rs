//! Charts from stored trials: Pareto fronts of certified vs natural accuracy, optimisation
//! history, and the fronts of several studies on one chart. Each chart is written as PNG and SVG.
//!
//! Text is drawn with DejaVu Sans, embedded in the binary (see `assets/fonts/`), so plotting
//! needs neither fontconfig nor system fonts.

#![warn(missing_docs)]

use crate::store::{self, Direction, Store, StoreError, StoredTrial, StudyInfo, TrialState, attrs};
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Pixel size of every PNG (the SVG has the same nominal size).
pub const CHART_SIZE: (u32, u32) = (1024, 768);

/// Font family name the embedded font is registered under.
const FONT: &str = "sans-serif";

/// DejaVu Sans (Bitstream Vera licence, see `assets/fonts/DejaVuSans-LICENSE.txt`).
static FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// Axis label of natural accuracy (also what the tests look for in the SVG).
pub const NATURAL_LABEL: &str = "natural accuracy";
/// Axis label of certified accuracy.
pub const CERTIFIED_LABEL: &str = "certified accuracy";
/// Axis label of the history chart's x axis.
pub const TRIAL_LABEL: &str = "trial number";

/// Colours for series (Tableau 10).
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];
const GREY: RGBColor = RGBColor(150, 150, 150);
const BEST: RGBColor = RGBColor(214, 39, 40);
const GRID_LIGHT: RGBColor = RGBColor(238, 238, 238);
const GRID_BOLD: RGBColor = RGBColor(215, 215, 215);

/// Errors of chart drawing; each names the file or study concerned.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// Reading the studies failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The output folder could not be created.
    #[error("{path}: {source}")]
    Io {
        /// The folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// plotters failed to draw or write a file.
    #[error("{path}: drawing failed: {message}")]
    Draw {
        /// The output file.
        path: PathBuf,
        /// plotters' message.
        message: String,
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

/// Turns a plotters error into its message.
fn to_msg<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Registers the embedded font once per process.
fn ensure_font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok()
    });
    if ok { Ok(()) } else { Err(PlotError::Font) }
}

/// How a legend entry is drawn.
#[derive(Debug, Clone, Copy)]
enum Marker {
    /// A filled dot.
    Dot(RGBAColor),
    /// A line with a dot on it.
    LineDot(RGBColor),
    /// A line.
    Line(RGBColor),
    /// An open ring.
    Ring(RGBColor),
    /// A cross.
    Cross(RGBColor),
}

/// A chart that can draw itself on any plotters backend, with its legend beside it.
trait Chart {
    /// Title drawn across the top.
    fn title(&self) -> String;
    /// Legend entries, drawn in a panel right of the plot so they never hide data.
    fn legend(&self) -> Vec<(String, Marker)>;
    /// Draws the plot (axes, data) into `area`.
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), String>;
}

/// Draws the title, the plot and the legend panel on `root`.
fn draw_chart<DB: DrawingBackend>(
    chart: &impl Chart,
    root: &DrawingArea<DB, Shift>,
) -> Result<(), String> {
    root.fill(&WHITE).map_err(to_msg)?;
    let body = root
        .margin(16, 0, 0, 0)
        .titled(&chart.title(), (FONT, 26))
        .map_err(to_msg)?;
    let legend = chart.legend();
    let longest = legend
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0);
    let width = (longest as i32 * 9 + 64).clamp(150, 380);
    let (plot, panel) = body.split_horizontally(CHART_SIZE.0 as i32 - width);
    chart.draw(&plot)?;
    let text = (FONT, 16).into_font().color(&BLACK);
    for (i, (label, marker)) in legend.iter().enumerate() {
        let (x, y) = (20, 40 + 30 * i as i32);
        let mark = EmptyElement::at((x, y));
        match *marker {
            Marker::Dot(c) => panel.draw(&(mark + Circle::new((0, 0), 5, c.filled()))),
            Marker::LineDot(c) => panel.draw(
                &(mark
                    + PathElement::new(vec![(-12, 0), (12, 0)], c.stroke_width(2))
                    + Circle::new((0, 0), 5, c.filled())),
            ),
            Marker::Line(c) => {
                panel.draw(&(mark + PathElement::new(vec![(-12, 0), (12, 0)], c.stroke_width(2))))
            }
            Marker::Ring(c) => panel.draw(&(mark + Circle::new((0, 0), 7, c.stroke_width(3)))),
            Marker::Cross(c) => panel.draw(&(mark + Cross::new((0, 0), 5, c.stroke_width(2)))),
        }
        .map_err(to_msg)?;
        panel
            .draw(&Text::new(label.clone(), (x + 22, y - 9), text.clone()))
            .map_err(to_msg)?;
    }
    Ok(())
}

/// Draws `chart` into `<stem>.png` and `<stem>.svg`; returns the two paths.
fn render(chart: &impl Chart, stem: &Path) -> Result<Vec<PathBuf>, PlotError> {
    ensure_font()?;
    if let Some(parent) = stem.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| PlotError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    // Appended, not `with_extension`: study names like `…-eps0.1` contain dots.
    let with_suffix = |suffix: &str| {
        let mut path = stem.as_os_str().to_owned();
        path.push(suffix);
        PathBuf::from(path)
    };
    let png = with_suffix(".png");
    let svg = with_suffix(".svg");
    let draw_err = |path: &Path, message: String| PlotError::Draw {
        path: path.to_path_buf(),
        message,
    };
    {
        let root = BitMapBackend::new(&png, CHART_SIZE).into_drawing_area();
        draw_chart(chart, &root).map_err(|m| draw_err(&png, m))?;
        root.present().map_err(|e| draw_err(&png, e.to_string()))?;
    }
    {
        let root = SVGBackend::new(&svg, CHART_SIZE).into_drawing_area();
        draw_chart(chart, &root).map_err(|m| draw_err(&svg, m))?;
        root.present().map_err(|e| draw_err(&svg, e.to_string()))?;
    }
    Ok(vec![png, svg])
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

/// An axis range around `values` with 6% padding (a small window when they are all equal).
fn padded_range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return None;
    }
    let span = hi - lo;
    let pad = if span > 0.0 {
        span * 0.06
    } else {
        (lo.abs() * 0.05).max(0.01)
    };
    Some((lo - pad, hi + pad))
}

/// Formats accuracies (fractions in [0, 1]) as percentages with enough decimals for the span.
fn percent_formatter(span: f64) -> impl Fn(&f64) -> String {
    let decimals = if span < 0.02 {
        2
    } else if span < 0.2 {
        1
    } else {
        0
    };
    move |v: &f64| format!("{:.*}%", decimals, v * 100.0)
}

/// Formats values of an arbitrary objective compactly.
fn value_formatter(v: &f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e4).contains(&a) {
        format!("{v:.2e}")
    } else {
        let s = format!("{v:.4}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        if s == "-0" { "0".into() } else { s.into() }
    }
}

// ------------------------------------------------------------------ data

/// One trial as a point of certified vs natural accuracy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AccuracyPoint {
    /// Trial number.
    pub number: i64,
    /// Natural accuracy (x).
    pub natural: f64,
    /// Certified accuracy (y).
    pub certified: f64,
}

/// The COMPLETE trials that record both natural and certified accuracy.
pub fn accuracy_points(trials: &[StoredTrial]) -> Vec<AccuracyPoint> {
    trials
        .iter()
        .filter(|t| t.state == TrialState::Complete)
        .filter_map(|t| {
            let natural = t.user_attr_f64(attrs::NATURAL_ACCURACY)?;
            let certified = t.user_attr_f64(attrs::CERTIFIED_ACCURACY)?;
            (natural.is_finite() && certified.is_finite()).then_some(AccuracyPoint {
                number: t.number,
                natural,
                certified,
            })
        })
        .collect()
}

/// The Pareto-optimal points (both accuracies maximised), sorted by natural accuracy.
pub fn accuracy_front(points: &[AccuracyPoint]) -> Vec<AccuracyPoint> {
    let coords: Vec<Vec<f64>> = points
        .iter()
        .map(|p| vec![p.natural, p.certified])
        .collect();
    let mut front: Vec<AccuracyPoint> =
        store::pareto_front_indices(&coords, &[Direction::Maximize, Direction::Maximize])
            .into_iter()
            .map(|i| points[i])
            .collect();
    front.sort_by(|a, b| {
        a.natural
            .total_cmp(&b.natural)
            .then(b.certified.total_cmp(&a.certified))
    });
    front.dedup_by(|a, b| a.natural == b.natural && a.certified == b.certified);
    front
}

/// The staircase through a front sorted by natural accuracy: the boundary of what it dominates.
fn staircase(front: &[AccuracyPoint]) -> Vec<(f64, f64)> {
    let mut line = Vec::with_capacity(front.len() * 2);
    for (i, p) in front.iter().enumerate() {
        line.push((p.natural, p.certified));
        if let Some(next) = front.get(i + 1) {
            line.push((p.natural, next.certified));
        }
    }
    line
}

/// The scalar a study optimises, per trial, as plotted in the history chart.
#[derive(Debug, Clone, PartialEq)]
pub struct HistorySeries {
    /// Axis label of the value.
    pub label: String,
    /// Direction in which the value improves.
    pub direction: Direction,
    /// (trial number, value) of COMPLETE trials with a finite value.
    pub points: Vec<(i64, f64)>,
    /// Numbers of FAIL trials.
    pub failed: Vec<i64>,
}

/// Chooses the scalar to plot: the single objective; for several objectives the weighted
/// [`attrs::OBJECTIVE`] attribute when trials have it, else the first objective.
pub fn history_series(info: &StudyInfo, trials: &[StoredTrial]) -> HistorySeries {
    let weighted = info.directions.len() > 1
        && trials
            .iter()
            .any(|t| t.user_attr_f64(attrs::OBJECTIVE).is_some());
    let direction = if weighted {
        Direction::Maximize
    } else {
        info.directions
            .first()
            .copied()
            .unwrap_or(Direction::Minimize)
    };
    let better = match direction {
        Direction::Minimize => "lower is better",
        Direction::Maximize => "higher is better",
    };
    let label = if weighted {
        format!("weighted objective ({better})")
    } else if info.directions.len() > 1 {
        format!("objective 1 of {} ({better})", info.directions.len())
    } else {
        format!("objective ({better})")
    };
    let mut points = Vec::new();
    let mut failed = Vec::new();
    for t in trials {
        match t.state {
            TrialState::Complete => {
                let value = if weighted {
                    t.user_attr_f64(attrs::OBJECTIVE)
                } else {
                    t.values.as_ref().and_then(|v| v.first().copied())
                };
                if let Some(v) = value.filter(|v| v.is_finite()) {
                    points.push((t.number, v));
                }
            }
            TrialState::Fail => failed.push(t.number),
            _ => {}
        }
    }
    points.sort_by_key(|p| p.0);
    failed.sort();
    HistorySeries {
        label,
        direction,
        points,
        failed,
    }
}

// ------------------------------------------------------------------ front chart

struct FrontSeries {
    label: String,
    color: RGBColor,
    points: Vec<AccuracyPoint>,
    front: Vec<AccuracyPoint>,
}

struct FrontChart {
    title: String,
    series: Vec<FrontSeries>,
    /// Highlighted trial (the study's best), single-study charts only.
    best: Option<AccuracyPoint>,
    /// One study: legend entries describe the marks; several: one entry per study.
    single: bool,
}

/// Light grid: at most this many minor lines between labelled ones.
const LIGHT_LINES: usize = 1;

/// Draws axes, tick labels and grid in the common style; `desc` is [x label, y label].
fn draw_mesh<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    desc: [&str; 2],
    fx: &dyn Fn(&f64) -> String,
    fy: &dyn Fn(&f64) -> String,
) -> Result<(), String> {
    chart
        .configure_mesh()
        .x_desc(desc[0])
        .y_desc(desc[1])
        .x_label_formatter(fx)
        .y_label_formatter(fy)
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 19))
        .max_light_lines(LIGHT_LINES)
        .light_line_style(GRID_LIGHT)
        .bold_line_style(GRID_BOLD)
        .draw()
        .map_err(to_msg)
}

impl Chart for FrontChart {
    fn title(&self) -> String {
        self.title.clone()
    }

    fn legend(&self) -> Vec<(String, Marker)> {
        let mut entries = Vec::new();
        if self.single {
            if let Some(s) = self.series.first() {
                if s.points.len() > s.front.len() {
                    entries.push(("dominated trials".into(), Marker::Dot(GREY.mix(0.35))));
                }
                entries.push(("Pareto front".into(), Marker::LineDot(s.color)));
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

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let all = || self.series.iter().flat_map(|s| s.points.iter());
        let (x0, x1) = padded_range(all().map(|p| p.natural)).ok_or("no points")?;
        let (y0, y1) = padded_range(all().map(|p| p.certified)).ok_or("no points")?;
        let mut chart = ChartBuilder::on(area)
            .margin(16)
            .x_label_area_size(56)
            .y_label_area_size(84)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(to_msg)?;
        let (fx, fy) = (percent_formatter(x1 - x0), percent_formatter(y1 - y0));
        draw_mesh(&mut chart, [NATURAL_LABEL, CERTIFIED_LABEL], &fx, &fy)?;

        for s in &self.series {
            let faded = if self.single { GREY } else { s.color }.mix(0.35);
            chart
                .draw_series(
                    s.points
                        .iter()
                        .filter(|p| !s.front.contains(p))
                        .map(|p| Circle::new((p.natural, p.certified), 5, faded.filled())),
                )
                .map_err(to_msg)?;
        }
        for s in &self.series {
            let color = s.color;
            chart
                .draw_series(LineSeries::new(staircase(&s.front), color.stroke_width(2)))
                .map_err(to_msg)?;
            chart
                .draw_series(
                    s.front
                        .iter()
                        .map(|p| Circle::new((p.natural, p.certified), 6, color.filled())),
                )
                .map_err(to_msg)?;
            if self.single && s.front.len() <= 15 {
                let style = (FONT, 14).into_font().color(&RGBColor(60, 60, 60));
                chart
                    .draw_series(s.front.iter().map(|p| {
                        EmptyElement::at((p.natural, p.certified))
                            + Text::new(format!("#{}", p.number), (9, 2), style.clone())
                    }))
                    .map_err(to_msg)?;
            }
        }
        if let Some(best) = self.best {
            chart
                .draw_series([Circle::new(
                    (best.natural, best.certified),
                    11,
                    BEST.stroke_width(3),
                )])
                .map_err(to_msg)?;
        }
        Ok(())
    }
}

/// Writes `<stem>.png` and `<stem>.svg`: certified vs natural accuracy of a study's COMPLETE
/// trials, dominated trials faded, the Pareto front joined as a staircase, the best trial
/// (see [`store::best_trial`]) circled.
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
    let chart = FrontChart {
        title: format!("{}: certified vs natural accuracy", info.name),
        series: vec![FrontSeries {
            label: info.name.clone(),
            color: PALETTE[0],
            front: accuracy_front(&points),
            points,
        }],
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
        best: None,
        single: false,
    };
    render(&chart, stem)
}

// ------------------------------------------------------------------ history chart

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
        if !self.series.failed.is_empty() {
            entries.push(("failed trial".into(), Marker::Cross(BLACK)));
        }
        entries
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let s = &self.series;
        let (y0, y1) = padded_range(s.points.iter().map(|p| p.1)).unwrap_or((0.0, 1.0));
        let x1 = self.last_number.max(1) as f64 + 0.5;
        let mut chart = ChartBuilder::on(area)
            .margin(16)
            .x_label_area_size(56)
            .y_label_area_size(96)
            .build_cartesian_2d(-0.5..x1, y0..y1)
            .map_err(to_msg)?;
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
            .map_err(to_msg)?;

        // Running best as a step line that extends to the last trial.
        let mut line: Vec<(f64, f64)> = Vec::new();
        let mut best: Option<f64> = None;
        for &(n, v) in &s.points {
            if best.is_none_or(|b| s.direction.better(v, b)) {
                if let Some(b) = best {
                    line.push((n as f64, b));
                }
                best = Some(v);
                line.push((n as f64, v));
            }
        }
        if let Some(b) = best {
            line.push((self.last_number as f64, b));
            chart
                .draw_series(LineSeries::new(line, BEST.stroke_width(2)))
                .map_err(to_msg)?;
        }
        // Failed trials have no value: mark them along the bottom edge.
        let y = y0 + (y1 - y0) * 0.02;
        chart
            .draw_series(
                s.failed
                    .iter()
                    .map(|&n| Cross::new((n as f64, y), 5, BLACK.stroke_width(2))),
            )
            .map_err(to_msg)?;
        Ok(())
    }
}

/// Writes `<stem>.png` and `<stem>.svg`: the objective of each COMPLETE trial by trial number,
/// the running best as a step line, and FAIL trials as crosses along the bottom.
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

// ------------------------------------------------------------------ all at once

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
