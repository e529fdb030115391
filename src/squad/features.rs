//! Tokenising (question, context) pairs into fixed-length model windows, with training labels.
//!
//! This reproduces what Hugging Face's `run_qa.py` gets from its fast BERT tokenizer:
//! `tokenizer(questions, contexts, truncation="only_second", max_length=max_seq_length,
//! stride=doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True,
//! padding="max_length")`. A context longer than one window is split into several windows
//! that overlap by `doc_stride` tokens; each window repeats the question. Offsets are in
//! Unicode code points (Python `str` indices) so they index SQuAD contexts the way
//! `answer_start` does; the tokenizer's plain encode calls would give byte offsets.
//!
//! `tokenizers` is pinned to 0.22.2 because 0.23.x returns too few overflow windows for this
//! call (huggingface/tokenizers#2091); 0.22.2 matches the Python reference in every field
//! (`tests/squad_tokenizer.rs` checks it against `../shared/fixtures/tokenizer_qa_reference.json`).
//!
//! **`max_query_length`.** The original BERT `run_squad.py` (and HF's old `run_squad.py`)
//! truncated questions to `max_query_length` (64) tokens before pairing them with the
//! context; HF's current `run_qa.py` has no such step and only truncates the context
//! (`only_second`), which fails outright if a question leaves no room for the context. We
//! truncate questions to `max_query_length` tokens explicitly, like the original, so a long
//! question can never crowd the context out of the window, and the config check
//! ([`FeatureConfig::validate`]) can guarantee room for at least `doc_stride + 1` context
//! tokens. SQuAD v1.1 questions are far shorter than 64 tokens (dev has none longer), so on
//! SQuAD this gives exactly `run_qa.py`'s windows.
//!
//! The truncation cuts the question *text* at the end of its `max_query_length`-th token and
//! encodes the pair from that text, so the whole batch goes through one fast batch call.
//! WordPiece's greedy longest-match makes the cut text tokenise to exactly the first
//! `max_query_length` tokens; this is checked for every example, not assumed.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{
    AddedToken, EncodeInput, Encoding, PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer,
    TruncationDirection, TruncationParams, TruncationStrategy,
};

use super::data::{char_to_byte, Example};
use crate::error::input;

/// Windowing parameters (`run_qa.py`'s). The defaults are the ones every published BERT SQuAD
/// number uses. Also the flags of every command that tokenises SQuAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
pub struct FeatureConfig {
    /// Tokens per window, special tokens and padding included.
    #[arg(long, default_value_t = 384)]
    pub max_seq_length: usize,
    /// Overlap, in context tokens, between consecutive windows of one context (Hugging Face's
    /// `stride`, not the original BERT step between window starts).
    #[arg(long, default_value_t = 128)]
    pub doc_stride: usize,
    /// Questions are cut to this many tokens before windowing.
    #[arg(long, default_value_t = 64)]
    pub max_query_length: usize,
}

impl Default for FeatureConfig {
    fn default() -> Self {
        Self {
            max_seq_length: 384,
            doc_stride: 128,
            max_query_length: 64,
        }
    }
}

impl FeatureConfig {
    /// Check that every window has room for more than `doc_stride` context tokens after the
    /// longest allowed question and the 3 special tokens. Otherwise the tokenizer cannot
    /// advance from one window to the next (it panics or errors deep inside).
    pub fn validate(&self) -> Result<()> {
        let room = self
            .max_seq_length
            .saturating_sub(self.max_query_length + 3);
        if self.max_query_length == 0 || self.doc_stride >= room {
            return Err(input(format!(
                "invalid windowing: max_seq_length {} leaves {room} context tokens after a \
                 question of max_query_length {} and 3 special tokens; doc_stride {} must be \
                 smaller than that (and max_query_length at least 1)",
                self.max_seq_length, self.max_query_length, self.doc_stride
            )));
        }
        Ok(())
    }
}

