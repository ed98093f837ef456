//! Drawing shared by every chart: the embedded font, colours, the title/plot/legend layout,
//! axes and grid, and writing PNG and SVG files.

use super::{DrawError, PlotError};
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Pixel size of every PNG (the SVG has the same nominal size).
pub const CHART_SIZE: (u32, u32) = (1024, 768);

/// Font family name the embedded font is registered under.
pub(super) const FONT: &str = "sans-serif";

/// DejaVu Sans (Bitstream Vera licence, see `assets/fonts/DejaVuSans-LICENSE.txt`).
pub(super) static FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// Axis label of natural accuracy (also what the tests look for in the SVG).
pub const NATURAL_LABEL: &str = "natural accuracy";
/// Axis label of certified accuracy.
pub const CERTIFIED_LABEL: &str = "certified accuracy";
/// Axis label of the history chart's x axis.
pub const TRIAL_LABEL: &str = "trial number";

/// Colours for series (Tableau 10).
pub(super) const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];
pub(super) const GREY: RGBColor = RGBColor(150, 150, 150);
pub(super) const BEST: RGBColor = RGBColor(214, 39, 40);
pub(super) const GRID_LIGHT: RGBColor = RGBColor(238, 238, 238);
pub(super) const GRID_BOLD: RGBColor = RGBColor(215, 215, 215);

/// What drawing a chart on a backend returns.
pub(super) type DrawResult = Result<(), DrawError>;

/// Keeps a plotters error as the cause of a [`DrawError`].
pub(super) fn backend<E: std::error::Error + Send + Sync + 'static>(e: E) -> DrawError {
    DrawError::Backend(Box::new(e))
}

/// Registers the embedded font once per process.
pub(super) fn ensure_font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok()
    });
    if ok { Ok(()) } else { Err(PlotError::Font) }
}

/// How a legend entry is drawn.
#[derive(Debug, Clone, Copy)]
pub(super) enum Marker {
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
pub(super) trait Chart {
    /// Title drawn across the top.
    fn title(&self) -> String;
    /// Legend entries, drawn in a panel right of the plot so they never hide data.
    fn legend(&self) -> Vec<(String, Marker)>;
    /// Draws the plot (axes, data) into `area`.
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static;
}

/// Draws the title, the plot and the legend panel on `root`.
pub(super) fn draw_chart<DB: DrawingBackend>(
    chart: &impl Chart,
    root: &DrawingArea<DB, Shift>,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(backend)?;
    let body = root
        .margin(16, 0, 0, 0)
        .titled(&chart.title(), (FONT, 26))
        .map_err(backend)?;
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
        .map_err(backend)?;
        panel
            .draw(&Text::new(label.clone(), (x + 22, y - 9), text.clone()))
            .map_err(backend)?;
    }
    Ok(())
}

/// Draws `chart` into `<stem>.png` and `<stem>.svg`; returns the two paths.
pub(super) fn render(chart: &impl Chart, stem: &Path) -> Result<Vec<PathBuf>, PlotError> {
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
    let draw_err = |path: &Path, source: DrawError| PlotError::Draw {
        path: path.to_path_buf(),
        source,
    };
    {
        let root = BitMapBackend::new(&png, CHART_SIZE).into_drawing_area();
        draw_chart(chart, &root).map_err(|m| draw_err(&png, m))?;
        root.present().map_err(|e| draw_err(&png, backend(e)))?;
    }
    {
        let root = SVGBackend::new(&svg, CHART_SIZE).into_drawing_area();
        draw_chart(chart, &root).map_err(|m| draw_err(&svg, m))?;
        root.present().map_err(|e| draw_err(&svg, backend(e)))?;
    }
    Ok(vec![png, svg])
}

/// An axis range around `values` with 6% padding (a small window when they are all equal).
pub(super) fn padded_range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
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
pub(super) fn percent_formatter(span: f64) -> impl Fn(&f64) -> String {
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
pub(super) fn value_formatter(v: &f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e4).contains(&a) {
        format!("{v:.2e}")
    } else {
        let s = format!("{v:.4}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        if s == "-0" { "0".into() } else { s.into() }
    }
}

/// Light grid: at most this many minor lines between labelled ones.
pub(super) const LIGHT_LINES: usize = 1;

/// Draws axes, tick labels and grid in the common style; `desc` is [x label, y label].
pub(super) fn draw_mesh<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    desc: [&str; 2],
    fx: &dyn Fn(&f64) -> String,
    fy: &dyn Fn(&f64) -> String,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
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
        .map_err(backend)
}
