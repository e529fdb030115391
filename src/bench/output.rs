//! Writing results as they come: Hugging Face's four CSVs (`model,batch_size,sequence_length,result`),
//! the environment file, a tidy `results.csv` with every statistic (units in the column names)
//! and `results.json` with the raw samples, which is also what `--resume` reads back.
//!
//! Every file is rewritten whole after each cell, through a temporary file and a rename, so an
//! interrupt never leaves a half-written file and never loses a finished cell.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::env::Key;
use super::memory::to_mb;
use super::peak::PeakShape;
use super::{Cell, CellSettings, Measurement, Mode, Status};
use crate::device::Precision;
use crate::error::input;
use crate::record::atomic_write;
use crate::stats;

/// Where each output goes.
#[derive(Debug, Clone)]
pub struct OutputFiles {
    pub dir: PathBuf,
    pub inference_time: PathBuf,
    pub inference_memory: PathBuf,
    pub train_time: PathBuf,
    pub train_memory: PathBuf,
    pub env_info: PathBuf,
    pub results_csv: PathBuf,
    pub results_json: PathBuf,
}

/// `results.json`: everything a bench run measured (what `report`, `compare` and `merge` read).
pub const RESULTS_JSON: &str = "results.json";
/// `results.csv`: one row per cell.
pub const RESULTS_CSV: &str = "results.csv";
/// `env.csv`: the environment, as Hugging Face's script writes it.
pub const ENV_CSV: &str = "env.csv";

impl OutputFiles {
    /// Default names inside `dir`; relative overrides are taken inside `dir` too.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            inference_time: dir.join("inference_time.csv"),
            inference_memory: dir.join("inference_memory.csv"),
            train_time: dir.join("train_time.csv"),
            train_memory: dir.join("train_memory.csv"),
            env_info: dir.join(ENV_CSV),
            results_csv: dir.join(RESULTS_CSV),
            results_json: dir.join(RESULTS_JSON),
        }
    }
}

/// The content of `results.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ResultsFile {
    pub bertbench_version: String,
    pub environment: Vec<(String, String)>,
    pub peak_matmul: Vec<PeakShape>,
    /// Settings shared by every cell of the run.
    pub settings: Option<CellSettings>,
    /// The cells planned, in order (so a resumed run knows the whole grid).
    pub plan: Vec<Cell>,
    pub measurements: Vec<Measurement>,
    /// A shard of a larger grid (`bench --shard K/N`): which one, and the whole grid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<super::shard::ShardRecord>,
}

