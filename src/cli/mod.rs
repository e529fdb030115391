//! Command-line interface: argument definitions (clap derive) and dispatch to the library.
//!
//! Each subcommand's arguments and handler live in a file named for its area; this file only
//! lists them.

use clap::{Parser, Subcommand};

pub mod squad;

/// bertbench: which BERT-family model to ship for extractive QA, measured on your hardware.
#[derive(Debug, Parser)]
#[command(name = "bertbench", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Score SQuAD v1.1 predictions with the official metric; prints {"exact_match": .., "f1": ..}.
    Score(squad::ScoreArgs),
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Score(args) => squad::score(args),
    }
}
