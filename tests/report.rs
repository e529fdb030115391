//! Plots and the report on synthetic results whose every number is known: the observations
//! must recompute to the values put in, every plot option must give a valid picture with the
//! right number of series.

mod common;

use std::path::Path;

use bertbench::bench::output::ResultsFile;
use bertbench::bench::Mode;
use bertbench::report::observe::{self, Quantity};
use common::synthetic::*;
use common::*;

const SEQS: [usize; 4] = [32, 64, 128, 256];

/// Model "small" takes 1 ms per token and holds 1 KB x seq² of activations; "big" takes exactly
/// twice as long and twice the memory. Batch 1 and 4; batch 4 takes 4x the time.
fn synthetic_run(dir: &Path) -> ResultsFile {
    let mut ms = Vec::new();
    for (model, factor) in [("small", 1.0), ("big", 2.0)] {
        for batch in [1usize, 4] {
            for seq in SEQS {
                let t = factor * 1e-3 * seq as f64 * batch as f64;
                let act = (factor * 1024.0 * (seq * seq) as f64 * batch as f64) as u64;
                ms.push(exact(
                    cell_at(model, Mode::Inference, batch, seq),
                    t,
                    (factor * 100.0) as u64 * (1 << 20),
                    act,
                ));
            }
        }
    }
    write_run(dir, ms);
    ResultsFile::read(&dir.join("results.json")).unwrap()
}

#[test]
fn observations_recompute_the_known_values() {
    let tmp = tempfile::tempdir().unwrap();
    let results = synthetic_run(tmp.path());
    let ratios = observe::speed_ratios(&results);
    assert_eq!(ratios.len(), 8);
    for r in &ratios {
        assert_eq!((r.faster.as_str(), r.slower.as_str()), ("small", "big"));
        assert!(
            (r.ratio - 2.0).abs() < 1e-12
                && (r.low - 2.0).abs() < 1e-12
                && (r.high - 2.0).abs() < 1e-12
        );
    }
    let time = observe::growth(&results, Quantity::Time, false);
    assert_eq!(time.len(), 4);
    for g in &time {
        assert!((g.exponent - 1.0).abs() < 1e-9, "{g:?}");
        assert!((g.r_squared - 1.0).abs() < 1e-9);
        let per_token = if g.model == "big" { 2e-3 } else { 1e-3 } * g.fixed as f64;
        assert!((g.slope - per_token).abs() < 1e-12, "{g:?}");
        assert_eq!(g.shape(), "about linear");
    }
    for g in observe::growth(&results, Quantity::ActivationMemory, false) {
        assert!((g.exponent - 2.0).abs() < 1e-3, "{g:?}");
        assert!(g
            .sentence(&|m| m.to_string())
            .contains("attention's quadratic term shows"));
    }
    for g in observe::growth(&results, Quantity::Time, true) {
        assert!((g.exponent - 1.0).abs() < 1e-9, "{g:?}");
    }
    let (_, order) = observe::memory_order(&results);
    assert_eq!(order, Some(vec!["small".to_string(), "big".to_string()]));
}

