//! The measurement engine end to end on tiny fixture models: the CSV layouts, failures kept as
//! rows, crashed children, resume, memory that grows with the batch, and the largest-batch
//! search. Timing budgets are tiny: these tests check behaviour, not speed.

mod common;

use std::path::Path;

use common::*;

fn bench(out: &Path, extra: &[&str]) -> std::process::Command {
    let mut cmd = bin();
    cmd.arg("bench")
        .arg("--models")
        .arg(parity_dir("bert"))
        .arg(parity_dir("distilbert"))
        .args([
            "--repeat",
            "3",
            "--min-time",
            "0",
            "--max-warmup-runs",
            "2",
            "--no-peak",
            "--threads",
            "1",
            "--offline",
        ])
        .arg("--output-dir")
        .arg(out)
        .args(extra)
        .env_remove(bertbench::bench::child::FAULT_ENV);
    cmd
}

fn results(dir: &Path) -> serde_json::Value {
    read_json(&dir.join("results.json"))
}

#[test]
fn csv_layouts_and_failures_as_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let (code, stdout, stderr) = run(&mut bench(
        &out,
        &[
            "--batch-sizes",
            "1",
            "2",
            "--sequence-lengths",
            "16",
            "200",
            "--save-to-csv",
        ],
    ));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("sequence_too_long"), "{stdout}");

    // Hugging Face's layout: model,batch_size,sequence_length,result; N/A where no number.
    let time = csv_rows(&out.join("inference_time.csv"));
    assert_eq!(
        time[0],
        ["model", "batch_size", "sequence_length", "result"]
    );
    assert_eq!(time.len(), 1 + 2 * 2 * 2);
    // Every number in Hugging Face's files is the cell's result from results.json, in its
    // units: median seconds with 4 decimals, peak resident MiB as a whole number.
    let res = results(&out);
    let cell_of = |row: &[String]| {
        let (b, s): (u64, u64) = (row[1].parse().unwrap(), row[2].parse().unwrap());
        res["measurements"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| {
                m["cell"]["model"] == row[0].as_str()
                    && m["cell"]["batch_size"] == b
                    && m["cell"]["sequence_length"] == s
            })
            .unwrap_or_else(|| panic!("no measurement for {row:?}"))
            .clone()
    };
    for row in &time[1..] {
        let m = cell_of(row);
        if row[2] == "200" {
            assert_eq!(row[3], "N/A", "{row:?}");
            assert!(m["speed"].is_null());
        } else {
            let median = m["speed"]["summary"]["median"].as_f64().unwrap();
            assert!(median > 0.0, "{row:?}");
            assert_eq!(row[3], format!("{median:.4}"), "{row:?}");
        }
    }
    let memory = csv_rows(&out.join("inference_memory.csv"));
    assert_eq!(memory.len(), 1 + 2 * 2 * 2);
    for row in &memory[1..] {
        let m = cell_of(row);
        if row[2] == "200" {
            assert_eq!(row[3], "N/A");
        } else {
            let peak = m["memory"]["peak_rss"].as_u64().unwrap();
            assert_eq!(row[3], (peak >> 20).to_string(), "{row:?}");
            // A process holding a model cannot fit in a few MiB.
            assert!(peak >> 20 > 1, "{row:?}");
        }
    }
    // No training was asked for: no training CSVs.
    assert!(!out.join("train_time.csv").exists());

    // The tidy file: units in column names, run counts, status and reason per row.
    let tidy = csv_rows(&out.join("results.csv"));
    let col = |name: &str| {
        tidy[0]
            .iter()
            .position(|c| c == name)
            .unwrap_or_else(|| panic!("no column {name}"))
    };
    assert_eq!(tidy.len(), 1 + 8);
    for row in &tidy[1..] {
        if row[col("sequence_length")] == "200" {
            assert_eq!(row[col("status")], "sequence_too_long");
            assert!(row[col("reason")].contains("max_position_embeddings 128"));
            assert_eq!(row[col("median_s")], "");
        } else {
            assert_eq!(row[col("status")], "ok");
            assert!(row[col("runs")].parse::<usize>().unwrap() >= 3);
            let median: f64 = row[col("median_s")].parse().unwrap();
            let lo: f64 = row[col("median_ci95_low_s")].parse().unwrap();
            let hi: f64 = row[col("median_ci95_high_s")].parse().unwrap();
            assert!(lo <= median && median <= hi);
            let tokens: f64 = row[col("tokens_per_s")].parse().unwrap();
            let batch: f64 = row[col("batch_size")].parse().unwrap();
            assert!((tokens - batch * 16.0 / median).abs() / tokens < 1e-9);
            assert!(row[col("flops_per_step")].parse::<u64>().unwrap() > 0);
            assert!(row[col("peak_rss_mb")].parse::<f64>().unwrap() > 0.0);
            // Energy is a GPU's (NVML): none on the CPU.
            assert_eq!(row[col("energy_j_per_1k_seq")], "");
        }
    }

    // Raw samples in results.json, and the environment file with Hugging Face's keys and more.
    let m = measurement_of(&res, "bert", 2, 16);
    let samples = m["speed"]["timings"]["samples"].as_array().unwrap();
    assert_eq!(
        samples.len() as u64,
        m["speed"]["summary"]["n"].as_u64().unwrap()
    );
    let env = csv_rows(&out.join("env.csv"));
    let keys: Vec<&str> = env[1..].iter().map(|r| r[0].as_str()).collect();
    for key in [
        "framework",
        "framework_version",
        "cpu",
        "cpu_ram_mb",
        "use_gpu",
        "date",
        "time",
        "threads",
        "git_commit",
        "kernel",
        "use_multiprocessing",
    ] {
        assert!(keys.contains(&key), "env.csv lacks {key}");
    }
}