/// One window exactly as the tokenizer returns it (the fields of Hugging Face's
/// `BatchEncoding` for one row). [`QaTokenizer::features`] turns these into [`Feature`]s;
/// this raw form exists for inspection and for the parity test against the Python reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Index of the (question, context) pair this window came from (`overflow_to_sample_mapping`).
    pub example_index: usize,
    pub input_ids: Vec<u32>,
    pub token_type_ids: Vec<u32>,
    pub attention_mask: Vec<u32>,
    /// `(start, end)` in Unicode code points into the question (sequence 0) or the context
    /// (sequence 1); `(0, 0)` for special tokens and padding.
    pub offsets: Vec<(usize, usize)>,
    /// `Some(0)` question, `Some(1)` context, `None` special tokens and padding.
    pub sequence_ids: Vec<Option<usize>>,
}

impl Window {
    fn from_encoding(example_index: usize, e: &Encoding) -> Self {
        Self {
            example_index,
            input_ids: e.get_ids().to_vec(),
            token_type_ids: e.get_type_ids().to_vec(),
            attention_mask: e.get_attention_mask().to_vec(),
            offsets: e.get_offsets().to_vec(),
            sequence_ids: e.get_sequence_ids(),
        }
    }
}

/// One model input: a window plus what decoding and training need from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feature {
    /// Index into the examples slice the features were built from.
    pub example_index: usize,
    pub input_ids: Vec<u32>,
    pub token_type_ids: Vec<u32>,
    pub attention_mask: Vec<u32>,
    /// Character span in the context for context tokens; `None` for the question, special
    /// tokens and padding, so decoding can never return a span outside the context.
    pub offsets: Vec<Option<(usize, usize)>>,
    /// Training label: token index of the first answer's start in this window, or 0 (the
    /// `[CLS]` token) when the answer is not entirely inside the window.
    pub start_position: usize,
    /// Training label: token index of the first answer's end (inclusive), or 0 like
    /// `start_position`.
    pub end_position: usize,
}

impl Feature {
    /// The feature for one window of `example`: context-only offsets and the training labels
    /// of the example's first gold answer (`[CLS]` when it has none).
    pub fn from_window(w: Window, example: &Example) -> Feature {
        let (start_position, end_position) = match example.answers.first() {
            Some(a) => label_span(
                &w,
                (a.answer_start, a.answer_start + a.text.chars().count()),
            ),
            None => (CLS_INDEX, CLS_INDEX),
        };
        let offsets = w
            .offsets
            .iter()
            .zip(&w.sequence_ids)
            .map(|(o, s)| (*s == Some(1)).then_some(*o))
            .collect();
        Feature {
            example_index: w.example_index,
            input_ids: w.input_ids,
            token_type_ids: w.token_type_ids,
            attention_mask: w.attention_mask,
            offsets,
            start_position,
            end_position,
        }
    }
}

/// Index of `[CLS]`, the "no answer in this window" label (BERT puts it first).
const CLS_INDEX: usize = 0;

/// A BERT WordPiece tokenizer with no preset truncation or padding; windowing parameters are
/// applied per call from a [`FeatureConfig`].
#[derive(Clone)]
pub struct QaTokenizer {
    tokenizer: Tokenizer,
    pad_id: u32,
    pad_token: String,
    /// The tokenizer with the last windowing settings applied. Copying the tokenizer (its
    /// vocabulary) to apply them cost more than encoding one query; serving tokenises one
    /// query per call, so the copy is made once per settings.
    windowing: Arc<Mutex<Option<Windowing>>>,
}

/// A tokenizer with one [`FeatureConfig`]'s truncation and padding applied.
type Windowing = (FeatureConfig, Arc<Tokenizer>);

impl std::fmt::Debug for QaTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QaTokenizer")
            .field("vocab_size", &self.tokenizer.get_vocab_size(true))
            .field("pad_id", &self.pad_id)
            .finish()
    }
}