impl ResultsFile {
    /// Reads a `results.json`; a missing or malformed file is an input error naming it.
    pub fn read(path: &Path) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(input(format!(
                    "{}: no such file (expected the results.json of a bench run)",
                    path.display()
                )))
            }
            other => other.with_context(|| format!("reading {}", path.display()))?,
        };
        let mut results: Self = serde_json::from_str(&text).map_err(|e| {
            input(format!(
                "{}: not a bertbench results file: {e}",
                path.display()
            ))
        })?;
        // Files from before the thread axis: every cell and peak ran at the run's count.
        let threads = results.settings.as_ref().map_or(0, |s| s.threads);
        let cells = results
            .plan
            .iter_mut()
            .chain(results.measurements.iter_mut().map(|m| &mut m.cell));
        let dtype = results.settings.as_ref().map(|s| s.dtype);
        for cell in cells {
            if cell.threads == 0 {
                cell.threads = threads;
            }
            // Files from before the precision axis: every cell ran at the run's precision.
            if cell.dtype.is_none() {
                cell.dtype = dtype;
            }
        }
        for shape in results.peak_matmul.iter_mut().filter(|s| s.threads == 0) {
            shape.threads = threads;
        }
        // Files from before the pooled spread get it too, so every reader sees one interval.
        results.pool_between();
        Ok(results)
    }

    /// The measured peak matmul rate at `threads` compute threads for a cell at `precision`,
    /// if measured: of the product its cells run on (int8's, bf16's on the CPU, else the f32
    /// products', see [`super::peak::kind_of`]).
    pub fn peak_gflops(&self, threads: usize, precision: Precision) -> Option<f64> {
        let cpu = self.settings.as_ref().is_none_or(|s| s.device.is_cpu());
        let kind = super::peak::kind_of(precision, cpu);
        let at: Vec<PeakShape> = self
            .peak_matmul
            .iter()
            .filter(|s| s.threads == threads)
            .cloned()
            .collect();
        super::peak::peak_of_kind(&at, kind)
    }

    /// The thread counts of the plan, in plan order.
    pub fn thread_counts(&self) -> Vec<usize> {
        super::distinct(self.plan.iter().map(|c| c.threads))
    }

    /// The precisions of the plan, in plan order.
    pub fn precisions(&self) -> Vec<Precision> {
        super::distinct(self.plan.iter().map(|c| c.precision()))
    }

    /// A value of the environment file (`env.csv`), if the run recorded it.
    pub fn env(&self, key: Key) -> Option<&str> {
        self.environment
            .iter()
            .find(|(k, _)| k == key.name())
            .map(|(_, v)| v.as_str())
    }

    /// A value of the environment file read as its type (a count, megabytes, a device);
    /// `None` where the run did not record it or it does not read as one.
    pub fn env_parsed<T: std::str::FromStr>(&self, key: Key) -> Option<T> {
        self.env(key)?.trim().parse().ok()
    }

    /// Measurement of a cell, the latest if several.
    pub fn find(&self, cell: &Cell) -> Option<&Measurement> {
        self.measurements.iter().rev().find(|m| &m.cell == cell)
    }

    /// Gives every cell timed in several processes the two-level interval from the run's
    /// pooled spread ([`stats::Pool`]), pooled over the cells at the same thread count and
    /// precision (drift scales a thread count's cells alike; a different count shares the
    /// machine differently, and a different precision runs other kernels).
    pub fn pool_between(&mut self) {
        let setups = super::distinct(
            self.measurements
                .iter()
                .map(|m| (m.cell.threads, m.cell.precision())),
        );
        for (threads, precision) in setups {
            let same = move |m: &Measurement| {
                (m.cell.threads, m.cell.precision()) == (threads, precision)
                    && m.status == Status::Ok
            };
            let at = |m: &&mut Measurement| same(m);
            let pool = stats::Pool::of(
                self.measurements
                    .iter()
                    .filter(|m| same(m))
                    .filter_map(|m| m.speed.as_ref()?.between.as_ref())
                    .map(|b| b.medians.as_slice()),
            );
            for m in self.measurements.iter_mut().filter(at) {
                if let Some(b) = m.speed.as_mut().and_then(|s| s.between.as_mut()) {
                    if let Some(pooled) = stats::Between::pooled(&b.medians, pool.as_ref()) {
                        *b = pooled;
                    }
                }
            }
        }
    }
}

/// Keeps the results of a run and rewrites the output files after each cell.
pub struct ResultsWriter {
    pub files: OutputFiles,
    pub results: ResultsFile,
}

impl ResultsWriter {
    pub fn new(files: OutputFiles, mut results: ResultsFile) -> Result<Self> {
        results.pool_between();
        std::fs::create_dir_all(&files.dir).map_err(|e| {
            input(format!(
                "cannot create output directory {}: {e}",
                files.dir.display()
            ))
        })?;
        let w = Self { files, results };
        w.write_all()?;
        Ok(w)
    }

    /// Records a finished cell (replacing an earlier row of the same cell) and rewrites files.
    pub fn push(&mut self, m: Measurement) -> Result<()> {
        self.results.measurements.retain(|old| old.cell != m.cell);
        self.results.measurements.push(m);
        self.results.pool_between();
        self.write_all()
    }

