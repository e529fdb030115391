//! Inference at int8 and at bf16 on the CPU (`--dtype int8|bf16`): the models against
//! transformers' f32 outputs on the tiny fixtures and on real MiniLM weights, their answers
//! independent of batching, the precision axis of `bench`, and the refusals (training, a GPU,
//! bf16 without AVX512_BF16).

mod common;

use bertbench::device::Precision;
use bertbench::models::{self, ForwardCtx, QaModel};
use candle_core::{DType, Device};
use common::*;

/// The relative RMS error of `got` against `want`: `|got - want| / |want|`.
fn relative_rms(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let err: f64 = got.iter().zip(want).map(|(g, w)| (g - w).powi(2)).sum();
    let mag: f64 = want.iter().map(|w| w.powi(2)).sum();
    (err / mag).sqrt()
}

fn int8(model: &QaModel) -> QaModel {
    let mut q = model.clone();
    q.prepare_for_inference(Precision::Int8).unwrap();
    assert_eq!(q.precision(), Precision::Int8);
    q
}

/// On every family's fixture, the int8 model's logits and hidden states are within a few
/// percent of transformers' f32 ones (the fused path, the composed path on the dequantized
/// weights, and the f32 model all close), and clearly not equal to them: the weights really
/// were quantized.
#[test]
fn int8_models_stay_close_to_transformers_f32_outputs() {
    for family in FAMILIES {
        let dir = parity_dir(family);
        let (model, _) = models::load_dir(&dir, DType::F32, &Device::Cpu).unwrap();
        let expected = read_json(&dir.join("expected.json"));
        let inputs = models::TokenInputs::from_file(&dir.join("expected.json")).unwrap();
        let batch = inputs.to_batch(&Device::Cpu).unwrap();
        let quantized = int8(&model);
        for (path, mut ctx) in [
            ("fused", ForwardCtx::inference()),
            ("composed", ForwardCtx::inference_composed()),
        ] {
            let out = quantized.forward(&batch, &mut ctx).unwrap();
            for (name, got) in [
                ("start_logits", &out.start_logits),
                ("end_logits", &out.end_logits),
                ("last_hidden_state", &out.last_hidden_state),
            ] {
                let want = flatten(&expected["outputs"][name]);
                let rel = relative_rms(&to_f64(got), &want);
                assert!(
                    rel < 0.03,
                    "{family} {name} ({path}): relative RMS {rel:.4}"
                );
                if path == "fused" {
                    assert!(rel > 1e-5, "{family} {name}: int8 equals f32 ({rel:e})");
                }
            }
        }
    }
}

/// Real weights (all-MiniLM-L6-v2, six layers of 384): the int8 hidden states are within 10%
/// of transformers' f32 ones (relative RMS; 6.5% measured, word embeddings quantized too), every
/// token's vector pointing the same way (cosine above 0.995; 0.9977-0.9994 measured). A wrong zero point or scale moves
/// them far past these bounds.
#[test]
fn int8_minilm_hidden_states_match_transformers_closely() {
    let (model, _) = models::load_dir(&minilm_dir(), DType::F32, &Device::Cpu).unwrap();
    let (reference, inputs) = minilm_reference();
    let batch = inputs.to_batch(&Device::Cpu).unwrap();
    let out = int8(&model)
        .forward(&batch, &mut ForwardCtx::inference())
        .unwrap();
    let got = to_f64(&out.last_hidden_state);
    let want = flatten(&reference["last_hidden_state"]);
    let rel = relative_rms(&got, &want);
    assert!(rel < 0.10, "relative RMS {rel:.4}");
    let h = *out.last_hidden_state.dims().last().unwrap();
    let mask = flatten(&reference["attention_mask"]);
    for (t, (g, w)) in got.chunks(h).zip(want.chunks(h)).enumerate() {
        if mask[t] == 0.0 {
            continue;
        }
        let dot: f64 = g.iter().zip(w).map(|(a, b)| a * b).sum();
        let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
        let cos = dot / (norm(g) * norm(w));
        assert!(cos > 0.995, "token {t}: cosine {cos:.5}");
    }
}

/// At int8 the word embeddings are a quantized table: every family still looks its tokens
/// up, and a token id past the vocabulary is an error that says so, not a panic or a read
/// past the table.
#[test]
fn int8_embeddings_refuse_a_token_outside_the_vocabulary() {
    for family in FAMILIES {
        let dir = parity_dir(family);
        let (model, _) = models::load_dir(&dir, DType::F32, &Device::Cpu).unwrap();
        let inputs = models::TokenInputs::from_file(&dir.join("expected.json")).unwrap();
        let mut batch = inputs.to_batch(&Device::Cpu).unwrap();
        let quantized = int8(&model);
        quantized
            .forward(&batch, &mut ForwardCtx::inference())
            .unwrap();
        let (b, s) = batch.input_ids.dims2().unwrap();
        let mut ids = vec![1u32; b * s];
        ids[s + 1] = model.config().vocab_size as u32;
        batch.input_ids = candle_core::Tensor::from_vec(ids, (b, s), &Device::Cpu).unwrap();
        let err = quantized
            .forward(&batch, &mut ForwardCtx::inference())
            .unwrap_err()
            .to_string();
        let want = format!(
            "token id {} is outside the embedding table of {} rows",
            model.config().vocab_size,
            model.config().vocab_size
        );
        assert!(err.contains(&want), "{family}: {err}");
    }
}

