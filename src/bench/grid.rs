//! Planning and running a grid of cells: presets, pre-checks that turn impossible cells into
//! rows, child-process isolation, resume, and the largest-batch search.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::cell::{self, estimate_bytes, Phase};
use super::flops::step_flops;
use super::output::{is_finished, ResultsWriter};
use super::{Cell, CellSettings, Measurement, Mode, Status};
use crate::device::Precision;
use crate::hub::HubConfig;
use crate::models::{self, ModelConfig};

/// The original study's experiments and a quick one sized for a small CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// Memory vs sequence length at batch 32 (seq 32, 128, 512, 1024).
    SeedMemorySeq,
    /// Memory vs batch size at sequence 512 (batch 64, 128, 256, 512).
    SeedMemoryBatch,
    /// Inference time vs sequence length at batch 256 (seq 8, 32, 128, 512).
    SeedTime,
    /// Speed and memory at batch 1 and 8, sequence 32 and 128: a few minutes on 2 cores.
    CpuQuick,
}

/// What a preset measures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresetGrid {
    pub batch_sizes: Vec<usize>,
    pub sequence_lengths: Vec<usize>,
    pub speed: bool,
    pub memory: bool,
}

/// The study's three models, by Hub name.
pub const STUDY_MODELS: [&str; 3] = models::config::BUILTIN_MODELS;

impl Preset {
    pub fn grid(self) -> PresetGrid {
        let g = |b: &[usize], s: &[usize], speed, memory| PresetGrid {
            batch_sizes: b.to_vec(),
            sequence_lengths: s.to_vec(),
            speed,
            memory,
        };
        match self {
            Preset::SeedMemorySeq => g(&[32], &[32, 128, 512, 1024], false, true),
            Preset::SeedMemoryBatch => g(&[64, 128, 256, 512], &[512], false, true),
            Preset::SeedTime => g(&[256], &[8, 32, 128, 512], true, false),
            Preset::CpuQuick => g(&[1, 8], &[32, 128], true, true),
        }
    }
}

/// All cells of a grid, in the Hugging Face script's order (mode, model, batch, sequence),
/// each shape at every thread count and precision in turn (so the variants of one shape are
/// measured minutes apart at most, and the machine's drift touches them alike).
pub fn plan(
    models: &[String],
    modes: &[Mode],
    batch_sizes: &[usize],
    sequence_lengths: &[usize],
    threads: &[usize],
    dtypes: &[Precision],
) -> Vec<Cell> {
    let mut cells = Vec::new();
    for &mode in modes {
        for model in models {
            for &batch_size in batch_sizes {
                for &sequence_length in sequence_lengths {
                    for &threads in threads {
                        for &dtype in dtypes {
                            cells.push(Cell {
                                model: model.clone(),
                                mode,
                                batch_size,
                                sequence_length,
                                threads,
                                dtype: Some(dtype),
                            });
                        }
                    }
                }
            }
        }
    }
    cells
}

/// Where cells run.
#[derive(Debug, Clone)]
pub enum Isolation {
    /// A fresh child process of this binary per cell (`bertbench bench-cell`).
    Child { exe: PathBuf },
    /// The current process (quick, but memory of one cell can leak into the next).
    InProcess,
}

impl Isolation {
    /// Each cell in a fresh child process of this binary.
    pub fn this_binary() -> Result<Self> {
        Ok(Isolation::Child {
            exe: std::env::current_exe().context("locating the bertbench binary")?,
        })
    }
}

/// How a grid runs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub settings: CellSettings,
    pub isolation: Isolation,
    /// Cells whose memory estimate exceeds this are refused (bytes).
    pub max_memory: u64,
    /// With `--resume`: run crashed and failed cells again.
    pub retry_failed: bool,
    /// Processes each cell is timed in (`--processes`), interleaved in rounds.
    pub processes: usize,
}

impl RunOptions {
    /// The options of one cell: the run's, at the cell's thread count and precision.
    pub fn for_cell(&self, cell: &Cell) -> Self {
        Self {
            settings: CellSettings {
                threads: cell.threads,
                dtype: cell.dtype.unwrap_or(self.settings.dtype),
                ..self.settings.clone()
            },
            ..self.clone()
        }
    }
}

