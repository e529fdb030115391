//! Charts: points, series with an interval per point, and their rendering to PNG or SVG with
//! plotters and a font shipped in `assets/fonts` (no system fonts, no C libraries). Part of the
//! floor: the report and the load generator draw with it; it knows no result type.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use plotters::coord::combinators::BindKeyPoints;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;

use crate::error::input;

/// One plotted point: x, y and an optional (low, high) interval for y.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub interval: Option<(f64, f64)>,
}

/// A labelled line.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Series {
    pub label: String,
    pub points: Vec<Point>,
    /// Its colour, as an index into the palette (default: its position in the chart), so
    /// lines of one model on several machines can share a colour.
    pub color: Option<usize>,
    /// Its dash pattern: 0 solid, 1 dashed, 2 dotted (a machine's lines in a chart across
    /// machines).
    pub dash: u8,
}

/// Everything needed to draw one chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub log_y: bool,
    /// A linear y axis starts at 0 (magnitudes: times, memory); `false` fits it to the data
    /// (scores such as F1, whose differences matter more than their distance from 0).
    pub y_from_zero: bool,
    pub series: Vec<Series>,
    /// Write each series' label next to its points instead of a legend (scatter charts with
    /// one point per series, where a legend box could hide a point).
    pub label_points: bool,
}

const FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");

fn register_font() -> Result<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
            && plotters::style::register_font("sans-serif", FontStyle::Bold, FONT).is_ok()
    });
    if !ok {
        bail!("could not load the bundled font");
    }
    Ok(())
}

/// Draws `chart` to `path` (`.png` or `.svg`), `size` in pixels.
pub fn render(chart: &Chart, path: &Path, size: (u32, u32)) -> Result<()> {
    register_font()?;
    if chart.series.iter().all(|s| s.points.is_empty()) {
        return Err(input(format!(
            "nothing to plot for {}: no measured values",
            path.display()
        )));
    }
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("png") => {
            let root = BitMapBackend::new(path, size).into_drawing_area();
            draw_axes(&root, chart)?;
            root.present()
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Some("svg") => {
            let root = SVGBackend::new(path, size).into_drawing_area();
            draw_axes(&root, chart)?;
            root.present()
                .with_context(|| format!("writing {}", path.display()))?;
        }
        _ => {
            return Err(input(format!(
                "{}: the figure file must end in .png or .svg",
                path.display()
            )))
        }
    }
    Ok(())
}

/// Renders to an SVG string (for embedding in HTML).
pub fn render_svg_string(chart: &Chart, size: (u32, u32)) -> Result<String> {
    register_font()?;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
        draw_axes(&root, chart)?;
        root.present().context("rendering SVG")?;
    }
    Ok(out)
}

/// Data range padded so single values and log axes still get a sensible span.
fn span(values: impl Iterator<Item = f64>, log: bool, from_zero: bool) -> (f64, f64) {
    let (mut lo, mut hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
        (l.min(v), h.max(v))
    });
    if !lo.is_finite() {
        return (1.0, 10.0);
    }
    if log {
        lo = lo.max(f64::MIN_POSITIVE);
        (lo / 1.5, hi * 1.5)
    } else {
        // Magnitudes plotted here (times, memory) are positive: their linear axes start at 0.
        if lo >= 0.0 && from_zero {
            lo = 0.0;
        }
        if hi == lo {
            hi = lo + 1.0;
        }
        let pad = (hi - lo) * 0.08;
        if from_zero {
            (lo, hi + pad)
        } else {
            (lo - pad, hi + pad)
        }
    }
}

