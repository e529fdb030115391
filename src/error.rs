//! Error kinds that decide the process exit code.
//!
//! Most errors are plain `anyhow` chains with context (which file, which field). Errors that
//! the user can fix by changing an input carry a [`Error`] somewhere in the chain so that the
//! CLI can tell them apart from failures of the run itself.

/// Exit code for success.
pub const EXIT_SUCCESS: i32 = 0;
/// Exit code for a failure while running (I/O, numerical, internal).
pub const EXIT_FAILURE: i32 = 1;
/// Exit code for command-line usage errors (clap uses the same).
pub const EXIT_USAGE: i32 = 2;
/// Exit code for bad input: a file or value the user gave is missing, malformed or inconsistent.
pub const EXIT_BAD_INPUT: i32 = 3;
/// Exit code for a model that could not be found or fetched (offline, Hub unreachable, 404), or
/// a device this build or machine cannot open (CUDA on a CPU-only build, no driver).
pub const EXIT_UNAVAILABLE: i32 = 4;
/// Exit code of `compare` when at least one cell got slower beyond the threshold, significantly.
/// Not an error: the comparison ran and printed its table; CI uses the code to fail a build.
pub const EXIT_REGRESSION: i32 = 5;

/// Errors that classify a failure for the exit code; their message is the whole explanation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Something the user provided is wrong: the message names the file, field and expectation.
    #[error("{0}")]
    Input(String),
    /// A model or file could not be found locally and could not be fetched, or a device
    /// could not be opened.
    #[error("{0}")]
    Unavailable(String),
}

/// Shorthand for an input error as an `anyhow::Error`.
pub fn input(msg: impl Into<String>) -> anyhow::Error {
    Error::Input(msg.into()).into()
}

/// Reads a JSON file into `T`; a file that cannot be read, or is not `what` (e.g. "an
/// eval_results.json of this bertbench"), is an input error naming the file.
pub fn read_json<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
    what: &str,
) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| input(format!("{}: cannot read: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| input(format!("{}: not {what} ({e})", path.display())))
}

/// Shorthand for an unavailable-model error as an `anyhow::Error`.
pub fn unavailable(msg: impl Into<String>) -> anyhow::Error {
    Error::Unavailable(msg.into()).into()
}

/// The exit code for an error chain: the first classified cause decides.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<Error>() {
            return match e {
                Error::Input(_) => EXIT_BAD_INPUT,
                Error::Unavailable(_) => EXIT_UNAVAILABLE,
            };
        }
    }
    EXIT_FAILURE
}
