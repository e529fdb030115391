//! The official SQuAD v1.1 dev set, downloaded once into a cache and checked byte for byte:
//! what `loadgen` draws its questions from when no `--dataset` is given.

use std::path::PathBuf;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::error::{input, unavailable};

/// Where the official file is published.
pub const DEV_URL: &str = "https://rajpurkar.github.io/SQuAD-explorer/dataset/dev-v1.1.json";
/// The variable that points the download elsewhere (a mirror; tests use a local server).
pub const DEV_URL_ENV: &str = "BERTBENCH_SQUAD_DEV_URL";
/// sha256 of the official `dev-v1.1.json` (4,854,279 bytes): anything else is refused.
pub const DEV_SHA256: &str = "95aa6a52d5d6a735563366753ca50492a658031da74f301ac5238b03966972c9";
/// The variable naming bertbench's cache folder (else `$XDG_CACHE_HOME/bertbench`, else
/// `~/.cache/bertbench`).
pub const CACHE_ENV: &str = "BERTBENCH_CACHE";

/// bertbench's cache folder.
pub fn cache_dir() -> PathBuf {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    var(CACHE_ENV).map(PathBuf::from).unwrap_or_else(|| {
        var("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(var("HOME").unwrap_or_else(|| ".".into())).join(".cache")
            })
            .join("bertbench")
    })
}

/// The dev set's path: the cached copy, else downloaded (from [`DEV_URL`] or `$`[`DEV_URL_ENV`]),
/// checked against [`DEV_SHA256`] and cached. `offline`: never download.
pub fn dev_set(offline: bool) -> Result<PathBuf> {
    let path = cache_dir().join("squad").join("dev-v1.1.json");
    if path.is_file() {
        return Ok(path);
    }
    if offline {
        return Err(unavailable(format!(
            "no --dataset given and the SQuAD dev set is not cached at {} (offline: not \
             downloading it)",
            path.display()
        )));
    }
    let url = std::env::var(DEV_URL_ENV)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DEV_URL.to_string());
    eprintln!("downloading the SQuAD v1.1 dev set from {url}");
    let bytes = ureq::get(&url)
        .call()
        .map_err(|e| unavailable(format!("downloading {url}: {e}")))?
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .map_err(|e| unavailable(format!("downloading {url}: {e}")))?;
    let sha = format!("{:x}", Sha256::digest(&bytes));
    if sha != DEV_SHA256 {
        return Err(input(format!(
            "{url}: {} bytes with sha256 {sha}, not the official dev-v1.1.json ({DEV_SHA256}); \
             nothing was cached",
            bytes.len()
        )));
    }
    let dir = path.parent().expect("a file in a folder");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    crate::record::atomic_write(&path, &bytes)?;
    Ok(path)
}
