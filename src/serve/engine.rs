//! The model as a system under test: the same tokeniser, forward pass and decoding as `eval`,
//! one query at a time.

use std::path::Path;

use anyhow::Result;

use super::batcher::{Answer, Engine, QueryOptions};
use crate::answer::{check_windows, forward_windows, LogitRows};
use crate::models::{LoadReport, ModelSpec, QaModel};
use crate::squad::{
    data::char_slice, decode_predictions, load_tokenizer, tokenizer_path, DecodeConfig, Example,
    Feature, FeatureConfig, QaTokenizer,
};

/// A QA model with its tokeniser and the window and decoding settings `eval` uses.
pub struct QaEngine {
    pub model: QaModel,
    pub tokenizer: QaTokenizer,
    pub features: FeatureConfig,
    pub decode: DecodeConfig,
}

/// An engine as opened, with where its model came from.
pub struct OpenedEngine {
    pub engine: QaEngine,
    /// The model's origin (a directory, the cache, a download, a built-in config).
    pub source: String,
    /// What loading the checkpoint did (`None` for random weights).
    pub report: Option<LoadReport>,
}

impl QaEngine {
    /// Opens `spec`'s model and a tokenizer (`tokenizer`: a directory, `tokenizer.json` or
    /// `vocab.txt`; else the model's own) as an engine cutting `features` windows and decoding
    /// with `decode`; windows the model cannot take are refused first. The compute pool and
    /// tier must be chosen before.
    pub fn open(
        spec: &ModelSpec,
        tokenizer: Option<&Path>,
        features: FeatureConfig,
        decode: DecodeConfig,
    ) -> Result<OpenedEngine> {
        let opened = spec.open()?;
        check_windows(&features, opened.model.config())?;
        let tokenizer = load_tokenizer(&tokenizer_path(
            tokenizer,
            opened.dir.as_deref(),
            &spec.model,
        )?)?;
        Ok(OpenedEngine {
            engine: QaEngine {
                model: opened.model,
                tokenizer,
                features,
                decode,
            },
            source: opened.source,
            report: opened.report,
        })
    }
}

fn example<'a>(question: &'a str, context: &'a str) -> Example<'a> {
    Example {
        id: "",
        title: "",
        question,
        context,
        answers: &[],
    }
}

impl Engine for QaEngine {
    fn windows(
        &self,
        question: &str,
        context: &str,
        options: &QueryOptions,
    ) -> Result<Vec<Feature>> {
        let features = options.features.unwrap_or(self.features);
        self.tokenizer
            .features(&[example(question, context)], &features)
    }

    fn forward(&self, windows: &[&Feature]) -> Result<LogitRows> {
        forward_windows(&self.model, windows)
    }

    fn decode(
        &self,
        question: &str,
        context: &str,
        windows: &[Feature],
        (starts, ends): LogitRows,
        options: &QueryOptions,
    ) -> Result<Vec<Answer>> {
        let mut decode = options.decode.unwrap_or(self.decode);
        // More answers than the n-best list holds: a longer list (the defaults, and so
        // `eval`'s answers, are untouched when one answer is asked for).
        decode.n_best_size = decode.n_best_size.max(options.answers());
        let mut predictions = decode_predictions(
            &[example(question, context)],
            windows,
            &starts,
            &ends,
            &decode,
        )?;
        let p = predictions.pop().expect("one prediction per example");
        // The best answer is the prediction's text (the n-best list's first entry); the
        // others are the next entries with a span (an entry without one is "no answer").
        let mut answers: Vec<Answer> = vec![Answer {
            text: p.text.clone(),
            score: p.nbest[0].probability,
            span: p.nbest[0].span,
        }];
        answers.extend(
            p.nbest[1..]
                .iter()
                .filter(|e| e.span.is_some())
                .take(options.answers() - 1)
                .map(|e| Answer {
                    text: e.text.clone(),
                    score: e.probability,
                    span: e.span,
                }),
        );
        if options.align_to_words {
            let spans: Vec<(usize, usize)> = answers.iter().filter_map(|a| a.span).collect();
            let mut aligned = self.tokenizer.align_to_words(context, &spans)?.into_iter();
            for a in answers.iter_mut().filter(|a| a.span.is_some()) {
                let (s, e) = aligned.next().expect("one aligned span per span");
                a.text = char_slice(context, s, e)
                    .ok_or_else(|| anyhow::anyhow!("aligned span {s}..{e} is outside the context"))?
                    .to_string();
                a.span = Some((s, e));
            }
        }
        Ok(answers)
    }
}