/// `bench` on `grid` into `out` with the variable `var` set to `value` (removed for `None`):
/// the exit code, stdout and stderr.
fn bench_with_var(
    out: &Path,
    grid: &[&str],
    var: &str,
    value: Option<&str>,
) -> (i32, String, String) {
    let mut cmd = bench(out, grid);
    match value {
        Some(v) => cmd.env(var, v),
        None => cmd.env_remove(var),
    };
    run(&mut cmd)
}

/// `bench` with `var=value` exits `code`, saying `says`, and measures nothing.
fn assert_var_refused(out: &Path, grid: &[&str], var: &str, value: &str, code: i32, says: &str) {
    let (got, _, stderr) = bench_with_var(out, grid, var, Some(value));
    assert_eq!(got, code, "{var}={value}: {stderr}");
    assert!(stderr.contains(says), "{stderr}");
    assert!(!out.join("results.csv").exists());
}

/// `bench` with `var` set to `value` (or unset) runs and `env.csv` records `want` as `key`.
fn assert_var_recorded(
    out: &Path,
    grid: &[&str],
    var: &str,
    value: Option<&str>,
    key: &str,
    want: &str,
) {
    let (code, _, stderr) = bench_with_var(out, grid, var, value);
    assert_eq!(code, 0, "{stderr}");
    let env = csv_rows(&out.join("env.csv"));
    let row = env.iter().find(|r| r[0] == key);
    assert_eq!(row.map(|r| r[1].as_str()), Some(want), "{env:?}");
}

/// `BERTBENCH_BLOCKING` (the products' blocks, for tuning runs): a malformed value is refused
/// by name before anything is measured; a valid one is used and recorded in `env.csv`, where a
/// run without it says `rule` (blocks sized from the cache sizes recorded beside it).
#[test]
fn a_forced_blocking_is_checked_and_recorded() {
    use bertbench::compute::packed::BLOCKING_ENV;
    let tmp = tempfile::tempdir().unwrap();
    let grid = [
        "--batch-sizes",
        "1",
        "--sequence-lengths",
        "16",
        "--no-memory",
    ];
    let says = "BERTBENCH_BLOCKING=\"84\": expected MC,KC";
    assert_var_refused(&tmp.path().join("bad"), &grid, BLOCKING_ENV, "84", 3, says);
    for (value, want) in [(None, "rule"), (Some(" 6, 16"), "6,16")] {
        let out = tmp.path().join(want.replace(',', "-"));
        assert_var_recorded(&out, &grid, BLOCKING_ENV, value, "blocking", want);
    }
}

