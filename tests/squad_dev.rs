//! The official-metric port against the real SQuAD v1.1 dev set (`../shared/data/squad`).
//!
//! Expected numbers were computed with the official `evaluate-v1.1.py` logic under Python
//! 3.11 (`tests/data/squad_metric_cases.py` prints them); they are compared bit for bit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bertbench::squad::data::char_slice;
use bertbench::squad::{evaluate, read_dataset, Dataset};

fn dev_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/squad/dev-v1.1.json.gz")
}

fn dev() -> Dataset {
    read_dataset(&dev_path()).expect("dev set readable")
}

#[test]
fn dev_set_shape() {
    let d = dev();
    assert_eq!(d.version, "1.1");
    assert_eq!(d.articles.len(), 48);
    assert_eq!(
        d.articles.iter().map(|a| a.paragraphs.len()).sum::<usize>(),
        2067
    );
    assert_eq!(d.num_questions(), 10570);
    assert_eq!(d.examples().map(|e| e.answers.len()).sum::<usize>(), 34726);
    assert!(d.answer_start_mismatches().is_empty());
}

#[test]
fn gold_answers_score_100() {
    let d = dev();
    let preds: HashMap<String, String> = d
        .examples()
        .map(|e| (e.id.to_string(), e.answers[0].text.clone()))
        .collect();
    let s = evaluate(&d, &preds);
    assert_eq!((s.exact_match, s.f1), (100.0, 100.0));
    assert_eq!((s.total, s.missing, s.unknown_ids), (10570, 0, 0));
    assert_eq!(
        s.to_official_json(),
        r#"{"exact_match": 100.0, "f1": 100.0}"#
    );
}

#[test]
fn empty_answers_match_only_the_three_dot_answers() {
    let d = dev();
    let preds: HashMap<String, String> = d
        .examples()
        .map(|e| (e.id.to_string(), String::new()))
        .collect();
    let s = evaluate(&d, &preds);
    assert_eq!(s.exact_match, 100.0 * 3.0 / 10570.0);
    assert_eq!(s.f1, 0.0);
    assert_eq!(
        s.to_official_json(),
        r#"{"exact_match": 0.02838221381267739, "f1": 0.0}"#
    );
}

#[test]
fn sharp_s_upper_cased_does_not_match() {
    // Python: "FUSSACH".lower() == "fussach" != "fußach"; the two "Fußach" questions are the
    // only ones whose upper-cased gold answer stops matching.
    let d = dev();
    let preds: HashMap<String, String> = d
        .examples()
        .map(|e| (e.id.to_string(), e.answers[0].text.to_uppercase()))
        .collect();
    assert_eq!(preds["572f5875947a6a140053c89b"], "FUSSACH");
    let s = evaluate(&d, &preds);
    assert_eq!(s.exact_match, 99.98107852412488);
    assert_eq!(s.f1, 99.98107852412488);

    let one: HashMap<String, String> = [(
        "572f5875947a6a140053c89b".to_string(),
        "FUSSACH".to_string(),
    )]
    .into();
    let s = evaluate(&d, &one);
    assert_eq!((s.exact_match, s.f1, s.missing), (0.0, 0.0, 10569));
}

#[test]
fn imperfect_predictions_with_missing_ones_match_the_official_digits() {
    // The first gold answer widened by 7 characters on the left and 5 on the right (Python
    // str indices); every 10th question has no prediction.
    let d = dev();
    let mut preds = HashMap::new();
    for (i, e) in d.examples().enumerate() {
        if i % 10 == 9 {
            continue;
        }
        let a = &e.answers[0];
        let n = e.context.chars().count();
        let start = a.answer_start.saturating_sub(7);
        let end = (a.answer_start + a.text.chars().count() + 5).min(n);
        preds.insert(
            e.id.to_string(),
            char_slice(e.context, start, end).unwrap().to_string(),
        );
    }
    preds.insert("not-a-dev-id".into(), "x".into());
    let s = evaluate(&d, &preds);
    assert_eq!(s.missing, 1057);
    assert_eq!(s.unknown_ids, 1);
    assert_eq!(
        s.to_official_json(),
        r#"{"exact_match": 0.38789025543992434, "f1": 57.004256451627164}"#
    );
}