    pub fn write_all(&self) -> Result<()> {
        let r = &self.results;
        atomic_write(
            &self.files.results_json,
            serde_json::to_string_pretty(r)?.as_bytes(),
        )?;
        atomic_write(&self.files.results_csv, &tidy_csv(r)?)?;
        let mut env = csv::Writer::from_writer(Vec::new());
        env.write_record(["key", "value"])?;
        for (k, v) in &r.environment {
            env.write_record([k, v])?;
        }
        atomic_write(&self.files.env_info, &env.into_inner()?)?;
        let (speed, memory) = r
            .settings
            .as_ref()
            .map(|s| (s.speed, s.memory))
            .unwrap_or((true, true));
        for (mode, path_time, path_memory) in [
            (
                Mode::Inference,
                &self.files.inference_time,
                &self.files.inference_memory,
            ),
            (
                Mode::Training,
                &self.files.train_time,
                &self.files.train_memory,
            ),
        ] {
            if !r.plan.iter().any(|c| c.mode == mode) {
                continue;
            }
            if speed {
                atomic_write(path_time, &hf_csv(r, mode, Metric::Time)?)?;
            }
            if memory {
                atomic_write(path_memory, &hf_csv(r, mode, Metric::Memory)?)?;
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Metric {
    Time,
    Memory,
}

/// Hugging Face's layout: one row per planned cell of `mode`, `result` = median seconds with 4
/// decimals (time) or peak resident MB as an integer (memory), `N/A` when there is no number.
/// A run that sweeps thread counts adds a `threads` column after `sequence_length` (readers
/// that take the columns by name, as Hugging Face's plot script does, are unaffected).
fn hf_csv(r: &ResultsFile, mode: Mode, metric: Metric) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let sweep = r.thread_counts().len() > 1;
    let precisions = r.precisions().len() > 1;
    let mut header = vec!["model", "batch_size", "sequence_length"];
    if sweep {
        header.push("threads");
    }
    if precisions {
        header.push("dtype");
    }
    header.push("result");
    w.write_record(&header)?;
    for cell in r.plan.iter().filter(|c| c.mode == mode) {
        let m = r.find(cell);
        let value = match metric {
            Metric::Time => m.and_then(|m| m.median_s()).map(|s| format!("{s:.4}")),
            Metric::Memory => m
                .and_then(|m| m.memory.as_ref())
                .map(|mem| format!("{}", mem.peak_rss >> 20)),
        };
        let mut row = vec![
            cell.model.clone(),
            cell.batch_size.to_string(),
            cell.sequence_length.to_string(),
        ];
        if sweep {
            row.push(cell.threads.to_string());
        }
        if precisions {
            row.push(cell.precision().as_str().to_string());
        }
        row.push(value.unwrap_or_else(|| "N/A".into()));
        w.write_record(&row)?;
    }
    Ok(w.into_inner()?)
}

/// Column names of the tidy results file.
pub const TIDY_COLUMNS: [&str; 50] = [
    "model",
    "mode",
    "batch_size",
    "sequence_length",
    "status",
    "reason",
    "runs",
    "warmup_runs",
    "median_s",
    "mean_s",
    "std_s",
    "min_s",
    "max_s",
    "q1_s",
    "q3_s",
    "iqr_s",
    "p90_s",
    "p99_s",
    "median_ci95_low_s",
    "median_ci95_high_s",
    "median_ci_coverage",
    "outliers_low_severe",
    "outliers_low_mild",
    "outliers_high_mild",
    "outliers_high_severe",
    "samples_per_s",
    "tokens_per_s",
    "flops_per_step",
    "gflops_per_s",
    "share_of_peak_matmul",
    "peak_rss_mb",
    "peak_rss_above_baseline_mb",
    "baseline_rss_mb",
    "model_rss_mb",
    "alloc_before_step_mb",
    "alloc_peak_mb",
    "gpu_process_peak_mb",
    "gpu_device_peak_mb",
    "energy_j_per_1k_seq",
    "energy_source",
    "estimated_mb",
    "dtype",
    "device",
    "threads",
    "weights",
    "seed",
    "processes",
    "process_mean_median_s",
    "between_ci95_low_s",
    "between_ci95_high_s",
];

fn tidy_csv(r: &ResultsFile) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(TIDY_COLUMNS)?;
    let peak = |m: &Measurement| r.peak_gflops(m.cell.threads, m.cell.precision());
    let f = |x: Option<f64>| x.map(|v| format!("{v}")).unwrap_or_default();
    let mb = |x: Option<u64>| x.map(|v| format!("{:.2}", to_mb(v))).unwrap_or_default();
    for cell in &r.plan {
        let Some(m) = r.find(cell) else { continue };
        let s = m.speed.as_ref().map(|s| &s.summary);
        let between = m.speed.as_ref().and_then(|s| s.between.as_ref());
        let mem = m.memory.as_ref();
        let energy = m.speed.as_ref().and_then(|s| s.energy.as_ref());
        let row: Vec<String> = vec![
            m.cell.model.clone(),
            m.cell.mode.as_str().into(),
            m.cell.batch_size.to_string(),
            m.cell.sequence_length.to_string(),
            m.status.as_str().into(),
            m.reason.clone().unwrap_or_default(),
            s.map(|s| s.n.to_string()).unwrap_or_default(),
            m.speed
                .as_ref()
                .map(|s| s.timings.warmup.len().to_string())
                .unwrap_or_default(),
            f(s.map(|s| s.median)),
            f(s.map(|s| s.mean)),
            f(s.map(|s| s.std_dev)),
            f(s.map(|s| s.min)),
            f(s.map(|s| s.max)),
            f(s.map(|s| s.q1)),
            f(s.map(|s| s.q3)),
            f(s.map(|s| s.iqr)),
            f(s.map(|s| s.p90)),
            f(s.map(|s| s.p99)),
            f(s.map(|s| s.median_ci_low)),
            f(s.map(|s| s.median_ci_high)),
            f(s.map(|s| s.median_ci_coverage)),
            s.map(|s| s.outliers.low_severe.to_string())
                .unwrap_or_default(),
            s.map(|s| s.outliers.low_mild.to_string())
                .unwrap_or_default(),
            s.map(|s| s.outliers.high_mild.to_string())
                .unwrap_or_default(),
            s.map(|s| s.outliers.high_severe.to_string())
                .unwrap_or_default(),
            f(m.samples_per_s()),
            f(m.tokens_per_s()),
            m.flops.to_string(),
            f(m.gflops()),
            f(m.gflops().zip(peak(m)).map(|(g, p)| g / p)),
            mb(mem.map(|m| m.peak_rss)),
            mb(mem.map(|m| m.peak_above_baseline())),
            mb(mem.map(|m| m.baseline_rss)),
            mb(mem.map(|m| m.model_rss)),
            mb(mem.map(|m| m.alloc_before_step)),
            mb(mem.map(|m| m.alloc_peak)),
            mb(mem.and_then(|m| m.gpu_process_peak)),
            mb(mem.and_then(|m| m.gpu_device_peak)),
            f(energy.and_then(|e| e.per_1k_sequences())),
            energy.map(|e| e.source.as_str()).unwrap_or_default().into(),
            format!("{:.2}", to_mb(m.estimated_bytes)),
            m.settings.dtype.as_str().into(),
            m.settings.device.to_string(),
            m.cell.threads.to_string(),
            if m.settings.load_weights {
                "checkpoint"
            } else {
                "random"
            }
            .into(),
            m.settings.seed.to_string(),
            m.processes().to_string(),
            f(between.map(|b| b.center)),
            f(between.map(|b| b.low)),
            f(between.map(|b| b.high)),
        ];
        w.write_record(&row)?;
    }
    Ok(w.into_inner()?)
}

/// Whether a recorded measurement counts as finished for `--resume` (crashes are retried only
/// with `--retry-failed`), when each cell is to be timed in `processes` processes: a cell with
/// timings from fewer is measured again (memory-only cells need one).
pub fn is_finished(m: &Measurement, retry_failed: bool, processes: usize) -> bool {
    match m.status {
        Status::Crashed | Status::Failed => !retry_failed,
        Status::Ok if m.speed.is_some() => m.processes() >= processes.max(1),
        _ => true,
    }
}
