//! Command-line interface: argument definitions (clap derive) and dispatch to the library.
//!
//! Each subcommand's arguments and handler live in a file named for its area; this file only
//! lists them.

mod model;

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
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Info(args) => model::info(args),
        Command::Logits(args) => model::logits(args),
    }
}
