//! A whole bench run as one library call: plan the grid, resume what a folder already holds,
//! measure the machine's matmul peak, run the cells, search the largest batch, and write the
//! results. `bertbench bench` and `bertbench run` are this call with progress drawn on the
//! terminal; a library user passes any [`crate::job::Observer`] (the grid's progress reaches
//! it through [`super::progress::CellProgress`]).

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use super::grid::{self, Isolation, MaxBatch, Observer, Preset, RunOptions, STUDY_MODELS};
use super::output::{OutputFiles, ResultsFile, ResultsWriter};
use super::peak::PeakShape;
use super::shard::{self, Shard, ShardRecord};
use super::{distinct, env, memory, peak, Cell, CellSettings, Mode, TimingPolicy};
use crate::device::{DeviceSpec, Precision};
use crate::error::input;
use crate::hub::HubConfig;

/// Everything a bench run needs; built by the CLI from its flags, or by [`BenchConfig::new`].
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Built-in names, Hub ids or local directories.
    pub models: Vec<String>,
    pub modes: Vec<Mode>,
    pub batch_sizes: Vec<usize>,
    pub sequence_lengths: Vec<usize>,
    /// Compute thread counts, each cell measured at every one (in child processes; a run in
    /// this process has one count, this process's).
    pub threads: Vec<usize>,
    /// Precisions, each cell measured at every one (the first is `settings.dtype`).
    pub dtypes: Vec<Precision>,
    /// What every cell shares: precision, device, this process's threads, seed, what to
    /// measure, timing.
    pub settings: CellSettings,
    /// Where cells run: a fresh child process each, or this process.
    pub isolation: Isolation,
    /// Where the results go.
    pub files: OutputFiles,
    /// Memory limit in bytes; `None`: the memory available when the run starts.
    pub max_memory: Option<u64>,
    /// Continue the run already in `files.dir`, skipping finished cells.
    pub resume: bool,
    /// Time each cell in this many child processes, interleaved in rounds (1: one process).
    pub processes: usize,
    /// With `resume`, run crashed and failed cells again.
    pub retry_failed: bool,
    /// Measure the machine's matmul peak first (cells then report their share of it).
    pub measure_peak: bool,
    /// Search the largest batch that fits for each model, mode and sequence length, up to
    /// this batch size.
    pub find_max_batch: Option<usize>,
    /// Measure only this part of the grid ([`super::shard`]).
    pub shard: Option<Shard>,
}

/// Settings for `threads` compute threads on the CPU in f32 with the default timing policy.
pub fn default_settings(threads: usize) -> CellSettings {
    CellSettings {
        dtype: Precision::F32,
        device: DeviceSpec::Cpu,
        threads,
        isa: crate::compute::isa::IsaChoice::Auto,
        seed: 0,
        speed: true,
        memory: true,
        load_weights: false,
        offline: false,
        timing: TimingPolicy::default(),
    }
}

impl BenchConfig {
    /// The grid of `preset` (or, without one, Hugging Face's script's default grid: batch 8,
    /// sequences 8, 32, 128 and 512) over `models` (the study's three when empty), inference
    /// only, into `dir`, cells in this process.
    pub fn new(
        preset: Option<Preset>,
        models: &[String],
        settings: CellSettings,
        dir: &Path,
    ) -> Self {
        let models = if models.is_empty() {
            STUDY_MODELS.iter().map(|s| s.to_string()).collect()
        } else {
            models.to_vec()
        };
        let (batch_sizes, sequence_lengths, settings) = match preset.map(Preset::grid) {
            Some(g) => (
                g.batch_sizes,
                g.sequence_lengths,
                CellSettings {
                    speed: settings.speed && g.speed,
                    memory: settings.memory && g.memory,
                    ..settings
                },
            ),
            None => (vec![8], vec![8, 32, 128, 512], settings),
        };
        Self {
            models,
            modes: vec![Mode::Inference],
            batch_sizes,
            sequence_lengths,
            threads: vec![settings.threads],
            dtypes: vec![settings.dtype],
            settings,
            isolation: Isolation::InProcess,
            files: OutputFiles::in_dir(dir),
            max_memory: None,
            resume: false,
            processes: 1,
            retry_failed: false,
            measure_peak: true,
            find_max_batch: None,
            shard: None,
        }
    }

    /// The cells, in Hugging Face's script's order, each once.
    pub fn plan(&self) -> Vec<Cell> {
        grid::plan(
            &distinct(self.models.iter().cloned()),
            &distinct(self.modes.iter().copied()),
            &distinct(self.batch_sizes.iter().copied()),
            &distinct(self.sequence_lengths.iter().copied()),
            &distinct(self.threads.iter().copied()),
            &self.precisions(),
        )
    }