/// Receives progress while a grid runs.
pub trait Observer {
    /// The machine's matmul peak is being measured (before the first cell).
    fn peak_started(&mut self, _threads: usize) {}
    /// The largest-batch search for one model, mode and sequence length starts.
    fn search_started(&mut self, _model: &str, _mode: Mode, _sequence_length: usize) {}
    fn cell_started(&mut self, _index: usize, _total: usize, _cell: &Cell) {}
    fn cell_progress(&mut self, _phase: Phase, _runs: usize, _elapsed: Duration) {}
    fn cell_skipped(&mut self, _cell: &Cell) {}
    fn cell_finished(&mut self, _m: &Measurement) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl Observer for Quiet {}

/// Loads each model's config once.
#[derive(Default)]
pub struct Configs {
    cache: HashMap<String, ModelConfig>,
}

impl Configs {
    pub fn get(&mut self, model: &str, hub: &HubConfig) -> Result<&ModelConfig> {
        if !self.cache.contains_key(model) {
            let (config, _) = models::open_config(model, hub)?;
            self.cache.insert(model.to_string(), config);
        }
        Ok(&self.cache[model])
    }
}

/// The row for a cell that must not run, if it must not.
pub fn precheck(config: &ModelConfig, cell: &Cell, opts: &RunOptions) -> Option<Measurement> {
    let flops = step_flops(config, cell);
    let estimate = estimate_bytes(config, cell, opts.settings.dtype, opts.settings.device);
    if cell.sequence_length > config.max_position_embeddings {
        return Some(Measurement::failed(
            cell.clone(),
            Status::SequenceTooLong,
            format!(
                "sequence length {} exceeds the model's max_position_embeddings {}",
                cell.sequence_length, config.max_position_embeddings
            ),
            flops,
            estimate,
            &opts.settings,
        ));
    }
    if estimate > opts.max_memory {
        return Some(Measurement::failed(
            cell.clone(),
            Status::TooLarge,
            format!(
                "estimated {:.0} MB exceeds the memory limit of {:.0} MB (--max-memory)",
                super::memory::to_mb(estimate),
                super::memory::to_mb(opts.max_memory)
            ),
            flops,
            estimate,
            &opts.settings,
        ));
    }
    None
}

/// Runs every planned cell not already finished in `writer`, writing each result as it ends.
pub fn run_grid(
    plan: &[Cell],
    opts: &RunOptions,
    writer: &mut ResultsWriter,
    observer: &mut dyn Observer,
) -> Result<()> {
    let hub = HubConfig::from_env(opts.settings.offline);
    let mut configs = Configs::default();
    let (n, k) = (plan.len(), opts.processes.max(1));
    for (step, (round, index)) in interleaved(n, k).into_iter().enumerate() {
        let cell = &plan[index];
        if let Some(done) = writer.results.find(cell) {
            // A cell is timed once per round: one that has this round's process (or
            // failed, or needs no more) is done for the round.
            if is_finished(done, opts.retry_failed, round + 1) {
                observer.cell_skipped(cell);
                continue;
            }
        }
        observer.cell_started(step, n * k, cell);
        let config = configs.get(&cell.model, &hub)?.clone();
        let cell_opts = &opts.for_cell(cell);
        let m = match precheck(&config, cell, cell_opts) {
            Some(row) => row,
            None => run_one(cell, &config, cell_opts, observer)?,
        };
        observer.cell_finished(&m);
        // A cell's earlier processes (this run's rounds, or a resumed run's) and this one.
        let merged = match writer.results.find(cell) {
            Some(prev) => prev.clone().merged(m),
            None => m,
        };
        writer.push(merged)?;
    }
    Ok(())
}

/// The order a grid of `n` cells runs in with `k` processes per cell: `k` rounds over the grid,
/// round `r` starting at cell `r` (mod `n`), as (round, cell index). Every cell's processes are
/// then spread over the whole run, so slow drift of the machine reaches every model alike
/// instead of whichever ran last (the order `scripts/bench-vs-python.sh` uses).
pub fn interleaved(n: usize, k: usize) -> Vec<(usize, usize)> {
    (0..k)
        .flat_map(|round| (0..n).map(move |i| (round, (i + round) % n)))
        .collect()
}

/// Runs one cell where `opts.isolation` says; errors inside the cell become rows.
pub fn run_one(
    cell: &Cell,
    config: &ModelConfig,
    opts: &RunOptions,
    observer: &mut dyn Observer,
) -> Result<Measurement> {
    let settings = &opts.settings;
    match &opts.isolation {
        Isolation::InProcess => {
            let mut progress = |p, r, e| observer.cell_progress(p, r, e);
            Ok(match cell::run_cell(cell, settings, &mut progress) {
                Ok(m) => m,
                Err(e) => failed_row(cell, config, settings, Status::Failed, format!("{e:#}")),
            })
        }
        Isolation::Child { exe } => super::child::run(exe, cell, config, settings, observer),
    }
}

pub(super) fn failed_row(
    cell: &Cell,
    config: &ModelConfig,
    settings: &CellSettings,
    status: Status,
    reason: String,
) -> Measurement {
    Measurement::failed(
        cell.clone(),
        status,
        reason,
        step_flops(config, cell),
        estimate_bytes(config, cell, settings.dtype, settings.device),
        settings,
    )
}

/// The largest batch that fits at one sequence length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaxBatch {
    pub model: String,
    pub mode: Mode,
    pub sequence_length: usize,
    /// `None` when even batch 1 does not fit.
    pub max_batch_size: Option<usize>,
    pub peak_rss_at_max: Option<u64>,
    /// The smallest batch found not to fit, and why.
    pub first_failing_batch: Option<usize>,
    pub failure: Option<String>,
    /// Batch sizes probed, in order.
    pub probes: Vec<(usize, bool)>,
}