#[test]
fn report_writes_markdown_html_and_plots() {
    let tmp = tempfile::tempdir().unwrap();
    synthetic_run(tmp.path());
    let (code, stdout, stderr) = run(bin().arg("report").arg(tmp.path()).args([
        "--price-per-hour",
        "0.36",
        "--short-model-names",
        "Small",
        "Big",
    ]));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("Small is 2.00x faster than Big"),
        "{stdout}"
    );
    let md = std::fs::read_to_string(tmp.path().join("report.md")).unwrap();
    let html = std::fs::read_to_string(tmp.path().join("report.html")).unwrap();
    for text in [&md, &html] {
        assert!(text.contains("Small is 2.00x faster than Big"));
        assert!(text.contains("quadratic term shows"));
        assert!(text.contains("Small &lt; Big") || text.contains("Small < Big"));
    }
    // 0.36 USD/h = 1e-4 USD/s; small at batch 1, seq 32 does 1/0.032 sequences/s, so 1000
    // sequences cost 32 s = 0.0032 USD.
    assert!(
        md.contains("| Small | 1 | 32 |") && md.contains("| 0.0032 |"),
        "{md}"
    );
    // The answer comes first: the fastest at batch 1 and the sequence nearest 384 (256 here),
    // with its ratio's interval, the smallest in memory, the cost from the best throughput at
    // that length (1 sequence per 0.256 s at 1e-4 USD/s: 25.60 USD per million), and the
    // observations folded below.
    let at = |h: &str| md.find(h).unwrap_or_else(|| panic!("{h} missing: {md}"));
    assert!(at("## Which to ship") < at("## Setup") && at("## Setup") < at("## Observations"));
    assert!(
        md.contains("Fastest at batch 1, sequence 256: Small (256 ms); against the runner-up, Big, at batch 1, sequence 256 it is 2.00x [2.00, 2.00] as fast"),
        "{md}"
    );
    assert!(md.contains("Smallest peak memory: Small"), "{md}");
    assert!(md.contains("| 25.60 * |"), "{md}");
    assert!(md[at("## Observations")..].starts_with("## Observations\n\n<details><summary>"));
    assert!(html.contains("<details><summary>"));
    // Self-contained: figures inline as SVG, no external references.
    assert!(html.matches("<svg").count() >= 4 && !html.contains("src=\""));
    // Both axes vary for inference time and memory: four views, each a drawn picture (a blank
    // or single-colour image would mean the series were lost).
    let mut plots: Vec<String> = std::fs::read_dir(tmp.path().join("plots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    plots.sort();
    assert_eq!(
        plots,
        [
            "inference_memory_vs_batch.png",
            "inference_memory_vs_sequence.png",
            "inference_time_vs_batch.png",
            "inference_time_vs_sequence.png",
            "pareto.png"
        ]
    );
    for name in &plots {
        let img = image::open(tmp.path().join("plots").join(name))
            .unwrap()
            .to_rgb8();
        assert_eq!((img.width(), img.height()), (1000, 650), "{name}");
        // The first two colours of the palette: a line, markers and a legend swatch per
        // series (one filled marker alone is about 50 pixels; later series may cover part
        // of earlier ones).
        for colour in [[31, 119, 180], [255, 127, 14]] {
            let n = img.pixels().filter(|p| p.0 == colour).count();
            assert!(n >= 40, "{name}: {n} pixels of {colour:?}");
        }
    }
}

/// Writes an `eval_results.json` of `model` (100 questions) under `dir/eval/<model>`.
fn synthetic_eval(dir: &Path, model: &str, f1: f64, questions_per_s: f64) {
    use bertbench::answer::{EvalReport, EvalResults};
    let out = dir.join("eval").join(model);
    std::fs::create_dir_all(&out).unwrap();
    let results = EvalResults {
        report: EvalReport {
            exact_match: f1 - 8.0,
            f1,
            questions: 100,
            windows: 100,
            tokenize_s: 0.0,
            model_s: 100.0 / questions_per_s,
            decode_s: 0.0,
            wall_s: 100.0 / questions_per_s,
            questions_per_s,
            windows_per_s: questions_per_s,
        },
        model: model.into(),
        model_source: "synthetic".into(),
        dataset: "dev-v1.1.json".into(),
        limit: Some(100),
        dtype: bertbench::device::Precision::F32,
        device: bertbench::device::DeviceSpec::Cpu,
        threads: 1,
        batch_size: 32,
        max_seq_length: 384,
        doc_stride: 128,
        max_query_length: 64,
        max_answer_length: 30,
        n_best_size: 20,
        bertbench_version: "0".into(),
        git_commit: "0".into(),
    };
    std::fs::write(
        out.join("eval_results.json"),
        serde_json::to_string(&results).unwrap(),
    )
    .unwrap();
}

/// With evaluations, the summary recommends the fastest model within 1 F1 of the most
/// accurate, with the F1 it gives up and its speed ratio's interval at the summary's shape;
/// a model more than 1 F1 behind is not recommended however fast.
#[test]
fn the_summary_recommends_the_fastest_within_one_f1_of_the_best() {
    let tmp = tempfile::tempdir().unwrap();
    synthetic_run(tmp.path());
    synthetic_eval(tmp.path(), "big", 80.0, 10.0);
    synthetic_eval(tmp.path(), "small", 79.5, 20.0);
    let (code, _, stderr) = run(bin().arg("report").arg(tmp.path()));
    assert_eq!(code, 0, "{stderr}");
    let md = std::fs::read_to_string(tmp.path().join("report.md")).unwrap();
    assert!(
        md.contains(
            "Recommended: small: 2.00x faster than big, the most accurate, for -0.50 F1 (79.50 \
             against 80.00 on 100 questions). It is the fastest within 1.0 F1 of the most \
             accurate, by ms per question from the evaluations; at batch 1, sequence 256 it is \
             2.00x [2.00, 2.00] as fast (95% interval)."
        ),
        "{md}"
    );
    assert!(
        md.contains("| small | 256 [256, 256] | 3.9 (batch 1) |"),
        "{md}"
    );
    // 1.5 F1 behind: out of the tolerance, so the most accurate is recommended.
    synthetic_eval(tmp.path(), "small", 78.5, 20.0);
    let (code, _, stderr) = run(bin().arg("report").arg(tmp.path()));
    assert_eq!(code, 0, "{stderr}");
    let md = std::fs::read_to_string(tmp.path().join("report.md")).unwrap();
    assert!(
        md.contains("Recommended: big: the most accurate (F1 80.00 on 100 questions)")
            && md.contains("Fastest overall: small, 2.00x faster than big for -1.50 F1."),
        "{md}"
    );
}

fn hf_csv(path: &Path) {
    let mut text = String::from("model,batch_size,sequence_length,result\n");
    for model in ["bert-base-uncased", "distilbert-base-uncased"] {
        for b in [1, 8] {
            for s in SEQS {
                // Sub-second values along the batch axis: the original script drew them as 0.
                text.push_str(&format!("{model},{b},{s},{:.4}\n", 0.0001 * (b * s) as f64));
            }
        }
    }
    text.push_str("bert-base-uncased,64,512,N/A\n");
    std::fs::write(path, text).unwrap();
}

/// The summary names the kernels and the caches the run had, from its environment file: an L2
/// shared by hardware threads as such, and blocks forced by `BERTBENCH_BLOCKING`.
#[test]
fn the_summary_names_kernels_caches_and_forced_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    synthetic_run(tmp.path());
    let path = tmp.path().join("results.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let env = json["environment"].as_array_mut().unwrap();
    env.retain(|pair| !["isa", "blocking"].contains(&pair[0].as_str().unwrap()));
    for (k, v) in [
        ("isa", "avx2"),
        ("l1d_cache_kib", "48"),
        ("l2_cache_kib", "1280"),
        ("l2_cache_shared_by", "2"),
        ("blocking", "84,768"),
    ] {
        env.push(serde_json::json!([k, v]));
    }
    std::fs::write(&path, json.to_string()).unwrap();
    let (code, _, stderr) = run(bin().arg("report").arg(tmp.path()));
    assert_eq!(code, 0, "{stderr}");
    let md = std::fs::read_to_string(tmp.path().join("report.md")).unwrap();
    assert!(
        md.contains("(L1d 48 KiB, L2 1280 KiB per 2 logical CPUs)"),
        "{md}"
    );
    assert!(
        md.contains("avx2 kernels, blocks forced to 84,768 by BERTBENCH_BLOCKING,"),
        "{md}"
    );
}

#[test]
fn every_plot_option_gives_a_valid_picture() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("inference_time.csv");
    hf_csv(&csv);
    let cases: [(&[&str], usize); 5] = [
        (&["--is-time"], 4),                       // model x batch
        (&["--is-time", "--plot-along-batch"], 8), // model x seq
        (&["--no-log-scale"], 4),
        (
            &["--is-time", "--short-model-names", "BERT", "DistilBERT"],
            4,
        ),
        (&["--is-train", "--is-time"], 4),
    ];
    for (i, (flags, series)) in cases.iter().enumerate() {
        for ext in ["png", "svg"] {
            let out = tmp.path().join(format!("plot{i}.{ext}"));
            let (code, stdout, stderr) = run(bin()
                .arg("plot")
                .arg("--csv-file")
                .arg(&csv)
                .arg("--figure-png-file")
                .arg(&out)
                .args(*flags));
            assert_eq!(code, 0, "{flags:?}: {stderr}");
            assert!(
                stdout.contains(&format!("({series} series)")),
                "{flags:?}: {stdout}"
            );
            if ext == "png" {
                let img = image::open(&out).unwrap();
                assert_eq!((img.width(), img.height()), (1000, 650));
            } else {
                let svg = std::fs::read_to_string(&out).unwrap();
                // One legend entry per series, and one marker per plotted point (the N/A row
                // has none).
                let legend = svg.matches(" - bs: ").count() + svg.matches(" - seq_len: ").count();
                assert_eq!(legend, *series, "{flags:?}");
                assert_eq!(
                    svg.matches("<circle").count(),
                    2 * 2 * SEQS.len(),
                    "{flags:?}"
                );
                if flags.contains(&"--short-model-names") {
                    assert!(svg.contains("DistilBERT - bs: 8"));
                }
            }
        }
    }
    // Bad input is explained.
    let (code, _, stderr) = run(bin()
        .args(["plot", "--csv-file"])
        .arg(&csv)
        .arg("--figure-png-file")
        .arg(tmp.path().join("x.jpg")));
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains(".png or .svg"));
    std::fs::write(tmp.path().join("bad.csv"), "a,b\n1,2\n").unwrap();
    let (code, _, stderr) = run(bin()
        .args(["plot", "--csv-file"])
        .arg(tmp.path().join("bad.csv"))
        .arg("--figure-png-file")
        .arg(tmp.path().join("x.png")));
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("expected the columns"));
}

