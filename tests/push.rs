//! Uploading to the Hub, against a fake Hub on 127.0.0.1 that implements the upload flow
//! (`whoami-v2`, `repos/create`, `preupload`, the Git LFS batch API, `commit` as NDJSON), checks
//! the token and records what it received. Never the internet.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use base64::Engine;
use common::http::{serve, Request, Response};
use common::*;
use sha2::{Digest, Sha256};

const TOKEN: &str = "hf_write_token";

#[derive(Default)]
struct Received {
    created: Vec<serde_json::Value>,
    lfs_blobs: HashMap<String, Vec<u8>>,
    /// path -> content (regular files decoded, LFS files resolved through their oid).
    files: HashMap<String, Vec<u8>>,
    commits: usize,
    requests: Vec<String>,
}

fn fake_hub() -> (String, Arc<Mutex<Received>>) {
    let state: Arc<Mutex<Received>> = Arc::default();
    let s = state.clone();
    let url_cell: Arc<Mutex<String>> = Arc::default();
    let url_for_handler = url_cell.clone();
    let url = serve(200, move |req: Request| {
        let mut st = s.lock().unwrap();
        st.requests.push(format!("{} {}", req.method, req.path));
        let authorised = req.headers.get("authorization").map(String::as_str)
            == Some(&format!("Bearer {TOKEN}"));
        let is_upload = req.path.starts_with("/lfs-upload/");
        if !authorised && !is_upload {
            return Response::json(
                "401 Unauthorized",
                serde_json::json!({"error": "Invalid credentials"}),
            );
        }
        let body: serde_json::Value =
            serde_json::from_slice(&req.body).unwrap_or(serde_json::Value::Null);
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/api/whoami-v2") => {
                Response::json("200 OK", serde_json::json!({"name": "tester"}))
            }
            ("POST", "/api/repos/create") => {
                st.created.push(body);
                Response::json("200 OK", serde_json::json!({"url": "http://hub/org/model"}))
            }
            ("POST", p) if p.ends_with("/preupload/main") => {
                // Like the Hub: binary weights go through LFS, text files inline.
                let files: Vec<serde_json::Value> = body["files"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| {
                        let path = f["path"].as_str().unwrap();
                        let mode = if path.ends_with(".safetensors") {
                            "lfs"
                        } else {
                            "regular"
                        };
                        serde_json::json!({"path": path, "uploadMode": mode, "shouldIgnore": false})
                    })
                    .collect();
                Response::json("200 OK", serde_json::json!({"files": files}))
            }
            ("POST", p) if p.ends_with(".git/info/lfs/objects/batch") => {
                let base = url_for_handler.lock().unwrap().clone();
                let objects: Vec<serde_json::Value> = body["objects"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| {
                        let oid = o["oid"].as_str().unwrap();
                        serde_json::json!({"oid": oid, "size": o["size"],
                            "actions": {"upload": {"href": format!("{base}/lfs-upload/{oid}"), "header": {"X-Upload": "1"}}}})
                    })
                    .collect();
                Response::json("200 OK", serde_json::json!({"objects": objects}))
            }
            ("PUT", p) if is_upload => {
                let oid = p.trim_start_matches("/lfs-upload/").to_string();
                let actual = format!("{:x}", Sha256::digest(&req.body));
                if actual != oid {
                    return Response::new("400 Bad Request", "hash mismatch");
                }
                st.lfs_blobs.insert(oid, req.body.clone());
                Response::new("200 OK", "")
            }
            ("POST", p) if p.ends_with("/commit/main") => {
                let text = String::from_utf8(req.body.clone()).unwrap();
                let b64 = base64::engine::general_purpose::STANDARD;
                for line in text.lines() {
                    let v: serde_json::Value = serde_json::from_str(line).unwrap();
                    match v["key"].as_str().unwrap() {
                        "file" => {
                            let content =
                                b64.decode(v["value"]["content"].as_str().unwrap()).unwrap();
                            st.files
                                .insert(v["value"]["path"].as_str().unwrap().into(), content);
                        }
                        "lfsFile" => {
                            let oid = v["value"]["oid"].as_str().unwrap();
                            let Some(blob) = st.lfs_blobs.get(oid).cloned() else {
                                return Response::new(
                                    "400 Bad Request",
                                    "LFS object was not uploaded",
                                );
                            };
                            st.files
                                .insert(v["value"]["path"].as_str().unwrap().into(), blob);
                        }
                        _ => {}
                    }
                }
                st.commits += 1;
                Response::json(
                    "200 OK",
                    serde_json::json!({"commitUrl": "http://hub/org/model/commit/abc"}),
                )
            }
            _ => Response::new("404 Not Found", "no such endpoint"),
        }
    });
    *url_cell.lock().unwrap() = url.clone();
    (url, state)
}