    /// The precisions every cell is measured at, in order, each once (the settings' when
    /// none were given).
    pub fn precisions(&self) -> Vec<Precision> {
        if self.dtypes.is_empty() {
            vec![self.settings.dtype]
        } else {
            distinct(self.dtypes.iter().copied())
        }
    }

    /// Refuses a configuration that would measure nothing or nonsense, before any work.
    pub fn validate(&self) -> Result<()> {
        if self.models.is_empty() {
            return Err(input("no models to bench"));
        }
        if self.batch_sizes.is_empty() || self.sequence_lengths.is_empty() {
            return Err(input(
                "no batch sizes or no sequence lengths: the grid is empty",
            ));
        }
        if self.batch_sizes.contains(&0) || self.sequence_lengths.contains(&0) {
            return Err(input("batch sizes and sequence lengths must be at least 1"));
        }
        if self.processes == 0 {
            return Err(input("--processes must be at least 1"));
        }
        if self.processes > 1 && matches!(self.isolation, Isolation::InProcess) {
            return Err(input(format!(
                "--processes {} times each cell in separate processes; drop --in-process",
                self.processes
            )));
        }
        if self.threads.is_empty() || self.threads.contains(&0) {
            return Err(input("thread counts must be at least 1"));
        }
        if matches!(self.isolation, Isolation::InProcess)
            && distinct(self.threads.iter().copied()) != [self.settings.threads]
        {
            return Err(input(format!(
                "cells run in this process use its {} compute threads; sweeping thread counts \
                 needs a child process per cell (drop --in-process)",
                self.settings.threads
            )));
        }
        if self.modes.is_empty() {
            return Err(input(
                "nothing to measure: --no-inference without --training",
            ));
        }
        let int8 = self.precisions().contains(&Precision::Int8);
        if int8 && self.modes.contains(&Mode::Training) {
            return Err(input(
                "--dtype int8 is an inference precision: --training steps train f32 weights \
                 (bench them with --dtype f32, or drop --training)",
            ));
        }
        if int8 && !self.settings.device.is_cpu() {
            return Err(input(format!(
                "--dtype int8 runs on the CPU's int8 kernels, not on {}: use --device cpu, or \
                 f16/bf16 on a GPU",
                self.settings.device
            )));
        }
        if !self.settings.speed && !self.settings.memory && self.find_max_batch.is_none() {
            return Err(input("nothing to measure: both --no-speed and --no-memory"));
        }
        if self.max_memory == Some(0) {
            return Err(input("--max-memory must be positive"));
        }
        if self.find_max_batch == Some(0) {
            return Err(input("--max-batch-cap must be at least 1"));
        }
        if let (Some(shard), Some(_)) = (self.shard, self.find_max_batch) {
            return Err(input(format!(
                "--shard {shard} splits the grid's cells; --find-max-batch searches outside the \
                 grid: run the search on its own"
            )));
        }
        let t = &self.settings.timing;
        if t.min_runs == 0 || t.max_runs == 0 {
            return Err(input("--repeat and --max-runs must be at least 1"));
        }
        self.settings.device.open()?;
        Ok(())
    }
}

/// What a bench run produced (also on disk in `files`).
#[derive(Debug, Clone)]
pub struct BenchOutcome {
    /// `results.json` as written: every cell of this and earlier (resumed) runs.
    pub results: ResultsFile,
    /// This run's cells, in order.
    pub plan: Vec<Cell>,
    pub files: OutputFiles,
    /// The largest-batch search, when asked for.
    pub max_batch: Vec<MaxBatch>,
    /// The memory limit the run used, in bytes.
    pub max_memory: u64,
}

/// Runs a whole bench: see the module's documentation. Progress and results go to `observer`
/// as they happen, every file is rewritten after each cell, and a folder that already holds
/// results is refused unless `config.resume`.
pub fn run_bench(
    config: &BenchConfig,
    observer: &mut dyn crate::job::Observer,
) -> Result<BenchOutcome> {
    config.validate()?;
    let observer: &mut dyn Observer = &mut super::progress::CellProgress::new(
        observer,
        config.plan().len() * config.processes.max(1),
    );
    let files = config.files.clone();
    let previous = previous_results(config)?;
    let (plan, shard) = shard_plan(config)?;
    if let Some(prev) = &previous {
        check_resumed_shard(prev, shard.as_ref(), &files.dir)?;
    }
    let max_memory = config
        .max_memory
        .or_else(memory::available_memory)
        .unwrap_or(u64::MAX);
    let opts = RunOptions {
        settings: config.settings.clone(),
        isolation: config.isolation.clone(),
        max_memory,
        retry_failed: config.retry_failed,
        processes: config.processes,
    };
    let peak_matmul = measure_peaks(config, previous.as_ref(), observer)?;
    let results = results_to_fill(config, previous, peak_matmul, shard, &plan);
    let mut writer = ResultsWriter::new(files, results)?;
    grid::run_grid(&plan, &opts, &mut writer, observer)?;
    let max_batch = match config.find_max_batch {
        Some(cap) => {
            let rows = find_max_batches(config, cap, &opts, observer)?;
            let path = writer.files.dir.join(MAX_BATCH_FILE);
            grid::write_max_batch_csv(&rows, max_memory, &path)?;
            rows
        }
        None => Vec::new(),
    };
    Ok(BenchOutcome {
        results: writer.results,
        plan,
        files: writer.files,
        max_batch,
        max_memory,
    })
}

