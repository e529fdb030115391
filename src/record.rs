//! What every result file carries and how it reaches the disk: the build's and the machine's
//! provenance and atomic writes. Part of the floor: every layer may use it, and it imports nothing of the
//! crate.

use std::path::Path;

use anyhow::{Context, Result};

/// bertbench's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit the binary was built from (`-dirty` with uncommitted changes).
pub const GIT_COMMIT: &str = env!("BERTBENCH_GIT_COMMIT");
/// The candle version linked in.
pub const CANDLE_VERSION: &str = env!("BERTBENCH_CANDLE_VERSION");
/// The compiler that built it.
pub const RUSTC_VERSION: &str = env!("BERTBENCH_RUSTC_VERSION");

/// The CPU's model name (`/proc/cpuinfo`), `unknown` where it cannot be read.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so a
/// reader never sees half a file and an interrupted write leaves the old one.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// A fresh, timestamped directory name under `base`.
pub fn timestamped_dir(base: &std::path::Path) -> std::path::PathBuf {
    let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S").to_string();
    let mut dir = base.join(&stamp);
    let mut n = 2;
    while dir.exists() {
        dir = base.join(format!("{stamp}-{n}"));
        n += 1;
    }
    dir
}
