//! Plots of benchmark results, with the interface and look of Hugging Face's `plot_csv_file.py`
//! (one series per model x batch size, or per model x sequence length with `--plot-along-batch`;
//! both axes logarithmic unless asked otherwise) without its bug (it cast values to integers
//! along the batch axis, so times under a second plotted as 0), plus error bars (the median's
//! 95% confidence interval) when the data comes from the tidy results file.
//!
//! Rendered with plotters and a font shipped in `assets/fonts` (no system fonts, no C
//! libraries); PNG or SVG by the file's extension.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use plotters::coord::combinators::BindKeyPoints;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;

use crate::bench::output::ResultsFile;
use crate::bench::{Cell, Mode, Status};
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

/// What a chart measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Median seconds per step.
    Time,
    /// Peak resident memory, MB.
    Memory,
}

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

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

/// Series from a Hugging Face-layout CSV (`model,batch_size,sequence_length,result`); `N/A`
/// rows are skipped. `short_names` replace the model names in order of first appearance.
pub fn series_from_hf_csv(
    path: &Path,
    along_batch: bool,
    short_names: &[String],
) -> Result<Vec<Series>> {
    let shown = path.display().to_string();
    let mut reader =
        csv::Reader::from_path(path).map_err(|e| input(format!("cannot read {shown}: {e}")))?;
    let headers = reader
        .headers()
        .map_err(|e| input(format!("{shown}: {e}")))?
        .clone();
    let want = ["model", "batch_size", "sequence_length", "result"];
    if headers.iter().collect::<Vec<_>>() != want {
        return Err(input(format!(
            "{shown}: expected the columns {} (a Hugging Face benchmark CSV), found {}",
            want.join(","),
            headers.iter().collect::<Vec<_>>().join(",")
        )));
    }
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let r = record.map_err(|e| input(format!("{shown}: row {}: {e}", i + 2)))?;
        let num = |col: usize, what: &str| -> Result<f64> {
            r[col].trim().parse::<f64>().map_err(|_| {
                input(format!(
                    "{shown}: row {}: `{what}` = {:?} is not a number",
                    i + 2,
                    &r[col]
                ))
            })
        };
        let (b, s) = (num(1, "batch_size")?, num(2, "sequence_length")?);
        if r[3].trim() == "N/A" {
            continue;
        }
        rows.push((r[0].to_string(), b, s, num(3, "result")?, None));
    }
    Ok(group(rows, along_batch, short_names))
}

/// Series from a bench run's results (`results.json`): medians with their 95% CI for time
/// (the two-level one for cells timed in several processes), peak resident MB for memory.
pub fn series_from_results(
    results: &ResultsFile,
    mode: Mode,
    metric: Metric,
    along_batch: bool,
    short_names: &[String],
) -> Vec<Series> {
    let rows = results
        .plan
        .iter()
        .filter(|c| c.mode == mode)
        .filter_map(|c| results.find(c))
        .filter(|m| m.status == Status::Ok)
        .filter_map(|m| {
            let (y, interval) = match metric {
                Metric::Time => {
                    // The best-covering interval (2-level with several processes) and its point.
                    let (point, low, high) = m.speed.as_ref()?.median_interval();
                    (point, Some((low, high)))
                }
                Metric::Memory => (
                    crate::bench::memory::to_mb(m.memory.as_ref()?.peak_rss),
                    None,
                ),
            };
            Some((
                m.cell.variant(),
                m.cell.batch_size as f64,
                m.cell.sequence_length as f64,
                y,
                interval,
                m.cell.threads,
            ))
        })
        .collect::<Vec<_>>();
    if results.thread_counts().len() < 2 {
        let rows = rows
            .into_iter()
            .map(|(model, b, s, y, i, _)| (model, b, s, y, i))
            .collect();
        return group(rows, along_batch, short_names);
    }
    // A thread sweep: one line per model and thread count, named here (short names apply to
    // the models, in plan order).
    let models = crate::bench::distinct(results.plan.iter().map(|c| c.model.clone()));
    let rows = rows
        .into_iter()
        .map(|(model, b, s, y, i, threads)| {
            let name = short_name(&model, &models, short_names);
            (
                format!("{name}, {}", crate::bench::threads_label(threads)),
                b,
                s,
                y,
                i,
            )
        })
        .collect();
    group(rows, along_batch, &[])
}