/// The main job end to end on tiny models: bench, CSVs, environment, plots, report, accuracy
/// of a checkpoint and its cost, in one new folder.
#[test]
fn run_produces_the_whole_result_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let (code, stdout, stderr) = run(bin()
        .args([
            "run",
            "--offline",
            "--threads",
            "1",
            // One precision: tests/precision.rs runs the main job at several.
            "--dtype",
            "f32",
            "--price-per-hour",
            "1.0",
            "--eval-limit",
            "4",
            "--models",
        ])
        .arg(parity_dir("bert"))
        .arg(parity_dir("distilbert"))
        .arg("--checkpoint")
        .arg(minilm_dir())
        .arg("--dataset")
        .arg(shared().join("data/squad/dev-v1.1.json.gz"))
        .arg("--output-dir")
        .arg(&out));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("all results in"), "{stdout}");
    for f in [
        "results.json",
        "results.csv",
        "inference_time.csv",
        "inference_memory.csv",
        "env.csv",
        "report.md",
        "report.html",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("## Accuracy and speed") && md.contains("USD per 1000 questions"),
        "{md}"
    );
    // Only the checkpoint was evaluated: it is the recommendation, on the chart of F1 against
    // cost.
    assert!(
        md.contains("Recommended: all-MiniLM-L6-v2: the most accurate"),
        "{md}"
    );
    assert!(out.join("plots/pareto.png").is_file());
    // `run` never reuses a folder.
    let (code, _, stderr) = run(bin().args(["run", "--offline", "--output-dir"]).arg(&out));
    assert_eq!(code, 3, "{stderr}");
    // A second machine's run compared with the first: a report across both in machines/.
    let second = tmp.path().join("second");
    let run_again = |compare_with: &std::path::Path| {
        run(bin()
            .args(["run", "--offline", "--threads", "1", "--models"])
            .arg(parity_dir("bert"))
            .arg(parity_dir("distilbert"))
            .arg("--compare-with")
            .arg(compare_with)
            .args(["--machine-names", "here", "there", "--output-dir"])
            .arg(&second))
    };
    let (code, _, stderr) = run_again(&tmp.path().join("nothing-here"));
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("no results.json"), "{stderr}");
    assert!(!second.exists(), "refused before any work");
    let (code, stdout, stderr) = run_again(&out);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("report across 2 machines"), "{stdout}");
    let md = std::fs::read_to_string(second.join("machines/report.md")).unwrap();
    assert!(
        md.contains("## Machines")
            && md.contains("| here |")
            && md.contains("speed relative to here"),
        "{md}"
    );
}

