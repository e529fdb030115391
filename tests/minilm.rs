//! Real pretrained weights: all-MiniLM-L6-v2 (a BERT without a task head, tensor names without
//! the `bert.` prefix, an extra `embeddings.position_ids` buffer) against transformers' output.

mod common;

use bertbench::models::{self, ForwardCtx};
use candle_core::{DType, Device};
use common::*;

#[test]
fn minilm_hidden_states_match_transformers() {
    let dir = minilm_dir();
    let (reference, inputs) = minilm_reference();
    let (model, report) = models::load_dir(&dir, DType::F32, &Device::Cpu).unwrap();
    // A base checkpoint: the QA head is new, the pooler and position_ids are not used.
    assert_eq!(
        report.initialised,
        vec!["qa_outputs.weight", "qa_outputs.bias"]
    );
    assert!(
        report.unused.iter().any(|n| n == "embeddings.position_ids"),
        "{:?}",
        report.unused
    );
    inputs
        .validate(model.config(), "minilm_reference.json")
        .unwrap();
    let out = model
        .forward(
            &inputs.to_batch(&Device::Cpu).unwrap(),
            &mut ForwardCtx::inference(),
        )
        .unwrap();
    assert_eq!(out.last_hidden_state.dims(), &[3, 27, 384]);
    let got = to_f64(&out.last_hidden_state);
    let diff = max_abs_diff(&got, &flatten(&reference["last_hidden_state"]));
    assert!(diff <= 1e-4, "max abs diff {diff:e}");
}

#[test]
fn cli_warns_about_the_new_qa_head() {
    let dir = minilm_dir();
    let tmp = tempfile::tempdir().unwrap();
    let reference = read_json(&shared().join("fixtures/minilm_reference.json"));
    let inputs = tmp.path().join("inputs.json");
    std::fs::write(
        &inputs,
        serde_json::json!({
            "input_ids": reference["input_ids"],
            "attention_mask": reference["attention_mask"],
            "token_type_ids": reference["token_type_ids"],
        })
        .to_string(),
    )
    .unwrap();
    let (code, stdout, stderr) = run(bin()
        .args(["logits", "--hidden", "--inputs"])
        .arg(&inputs)
        .arg("--model")
        .arg(&dir));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("newly initialised: qa_outputs.weight, qa_outputs.bias"),
        "{stderr}"
    );
    let out: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let diff = max_abs_diff(
        &flatten(&out["last_hidden_state"]),
        &flatten(&reference["last_hidden_state"]),
    );
    assert!(diff <= 1e-4, "max abs diff {diff:e}");
    assert_eq!(flatten(&out["start_logits"]).len(), 3 * 27);
}