/// Where a model's tokenizer comes from: `explicit` (a `--tokenizer` flag) if given, else the
/// model's directory; a model without a directory (a built-in config) needs `explicit`.
pub fn tokenizer_path(
    explicit: Option<&Path>,
    model_dir: Option<&Path>,
    model: &str,
) -> Result<PathBuf> {
    match (explicit, model_dir) {
        (Some(t), _) => Ok(t.to_path_buf()),
        (None, Some(dir)) => Ok(dir.to_path_buf()),
        (None, None) => Err(input(format!(
            "`{model}` has no model directory to take a tokenizer from; pass --tokenizer (a vocab.txt or tokenizer.json)"
        ))),
    }
}

/// Load the tokenizer for a model: the one way this crate builds a tokenizer.
///
/// `path` may be
/// * a model directory: its `tokenizer.json` if there is one, else its `vocab.txt`;
/// * a `tokenizer.json` file (any file ending in `.json`);
/// * a WordPiece vocabulary file (anything else, e.g. `vocab.txt`).
///
/// A `tokenizer.json` is used as is, except that its preset truncation and padding are
/// removed (some checkpoints pad everything to 128, which would silently break windowing).
/// A bare vocabulary is built the way `BertTokenizerFast` builds it: WordPiece (`[UNK]`,
/// `##`, 100 chars per word), `BertNormalizer` (clean text, Chinese characters split,
/// accents stripped iff lower-casing), `BertPreTokenizer`, `[CLS] A [SEP] B [SEP]` and the
/// five special tokens. Lower-casing follows `do_lower_case` in a `tokenizer_config.json`
/// beside the vocabulary, and defaults to true (the uncased checkpoints this tool compares).
pub fn load_tokenizer(path: &Path) -> Result<QaTokenizer> {
    let shown = path.display();
    let meta = std::fs::metadata(path)
        .map_err(|e| input(format!("{shown}: cannot read the tokenizer: {e}")))?;
    let (file, dir) = if meta.is_dir() {
        let json = path.join("tokenizer.json");
        if json.is_file() {
            (json, path.to_path_buf())
        } else {
            let vocab = path.join("vocab.txt");
            if !vocab.is_file() {
                return Err(input(format!(
                    "{shown}: no tokenizer.json or vocab.txt in this model directory"
                )));
            }
            (vocab, path.to_path_buf())
        }
    } else {
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        (path.to_path_buf(), dir)
    };
    let is_json = file.extension().is_some_and(|e| e == "json");
    let mut tokenizer = if is_json {
        Tokenizer::from_file(&file).map_err(|e| {
            input(format!(
                "{}: not a usable tokenizer.json: {e}",
                file.display()
            ))
        })?
    } else {
        let lowercase = do_lower_case(&dir.join("tokenizer_config.json"))?;
        bert_wordpiece(&file, lowercase)?
    };
    tokenizer
        .with_truncation(None)
        .map_err(|e| anyhow!("resetting truncation: {e}"))?;
    tokenizer.with_padding(None);
    let pad_token = "[PAD]".to_string();
    let pad_id = tokenizer.token_to_id(&pad_token).ok_or_else(|| {
        input(format!(
            "{}: the vocabulary has no {pad_token} token (not a BERT tokenizer?)",
            file.display()
        ))
    })?;
    Ok(QaTokenizer {
        tokenizer,
        pad_id,
        pad_token,
        windowing: Arc::default(),
    })
}

/// `do_lower_case` from a `tokenizer_config.json`; true when the file or the key is absent.
fn do_lower_case(config: &Path) -> Result<bool> {
    if !config.is_file() {
        return Ok(true);
    }
    let shown = config.display();
    let text =
        std::fs::read_to_string(config).map_err(|e| input(format!("{shown}: cannot read: {e}")))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| input(format!("{shown}: not valid JSON: {e}")))?;
    match v.get("do_lower_case") {
        None => Ok(true),
        Some(serde_json::Value::Bool(b)) => Ok(*b),
        Some(other) => Err(input(format!(
            "{shown}: `do_lower_case` must be true or false, found {other}"
        ))),
    }
}

