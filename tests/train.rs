//! Fine-tuning: gradients against finite differences (every family, in f64), a tiny model
//! overfitting a handful of SQuAD questions, resume reproducing the uninterrupted run, saved
//! checkpoints reloading with identical logits, and bad inputs failing fast.

mod common;

use std::path::{Path, PathBuf};

use bertbench::compute::optim::grads_of;
use bertbench::models::trainable::{qa_loss, TrainableModel};
use bertbench::models::{self, ForwardCtx, ModelConfig, TokenInputs};
use bertbench::squad::read_dataset;
use bertbench::train::trainer::inference_copy;
use candle_core::{DType, Device, Tensor};
use common::*;

/// Analytic gradients agree with central finite differences on a tiny f64 model of each family.
#[test]
fn gradients_match_finite_differences() {
    for family in FAMILIES {
        let dir = parity_dir(family);
        let config = ModelConfig::from_file(&dir.join("config.json")).unwrap();
        let model = TrainableModel::random(&config, 11, DType::F64, &Device::Cpu).unwrap();
        let inputs = TokenInputs::from_file(&dir.join("expected.json")).unwrap();
        let batch = inputs.to_batch(&Device::Cpu).unwrap();
        let starts = Tensor::new(&[3u32, 7], &Device::Cpu).unwrap();
        let ends = Tensor::new(&[5u32, 9], &Device::Cpu).unwrap();
        // Dropout off so the loss is a deterministic function of the weights.
        let loss = |m: &TrainableModel| -> Tensor {
            let out = m
                .model
                .forward(&batch, &mut ForwardCtx::inference())
                .unwrap();
            qa_loss(&out, &starts, &ends).unwrap()
        };
        let grads = grads_of(&model.params, &loss(&model).backward().unwrap());
        let eps = 1e-6;
        let mut checked = 0;
        for ((name, var), grad) in model.params.iter().zip(&grads) {
            if name.contains("pooler") {
                continue; // SqueezeBERT's pooler does not reach the QA loss
            }
            let grad: Vec<f64> = grad
                .as_ref()
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let original = var.as_tensor().copy().unwrap();
            let values: Vec<f64> = original.flatten_all().unwrap().to_vec1().unwrap();
            // The element with the largest gradient, and one more: strong signals to compare.
            let big = (0..grad.len())
                .max_by(|&a, &b| grad[a].abs().total_cmp(&grad[b].abs()))
                .unwrap();
            for idx in [big, grad.len() / 2] {
                let at = |delta: f64| -> f64 {
                    let mut v = values.clone();
                    v[idx] += delta;
                    var.set(&Tensor::from_vec(v, original.shape(), &Device::Cpu).unwrap())
                        .unwrap();
                    loss(&model).to_scalar::<f64>().unwrap()
                };
                let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
                var.set(&original).unwrap();
                let analytic = grad[idx];
                let err = (numeric - analytic).abs() / numeric.abs().max(analytic.abs()).max(1e-4);
                assert!(
                    err < 1e-4,
                    "{family} {name}[{idx}]: numeric {numeric:e}, analytic {analytic:e}"
                );
                checked += 1;
            }
        }
        assert!(checked > 30, "{family}: only {checked} checks");
    }
}

fn dev() -> PathBuf {
    shared().join("data/squad/dev-v1.1.json.gz")
}

/// A tiny BERT with the real uncased vocabulary, so the SQuAD tokenizer's ids fit.
fn tiny_model_dir(root: &Path, max_positions: usize) -> PathBuf {
    let dir = root.join("tiny-bert");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        format!(
            r#"{{"model_type": "bert", "vocab_size": 30522, "hidden_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 4, "intermediate_size": 128, "max_position_embeddings": {max_positions},
                "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}}"#
        ),
    )
    .unwrap();
    std::fs::copy(
        shared().join("vocab/bert-base-uncased-vocab.txt"),
        dir.join("vocab.txt"),
    )
    .unwrap();
    dir
}

fn train_cmd(model: &Path, out: &Path, extra: &[&str]) -> std::process::Command {
    let mut cmd = bin();
    cmd.args([
        "train",
        "--random-init",
        "--offline",
        "--threads",
        "1",
        "--model",
    ])
    .arg(model)
    .arg("--train-file")
    .arg(dev())
    .arg("--output-dir")
    .arg(out)
    .args(["--max-seq-length", "128", "--doc-stride", "32"])
    .args(extra);
    cmd
}

