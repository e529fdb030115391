//! A grid split over a cluster, for real: `bench --shard K/N` in separate processes, `merge`
//! of the parts (and its refusals), a killed shard resumed, and a report across machines.
//! Tiny fixture models and tiny timing budgets: these tests check behaviour, not speed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// 2 models x batch 1, 2 x sequence 8, 16: eight cells, in one process each, with tiny timing
/// budgets; a flag in `extra` replaces its default.
fn bench(out: &Path, extra: &[&str]) -> Command {
    let mut cmd = bin();
    cmd.arg("bench")
        .arg("--models")
        .arg(parity_dir("bert"))
        .arg(parity_dir("distilbert"))
        .arg("--output-dir")
        .arg(out)
        .args(["--no-peak", "--offline"])
        .args(extra)
        .env_remove(bertbench::bench::child::FAULT_ENV);
    let defaults: [(&str, &[&str]); 7] = [
        ("--batch-sizes", &["1", "2"]),
        ("--sequence-lengths", &["8", "16"]),
        ("--repeat", &["3"]),
        ("--min-time", &["0"]),
        ("--max-warmup-runs", &["2"]),
        ("--threads", &["1"]),
        ("--processes", &["1"]),
    ];
    for (flag, values) in defaults {
        if !extra.contains(&flag) {
            cmd.arg(flag).args(values);
        }
    }
    cmd
}

fn merge(out: &Path, shards: &[&Path], extra: &[&str]) -> (i32, String, String) {
    run(bin().arg("merge").arg(out).args(shards).args(extra))
}