fn push(url: &str, dir: &Path, token: Option<&str>) -> std::process::Command {
    let mut cmd = bin();
    cmd.arg("push")
        .arg(dir)
        .arg("org/model")
        .env("HF_ENDPOINT", url)
        .env_remove("HF_HUB_OFFLINE");
    match token {
        Some(t) => cmd.env("HF_TOKEN", t),
        None => cmd
            .env_remove("HF_TOKEN")
            .env("HF_HOME", dir.join("no-home")),
    };
    cmd
}

/// A model directory with a stale checkpoint inside (which must not be uploaded).
fn model_dir(root: &Path) -> std::path::PathBuf {
    let dir = root.join("model");
    std::fs::create_dir_all(dir.join("checkpoint-5")).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(parity_dir("bert").join(f), dir.join(f)).unwrap();
    }
    std::fs::copy(
        shared().join("vocab/bert-base-uncased-vocab.txt"),
        dir.join("vocab.txt"),
    )
    .unwrap();
    std::fs::write(dir.join("checkpoint-5/optimizer.safetensors"), b"stale").unwrap();
    dir
}

#[test]
fn push_uploads_every_file_with_lfs_for_weights() {
    let (url, state) = fake_hub();
    let tmp = tempfile::tempdir().unwrap();
    let dir = model_dir(tmp.path());
    let (code, stdout, stderr) = run(&mut push(&url, &dir, Some(TOKEN)));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("pushed 3 files to org/model (1 through LFS)"),
        "{stdout}"
    );
    let st = state.lock().unwrap();
    assert_eq!(st.created[0]["name"], "model");
    assert_eq!(st.created[0]["organization"], "org");
    assert_eq!(st.commits, 1);
    assert_eq!(
        st.files.len(),
        3,
        "{:?}",
        st.files.keys().collect::<Vec<_>>()
    );
    for f in ["config.json", "model.safetensors", "vocab.txt"] {
        assert_eq!(
            st.files[f],
            std::fs::read(dir.join(f)).unwrap(),
            "{f} differs"
        );
    }
    assert_eq!(st.lfs_blobs.len(), 1);
}

#[test]
fn missing_or_rejected_token() {
    let (url, state) = fake_hub();
    let tmp = tempfile::tempdir().unwrap();
    let dir = model_dir(tmp.path());
    let (code, _, stderr) = run(&mut push(&url, &dir, None));
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("set HF_TOKEN"), "{stderr}");
    let (code, _, stderr) = run(&mut push(&url, &dir, Some("hf_wrong")));
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("rejected the token"), "{stderr}");
    assert_eq!(state.lock().unwrap().commits, 0);
}

#[test]
fn train_checks_the_token_before_training_and_pushes_after() {
    let (url, state) = fake_hub();
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(
        model.join("config.json"),
        r#"{"model_type": "distilbert", "vocab_size": 30522, "dim": 32, "n_layers": 1, "n_heads": 2, "hidden_dim": 64, "max_position_embeddings": 128}"#,
    )
    .unwrap();
    std::fs::copy(
        shared().join("vocab/bert-base-uncased-vocab.txt"),
        model.join("vocab.txt"),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let train = |token: &str| {
        let mut cmd = bin();
        cmd.args(["train", "--random-init", "--model"])
            .arg(&model)
            .arg("--train-file")
            .arg(shared().join("data/squad/dev-v1.1.json.gz"))
            .arg("--output-dir")
            .arg(&out)
            .args([
                "--limit",
                "2",
                "--max-steps",
                "1",
                "--max-seq-length",
                "128",
                "--doc-stride",
                "32",
                "--push-to-hub",
                "org/model",
            ])
            .env("HF_ENDPOINT", &url)
            .env("HF_TOKEN", token)
            .env_remove("HF_HUB_OFFLINE");
        cmd
    };
    let (code, _, stderr) = run(&mut train("hf_wrong"));
    assert_eq!(code, 4, "{stderr}");
    assert!(
        !out.exists(),
        "training must not start with a rejected token"
    );
    let (code, stdout, stderr) = run(&mut train(TOKEN));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("pushed to org/model"), "{stdout}");
    let st = state.lock().unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "vocab.txt",
        "training_args.json",
        "trainer_state.json",
        "train_log.csv",
    ] {
        assert!(
            st.files.contains_key(f),
            "{f} was not pushed: {:?}",
            st.files.keys().collect::<Vec<_>>()
        );
    }
    assert_eq!(
        st.files["model.safetensors"],
        std::fs::read(out.join("model.safetensors")).unwrap()
    );
}