fn draw_axes<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, chart: &Chart) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let xs = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.x));
    let ys = chart.series.iter().flat_map(|s| {
        s.points.iter().flat_map(|p| {
            [
                p.y,
                p.interval.map_or(p.y, |i| i.0),
                p.interval.map_or(p.y, |i| i.1),
            ]
        })
    });
    // On log axes the x ticks are the measured batch sizes / sequence lengths themselves.
    let mut keys: Vec<f64> = xs.clone().collect();
    keys.sort_by(|a, b| a.total_cmp(b));
    keys.dedup();
    let (x0, mut x1) = span(xs, chart.log_x, true);
    if chart.label_points {
        // Room for the labels right of the rightmost point.
        x1 = if chart.log_x {
            x1 * 3.0
        } else {
            x0 + (x1 - x0) * 1.35
        };
    }
    let (y0, y1) = span(ys, chart.log_y, chart.y_from_zero);
    match (chart.log_x, chart.log_y) {
        (true, true) => draw(
            root,
            chart,
            (x0..x1).log_scale().with_key_points(keys),
            (y0..y1).log_scale(),
        ),
        (true, false) => draw(
            root,
            chart,
            (x0..x1).log_scale().with_key_points(keys),
            y0..y1,
        ),
        // Linear axes get evenly spaced ticks, which read well there.
        (false, true) => draw(root, chart, x0..x1, (y0..y1).log_scale()),
        (false, false) => draw(root, chart, x0..x1, y0..y1),
    }
}

fn draw<DB, X, Y>(root: &DrawingArea<DB, Shift>, chart: &Chart, x: X, y: Y) -> Result<()>
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("drawing failed: {e:?}");
    root.fill(&WHITE).map_err(err)?;
    let mut ctx = ChartBuilder::on(root)
        .caption(&chart.title, ("sans-serif", 26))
        .margin(18)
        .x_label_area_size(52)
        .y_label_area_size(78)
        .build_cartesian_2d(x, y)
        .map_err(err)?;
    ctx.configure_mesh()
        .x_desc(&chart.x_label)
        .y_desc(&chart.y_label)
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(210, 210, 210))
        .draw()
        .map_err(err)?;
    for (i, s) in chart.series.iter().enumerate() {
        let color = PALETTE[s.color.unwrap_or(i) % PALETTE.len()].to_rgba();
        let style = ShapeStyle {
            color,
            filled: true,
            stroke_width: 2,
        };
        let points = s.points.iter().map(|p| (p.x, p.y));
        let drawn = match s.dash {
            0 => ctx.draw_series(LineSeries::new(points, style)),
            1 => ctx.draw_series(DashedLineSeries::new(points, 10, 6, style)),
            _ => ctx.draw_series(DashedLineSeries::new(points, 3, 5, style)),
        };
        let dash = s.dash;
        drawn.map_err(err)?.label(&s.label).legend(move |(x, y)| {
            // The legend's sample line in the series' pattern (solid: one long dash).
            let (on, off) = match dash {
                0 => (40, 1),
                1 => (10, 6),
                _ => (3, 5),
            };
            DashedPathElement::new(vec![(x, y), (x + 22, y)], on, off, style)
        });
        ctx.draw_series(s.points.iter().map(|p| Circle::new((p.x, p.y), 4, style)))
            .map_err(err)?;
        ctx.draw_series(s.points.iter().filter_map(|p| {
            p.interval.map(|(lo, hi)| {
                ErrorBar::new_vertical(
                    p.x,
                    lo,
                    p.y,
                    hi,
                    ShapeStyle {
                        filled: false,
                        stroke_width: 1,
                        ..style
                    },
                    8,
                )
            })
        }))
        .map_err(err)?;
    }
    if chart.label_points {
        for (i, s) in chart.series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            ctx.draw_series(s.points.iter().map(|p| {
                Text::new(
                    format!("  {}", s.label),
                    (p.x, p.y),
                    ("sans-serif", 15).into_font().color(&color),
                )
            }))
            .map_err(err)?;
        }
        return Ok(());
    }
    ctx.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Tableau's ten colours: distinct, colour-blind friendlier than plotters' default palette.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Tick labels without noise: 1e-3 .. 1e5 as plain numbers, else scientific.
fn tick(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.0e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks() {
        assert_eq!(tick(0.5), "0.5");
        assert_eq!(tick(128.0), "128");
        assert_eq!(tick(2.5), "2.5");
        assert_eq!(tick(0.00001), "1e-5");
    }
}