/// `BERTBENCH_INT8_KERNEL` (to measure a kernel the CPU would not pick): a malformed value is
/// an input error, a kernel wider than the tier in force is refused as unavailable (exit 4),
/// and a forced kernel runs every int8 cell and is recorded as forced in `env.csv`.
#[test]
fn a_forced_int8_kernel_is_checked_and_recorded() {
    use bertbench::compute::int8::KERNEL_ENV;
    let tmp = tempfile::tempdir().unwrap();
    let grid = [
        "--batch-sizes",
        "1",
        "--sequence-lengths",
        "16",
        "--no-memory",
        "--dtype",
        "int8",
        "--isa",
        "portable",
    ];
    for (value, code, says) in [
        ("vnni", 3, "BERTBENCH_INT8_KERNEL=\"vnni\": expected one of"),
        (
            "avx512-vnni",
            4,
            "the portable tier cannot run that int8 kernel",
        ),
    ] {
        assert_var_refused(
            &tmp.path().join(value),
            &grid,
            KERNEL_ENV,
            value,
            code,
            says,
        );
    }
    let out = tmp.path().join("forced");
    let want = "portable (forced by BERTBENCH_INT8_KERNEL)";
    assert_var_recorded(
        &out,
        &grid,
        KERNEL_ENV,
        Some("portable"),
        "int8_kernel",
        want,
    );
    let results = results(&out);
    assert!(
        results["measurements"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["status"] == "ok"),
        "{results}"
    );
}

#[test]
fn crashed_child_is_a_row_and_resume_finishes_the_grid() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let victim = format!("{} inference b2 s16 t1", parity_dir("distilbert").display());
    // First a partial grid (as if interrupted after batch 1), with one crashing cell.
    let mut first = bench(
        &out,
        &["--batch-sizes", "1", "2", "--sequence-lengths", "16"],
    );
    first.env(bertbench::bench::child::FAULT_ENV, &victim);
    let (code, _, stderr) = run(&mut first);
    assert_eq!(code, 0, "{stderr}");
    let before = results(&out);
    let crashed = measurement_of(&before, "distilbert", 2, 16);
    assert_eq!(crashed["status"], "crashed");
    assert!(
        crashed["reason"].as_str().unwrap().contains("signal 6"),
        "{crashed}"
    );
    assert_eq!(measurement_of(&before, "bert", 2, 16)["status"], "ok");

    // Without --resume the directory is protected.
    let (code, _, stderr) = run(&mut bench(
        &out,
        &["--batch-sizes", "1", "2", "--sequence-lengths", "16"],
    ));
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("--resume"), "{stderr}");

    // Resume with a larger grid, retrying the crash: finished cells are not measured again.
    let (code, _, stderr) = run(&mut bench(
        &out,
        &[
            "--batch-sizes",
            "1",
            "2",
            "--sequence-lengths",
            "16",
            "32",
            "--resume",
            "--retry-failed",
        ],
    ));
    assert_eq!(code, 0, "{stderr}");
    let after = results(&out);
    for (model, b) in [("bert", 1), ("bert", 2), ("distilbert", 1)] {
        assert_eq!(
            measurement_of(&before, model, b, 16)["speed"]["timings"],
            measurement_of(&after, model, b, 16)["speed"]["timings"],
            "{model} b{b} was measured again"
        );
    }
    assert_eq!(measurement_of(&after, "distilbert", 2, 16)["status"], "ok");
    for model in ["bert", "distilbert"] {
        for b in [1, 2] {
            assert_eq!(measurement_of(&after, model, b, 32)["status"], "ok");
        }
    }
    assert_eq!(csv_rows(&out.join("inference_time.csv")).len(), 1 + 8);
}

