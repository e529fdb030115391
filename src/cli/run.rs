//! `bertbench run`: the main job on built-in defaults. Speed and memory of the study's three
//! models over a grid sized for the machine, then CSVs, environment, plots and the report in a
//! new timestamped folder; with checkpoints and a SQuAD file, accuracy (and cost) join in.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;

use super::model::ComputeArgs;
use super::report::PriceArgs;
use crate::answer::EvalConfig;
use crate::bench::grid::Preset;
use crate::bench::run::default_settings;
use crate::bench::{BenchConfig, CellSettings};
use crate::device::Precision;
use crate::error::input;
use crate::eval::EvalJob;
use crate::models::ModelSpec;
use crate::report::build::{write_report, ReportOptions};
use crate::report::machines::{load_machines, write_machines_report, MachinePrices};
use crate::squad::{DecodeConfig, FeatureConfig};

/// What `run` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RunPreset {
    /// Batch 1 and 8, sequence 32 and 128: a few minutes on 2 CPU cores.
    CpuQuick,
    /// The original study's three experiments (GPU-sized), each in its own folder.
    Seed,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[arg(long, value_enum, default_value_t = RunPreset::CpuQuick)]
    pub preset: RunPreset,
    /// Models to bench (default: bert-base-uncased, distilbert-base-uncased,
    /// squeezebert/squeezebert-uncased from their built-in configs).
    #[arg(long, num_args = 1..)]
    pub models: Vec<String>,
    /// Output folder (default: runs/<date-time>, always new).
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// Fine-tuned QA checkpoints to evaluate on --dataset (directories or Hub ids).
    #[arg(long, num_args = 1..)]
    pub checkpoint: Vec<String>,
    /// SQuAD v1.1 file for the accuracy of --checkpoint models.
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Evaluate the first N questions only.
    #[arg(long, default_value_t = 500)]
    pub eval_limit: usize,
    #[command(flatten)]
    pub price: PriceArgs,
    /// Other machines' `run` (or `bench`) folders of the same preset: a report across machines
    /// (this one first) goes into `machines/` (for --preset seed, each experiment's folder is
    /// compared with the same-named folder of each).
    #[arg(long, num_args = 1.., value_name = "DIR")]
    pub compare_with: Vec<PathBuf>,
    /// Names of the machines for --compare-with: this one first, then one per folder.
    #[arg(long, num_args = 1..)]
    pub machine_names: Vec<String>,
    /// Never contact the Hub.
    #[arg(long)]
    pub offline: bool,
}

pub fn run(args: RunArgs) -> Result<()> {
    check(&args)?;
    let price = args.price.resolve()?;
    let root = output_root(&args)?;
    let presets: Vec<(Preset, Option<&str>)> = match args.preset {
        RunPreset::CpuQuick => vec![(Preset::CpuQuick, None)],
        RunPreset::Seed => vec![
            (Preset::SeedMemorySeq, Some("seed-memory-seq")),
            (Preset::SeedMemoryBatch, Some("seed-memory-batch")),
            (Preset::SeedTime, Some("seed-time")),
        ],
    };
    let precisions = precisions(&args)?;
    let others = other_machines(&args, &presets)?;
    let benches = bench_configs(&args, &presets, &precisions, &root)?;
    let evals = eval_jobs(&args, &precisions, &root)?;

    // Every step checked; now the work.
    args.compute.use_one_thread_count()?;
    let mut reports = Vec::new();
    for config in &benches {
        eprintln!(
            "== bench {} -> {}",
            preset_name(config),
            config.files.dir.display()
        );
        super::bench::run_with_bars(config)?;
        reports.push(config.files.dir.clone());
    }
    for job in &evals {
        eprintln!(
            "== eval {} ({}) on the first {} questions -> {}",
            job.spec.model,
            job.spec.precision.as_str(),
            args.eval_limit,
            job.output_dir.display()
        );
        super::eval::evaluate(job)?;
    }
    let opts = ReportOptions {
        short_names: Vec::new(),
        price,
        output_dir: None,
    };
    for dir in &reports {
        // Evaluations live under the root; a report folder sees them when it is the root.
        let files = write_report(dir, &opts)?;
        for w in &files.warnings {
            eprintln!("warning: {w}");
        }
        println!(
            "\nreport: {} ({} plots)",
            files.html.display(),
            files.plots.len()
        );
        for o in files.observations.iter().take(6) {
            println!("  - {o}");
        }
    }
    for (dir, other) in reports.iter().zip(&others) {
        if !other.is_empty() {
            machines_report(&args, dir, other)?;
        }
    }
    println!("\nall results in {}", root.display());
    Ok(())
}

/// Refuses flags that do not go together, before anything runs.
fn check(args: &RunArgs) -> Result<()> {
    if !args.checkpoint.is_empty() && args.dataset.is_none() {
        return Err(input(
            "--checkpoint needs --dataset (a SQuAD v1.1 file) to measure accuracy",
        ));
    }
    if !args.machine_names.is_empty() && args.machine_names.len() != args.compare_with.len() + 1 {
        return Err(input(format!(
            "--machine-names gives {} names for {} machines (this one and {} --compare-with \
             folders)",
            args.machine_names.len(),
            args.compare_with.len() + 1,
            args.compare_with.len()
        )));
    }
    Ok(())
}