/// A fine-tuning run inside the folder adds time and dollars to each evaluated F1.
#[test]
fn training_runs_add_time_and_cost_to_accuracy() {
    let tmp = tempfile::tempdir().unwrap();
    synthetic_run(tmp.path());
    let run_dir = tmp.path().join("finetune");
    std::fs::create_dir_all(run_dir.join("checkpoint-10")).unwrap();
    let args = serde_json::json!({"model": "small", "train_file": "train.json", "eval_file": "dev.json",
        "output_dir": "finetune", "per_device_train_batch_size": 16, "per_device_eval_batch_size": 32,
        "num_train_epochs": 1, "max_steps": 20, "learning_rate": 3e-5, "weight_decay": 0.01,
        "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8, "warmup_ratio": 0.0,
        "warmup_steps": 0, "max_grad_norm": 1.0, "gradient_accumulation_steps": 1,
        "max_seq_length": 384, "doc_stride": 128, "max_query_length": 64, "seed": 42, "limit": null,
        "eval_limit": null, "save_steps": 10, "logging_steps": 10, "dtype": "f32", "device": "cpu",
        "threads": 2, "random_init": false});
    std::fs::write(run_dir.join("training_args.json"), args.to_string()).unwrap();
    let row = |step: usize, elapsed: f64, f1: Option<f64>| {
        serde_json::json!({"step": step, "epoch": step as f64 / 20.0, "loss": f1.map_or(Some(1.0), |_| None),
            "learning_rate": null, "grad_norm": null, "samples_per_s": null, "elapsed_s": elapsed,
            "eval_exact_match": f1.map(|f| f - 10.0), "eval_f1": f1, "eval_questions": f1.map(|_| 100)})
    };
    let state = serde_json::json!({"global_step": 20, "max_steps": 20, "num_train_epochs": 1, "epoch": 1.0,
        "elapsed_s": 7200.0, "seed": 42,
        "log_history": [row(10, 1800.0, None), row(10, 3600.0, Some(40.0)), row(20, 7200.0, Some(60.0))]});
    std::fs::write(run_dir.join("trainer_state.json"), state.to_string()).unwrap();
    // A checkpoint's state is not a separate run.
    std::fs::write(
        run_dir.join("checkpoint-10/trainer_state.json"),
        state.to_string(),
    )
    .unwrap();
    // Files the report cannot read are skipped, each with a warning that names it: an
    // eval_results.json of another schema, and a run whose training_args.json is missing.
    let stray = tmp.path().join("stray");
    std::fs::create_dir_all(stray.join("run")).unwrap();
    std::fs::write(stray.join("eval_results.json"), r#"{"f1": 1.0}"#).unwrap();
    std::fs::write(stray.join("run/trainer_state.json"), state.to_string()).unwrap();
    let (code, _, stderr) = run(bin()
        .arg("report")
        .arg(tmp.path())
        .args(["--price-per-hour", "2.0"]));
    assert_eq!(code, 0, "{stderr}");
    let warned = |path: std::path::PathBuf| {
        stderr
            .lines()
            .any(|l| l.starts_with("warning: skipped") && l.contains(&path.display().to_string()))
    };
    assert!(warned(stray.join("eval_results.json")), "{stderr}");
    assert!(warned(stray.join("run/training_args.json")), "{stderr}");
    let md = std::fs::read_to_string(tmp.path().join("report.md")).unwrap();
    assert!(
        md.contains("## Fine-tuning: time and cost to accuracy"),
        "{md}"
    );
    // Whole run: 2 h at 2 USD/h; F1 40 reached after 1 h (2 USD), F1 60 after 2 h (4 USD).
    assert!(
        md.contains("| finetune | small | whole run: 20 steps, 1.00 epochs | - | 7200 | 4.0000 |"),
        "{md}"
    );
    assert!(
        md.contains("| 40.00 | 3600 | 2.0000 |") && md.contains("| 60.00 | 7200 | 4.0000 |"),
        "{md}"
    );
    assert_eq!(md.matches("| finetune | small | whole run").count(), 1);
}

/// A thread sweep in the report: "small" runs 1.8x faster on 4 threads than on 1, "big" 3x;
/// the scaling sentences recompute those numbers, ratios between models compare equal thread
/// counts only, the tables gain a threads column and the plots a line per model and count.
#[test]
fn thread_sweep_scaling_is_observed_and_drawn() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ms = Vec::new();
    for (model, t1, t4) in [("small", 1.8, 1.0), ("big", 6.0, 2.0)] {
        for seq in SEQS {
            for (threads, per_token) in [(1, t1), (4, t4)] {
                let mut cell = cell_at(model, Mode::Inference, 1, seq);
                cell.threads = threads;
                ms.push(exact(
                    cell,
                    per_token * 1e-3 * seq as f64,
                    100 << 20,
                    1 << 20,
                ));
            }
        }
    }
    write_run(tmp.path(), ms);
    let results = ResultsFile::read(&tmp.path().join("results.json")).unwrap();
    assert_eq!(results.thread_counts(), [1, 4]);
    let scaling = observe::thread_scaling(&results);
    assert_eq!(scaling.len(), 2 * SEQS.len());
    for s in &scaling {
        let want = if s.model == "small" { 1.8 } else { 3.0 };
        assert!((s.speedup - want).abs() < 1e-9, "{s:?}");
        assert!((s.efficiency() - want / 4.0).abs() < 1e-9);
    }
    // Model against model only at the same count: big/small is 10/3 at 1 thread, 2 at 4.
    for r in observe::speed_ratios(&results) {
        let want = if r.threads == 1 { 6.0 / 1.8 } else { 2.0 };
        assert!((r.ratio - want).abs() < 1e-9, "{r:?}");
    }
    let (code, stdout, stderr) = run(bin().arg("report").arg(tmp.path()));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("small inference at batch 1, sequence 256 runs 1.80x")
            && stdout.contains("faster on 4 threads than on 1 thread (45% of linear scaling)"),
        "{stdout}"
    );
    let md = std::fs::read_to_string(tmp.path().join("report.md")).unwrap();
    assert!(
        md.contains("| model | batch | seq | threads | median |"),
        "{md}"
    );
    assert!(md.contains("| small | 1 | 32 | 4 |"), "{md}");
    let html = std::fs::read_to_string(tmp.path().join("report.html")).unwrap();
    for line in ["small, 1 thread", "small, 4 threads", "big, 4 threads"] {
        assert!(html.contains(line), "no plot line {line}");
    }
}

