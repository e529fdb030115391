//! Windows and labels over the whole SQuAD v1.1 dev set (10,570 questions, ~2 s).

use std::path::{Path, PathBuf};

use bertbench::squad::data::char_slice;
use bertbench::squad::{
    decode_predictions, evaluate, load_tokenizer, normalize_answer, predictions_map, read_dataset,
    DecodeConfig, Feature, FeatureConfig,
};

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

/// FNV-1a 64 over 8-byte little-endian integers, as `tests/data/squad_dev_windows_fingerprint.py`.
struct Fnv(u64);

impl Fnv {
    fn feed(&mut self, x: u64) {
        for b in x.to_le_bytes() {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x100000001b3);
        }
    }
}

#[test]
fn dev_windows_match_python_tokenizers_and_labels_recover_answers() {
    let dev = read_dataset(&shared().join("data/squad/dev-v1.1.json.gz")).unwrap();
    let examples: Vec<_> = dev.examples().collect();
    let tok = load_tokenizer(&shared().join("vocab/bert-base-uncased-vocab.txt")).unwrap();
    let cfg = FeatureConfig::default();

    let pairs: Vec<(&str, &str)> = examples.iter().map(|e| (e.question, e.context)).collect();
    let windows = tok.windows(&pairs, &cfg).unwrap();
    // Count and fingerprint from Python tokenizers 0.23.3 with the same pipeline.
    assert_eq!(windows.len(), 10784);
    let mut h = Fnv(0xcbf29ce484222325);
    for w in &windows {
        h.feed(w.example_index as u64);
        for t in 0..w.input_ids.len() {
            h.feed(w.input_ids[t].into());
            h.feed(w.token_type_ids[t].into());
            h.feed(w.attention_mask[t].into());
            h.feed(w.offsets[t].0 as u64);
            h.feed(w.offsets[t].1 as u64);
            h.feed(w.sequence_ids[t].map_or(9, |s| s as u64));
        }
    }
    assert_eq!(h.0, 0x47fb9002ea606104);

    // Tokenising once for both checks keeps the test fast; `features()` is this same mapping
    // (the fixture test covers it).
    let features: Vec<Feature> = windows
        .into_iter()
        .map(|w| {
            let e = examples[w.example_index];
            Feature::from_window(w, &e)
        })
        .collect();
    assert_eq!(features.len(), 10784);
    let mut covered = vec![false; examples.len()];
    let mut recovered = 0usize;
    let mut labelled = 0usize;
    for f in &features {
        assert_eq!(f.input_ids.len(), 384);
        if f.start_position == 0 {
            assert_eq!(f.end_position, 0);
            continue;
        }
        labelled += 1;
        covered[f.example_index] = true;
        let e = &examples[f.example_index];
        let (s, _) = f.offsets[f.start_position].expect("label on a context token");
        let (_, end) = f.offsets[f.end_position].expect("label on a context token");
        let text = char_slice(e.context, s, end).unwrap();
        if normalize_answer(text) == normalize_answer(&e.answers[0].text) {
            recovered += 1;
        }
    }
    // Every question's first answer lies fully inside at least one window.
    assert!(covered.iter().all(|c| *c));
    // Token boundaries make a few labelled spans wider than the answer ("1990" in "1990s").
    assert_eq!(labelled, 10612);
    assert_eq!(recovered, 10580);

    // Logits that point at the labels decode back to the labelled spans: features -> decode
    // -> metric end to end on real windows.
    let (starts, ends): (Vec<Vec<f32>>, Vec<Vec<f32>>) = features
        .iter()
        .map(|f| {
            let mut s = vec![0.0f32; f.input_ids.len()];
            let mut e = s.clone();
            if f.start_position != 0 {
                s[f.start_position] = 10.0;
                e[f.end_position] = 10.0;
            }
            (s, e)
        })
        .unzip();
    let preds = decode_predictions(
        &examples,
        &features,
        &starts,
        &ends,
        &DecodeConfig::default(),
    )
    .unwrap();
    assert_eq!(preds.len(), 10570);
    assert!(preds.iter().all(|p| (1..=20).contains(&p.nbest.len())));
    // Each prediction is the labelled span of the question's first window that has one,
    // unless that span is longer than max_answer_length (30) tokens and so may not be chosen.
    let mut expected: Vec<Option<String>> = vec![None; examples.len()];
    let mut too_long = vec![false; examples.len()];
    for f in &features {
        if f.start_position != 0 && f.end_position - f.start_position + 1 > 30 {
            too_long[f.example_index] = true;
        }
        if f.start_position != 0 && expected[f.example_index].is_none() {
            let (s, _) = f.offsets[f.start_position].unwrap();
            let (_, e) = f.offsets[f.end_position].unwrap();
            let context = examples[f.example_index].context;
            expected[f.example_index] = Some(char_slice(context, s, e).unwrap().to_string());
        }
    }
    for ((p, x), long) in preds.iter().zip(&expected).zip(&too_long) {
        if !long {
            assert_eq!(Some(&p.text), x.as_ref(), "question {}", p.id);
        }
    }
    assert_eq!(too_long.iter().filter(|l| **l).count(), 9);
    let score = evaluate(&dev, &predictions_map(&preds));
    assert_eq!(score.missing, 0);
    assert!(score.exact_match > 99.6 && score.f1 > 99.7, "{score:?}");
}