/// The run's folder: `--output-dir` if it is new or empty, else a new `runs/<date-time>`.
fn output_root(args: &RunArgs) -> Result<PathBuf> {
    Ok(match &args.output_dir {
        Some(d) if d.exists() && std::fs::read_dir(d)?.next().is_some() => {
            return Err(input(format!(
                "{} is not empty; `run` always starts a new folder",
                d.display()
            )))
        }
        Some(d) => d.clone(),
        None => super::bench::timestamped_dir(Path::new("runs")),
    })
}

/// The precisions measured: `--dtype`'s, or without it on the CPU every precision this CPU
/// runs fast, so the report answers "which model at which precision" (the tier is chosen
/// first: it decides which).
fn precisions(args: &RunArgs) -> Result<Vec<Precision>> {
    Ok(
        if args.compute.dtype.is_empty() && args.compute.device.is_cpu() {
            crate::compute::isa::use_isa(args.compute.isa)?;
            crate::compute::fast_precisions()
        } else {
            args.compute.precisions()
        },
    )
}

/// The other machines' folders for each experiment, checked before any work.
fn other_machines(args: &RunArgs, presets: &[(Preset, Option<&str>)]) -> Result<Vec<Vec<PathBuf>>> {
    let mut others = Vec::new();
    for (_, sub) in presets {
        let dirs: Vec<PathBuf> = args
            .compare_with
            .iter()
            .map(|d| sub.map_or(d.clone(), |s| d.join(s)))
            .collect();
        for d in &dirs {
            if !d.join(crate::bench::output::RESULTS_JSON).is_file() {
                return Err(input(format!(
                    "--compare-with: {} has no results.json (give the other machine's `run` \
                     folder of the same --preset)",
                    d.display()
                )));
            }
        }
        others.push(dirs);
    }
    Ok(others)
}

/// One bench per experiment of the preset, each in its folder, at every precision.
fn bench_configs(
    args: &RunArgs,
    presets: &[(Preset, Option<&str>)],
    precisions: &[Precision],
    root: &Path,
) -> Result<Vec<BenchConfig>> {
    let settings = CellSettings {
        dtype: precisions[0],
        device: args.compute.device,
        isa: args.compute.isa,
        offline: args.offline,
        ..default_settings(args.compute.threads())
    };
    let mut benches = Vec::new();
    for &(preset, sub) in presets {
        let dir = sub.map_or(root.to_path_buf(), |s| root.join(s));
        let mut config = BenchConfig::new(Some(preset), &args.models, settings.clone(), &dir);
        config.dtypes = precisions.to_vec();
        config.isolation = super::bench::child_isolation()?;
        config.processes =
            super::bench::default_processes(&config.isolation, config.settings.device);
        config.validate()?;
        benches.push(config);
    }
    Ok(benches)
}

/// Each checkpoint evaluated at every precision, so the report puts each one's EM/F1 beside
/// its speed: one job per checkpoint and precision, each checked.
fn eval_jobs(args: &RunArgs, precisions: &[Precision], root: &Path) -> Result<Vec<EvalJob>> {
    let Some(dataset) = &args.dataset else {
        return Ok(Vec::new());
    };
    let mut evals = Vec::new();
    for (i, model) in args.checkpoint.iter().enumerate() {
        let name: String = model
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        for &precision in precisions {
            let suffix = match precision {
                Precision::F32 => String::new(),
                p => format!("-{}", p.as_str()),
            };
            let job = EvalJob {
                spec: ModelSpec {
                    model: model.clone(),
                    random_init: false,
                    seed: 0,
                    offline: args.offline,
                    precision,
                    device: args.compute.device,
                },
                dataset: dataset.clone(),
                limit: Some(args.eval_limit),
                config: EvalConfig {
                    features: FeatureConfig::default(),
                    decode: DecodeConfig::default(),
                    batch_size: crate::answer::DEFAULT_BATCH_SIZE,
                },
                tokenizer: None,
                output_dir: root.join("eval").join(format!("{i}-{name}{suffix}")),
                overwrite: false,
            };
            // Checked now, before the bench runs (each job checks again as it starts): a
            // clash fails in seconds, not after the grid.
            job.check()?;
            evals.push(job);
        }
    }
    Ok(evals)
}

/// The report across machines for one experiment: this machine's folder `dir` first, then
/// the others', into `dir/machines`.
fn machines_report(args: &RunArgs, dir: &Path, others: &[PathBuf]) -> Result<()> {
    let mut dirs = vec![dir.to_path_buf()];
    dirs.extend(others.iter().cloned());
    // This machine's --price-per-hour cannot price the others: costs across machines need a
    // table that names them all.
    let prices = match args.price.price_per_hour {
        Some(_) => MachinePrices::None,
        None => MachinePrices::from_flags(&[], args.price.prices.as_deref())?,
    };
    let machines = load_machines(&dirs, &args.machine_names, &prices)?;
    let files = write_machines_report(&machines, &dir.join("machines"), &[])?;
    println!(
        "\nreport across {} machines: {}",
        machines.len(),
        files.html.display()
    );
    for o in files.observations.iter().take(6) {
        println!("  - {o}");
    }
    Ok(())
}

/// The grid a configuration runs, in words, for the progress line.
fn preset_name(config: &BenchConfig) -> String {
    format!(
        "batch {:?} x sequence {:?}",
        config.batch_sizes, config.sequence_lengths
    )
}