/// A load-generator run in the bench folder (a server search on a simulated system, 10 ms per
/// query, and a price) becomes the report's serving section: its highest rate, the dollars
/// per million questions at that rate, and its latency curve as a figure.
#[test]
fn loadgen_runs_join_the_report() {
    use bertbench::cost::resolve_price;
    use bertbench::serve::loadgen::{LoadgenJob, Setup};
    use bertbench::serve::{RunSettings, Scenario, SearchSettings, Server};
    use common::serving::{batcher, query, Simulated};
    use std::time::Duration;

    let tmp = tempfile::tempdir().unwrap();
    synthetic_run(tmp.path());
    let server = Server::start(Simulated::new(0, 10), batcher(1, 0, 100, 1));
    let queries: Vec<_> = (0..4).map(|i| query(i, 1, 16)).collect();
    // The questions' ids must exist in a dataset for scoring; an empty one scores nothing.
    let dataset = bertbench::squad::Dataset {
        version: "1.1".into(),
        articles: vec![],
    };
    let job = LoadgenJob {
        scenario: Scenario::Server,
        run: RunSettings {
            min_duration: Duration::from_millis(300),
            min_query_count: 30,
            seed: 1,
            percentile: 90.0,
            accuracy: false,
        },
        rate: None,
        search: SearchSettings {
            target_ms: 60.0,
            start_qps: Some(40.0),
            tolerance: 0.25,
            max_probes: 5,
        },
        output_dir: tmp.path().join("serving/sim"),
        overwrite: false,
        price: resolve_price(Some(0.36), None, None).unwrap(),
    };
    let setup = Setup {
        model: "simulated".into(),
        model_source: "test".into(),
        dataset: "none".into(),
        system: "in-process".into(),
        batcher: Some(server.config().into()),
        threads: 1,
        isa: Some(bertbench::compute::Isa::Portable),
        cpu: "test".into(),
        dtype: Some(bertbench::device::Precision::F32),
        max_seq_length: 64,
        doc_stride: 16,
    };
    let outcome = job
        .run(&server, &dataset, &queries, setup, &mut |_| {})
        .unwrap();
    server.shutdown();
    let r = &outcome.results;
    let files = bertbench::report::build::write_report(tmp.path(), &Default::default()).unwrap();
    let md = std::fs::read_to_string(&files.markdown).unwrap();
    let section = &md[md.find("## Serving under load").expect("a serving section")..];
    let row = section
        .lines()
        .find(|l| l.starts_with("| simulated | server"))
        .unwrap_or_else(|| panic!("{section}"));
    assert!(row.contains(&format!("{} run(s)", r.runs.len())), "{row}");
    // On a machine too busy to keep the simulated system's pace no rate may pass: the row
    // then says so instead of a number.
    match r.metric {
        Some(best) => {
            // $0.36/hour = $0.0001/s: a million questions at `best` QPS cost 100 / best.
            let cost = r.cost.as_ref().unwrap();
            assert!((cost.usd_per_million_questions - 100.0 / best).abs() < 1e-9);
            assert!(row.contains(&format!("{best:.2}")), "{row}");
            assert!(row.contains(&format!("{:.2}", 100.0 / best)), "{row}");
        }
        None => assert!(r.cost.is_none() && row.contains("| - |"), "{row}"),
    }
    assert!(files
        .plots
        .iter()
        .any(|p| p.ends_with("plots/latency_vs_load_1.png")));
    assert!(section.contains("Latency under load: simulated"));
}