/// Finds, by doubling then bisection (each probe a memory-only cell in a child process unless
/// in-process was asked for), the largest batch whose measured peak stays under the limit.
pub fn find_max_batch(
    model: &str,
    mode: Mode,
    sequence_length: usize,
    cap: usize,
    opts: &RunOptions,
    observer: &mut dyn Observer,
) -> Result<MaxBatch> {
    let hub = HubConfig::from_env(opts.settings.offline);
    let (config, _) = models::open_config(model, &hub)?;
    // Probes are measured, not estimated: the estimate only stops probes that would clearly
    // not fit (50% above the limit), so the search never starts a child that exhausts memory.
    let probe_opts = RunOptions {
        settings: CellSettings {
            speed: false,
            memory: true,
            ..opts.settings.clone()
        },
        max_memory: opts.max_memory.saturating_mul(3) / 2,
        ..opts.clone()
    };
    let mut probes = Vec::new();
    let mut probe = |b: usize, observer: &mut dyn Observer| -> Result<Probe> {
        let cell = Cell {
            model: model.to_string(),
            mode,
            batch_size: b,
            sequence_length,
            threads: opts.settings.threads,
            dtype: Some(opts.settings.dtype),
        };
        observer.cell_started(probes.len(), 0, &cell);
        let m = match precheck(&config, &cell, &probe_opts) {
            Some(row) => row,
            None => run_one(&cell, &config, &probe_opts, observer)?,
        };
        let verdict = Probe::of(&m, opts.max_memory);
        observer.cell_finished(&m);
        probes.push((b, verdict.fits));
        Ok(verdict)
    };
    let found = largest_fitting(cap, &mut |b| probe(b, observer))?;
    Ok(MaxBatch {
        model: model.to_string(),
        mode,
        sequence_length,
        max_batch_size: (found.largest > 0).then_some(found.largest),
        peak_rss_at_max: found.peak,
        first_failing_batch: found.failing.as_ref().map(|(h, _)| *h),
        failure: found.failing.map(|(_, w)| w),
        probes,
    })
}

/// One probe's verdict: whether the batch fits, its measured peak, and why not.
#[derive(Debug, Clone, PartialEq)]
struct Probe {
    fits: bool,
    peak: Option<u64>,
    why: Option<String>,
}

