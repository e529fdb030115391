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

use anyhow::Result;

use crate::bench::output::ResultsFile;
use crate::bench::{Cell, Mode, Status};
use crate::chart::{Chart, Point, Series};
use crate::error::input;

/// What a chart measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Median seconds per step.
    Time,
    /// Peak resident memory, MB.
    Memory,
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
}
