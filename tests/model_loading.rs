//! Loading through the CLI: the `logits` and `info` commands, every weight-loading error with
//! its message and exit code, and sharded checkpoints.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use common::*;

const EXIT_BAD_INPUT: i32 = 3;
const EXIT_UNAVAILABLE: i32 = 4;

/// A copy of a fixture directory's config with the given tensors written as model.safetensors.
fn checkpoint_dir(family: &str, tensors: &HashMap<String, Tensor>) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        parity_dir(family).join("config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    candle_core::safetensors::save(tensors, tmp.path().join("model.safetensors")).unwrap();
    tmp
}

fn fixture_tensors(family: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(parity_dir(family).join("model.safetensors"), &Device::Cpu)
        .unwrap()
}

fn logits(model: &Path) -> (i32, String, String) {
    let inputs = parity_dir("bert").join("expected.json");
    run(bin()
        .args(["logits", "--offline", "--inputs"])
        .arg(inputs)
        .arg("--model")
        .arg(model))
}

#[test]
fn logits_command_matches_the_fixtures() {
    for family in FAMILIES {
        let dir = parity_dir(family);
        let (code, stdout, stderr) = run(bin()
            .args(["logits", "--hidden", "--inputs"])
            .arg(dir.join("expected.json"))
            .arg("--model")
            .arg(&dir));
        assert_eq!(code, 0, "{family}: {stderr}");
        let out: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let expected = read_json(&dir.join("expected.json"));
        for key in ["start_logits", "end_logits", "last_hidden_state"] {
            let diff = max_abs_diff(&flatten(&out[key]), &flatten(&expected["outputs"][key]));
            assert!(diff <= 1e-5, "{family} {key}: {diff:e}");
        }
    }
}