#[test]
fn memory_grows_with_the_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let (code, _, stderr) = run(&mut bench(
        &out,
        &[
            "--no-speed",
            "--batch-sizes",
            "1",
            "64",
            "--sequence-lengths",
            "128",
        ],
    ));
    assert_eq!(code, 0, "{stderr}");
    let res = results(&out);
    for model in ["bert", "distilbert"] {
        let small = &measurement_of(&res, model, 1, 128)["memory"];
        let big = &measurement_of(&res, model, 64, 128)["memory"];
        assert!(small.is_object() && measurement_of(&res, model, 1, 128)["speed"].is_null());
        let peak = |m: &serde_json::Value| m["peak_rss"].as_u64().unwrap();
        let alloc = |m: &serde_json::Value| m["alloc_peak"].as_u64().unwrap();
        assert!(
            peak(big) > peak(small) + (10 << 20),
            "{model}: {} vs {}",
            peak(big),
            peak(small)
        );
        assert!(
            alloc(big) > alloc(small) + (10 << 20),
            "{model}: {} vs {}",
            alloc(big),
            alloc(small)
        );
    }
}

#[test]
fn memory_limit_refuses_cells_and_bounds_the_batch_search() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("refused");
    let (code, _, stderr) = run(&mut bench(
        &out,
        &[
            "--batch-sizes",
            "1",
            "--sequence-lengths",
            "16",
            "--max-memory",
            "0.1",
        ],
    ));
    assert_eq!(code, 0, "{stderr}");
    let res = results(&out);
    let m = measurement_of(&res, "bert", 1, 16);
    assert_eq!(m["status"], "too_large");
    assert!(m["reason"].as_str().unwrap().contains("--max-memory"));

    let out = tmp.path().join("search");
    let mut cmd = bin();
    cmd.arg("bench")
        .arg("--models")
        .arg(parity_dir("distilbert"))
        .args([
            "--no-speed",
            "--batch-sizes",
            "1",
            "--sequence-lengths",
            "128",
            "--find-max-batch",
        ])
        .args([
            "--max-memory",
            "120",
            "--max-batch-cap",
            "512",
            "--no-peak",
            "--threads",
            "1",
            "--offline",
        ])
        .arg("--output-dir")
        .arg(&out);
    let (code, stdout, stderr) = run(&mut cmd);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("largest batch under 120 MB"), "{stdout}");
    let rows = csv_rows(&out.join("max_batch.csv"));
    let col = |name: &str| rows[0].iter().position(|c| c == name).unwrap();
    let row = &rows[1];
    let best: usize = row[col("max_batch_size")].parse().unwrap();
    assert!(best >= 1);
    let peak: f64 = row[col("peak_rss_mb_at_max")].parse().unwrap();
    assert!(peak <= 120.0, "{row:?}");
    // Either the cap was reached, or the next batch up failed.
    if best < 512 {
        let fail: usize = row[col("first_failing_batch_size")].parse().unwrap();
        assert_eq!(fail, best + 1, "{row:?}");
    }
}

