//! `bertbench score` end to end: the exact output line, warnings and exit codes.

mod common;

use std::path::{Path, PathBuf};

use bertbench::squad::read_dataset;

fn dev_path() -> PathBuf {
    common::shared().join("data/squad/dev-v1.1.json.gz")
}

fn score(dataset: &Path, predictions: &Path) -> std::process::Output {
    common::bin()
        .arg("score")
        .arg(dataset)
        .arg(predictions)
        .output()
        .expect("run bertbench")
}

#[test]
fn score_prints_the_official_line() {
    let dev = read_dataset(&dev_path()).unwrap();
    // Gold answers for all but the first two questions.
    let preds: serde_json::Map<String, serde_json::Value> = dev
        .examples()
        .skip(2)
        .map(|e| (e.id.to_string(), e.answers[0].text.clone().into()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("predictions.json");
    std::fs::write(&path, serde_json::to_string(&preds).unwrap()).unwrap();

    let out = score(&dev_path(), &path);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // Python: 100.0 * 10568 / 10570
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "{\"exact_match\": 99.98107852412488, \"f1\": 99.98107852412488}\n"
    );
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("2 of 10570 questions have no prediction"),
        "{err}"
    );
}

#[test]
fn bad_predictions_file_exits_3_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("predictions.json");
    std::fs::write(&path, r#"{"56be4db0acb8001400a502ec": ["Denver Broncos"]}"#).unwrap();
    let out = score(&dev_path(), &path);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("predictions.json"), "{err}");
    assert!(
        err.contains("id \"56be4db0acb8001400a502ec\" must be a string, found a list"),
        "{err}"
    );
    assert!(out.stdout.is_empty());

    std::fs::write(&path, "{not json").unwrap();
    let out = score(&dev_path(), &path);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("not valid JSON"));

    let out = score(&dev_path(), &dir.path().join("missing.json"));
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("missing.json: cannot read"));
}

#[test]
fn squad2_dataset_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev-v2.0.json");
    std::fs::write(&data, r#"{"version": "v2.0", "data": []}"#).unwrap();
    let preds = dir.path().join("p.json");
    std::fs::write(&preds, "{}").unwrap();
    let out = score(&data, &preds);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("dev-v2.0.json") && err.contains("SQuAD 2.0"),
        "{err}"
    );
}