/// Loading for inference prepares each block as it is read (so the f32 model is never held
/// whole): the model it gives runs the same bits as one loaded whole and prepared after, at
/// every precision this CPU runs fast, for every family.
#[test]
fn preparing_while_loading_gives_the_same_model_as_preparing_after() {
    for family in FAMILIES {
        let dir = parity_dir(family);
        let inputs = models::TokenInputs::from_file(&dir.join("expected.json")).unwrap();
        let batch = inputs.to_batch(&Device::Cpu).unwrap();
        for precision in bertbench::compute::fast_precisions() {
            let (mut after, _) = models::load_dir(&dir, DType::F32, &Device::Cpu).unwrap();
            after.prepare_for_inference(precision).unwrap();
            let (during, _) =
                models::load_dir_for(&dir, DType::F32, &Device::Cpu, Some(precision)).unwrap();
            assert_eq!(during.precision(), precision);
            let logits = |m: &QaModel| {
                let out = m.forward(&batch, &mut ForwardCtx::inference()).unwrap();
                (to_f64(&out.start_logits), to_f64(&out.end_logits))
            };
            assert_eq!(
                logits(&during),
                logits(&after),
                "{family} at {}",
                precision.as_str()
            );
        }
    }
}

/// Each row's activations are quantized on its own range, so a sequence's int8 logits are bit
/// for bit the same alone and batched with others (as at f32: what serving relies on).
#[test]
fn int8_logits_do_not_depend_on_the_batch() {
    let dir = parity_dir("bert");
    let (model, _) = models::load_dir(&dir, DType::F32, &Device::Cpu).unwrap();
    let quantized = int8(&model);
    let inputs = models::TokenInputs::from_file(&dir.join("expected.json")).unwrap();
    let both = quantized
        .forward(
            &inputs.to_batch(&Device::Cpu).unwrap(),
            &mut ForwardCtx::inference(),
        )
        .unwrap();
    let both = to_f64(&both.start_logits);
    let seq = both.len() / 2;
    for row in 0..2 {
        let mut one = inputs.clone();
        one.input_ids = vec![inputs.input_ids[row].clone()];
        one.attention_mask = vec![inputs.attention_mask[row].clone()];
        one.token_type_ids = inputs.token_type_ids.as_ref().map(|t| vec![t[row].clone()]);
        let alone = quantized
            .forward(
                &one.to_batch(&Device::Cpu).unwrap(),
                &mut ForwardCtx::inference(),
            )
            .unwrap();
        assert_eq!(
            to_f64(&alone.start_logits),
            both[row * seq..(row + 1) * seq],
            "row {row}"
        );
    }
}

/// `logits --dtype int8` runs the quantized model: close to the fixture, not equal to it.
#[test]
fn the_logits_command_runs_int8() {
    let (code, stdout, stderr) = run(bin()
        .args(["logits", "--dtype", "int8", "--threads", "1", "--model"])
        .arg(parity_dir("distilbert"))
        .arg("--inputs")
        .arg(parity_dir("distilbert").join("expected.json")));
    assert_eq!(code, 0, "{stderr}");
    let out: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let expected = read_json(&parity_dir("distilbert").join("expected.json"));
    let got = flatten(&out["start_logits"]);
    let want = flatten(&expected["outputs"]["start_logits"]);
    let rel = relative_rms(&got, &want);
    assert!(rel > 1e-5 && rel < 0.03, "relative RMS {rel}");
}

/// int8 is an inference precision of the CPU: training at it, benching training steps at it and
/// benching it on a GPU are refused by name (exit 3), before anything is read or computed.
#[test]
fn int8_training_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run(bin()
        .args(["train", "--dtype", "int8", "--random-init", "--model"])
        .arg(parity_dir("bert"))
        .arg("--train-file")
        .arg(shared().join("data/squad/dev-v1.1.json.gz"))
        .arg("--output-dir")
        .arg(tmp.path().join("t")));
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("--dtype int8 is an inference precision"),
        "{stderr}"
    );
    assert!(!tmp.path().join("t").exists());
    let (code, _, stderr) = run(bin()
        .args(["bench", "--dtype", "int8", "--training", "--models"])
        .arg(parity_dir("bert"))
        .arg("--output-dir")
        .arg(tmp.path().join("b")));
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("--training"), "{stderr}");
    let (code, _, stderr) = run(bin()
        .args([
            "bench", "--dtype", "f32", "int8", "--device", "cuda:0", "--models",
        ])
        .arg(parity_dir("bert"))
        .arg("--output-dir")
        .arg(tmp.path().join("g")));
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("int8 runs on the CPU"), "{stderr}");
}