/// Series from the tidy `results.csv` of a bench run: medians with their 95% CI as error bars
/// (time), or peak resident MB (memory), for one mode; rows that are not `ok` are skipped.
pub fn series_from_tidy_csv(
    path: &Path,
    mode: Mode,
    metric: Metric,
    along_batch: bool,
    short_names: &[String],
) -> Result<Vec<Series>> {
    let shown = path.display().to_string();
    let mut reader =
        csv::Reader::from_path(path).map_err(|e| input(format!("cannot read {shown}: {e}")))?;
    let headers = reader
        .headers()
        .map_err(|e| input(format!("{shown}: {e}")))?
        .clone();
    let col = |name: &str| -> Result<usize> {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| input(format!("{shown}: no `{name}` column")))
    };
    let (c_model, c_mode, c_b, c_s, c_status) = (
        col("model")?,
        col("mode")?,
        col("batch_size")?,
        col("sequence_length")?,
        col("status")?,
    );
    let (c_med, c_lo, c_hi, c_mem) = (
        col("median_s")?,
        col("median_ci95_low_s")?,
        col("median_ci95_high_s")?,
        col("peak_rss_mb")?,
    );
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let r = record.map_err(|e| input(format!("{shown}: row {}: {e}", i + 2)))?;
        if &r[c_mode] != mode.as_str() || &r[c_status] != "ok" {
            continue;
        }
        let num = |c: usize| r[c].trim().parse::<f64>().ok();
        let (Some(b), Some(s)) = (num(c_b), num(c_s)) else {
            return Err(input(format!(
                "{shown}: row {}: batch_size and sequence_length must be numbers",
                i + 2
            )));
        };
        let value = match metric {
            Metric::Time => num(c_med).map(|m| (m, num(c_lo).zip(num(c_hi)))),
            Metric::Memory => num(c_mem).map(|m| (m, None)),
        };
        if let Some((y, interval)) = value {
            rows.push((r[c_model].to_string(), b, s, y, interval));
        }
    }
    Ok(group(rows, along_batch, short_names))
}

/// Whether a CSV is bertbench's tidy results file (rather than a Hugging Face-layout one).
pub fn is_tidy_csv(path: &Path) -> Result<bool> {
    let mut reader = csv::Reader::from_path(path)
        .map_err(|e| input(format!("cannot read {}: {e}", path.display())))?;
    let headers = reader
        .headers()
        .map_err(|e| input(format!("{}: {e}", path.display())))?;
    Ok(headers.iter().any(|h| h == "median_s"))
}

type Row = (String, f64, f64, f64, Option<(f64, f64)>);

/// A series' model label with its short name: short names replace the models (not their
/// precision variants) in the order of `models`; a variant keeps its precision after it.
fn short_name(label: &str, models: &[String], short_names: &[String]) -> String {
    let (base, suffix) = Cell::split_variant(label);
    let short = models
        .iter()
        .position(|x| x == base)
        .and_then(|i| short_names.get(i));
    format!("{}{suffix}", short.map_or(base, |s| s.as_str()))
}