#[test]
fn sharded_safetensors_load() {
    let tensors = fixture_tensors("bert");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        parity_dir("bert").join("config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        let shard: HashMap<String, Tensor> = part
            .iter()
            .map(|n| ((*n).clone(), tensors[*n].clone()))
            .collect();
        candle_core::safetensors::save(&shard, tmp.path().join(file)).unwrap();
        for n in part {
            weight_map.insert((*n).clone(), file.into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let (code, stdout, stderr) = logits(tmp.path());
    assert_eq!(code, 0, "{stderr}");
    let out: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let expected = read_json(&parity_dir("bert").join("expected.json"));
    let diff = max_abs_diff(
        &flatten(&out["start_logits"]),
        &flatten(&expected["outputs"]["start_logits"]),
    );
    assert!(diff <= 1e-5, "{diff:e}");
}

#[test]
fn missing_weights_file() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        parity_dir("bert").join("config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    let (code, _, stderr) = logits(tmp.path());
    assert_eq!(code, EXIT_BAD_INPUT, "{stderr}");
    assert!(
        stderr.contains("no model weights found") && stderr.contains("model.safetensors"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn missing_tensor_is_named() {
    let mut tensors = fixture_tensors("bert");
    tensors
        .remove("bert.encoder.layer.1.output.dense.weight")
        .unwrap();
    let dir = checkpoint_dir("bert", &tensors);
    let (code, _, stderr) = logits(dir.path());
    assert_eq!(code, EXIT_BAD_INPUT, "{stderr}");
    assert!(
        stderr.contains("missing tensor `bert.encoder.layer.1.output.dense.weight`"),
        "{stderr}"
    );
}

#[test]
fn wrong_shape_names_tensor_and_both_shapes() {
    let mut tensors = fixture_tensors("squeezebert");
    let name = "transformer.encoder.layers.0.attention.query.weight";
    tensors.insert(
        name.into(),
        Tensor::zeros((64, 64, 1), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let dir = checkpoint_dir("squeezebert", &tensors);
    let (code, _, stderr) = logits(dir.path());
    assert_eq!(code, EXIT_BAD_INPUT, "{stderr}");
    assert!(
        stderr.contains(name) && stderr.contains("[64, 64, 1]") && stderr.contains("[64, 16, 1]"),
        "{stderr}"
    );
}

#[test]
fn unknown_model_type() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("config.json"),
        r#"{"model_type": "roberta", "hidden_size": 64}"#,
    )
    .unwrap();
    std::fs::copy(
        parity_dir("bert").join("model.safetensors"),
        tmp.path().join("model.safetensors"),
    )
    .unwrap();
    let (code, _, stderr) = logits(tmp.path());
    assert_eq!(code, EXIT_BAD_INPUT, "{stderr}");
    assert!(
        stderr.contains("model_type `roberta` is not supported") && stderr.contains("config.json"),
        "{stderr}"
    );
}

#[test]
fn corrupt_safetensors_header() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        parity_dir("bert").join("config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    let mut bytes = std::fs::read(parity_dir("bert").join("model.safetensors")).unwrap();
    // Header length says 8 bytes; what follows is not JSON.
    bytes[..8].copy_from_slice(&8u64.to_le_bytes());
    bytes[8..16].copy_from_slice(b"{garbage");
    std::fs::write(tmp.path().join("model.safetensors"), &bytes).unwrap();
    let (code, _, stderr) = logits(tmp.path());
    assert_eq!(code, EXIT_BAD_INPUT, "{stderr}");
    assert!(
        stderr.contains("model.safetensors: not a valid safetensors file"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn corrupt_pytorch_bin() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        parity_dir("bert").join("config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    std::fs::write(tmp.path().join("pytorch_model.bin"), b"not a zip file").unwrap();
    let (code, _, stderr) = logits(tmp.path());
    assert_eq!(code, EXIT_BAD_INPUT, "{stderr}");
    assert!(
        stderr.contains("pytorch_model.bin: not a readable PyTorch checkpoint"),
        "{stderr}"
    );
}

#[test]
fn bad_inputs_are_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| -> PathBuf {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let dir = parity_dir("bert");
    let cases = [
        (
            write(
                "ragged.json",
                r#"{"input_ids": [[101, 5, 102], [101, 102]], "attention_mask": [[1,1,1],[1,1]]}"#,
            ),
            "`input_ids[1]` has 2 tokens",
        ),
        (
            write(
                "vocab.json",
                r#"{"input_ids": [[101, 5000, 102]], "attention_mask": [[1,1,1]]}"#,
            ),
            "`input_ids[0][1]` = 5000 is out of range",
        ),
        (
            write(
                "mask.json",
                r#"{"input_ids": [[101, 5, 102]], "attention_mask": [[1,2,1]]}"#,
            ),
            "`attention_mask[0][1]` = 2",
        ),
        (
            write("field.json", r#"{"input_ids": [[101, 5, 102]]}"#),
            "attention_mask",
        ),
        (
            write(
                "long.json",
                &format!(
                    r#"{{"input_ids": [{ids:?}], "attention_mask": [{ids:?}]}}"#,
                    ids = vec![1; 129]
                ),
            ),
            "exceeds the model's max_position_embeddings 128",
        ),
    ];
    for (path, needle) in cases {
        let (code, _, stderr) = run(bin()
            .args(["logits", "--model"])
            .arg(&dir)
            .arg("--inputs")
            .arg(&path));
        assert_eq!(code, EXIT_BAD_INPUT, "{}: {stderr}", path.display());
        assert!(
            stderr.contains(needle) && stderr.contains(path.file_name().unwrap().to_str().unwrap()),
            "{stderr}"
        );
    }
}

#[test]
fn unknown_model_without_network() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run(bin()
        .args([
            "logits",
            "--offline",
            "--model",
            "org/not-cached",
            "--inputs",
        ])
        .arg(parity_dir("bert").join("expected.json"))
        .env("HF_HOME", tmp.path()));
    assert_eq!(code, EXIT_UNAVAILABLE, "{stderr}");
    assert!(
        stderr.contains("not in the local cache") && stderr.contains("offline"),
        "{stderr}"
    );
    let (code, _, stderr) = run(bin().args(["info", "./no/such/dir"]));
    assert_eq!(code, EXIT_BAD_INPUT, "{stderr}");
    assert!(stderr.contains("no such directory"), "{stderr}");
}

#[test]
fn builtin_random_init_runs_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = tmp.path().join("in.json");
    std::fs::write(&inputs, r#"{"input_ids": [[101, 2054, 2003, 102, 2023, 102]], "attention_mask": [[1,1,1,1,1,1]], "token_type_ids": [[0,0,0,0,1,1]]}"#).unwrap();
    let args = |seed: &str| {
        let mut c = bin();
        c.args([
            "logits",
            "--offline",
            "--random-init",
            "--seed",
            seed,
            "--model",
            "squeezebert/squeezebert-uncased",
            "--inputs",
        ])
        .arg(&inputs)
        .env("HF_HOME", tmp.path());
        c
    };
    let (code, a, stderr) = run(&mut args("1"));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("built-in config") && stderr.contains("random weights (seed 1)"),
        "{stderr}"
    );
    let (_, b, _) = run(&mut args("1"));
    let (_, c, _) = run(&mut args("2"));
    assert_eq!(a, b, "same seed, same logits");
    assert_ne!(a, c, "another seed, other logits");
    let out: serde_json::Value = serde_json::from_str(&a).unwrap();
    assert_eq!(flatten(&out["start_logits"]).len(), 6);
}

#[test]
fn info_counts_parameters() {
    let (code, stdout, stderr) =
        run(bin().args(["info", "--offline", "--json", "distilbert-base-uncased"]));
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["parameters"]["total"], 66_364_418);
    assert_eq!(v["parameters"]["qa_head"], 768 * 2 + 2);
    let (code, stdout, _) = run(bin().arg("info").arg(parity_dir("squeezebert")));
    assert_eq!(code, 0);
    assert!(
        stdout.contains("100,674") && stdout.contains("q 4 k 4 v 4"),
        "{stdout}"
    );
}

/// A CUDA device asked of a CPU-only build: every command that opens a device refuses it before
/// any work, with exit 4 (unavailable) and the command that builds one with CUDA.
#[cfg(not(feature = "cuda"))]
#[test]
fn a_cuda_device_on_a_cpu_build_names_the_rebuild() {
    let tmp = tempfile::tempdir().unwrap();
    let model = parity_dir("bert");
    let inputs = model.join("expected.json");
    let dataset = shared().join("data/squad/dev-v1.1.json.gz");
    let commands: Vec<Vec<std::ffi::OsString>> = vec![
        vec![
            "logits".into(),
            "--model".into(),
            model.clone().into(),
            "--inputs".into(),
            inputs.into(),
        ],
        vec![
            "bench".into(),
            "--models".into(),
            model.clone().into(),
            "--batch-sizes".into(),
            "1".into(),
            "--sequence-lengths".into(),
            "8".into(),
            "--output-dir".into(),
            tmp.path().join("bench").into(),
        ],
        vec![
            "eval".into(),
            "--model".into(),
            model.into(),
            "--dataset".into(),
            dataset.into(),
            "--limit".into(),
            "2".into(),
            "--output-dir".into(),
            tmp.path().join("eval").into(),
        ],
    ];
    for args in commands {
        let (code, _, stderr) = run(bin().args(&args).args(["--device", "cuda:0"]));
        assert_eq!(code, 4, "{args:?}: {stderr}");
        assert!(
            stderr.contains("built without CUDA support")
                && stderr.contains("cargo build --release --features cuda"),
            "{args:?}: {stderr}"
        );
    }
    assert!(!tmp.path().join("bench/results.json").exists());
}