fn bert_wordpiece(vocab: &Path, lowercase: bool) -> Result<Tokenizer> {
    let shown = vocab.display();
    let vocab_str = vocab
        .to_str()
        .ok_or_else(|| input(format!("{shown}: path is not valid UTF-8")))?;
    let model = WordPiece::from_file(vocab_str)
        .unk_token("[UNK]".into())
        .continuing_subword_prefix("##".into())
        .max_input_chars_per_word(100)
        .build()
        .map_err(|e| input(format!("{shown}: not a WordPiece vocabulary: {e}")))?;
    let mut tokenizer = Tokenizer::new(model);
    let id = |t: &str| {
        tokenizer
            .token_to_id(t)
            .ok_or_else(|| input(format!("{shown}: the vocabulary has no {t} token")))
    };
    let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
    id("[UNK]")?;
    tokenizer
        .with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)))
        .with_pre_tokenizer(Some(BertPreTokenizer))
        .with_post_processor(Some(BertProcessing::new(
            ("[SEP]".into(), sep),
            ("[CLS]".into(), cls),
        )))
        .with_decoder(Some(WordPieceDecoder::default()));
    let specials: Vec<AddedToken> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .filter(|t| tokenizer.token_to_id(t).is_some())
        .map(|t| AddedToken::from(*t, true))
        .collect();
    tokenizer.add_special_tokens(&specials);
    Ok(tokenizer)
}

/// Examples tokenised per batch call: bounds the memory of the tokenizer's intermediate
/// encodings (they carry token strings) while keeping the batch call parallel.
const CHUNK: usize = 2048;

impl QaTokenizer {
    /// The underlying tokenizer (no truncation, no padding).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Id of the `[PAD]` token used for padding.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// `spans` (code points into `context`, end exclusive) widened to whole words as this
    /// tokenizer's pre-tokenizer splits them: a span that starts or ends inside a word
    /// (`merals` of `numerals`) takes the whole word. This is what transformers' QA pipeline
    /// does with `align_to_words` (its default), from the same word ids; `run_qa.py`'s
    /// decoding, and so `eval`'s, keeps token boundaries. The context is tokenized once for
    /// all the spans.
    pub fn align_to_words(
        &self,
        context: &str,
        spans: &[(usize, usize)],
    ) -> Result<Vec<(usize, usize)>> {
        if spans.iter().all(|(s, e)| s >= e) {
            return Ok(spans.to_vec());
        }
        let enc = self
            .tokenizer
            .encode_char_offsets(context, false)
            .map_err(|e| anyhow!("tokenizing the context to align the answer: {e}"))?;
        let tokens: Vec<((usize, usize), u32)> = enc
            .get_offsets()
            .iter()
            .zip(enc.get_word_ids())
            .filter_map(|(&o, w)| w.map(|w| (o, w)))
            .collect();
        // Each word's characters: from its first token's start to its last token's end.
        let mut extent: std::collections::HashMap<u32, (usize, usize)> = Default::default();
        for &((s, e), w) in &tokens {
            let x = extent.entry(w).or_insert((s, e));
            *x = (x.0.min(s), x.1.max(e));
        }
        let word_at = |c: usize| {
            tokens
                .iter()
                .find(|((s, e), _)| *s <= c && c < *e)
                .map(|(_, w)| extent[w])
        };
        Ok(spans
            .iter()
            .map(|&(start, end)| {
                if start >= end {
                    return (start, end);
                }
                let s = word_at(start).map_or(start, |w| w.0.min(start));
                let e = word_at(end - 1).map_or(end, |w| w.1.max(end));
                (s, e)
            })
            .collect())
    }