/// Groups (model, batch, seq, value) rows into series: per model x batch along sequence length,
/// or per model x sequence length along batch size, as Hugging Face's script does.
fn group(rows: Vec<Row>, along_batch: bool, short_names: &[String]) -> Vec<Series> {
    let mut models: Vec<String> = Vec::new();
    for (m, ..) in &rows {
        if !models.contains(m) {
            models.push(m.clone());
        }
    }
    let bases = crate::bench::distinct(models.iter().map(|m| Cell::split_variant(m).0.to_string()));
    let name = |m: &str| short_name(m, &bases, short_names);
    let mut groups: BTreeMap<(usize, u64), Series> = BTreeMap::new();
    for (model, b, s, y, interval) in rows {
        let (key_value, x, key_name) = if along_batch {
            (s, b, "seq_len")
        } else {
            (b, s, "bs")
        };
        let idx = models.iter().position(|m| *m == model).unwrap_or(0);
        let entry = groups
            .entry((idx, key_value as u64))
            .or_insert_with(|| Series {
                label: format!("{} - {key_name}: {}", name(&model), key_value),
                points: Vec::new(),
                ..Default::default()
            });
        entry.points.push(Point { x, y, interval });
    }
    let mut series: Vec<Series> = groups.into_values().collect();
    for s in &mut series {
        s.points.sort_by(|a, b| a.x.total_cmp(&b.x));
    }
    series
}

/// One of the time and memory views a report plots: a mode, a metric, an x axis, and its
/// file name (`inference_time_vs_sequence`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub mode: Mode,
    pub metric: Metric,
    pub along_batch: bool,
    pub name: String,
}

/// The eight views (two modes x time and memory x along sequence or batch), in report order.
pub fn views() -> Vec<View> {
    let mut out = Vec::new();
    for mode in [Mode::Inference, Mode::Training] {
        for (metric, what) in [(Metric::Time, "time"), (Metric::Memory, "memory")] {
            for along_batch in [false, true] {
                let axis = if along_batch { "batch" } else { "sequence" };
                out.push(View {
                    mode,
                    metric,
                    along_batch,
                    name: format!("{}_{what}_vs_{axis}", mode.as_str()),
                });
            }
        }
    }
    out
}

/// The chart Hugging Face's script would draw for these series.
pub fn hf_chart(
    series: Vec<Series>,
    metric: Metric,
    mode: Mode,
    along_batch: bool,
    log: bool,
) -> Chart {
    let what = match metric {
        Metric::Time => "Time usage",
        Metric::Memory => "Memory usage",
    };
    let phase = match mode {
        Mode::Inference => "inference",
        Mode::Training => "training",
    };
    Chart {
        title: format!("{what} for {phase}"),
        x_label: if along_batch {
            "batch size".into()
        } else {
            "sequence length (tokens)".into()
        },
        y_label: match metric {
            Metric::Time => "median time per step (s)".into(),
            Metric::Memory => "peak resident memory (MB)".into(),
        },
        log_x: log,
        log_y: log,
        y_from_zero: true,
        series,
        label_points: false,
    }
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
    fn grouping_follows_the_hf_script() {
        let rows = vec![
            ("bert".to_string(), 8.0, 128.0, 0.5, None),
            ("bert".to_string(), 8.0, 32.0, 0.1, None),
            ("bert".to_string(), 1.0, 32.0, 0.02, None),
            ("distil".to_string(), 8.0, 32.0, 0.05, None),
        ];
        let s = group(rows.clone(), false, &[]);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].label, "bert - bs: 1");
        assert_eq!(s[1].label, "bert - bs: 8");
        assert_eq!(
            s[1].points.iter().map(|p| p.x).collect::<Vec<_>>(),
            vec![32.0, 128.0]
        );
        let s = group(rows, true, &["B".into(), "D".into()]);
        assert_eq!(
            s.iter().map(|s| s.label.as_str()).collect::<Vec<_>>(),
            ["B - seq_len: 32", "B - seq_len: 128", "D - seq_len: 32"]
        );
        // Sub-second values stay what they are (the original script plotted them as 0).
        assert_eq!(s[0].points[0].y, 0.02);
    }

    #[test]
    fn ticks() {
        assert_eq!(tick(0.5), "0.5");
        assert_eq!(tick(128.0), "128");
        assert_eq!(tick(2.5), "2.5");
        assert_eq!(tick(0.00001), "1e-5");
    }
}
