//! `bench`, its hidden per-cell child `bench-cell`, and `peak`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use crate::bench::env::Key;
use crate::bench::grid::{self, Isolation, Preset};
use crate::bench::output::{OutputFiles, ResultsFile, ResultsWriter};
use crate::bench::shard::{self, MergeOptions, ShardChoice};
use crate::bench::{
    env, fmt_time, memory, peak, run_bench, BenchConfig, BenchOutcome, Cell, CellSettings,
    Measurement, Mode, Status, TimingPolicy,
};
use crate::cli::model::ComputeArgs;
use crate::device::Precision;
use crate::error::input;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Models: built-in names, Hub ids or local directories (config only; weights are random
    /// unless --load-weights). Default: the study's three models.
    #[arg(long, num_args = 1.., alias = "model")]
    pub models: Vec<String>,
    /// Batch sizes (default 8, as Hugging Face's script).
    #[arg(long, num_args = 1.., alias = "batch_sizes")]
    pub batch_sizes: Vec<usize>,
    /// Sequence lengths (default 8 32 128 512, as Hugging Face's script).
    #[arg(long, num_args = 1.., alias = "sequence_lengths")]
    pub sequence_lengths: Vec<usize>,
    /// A ready-made grid: the original study's experiments, or cpu-quick for a small CPU.
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// Skip timing.
    #[arg(long, alias = "no_speed")]
    pub no_speed: bool,
    /// Skip memory measurement.
    #[arg(long, alias = "no_memory")]
    pub no_memory: bool,
    /// Also measure training steps (forward, QA loss, backward, AdamW).
    #[arg(long)]
    pub training: bool,
    /// Skip inference.
    #[arg(long, alias = "no_inference")]
    pub no_inference: bool,
    /// Accepted for compatibility with Hugging Face's script: CSVs are always written.
    #[arg(long, alias = "save_to_csv")]
    pub save_to_csv: bool,
    #[arg(long, alias = "inference_time_csv_file", value_name = "FILE")]
    pub inference_time_csv_file: Option<PathBuf>,
    #[arg(long, alias = "inference_memory_csv_file", value_name = "FILE")]
    pub inference_memory_csv_file: Option<PathBuf>,
    #[arg(long, alias = "train_time_csv_file", value_name = "FILE")]
    pub train_time_csv_file: Option<PathBuf>,
    #[arg(long, alias = "train_memory_csv_file", value_name = "FILE")]
    pub train_memory_csv_file: Option<PathBuf>,
    #[arg(long, alias = "env_info_csv_file", value_name = "FILE")]
    pub env_info_csv_file: Option<PathBuf>,
    /// Minimum number of timed runs per cell.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub repeat: u64,
    /// Minimum timing time per cell, seconds.
    #[arg(long, default_value_t = 1.0)]
    pub min_time: f64,
    /// Stop starting timed runs after this many seconds per cell (at least 3 runs are kept).
    #[arg(long, default_value_t = 60.0)]
    pub max_time: f64,
    /// Maximum timed runs per cell.
    #[arg(long, default_value_t = 1000)]
    pub max_runs: usize,
    /// Maximum warm-up runs per cell (warm-up ends earlier once timings settle within 5%).
    #[arg(long, default_value_t = 10)]
    pub max_warmup_runs: usize,
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// Seed of the random weights and inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Load the models' checkpoint weights instead of random ones (speed does not depend on
    /// them; this is for checking a specific checkpoint).
    #[arg(long)]
    pub load_weights: bool,
    /// Output directory (default: bench-results/<date-time>).
    #[arg(long, alias = "output_dir")]
    pub output_dir: Option<PathBuf>,
    /// Run cells in this process instead of a fresh child process each.
    #[arg(long, alias = "no_multi_process")]
    pub in_process: bool,
    /// Time each cell in K separate child processes, interleaved with the other cells in K
    /// rounds, so the intervals include the machine's drift between processes (default: 3
    /// on the CPU, 1 on a GPU or --in-process).
    #[arg(long, value_name = "K")]
    pub processes: Option<usize>,
    /// Measure only part K of N of the grid (1-based, e.g. 2/4), balanced by the cells' FLOPs,
    /// for a cluster; `auto` reads the part from a Slurm job array (SLURM_ARRAY_TASK_ID) or a
    /// Kubernetes Indexed Job (JOB_COMPLETION_INDEX, with BERTBENCH_SHARD_COUNT). `bertbench
    /// merge` joins the parts.
    #[arg(long, value_name = "K/N|auto")]
    pub shard: Option<ShardChoice>,
    /// Continue an interrupted run in --output-dir, skipping finished cells.
    #[arg(long)]
    pub resume: bool,
    /// With --resume, run crashed and failed cells again.
    #[arg(long)]
    pub retry_failed: bool,
    /// Memory limit in MB: cells estimated above it are refused, and --find-max-batch stops at
    /// it (default: the memory available when the run starts).
    #[arg(long, value_name = "MB")]
    pub max_memory: Option<f64>,
    /// For each model and sequence length, find the largest batch that fits under the limit.
    #[arg(long)]
    pub find_max_batch: bool,
    /// Largest batch size --find-max-batch tries.
    #[arg(long, default_value_t = 4096)]
    pub max_batch_cap: usize,
    /// Do not measure the machine's matmul peak first (cells then report no share of peak).
    #[arg(long)]
    pub no_peak: bool,
    /// Never contact the Hub.
    #[arg(long)]
    pub offline: bool,
}