/// The results already in the output folder, which only `--resume` may continue.
fn previous_results(config: &BenchConfig) -> Result<Option<ResultsFile>> {
    let files = &config.files;
    if !files.results_json.exists() {
        return Ok(None);
    }
    if !config.resume {
        return Err(input(format!(
            "{} already holds results; pass --resume to continue that run, or choose another --output-dir",
            files.dir.display()
        )));
    }
    Ok(Some(ResultsFile::read(&files.results_json)?))
}

/// The cells this run measures: the whole grid, or a shard's part of it (which records the
/// whole grid for `merge`).
fn shard_plan(config: &BenchConfig) -> Result<(Vec<Cell>, Option<ShardRecord>)> {
    let grid_plan = config.plan();
    let Some(shard) = config.shard else {
        return Ok((grid_plan, None));
    };
    let hub = HubConfig::from_env(config.settings.offline);
    let costs = shard::flops_cost(&grid_plan, &mut grid::Configs::default(), &hub)?;
    let record = ShardRecord {
        index: shard.index,
        count: shard.count,
        grid: grid_plan.clone(),
    };
    Ok((shard.select(&grid_plan, &costs), Some(record)))
}

/// A resumed folder must hold the same shard of the same grid (or an unsharded run, resumed
/// unsharded).
fn check_resumed_shard(prev: &ResultsFile, shard: Option<&ShardRecord>, dir: &Path) -> Result<()> {
    let dir = dir.display();
    match (&prev.shard, shard) {
        (None, None) => Ok(()),
        (Some(old), Some(new)) if old == new => Ok(()),
        (Some(old), Some(new)) if old.grid == new.grid => Err(input(format!(
            "{dir} holds shard {}/{} of this grid; resume it with --shard {}/{}, not {}/{}",
            old.index, old.count, old.index, old.count, new.index, new.count
        ))),
        (Some(old), _) => Err(input(format!(
            "{dir} holds shard {}/{} of a grid of {} cells; resume it with the same grid \
             and --shard {}/{}",
            old.index,
            old.count,
            old.grid.len(),
            old.index,
            old.count
        ))),
        (None, Some(new)) => Err(input(format!(
            "{dir} holds an unsharded run; --shard {}/{} cannot resume it (drop --shard)",
            new.index, new.count
        ))),
    }
}

/// The machine's matmul peaks per thread count: a resumed run keeps those it measured, so its
/// cells' shares of peak stay comparable, and measures a thread count it has not yet.
fn measure_peaks(
    config: &BenchConfig,
    previous: Option<&ResultsFile>,
    observer: &mut dyn Observer,
) -> Result<Vec<PeakShape>> {
    let mut peak_matmul = previous.map(|p| p.peak_matmul.clone()).unwrap_or_default();
    if !config.measure_peak {
        return Ok(peak_matmul);
    }
    let device = config.settings.device.open()?;
    let policy = TimingPolicy {
        min_runs: 5,
        min_time: Duration::from_millis(500),
        ..TimingPolicy::default()
    };
    // One measurement serves every precision of the run: it times the int8 and bf16
    // products where the run has them, and each cell takes the peak of its own kind.
    let precisions = config.precisions();
    for threads in distinct(config.threads.iter().copied()) {
        if peak_matmul.iter().any(|s| s.threads == threads) {
            continue;
        }
        observer.peak_started(threads);
        let shapes = if threads == rayon::current_num_threads() {
            peak::measure_peak(&device, &precisions, &policy)?
        } else {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()?
                .install(|| peak::measure_peak(&device, &precisions, &policy))?
        };
        peak_matmul.extend(shapes);
    }
    Ok(peak_matmul)
}

