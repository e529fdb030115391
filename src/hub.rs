//! Resolving a model argument the way Hugging Face tools do: a local directory first, then the
//! local Hub cache (`models--org--name/snapshots/<rev>/`), then a download from the Hub.
//!
//! Environment, as `huggingface_hub` reads it: `HF_ENDPOINT` (default
//! `https://huggingface.co`), `HF_TOKEN` (else the token file `$HF_HOME/token`), `HF_HUB_CACHE`
//! (else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
//! `~/.cache/huggingface/hub`) and `HF_HUB_OFFLINE`. Downloads go through the `hf-hub` crate
//! and land in the same cache layout Python uses, so both share one cache.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::error::{input, unavailable};

/// The weight file names a checkpoint directory may hold, most preferred first (the Hub's
/// conventions: what transformers' `from_pretrained` looks for).
pub const WEIGHT_FILE_NAMES: [&str; 4] = [
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
];

/// Default Hub endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Tokenizer files fetched alongside a model when the repository has them.
pub const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
];

/// Where and how to reach the Hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub endpoint: String,
    pub token: Option<String>,
    pub cache_dir: PathBuf,
    pub offline: bool,
}

impl HubConfig {
    /// Reads the Hugging Face environment variables; `offline` forces offline mode on top of
    /// `HF_HUB_OFFLINE`.
    pub fn from_env(offline: bool) -> Self {
        Self::from_vars(|k| std::env::var(k).ok().filter(|v| !v.is_empty()), offline)
    }

    /// Same as [`Self::from_env`] over any variable lookup (testable without touching the
    /// process environment).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>, offline: bool) -> Self {
        let hf_home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            let cache = var("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or_else(|| {
                PathBuf::from(var("HOME").unwrap_or_else(|| ".".into())).join(".cache")
            });
            cache.join("huggingface")
        });
        let cache_dir = var("HF_HUB_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let token = var("HF_TOKEN")
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| {
                std::fs::read_to_string(hf_home.join("token"))
                    .ok()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
            });
        let env_offline = var("HF_HUB_OFFLINE")
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "on" | "yes" | "true"))
            .unwrap_or(false);
        Self {
            endpoint: var("HF_ENDPOINT")
                .map(|e| e.trim_end_matches('/').to_string())
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()),
            token,
            cache_dir,
            offline: offline || env_offline,
        }
    }
}

/// What a caller needs from the model argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// `config.json` only (random initialisation, `info`).
    Config,
    /// `config.json` and weights.
    Weights,
}

/// Where a model directory was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    LocalDir,
    Cache,
    Downloaded,
}

/// A model directory holding `config.json` (and weights when they were needed).
#[derive(Debug, Clone)]
pub struct ModelDir {
    pub path: PathBuf,
    pub origin: Origin,
}

impl ModelDir {
    pub fn describe(&self) -> String {
        let what = match self.origin {
            Origin::LocalDir => "local directory",
            Origin::Cache => "Hugging Face cache",
            Origin::Downloaded => "downloaded from the Hub to",
        };
        format!("{what} {}", self.path.display())
    }
}

/// Checks that a string is a plausible Hub model id (`name` or `org/name`).
pub fn is_repo_id(s: &str) -> bool {
    let ok_part = |p: &str| {
        !p.is_empty()
            && p.len() <= 96
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && !p.starts_with(['-', '.'])
            && !p.ends_with(['-', '.'])
            && !p.contains("--")
            && !p.contains("..")
    };
    let parts: Vec<&str> = s.split('/').collect();
    matches!(parts.len(), 1 | 2) && parts.iter().all(|p| ok_part(p))
}

fn has_weights(dir: &Path) -> bool {
    WEIGHT_FILE_NAMES.iter().any(|f| dir.join(f).is_file())
}

