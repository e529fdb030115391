//! `bertbench run`: the main job on built-in defaults. Speed and memory of the study's three
//! models over a grid sized for the machine, then CSVs, environment, plots and the report in a
//! new timestamped folder; with checkpoints and a SQuAD file, accuracy (and cost) join in.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::model::ComputeArgs;
use super::report::PriceArgs;
use super::Bar;
use crate::bench::{BenchConfig, BenchOutcome};
use crate::eval::{EvalJob, EvalOutcome};
use crate::job::Observer;
use crate::report::build::ReportFiles;
use crate::report::machines::MachinePrices;
use crate::study::{StudyConfig, StudyJob, StudyObserver, StudyPreset};

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
    let config = StudyConfig {
        preset: match args.preset {
            RunPreset::CpuQuick => StudyPreset::CpuQuick,
            RunPreset::Seed => StudyPreset::Seed,
        },
        models: args.models.clone(),
        output_dir: args.output_dir.clone(),
        precisions: args.compute.dtype.clone(),
        device: args.compute.device,
        isa: args.compute.isa,
        threads: args.compute.threads(),
        checkpoints: args.checkpoint.clone(),
        dataset: args.dataset.clone(),
        eval_limit: args.eval_limit,
        price: args.price.resolve()?,
        compare_with: args.compare_with.clone(),
        machine_names: args.machine_names.clone(),
        // This machine's --price-per-hour cannot price the others: costs across machines
        // need a table that names them all.
        machine_prices: match args.price.price_per_hour {
            Some(_) => MachinePrices::None,
            None => MachinePrices::from_flags(&[], args.price.prices.as_deref())?,
        },
        offline: args.offline,
    };
    let job = StudyJob::plan(&config)?;
    // Every step checked; now the work.
    args.compute.use_one_thread_count()?;
    let mut screen = Screen {
        bar: None,
        eval_limit: args.eval_limit,
    };
    job.run(&mut screen)?;
    println!("\nall results in {}", job.root.display());
    Ok(())
}

/// What `run` draws and prints: a progress bar per job, each bench's table, each
/// evaluation's summary, and where the reports went.
struct Screen {
    bar: Option<Bar>,
    eval_limit: usize,
}

impl Screen {
    fn finish_bar(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }
}

impl StudyObserver for Screen {
    fn progress(&mut self) -> &mut dyn Observer {
        self.bar.get_or_insert_with(|| Bar::new(super::bench::BAR))
    }

    fn bench_started(&mut self, config: &BenchConfig) {
        eprintln!(
            "== bench batch {:?} x sequence {:?} -> {}",
            config.batch_sizes,
            config.sequence_lengths,
            config.files.dir.display()
        );
        self.bar = Some(Bar::new(super::bench::BAR));
    }

    fn bench_finished(&mut self, outcome: &BenchOutcome) {
        self.finish_bar();
        super::bench::print_summary(&outcome.results, &outcome.plan);
    }

    fn eval_started(&mut self, job: &EvalJob) {
        eprintln!(
            "== eval {} ({}) on the first {} questions -> {}",
            job.spec.model,
            job.spec.precision.as_str(),
            self.eval_limit,
            job.output_dir.display()
        );
        self.bar = Some(Bar::new(super::eval::BAR));
    }

    fn eval_finished(&mut self, job: &EvalJob, outcome: &EvalOutcome) {
        self.finish_bar();
        super::eval::print_eval(job, outcome);
    }

    fn report_written(&mut self, files: &ReportFiles) {
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

    fn machines_report_written(&mut self, machines: usize, files: &ReportFiles) {
        println!(
            "\nreport across {machines} machines: {}",
            files.html.display()
        );
        for o in files.observations.iter().take(6) {
            println!("  - {o}");
        }
    }
}