/// `bench --dtype f32 int8`: every cell at both precisions, back to back, each in a child at
/// its own precision; the outputs carry the precision (a `dtype` column in Hugging Face's CSVs,
/// results.csv and json, env.csv's list), peaks per kind of product, and the report compares
/// the int8 variant with the f32 model as it compares models.
#[test]
fn bench_sweeps_precisions_and_the_report_compares_them() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sweep");
    let model = parity_dir("bert");
    let (code, stdout, stderr) = run(bin()
        .arg("bench")
        .arg("--models")
        .arg(&model)
        .args([
            "--batch-sizes",
            "2",
            "--sequence-lengths",
            "16",
            "--dtype",
            "f32",
            "int8",
        ])
        .args([
            "--threads",
            "1",
            "--repeat",
            "3",
            "--min-time",
            "0",
            "--max-warmup-runs",
            "2",
        ])
        .args(["--processes", "1", "--offline", "--output-dir"])
        .arg(&out));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("bert int8"), "{stdout}");
    assert!(stdout.contains("int8 product peak"), "{stdout}");

    let csv = |name: &str| -> Vec<Vec<String>> {
        csv::Reader::from_path(out.join(name))
            .unwrap()
            .into_records()
            .map(|r| r.unwrap().iter().map(String::from).collect())
            .collect()
    };
    let header = csv::Reader::from_path(out.join("inference_time.csv"))
        .unwrap()
        .headers()
        .unwrap()
        .clone();
    assert_eq!(
        header.iter().collect::<Vec<_>>(),
        ["model", "batch_size", "sequence_length", "dtype", "result"]
    );
    let dtypes: Vec<String> = csv("inference_time.csv")
        .iter()
        .map(|r| r[3].clone())
        .collect();
    assert_eq!(dtypes, ["f32", "int8"]);

    let res = read_json(&out.join("results.json"));
    let measurements = res["measurements"].as_array().unwrap();
    assert_eq!(measurements.len(), 2);
    for (m, want) in measurements.iter().zip(["f32", "int8"]) {
        assert_eq!(m["status"], "ok", "{m}");
        assert_eq!(m["cell"]["dtype"], want);
        // The child ran at the cell's precision, and the row says so.
        assert_eq!(m["settings"]["dtype"], want);
    }
    let kernels: Vec<&str> = res["peak_matmul"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kernel"].as_str().unwrap())
        .collect();
    assert!(
        kernels.contains(&"int8") && kernels.contains(&"packed"),
        "{kernels:?}"
    );
    let env = csv("env.csv");
    assert!(env.iter().any(|r| r[0] == "dtypes" && r[1] == "f32 int8"));
    assert!(env.iter().any(|r| r[0] == "int8_kernel"));
    assert!(env.iter().any(|r| r[0] == "bf16_kernel"));

    let (code, _, stderr) = run(bin().arg("report").arg(&out));
    assert_eq!(code, 0, "{stderr}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("bert int8"), "{report}");

    // One precision per run elsewhere.
    let (code, _, stderr) = run(bin()
        .args(["logits", "--dtype", "f32", "int8", "--offline", "--model"])
        .arg(&model)
        .arg("--inputs")
        .arg(model.join("expected.json")));
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("only bench and run sweep"), "{stderr}");
}

/// Whether this CPU runs bf16 on its fast kernel (else bf16 is refused).
fn bf16_runs() -> bool {
    use bertbench::compute::bf16::Bf16Kernel;
    Bf16Kernel::current().fast()
}

