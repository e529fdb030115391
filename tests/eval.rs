//! `eval` end to end on the real MiniLM checkpoint (no QA head: near-zero F1 is the honest
//! number), and the batching it does.

mod common;

use bertbench::answer::{
    plan_batches, real_length, run_length, run_model, EvalResults, EVAL_RESULTS_FILE, LENGTH_BUCKET,
};
use bertbench::models::{self};
use bertbench::squad::{evaluate, load_tokenizer, read_dataset, read_predictions, FeatureConfig};
use candle_core::{DType, Device};
use common::*;

fn dev() -> std::path::PathBuf {
    shared().join("data/squad/dev-v1.1.json.gz")
}

/// `bertbench eval --model MODEL --dataset DEV --output-dir OUT`, more arguments to add.
fn eval_cmd(model: &std::path::Path, out: &std::path::Path) -> std::process::Command {
    let mut cmd = bin();
    cmd.arg("eval")
        .arg("--model")
        .arg(model)
        .arg("--dataset")
        .arg(dev())
        .arg("--output-dir")
        .arg(out);
    cmd
}

#[test]
fn eval_writes_predictions_and_scores_exactly_the_evaluated_questions() {
    let model = minilm_dir();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("eval");
    let (code, stdout, stderr) =
        run(eval_cmd(&model, &out).args(["--limit", "12", "--batch-size", "5", "--threads", "2"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("over 12 questions"), "{stdout}");
    let results = read_json(&out.join("eval_results.json"));
    // The file is the library's one schema, read back whole.
    let typed = EvalResults::read(&out.join(EVAL_RESULTS_FILE)).unwrap();
    assert_eq!(
        (typed.report.questions, typed.batch_size, typed.threads),
        (12, 5, 2)
    );
    assert_eq!(
        (typed.max_seq_length, typed.doc_stride, typed.n_best_size),
        (384, 128, 20)
    );
    assert_eq!(typed.limit, Some(12));
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
    let (code, _, stderr) = run(eval_cmd(&model, &out).args(["--limit", "3"]));
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("--overwrite"), "{stderr}");
}

/// Windows of 128 tokens with stride 32: the first dev questions' long contexts give full
/// windows and shorter last ones, so a batch mixes lengths.
fn short_windows() -> FeatureConfig {
    FeatureConfig {
        max_seq_length: 128,
        doc_stride: 32,
        ..FeatureConfig::default()
    }
}

/// A window's logits are a function of the window alone: bit for bit the same whatever the
/// batch size, so whatever it is batched with.
#[test]
fn batching_does_not_change_any_logit() {
    let dir = minilm_dir();
    let (mut model, _) = models::load_dir(&dir, DType::F32, &Device::Cpu).unwrap();
    model
        .prepare_for_inference(bertbench::device::Precision::F32)
        .unwrap(); // as `eval` runs it
    let tokenizer = load_tokenizer(&dir).unwrap();
    let dataset = read_dataset(&dev()).unwrap().first_questions(40);
    let examples: Vec<_> = dataset.examples().collect();
    let features = tokenizer.features(&examples, &short_windows()).unwrap();
    let lengths: std::collections::BTreeSet<usize> = features.iter().map(run_length).collect();
    assert!(
        lengths.len() >= 3,
        "windows of one length only: {lengths:?}"
    );
    let one = run_model(&model, &features, 1, |_| {}).unwrap();
    for (i, f) in features.iter().enumerate() {
        assert_eq!(one.0[i].len(), f.input_ids.len());
    }
    for batch in [3, 7, features.len()] {
        let other = run_model(&model, &features, batch, |_| {}).unwrap();
        assert_same_logits(&other, &one, &format!("batch {batch}"));
    }
}

/// The batches group windows of one run length, keep every window once, and respect the size.
#[test]
fn batches_hold_one_length_each_and_every_window_once() {
    let dir = minilm_dir();
    let tokenizer = load_tokenizer(&dir).unwrap();
    let dataset = read_dataset(&dev()).unwrap().first_questions(40);
    let examples: Vec<_> = dataset.examples().collect();
    let features = tokenizer.features(&examples, &short_windows()).unwrap();
    for size in [1, 3, 7, 32] {
        let batches = plan_batches(&features, size);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..features.len()).collect::<Vec<_>>());
        for b in &batches {
            assert!(!b.is_empty() && b.len() <= size);
            let len = run_length(&features[b[0]]);
            assert!(b.iter().all(|&i| run_length(&features[i]) == len));
            assert!(b.iter().all(|&i| real_length(&features[i]) <= len));
            assert!(len.is_multiple_of(LENGTH_BUCKET) || len == features[b[0]].input_ids.len());
        }
    }
}

/// `predictions.json` and `nbest_predictions.json` are byte-identical whatever the batch size
/// and thread count, on the first 60 dev questions at the default 384-token windows (one
/// or two windows each, of many lengths). The MiniLM checkpoint has no QA head, so its head
/// is freshly (seeded) initialised: its logits are as large on padding as on context. Before
/// the fix, padding took places in the n-best lists at batch sizes above 1 (every list
/// differed, and one answer became empty at batch 32).
#[test]
fn answers_do_not_depend_on_batch_size_or_threads() {
    let model = minilm_dir();
    let tmp = tempfile::tempdir().unwrap();
    let run_eval = |batch: usize, threads: usize| -> (Vec<u8>, Vec<u8>) {
        let out = tmp.path().join(format!("b{batch}-t{threads}"));
        let (code, _, stderr) = run(eval_cmd(&model, &out)
            .args(["--limit", "60"])
            .args(["--batch-size", &batch.to_string()])
            .args(["--threads", &threads.to_string()]));
        assert_eq!(code, 0, "{stderr}");
        (
            std::fs::read(out.join("predictions.json")).unwrap(),
            std::fs::read(out.join("nbest_predictions.json")).unwrap(),
        )
    };
    let (preds, nbest) = run_eval(1, 2);
    let answers: serde_json::Value = serde_json::from_slice(&preds).unwrap();
    let answers = answers.as_object().unwrap();
    assert_eq!(answers.len(), 60);
    assert!(
        answers.values().all(|a| !a.as_str().unwrap().is_empty()),
        "every question has context tokens, so every answer is a span"
    );
    for (batch, threads) in [(3, 2), (7, 2), (32, 2), (32, 1)] {
        let (p, n) = run_eval(batch, threads);
        assert!(
            p == preds,
            "predictions.json differs at batch {batch}, {threads} threads"
        );
        assert!(
            nbest == n,
            "nbest_predictions.json differs at batch {batch}, {threads} threads"
        );
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
