//! The portable tier, which CPUs without a register kernel here run (Arm, old x86): this test
//! process chooses it before anything computes, so a prepared model's encoder runs on the
//! `gemm` crate. Parity with transformers on every family, and logits that do not depend on
//! the batch, as on the other tiers.

mod common;

use bertbench::answer::run_model;
use bertbench::compute::isa::{use_isa, IsaChoice};
use bertbench::compute::Isa;
use bertbench::models::{self, ForwardCtx, TokenInputs};
use bertbench::squad::{load_tokenizer, read_dataset, FeatureConfig};
use candle_core::{DType, Device};
use common::*;

fn portable() {
    assert_eq!(use_isa(IsaChoice::Portable).unwrap(), Isa::Portable);
}

#[test]
fn portable_tier_matches_transformers() {
    portable();
    for family in FAMILIES {
        let dir = parity_dir(family);
        let (mut model, _) = models::load_dir(&dir, DType::F32, &Device::Cpu).unwrap();
        model
            .prepare_for_inference(bertbench::device::Precision::F32)
            .unwrap();
        let expected = read_json(&dir.join("expected.json"));
        let inputs = TokenInputs::from_file(&dir.join("expected.json")).unwrap();
        let batch = inputs.to_batch(&Device::Cpu).unwrap();
        let out = model.forward(&batch, &mut ForwardCtx::inference()).unwrap();
        for (name, got) in [
            ("start_logits", &out.start_logits),
            ("end_logits", &out.end_logits),
            ("last_hidden_state", &out.last_hidden_state),
        ] {
            let got: Vec<f64> = got
                .to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let diff = max_abs_diff(&got, &flatten(&expected["outputs"][name]));
            assert!(diff <= 1e-5, "{family} {name}: max abs diff {diff:e}");
        }
    }
}

/// Real weights at the tier's full path (encoder on the `gemm` crate, GELU and the softmax in
/// the plain build, which multiplies and adds unfused on x86 without FMA): all-MiniLM-L6-v2's
/// hidden states against transformers', as tests/minilm.rs checks them on the best tier
/// (the largest difference on a Zen 5: 1.2e-5).
#[test]
fn portable_tier_matches_transformers_on_real_minilm_weights() {
    portable();
    let (reference, inputs) = minilm_reference();
    let (mut model, _) = models::load_dir(&minilm_dir(), DType::F32, &Device::Cpu).unwrap();
    model
        .prepare_for_inference(bertbench::device::Precision::F32)
        .unwrap();
    let batch = inputs.to_batch(&Device::Cpu).unwrap();
    let out = model.forward(&batch, &mut ForwardCtx::inference()).unwrap();
    let got = to_f64(&out.last_hidden_state);
    let diff = max_abs_diff(&got, &flatten(&reference["last_hidden_state"]));
    assert!(diff <= 1e-4, "max abs diff {diff:e}");
}

/// As tests/eval.rs checks on the best tier: a window's logits, bit for bit, whatever the
/// batch size.
#[test]
fn portable_tier_logits_do_not_depend_on_the_batch() {
    portable();
    let dir = minilm_dir();
    let (mut model, _) = models::load_dir(&dir, DType::F32, &Device::Cpu).unwrap();
    model
        .prepare_for_inference(bertbench::device::Precision::F32)
        .unwrap();
    let tokenizer = load_tokenizer(&dir).unwrap();
    let dataset = read_dataset(&shared().join("data/squad/dev-v1.1.json.gz"))
        .unwrap()
        .first_questions(12);
    let examples: Vec<_> = dataset.examples().collect();
    let windows = FeatureConfig {
        max_seq_length: 128,
        doc_stride: 32,
        ..FeatureConfig::default()
    };
    let features = tokenizer.features(&examples, &windows).unwrap();
    let one = run_model(&model, &features, 1, |_| {}).unwrap();
    for batch in [3, features.len()] {
        let other = run_model(&model, &features, batch, |_| {}).unwrap();
        assert_same_logits(&other, &one, &format!("batch {batch}"));
    }
}
