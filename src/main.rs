//! The `bertbench` binary: parse the command line, run it, exit with its code or its error's.

use clap::Parser;

/// Counts allocated bytes so benchmarks can report the peak a step requested.
#[global_allocator]
static ALLOC: bertbench::bench::memory::CountingAlloc = bertbench::bench::memory::CountingAlloc;

fn main() {
    bertbench::runtime::init();
    // Like other Unix command-line tools, end quietly when the reader of our output goes away
    // (`bertbench report dir | head`) instead of panicking on a broken pipe.
    #[cfg(unix)]
    // SAFETY: restores the default action of one signal before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = bertbench::cli::Cli::parse();
    match bertbench::cli::run(cli) {
        Ok(0) => {}
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::exit(bertbench::error::exit_code(&err));
        }
    }
}