/// Turns the arguments into the library's bench configuration.
fn config_of(args: &BenchArgs) -> Result<BenchConfig> {
    for (name, v) in [("--min-time", args.min_time), ("--max-time", args.max_time)] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(input(format!(
                "{name} must be a non-negative number of seconds, got {v}"
            )));
        }
    }
    let max_memory = match args.max_memory {
        Some(mb) if mb.is_finite() && mb > 0.0 => Some((mb * 1024.0 * 1024.0) as u64),
        Some(mb) => return Err(input(format!("--max-memory must be positive, got {mb}"))),
        None => None,
    };
    let settings = CellSettings {
        dtype: args.compute.precision(),
        device: args.compute.device,
        threads: args.compute.threads(),
        isa: args.compute.isa,
        seed: args.seed,
        speed: !args.no_speed,
        memory: !args.no_memory,
        load_weights: args.load_weights,
        offline: args.offline,
        timing: TimingPolicy {
            min_runs: args.repeat as usize,
            min_time: Duration::from_secs_f64(args.min_time),
            max_time: Duration::from_secs_f64(args.max_time),
            max_runs: args.max_runs.max(args.repeat as usize),
            warmup_max_runs: args.max_warmup_runs.max(1),
            ..TimingPolicy::default()
        },
    };
    let dir = args
        .output_dir
        .clone()
        .unwrap_or_else(|| crate::record::timestamped_dir(Path::new("bench-results")));
    let mut config = BenchConfig::new(args.preset, &args.models, settings, &dir);
    if !args.batch_sizes.is_empty() {
        config.batch_sizes = args.batch_sizes.clone();
    }
    if !args.sequence_lengths.is_empty() {
        config.sequence_lengths = args.sequence_lengths.clone();
    }
    config.threads = args.compute.thread_counts();
    config.dtypes = args.compute.precisions();
    config.modes.clear();
    if !args.no_inference {
        config.modes.push(Mode::Inference);
    }
    if args.training {
        config.modes.push(Mode::Training);
    }
    config.files = output_files(args, &dir);
    config.isolation = if args.in_process {
        Isolation::InProcess
    } else {
        Isolation::this_binary()?
    };
    config.max_memory = max_memory;
    config.processes = args.processes.unwrap_or_else(|| {
        crate::bench::run::default_processes(&config.isolation, config.settings.device)
    });
    config.resume = args.resume;
    config.retry_failed = args.retry_failed;
    config.measure_peak = !args.no_peak;
    config.find_max_batch = args.find_max_batch.then_some(args.max_batch_cap);
    config.shard = args.shard.map(ShardChoice::resolve).transpose()?;
    config.validate()?;
    Ok(config)
}

fn output_files(args: &BenchArgs, dir: &Path) -> OutputFiles {
    let mut files = OutputFiles::in_dir(dir);
    let place = |p: &Option<PathBuf>, default: &mut PathBuf| {
        if let Some(p) = p {
            *default = if p.is_absolute() {
                p.clone()
            } else {
                dir.join(p)
            };
        }
    };
    place(&args.inference_time_csv_file, &mut files.inference_time);
    place(&args.inference_memory_csv_file, &mut files.inference_memory);
    place(&args.train_time_csv_file, &mut files.train_time);
    place(&args.train_memory_csv_file, &mut files.train_memory);
    place(&args.env_info_csv_file, &mut files.env_info);
    files
}

