//! `bertbench compare` end to end on synthetic runs: results.json files built from seeded
//! pseudo-random timings, a 20% slowdown, a 20% speedup and two draws of the same distribution.

mod common;

use std::path::{Path, PathBuf};

use bertbench::bench::Status;
use common::synthetic::*;
use common::*;

/// A base run and a new run of one cell whose median is `factor` times the base's.
fn pair(tmp: &Path, factor: f64) -> (PathBuf, PathBuf) {
    let base = write_run(
        &tmp.join("base"),
        vec![measured(cell("bert", 8), timings(1, 0.100))],
    );
    let new = write_run(
        &tmp.join("new"),
        vec![measured(cell("bert", 8), timings(2, 0.100 * factor))],
    );
    (base, new)
}

fn compare(base: &Path, new: &Path, extra: &[&str]) -> (i32, String, String) {
    run(bin().arg("compare").arg(base).arg(new).args(extra))
}

#[test]
fn a_20_percent_slowdown_is_a_regression_and_exits_5() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, new) = pair(tmp.path(), 1.2);
    let (code, out, err) = compare(&base, &new, &[]);
    assert_eq!(code, 5, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        !err.contains("error"),
        "a regression is a verdict, not an error: {err}"
    );
    let line = out.lines().find(|l| l.starts_with("bert")).unwrap();
    assert!(line.ends_with("regressed"), "{line}");
    assert!(
        line.contains("+2") || line.contains("+1"),
        "change about +20%: {line}"
    );
    assert!(out.contains("1 cell(s) compared: 1 regressed, 0 improved, 0 no change"));

    // The same data with a 25% threshold: significant, but not large enough.
    let (code, out, _) = compare(&base, &new, &["--threshold", "0.25"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("0 regressed, 0 improved, 1 no change"),
        "{out}"
    );
}

#[test]
fn the_same_distribution_is_no_change_and_exits_0() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, new) = pair(tmp.path(), 1.0);
    let (code, out, err) = compare(&base, &new, &[]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let line = out.lines().find(|l| l.starts_with("bert")).unwrap();
    assert!(line.ends_with("no change"), "{line}");
}

#[test]
fn a_20_percent_speedup_is_an_improvement_and_exits_0() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, new) = pair(tmp.path(), 1.0 / 1.2);
    let (code, out, err) = compare(&base, &new, &[]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let line = out.lines().find(|l| l.starts_with("bert")).unwrap();
    assert!(line.ends_with("improved"), "{line}");
    assert!(
        out.contains("0 regressed, 1 improved, 0 no change"),
        "{out}"
    );
}

#[test]
fn every_kind_of_cell_in_json() {
    let tmp = tempfile::tempdir().unwrap();
    let base = write_run(
        &tmp.path().join("base"),
        vec![
            measured(cell("bert", 1), timings(10, 0.05)),
            measured(cell("bert", 2), timings(11, 0.09)),
            measured(cell("bert", 4), timings(12, 0.17)),
            measured(cell("distilbert", 1), timings(13, 0.03)),
            failed(cell("bert", 64), Status::TooLarge),
        ],
    );
    let new = write_run(
        &tmp.path().join("new"),
        vec![
            measured(cell("bert", 1), timings(20, 0.06)),
            measured(cell("bert", 2), timings(21, 0.09)),
            measured(cell("bert", 4), timings(22, 0.13)),
            failed(cell("bert", 64), Status::Crashed),
            measured(cell("squeezebert", 1), timings(23, 0.04)),
        ],
    );
    let (code, out, err) = compare(&base, &new, &["--json"]);
    assert_eq!(code, 5, "stdout:\n{out}\nstderr:\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let verdicts: Vec<(String, u64, String)> = v["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["cell"]["model"].as_str().unwrap().to_string(),
                c["cell"]["batch_size"].as_u64().unwrap(),
                c["verdict"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected = [
        ("bert", 1, "regressed"),
        ("bert", 2, "no_change"),
        ("bert", 4, "improved"),
        ("distilbert", 1, "only_in_base"),
        ("bert", 64, "not_comparable"),
        ("squeezebert", 1, "only_in_new"),
    ];
    assert_eq!(
        verdicts,
        expected.map(|(m, b, v)| (m.to_string(), b, v.to_string()))
    );
    let regressed = &v["cells"][0];
    let change = regressed["speed"]["change"].as_f64().unwrap();
    assert!((0.1..0.3).contains(&change), "{change}");
    assert!(regressed["speed"]["p_value"].as_f64().unwrap() < 1e-6);
    assert_eq!(v["cells"][4]["base_status"], "too_large");
    assert_eq!(v["cells"][4]["new_status"], "crashed");
    assert_eq!(
        v["cells"][4]["note"],
        "base: too_large (synthetic); new: crashed (synthetic)"
    );
    assert_eq!(v["options"]["threshold"], 0.05);

    // The table names the statuses of cells it cannot compare.
    let (code, out, _) = compare(&base, &new, &[]);
    assert_eq!(code, 5);
    assert!(
        out.contains("not comparable (too_large / crashed)"),
        "{out}"
    );
    assert!(
        out.contains("1 only in base; 1 only in new; 1 not comparable"),
        "{out}"
    );
}

#[test]
fn bad_inputs_are_input_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, _) = pair(tmp.path(), 1.0);
    let missing = tmp.path().join("nowhere");
    let (code, _, err) = compare(&base, &missing, &[]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("nowhere/results.json") && err.contains("no such file"),
        "{err}"
    );

    let broken = tmp.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("results.json"), "{\"measurements\": [").unwrap();
    let (code, _, err) = compare(&broken, &base, &[]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("broken/results.json") && err.contains("not a bertbench results file"));

    // A results.json path works as well as its directory.
    let (code, _, err) = compare(&base.join("results.json"), &base, &[]);
    assert_eq!(code, 0, "{err}");

    for bad in [
        ["--alpha", "0"],
        ["--alpha", "1.5"],
        ["--threshold=-0.1", "--json"],
    ] {
        let (code, _, err) = compare(&base, &base, &bad);
        assert_eq!(code, 3, "{bad:?}: {err}");
    }
}
