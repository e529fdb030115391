//! Downloads from the Hub, tested against a fake Hub on 127.0.0.1 that serves the real URL
//! layout (`/{repo}/resolve/{revision}/{file}` with ranged GETs, `ETag` and `X-Repo-Commit`),
//! checks bearer tokens for private repositories and records every request. Never the internet.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use common::*;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const TOKEN: &str = "hf_test_token";

struct Repo {
    files: HashMap<String, Vec<u8>>,
    private: bool,
}

/// One recorded request: path and the Authorization header, if any.
type Log = Arc<Mutex<Vec<(String, Option<String>)>>>;

struct FakeHub {
    endpoint: String,
    log: Log,
}

impl FakeHub {
    /// Serves `repos` until the test process exits (at most 500 connections).
    fn start(repos: HashMap<String, Repo>) -> Self {
        let log: Log = Arc::default();
        let seen = log.clone();
        let endpoint = http::serve(500, move |req| {
            seen.lock()
                .unwrap()
                .push((req.path.clone(), req.headers.get("authorization").cloned()));
            serve(&req, &repos)
        });
        Self { endpoint, log }
    }

    fn requests(&self) -> Vec<(String, Option<String>)> {
        self.log.lock().unwrap().clone()
    }
}

fn serve(req: &http::Request, repos: &HashMap<String, Repo>) -> http::Response {
    let not_found = |code: &str, msg: &str| {
        http::Response::new("404 Not Found", msg.to_string()).header("X-Error-Code", code)
    };
    // /{org}/{name}/resolve/{revision}/{file}
    let parts: Vec<&str> = req.path.trim_start_matches('/').splitn(5, '/').collect();
    let [org, name, "resolve", _revision, file] = parts.as_slice() else {
        return not_found("RepoNotFound", "not found");
    };
    let Some(repo) = repos.get(&format!("{org}/{name}")) else {
        return not_found("RepoNotFound", "repo not found");
    };
    if repo.private
        && req.headers.get("authorization").map(String::as_str) != Some(&format!("Bearer {TOKEN}"))
    {
        return http::Response::new("401 Unauthorized", "invalid credentials");
    }
    let Some(content) = repo.files.get(*file) else {
        return not_found("EntryNotFound", "entry not found");
    };
    let etag = format!("{:016x}{:08x}", fxhash(content), content.len());
    let size = content.len();
    let (start, end) = match req
        .headers
        .get("range")
        .and_then(|r| r.strip_prefix("bytes="))
    {
        Some(r) => {
            let (a, b) = r.split_once('-').unwrap_or((r, ""));
            let a: usize = a.parse().unwrap_or(0);
            let b: usize = if b.is_empty() {
                size - 1
            } else {
                b.parse().unwrap_or(size - 1)
            };
            (a.min(size), b.min(size - 1))
        }
        None => (0, size - 1),
    };
    http::Response::new("206 Partial Content", content[start..=end].to_vec())
        .header("ETag", &format!("\"{etag}\""))
        .header("X-Repo-Commit", COMMIT)
        .header("Content-Range", &format!("bytes {start}-{end}/{size}"))
}

/// A content hash for ETags (any stable digest does; the Hub uses sha256 for LFS files).
fn fxhash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

fn files_of(dir: &Path, names: &[&str]) -> HashMap<String, Vec<u8>> {
    names
        .iter()
        .map(|n| (n.to_string(), std::fs::read(dir.join(n)).unwrap()))
        .collect()
}

fn hub() -> FakeHub {
    let mut repos = HashMap::new();
    repos.insert(
        "org/tiny-bert".to_string(),
        Repo {
            files: files_of(&parity_dir("bert"), &["config.json", "model.safetensors"]),
            private: false,
        },
    );
    // Only the PyTorch format, as many older Hub repositories.
    repos.insert(
        "org/tiny-distilbert-bin".to_string(),
        Repo {
            files: files_of(
                &parity_dir("distilbert"),
                &["config.json", "pytorch_model.bin"],
            ),
            private: false,
        },
    );
    repos.insert(
        "org/private-squeezebert".to_string(),
        Repo {
            files: files_of(
                &parity_dir("squeezebert"),
                &["config.json", "model.safetensors"],
            ),
            private: true,
        },
    );
    FakeHub::start(repos)
}

fn logits(
    hub: &FakeHub,
    home: &Path,
    model: &str,
    family: &str,
    extra: &[&str],
) -> std::process::Command {
    let mut cmd = bin();
    cmd.args(["logits", "--model", model, "--inputs"])
        .arg(parity_dir(family).join("expected.json"))
        .args(extra)
        .env("HF_ENDPOINT", &hub.endpoint)
        .env("HF_HOME", home)
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HUGGING_FACE_HUB_TOKEN");
    cmd
}