impl Probe {
    /// A memory-only cell fits when it ran and its measured peak is at most `limit` bytes.
    fn of(m: &Measurement, limit: u64) -> Self {
        let peak = m.memory.as_ref().map(|mem| mem.peak_rss);
        let fits = m.status == Status::Ok && peak.is_some_and(|p| p <= limit);
        let why = if fits {
            None
        } else if m.status == Status::Ok {
            Some(format!(
                "measured peak {:.0} MB exceeds the limit of {:.0} MB",
                super::memory::to_mb(peak.unwrap_or(0)),
                super::memory::to_mb(limit)
            ))
        } else {
            Some(format!(
                "{}: {}",
                m.status.as_str(),
                m.reason.clone().unwrap_or_default()
            ))
        };
        Probe { fits, peak, why }
    }
}

/// What the search for the largest batch found.
#[derive(Debug, Clone, PartialEq)]
struct Found {
    /// The largest batch that fits (0: not even batch 1), and its measured peak.
    largest: usize,
    peak: Option<u64>,
    /// The smallest batch found not to fit, and why; `None` when the cap was reached.
    failing: Option<(usize, String)>,
}

/// The largest batch up to `cap` that `probe` says fits, by doubling from 1 and then
/// bisecting between the last fit and the first failure.
fn largest_fitting(cap: usize, probe: &mut dyn FnMut(usize) -> Result<Probe>) -> Result<Found> {
    let (mut lo, mut lo_peak) = (0usize, None);
    let mut hi: Option<(usize, String)> = None;
    let mut b = 1usize;
    while b <= cap {
        let p = probe(b)?;
        if p.fits {
            (lo, lo_peak) = (b, p.peak);
            b *= 2;
        } else {
            hi = Some((b, p.why.unwrap_or_default()));
            break;
        }
    }
    if let Some((mut h, mut why_h)) = hi.clone() {
        while h - lo > 1 {
            let mid = lo + (h - lo) / 2;
            let p = probe(mid)?;
            if p.fits {
                (lo, lo_peak) = (mid, p.peak);
            } else {
                (h, why_h) = (mid, p.why.unwrap_or_default());
            }
        }
        hi = Some((h, why_h));
    }
    Ok(Found {
        largest: lo,
        peak: lo_peak,
        failing: hi,
    })
}