pub fn bench(args: BenchArgs) -> Result<()> {
    let config = config_of(&args)?;
    // This process's pool (in-process cells, the peak at the first count); children get
    // their cell's count through their environment.
    args.compute.use_pool()?;
    let outcome = run_with_bars(&config)?;
    if let Some(shard) = &outcome.results.shard {
        println!(
            "\nshard {}/{}: {} of the grid's {} cells (join the shards with `bertbench merge`)",
            shard.index,
            shard.count,
            outcome.plan.len(),
            shard.grid.len()
        );
    }
    if !outcome.max_batch.is_empty() {
        print_max_batch(&outcome.max_batch, outcome.max_memory);
    }
    println!("\nresults in {}", outcome.files.dir.display());
    Ok(())
}

/// Runs a bench with progress bars on the terminal and prints its summary table.
/// The progress bar of a bench (`bench`, and each of `run`'s).
pub(crate) const BAR: &str = "{prefix} {bar:30} {pos}/{len}  elapsed {elapsed}  eta {eta}  {msg}";

pub(crate) fn run_with_bars(config: &BenchConfig) -> Result<BenchOutcome> {
    let mut bar = super::Bar::new(BAR);
    let outcome = run_bench(config, &mut bar);
    bar.finish();
    let outcome = outcome?;
    print_summary(&outcome.results, &outcome.plan);
    Ok(outcome)
}

/// The bench's one-screen table on stdout: a row per planned cell that has a result.
pub(crate) fn print_summary(results: &ResultsFile, plan: &[Cell]) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "\n{:<32} {:<9} {:>5} {:>5} {:>7}  {:>11} {:>23}  {:>10} {:>10} {:>8} {:>9}  status",
        "model",
        "mode",
        "batch",
        "seq",
        "threads",
        "median",
        "95% CI of median",
        "samples/s",
        "tokens/s",
        "GFLOP/s",
        "peak MB"
    );
    for m in plan.iter().filter_map(|cell| results.find(cell)) {
        let _ = writeln!(out, "{}", summary_line(results, m));
    }
    let noisy = plan
        .iter()
        .filter_map(|c| results.find(c))
        .filter(|m| m.status == Status::Ok && m.reason.is_some())
        .count();
    if noisy > 0 {
        let _ = writeln!(out, "\nwarning: {noisy} cell(s) were noisy (see `reason` in results.csv): the machine was busy or the cells too short");
    }
    let kernels = results
        .env(Key::Isa)
        .map(|isa| format!(", {isa} kernels"))
        .unwrap_or_default();
    for threads in results.thread_counts() {
        for precision in results.precisions() {
            if let Some(p) = results.peak_gflops(threads, precision) {
                let what = match precision {
                    Precision::Int8 => format!("int8 product peak: {p:.1} GOP/s"),
                    Precision::Bf16 => format!("bf16 product peak: {p:.1} GFLOP/s"),
                    _ => format!("machine matmul peak: {p:.1} GFLOP/s"),
                };
                let _ = writeln!(
                    out,
                    "{what} ({}{kernels})",
                    crate::bench::threads_label(threads)
                );
            }
        }
    }
}

/// A measurement's line of the summary, in the header's columns.
fn summary_line(results: &ResultsFile, m: &Measurement) -> String {
    let opt = |x: Option<String>| x.unwrap_or_else(|| "-".into());
    let gflops =
        m.gflops().map(
            |g| match results.peak_gflops(m.cell.threads, m.cell.precision()) {
                Some(p) => format!("{g:.1} ({:.0}%)", 100.0 * g / p),
                None => format!("{g:.1}"),
            },
        );
    format!(
        "{:<32} {:<9} {:>5} {:>5} {:>7}  {:>11} {:>23}  {:>10} {:>10} {:>8} {:>9}  {}",
        m.cell.variant(),
        m.cell.mode.as_str(),
        m.cell.batch_size,
        m.cell.sequence_length,
        m.cell.threads,
        opt(m.speed.as_ref().map(|sp| fmt_time(sp.median_interval().0))),
        opt(m.speed.as_ref().map(|sp| {
            let (_, low, high) = sp.median_interval();
            format!("[{}, {}]", fmt_time(low), fmt_time(high))
        })),
        opt(m.samples_per_s().map(|v| format!("{v:.1}"))),
        opt(m.tokens_per_s().map(|v| format!("{v:.0}"))),
        opt(gflops),
        opt(m
            .memory
            .as_ref()
            .map(|mem| format!("{:.0}", memory::to_mb(mem.peak_rss)))),
        match (m.status, &m.reason) {
            (Status::Ok, None) => "ok".to_string(),
            (Status::Ok, Some(r)) => format!("ok, {}", r.split(';').next().unwrap_or_default()),
            (st, r) => format!("{}: {}", st.as_str(), r.clone().unwrap_or_default()),
        }
    )
}

