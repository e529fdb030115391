//! Turning start/end logits into answer text, as Hugging Face's `postprocess_qa_predictions`
//! (the `utils_qa.py` of `run_qa.py`) does for SQuAD v1.1, and reading/writing
//! `predictions.json`.
//!
//! Decoding is part of what a published EM/F1 measures: the n-best size, the maximum answer
//! length and the rule for spans outside the context all move the score. Copying HF's
//! choices makes our numbers comparable with the checkpoints' model cards.
//!
//! Per question, over all of its windows: take the `n_best_size` highest start logits and the
//! `n_best_size` highest end logits among the window's **context tokens**, pair them, skip
//! pairs where the end is before the start or the span is longer than `max_answer_length`
//! tokens; score a pair by `start_logit + end_logit`, keep the `n_best_size` best over all
//! windows, and cut the text from the original context by character offsets. Probabilities
//! are the softmax of the kept scores.
//!
//! Three details HF leaves open or does differently:
//! * HF takes the top logits over **every** position (question, special tokens and padding
//!   included) and only then drops pairs outside the context, so a question or padding token
//!   can take one of the `n_best_size` places and crowd out a valid span; its answers then
//!   change with the amount of padding (a batch's longest window, `pad_to_max_length`). Here
//!   only context tokens are candidates: the answer depends on the context logits alone,
//!   never on padding or on the positions a span can never use. Where HF's lists hold
//!   `n_best_size` context positions the two agree exactly.
//! * Ties between equal logits are broken towards the lower position (numpy's `argsort` does
//!   not specify an order for ties), and equal scores keep window order (Python's sort is
//!   stable, so does HF's).
//! * When no span is valid, HF answers with the literal string `"empty"`; here the answer is
//!   the empty string, which is what "no answer" means to the metric.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use super::data::{char_slice, Example};
use super::features::Feature;
use crate::error::input;

/// Decoding parameters; the defaults are `run_qa.py`'s. Also `eval`'s flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct DecodeConfig {
    /// Start and end candidates per window, and entries kept in the n-best list.
    #[arg(long, default_value_t = 20)]
    pub n_best_size: usize,
    /// Longest answer, in tokens, end inclusive.
    #[arg(long, default_value_t = 30)]
    pub max_answer_length: usize,
}

impl Default for DecodeConfig {
    fn default() -> Self {
        Self {
            n_best_size: 20,
            max_answer_length: 30,
        }
    }
}

/// One candidate answer of a question.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NbestEntry {
    pub text: String,
    /// Softmax of this candidate's score over the question's n-best list.
    pub probability: f32,
    pub start_logit: f32,
    pub end_logit: f32,
    /// Where the text lies in the context: code points, end exclusive (`None` for the empty
    /// answer). Not in `nbest_predictions.json`, whose entries are Hugging Face's four fields.
    #[serde(skip)]
    pub span: Option<(usize, usize)>,
}

/// The decoded answer of one question.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub id: String,
    /// The best candidate's text; empty when no span was valid.
    pub text: String,
    /// Candidates, best first (at most `n_best_size`; never empty).
    pub nbest: Vec<NbestEntry>,
}

