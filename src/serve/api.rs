//! What the server and its clients say to each other: the bodies of bertbench's own
//! `POST /v1/qa` and of Hugging Face's question-answering task, parsed with errors that name
//! the field, and turned into a query's [`QueryOptions`].
//!
//! Hugging Face's task (the Inference API's and `pipeline("question-answering")`'s
//! parameters): `{"inputs": {"question", "context"}, "parameters": {"top_k", "doc_stride",
//! "max_answer_len", "max_seq_len", "max_question_len", "handle_impossible_answer"}}`, answered
//! `{"answer", "score", "start", "end"}`, or a list of them, best first, when `top_k` > 1.
//! `align_to_words` (default true, as the pipeline's) widens answers to whole words.
//! Parameters left out take the server's settings (`run_qa.py`'s, as `eval`'s: answers at
//! most 30 tokens where the pipeline's default is 15). Spans are decoded as `run_qa.py`
//! decodes them (with `align_to_words: false`, the answers are `eval`'s), and `score` is a
//! span's probability over the n-best list (the pipeline multiplies per-window start and end
//! probabilities instead, so its scores differ in value, not in order within a window).

use serde::{Deserialize, Serialize};

use super::batcher::{Answer, QueryOptions};
use crate::squad::{DecodeConfig, FeatureConfig};

/// The QA APIs a client can speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// bertbench's own: `POST /v1/qa` with `{"question", "context"}`.
    #[default]
    Bertbench,
    /// Hugging Face's question-answering task: `POST /` with `{"inputs": {...}}`.
    Hf,
}

/// A question for `POST /v1/qa`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QaRequest {
    pub question: String,
    pub context: String,
}

/// The answer of `POST /v1/qa`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QaResponse {
    pub answer: String,
    pub score: f32,
    /// Code points into the context, end exclusive; `null` when no span was valid.
    pub start: Option<usize>,
    pub end: Option<usize>,
    /// Windows the context became, and the server's own time for the query.
    pub windows: Option<usize>,
    pub latency_ms: Option<f64>,
}

/// Hugging Face's question-answering request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HfRequest {
    pub inputs: HfInputs,
    #[serde(default)]
    pub parameters: HfParameters,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HfInputs {
    pub question: String,
    pub context: String,
}

/// The task's parameters; `None`: the server's setting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HfParameters {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub doc_stride: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_answer_len: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_seq_len: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_question_len: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handle_impossible_answer: Option<bool>,
    /// Widen answers to whole words (the pipeline's default, true); false keeps token
    /// boundaries, `eval`'s answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub align_to_words: Option<bool>,
}

/// One answer of Hugging Face's task: `start`/`end` are code points into the context (Python
/// string indices), end exclusive; a query with no valid span answers `""` at 0..0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HfAnswer {
    pub answer: String,
    pub score: f32,
    pub start: usize,
    pub end: usize,
}

impl From<&Answer> for HfAnswer {
    fn from(a: &Answer) -> Self {
        let (start, end) = a.span.unwrap_or((0, 0));
        HfAnswer {
            answer: a.text.clone(),
            score: a.score,
            start,
            end,
        }
    }
}

/// Most answers one request may ask for.
pub const MAX_TOP_K: usize = 100;

/// What the server's settings allow a request to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerWindows {
    pub features: FeatureConfig,
    pub decode: DecodeConfig,
    /// The model's `max_position_embeddings`: the longest window it can run.
    pub max_positions: usize,
}

/// A parsed request: the question, its context, and how to window and decode it.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub question: String,
    pub context: String,
    pub options: QueryOptions,
    /// Hugging Face's task answers a list when `top_k` > 1 was asked for.
    pub list: bool,
}

/// Parses a JSON body in `api`'s shape; the error names the field (`parameters.top_k: ...`).
pub fn parse(api: Api, body: &[u8], server: &ServerWindows) -> Result<Parsed, String> {
    fn json<T: serde::de::DeserializeOwned>(body: &[u8], shape: &str) -> Result<T, String> {
        let de = &mut serde_json::Deserializer::from_slice(body);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let at = if path == "." {
                String::new()
            } else {
                format!("{path}: ")
            };
            format!("{at}{} (expected {shape})", e.inner())
        })
    }
    let parsed = match api {
        Api::Bertbench => {
            let q: QaRequest = json(body, "{\"question\": string, \"context\": string}")?;
            Parsed {
                question: q.question,
                context: q.context,
                options: QueryOptions::default(),
                list: false,
            }
        }
        Api::Hf => {
            let r: HfRequest = json(
                body,
                "{\"inputs\": {\"question\": string, \"context\": string}, \"parameters\": {...}}",
            )?;
            let (options, list) = options(&r.parameters, server)?;
            Parsed {
                question: r.inputs.question,
                context: r.inputs.context,
                options,
                list,
            }
        }
    };
    if parsed.question.trim().is_empty() || parsed.context.trim().is_empty() {
        return Err("question and context must not be empty".into());
    }
    Ok(parsed)
}

