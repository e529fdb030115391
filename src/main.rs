//! The `bertbench` binary: parse the command line, run it, map errors to exit codes.

use clap::Parser;

fn main() {
    let cli = bertbench::cli::Cli::parse();
    if let Err(err) = bertbench::cli::run(cli) {
        eprintln!("error: {err:#}");
        std::process::exit(bertbench::error::exit_code(&err));
    }
}