/// Writes the largest-batch table as CSV.
pub fn write_max_batch_csv(rows: &[MaxBatch], limit: u64, path: &std::path::Path) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "model",
        "mode",
        "sequence_length",
        "max_batch_size",
        "peak_rss_mb_at_max",
        "first_failing_batch_size",
        "failure",
        "memory_limit_mb",
        "probes",
    ])?;
    for r in rows {
        w.write_record([
            r.model.clone(),
            r.mode.as_str().into(),
            r.sequence_length.to_string(),
            r.max_batch_size
                .map(|b| b.to_string())
                .unwrap_or_else(|| "N/A".into()),
            r.peak_rss_at_max
                .map(|p| format!("{:.2}", super::memory::to_mb(p)))
                .unwrap_or_default(),
            r.first_failing_batch
                .map(|b| b.to_string())
                .unwrap_or_default(),
            r.failure.clone().unwrap_or_default(),
            format!("{:.0}", super::memory::to_mb(limit)),
            r.probes
                .iter()
                .map(|(b, ok)| format!("{b}:{}", if *ok { "fits" } else { "fails" }))
                .collect::<Vec<_>>()
                .join(" "),
        ])?;
    }
    crate::record::atomic_write(path, &w.into_inner()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The search doubles to the first failure and bisects back to the largest fit, probing
    /// each batch once; batch 1 failing gives 0, and reaching the cap gives no failure.
    #[test]
    fn the_largest_batch_is_found_by_doubling_then_bisection() {
        let search = |fits_up_to: usize, cap: usize| {
            let mut probed = Vec::new();
            let found = largest_fitting(cap, &mut |b| {
                probed.push(b);
                let fits = b <= fits_up_to;
                Ok(Probe {
                    fits,
                    peak: fits.then_some(b as u64 * 10),
                    why: (!fits).then(|| format!("{b} is too large")),
                })
            })
            .unwrap();
            (found, probed)
        };
        let (found, probed) = search(37, 1000);
        assert_eq!(
            found,
            Found {
                largest: 37,
                peak: Some(370),
                failing: Some((38, "38 is too large".into())),
            }
        );
        assert_eq!(probed, [1, 2, 4, 8, 16, 32, 64, 48, 40, 36, 38, 37]);
        let (found, probed) = search(0, 1000);
        assert_eq!(
            found,
            Found {
                largest: 0,
                peak: None,
                failing: Some((1, "1 is too large".into())),
            }
        );
        assert_eq!(probed, [1]);
        let (found, probed) = search(1000, 8);
        assert_eq!((found.largest, found.failing), (8, None));
        assert_eq!(probed, [1, 2, 4, 8]);
        // A failing probe stops the search with its error.
        let failed = largest_fitting(8, &mut |_| Err(anyhow::anyhow!("child died")));
        assert_eq!(failed.unwrap_err().to_string(), "child died");
    }

    /// K rounds, each cell once per round, round r starting at cell r: each cell's processes
    /// fall in every part of the run.
    #[test]
    fn rounds_interleave_the_cells() {
        let order = interleaved(3, 3);
        let cells: Vec<usize> = order.iter().map(|(_, c)| *c).collect();
        assert_eq!(cells, [0, 1, 2, 1, 2, 0, 2, 0, 1]);
        assert!(order.iter().take(3).all(|(r, _)| *r == 0));
        for c in 0..3 {
            assert_eq!(cells.iter().filter(|x| **x == c).count(), 3);
        }
        assert_eq!(interleaved(4, 1), [(0, 0), (0, 1), (0, 2), (0, 3)]);
        assert!(interleaved(0, 3).is_empty());
    }

    #[test]
    fn plan_order_and_presets() {
        let cells = plan(
            &["a".into(), "b".into()],
            &[Mode::Inference],
            &[1, 8],
            &[32, 128],
            &[2],
            &[Precision::F32],
        );
        assert_eq!(cells.len(), 8);
        assert_eq!(
            cells[0],
            Cell {
                model: "a".into(),
                mode: Mode::Inference,
                batch_size: 1,
                sequence_length: 32,
                threads: 2,
                dtype: Some(Precision::F32),
            }
        );
        assert_eq!(cells[1].sequence_length, 128);
        assert_eq!(cells[4].model, "b");
        // Thread counts vary fastest: one shape's counts run back to back.
        let swept = plan(
            &["a".into()],
            &[Mode::Inference],
            &[1],
            &[32, 128],
            &[1, 2],
            &[Precision::F32],
        );
        let order: Vec<(usize, usize)> = swept
            .iter()
            .map(|c| (c.sequence_length, c.threads))
            .collect();
        assert_eq!(order, [(32, 1), (32, 2), (128, 1), (128, 2)]);
        // Precisions vary fastest of all: a shape's precisions run back to back.
        let precisions = plan(
            &["a".into()],
            &[Mode::Inference],
            &[1],
            &[32, 128],
            &[2],
            &[Precision::F32, Precision::Int8],
        );
        let order: Vec<(usize, Precision)> = precisions
            .iter()
            .map(|c| (c.sequence_length, c.precision()))
            .collect();
        assert_eq!(
            order,
            [
                (32, Precision::F32),
                (32, Precision::Int8),
                (128, Precision::F32),
                (128, Precision::Int8)
            ]
        );
        assert_eq!(precisions[1].variant(), "a int8");
        assert_eq!(Cell::split_variant("a int8"), ("a", " int8"));
        assert_eq!(Cell::split_variant("org/a"), ("org/a", ""));
        assert_eq!(
            Preset::SeedMemorySeq.grid().sequence_lengths,
            vec![32, 128, 512, 1024]
        );
        assert_eq!(
            Preset::SeedMemoryBatch.grid().batch_sizes,
            vec![64, 128, 256, 512]
        );
        let t = Preset::SeedTime.grid();
        assert_eq!((t.batch_sizes, t.speed, t.memory), (vec![256], true, false));
    }
}