    /// Tokenise (question, context) pairs into windows, in pair order, each pair's windows
    /// in context order.
    pub fn windows(&self, pairs: &[(&str, &str)], cfg: &FeatureConfig) -> Result<Vec<Window>> {
        cfg.validate()?;
        let wrap = |e: tokenizers::Error| anyhow!("tokenizer: {e}");

        // 1. Questions alone, to find the ones over max_query_length and where to cut them.
        let questions: Vec<&str> = pairs.iter().map(|(q, _)| *q).collect();
        let q_encodings = self
            .tokenizer
            .encode_batch_char_offsets(questions, false)
            .map_err(wrap)?;
        let mut cut_questions: Vec<Cow<str>> = Vec::with_capacity(pairs.len());
        let mut question_ids: Vec<&[u32]> = Vec::with_capacity(pairs.len());
        for (enc, (q, _)) in q_encodings.iter().zip(pairs) {
            let ids = enc.get_ids();
            if ids.len() > cfg.max_query_length {
                let end_char = enc.get_offsets()[cfg.max_query_length - 1].1;
                let end_byte = char_to_byte(q, end_char).ok_or_else(|| {
                    anyhow!("tokenizer offset {end_char} is past the end of question {q:?}")
                })?;
                cut_questions.push(Cow::Owned(q[..end_byte].to_string()));
                question_ids.push(&ids[..cfg.max_query_length]);
            } else {
                cut_questions.push(Cow::Borrowed(q));
                question_ids.push(ids);
            }
        }

        // 2. The pairs, with context-only truncation into overlapping, padded windows.
        let tok = self.windowing(cfg)?;
        let inputs: Vec<EncodeInput> = cut_questions
            .iter()
            .zip(pairs)
            .map(|(q, (_, c))| (q.as_ref(), *c).into())
            .collect();
        // One pair (a served query) is encoded on this thread: the batch call hands even one
        // item to the thread pool, which may be busy with a forward pass.
        let encodings = if inputs.len() == 1 {
            let input = inputs.into_iter().next().expect("one input");
            vec![tok.encode_char_offsets(input, true).map_err(wrap)?]
        } else {
            tok.encode_batch_char_offsets(inputs, true).map_err(wrap)?
        };

        let mut windows = Vec::with_capacity(encodings.len() * 2);
        for (i, mut enc) in encodings.into_iter().enumerate() {
            // The question sits between [CLS] and the first [SEP] in every window.
            let q = question_ids[i];
            if enc.get_ids().get(1..1 + q.len()) != Some(q) {
                return Err(anyhow!(
                    "cutting question {i} ({:?}) at {} tokens changed its tokenisation",
                    pairs[i].0,
                    cfg.max_query_length
                ));
            }
            let overflowing = enc.take_overflowing();
            windows.push(Window::from_encoding(i, &enc));
            windows.extend(overflowing.iter().map(|e| Window::from_encoding(i, e)));
        }
        Ok(windows)
    }

    /// The tokenizer with `cfg`'s truncation and padding (made once per settings).
    fn windowing(&self, cfg: &FeatureConfig) -> Result<Arc<Tokenizer>> {
        let mut cached = self.windowing.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((c, tok)) = cached.as_ref() {
            if c == cfg {
                return Ok(Arc::clone(tok));
            }
        }
        let wrap = |e: tokenizers::Error| anyhow!("tokenizer: {e}");
        let mut tok = self.tokenizer.clone();
        tok.with_truncation(Some(TruncationParams {
            max_length: cfg.max_seq_length,
            strategy: TruncationStrategy::OnlySecond,
            stride: cfg.doc_stride,
            direction: TruncationDirection::Right,
        }))
        .map_err(wrap)?;
        tok.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(cfg.max_seq_length),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id: self.pad_id,
            pad_type_id: 0,
            pad_token: self.pad_token.clone(),
        }));
        let tok = Arc::new(tok);
        *cached = Some((*cfg, Arc::clone(&tok)));
        Ok(tok)
    }

    /// Tokenise examples into model features with training labels from each example's first
    /// gold answer. `Feature::example_index` indexes `examples`.
    pub fn features(&self, examples: &[Example], cfg: &FeatureConfig) -> Result<Vec<Feature>> {
        let mut features = Vec::with_capacity(examples.len() * 11 / 10);
        for (chunk_index, chunk) in examples.chunks(CHUNK).enumerate() {
            let base = chunk_index * CHUNK;
            let pairs: Vec<(&str, &str)> = chunk.iter().map(|e| (e.question, e.context)).collect();
            let windows = self
                .windows(&pairs, cfg)
                .with_context(|| format!("tokenising examples {base}..{}", base + chunk.len()))?;
            features.extend(windows.into_iter().map(|mut w| {
                let example = &chunk[w.example_index];
                w.example_index += base;
                Feature::from_window(w, example)
            }));
        }
        Ok(features)
    }
}