/// bf16 on the CPU: the tiny fixtures' logits and hidden states within 1% of transformers' f32
/// ones (8 significant bits per weight and activation), not equal to them, the same bits alone
/// and batched; refused by name where the CPU has no AVX512_BF16 kernel.
#[test]
fn bf16_models_stay_close_to_transformers_or_are_refused() {
    for family in FAMILIES {
        let dir = parity_dir(family);
        let (model, _) = models::load_dir(&dir, DType::F32, &Device::Cpu).unwrap();
        let mut half = model.clone();
        let prepared = half.prepare_for_inference(Precision::Bf16);
        if !bf16_runs() {
            let err = prepared.unwrap_err().to_string();
            assert!(err.contains("AVX512_BF16"), "{err}");
            continue;
        }
        prepared.unwrap();
        let expected = read_json(&dir.join("expected.json"));
        let inputs = models::TokenInputs::from_file(&dir.join("expected.json")).unwrap();
        let out = half
            .forward(
                &inputs.to_batch(&Device::Cpu).unwrap(),
                &mut ForwardCtx::inference(),
            )
            .unwrap();
        for (name, got) in [
            ("start_logits", &out.start_logits),
            ("last_hidden_state", &out.last_hidden_state),
        ] {
            let rel = relative_rms(&to_f64(got), &flatten(&expected["outputs"][name]));
            assert!(
                rel < 0.01 && rel > 1e-6,
                "{family} {name}: relative RMS {rel:e}"
            );
        }
        let seq = inputs.input_ids[0].len();
        let both = to_f64(&out.start_logits);
        let mut one = inputs.clone();
        one.input_ids.truncate(1);
        one.attention_mask.truncate(1);
        if let Some(t) = one.token_type_ids.as_mut() {
            t.truncate(1);
        }
        let alone = half
            .forward(
                &one.to_batch(&Device::Cpu).unwrap(),
                &mut ForwardCtx::inference(),
            )
            .unwrap();
        assert_eq!(to_f64(&alone.start_logits), both[..seq], "{family}");
    }
    // The portable tier has no bf16 kernel: refused by name, exit 3.
    let (code, _, stderr) = run(bin()
        .args(["logits", "--dtype", "bf16", "--isa", "portable", "--model"])
        .arg(parity_dir("bert"))
        .arg("--inputs")
        .arg(parity_dir("bert").join("expected.json")));
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("AVX512_BF16"), "{stderr}");
}

/// `run --dtype f32 int8 --checkpoint`: the main job at both precisions; the checkpoint is
/// evaluated at each, and the report's accuracy table has a row per precision (`model int8`)
/// beside the speed of both variants.
#[test]
fn run_evaluates_each_precision_and_the_report_keeps_them_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let (code, stdout, stderr) = run(bin()
        .args([
            "run",
            "--offline",
            "--threads",
            "1",
            "--dtype",
            "f32",
            "int8",
        ])
        .args(["--eval-limit", "3", "--models"])
        .arg(parity_dir("distilbert"))
        .arg("--checkpoint")
        .arg(minilm_dir())
        .arg("--dataset")
        .arg(shared().join("data/squad/dev-v1.1.json.gz"))
        .arg("--output-dir")
        .arg(&out));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("all results in"), "{stdout}");
    let evals: Vec<String> = std::fs::read_dir(out.join("eval"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(evals.len(), 2, "{evals:?}");
    assert!(evals.iter().any(|e| e.ends_with("-int8")), "{evals:?}");
    let int8 = evals.iter().find(|e| e.ends_with("-int8")).unwrap();
    let results = read_json(&out.join("eval").join(int8).join("eval_results.json"));
    assert_eq!(results["dtype"], "int8");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    let accuracy = &md[md.find("## Accuracy and speed").expect("accuracy section")..];
    assert!(accuracy.contains("all-MiniLM-L6-v2 int8"), "{accuracy}");
    // The summary puts the int8 evaluation against the f32 one on the same 3 questions.
    let int8_row = md
        .lines()
        .find(|l| l.starts_with("| all-MiniLM-L6-v2 int8 |"))
        .expect("a summary row for the int8 checkpoint");
    assert!(int8_row.contains(" of 3) |"), "{int8_row}");
    // Its F1 change carries the interval of a paired bootstrap over those questions (the
    // answers rescored against the dataset the evaluation names).
    let cells: Vec<&str> = int8_row.split(" | ").collect();
    assert!(
        cells
            .iter()
            .any(|c| c.starts_with(['+', '-']) && c.contains(" [")),
        "{int8_row}"
    );
    assert!(md.contains("distilbert int8"), "{md}");
}

/// Without `--dtype`, `run` measures every precision this CPU runs fast (f32, int8 with a
/// VNNI kernel, bf16 with AVX512_BF16), and records them.
#[test]
fn run_defaults_to_every_fast_precision() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let (code, _, stderr) = run(bin()
        .args(["run", "--offline", "--threads", "1", "--models"])
        .arg(parity_dir("bert"))
        .arg("--output-dir")
        .arg(&out));
    assert_eq!(code, 0, "{stderr}");
    let want: Vec<&str> = bertbench::compute::fast_precisions()
        .iter()
        .map(|p| p.as_str())
        .collect();
    let res = read_json(&out.join("results.json"));
    let mut seen: Vec<&str> = Vec::new();
    for c in res["plan"].as_array().unwrap() {
        let d = c["dtype"].as_str().unwrap();
        if !seen.contains(&d) {
            seen.push(d);
        }
    }
    assert_eq!(seen, want);
}