/// Decode one prediction per example, in example order.
///
/// `start_logits[i]` and `end_logits[i]` are the model's outputs for `features[i]`, one value
/// per token (the feature's full padded length). Features must have been built from these
/// `examples` (`Feature::example_index` indexes them).
pub fn decode_predictions<S: AsRef<[f32]>>(
    examples: &[Example],
    features: &[Feature],
    start_logits: &[S],
    end_logits: &[S],
    cfg: &DecodeConfig,
) -> Result<Vec<Prediction>> {
    if start_logits.len() != features.len() || end_logits.len() != features.len() {
        bail!(
            "decoding: {} features but {} start and {} end logit rows",
            features.len(),
            start_logits.len(),
            end_logits.len()
        );
    }
    let mut per_example: Vec<Vec<usize>> = vec![Vec::new(); examples.len()];
    for (fi, f) in features.iter().enumerate() {
        per_example
            .get_mut(f.example_index)
            .ok_or_else(|| {
                anyhow!(
                    "decoding: feature {fi} belongs to example {} but there are only {} examples",
                    f.example_index,
                    examples.len()
                )
            })?
            .push(fi);
    }

    let mut predictions = Vec::with_capacity(examples.len());
    for (example, feature_indices) in examples.iter().zip(&per_example) {
        let mut candidates: Vec<Candidate> = Vec::new();
        for &fi in feature_indices {
            let (starts, ends) = (start_logits[fi].as_ref(), end_logits[fi].as_ref());
            let feature = &features[fi];
            let n = feature.offsets.len();
            if starts.len() != n || ends.len() != n {
                bail!(
                    "decoding: feature {fi} has {n} tokens but {} start and {} end logits",
                    starts.len(),
                    ends.len()
                );
            }
            if starts.iter().chain(ends).any(|x| x.is_nan()) {
                bail!(
                    "decoding: feature {fi} (question {}) has NaN logits",
                    example.id
                );
            }
            let context: Vec<(usize, (usize, usize))> = feature
                .offsets
                .iter()
                .enumerate()
                .filter_map(|(i, o)| o.map(|o| (i, o)))
                .collect();
            let top_starts = top_positions(&context, starts, cfg.n_best_size);
            let top_ends = top_positions(&context, ends, cfg.n_best_size);
            for &(s, (char_start, _)) in &top_starts {
                for &(e, (_, char_end)) in &top_ends {
                    if e < s || e - s + 1 > cfg.max_answer_length {
                        continue;
                    }
                    candidates.push(Candidate {
                        score: starts[s] + ends[e],
                        start_logit: starts[s],
                        end_logit: ends[e],
                        char_start,
                        char_end,
                    });
                }
            }
        }
        // Stable: equal scores keep their generation order, as Python's `sorted` does.
        candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
        candidates.truncate(cfg.n_best_size);
        predictions.push(to_prediction(example, &candidates)?);
    }
    Ok(predictions)
}

struct Candidate {
    score: f32,
    start_logit: f32,
    end_logit: f32,
    char_start: usize,
    char_end: usize,
}

