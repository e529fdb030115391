//! `bertbench run`: the main job on built-in defaults. Speed and memory of the study's three
//! models over a grid sized for the machine, then CSVs, environment, plots and the report in a
//! new timestamped folder; with checkpoints and a SQuAD file, accuracy (and cost) join in.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Args, Parser};

use super::report::PriceArgs;
use super::{Cli, Command};
use crate::cli::model::ComputeArgs;
use crate::error::input;
use crate::report::build::{write_report, ReportOptions};

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
    /// Never contact the Hub.
    #[arg(long)]
    pub offline: bool,
}

/// Runs a bertbench command line in this process (the same code path a user's would take).
fn invoke(args: &[String]) -> Result<()> {
    let cli =
        Cli::try_parse_from(std::iter::once("bertbench".to_string()).chain(args.iter().cloned()))
            .map_err(|e| anyhow::anyhow!("internal command line `{}`: {e}", args.join(" ")))?;
    match cli.command {
        Command::Bench(a) => super::bench::bench(*a),
        Command::Eval(a) => super::eval::eval(*a),
        _ => unreachable!("run only invokes bench and eval"),
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

pub fn run(args: RunArgs) -> Result<()> {
    if !args.checkpoint.is_empty() && args.dataset.is_none() {
        return Err(input(
            "--checkpoint needs --dataset (a SQuAD v1.1 file) to measure accuracy",
        ));
    }
    let price = args.price.resolve()?;
    let root = match &args.output_dir {
        Some(d) if d.exists() && std::fs::read_dir(d)?.next().is_some() => {
            return Err(input(format!(
                "{} is not empty; `run` always starts a new folder",
                d.display()
            )))
        }
        Some(d) => d.clone(),
        None => super::bench::timestamped_dir(Path::new("runs")),
    };
    let presets: Vec<(&str, Option<&str>)> = match args.preset {
        RunPreset::CpuQuick => vec![("cpu-quick", None)],
        RunPreset::Seed => vec![
            ("seed-memory-seq", Some("seed-memory-seq")),
            ("seed-memory-batch", Some("seed-memory-batch")),
            ("seed-time", Some("seed-time")),
        ],
    };
    let mut reports = Vec::new();
    for (preset, sub) in presets {
        let dir = sub.map_or(root.clone(), |s| root.join(s));
        eprintln!("== bench --preset {preset} -> {}", dir.display());
        let mut bench = vec![
            "bench".into(),
            "--preset".into(),
            preset.into(),
            "--output-dir".into(),
            path(&dir),
        ];
        bench.extend(args.compute.to_args());
        if !args.models.is_empty() {
            bench.push("--models".into());
            bench.extend(args.models.iter().cloned());
        }
        if args.offline {
            bench.push("--offline".into());
        }
        invoke(&bench)?;
        reports.push(dir);
    }
    if let Some(dataset) = &args.dataset {
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
            let dir = root.join("eval").join(format!("{i}-{name}"));
            eprintln!(
                "== eval {model} on the first {} questions -> {}",
                args.eval_limit,
                dir.display()
            );
            let mut eval = vec![
                "eval".into(),
                "--model".into(),
                model.clone(),
                "--dataset".into(),
                path(dataset),
            ];
            eval.extend([
                "--limit".into(),
                args.eval_limit.to_string(),
                "--output-dir".into(),
                path(&dir),
            ]);
            eval.extend(args.compute.to_args());
            if args.offline {
                eval.push("--offline".into());
            }
            invoke(&eval)?;
        }
    }
    let opts = ReportOptions {
        short_names: Vec::new(),
        price,
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
    println!("\nall results in {}", root.display());
    Ok(())
}