/// The query options Hugging Face's parameters ask for, checked against what the server
/// and the model can run.
fn options(p: &HfParameters, server: &ServerWindows) -> Result<(QueryOptions, bool), String> {
    let top_k = p.top_k.unwrap_or(1);
    if !(1..=MAX_TOP_K).contains(&top_k) {
        return Err(format!(
            "parameters.top_k must be 1 to {MAX_TOP_K}, got {top_k}"
        ));
    }
    if p.handle_impossible_answer == Some(true) {
        return Err(
            "parameters.handle_impossible_answer: true is not supported (this server decodes \
             SQuAD v1.1 answers: always a span of the context)"
                .into(),
        );
    }
    let mut features = server.features;
    if let Some(v) = p.max_seq_len {
        if v > server.max_positions {
            return Err(format!(
                "parameters.max_seq_len {v} exceeds the model's max_position_embeddings {}",
                server.max_positions
            ));
        }
        features.max_seq_length = v;
    }
    if let Some(v) = p.doc_stride {
        features.doc_stride = v;
    }
    if let Some(v) = p.max_question_len {
        features.max_query_length = v;
    }
    if features.validate().is_err() {
        return Err(format!(
            "parameters: max_seq_len {} leaves {} context tokens after a question of \
             max_question_len {} and 3 special tokens; doc_stride {} must be smaller (and \
             max_question_len at least 1)",
            features.max_seq_length,
            features
                .max_seq_length
                .saturating_sub(features.max_query_length + 3),
            features.max_query_length,
            features.doc_stride
        ));
    }
    let mut decode = server.decode;
    if let Some(v) = p.max_answer_len {
        if v == 0 {
            return Err("parameters.max_answer_len must be at least 1".into());
        }
        decode.max_answer_length = v;
    }
    let options = QueryOptions {
        features: (features != server.features).then_some(features),
        decode: (decode != server.decode).then_some(decode),
        top_k,
        align_to_words: p.align_to_words.unwrap_or(true),
    };
    Ok((options, top_k > 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> ServerWindows {
        ServerWindows {
            features: FeatureConfig::default(),
            decode: DecodeConfig::default(),
            max_positions: 512,
        }
    }

    fn hf(body: &str) -> Result<Parsed, String> {
        parse(Api::Hf, body.as_bytes(), &server())
    }

    #[test]
    fn hugging_face_requests_become_query_options() {
        let p = hf(r#"{"inputs": {"question": "q", "context": "c"}}"#).unwrap();
        assert_eq!(
            p.options,
            QueryOptions {
                top_k: 1,
                align_to_words: true,
                ..QueryOptions::default()
            }
        );
        assert!(!p.list);
        let p = hf(r#"{"inputs": {"question": "q", "context": "c"},
                       "parameters": {"align_to_words": false}}"#)
        .unwrap();
        assert!(!p.options.align_to_words);
        let p = hf(r#"{"inputs": {"question": "q", "context": "c"},
                       "parameters": {"top_k": 3, "doc_stride": 64, "max_seq_len": 256,
                                      "max_answer_len": 15, "handle_impossible_answer": false}}"#)
        .unwrap();
        assert!(p.list);
        assert_eq!(p.options.top_k, 3);
        let f = p.options.features.unwrap();
        assert_eq!(
            (f.max_seq_length, f.doc_stride, f.max_query_length),
            (256, 64, 64)
        );
        assert_eq!(p.options.decode.unwrap().max_answer_length, 15);
        // The server's own settings asked for explicitly: the server's path, untouched.
        let p = hf(r#"{"inputs": {"question": "q", "context": "c"},
                       "parameters": {"max_seq_len": 384, "doc_stride": 128}}"#)
        .unwrap();
        assert_eq!(p.options.features, None);
    }

    #[test]
    fn bad_requests_are_refused_naming_the_field() {
        for (body, needle) in [
            (
                r#"{"inputs": {"question": 1, "context": "c"}}"#,
                "inputs.question: invalid type",
            ),
            (
                r#"{"inputs": {"question": "q"}}"#,
                "missing field `context`",
            ),
            (
                r#"{"inputs": {"question": "q", "context": "c"}, "parameters": {"top_k": 0}}"#,
                "parameters.top_k must be 1 to 100, got 0",
            ),
            (
                r#"{"inputs": {"question": "q", "context": "c"}, "parameters": {"top_k": -1}}"#,
                "parameters.top_k: invalid value",
            ),
            (
                r#"{"inputs": {"question": "q", "context": "c"}, "parameters": {"topk": 2}}"#,
                "parameters.topk: unknown field `topk`, expected one of `top_k`",
            ),
            (
                r#"{"inputs": {"question": "q", "context": "c"}, "parameters": {"max_seq_len": 1024}}"#,
                "parameters.max_seq_len 1024 exceeds",
            ),
            (
                r#"{"inputs": {"question": "q", "context": "c"}, "parameters": {"doc_stride": 400}}"#,
                "doc_stride 400 must be smaller",
            ),
            (
                r#"{"inputs": {"question": "q", "context": "c"}, "parameters": {"max_answer_len": 0}}"#,
                "parameters.max_answer_len must be at least 1",
            ),
            (
                r#"{"inputs": {"question": "q", "context": "c"}, "parameters": {"handle_impossible_answer": true}}"#,
                "handle_impossible_answer: true is not supported",
            ),
            (
                r#"{"inputs": {"question": " ", "context": "c"}}"#,
                "must not be empty",
            ),
            (r#"[1]"#, "expected {\"inputs\""),
        ] {
            let e = hf(body).unwrap_err();
            assert!(e.contains(needle), "{body}: {e}");
        }
        let e = parse(
            Api::Bertbench,
            br#"{"question": "q", "context": "c", "x": 1}"#,
            &server(),
        )
        .unwrap_err();
        assert!(e.contains("unknown field `x`"), "{e}");
    }
}
