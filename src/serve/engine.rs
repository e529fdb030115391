//! The model as a system under test: the same tokeniser, forward pass and decoding as `eval`,
//! one query at a time.

use anyhow::Result;

use super::batcher::{Answer, Engine};
use crate::eval::{forward_windows, LogitRows};
use crate::models::QaModel;
use crate::squad::{
    decode_predictions, DecodeConfig, Example, Feature, FeatureConfig, QaTokenizer,
};

/// A QA model with its tokeniser and the window and decoding settings `eval` uses.
pub struct QaEngine {
    pub model: QaModel,
    pub tokenizer: QaTokenizer,
    pub features: FeatureConfig,
    pub decode: DecodeConfig,
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
    fn windows(&self, question: &str, context: &str) -> Result<Vec<Feature>> {
        self.tokenizer
            .features(&[example(question, context)], &self.features)
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
    ) -> Result<Answer> {
        let mut predictions = decode_predictions(
            &[example(question, context)],
            windows,
            &starts,
            &ends,
            &self.decode,
        )?;
        let p = predictions.pop().expect("one prediction per example");
        let best = &p.nbest[0];
        Ok(Answer {
            text: p.text.clone(),
            score: best.probability,
            span: best.span,
        })
    }
}
