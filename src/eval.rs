//! SQuAD evaluation of a model: tokenise the questions into windows, run the model in
//! batches, decode answers and score them with the official metric. Accuracy and speed come
//! from the same run on the same weights.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::models::{Batch, ForwardCtx, QaModel};
use crate::squad::{
    decode_predictions, evaluate, predictions_map, Dataset, DecodeConfig, Example, Feature,
    FeatureConfig, Prediction, QaTokenizer, Score,
};

/// How to evaluate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalConfig {
    pub features: FeatureConfig,
    pub decode: DecodeConfig,
    /// Windows per forward pass.
    pub batch_size: usize,
}

/// What an evaluation measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub exact_match: f64,
    pub f1: f64,
    pub questions: usize,
    /// Windows (features) the questions became.
    pub windows: usize,
    pub tokenize_s: f64,
    pub model_s: f64,
    pub decode_s: f64,
    /// Tokenisation + model + decoding + scoring.
    pub wall_s: f64,
    pub questions_per_s: f64,
    pub windows_per_s: f64,
}

/// Stacks features `[from, to)` into a batch, cut to the longest real sequence among them:
/// the rest is padding that every row masks, so the real tokens' logits are unchanged and the
/// model does less work.
fn batch_of(features: &[Feature], model: &QaModel) -> Result<(Batch, usize)> {
    let len = features
        .iter()
        .map(|f| {
            f.attention_mask
                .iter()
                .rposition(|m| *m == 1)
                .map_or(1, |p| p + 1)
        })
        .max()
        .unwrap_or(1);
    let stack = |rows: Vec<&[u32]>| -> Result<Tensor> {
        let flat: Vec<u32> = rows.iter().flat_map(|r| r[..len].iter().copied()).collect();
        Ok(Tensor::from_vec(flat, (rows.len(), len), model.device())?)
    };
    let batch = Batch {
        input_ids: stack(features.iter().map(|f| f.input_ids.as_slice()).collect())?,
        attention_mask: stack(
            features
                .iter()
                .map(|f| f.attention_mask.as_slice())
                .collect(),
        )?,
        token_type_ids: match model.config().model_type {
            crate::models::ModelType::DistilBert => None,
            _ => Some(stack(
                features
                    .iter()
                    .map(|f| f.token_type_ids.as_slice())
                    .collect(),
            )?),
        },
    };
    Ok((batch, len))
}

/// Start and end logits, one row per feature.
pub type LogitRows = (Vec<Vec<f32>>, Vec<Vec<f32>>);

/// Runs the model over every window; returns start and end logits per feature, padded back to
/// the feature's length (padding positions get the lowest score, and decoding skips them).
pub fn run_model(
    model: &QaModel,
    features: &[Feature],
    batch_size: usize,
    mut progress: impl FnMut(usize),
) -> Result<LogitRows> {
    if batch_size == 0 {
        bail!("batch size must be at least 1");
    }
    let mut starts = Vec::with_capacity(features.len());
    let mut ends = Vec::with_capacity(features.len());
    for chunk in features.chunks(batch_size) {
        let (batch, len) = batch_of(chunk, model)?;
        let out = model.forward(&batch, &mut ForwardCtx::inference())?;
        let s: Vec<Vec<f32>> = out.start_logits.to_dtype(DType::F32)?.to_vec2()?;
        let e: Vec<Vec<f32>> = out.end_logits.to_dtype(DType::F32)?.to_vec2()?;
        for ((mut s, mut e), f) in s.into_iter().zip(e).zip(chunk) {
            s.resize(f.input_ids.len().max(len), f32::MIN);
            e.resize(f.input_ids.len().max(len), f32::MIN);
            starts.push(s);
            ends.push(e);
        }
        progress(chunk.len());
    }
    Ok((starts, ends))
}

/// Evaluates `model` on every question of `dataset` (cut it first with
/// [`Dataset::first_questions`] for a quick run). `progress(done, total)` counts windows.
pub fn evaluate_model(
    model: &QaModel,
    tokenizer: &QaTokenizer,
    dataset: &Dataset,
    cfg: &EvalConfig,
    mut progress: impl FnMut(usize, usize),
) -> Result<(Vec<Prediction>, Score, EvalReport)> {
    let wall = Instant::now();
    let examples: Vec<Example> = dataset.examples().collect();
    let t = Instant::now();
    let features = tokenizer.features(&examples, &cfg.features)?;
    let tokenize = t.elapsed();
    let t = Instant::now();
    let total = features.len();
    let mut done = 0;
    progress(0, total);
    let (starts, ends) = run_model(model, &features, cfg.batch_size, |n| {
        done += n;
        progress(done, total);
    })?;
    let model_time = t.elapsed();
    let t = Instant::now();
    let predictions = decode_predictions(&examples, &features, &starts, &ends, &cfg.decode)?;
    let decode = t.elapsed();
    let score = evaluate(dataset, &predictions_map(&predictions));
    let wall = wall.elapsed();
    let per_s = |n: usize, d: Duration| {
        if d.as_secs_f64() > 0.0 {
            n as f64 / d.as_secs_f64()
        } else {
            0.0
        }
    };
    let report = EvalReport {
        exact_match: score.exact_match,
        f1: score.f1,
        questions: examples.len(),
        windows: total,
        tokenize_s: tokenize.as_secs_f64(),
        model_s: model_time.as_secs_f64(),
        decode_s: decode.as_secs_f64(),
        wall_s: wall.as_secs_f64(),
        questions_per_s: per_s(examples.len(), wall),
        windows_per_s: per_s(total, model_time),
    };
    Ok((predictions, score, report))
}