/// The results file the grid fills: the previous one when resuming, with this run's version,
/// environment (and its thread counts and precisions when it sweeps them), peaks, settings,
/// shard and any cell of `plan` it lacks.
fn results_to_fill(
    config: &BenchConfig,
    previous: Option<ResultsFile>,
    peak_matmul: Vec<PeakShape>,
    shard: Option<ShardRecord>,
    plan: &[Cell],
) -> ResultsFile {
    let settings = &config.settings;
    // env.csv's matmul peak is the f32 products' (int8 and bf16 have their own).
    let peak_gflops = peak::peak_of_kind(&peak_matmul, None);
    let multiprocess = matches!(config.isolation, Isolation::Child { .. });
    let mut results = previous.unwrap_or_default();
    results.bertbench_version = crate::record::VERSION.into();
    results.environment = env::collect(settings, multiprocess, peak_gflops);
    let counts = distinct(config.threads.iter().copied());
    if counts.len() > 1 {
        let list: Vec<String> = counts.iter().map(|t| t.to_string()).collect();
        results
            .environment
            .push(("thread_counts".into(), list.join(" ")));
    }
    let precisions = config.precisions();
    if precisions.len() > 1 {
        let list: Vec<&str> = precisions.iter().map(|p| p.as_str()).collect();
        results
            .environment
            .push((super::env::Key::Dtypes.name().into(), list.join(" ")));
    }
    results.peak_matmul = peak_matmul;
    results.settings = Some(settings.clone());
    results.shard = shard;
    for cell in plan {
        if !results.plan.contains(cell) {
            results.plan.push(cell.clone());
        }
    }
    results
}

/// `--find-max-batch`: the largest batch per model, mode and sequence length, up to `cap`.
fn find_max_batches(
    config: &BenchConfig,
    cap: usize,
    opts: &RunOptions,
    observer: &mut dyn Observer,
) -> Result<Vec<MaxBatch>> {
    let mut rows = Vec::new();
    for model in distinct(config.models.iter().cloned()) {
        for mode in distinct(config.modes.iter().copied()) {
            for seq in distinct(config.sequence_lengths.iter().copied()) {
                observer.search_started(&model, mode, seq);
                // The probes are not cells of the grid: they stay out of its progress.
                let row = grid::find_max_batch(&model, mode, seq, cap, opts, &mut grid::Quiet)?;
                rows.push(row);
            }
        }
    }
    Ok(rows)
}

/// Processes per cell unless told: three child processes on the CPU (so intervals include
/// drift between processes), one on a GPU or in this process.
pub fn default_processes(isolation: &Isolation, device: DeviceSpec) -> usize {
    match isolation {
        Isolation::Child { .. } if device.is_cpu() => DEFAULT_CPU_PROCESSES,
        _ => 1,
    }
}

/// See [`default_processes`].
pub const DEFAULT_CPU_PROCESSES: usize = 3;

/// The largest-batch table's file name in the output folder.
pub const MAX_BATCH_FILE: &str = "max_batch.csv";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_narrow_what_is_measured() {
        let dir = Path::new("unused");
        let cfg = BenchConfig::new(Some(Preset::SeedMemorySeq), &[], default_settings(1), dir);
        assert_eq!(cfg.models.len(), 3);
        assert_eq!(cfg.sequence_lengths, vec![32, 128, 512, 1024]);
        assert!(!cfg.settings.speed && cfg.settings.memory);
        // A preset never turns back on what the caller turned off.
        let off = CellSettings {
            memory: false,
            ..default_settings(1)
        };
        let cfg = BenchConfig::new(Some(Preset::SeedMemorySeq), &[], off, dir);
        assert!(!cfg.settings.speed && !cfg.settings.memory);
        assert!(cfg.validate().is_err(), "nothing left to measure");
        let cfg = BenchConfig::new(None, &["a".into(), "a".into()], default_settings(1), dir);
        assert_eq!(cfg.plan().len(), 4, "a model named twice is planned once");
    }

    #[test]
    fn validate_names_the_problem() {
        let mut cfg = BenchConfig::new(None, &[], default_settings(1), Path::new("unused"));
        cfg.batch_sizes = vec![0];
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("at least 1"), "{err}");
        cfg.batch_sizes = vec![1];
        cfg.modes.clear();
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--no-inference"));
        cfg.modes = vec![Mode::Inference];
        cfg.settings.device = DeviceSpec::Cuda(0);
        assert!(cfg.validate().is_err());
        cfg.settings.device = DeviceSpec::Cpu;
        cfg.validate().unwrap();
        cfg.shard = Some(Shard::new(1, 2).unwrap());
        cfg.find_max_batch = Some(64);
        assert_eq!(
            cfg.validate().unwrap_err().to_string(),
            "--shard 1/2 splits the grid's cells; --find-max-batch searches outside the grid: \
             run the search on its own"
        );
    }
}