/// (model's last path component, batch, sequence) of every measured cell, in file order.
fn cells(json: &serde_json::Value, key: &str) -> Vec<(String, u64, u64)> {
    json[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let c = if key == "measurements" { &c["cell"] } else { c };
            let model = c["model"].as_str().unwrap();
            (
                model.rsplit('/').next().unwrap().to_string(),
                c["batch_size"].as_u64().unwrap(),
                c["sequence_length"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn results(dir: &Path) -> serde_json::Value {
    read_json(&dir.join("results.json"))
}

/// A copy of a shard folder with its results.json edited by `edit`.
fn edited_copy(from: &Path, to: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    let mut json = results(from);
    edit(&mut json);
    std::fs::write(to.join("results.json"), json.to_string()).unwrap();
    to.to_path_buf()
}

/// Three shards run as three processes at once hold every cell of the unsharded grid exactly
/// once; `merge` joins them into the unsharded run's plan, in its order; and everything that
/// does not belong together is refused with the reason.
#[test]
fn shards_merge_into_the_whole_grid_and_refuse_what_does_not_belong() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    let (code, _, stderr) = run(&mut bench(&whole, &[]));
    assert_eq!(code, 0, "{stderr}");
    let whole_plan = cells(&results(&whole), "plan");
    assert_eq!(whole_plan.len(), 8);

    let dirs: Vec<PathBuf> = (1..=3)
        .map(|k| tmp.path().join(format!("shard-{k}")))
        .collect();
    let mut children: Vec<_> = dirs
        .iter()
        .enumerate()
        .map(|(i, dir)| {
            let shard = format!("{}/3", i + 1);
            bench(dir, &["--shard", &shard])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut union = Vec::new();
    for (child, dir) in children.iter_mut().zip(&dirs) {
        assert!(child.wait().unwrap().success(), "{}", dir.display());
        let json = results(dir);
        let shard = &json["shard"];
        assert_eq!(shard["count"], 3);
        assert_eq!(
            cells(shard, "grid"),
            whole_plan,
            "every shard records the grid"
        );
        let measured = cells(&json, "measurements");
        assert_eq!(measured, cells(&json, "plan"), "{}", dir.display());
        assert!(!measured.is_empty(), "eight cells over three shards");
        union.extend(measured);
    }
    union.sort();
    let mut want = whole_plan.clone();
    want.sort();
    assert_eq!(union, want, "each cell in exactly one shard");

    // Merged: the whole plan in the grid's order, every cell measured, the CSVs complete.
    let merged = tmp.path().join("merged");
    let shards: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    let (code, stdout, stderr) = merge(&merged, &shards, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("merged 3 shards: 8 of 8 cells"), "{stdout}");
    let json = results(&merged);
    assert_eq!(cells(&json, "plan"), whole_plan);
    assert_eq!(cells(&json, "measurements"), whole_plan);
    assert!(json.get("shard").is_none());
    let csv = std::fs::read_to_string(merged.join("inference_time.csv")).unwrap();
    assert_eq!(csv.lines().count(), 9, "{csv}");
    assert!(!csv.contains("N/A"), "{csv}");
    let env = std::fs::read_to_string(merged.join("env.csv")).unwrap();
    assert!(env.contains("merged_shards,3 of 3"), "{env}");

    // Refusals, each naming what is wrong.
    let refused = |out: &str, shards: &[&Path], extra: &[&str], want: &str| {
        let (code, _, stderr) = merge(&tmp.path().join(out), shards, extra);
        assert_eq!(code, 3, "{want}: {stderr}");
        assert!(stderr.contains(want), "expected {want:?} in: {stderr}");
    };
    let (s1, s2, s3) = (shards[0], shards[1], shards[2]);
    // The merged folder exists: never written over.
    refused("merged", &shards, &[], "not empty");
    // A missing shard: its cells listed, and how to finish them.
    refused("m1", &[s1, s2], &[], "shards not given: 3/3");
    refused("m1", &[s1, s2], &[], "--allow-missing");
    let (code, _, stderr) = merge(&tmp.path().join("partial"), &[s1, s2], &["--allow-missing"]);
    assert_eq!(code, 0, "{stderr}");
    let partial = results(&tmp.path().join("partial"));
    assert_eq!(
        cells(&partial, "plan"),
        whole_plan,
        "missing cells stay planned"
    );
    let missing = cells(&results(s3), "measurements").len();
    assert_eq!(cells(&partial, "measurements").len(), 8 - missing);
    // The same shard twice.
    refused("m2", &[s1, s1, s2, s3], &[], "given twice");
    // A cell in two shards (a copy of shard 1 that calls itself shard 3).
    let fake = edited_copy(s1, &tmp.path().join("fake-3"), |j| {
        j["shard"]["index"] = 3.into()
    });
    refused("m3", &[s1, s2, &fake], &[], "measured twice");
    // Another bertbench version, other settings, another grid, another machine.
    let other = edited_copy(s3, &tmp.path().join("v"), |j| {
        j["bertbench_version"] = "0.0.1".into()
    });
    refused("m4", &[s1, s2, &other], &[], "bertbench");
    let other = edited_copy(s3, &tmp.path().join("seed"), |j| {
        j["settings"]["seed"] = 7.into()
    });
    refused("m5", &[s1, s2, &other], &[], "different settings");
    let other = edited_copy(s3, &tmp.path().join("grid"), |j| {
        j["shard"]["grid"].as_array_mut().unwrap().pop();
    });
    refused("m6", &[s1, s2, &other], &[], "different grids");
    let other = edited_copy(s3, &tmp.path().join("cpu"), |j| {
        for pair in j["environment"].as_array_mut().unwrap() {
            if pair[0] == "cpu" {
                pair[1] = "Another CPU".into();
            }
        }
    });
    refused("m7", &[s1, s2, &other], &[], "different kinds of machine");
    refused("m7", &[s1, s2, &other], &[], "bertbench report");
    // Blocks forced by BERTBENCH_BLOCKING in one shard only.
    let other = edited_copy(s3, &tmp.path().join("blocking"), |j| {
        for pair in j["environment"].as_array_mut().unwrap() {
            if pair[0] == "blocking" {
                pair[1] = "84,768".into();
            }
        }
    });
    refused(
        "m9",
        &[s1, s2, &other],
        &[],
        "blocking \"rule\" vs \"84,768\"",
    );
    // An unsharded run is not a shard.
    refused("m8", &[s1, s2, &whole], &[], "not a shard");

    // Resuming a shard's folder with another shard, or without one, is refused.
    let (code, _, stderr) = run(&mut bench(s2, &["--shard", "1/3", "--resume"]));
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("--shard 2/3"), "{stderr}");
    let (code, _, stderr) = run(&mut bench(s2, &["--resume"]));
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("of a grid of 8 cells; resume it with the same grid and --shard 2/3\n"),
        "{stderr}"
    );
    let (code, _, stderr) = run(&mut bench(&whole, &["--shard", "1/3", "--resume"]));
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("unsharded"), "{stderr}");
    // Without a scheduler, --shard auto says what it looked for.
    let (code, _, stderr) = run(bench(&tmp.path().join("auto"), &["--shard", "auto"])
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX"));
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("SLURM_ARRAY_TASK_ID"), "{stderr}");
    // As a Slurm array task would see it: task 12 of an array 10-12 is shard 3/3.
    let auto = tmp.path().join("auto-slurm");
    let (code, _, stderr) = run(bench(&auto, &["--shard", "auto"])
        .env("SLURM_ARRAY_TASK_ID", "12")
        .env("SLURM_ARRAY_TASK_MIN", "10")
        .env("SLURM_ARRAY_TASK_MAX", "12")
        .env("SLURM_ARRAY_TASK_COUNT", "3"));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        cells(&results(&auto), "plan"),
        cells(&results(s3), "plan"),
        "the same split in every task"
    );
}

/// A shard killed mid-run keeps the cells it finished, `--resume` measures the rest, and the
/// resumed shard merges with the others.
#[test]
fn a_killed_shard_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard-1");
    // Cells of at least 0.3 s each (no cap on the runs), so there is time to kill it between
    // cells.
    let mut child = bench(
        &dir,
        &[
            "--shard",
            "1/2",
            "--min-time",
            "0.3",
            "--max-runs",
            "1000000",
        ],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let start = Instant::now();
    let measured_so_far = || {
        std::fs::read_to_string(dir.join("results.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .map_or(0, |j| j["measurements"].as_array().map_or(0, Vec::len))
    };
    while measured_so_far() == 0 && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let finished = measured_so_far();
    assert!(finished >= 1, "no cell finished in two minutes");
    let json = results(&dir);
    let planned = cells(&json, "plan").len();
    let kept = cells(&json, "measurements");
    assert!(
        kept.len() >= finished && kept.len() < planned,
        "{kept:?} of {planned}"
    );

    let (code, _, stderr) = run(&mut bench(&dir, &["--shard", "1/2", "--resume"]));
    assert_eq!(code, 0, "{stderr}");
    let json = results(&dir);
    let measured = cells(&json, "measurements");
    assert_eq!(measured.len(), planned, "the rest measured");
    for cell in &kept {
        assert!(measured.contains(cell), "{cell:?} kept");
    }
    let other = tmp.path().join("shard-2");
    let (code, _, stderr) = run(&mut bench(&other, &["--shard", "2/2"]));
    assert_eq!(code, 0, "{stderr}");
    let merged = tmp.path().join("merged");
    let (code, stdout, stderr) = merge(&merged, &[&dir, &other], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("8 of 8 cells"), "{stdout}");
}

/// Two result folders as two machines (here: the same grid at one and at two threads, named
/// as machines): side-by-side times, the ratio of each cell recomputed from the two
/// results.json, the cheapest machine per cell from the prices, the serving rates of loadgen
/// runs in the folders with their cost, and plots with a line per machine x model; and the
/// refusals of a report across machines.
#[test]
fn a_report_compares_machines_with_their_prices() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = ["--batch-sizes", "1", "--sequence-lengths", "8", "16"];
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let (code, _, stderr) = run(&mut bench(&a, &grid));
    assert_eq!(code, 0, "{stderr}");
    let grid_2 = [&grid[..], &["--threads", "2"]].concat();
    let (code, _, stderr) = run(&mut bench(&b, &grid_2));
    assert_eq!(code, 0, "{stderr}");
    // Serving results in each machine's folder (MiniLM, every one of 12 questions once).
    for (dir, threads) in [(&a, "1"), (&b, "2")] {
        let (code, _, stderr) = run(bin()
            .arg("loadgen")
            .arg("--model")
            .arg(minilm_dir())
            .arg("--dataset")
            .arg(shared().join("data/squad/dev-v1.1.json.gz"))
            .args(["--scenario", "offline", "--accuracy", "--limit", "12"])
            .args(["--threads", threads, "--output-dir"])
            .arg(dir.join("loadgen-minilm")));
        assert_eq!(code, 0, "{stderr}");
    }
    let out = tmp.path().join("machines");
    let report = |extra: &[&str]| {
        run(bin()
            .arg("report")
            .arg(&a)
            .arg(&b)
            .arg("--output-dir")
            .arg(&out)
            .args(extra))
    };
    let (code, stdout, stderr) = report(&[
        "--machine-names",
        "small",
        "large",
        "--price-per-hour",
        "0.10",
        "0.35",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("report.html"), "{stdout}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for want in [
        "## Machines",
        "| small |",
        "| large |",
        "speed relative to small",
        "USD per 1000 sequences",
        "cheapest",
    ] {
        assert!(md.contains(want), "{want:?} missing:\n{md}");
    }
    // Each cell's ratio and cheapest machine, recomputed from the two results.json.
    let (ja, jb) = (results(&a), results(&b));
    for model in ["bert", "distilbert"] {
        for seq in [8u64, 16] {
            let time = |j: &serde_json::Value| {
                measurement_of(j, model, 1, seq)["speed"]["summary"]["median"]
                    .as_f64()
                    .unwrap()
            };
            let (ta, tb) = (time(&ja), time(&jb));
            let row = md
                .lines()
                .find(|l| {
                    l.starts_with(&format!("| {model} | 1 | {seq} |"))
                        && l.contains(" [")
                        && l.matches('|').count() == 5
                })
                .unwrap_or_else(|| panic!("no ratio row for {model} s{seq}:\n{md}"));
            assert!(
                row.contains(&format!("| {:.2} [", ta / tb)),
                "{row} vs {ta} / {tb}"
            );
            let usd = |t: f64, price: f64| 1000.0 * t / 3600.0 * price;
            let cheapest = if usd(ta, 0.10) <= usd(tb, 0.35) {
                "small"
            } else {
                "large"
            };
            let cost_row = md
                .lines()
                .find(|l| {
                    l.starts_with(&format!("| {model} | 1 | {seq} |"))
                        && l.contains("0.0")
                        && !l.contains(" [")
                })
                .unwrap_or_else(|| panic!("no cost row for {model} s{seq}:\n{md}"));
            // The cheapest by the point, "tied" when the intervals cannot separate the two.
            let last = cost_row.trim_end_matches(" |").rsplit("| ").next().unwrap();
            assert!(last.starts_with(cheapest), "{cost_row}");
        }
    }
    // The serving table: each machine's rate from its loadgen.json, USD per million questions
    // at its price, and the cheaper machine.
    let qps = |dir: &Path| {
        read_json(&dir.join("loadgen-minilm/loadgen.json"))["metric"]
            .as_f64()
            .unwrap()
    };
    let (qa, qb) = (qps(&a), qps(&b));
    let per_million = |q: f64, price: f64| 1e6 / q / 3600.0 * price;
    let (ua, ub) = (per_million(qa, 0.10), per_million(qb, 0.35));
    let row = md
        .lines()
        .find(|l| l.contains("| offline |"))
        .unwrap_or_else(|| panic!("no serving row:\n{md}"));
    assert!(
        row.contains(&format!("| {qa:.2} | {qb:.2} | {ua:.2} | {ub:.2} |")),
        "{row}"
    );
    let cheaper = if ua <= ub { "| small |" } else { "| large |" };
    assert!(row.ends_with(cheaper), "{row}");
    for plot in [
        "inference_time_vs_sequence.png",
        "inference_memory_vs_sequence.png",
    ] {
        assert!(out.join("plots").join(plot).is_file(), "{plot}");
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("small: bert") && html.contains("large: distilbert"));

    // Refusals.
    let refused = |args: &[&str], want: &str| {
        let (code, _, stderr) = report(args);
        assert_eq!(code, 3, "{want}: {stderr}");
        assert!(stderr.contains(want), "expected {want:?} in: {stderr}");
    };
    refused(&["--machine-names", "one"], "2 result folders");
    refused(&["--price-per-hour", "1"], "one per folder");
    refused(&["--machine-names", "x", "x"], "given twice");
    refused(
        &["--prices", "builtin", "--machine", "aws"],
        "--machine-names",
    );
    let (code, _, stderr) = run(bin().arg("report").arg(&a).arg(&b));
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("--output-dir"), "{stderr}");
    // Without names, machines are named from env.csv; the same machine twice gets "#2".
    let (code, _, stderr) = report(&[]);
    assert_eq!(code, 0, "{stderr}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains(" #2 |"), "{md}");
}
