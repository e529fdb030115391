//! Command-line interface: argument definitions (clap derive) and dispatch to the library.
//!
//! Each subcommand's arguments and handler live in a file named for its area; this file only
//! lists them.

mod bench;
mod compare;
mod eval;
mod model;
mod report;
mod run;
mod serve;
mod squad;
mod train;

use clap::{Parser, Subcommand};

/// bertbench: which BERT-family model to ship for extractive QA, measured on your hardware.
#[derive(Debug, Parser)]
#[command(name = "bertbench", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show a model's configuration and parameter count.
    Info(model::InfoArgs),
    /// Run a model on a batch of token ids and print its start/end logits as JSON.
    Logits(model::LogitsArgs),
    /// Measure speed and memory over models x batch sizes x sequence lengths.
    Bench(Box<bench::BenchArgs>),
    /// Join the result folders of a grid's shards (`bench --shard K/N`) into one.
    Merge(bench::MergeArgs),
    /// Measure this machine's practical matrix-multiply rate (GFLOP/s).
    Peak(bench::PeakArgs),
    /// Internal: measure one cell described on stdin (bench runs each cell this way).
    #[command(hide = true)]
    BenchCell(bench::BenchCellArgs),
    /// Answer SQuAD questions with a model: EM/F1 and speed from one run.
    Eval(Box<eval::EvalArgs>),
    /// Serve SQuAD questions under load (MLPerf's single-stream, offline and server
    /// scenarios) through the batching server: latency percentiles, QPS at a bound, answers.
    Loadgen(Box<serve::LoadgenArgs>),
    /// Answer questions over HTTP (POST /v1/qa, GET /health) through the batching server.
    Serve(Box<serve::ServeArgs>),
    /// Fine-tune a model on SQuAD (resumable, Hugging Face checkpoint layout).
    Train(Box<train::TrainArgs>),
    /// Upload a model directory to the Hugging Face Hub.
    Push(train::PushArgs),
    /// Plot a benchmark CSV (Hugging Face's plot script's interface), PNG or SVG.
    Plot(report::PlotArgs),
    /// The main job: bench the study's three models, then plots and the report, in a new folder.
    Run(run::RunArgs),
    /// Write report.md and a self-contained report.html for a bench output directory, or one
    /// across machines for several (one folder per machine).
    Report(report::ReportArgs),
    /// Score SQuAD v1.1 predictions with the official metric; prints {"exact_match": .., "f1": ..}.
    Score(squad::ScoreArgs),
    /// Compare two bench runs cell by cell; exits 5 when a cell regressed beyond the threshold.
    Compare(compare::CompareArgs),
}

/// Run a parsed command line; returns the exit code of a command that finished (0, or a
/// verdict such as [`crate::error::EXIT_REGRESSION`]).
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Compare(args) => return compare::compare(args),
        Command::Info(args) => model::info(args),
        Command::Logits(args) => model::logits(args),
        Command::Bench(args) => bench::bench(*args),
        Command::Merge(args) => bench::merge(args),
        Command::Peak(args) => bench::peak(args),
        Command::BenchCell(args) => bench::bench_cell(args),
        Command::Eval(args) => eval::eval(*args),
        Command::Loadgen(args) => serve::loadgen(*args),
        Command::Serve(args) => serve::serve(*args),
        Command::Score(args) => squad::score(args),
        Command::Plot(args) => report::plot(args),
        Command::Report(args) => report::report(args),
        Command::Run(args) => run::run(args),
        Command::Train(args) => train::train(*args),
        Command::Push(args) => train::push(args),
    }?;
    Ok(crate::error::EXIT_SUCCESS)
}

/// A progress bar on stderr with `template`, hidden when stderr is not a terminal (logs and
/// CI output stay clean).
pub(crate) fn progress_bar(template: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    let target = if std::io::stderr().is_terminal() {
        indicatif::ProgressDrawTarget::stderr()
    } else {
        indicatif::ProgressDrawTarget::hidden()
    };
    let bar = indicatif::ProgressBar::with_draw_target(None, target);
    bar.set_style(indicatif::ProgressStyle::with_template(template).expect("valid template"));
    bar
}

/// The one progress display of a job's [`crate::job::Observer`]: the stage as the bar's
/// prefix, the progress as its position and message, lines printed above it (on stderr
/// without a terminal, where the bar is hidden).
pub(crate) struct Bar {
    bar: indicatif::ProgressBar,
    /// A stage began and has had no progress yet: its first position restarts the estimate
    /// of the time left (a resumed training starts part way).
    fresh: bool,
}

impl Bar {
    /// A bar drawn with `template` (indicatif's; `{prefix}` shows the stage).
    pub(crate) fn new(template: &str) -> Self {
        Self {
            bar: progress_bar(template),
            fresh: true,
        }
    }

    /// Clears the bar.
    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl crate::job::Observer for Bar {
    fn stage(&mut self, name: &str) {
        self.bar.set_prefix(name.to_string());
        self.fresh = true;
    }

    fn progress(&mut self, done: u64, total: u64, status: &str) {
        self.bar.set_length(total);
        self.bar.set_position(done);
        self.bar.set_message(status.to_string());
        if std::mem::take(&mut self.fresh) {
            self.bar.reset_eta();
        }
    }

    fn line(&mut self, text: &str) {
        if self.bar.is_hidden() {
            eprintln!("{text}");
        } else {
            self.bar.println(text);
        }
    }
}
