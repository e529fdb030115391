//! Uploading a model directory to the Hugging Face Hub through its HTTP API, the way
//! `huggingface_hub.upload_folder` does it: check the token (`/api/whoami-v2`), create the
//! repository if needed (`/api/repos/create`), ask which files go through LFS
//! (`/api/models/{repo}/preupload/{rev}`), upload those with the Git LFS batch API, then make one
//! commit (`/api/models/{repo}/commit/{rev}`, NDJSON) that adds every file.
//!
//! The `hf-hub` crate only downloads, so this is written here on `ureq`.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use base64::Engine;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::error::{input, unavailable};
use crate::hub::{is_repo_id, HubConfig};

/// What was pushed.
#[derive(Debug, Clone)]
pub struct PushReport {
    pub repo_id: String,
    pub commit_url: Option<String>,
    /// Files sent inline in the commit.
    pub regular: Vec<String>,
    /// Files sent through LFS.
    pub lfs: Vec<String>,
}

fn token(hub: &HubConfig) -> Result<&str> {
    hub.token
        .as_deref()
        .ok_or_else(|| input("pushing to the Hub needs a token: set HF_TOKEN (a write token)"))
}

fn http_error(what: &str, hub: &HubConfig, e: ureq::Error) -> anyhow::Error {
    match e {
        ureq::Error::StatusCode(401) | ureq::Error::StatusCode(403) => unavailable(format!(
            "the Hub at {} rejected the token in HF_TOKEN while {what} (HTTP 401/403): check that it is valid and has write access",
            hub.endpoint
        )),
        ureq::Error::StatusCode(code) => unavailable(format!("the Hub at {} answered HTTP {code} while {what}", hub.endpoint)),
        other => unavailable(format!("cannot reach the Hub at {} while {what}: {other}", hub.endpoint)),
    }
}

/// Checks the token before any long work starts; returns the user name it belongs to.
pub fn check_token(hub: &HubConfig) -> Result<String> {
    #[derive(Deserialize)]
    struct WhoAmI {
        name: String,
    }
    if hub.offline {
        return Err(input(
            "--push-to-hub needs the network, but offline mode is on (--offline or HF_HUB_OFFLINE)",
        ));
    }
    let token = token(hub)?;
    let mut resp = ureq::get(&format!("{}/api/whoami-v2", hub.endpoint))
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .map_err(|e| http_error("checking the token", hub, e))?;
    let who: WhoAmI = resp
        .body_mut()
        .read_json()
        .context("reading /api/whoami-v2")?;
    Ok(who.name)
}