fn log_rows(out: &Path) -> Vec<csv::StringRecord> {
    csv::Reader::from_path(out.join("train_log.csv"))
        .unwrap()
        .records()
        .map(|r| r.unwrap())
        .collect()
}

/// The first question of the first paragraph of each of the first `n` dev articles: distinct
/// contexts, real questions, as a SQuAD v1.1 file.
fn handful_of_questions(path: &Path, n: usize) {
    let dev = read_dataset(&dev()).unwrap();
    let data: Vec<serde_json::Value> = dev
        .articles
        .iter()
        .take(n)
        .map(|a| {
            let p = &a.paragraphs[0];
            let q = &p.qas[0];
            let answers: Vec<serde_json::Value> = q
                .answers
                .iter()
                .map(|x| serde_json::json!({"text": x.text, "answer_start": x.answer_start}))
                .collect();
            serde_json::json!({"title": a.title, "paragraphs": [{"context": p.context,
                "qas": [{"id": q.id, "question": q.question, "answers": answers}]}]})
        })
        .collect();
    std::fs::write(
        path,
        serde_json::json!({"version": "1.1", "data": data}).to_string(),
    )
    .unwrap();
}

#[test]
fn tiny_model_overfits_a_handful_of_questions() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(tmp.path(), 256);
    let data = tmp.path().join("eight.json");
    handful_of_questions(&data, 8);
    let out = tmp.path().join("run");
    let mut cmd = bin();
    cmd.args(["train", "--random-init", "--offline", "--model"])
        .arg(&model)
        .arg("--train-file")
        .arg(&data)
        .arg("--output-dir")
        .arg(&out)
        .args([
            "--max-seq-length",
            "256",
            "--doc-stride",
            "64",
            "--batch-size",
            "8",
            "--epochs",
            "100",
        ])
        .args([
            "--learning-rate",
            "5e-3",
            "--logging-steps",
            "5",
            "--save-steps",
            "0",
            "--max-grad-norm",
            "0",
        ]);
    let (code, _, stderr) = run(&mut cmd);
    assert_eq!(code, 0, "{stderr}");
    let losses: Vec<f64> = log_rows(&out)
        .iter()
        .filter_map(|r| r[2].parse().ok())
        .collect();
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(first > 2.5 && last < 0.05, "loss {first} -> {last}");
    // Evaluated on the same questions, the fine-tuned model answers them.
    let eval_dir = tmp.path().join("eval");
    let (code, stdout, stderr) = run(bin()
        .args([
            "eval",
            "--max-seq-length",
            "256",
            "--doc-stride",
            "64",
            "--model",
        ])
        .arg(&out)
        .arg("--dataset")
        .arg(&data)
        .arg("--output-dir")
        .arg(&eval_dir));
    assert_eq!(code, 0, "{stderr}");
    let results = read_json(&eval_dir.join("eval_results.json"));
    assert!(results["f1"].as_f64().unwrap() > 95.0, "{stdout}");
}

