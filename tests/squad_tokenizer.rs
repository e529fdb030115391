//! QA tokenisation against `../shared/fixtures/tokenizer_qa_reference.json`, made with Hugging
//! Face's fast BERT tokenizer (`max_length=64, truncation="only_second", stride=16,
//! return_overflowing_tokens, return_offsets_mapping, padding="max_length"`): 13 windows from
//! 5 (question, context) pairs, compared field by field.

use std::path::{Path, PathBuf};

use bertbench::squad::data::{char_slice, Answer, Example};
use bertbench::squad::{load_tokenizer, FeatureConfig, QaTokenizer};
use serde_json::Value;

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

fn tokenizer() -> QaTokenizer {
    load_tokenizer(&shared().join("vocab/bert-base-uncased-vocab.txt")).unwrap()
}

fn reference() -> Value {
    let text =
        std::fs::read_to_string(shared().join("fixtures/tokenizer_qa_reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The reference's windowing; questions are short, so max_query_length does not cut them.
const CFG: FeatureConfig = FeatureConfig {
    max_seq_length: 64,
    doc_stride: 16,
    max_query_length: 32,
};

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn pair(v: &Value) -> (usize, usize) {
    (
        v[0].as_u64().unwrap() as usize,
        v[1].as_u64().unwrap() as usize,
    )
}

struct Ex {
    id: String,
    question: String,
    context: String,
    answers: Vec<Answer>,
}

fn examples(r: &Value) -> Vec<Ex> {
    r["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| Ex {
            id: e["id"].as_str().unwrap().into(),
            question: e["question"].as_str().unwrap().into(),
            context: e["context"].as_str().unwrap().into(),
            answers: vec![Answer {
                text: e["answer_text"].as_str().unwrap().into(),
                answer_start: e["answer_start"].as_u64().unwrap() as usize,
            }],
        })
        .collect()
}

#[test]
fn windows_match_the_python_reference_in_every_field() {
    let r = reference();
    let exs = examples(&r);
    let pairs: Vec<(&str, &str)> = exs
        .iter()
        .map(|e| (e.question.as_str(), e.context.as_str()))
        .collect();
    let windows = tokenizer().windows(&pairs, &CFG).unwrap();
    let expected = r["features"].as_array().unwrap();
    assert_eq!(windows.len(), 13);
    assert_eq!(windows.len(), expected.len());
    for (i, (w, x)) in windows.iter().zip(expected).enumerate() {
        assert_eq!(
            w.example_index as u64,
            x["overflow_to_sample_mapping"].as_u64().unwrap(),
            "window {i} sample"
        );
        assert_eq!(w.input_ids, u32s(&x["input_ids"]), "window {i} ids");
        assert_eq!(
            w.token_type_ids,
            u32s(&x["token_type_ids"]),
            "window {i} type ids"
        );
        assert_eq!(
            w.attention_mask,
            u32s(&x["attention_mask"]),
            "window {i} mask"
        );
        let offsets: Vec<(usize, usize)> = x["offset_mapping"]
            .as_array()
            .unwrap()
            .iter()
            .map(pair)
            .collect();
        assert_eq!(w.offsets, offsets, "window {i} offsets");
        let seq: Vec<Option<usize>> = x["sequence_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_u64().map(|v| v as usize))
            .collect();
        assert_eq!(w.sequence_ids, seq, "window {i} sequence ids");
    }
}

#[test]
fn features_carry_context_offsets_and_answer_labels() {
    let r = reference();
    let exs = examples(&r);
    let examples: Vec<Example> = exs
        .iter()
        .map(|e| Example {
            id: &e.id,
            title: "",
            question: &e.question,
            context: &e.context,
            answers: &e.answers,
        })
        .collect();
    let features = tokenizer().features(&examples, &CFG).unwrap();
    let expected = r["features"].as_array().unwrap();
    assert_eq!(features.len(), expected.len());
    for (i, (f, x)) in features.iter().zip(expected).enumerate() {
        assert_eq!(
            f.example_index as u64,
            x["overflow_to_sample_mapping"].as_u64().unwrap()
        );
        assert_eq!(f.input_ids, u32s(&x["input_ids"]), "feature {i}");
        assert_eq!(
            (f.start_position, f.end_position),
            pair(&x["answer_token_span"]),
            "feature {i} answer span"
        );
        // Offsets only for context tokens.
        for (t, (o, s)) in f
            .offsets
            .iter()
            .zip(x["sequence_ids"].as_array().unwrap())
            .enumerate()
        {
            let expect = (s.as_u64() == Some(1)).then(|| pair(&x["offset_mapping"][t]));
            assert_eq!(*o, expect, "feature {i} token {t}");
        }
        // The labelled span cuts the answer text out of the context (code-point offsets).
        if let Some(text) = x["answer_text_from_span"].as_str() {
            let (s, _) = f.offsets[f.start_position].unwrap();
            let (_, e) = f.offsets[f.end_position].unwrap();
            let context = examples[f.example_index].context;
            assert_eq!(char_slice(context, s, e).unwrap(), text, "feature {i}");
        }
    }
}

#[test]
fn long_questions_are_cut_to_max_query_length_tokens() {
    let tok = tokenizer();
    let question = "Which of the transcontinental railroads, surveyed in the 1850s and \
                    authorised by the Pacific Railway Act of 1862, met at Promontory Summit in \
                    Utah where a ceremonial golden spike was driven by the Central Pacific and \
                    Union Pacific companies after thousands of labourers laid track?";
    let full = tok.tokenizer().encode(question, false).unwrap();
    assert!(full.len() > 40, "{}", full.len());
    let context = "The first transcontinental railroad opened on May 10, 1869. ".repeat(20);
    let cfg = FeatureConfig {
        max_seq_length: 128,
        doc_stride: 32,
        max_query_length: 20,
    };
    let windows = tok.windows(&[(question, &context)], &cfg).unwrap();
    assert!(windows.len() > 2);
    for w in &windows {
        let q: Vec<u32> = w
            .input_ids
            .iter()
            .zip(&w.sequence_ids)
            .filter(|(_, s)| **s == Some(0))
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(q, full.get_ids()[..20]);
        assert_eq!(w.input_ids.len(), 128);
    }
    // Without the cut the question would take 40+ of the 128 positions.
    let ctx_tokens = windows[0]
        .sequence_ids
        .iter()
        .filter(|s| **s == Some(1))
        .count();
    assert_eq!(ctx_tokens, 128 - 20 - 3);
}

#[test]
fn tokenizer_json_presets_are_reset() {
    // A tokenizer.json that pads everything to 16 and truncates to 16 (like MiniLM's 128):
    // loading it must give the same windows as the bare vocabulary.
    let vocab_tok = tokenizer();
    let mut preset = vocab_tok.tokenizer().clone();
    preset
        .with_truncation(Some(tokenizers::TruncationParams {
            max_length: 16,
            ..Default::default()
        }))
        .unwrap();
    preset.with_padding(Some(tokenizers::PaddingParams {
        strategy: tokenizers::PaddingStrategy::Fixed(16),
        ..Default::default()
    }));
    let dir = tempfile::tempdir().unwrap();
    preset
        .save(dir.path().join("tokenizer.json"), false)
        .unwrap();
    let json_tok = load_tokenizer(dir.path()).unwrap();
    assert!(json_tok.tokenizer().get_padding().is_none());
    assert!(json_tok.tokenizer().get_truncation().is_none());

    let r = reference();
    let exs = examples(&r);
    let pairs: Vec<(&str, &str)> = exs
        .iter()
        .map(|e| (e.question.as_str(), e.context.as_str()))
        .collect();
    assert_eq!(
        json_tok.windows(&pairs, &CFG).unwrap(),
        vocab_tok.windows(&pairs, &CFG).unwrap()
    );
}

#[test]
fn lower_casing_follows_tokenizer_config() {
    let dir = tempfile::tempdir().unwrap();
    let vocab =
        std::fs::read_to_string(shared().join("vocab/bert-base-uncased-vocab.txt")).unwrap();
    // A cased vocabulary needs cased entries: add "Paris" so the difference is visible.
    std::fs::write(dir.path().join("vocab.txt"), format!("{vocab}Paris\n")).unwrap();
    let paris_id = 30522;
    let ids = |t: &QaTokenizer| {
        t.tokenizer()
            .encode("Paris", false)
            .unwrap()
            .get_ids()
            .to_vec()
    };

    let uncased = load_tokenizer(dir.path()).unwrap();
    assert_ne!(ids(&uncased), vec![paris_id], "lower-cases by default");

    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"do_lower_case": false}"#,
    )
    .unwrap();
    let cased = load_tokenizer(dir.path()).unwrap();
    assert_eq!(ids(&cased), vec![paris_id]);

    let e = load_tokenizer(&dir.path().join("nope")).unwrap_err();
    assert_eq!(bertbench::error::exit_code(&e), 3);
    let empty = tempfile::tempdir().unwrap();
    let e = load_tokenizer(empty.path()).unwrap_err();
    assert!(format!("{e}").contains("no tokenizer.json or vocab.txt"));
}

/// Answers widened to whole words as the QA pipeline's `align_to_words` does: a span that
/// starts or ends inside a word takes the word (the words of BERT's pre-tokenizer: runs
/// between whitespace and punctuation, each punctuation mark a word of its own).
#[test]
fn spans_align_to_the_pre_tokenizers_words() {
    let tok = tokenizer();
    let context = "so that the logo could feature the Arabic numerals (Super Bowl 50).";
    let at = |s: &str| {
        let b = context.find(s).unwrap();
        let start = context[..b].chars().count();
        (start, start + s.chars().count())
    };
    let aligned = |s: &str| {
        let (a, b) = tok.align_to_words(context, &[at(s)]).unwrap()[0];
        context.chars().skip(a).take(b - a).collect::<String>()
    };
    assert_eq!(aligned("merals"), "numerals");
    assert_eq!(aligned("Arabic numeral"), "Arabic numerals");
    assert_eq!(aligned("rabic nu"), "Arabic numerals");
    assert_eq!(aligned("feature the"), "feature the");
    assert_eq!(aligned("(Super"), "(Super");
    assert_eq!(aligned("Bowl 5"), "Bowl 50");
    // Punctuation is a word of its own: nothing to widen into.
    assert_eq!(aligned("50)"), "50)");
    // Several spans at once, each aligned; an empty span stays as it is.
    assert_eq!(
        tok.align_to_words(context, &[at("merals"), (3, 3), at("Bowl 5")])
            .unwrap(),
        [at("numerals"), (3, 3), at("Bowl 50")]
    );
}
