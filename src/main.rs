//! The `bertbench` binary: parse the command line, run it, map errors to exit codes.

use clap::Parser;

/// Counts allocated bytes so benchmarks can report the peak a step requested.
#[global_allocator]
static ALLOC: bertbench::bench::memory::CountingAlloc = bertbench::bench::memory::CountingAlloc;

fn main() {
    // Like other Unix command-line tools, end quietly when the reader of our output goes away
    // (`bertbench report dir | head`) instead of panicking on a broken pipe.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = bertbench::cli::Cli::parse();
    if let Err(err) = bertbench::cli::run(cli) {
        eprintln!("error: {err:#}");
        std::process::exit(bertbench::error::exit_code(&err));
    }
}