/// The drift monitor's samples become the report's "Machine drift" section: the plot of the
/// calibration over the run, and the cell measured while the machine ran 30% slow flagged by
/// name.
#[test]
fn drift_samples_are_plotted_and_slow_cells_flagged() {
    use bertbench::bench::drift::DriftSample;
    let tmp = tempfile::tempdir().unwrap();
    let sample = |s: f64, at: f64| DriftSample {
        calibration_s: s,
        load_1m: Some(0.5),
        cpus: 2,
        at_unix_s: 1.7e9 + at,
    };
    let mut ms = Vec::new();
    for (i, seq) in SEQS.iter().enumerate() {
        let mut m = exact(
            cell_at("small", Mode::Inference, 1, *seq),
            1e-3,
            1 << 20,
            1024,
        );
        let slow = if *seq == 128 { 1.3 } else { 1.0 };
        m.drift = vec![
            sample(0.004 * slow, i as f64 * 10.0),
            sample(0.004, i as f64 * 10.0 + 5.0),
        ];
        ms.push(m);
    }
    write_run(tmp.path(), ms);
    let files = bertbench::report::build::write_report(tmp.path(), &Default::default()).unwrap();
    let md = std::fs::read_to_string(&files.markdown).unwrap();
    let section = &md[md.find("## Machine drift").expect("a drift section")..];
    assert!(section.contains("8 in all"), "{section}");
    let flagged: Vec<&str> = section.lines().filter(|l| l.starts_with("- ")).collect();
    assert_eq!(flagged.len(), 1, "{section}");
    assert!(
        flagged[0].contains("sequence 128") && flagged[0].contains("30% slower"),
        "{section}"
    );
    assert!(tmp.path().join("plots/drift.png").is_file());
    assert!(files.plots.iter().any(|p| p.ends_with("plots/drift.png")));
}