fn print_max_batch(rows: &[grid::MaxBatch], limit: u64) {
    println!("\nlargest batch under {:.0} MB:", memory::to_mb(limit));
    for r in rows {
        println!(
            "  {:<32} {:<9} seq {:>5}: {}{}",
            r.model,
            r.mode.as_str(),
            r.sequence_length,
            r.max_batch_size
                .map_or("none fits".to_string(), |b| format!("batch {b}")),
            r.first_failing_batch
                .map(|b| format!(
                    " (batch {b} fails: {})",
                    r.failure.clone().unwrap_or_default()
                ))
                .unwrap_or_default()
        );
    }
}

/// Hidden: measures one cell described on stdin and prints the result as JSON (used by `bench`
/// to isolate cells in child processes).
#[derive(Debug, Args)]
pub struct BenchCellArgs {}

pub fn bench_cell(_args: BenchCellArgs) -> Result<()> {
    crate::bench::child::serve()
}

#[derive(Debug, Args)]
pub struct PeakArgs {
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn peak(args: PeakArgs) -> Result<()> {
    let threads = args.compute.use_threads()?;
    let device = args.compute.device.open()?;
    let policy = TimingPolicy {
        min_runs: 10,
        min_time: Duration::from_secs(1),
        ..TimingPolicy::default()
    };
    let shapes = peak::measure_peak(&device, &[args.compute.precision()], &policy)?;
    // int8 and bf16 products have their own peaks (int8's in GOP/s: integer operations).
    let best = peak::peak_of_kind(&shapes, None).unwrap_or(0.0);
    let own =
        |p| peak::kind_of(p, device.is_cpu()).and_then(|k| peak::peak_of_kind(&shapes, Some(k)));
    let (int8_best, bf16_best) = (own(Precision::Int8), own(Precision::Bf16));
    if args.json {
        println!(
            "{}",
            serde_json::json!({"threads": threads, "isa": crate::compute::Isa::current().name(), "dtype": args.compute.precision().as_str(), "device": args.compute.device.to_string(), "shapes": shapes, "peak_gflops": best, "int8_peak_gops": int8_best, "bf16_peak_gflops": bf16_best})
        );
        return Ok(());
    }
    println!(
        "matmul rate, {} on {}, {threads} threads, {} kernels ({}; {})",
        args.compute.precision().as_str(),
        args.compute.device,
        crate::compute::Isa::current().name(),
        env::cpu_model(),
        crate::compute::cache::CacheSizes::detect()
    );
    let unit = |kernel: &str| {
        if Some(kernel) == peak::kind_of(Precision::Int8, true) {
            "GOP/s  "
        } else {
            "GFLOP/s"
        }
    };
    for s in &shapes {
        println!(
            "  {:<7} {:>5} x {:>5} x {:>5}: {:>8.1} {}  (median {} of {} runs)",
            s.kernel,
            s.m,
            s.k,
            s.n,
            s.gflops,
            unit(&s.kernel),
            fmt_time(s.median_s),
            s.runs
        );
    }
    println!("peak: {best:.1} GFLOP/s");
    if let Some(p) = int8_best {
        println!("int8 peak: {p:.1} GOP/s");
    }
    if let Some(p) = bf16_best {
        println!("bf16 peak: {p:.1} GFLOP/s");
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The merged result folder to create (refused if it already holds anything).
    pub output_dir: PathBuf,
    /// The shards' result folders (`bench --shard K/N --output-dir ...`).
    #[arg(required = true, num_args = 1..)]
    pub shard_dirs: Vec<PathBuf>,
    /// Merge even when cells of the grid are missing (they stay in the plan, unmeasured, and
    /// the environment file counts them).
    #[arg(long)]
    pub allow_missing: bool,
}

pub fn merge(args: MergeArgs) -> Result<()> {
    let out = &args.output_dir;
    if out.exists()
        && std::fs::read_dir(out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(input(format!(
            "{} already exists and is not empty: choose a new folder for the merged results",
            out.display()
        )));
    }
    let merged = shard::merge(
        &args.shard_dirs,
        MergeOptions {
            allow_missing: args.allow_missing,
        },
    )?;
    let cells = merged.plan.len();
    let measured = merged.measurements.len();
    let writer = ResultsWriter::new(OutputFiles::in_dir(out), merged)?;
    print_summary(&writer.results, &writer.results.plan);
    println!(
        "\nmerged {} shards: {measured} of {cells} cells, in {}",
        args.shard_dirs.len(),
        out.display()
    );
    Ok(())
}