#[test]
fn bad_arguments_are_explained() {
    let tmp = tempfile::tempdir().unwrap();
    for (args, needle) in [
        (vec!["--batch-sizes", "0"], "at least 1"),
        (vec!["--no-inference"], "nothing to measure"),
        (vec!["--no-speed", "--no-memory"], "nothing to measure"),
    ] {
        let (code, _, stderr) = run(&mut bench(&tmp.path().join("x"), &args));
        assert_eq!(code, 3, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    // Caught while parsing the command line (a usage error), as for every command that
    // computes (the flag is declared once, in `ComputeArgs`).
    for command in ["bench", "peak", "train", "logits", "eval", "run"] {
        let (code, _, stderr) = run(bin().args([command, "--threads", "0"]));
        assert_eq!(code, 2, "{command}: {stderr}");
        assert!(stderr.contains("at least 1"), "{command}: {stderr}");
        // The device is parsed there too, into a `DeviceSpec`.
        let (code, _, stderr) = run(bin().args([command, "--device", "tpu"]));
        assert_eq!(code, 2, "{command}: {stderr}");
        assert!(
            stderr.contains("device `tpu`: expected `cpu`, `cuda` or `cuda:N`"),
            "{command}: {stderr}"
        );
    }
}

/// On the portable tier the encoder multiplies on candle's matmul, so `peak` times that one
/// only (the packed product's plain-Rust tile runs no encoder product there).
#[test]
fn peak_on_the_portable_tier_times_the_product_it_multiplies_with() {
    let (code, stdout, stderr) =
        run(bin().args(["peak", "--isa", "portable", "--threads", "1", "--json"]));
    assert_eq!(code, 0, "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["isa"], "portable");
    let shapes = json["shapes"].as_array().unwrap();
    assert_eq!(shapes.len(), 3, "{stdout}");
    assert!(shapes.iter().all(|s| s["kernel"] == "candle"), "{stdout}");
    assert!(json["peak_gflops"].as_f64().unwrap() > 0.0);
}

/// `--threads 1 2`: every cell at each count, in its own child process with that many
/// threads, a `threads` column in Hugging Face's files and the tidy one, and the summary's;
/// in-process runs and commands other than bench refuse several counts.
#[test]
fn thread_sweep_measures_every_cell_at_each_count() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sweep");
    let model = parity_dir("bert");
    let mut cmd = bin();
    cmd.arg("bench")
        .arg("--models")
        .arg(&model)
        .args(["--batch-sizes", "1", "--sequence-lengths", "16", "32"])
        .args(["--threads", "1", "2", "--repeat", "3", "--min-time", "0"])
        .args(["--max-warmup-runs", "2", "--no-peak", "--offline"])
        .arg("--output-dir")
        .arg(&out);
    let (code, stdout, stderr) = run(&mut cmd);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("threads"), "{stdout}");

    let time = csv_rows(&out.join("inference_time.csv"));
    assert_eq!(
        time[0],
        [
            "model",
            "batch_size",
            "sequence_length",
            "threads",
            "result"
        ]
    );
    let shapes: Vec<(&str, &str)> = time[1..]
        .iter()
        .map(|r| (r[2].as_str(), r[3].as_str()))
        .collect();
    assert_eq!(shapes, [("16", "1"), ("16", "2"), ("32", "1"), ("32", "2")]);

    let res = results(&out);
    let measurements = res["measurements"].as_array().unwrap();
    assert_eq!(measurements.len(), 4);
    for m in measurements {
        assert_eq!(m["status"], "ok", "{m}");
        // The child ran at the cell's count, and the row says so.
        assert_eq!(m["settings"]["threads"], m["cell"]["threads"]);
    }
    let tidy = csv_rows(&out.join("results.csv"));
    let col = tidy[0].iter().position(|c| c == "threads").unwrap();
    let counts: Vec<&str> = tidy[1..].iter().map(|r| r[col].as_str()).collect();
    assert_eq!(counts, ["1", "2", "1", "2"]);
    let env = csv_rows(&out.join("env.csv"));
    assert!(env.iter().any(|r| r[0] == "thread_counts" && r[1] == "1 2"));

    // Several counts need a child process per cell, and only bench sweeps.
    let mut cmd = bin();
    cmd.arg("bench")
        .arg("--models")
        .arg(&model)
        .args([
            "--threads",
            "1",
            "2",
            "--in-process",
            "--no-peak",
            "--offline",
        ])
        .arg("--output-dir")
        .arg(tmp.path().join("refused"));
    let (code, _, stderr) = run(&mut cmd);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("--in-process"), "{stderr}");
    let (code, _, stderr) = run(bin()
        .args(["logits", "--threads", "1", "2", "--offline", "--model"])
        .arg(&model)
        .arg("--inputs")
        .arg(model.join("expected.json")));
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("only bench sweeps"), "{stderr}");
}