/// A GPU run's device memory and energy (NVML) reach the results table and results.csv, an
/// estimate from power x time labelled as one; a CPU run has neither column.
#[test]
fn gpu_memory_and_energy_show_where_measured() {
    use bertbench::bench::output::{OutputFiles, ResultsWriter};
    use bertbench::bench::{Energy, EnergySource};
    let tmp = tempfile::tempdir().unwrap();
    let gpu = |batch: usize, joules: f64, source: EnergySource| {
        let mut m = exact(
            cell_at("small", Mode::Inference, batch, 128),
            0.01,
            100 << 20,
            0,
        );
        m.settings.device = bertbench::device::DeviceSpec::Cuda(0);
        let mem = m.memory.as_mut().unwrap();
        mem.gpu_process_peak = Some(300 << 20);
        mem.gpu_device_peak = Some(900 << 20);
        m.speed.as_mut().unwrap().energy = Some(Energy {
            joules,
            sequences: 600,
            seconds: 0.5,
            source,
        });
        m
    };
    let measurements = vec![
        gpu(1, 30.0, EnergySource::Counter),
        gpu(4, 60.0, EnergySource::PowerTimesTime),
    ];
    let results = ResultsFile {
        bertbench_version: "test".into(),
        settings: Some(settings()),
        plan: measurements.iter().map(|m| m.cell.clone()).collect(),
        measurements,
        ..Default::default()
    };
    ResultsWriter::new(OutputFiles::in_dir(tmp.path()), results).unwrap();
    let tidy = csv_rows(&tmp.path().join("results.csv"));
    let col = |name: &str| tidy[0].iter().position(|c| c == name).unwrap();
    assert_eq!(tidy[1][col("energy_j_per_1k_seq")], "50");
    assert_eq!(tidy[1][col("energy_source")], "counter");
    assert_eq!(tidy[2][col("energy_j_per_1k_seq")], "100");
    assert_eq!(tidy[2][col("energy_source")], "power x time");
    assert_eq!(tidy[1][col("gpu_process_peak_mb")], "300.00");

    let (code, _, stderr) = run(bin().arg("report").arg(tmp.path()));
    assert_eq!(code, 0, "{stderr}");
    let md = std::fs::read_to_string(tmp.path().join("report.md")).unwrap();
    let header = md
        .lines()
        .find(|l| l.starts_with("| model") && l.contains("J per 1000 seq"))
        .unwrap_or_else(|| panic!("no energy column:\n{md}"));
    assert!(header.contains("GPU peak MB"), "{header}");
    assert!(md.contains("| 50.0 |"), "{md}");
    assert!(md.contains("| 100.0 (power x time) |"), "{md}");
    assert!(md.contains("| 300 |"), "{md}");

    // The CPU run: neither column.
    let cpu = tmp.path().join("cpu");
    synthetic_run(&cpu);
    run(bin().arg("report").arg(&cpu));
    let md = std::fs::read_to_string(cpu.join("report.md")).unwrap();
    assert!(!md.contains("J per 1000 seq") && !md.contains("GPU peak MB"));
}
