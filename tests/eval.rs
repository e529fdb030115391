//! `eval` end to end on the real MiniLM checkpoint (no QA head: near-zero F1 is the honest
//! number), and the batching it does.

mod common;

use bertbench::eval::run_model;
use bertbench::models::{self};
use bertbench::squad::{evaluate, load_tokenizer, read_dataset, read_predictions, FeatureConfig};
use candle_core::{DType, Device};
use common::*;

fn dev() -> std::path::PathBuf {
    shared().join("data/squad/dev-v1.1.json.gz")
}

#[test]
fn eval_writes_predictions_and_scores_exactly_the_evaluated_questions() {
    let model = minilm_dir();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("eval");
    let (code, stdout, stderr) = run(bin()
        .args([
            "eval",
            "--limit",
            "12",
            "--batch-size",
            "5",
            "--threads",
            "2",
            "--model",
        ])
        .arg(&model)
        .arg("--dataset")
        .arg(dev())
        .arg("--output-dir")
        .arg(&out));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("over 12 questions"), "{stdout}");
    let results = read_json(&out.join("eval_results.json"));
    assert_eq!(results["questions"], 12);
    assert!(results["windows"].as_u64().unwrap() >= 12);
    assert_eq!(results["threads"], 2);
    assert!(results["questions_per_s"].as_f64().unwrap() > 0.0);
    let predictions = read_predictions(&out.join("predictions.json")).unwrap();
    assert_eq!(predictions.len(), 12);
    let nbest = read_json(&out.join("nbest_predictions.json"));
    assert_eq!(nbest.as_object().unwrap().len(), 12);
    // The reported score is the official metric over exactly those 12 questions.
    let subset = read_dataset(&dev()).unwrap().first_questions(12);
    let score = evaluate(&subset, &predictions);
    assert_eq!(score.missing, 0);
    assert_eq!(results["f1"].as_f64().unwrap(), score.f1);
    assert_eq!(results["exact_match"].as_f64().unwrap(), score.exact_match);

    // The run's files are not overwritten by accident.
    let (code, _, stderr) = run(bin()
        .args(["eval", "--limit", "3", "--model"])
        .arg(&model)
        .arg("--dataset")
        .arg(dev())
        .arg("--output-dir")
        .arg(&out));
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("--overwrite"), "{stderr}");
}

/// Cutting each batch to its longest real sequence must not change any real token's logits.
#[test]
fn batching_does_not_change_logits() {
    let dir = minilm_dir();
    let (model, _) = models::load_dir(&dir, DType::F32, &Device::Cpu).unwrap();
    let tokenizer = load_tokenizer(&dir).unwrap();
    let dataset = read_dataset(&dev()).unwrap().first_questions(6);
    let examples: Vec<_> = dataset.examples().collect();
    let features = tokenizer
        .features(&examples, &FeatureConfig::default())
        .unwrap();
    let (one_s, one_e) = run_model(&model, &features, 1, |_| {}).unwrap();
    let (all_s, all_e) = run_model(&model, &features, features.len(), |_| {}).unwrap();
    for (i, f) in features.iter().enumerate() {
        for (t, m) in f.attention_mask.iter().enumerate() {
            if *m == 1 {
                assert!(
                    (one_s[i][t] - all_s[i][t]).abs() < 1e-4,
                    "feature {i} token {t}"
                );
                assert!(
                    (one_e[i][t] - all_e[i][t]).abs() < 1e-4,
                    "feature {i} token {t}"
                );
            }
        }
        assert_eq!(one_s[i].len(), f.input_ids.len());
    }
}

#[test]
fn builtin_random_model_needs_a_tokenizer() {
    let (code, _, stderr) = run(bin()
        .args([
            "eval",
            "--offline",
            "--random-init",
            "--model",
            "distilbert-base-uncased",
            "--limit",
            "1",
            "--dataset",
        ])
        .arg(dev()));
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("--tokenizer"), "{stderr}");
}