fn to_prediction(example: &Example, candidates: &[Candidate]) -> Result<Prediction> {
    if candidates.is_empty() {
        return Ok(Prediction {
            id: example.id.to_string(),
            text: String::new(),
            nbest: vec![NbestEntry {
                text: String::new(),
                probability: 1.0,
                start_logit: 0.0,
                end_logit: 0.0,
                span: None,
            }],
        });
    }
    // Softmax in f32 like HF's numpy code over float32 logits.
    let max = candidates
        .iter()
        .map(|c| c.score)
        .fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = candidates.iter().map(|c| (c.score - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    let nbest = candidates
        .iter()
        .zip(&exps)
        .map(|(c, e)| {
            let text = char_slice(example.context, c.char_start, c.char_end).ok_or_else(|| {
                anyhow!(
                    "decoding: span {}..{} is outside the context of question {} \
                     (features built from other examples?)",
                    c.char_start,
                    c.char_end,
                    example.id
                )
            })?;
            Ok(NbestEntry {
                text: text.to_string(),
                probability: e / sum,
                start_logit: c.start_logit,
                end_logit: c.end_logit,
                span: Some((c.char_start, c.char_end)),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Prediction {
        id: example.id.to_string(),
        text: nbest[0].text.clone(),
        nbest,
    })
}

/// The `k` candidates (position, character span) with the largest `values[position]`,
/// largest first; ties towards the lower position.
fn top_positions(
    candidates: &[(usize, (usize, usize))],
    values: &[f32],
    k: usize,
) -> Vec<(usize, (usize, usize))> {
    let mut top = candidates.to_vec();
    top.sort_by(|a, b| values[b.0].total_cmp(&values[a.0]).then(a.0.cmp(&b.0)));
    top.truncate(k);
    top
}

/// `{id: text}` for [`super::metric::evaluate`].
pub fn predictions_map(predictions: &[Prediction]) -> HashMap<String, String> {
    predictions
        .iter()
        .map(|p| (p.id.clone(), p.text.clone()))
        .collect()
}

/// The answers file `eval` writes (what the official `evaluate-v1.1.py` scores).
pub const PREDICTIONS_FILE: &str = "predictions.json";

/// Write `predictions.json` (`{id: text}`) and `nbest_predictions.json`
/// (`{id: [{text, probability, start_logit, end_logit}, ...]}`) into `dir` (created if
/// needed), in prediction order. Existing files are an input error unless `overwrite`: a
/// results directory from an earlier run is worth more than a convenience. Returns the two
/// paths.
pub fn write_predictions(
    dir: &Path,
    predictions: &[Prediction],
    overwrite: bool,
) -> Result<(PathBuf, PathBuf)> {
    let preds_path = dir.join(PREDICTIONS_FILE);
    let nbest_path = dir.join("nbest_predictions.json");
    if !overwrite {
        for p in [&preds_path, &nbest_path] {
            if p.exists() {
                return Err(input(format!(
                    "{} already exists; refusing to overwrite it (ask for overwrite explicitly \
                     or choose another output directory)",
                    p.display()
                )));
            }
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_json(
        &preds_path,
        &OrderedMap(predictions.iter().map(|p| (&p.id, &p.text)).collect()),
        overwrite,
    )?;
    write_json(
        &nbest_path,
        &OrderedMap(predictions.iter().map(|p| (&p.id, &p.nbest)).collect()),
        overwrite,
    )?;
    Ok((preds_path, nbest_path))
}

/// A JSON object whose keys keep the given order (ids in dataset order, like HF's files).
struct OrderedMap<'a, V>(Vec<(&'a String, &'a V)>);

impl<V: Serialize> Serialize for OrderedMap<'_, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

fn write_json(path: &Path, value: &impl Serialize, overwrite: bool) -> Result<()> {
    let mut options = OpenOptions::new();
    options.write(true);
    if overwrite {
        options.create(true).truncate(true);
    } else {
        // Checked above too, but create_new closes the race with another writer.
        options.create_new(true);
    }
    let file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            input(format!(
                "{} already exists; refusing to overwrite it",
                path.display()
            ))
        } else {
            anyhow!("creating {}: {e}", path.display())
        }
    })?;
    let mut w = BufWriter::new(file);
    serde_json::to_writer_pretty(&mut w, value)
        .with_context(|| format!("writing {}", path.display()))?;
    w.write_all(b"\n")
        .and_then(|_| w.flush())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Read a `predictions.json`: a JSON object mapping question ids to answer strings (what the
/// official script reads). Anything else is an input error naming the file and the id.
pub fn read_predictions(path: &Path) -> Result<HashMap<String, String>> {
    let name = path.display();
    let text = std::fs::read(path).map_err(|e| input(format!("{name}: cannot read: {e}")))?;
    let value: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| input(format!("{name}: not valid JSON: {e}")))?;
    let serde_json::Value::Object(map) = value else {
        return Err(input(format!(
            "{name}: expected a JSON object mapping question ids to answer strings"
        )));
    };
    map.into_iter()
        .map(|(id, v)| match v {
            serde_json::Value::String(s) => Ok((id, s)),
            other => Err(input(format!(
                "{name}: the prediction for id {id:?} must be a string, found {}",
                match other {
                    serde_json::Value::Null => "null",
                    serde_json::Value::Bool(_) => "a boolean",
                    serde_json::Value::Number(_) => "a number",
                    serde_json::Value::Array(_) => "a list",
                    _ => "an object",
                }
            ))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::squad::data::Answer;

    const CONTEXT: &str = "Café Odéon is in Zürich.";
    //                     0123456789012345678901234

    fn example<'a>(id: &'a str, answers: &'a [Answer]) -> Example<'a> {
        Example {
            id,
            title: "t",
            question: "Where?",
            context: CONTEXT,
            answers,
        }
    }

    /// "[CLS] where [SEP] café odéon is in zürich . [SEP] [PAD]" with context offsets.
    fn feature(example_index: usize) -> Feature {
        let ctx = [(0, 4), (5, 10), (11, 13), (14, 16), (17, 23), (23, 24)];
        let mut offsets = vec![None, None, None];
        offsets.extend(ctx.iter().map(|&o| Some(o)));
        offsets.extend([None, None]);
        Feature {
            example_index,
            input_ids: vec![0; 11],
            token_type_ids: vec![0; 11],
            attention_mask: vec![1; 11],
            offsets,
            start_position: 0,
            end_position: 0,
        }
    }

    /// Logits that are -10 everywhere except the given (position, value) pairs.
    fn logits(n: usize, peaks: &[(usize, f32)]) -> Vec<f32> {
        let mut v = vec![-10.0; n];
        for &(i, x) in peaks {
            v[i] = x;
        }
        v
    }

    #[test]
    fn best_span_is_decoded_from_the_context_by_characters() {
        let ex = [example("q", &[])];
        let f = [feature(0)];
        let s = [logits(11, &[(3, 5.0), (7, 1.0)])];
        let e = [logits(11, &[(4, 4.0), (7, 3.0)])];
        let p = decode_predictions(&ex, &f, &s, &e, &DecodeConfig::default()).unwrap();
        assert_eq!(p[0].text, "Café Odéon");
        assert_eq!(p[0].id, "q");
        let top = &p[0].nbest[0];
        assert_eq!((top.start_logit, top.end_logit), (5.0, 4.0));
        // 3..=7 "Café Odéon is in Zürich" scores 8, the runner-up.
        assert_eq!(p[0].nbest[1].text, "Café Odéon is in Zürich");
        let total: f32 = p[0].nbest.iter().map(|n| n.probability).sum();
        assert!((total - 1.0).abs() < 1e-5);
        assert!((top.probability / p[0].nbest[1].probability - 1f32.exp()).abs() < 1e-4);
        // Sorted by score.
        assert!(p[0]
            .nbest
            .windows(2)
            .all(|w| w[0].start_logit + w[0].end_logit >= w[1].start_logit + w[1].end_logit));
    }

    #[test]
    fn spans_outside_the_context_reversed_or_too_long_are_skipped() {
        let ex = [example("q", &[])];
        let f = [feature(0)];
        let cfg = DecodeConfig {
            n_best_size: 20,
            max_answer_length: 2,
        };
        // Highest logits on the question token (1) and the [SEP]/padding (9, 10).
        let s = [logits(11, &[(1, 9.0), (9, 9.0), (6, 3.0), (3, 2.0)])];
        let e = [logits(11, &[(1, 9.0), (10, 9.0), (4, 3.0), (7, 1.0)])];
        let p = decode_predictions(&ex, &f, &s, &e, &cfg).unwrap();
        for n in &p[0].nbest {
            assert!(CONTEXT.contains(&n.text));
        }
        // (6, 4) is reversed; (3, 7) is 5 tokens long; best valid is (3, 4).
        assert_eq!(p[0].text, "Café Odéon");
        // Only spans of <= 2 tokens inside the context survive.
        assert!(p[0].nbest.iter().all(|n| n.text.split(' ').count() <= 2));
    }

    #[test]
    fn question_and_padding_positions_take_no_place_in_the_n_best_lists() {
        let ex = [example("q", &[])];
        let f = [feature(0)];
        let cfg = DecodeConfig {
            n_best_size: 2,
            max_answer_length: 30,
        };
        // The two highest logits sit on a question token and on padding: had they taken the
        // two places, no valid span would be left and the answer would be empty.
        let s = logits(11, &[(1, 9.0), (10, 8.0), (3, 2.0), (5, 1.0)]);
        let e = logits(11, &[(2, 9.0), (9, 8.0), (4, 3.0), (6, 1.0)]);
        let p = decode_predictions(&ex, &f, &[&s], &[&e], &cfg).unwrap();
        assert_eq!(p[0].text, "Café Odéon");
        assert_eq!(p[0].nbest.len(), 2);
        // Whatever the non-context positions hold, the n-best list is the same.
        let (mut s2, mut e2) = (s, e);
        for i in [0, 1, 2, 9, 10] {
            s2[i] = f32::MAX;
            e2[i] = f32::MIN;
        }
        let q = decode_predictions(&ex, &f, &[s2], &[e2], &cfg).unwrap();
        assert_eq!(p, q);
    }

    #[test]
    fn the_best_window_wins() {
        let ex = [example("a", &[]), example("b", &[])];
        let f = [feature(0), feature(1), feature(1)];
        let s = [
            logits(11, &[(3, 1.0)]),
            logits(11, &[(5, 2.0)]),
            logits(11, &[(7, 6.0)]),
        ];
        let e = [
            logits(11, &[(3, 1.0)]),
            logits(11, &[(6, 2.0)]),
            logits(11, &[(8, 3.0)]),
        ];
        let p = decode_predictions(&ex, &f, &s, &e, &DecodeConfig::default()).unwrap();
        assert_eq!(p[0].text, "Café");
        assert_eq!(p[1].text, "Zürich.");
        assert_eq!(p[1].nbest[0].start_logit, 6.0);
        assert_eq!(p[1].nbest.len(), 20);
    }

    #[test]
    fn no_valid_span_gives_an_empty_answer() {
        let ex = [example("q", &[])];
        let mut f = feature(0);
        f.offsets.iter_mut().for_each(|o| *o = None);
        let s = [logits(11, &[])];
        let p = decode_predictions(&ex, &[f], &s, &s, &DecodeConfig::default()).unwrap();
        assert_eq!(p[0].text, "");
        assert_eq!(p[0].nbest.len(), 1);
        assert_eq!(p[0].nbest[0].probability, 1.0);
    }

    #[test]
    fn mismatched_inputs_are_errors() {
        let ex = [example("q", &[])];
        let f = [feature(0)];
        let short = [vec![0.0f32; 10]];
        assert!(decode_predictions(&ex, &f, &short, &short, &DecodeConfig::default()).is_err());
        let nan = [vec![f32::NAN; 11]];
        assert!(decode_predictions(&ex, &f, &nan, &nan, &DecodeConfig::default()).is_err());
        let none: [Vec<f32>; 0] = [];
        assert!(decode_predictions(&ex, &f, &none, &none, &DecodeConfig::default()).is_err());
    }

    #[test]
    fn predictions_are_written_once_unless_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let preds = vec![
            Prediction {
                id: "z".into(),
                text: "Zürich".into(),
                nbest: vec![NbestEntry {
                    text: "Zürich".into(),
                    probability: 1.0,
                    start_logit: 1.5,
                    end_logit: -0.5,
                    span: Some((0, 6)),
                }],
            },
            Prediction {
                id: "a".into(),
                text: "".into(),
                nbest: vec![],
            },
        ];
        let (p, n) = write_predictions(dir.path(), &preds, false).unwrap();
        let back = read_predictions(&p).unwrap();
        assert_eq!(back, predictions_map(&preds));
        // Order is kept (ids not sorted).
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.find("\"z\"").unwrap() < text.find("\"a\"").unwrap());
        let nbest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&n).unwrap()).unwrap();
        assert_eq!(nbest["z"][0]["text"], "Zürich");
        assert_eq!(nbest["z"][0]["start_logit"], 1.5);

        let e = write_predictions(dir.path(), &preds, false).unwrap_err();
        assert_eq!(crate::error::exit_code(&e), crate::error::EXIT_BAD_INPUT);
        assert!(format!("{e}").contains("already exists"));
        write_predictions(dir.path(), &preds[..1], true).unwrap();
        assert_eq!(read_predictions(&p).unwrap().len(), 1);
    }

    #[test]
    fn bad_prediction_files_are_input_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        for (content, expect) in [
            ("{\"a\": 1}", "id \"a\" must be a string, found a number"),
            ("[\"a\"]", "expected a JSON object"),
            ("{\"a\": ", "not valid JSON"),
        ] {
            std::fs::write(&path, content).unwrap();
            let e = read_predictions(&path).unwrap_err();
            assert_eq!(crate::error::exit_code(&e), crate::error::EXIT_BAD_INPUT);
            let m = format!("{e}");
            assert!(m.starts_with(&path.display().to_string()), "{m}");
            assert!(m.contains(expect), "{m}");
        }
    }
}