/// Looks a model argument up locally: an existing directory, or a snapshot in the Hub cache.
/// `Ok(None)` means "not here, try elsewhere".
pub fn find_local(arg: &str, hub: &HubConfig, need: Need) -> Result<Option<ModelDir>> {
    let path = Path::new(arg);
    if path.is_dir() {
        if !path.join("config.json").is_file() {
            return Err(input(format!(
                "{}: directory has no config.json",
                path.display()
            )));
        }
        if need == Need::Weights && !has_weights(path) {
            return Err(input(format!(
                "{}: no model weights found: expected one of {}",
                path.display(),
                WEIGHT_FILE_NAMES.join(", ")
            )));
        }
        return Ok(Some(ModelDir {
            path: path.to_path_buf(),
            origin: Origin::LocalDir,
        }));
    }
    if path.exists() {
        return Err(input(format!(
            "{arg}: expected a model directory, found a file"
        )));
    }
    if !is_repo_id(arg) {
        return Err(input(format!(
            "{arg}: no such directory, and not a valid Hub model id (expected `name` or `org/name`)"
        )));
    }
    Ok(cached_snapshot(arg, hub, need))
}

/// The cached snapshot of `repo_id` at `refs/main`, if it has what is needed.
fn cached_snapshot(repo_id: &str, hub: &HubConfig, need: Need) -> Option<ModelDir> {
    let repo = hub
        .cache_dir
        .join(format!("models--{}", repo_id.replace('/', "--")));
    let commit = std::fs::read_to_string(repo.join("refs").join("main")).ok()?;
    let snapshot = repo.join("snapshots").join(commit.trim());
    let complete =
        snapshot.join("config.json").is_file() && (need == Need::Config || has_weights(&snapshot));
    complete.then_some(ModelDir {
        path: snapshot,
        origin: Origin::Cache,
    })
}

/// Downloads a model's config (and weights, tokenizer files) from the Hub into the cache.
pub fn download(repo_id: &str, hub: &HubConfig, need: Need) -> Result<ModelDir> {
    if hub.offline {
        return Err(unavailable(format!(
            "model `{repo_id}` is not in the local cache ({}) and offline mode is on (--offline or HF_HUB_OFFLINE)",
            hub.cache_dir.display()
        )));
    }
    let api = hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(hub.cache_dir.clone()))
        .with_endpoint(hub.endpoint.clone())
        .with_token(hub.token.clone())
        .with_progress(std::io::stderr().is_terminal())
        .build()
        .map_err(|e| unavailable(format!("cannot set up the Hub client: {e}")))?;
    let repo = api.model(repo_id.to_string());
    let fetch = |file: &str| -> Result<Option<PathBuf>> {
        match repo.get(file) {
            Ok(path) => Ok(Some(path)),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(hub_error(repo_id, file, hub, &e)),
        }
    };
    let Some(config) = fetch("config.json")? else {
        return Err(unavailable(format!(
            "model `{repo_id}` not found on the Hub at {} (no config.json; check the name, or set HF_TOKEN for a private repository)",
            hub.endpoint
        )));
    };
    let dir = config
        .parent()
        .expect("snapshot file has a parent")
        .to_path_buf();
    if need == Need::Weights {
        let mut found = false;
        for name in WEIGHT_FILE_NAMES {
            if let Some(path) = fetch(name)? {
                if name.ends_with(".index.json") {
                    for shard in shard_names(&path)? {
                        if fetch(&shard)?.is_none() {
                            return Err(unavailable(format!(
                                "model `{repo_id}`: shard `{shard}` listed in {name} is missing on the Hub"
                            )));
                        }
                    }
                }
                found = true;
                break;
            }
        }
        if !found {
            return Err(unavailable(format!(
                "model `{repo_id}` on {} has no weights (looked for {})",
                hub.endpoint,
                WEIGHT_FILE_NAMES.join(", ")
            )));
        }
        for name in TOKENIZER_FILES {
            fetch(name)?;
        }
    }
    Ok(ModelDir {
        path: dir,
        origin: Origin::Downloaded,
    })
}

/// Resolves a model argument: local directory, then cache, then the Hub.
pub fn resolve(arg: &str, hub: &HubConfig, need: Need) -> Result<ModelDir> {
    match find_local(arg, hub, need)? {
        Some(dir) => Ok(dir),
        None => download(arg, hub, need),
    }
}

fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index)?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| input(format!("{}: not valid JSON: {e}", index.display())))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| input(format!("{}: missing `weight_map`", index.display())))?;
    let mut names: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

fn status_of(e: &hf_hub::api::sync::ApiError) -> Option<u16> {
    match e {
        hf_hub::api::sync::ApiError::RequestError(inner) => match inner.as_ref() {
            ureq::Error::StatusCode(code) => Some(*code),
            _ => None,
        },
        _ => None,
    }
}

fn hub_error(
    repo_id: &str,
    file: &str,
    hub: &HubConfig,
    e: &hf_hub::api::sync::ApiError,
) -> anyhow::Error {
    match status_of(e) {
        Some(401) | Some(403) => unavailable(format!(
            "the Hub at {} refused access to `{repo_id}` ({file}): {}",
            hub.endpoint,
            if hub.token.is_some() {
                "the token in HF_TOKEN was rejected or lacks access"
            } else {
                "it needs a token; set HF_TOKEN"
            }
        )),
        _ => unavailable(format!(
            "cannot download `{file}` of `{repo_id}` from {}: {e}",
            hub.endpoint
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> HubConfig {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HubConfig::from_vars(|k| map.get(k).cloned(), false)
    }

    #[test]
    fn environment_follows_huggingface_hub() {
        let c = cfg(&[("HOME", "/home/u")]);
        assert_eq!(c.cache_dir, PathBuf::from("/home/u/.cache/huggingface/hub"));
        assert_eq!(c.endpoint, DEFAULT_ENDPOINT);
        assert!(!c.offline);
        let c = cfg(&[
            ("HF_HOME", "/h"),
            ("HF_ENDPOINT", "http://127.0.0.1:9/"),
            ("HF_HUB_OFFLINE", "1"),
        ]);
        assert_eq!(c.cache_dir, PathBuf::from("/h/hub"));
        assert_eq!(c.endpoint, "http://127.0.0.1:9");
        assert!(c.offline);
        let c = cfg(&[
            ("HF_HOME", "/h"),
            ("HF_HUB_CACHE", "/c"),
            ("HF_TOKEN", "hf_x"),
        ]);
        assert_eq!(c.cache_dir, PathBuf::from("/c"));
        assert_eq!(c.token.as_deref(), Some("hf_x"));
        let c = cfg(&[("XDG_CACHE_HOME", "/x"), ("HF_HUB_OFFLINE", "0")]);
        assert_eq!(c.cache_dir, PathBuf::from("/x/huggingface/hub"));
        assert!(!c.offline);
    }

    #[test]
    fn repo_ids() {
        for ok in [
            "bert-base-uncased",
            "squeezebert/squeezebert-uncased",
            "a/b.c_d",
        ] {
            assert!(is_repo_id(ok), "{ok}");
        }
        for bad in ["", "a/b/c", "../x", "a--b", "-a", "a b", "/abs/path"] {
            assert!(!is_repo_id(bad), "{bad}");
        }
    }

    #[test]
    fn cache_layout_is_found() {
        let tmp = tempfile::tempdir().unwrap();
        let hub = HubConfig {
            cache_dir: tmp.path().to_path_buf(),
            ..cfg(&[])
        };
        let repo = tmp.path().join("models--org--tiny");
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc123").unwrap();
        let snap = repo.join("snapshots/abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        let found = find_local("org/tiny", &hub, Need::Config).unwrap().unwrap();
        assert_eq!(
            (found.path.clone(), found.origin),
            (snap.clone(), Origin::Cache)
        );
        // Without weights, a weights lookup is not satisfied by the cache.
        assert!(find_local("org/tiny", &hub, Need::Weights)
            .unwrap()
            .is_none());
        std::fs::write(snap.join("model.safetensors"), "").unwrap();
        assert!(find_local("org/tiny", &hub, Need::Weights)
            .unwrap()
            .is_some());
        assert!(find_local("org/other", &hub, Need::Config)
            .unwrap()
            .is_none());
    }
}