fn assert_matches_fixture(stdout: &str, family: &str) {
    let out: serde_json::Value = serde_json::from_str(stdout).unwrap();
    let expected = read_json(&parity_dir(family).join("expected.json"));
    for key in ["start_logits", "end_logits"] {
        let diff = max_abs_diff(&flatten(&out[key]), &flatten(&expected["outputs"][key]));
        assert!(diff <= 1e-5, "{family} {key}: {diff:e}");
    }
}

fn snapshot(home: &Path, repo: &str) -> PathBuf {
    home.join("hub")
        .join(format!("models--{}", repo.replace('/', "--")))
        .join("snapshots")
        .join(COMMIT)
}

#[test]
fn downloads_into_the_hf_cache_then_runs_offline() {
    let hub = hub();
    let home = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = run(&mut logits(&hub, home.path(), "org/tiny-bert", "bert", &[]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("downloaded from the Hub"), "{stderr}");
    assert_matches_fixture(&stdout, "bert");
    // The Python-compatible cache layout.
    let repo_dir = home.path().join("hub/models--org--tiny-bert");
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/main"))
            .unwrap()
            .trim(),
        COMMIT
    );
    assert!(snapshot(home.path(), "org/tiny-bert")
        .join("model.safetensors")
        .is_file());
    let served = hub.requests().len();
    assert!(hub
        .requests()
        .iter()
        .any(|(p, _)| p == "/org/tiny-bert/resolve/main/model.safetensors"));

    // Second run: from the cache, no request at all, also with --offline.
    let (code, stdout, stderr) = run(&mut logits(
        &hub,
        home.path(),
        "org/tiny-bert",
        "bert",
        &["--offline"],
    ));
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("Hugging Face cache"), "{stderr}");
    assert_matches_fixture(&stdout, "bert");
    assert_eq!(
        hub.requests().len(),
        served,
        "the cached model must not be fetched again"
    );
}

#[test]
fn falls_back_to_pytorch_model_bin() {
    let hub = hub();
    let home = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = run(&mut logits(
        &hub,
        home.path(),
        "org/tiny-distilbert-bin",
        "distilbert",
        &[],
    ));
    assert_eq!(code, 0, "{stderr}");
    assert_matches_fixture(&stdout, "distilbert");
    assert!(snapshot(home.path(), "org/tiny-distilbert-bin")
        .join("pytorch_model.bin")
        .is_file());
}

#[test]
fn private_repository_needs_the_token() {
    let hub = hub();
    let home = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run(&mut logits(
        &hub,
        home.path(),
        "org/private-squeezebert",
        "squeezebert",
        &[],
    ));
    assert_eq!(code, 4, "{stderr}");
    assert!(
        stderr.contains("refused access") && stderr.contains("HF_TOKEN"),
        "{stderr}"
    );

    let mut cmd = logits(
        &hub,
        home.path(),
        "org/private-squeezebert",
        "squeezebert",
        &[],
    );
    cmd.env("HF_TOKEN", "hf_wrong");
    let (code, _, stderr) = run(&mut cmd);
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("rejected"), "{stderr}");

    let mut cmd = logits(
        &hub,
        home.path(),
        "org/private-squeezebert",
        "squeezebert",
        &[],
    );
    cmd.env("HF_TOKEN", TOKEN);
    let (code, stdout, stderr) = run(&mut cmd);
    assert_eq!(code, 0, "{stderr}");
    assert_matches_fixture(&stdout, "squeezebert");
    let bearer = format!("Bearer {TOKEN}");
    assert!(hub.requests().iter().any(|(p, auth)| p
        .ends_with("private-squeezebert/resolve/main/model.safetensors")
        && auth.as_deref() == Some(&bearer)));
}

#[test]
fn unknown_repository_and_offline_mode() {
    let hub = hub();
    let home = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run(&mut logits(&hub, home.path(), "org/missing", "bert", &[]));
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("not found on the Hub"), "{stderr}");

    let before = hub.requests().len();
    let mut cmd = logits(&hub, home.path(), "org/tiny-bert", "bert", &[]);
    cmd.env("HF_HUB_OFFLINE", "1");
    let (code, _, stderr) = run(&mut cmd);
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("offline"), "{stderr}");
    assert_eq!(
        hub.requests().len(),
        before,
        "offline mode must not contact the Hub"
    );
}

#[test]
fn info_fetches_only_the_config() {
    let hub = hub();
    let home = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = run(bin()
        .args(["info", "--json", "org/tiny-bert"])
        .env("HF_ENDPOINT", &hub.endpoint)
        .env("HF_HOME", home.path())
        .env_remove("HF_HUB_OFFLINE"));
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["parameters"]["total"], 139_522);
    assert!(
        hub.requests()
            .iter()
            .all(|(p, _)| p.ends_with("config.json")),
        "{:?}",
        hub.requests()
    );
}