/// Every file under `dir` (relative paths with `/`), skipping `checkpoint-*` folders.
fn files_to_push(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let entry = entry?;
            let path = entry.path();
            let rel = path
                .strip_prefix(dir)
                .unwrap_or(&path)
                .to_string_lossy()
                .replace('\\', "/");
            if path.is_dir() {
                if !rel.starts_with("checkpoint-") {
                    stack.push(path);
                }
            } else if !rel.ends_with(".tmp") {
                out.push((rel, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((format!("{:x}", hasher.finalize()), size))
}

/// Uploads `dir` to `repo_id` (created if missing) on branch `main` in one commit.
pub fn push_folder(
    dir: &Path,
    repo_id: &str,
    hub: &HubConfig,
    private: bool,
    message: &str,
) -> Result<PushReport> {
    if !is_repo_id(repo_id) || !repo_id.contains('/') {
        return Err(input(format!(
            "`{repo_id}` is not a Hub repository id: expected `user/name` or `org/name`"
        )));
    }
    if !dir.is_dir() {
        return Err(input(format!("{}: not a directory", dir.display())));
    }
    check_token(hub)?;
    let token = token(hub)?;
    let auth = format!("Bearer {token}");
    let b64 = base64::engine::general_purpose::STANDARD;
    create_repo(hub, repo_id, &auth, private)?;
    let files = files_to_push(dir)?;
    if files.is_empty() {
        return Err(input(format!("{}: nothing to push", dir.display())));
    }
    let lfs = lfs_paths(hub, repo_id, &auth, &files)?;

    // LFS uploads (basic transfer), then one commit with every file.
    let mut lines = vec![
        json!({"key": "header", "value": {"summary": message, "description": ""}}).to_string(),
    ];
    let mut report = PushReport {
        repo_id: repo_id.into(),
        commit_url: None,
        regular: Vec::new(),
        lfs: Vec::new(),
    };
    for (rel, path) in &files {
        if lfs.contains(rel) {
            let (oid, size) = sha256_file(path)?;
            upload_lfs(
                hub,
                repo_id,
                &auth,
                &LfsObject {
                    path,
                    oid: &oid,
                    size,
                },
            )?;
            lines.push(json!({"key": "lfsFile", "value": {"path": rel, "algo": "sha256", "oid": oid, "size": size}}).to_string());
            report.lfs.push(rel.clone());
        } else {
            let content = std::fs::read(path)?;
            lines.push(json!({"key": "file", "value": {"content": b64.encode(&content), "path": rel, "encoding": "base64"}}).to_string());
            report.regular.push(rel.clone());
        }
    }
    report.commit_url = commit(hub, repo_id, &auth, &lines)?;
    Ok(report)
}

/// Creates the repository; 409 means it exists already, which is fine.
fn create_repo(hub: &HubConfig, repo_id: &str, auth: &str, private: bool) -> Result<()> {
    let (org, name) = repo_id
        .split_once('/')
        .ok_or_else(|| input(format!("`{repo_id}`: expected `user/name` or `org/name`")))?;
    match ureq::post(&format!("{}/api/repos/create", hub.endpoint))
        .header("Authorization", auth)
        .send_json(json!({"type": "model", "name": name, "organization": org, "private": private}))
    {
        Ok(_) | Err(ureq::Error::StatusCode(409)) => Ok(()),
        Err(e) => Err(http_error("creating the repository", hub, e)),
    }
}

/// The files (by their path in the repository) the Hub wants through LFS: its preupload
/// answer to each file's size and first 512 bytes.
fn lfs_paths(
    hub: &HubConfig,
    repo_id: &str,
    auth: &str,
    files: &[(String, PathBuf)],
) -> Result<HashSet<String>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut described = Vec::new();
    for (rel, path) in files {
        let mut sample = vec![0u8; 512];
        let n = std::fs::File::open(path)?.read(&mut sample)?;
        sample.truncate(n);
        described.push(json!({"path": rel, "sample": b64.encode(&sample), "size": std::fs::metadata(path)?.len()}));
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Mode {
        path: String,
        upload_mode: String,
    }
    #[derive(Deserialize)]
    struct Preupload {
        files: Vec<Mode>,
    }
    let mut resp = ureq::post(&format!(
        "{}/api/models/{repo_id}/preupload/main",
        hub.endpoint
    ))
    .header("Authorization", auth)
    .send_json(json!({"files": described}))
    .map_err(|e| http_error("asking which files need LFS", hub, e))?;
    let modes: Preupload = resp
        .body_mut()
        .read_json()
        .context("reading the preupload answer")?;
    Ok(modes
        .files
        .into_iter()
        .filter(|m| m.upload_mode == "lfs")
        .map(|m| m.path)
        .collect())
}

/// One commit of `lines` (the NDJSON header and files); the commit's URL where the Hub
/// answers with one.
fn commit(hub: &HubConfig, repo_id: &str, auth: &str, lines: &[String]) -> Result<Option<String>> {
    let body = lines.join("\n") + "\n";
    let mut resp = ureq::post(&format!(
        "{}/api/models/{repo_id}/commit/main",
        hub.endpoint
    ))
    .header("Authorization", auth)
    .header("Content-Type", "application/x-ndjson")
    .send(body.as_bytes())
    .map_err(|e| http_error("committing the files", hub, e))?;
    let answer: serde_json::Value = resp
        .body_mut()
        .read_json()
        .unwrap_or(serde_json::Value::Null);
    Ok(answer
        .get("commitUrl")
        .and_then(|u| u.as_str())
        .map(str::to_string))
}

/// An action of Git LFS's batch answer: where to send the file, with which headers.
#[derive(Deserialize)]
struct LfsAction {
    href: String,
    #[serde(default)]
    header: std::collections::HashMap<String, String>,
}

/// What to do with one object: upload it, then verify it (no actions: the Hub has it).
#[derive(Deserialize)]
struct LfsActions {
    upload: Option<LfsAction>,
    verify: Option<LfsAction>,
}

/// A file to upload through LFS: where it is, its content's sha256 and its size in bytes.
struct LfsObject<'a> {
    path: &'a Path,
    oid: &'a str,
    size: u64,
}

/// Uploads one LFS file through Git LFS's batch API: asks where, sends it there, and has the
/// Hub verify it.
fn upload_lfs(hub: &HubConfig, repo_id: &str, auth: &str, file: &LfsObject) -> Result<()> {
    let Some(actions) = lfs_batch(hub, repo_id, auth, file)? else {
        return Ok(());
    };
    let (oid, size) = (file.oid, file.size);
    if let Some(upload) = actions.upload {
        let data = std::fs::read(file.path)?;
        let mut req = ureq::put(&upload.href);
        for (k, v) in &upload.header {
            req = req.header(k, v);
        }
        req.send(&data[..])
            .map_err(|e| http_error("uploading an LFS file", hub, e))?;
    }
    if let Some(verify) = actions.verify {
        let mut req = ureq::post(&verify.href).header("Authorization", auth);
        for (k, v) in &verify.header {
            req = req.header(k, v);
        }
        req.header("Content-Type", "application/vnd.git-lfs+json")
            .send(json!({"oid": oid, "size": size}).to_string().as_bytes())
            .map_err(|e| http_error("verifying an LFS upload", hub, e))?;
    }
    Ok(())
}

/// Git LFS's batch request for uploading one object: its actions, or `None` when the Hub
/// already has this content; an object the Hub refuses is an error naming its path.
fn lfs_batch(
    hub: &HubConfig,
    repo_id: &str,
    auth: &str,
    file: &LfsObject,
) -> Result<Option<LfsActions>> {
    let (oid, size) = (file.oid, file.size);
    #[derive(Deserialize)]
    struct Object {
        actions: Option<LfsActions>,
        error: Option<serde_json::Value>,
    }
    #[derive(Deserialize)]
    struct Batch {
        objects: Vec<Object>,
    }
    let mut resp = ureq::post(&format!(
        "{}/{repo_id}.git/info/lfs/objects/batch",
        hub.endpoint
    ))
    .header("Authorization", auth)
    .header("Accept", "application/vnd.git-lfs+json")
    .header("Content-Type", "application/vnd.git-lfs+json")
    .send(
        json!({
            "operation": "upload",
            "transfers": ["basic"],
            "objects": [{"oid": oid, "size": size}],
            "hash_algo": "sha256",
            "ref": {"name": "main"},
        })
        .to_string()
        .as_bytes(),
    )
    .map_err(|e| http_error("starting an LFS upload", hub, e))?;
    let batch: Batch = resp
        .body_mut()
        .read_json()
        .context("reading the LFS batch answer")?;
    let object = batch
        .objects
        .into_iter()
        .next()
        .context("the LFS batch answer lists no object")?;
    if let Some(err) = object.error {
        return Err(unavailable(format!(
            "the Hub refused the LFS upload of {}: {err}",
            file.path.display()
        )));
    }
    Ok(object.actions)
}