#[test]
fn resume_reproduces_the_uninterrupted_run_and_checkpoints_reload() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(tmp.path(), 128);
    let args = [
        "--limit",
        "12",
        "--batch-size",
        "4",
        "--epochs",
        "2",
        "--save-steps",
        "3",
        "--logging-steps",
        "1",
        "--learning-rate",
        "1e-3",
        "--warmup-ratio",
        "0.2",
        "--gradient-accumulation-steps",
        "2",
    ];
    // Uninterrupted run.
    let a = tmp.path().join("a");
    let (code, _, stderr) = run(&mut train_cmd(&model, &a, &args));
    assert_eq!(code, 0, "{stderr}");
    // A run "interrupted" after its first checkpoint: same run, then everything after
    // checkpoint-3 removed, then resumed.
    let b = tmp.path().join("b");
    let (code, _, stderr) = run(&mut train_cmd(&model, &b, &args));
    assert_eq!(code, 0, "{stderr}");
    for entry in std::fs::read_dir(&b).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name != "checkpoint-3" {
            if entry.path().is_dir() {
                std::fs::remove_dir_all(entry.path()).unwrap()
            } else {
                std::fs::remove_file(entry.path()).unwrap()
            }
        }
    }
    let mut resume = train_cmd(&model, &b, &args);
    resume.arg("--resume");
    let (code, _, stderr) = run(&mut resume);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("resuming from"), "{stderr}");
    let weights = |dir: &Path| {
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap()
    };
    let (wa, wb) = (weights(&a), weights(&b));
    assert_eq!(wa.len(), wb.len());
    for (name, ta) in &wa {
        let diff = (ta - &wb[name])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0, "{name} differs after resume");
    }
    // The same loss curve, row for row.
    let (la, lb) = (log_rows(&a), log_rows(&b));
    assert_eq!(la.len(), lb.len());
    for (ra, rb) in la.iter().zip(&lb) {
        assert_eq!(
            (&ra[0], &ra[2], &ra[3]),
            (&rb[0], &rb[2], &rb[3]),
            "log differs"
        );
    }
    // A saved model reloads (through the normal loader) with the trained model's exact logits.
    let config = ModelConfig::from_file(&a.join("config.json")).unwrap();
    assert_eq!(
        read_json(&a.join("config.json"))["architectures"][0],
        "BertForQuestionAnswering"
    );
    let (trained, _) = TrainableModel::from_dir(&a, &config, DType::F32, &Device::Cpu).unwrap();
    let copy = inference_copy(&config, &trained).unwrap();
    let (mut reloaded, report) = models::load_dir(&a, DType::F32, &Device::Cpu).unwrap();
    assert!(report.initialised.is_empty());
    // Both run the same kernels (the copy is prepared for inference, as `eval` prepares).
    reloaded
        .prepare_for_inference(bertbench::device::Precision::F32)
        .unwrap();
    let inputs: TokenInputs = serde_json::from_str(
        r#"{"input_ids": [[101, 2054, 2003, 1996, 102, 1996, 3007, 102]], "attention_mask": [[1,1,1,1,1,1,1,1]], "token_type_ids": [[0,0,0,0,0,1,1,1]]}"#,
    ).unwrap();
    let batch = inputs.to_batch(&Device::Cpu).unwrap();
    let x = copy
        .forward(&batch, &mut ForwardCtx::inference())
        .unwrap()
        .start_logits
        .to_vec2::<f32>()
        .unwrap();
    let y = reloaded
        .forward(&batch, &mut ForwardCtx::inference())
        .unwrap()
        .start_logits
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(x, y);
    // The checkpoint has what resuming needs, in the Hugging Face layout.
    for f in [
        "config.json",
        "model.safetensors",
        "vocab.txt",
        "training_args.json",
        "trainer_state.json",
        "optimizer.safetensors",
    ] {
        assert!(
            b.join("checkpoint-3").join(f).is_file(),
            "checkpoint lacks {f}"
        );
    }
    assert!(
        !a.join("optimizer.safetensors").exists(),
        "the final model carries no optimizer state"
    );
}

#[test]
fn bad_inputs_fail_fast() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(tmp.path(), 128);
    let squad2 = tmp.path().join("squad2.json");
    std::fs::write(&squad2, r#"{"version": "v2.0", "data": []}"#).unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--train-file".into(),
                tmp.path().join("missing.json").display().to_string(),
            ],
            "missing.json",
        ),
        (
            vec!["--train-file".into(), squad2.display().to_string()],
            "2.0",
        ),
        (
            vec!["--batch-size".into(), "0".into()],
            "--batch-size must be at least 1",
        ),
        (
            vec!["--max-seq-length".into(), "256".into()],
            "exceeds the model's max_position_embeddings 128",
        ),
        (
            vec![
                "--output-dir".into(),
                file.join("out").display().to_string(),
            ],
            "cannot create output directory",
        ),
    ];
    for (extra, needle) in cases {
        // Defaults, with the case's flags replacing their namesakes.
        let mut flags: Vec<(String, String)> = vec![
            ("--train-file".into(), dev().display().to_string()),
            (
                "--output-dir".into(),
                tmp.path().join("out").display().to_string(),
            ),
        ];
        for pair in extra.chunks(2) {
            flags.retain(|(k, _)| k != &pair[0]);
            flags.push((pair[0].clone(), pair[1].clone()));
        }
        let mut cmd = bin();
        cmd.args(["train", "--random-init", "--offline", "--model"])
            .arg(&model);
        for (k, v) in &flags {
            cmd.arg(k).arg(v);
        }
        let (code, _, stderr) = run(&mut cmd);
        assert_eq!(code, 3, "{extra:?}: {stderr}");
        assert!(stderr.contains(needle), "{extra:?}: {stderr}");
    }
    // Another run's output directory is not overwritten without asking.
    let out = tmp.path().join("taken");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let (code, _, stderr) = run(&mut train_cmd(
        &model,
        &out,
        &["--limit", "2", "--max-steps", "1"],
    ));
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("--overwrite-output-dir"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "mine"
    );
}