/// Token span of the answer `(start_char, end_char)` (code points, end exclusive) in a window,
/// as in `prepare_train_features` of HF's `run_qa.py`: `(CLS, CLS)` unless the answer lies
/// entirely within the window's context tokens; otherwise the last token starting at or
/// before the answer start and the first token ending at or after the answer end.
///
/// One deliberate difference: `run_qa.py` walks the start index through the window without a
/// bound on the context, so when the answer starts in the window's last context token it runs
/// on through `[SEP]` and padding (offsets `(0, 0)`) and labels the window's last position.
/// Here the walk stays within the context tokens, which gives the intended token.
pub(crate) fn label_span(w: &Window, (start_char, end_char): (usize, usize)) -> (usize, usize) {
    let is_ctx = |i: usize| w.sequence_ids[i] == Some(1);
    let Some(first) = (0..w.sequence_ids.len()).find(|&i| is_ctx(i)) else {
        return (CLS_INDEX, CLS_INDEX);
    };
    let last = (0..w.sequence_ids.len())
        .rev()
        .find(|&i| is_ctx(i))
        .expect("a first context token implies a last");
    if !(w.offsets[first].0 <= start_char && w.offsets[last].1 >= end_char) {
        return (CLS_INDEX, CLS_INDEX);
    }
    let mut start = first;
    while start < last && w.offsets[start + 1].0 <= start_char {
        start += 1;
    }
    let mut end = last;
    while end > first && w.offsets[end - 1].1 >= end_char {
        end -= 1;
    }
    (start, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A window "[CLS] q [SEP] c0 c1 c2 [SEP] [PAD]" over the context "ab cd ef".
    fn window() -> Window {
        Window {
            example_index: 0,
            input_ids: vec![101, 1, 102, 2, 3, 4, 102, 0],
            token_type_ids: vec![0, 0, 0, 1, 1, 1, 1, 0],
            attention_mask: vec![1, 1, 1, 1, 1, 1, 1, 0],
            offsets: vec![
                (0, 0),
                (0, 1),
                (0, 0),
                (0, 2),
                (3, 5),
                (6, 8),
                (0, 0),
                (0, 0),
            ],
            sequence_ids: vec![None, Some(0), None, Some(1), Some(1), Some(1), None, None],
        }
    }

    #[test]
    fn labels_cover_the_answer_tokens() {
        let w = window();
        assert_eq!(label_span(&w, (0, 2)), (3, 3));
        assert_eq!(label_span(&w, (3, 8)), (4, 5));
        assert_eq!(label_span(&w, (4, 5)), (4, 4), "answer inside one token");
        assert_eq!(label_span(&w, (0, 8)), (3, 5));
    }

    #[test]
    fn answer_in_the_last_context_token_is_labelled_there() {
        // HF's run_qa.py would label position 7 (padding) here.
        assert_eq!(label_span(&window(), (6, 8)), (5, 5));
    }

    #[test]
    fn answer_not_fully_inside_the_window_is_labelled_cls() {
        let w = window();
        assert_eq!(label_span(&w, (6, 9)), (0, 0), "runs past the window");
        let mut later = window();
        later.offsets[3] = (10, 12);
        later.offsets[4] = (13, 15);
        later.offsets[5] = (16, 18);
        assert_eq!(label_span(&later, (3, 5)), (0, 0), "before the window");
    }

    #[test]
    fn config_validation() {
        FeatureConfig::default().validate().unwrap();
        let bad = FeatureConfig {
            max_seq_length: 64,
            doc_stride: 16,
            max_query_length: 45,
        };
        let e = bad.validate().unwrap_err();
        assert_eq!(crate::error::exit_code(&e), crate::error::EXIT_BAD_INPUT);
        FeatureConfig {
            max_query_length: 44,
            ..bad
        }
        .validate()
        .unwrap();
    }
}