/// `--processes K`: every cell timed in K child processes, their medians and the two-level
/// interval (its spread pooled over the run's cells) in results.json and results.csv; `--resume` with a larger K adds processes to the
/// cells that have fewer; K = 1 keeps one process and no two-level interval; several
/// processes in this process are refused.
#[test]
fn cells_are_timed_in_several_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = ["--batch-sizes", "1", "--sequence-lengths", "16"];
    let out = tmp.path().join("k2");
    let (code, _, stderr) = run(bench(&out, &grid).args(["--processes", "2"]));
    assert_eq!(code, 0, "{stderr}");
    let res = results(&out);
    for model in ["bert", "distilbert"] {
        let m = measurement_of(&res, model, 1, 16);
        let between = &m["speed"]["between"];
        let medians = between["medians"].as_array().unwrap();
        assert_eq!(medians.len(), 2, "{m}");
        let (low, high) = (
            between["low"].as_f64().unwrap(),
            between["high"].as_f64().unwrap(),
        );
        let center = between["center"].as_f64().unwrap();
        assert!(low <= center && center <= high);
        // The pooled samples are both processes' runs (3 each at least).
        assert!(m["speed"]["timings"]["samples"].as_array().unwrap().len() >= 6);
    }
    // The spread is pooled over the run's two cells (one degree of freedom each), on a
    // relative scale: recomputed here from the process medians.
    let (mut ss, mut df) = (0.0, 0);
    for model in ["bert", "distilbert"] {
        let medians: Vec<f64> = measurement_of(&res, model, 1, 16)["speed"]["between"]["medians"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let mean = medians.iter().sum::<f64>() / medians.len() as f64;
        ss += medians
            .iter()
            .map(|m| (m / mean - 1.0).powi(2))
            .sum::<f64>();
        df += medians.len() - 1;
    }
    let pooled = (ss / df as f64).sqrt();
    for model in ["bert", "distilbert"] {
        let between = &measurement_of(&res, model, 1, 16)["speed"]["between"];
        assert_eq!(between["df"].as_u64(), Some(2), "{between}");
        let got = between["pooled_relative_sd"].as_f64().unwrap();
        assert!(
            (got - pooled).abs() <= 1e-12 * pooled.max(1.0),
            "{got} vs {pooled}"
        );
    }
    let rows = csv_rows(&out.join("results.csv"));
    let col = |name: &str| rows[0].iter().position(|h| h == name).unwrap();
    for r in &rows[1..] {
        assert_eq!(r[col("processes")], "2");
        assert!(!r[col("between_ci95_low_s")].is_empty());
    }
    // Resume asking for three: one more process per cell, none measured again from scratch.
    let (code, _, stderr) = run(bench(&out, &grid).args(["--processes", "3", "--resume"]));
    assert_eq!(code, 0, "{stderr}");
    let res = results(&out);
    let m = measurement_of(&res, "bert", 1, 16);
    assert_eq!(
        m["speed"]["between"]["medians"].as_array().unwrap().len(),
        3
    );

    let one = tmp.path().join("k1");
    let (code, _, stderr) = run(bench(&one, &grid).args(["--processes", "1"]));
    assert_eq!(code, 0, "{stderr}");
    let m = measurement_of(&results(&one), "bert", 1, 16).clone();
    assert!(m["speed"].get("between").is_none(), "{m}");
    let rows = csv_rows(&one.join("results.csv"));
    let p = rows[0].iter().position(|h| h == "processes").unwrap();
    assert_eq!(rows[1][p], "1");

    let (code, _, stderr) =
        run(bench(&tmp.path().join("x"), &grid).args(["--processes", "2", "--in-process"]));
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("--in-process"), "{stderr}");
}
