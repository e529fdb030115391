//! Questions answered with a model, the layer the jobs share (`eval`, `train`'s evaluations,
//! `serve`'s batcher): tokenise the questions into windows, run the model over windows
//! batched by length, decode answers and score them with the official metric, and the
//! `eval_results.json` schema ([`EvalResults`]) that records it. Accuracy and speed come from
//! the same run on the same weights.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::device::{DeviceSpec, Precision};
use crate::error::input;
use crate::models::{Batch, ForwardCtx, ModelConfig, ModelType, QaModel};
use crate::squad::{
    decode_predictions, evaluate, predictions_map, Dataset, DecodeConfig, Example, Feature,
    FeatureConfig, Prediction, QaTokenizer, Score,
};

/// Windows per forward pass unless told otherwise (`run_qa.py`'s evaluation batch).
pub const DEFAULT_BATCH_SIZE: usize = 32;

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
    /// Tokenisation + model + decoding + scoring. (Read as `wall_time_s` too: files written
    /// by `eval` before 0.2 used that name.)
    #[serde(alias = "wall_time_s")]
    pub wall_s: f64,
    pub questions_per_s: f64,
    pub windows_per_s: f64,
}

/// `eval_results.json`: what `bertbench eval` and `train`'s final evaluation write and what
/// `report` reads, in one schema: the measurement ([`EvalReport`]) and how it was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResults {
    #[serde(flatten)]
    pub report: EvalReport,
    /// The model argument evaluated (a directory, a Hub id or a built-in name).
    pub model: String,
    /// Where its weights came from, in words.
    pub model_source: String,
    /// The SQuAD file.
    pub dataset: String,
    /// Only the first N questions, when set.
    pub limit: Option<usize>,
    /// What the model ran at (`f32`, `int8`, ...).
    pub dtype: Precision,
    /// Where (`cpu`, `cuda:N`).
    pub device: DeviceSpec,
    pub threads: usize,
    pub batch_size: usize,
    pub max_seq_length: usize,
    pub doc_stride: usize,
    pub max_query_length: usize,
    pub max_answer_length: usize,
    pub n_best_size: usize,
    pub bertbench_version: String,
    pub git_commit: String,
}

/// The file name [`EvalResults`] is written under.
pub const EVAL_RESULTS_FILE: &str = "eval_results.json";
/// The answers an evaluation writes beside it (`squad::decode` writes them).
pub use crate::squad::decode::PREDICTIONS_FILE;

impl EvalResults {
    /// The results of `report`, made with `cfg`; version and commit are this build's.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        report: EvalReport,
        cfg: &EvalConfig,
        model: &str,
        model_source: &str,
        dataset: &Path,
        limit: Option<usize>,
        dtype: Precision,
        device: DeviceSpec,
        threads: usize,
    ) -> Self {
        Self {
            report,
            model: model.to_string(),
            model_source: model_source.to_string(),
            dataset: dataset.display().to_string(),
            limit,
            dtype,
            device,
            threads,
            batch_size: cfg.batch_size,
            max_seq_length: cfg.features.max_seq_length,
            doc_stride: cfg.features.doc_stride,
            max_query_length: cfg.features.max_query_length,
            max_answer_length: cfg.decode.max_answer_length,
            n_best_size: cfg.decode.n_best_size,
            bertbench_version: crate::record::VERSION.to_string(),
            git_commit: crate::record::GIT_COMMIT.to_string(),
        }
    }

    /// Writes `path` (atomically: a reader never sees half a file).
    pub fn write(&self, path: &Path) -> Result<()> {
        crate::record::atomic_write(path, serde_json::to_string_pretty(self)?.as_bytes())
    }

    /// Reads `path`; anything that is not this schema is an input error naming the file.
    pub fn read(path: &Path) -> Result<Self> {
        crate::error::read_json(path, "an eval_results.json of this bertbench")
    }
}

/// The answers of the evaluation whose `eval_results.json` is `results` (its `predictions.json`
/// beside it), by question id.
pub fn read_predictions(results: &Path) -> Result<std::collections::HashMap<String, String>> {
    let dir = results.parent().unwrap_or(Path::new("."));
    crate::error::read_json(
        &dir.join(PREDICTIONS_FILE),
        "a predictions.json (question id -> answer)",
    )
}

/// Each question's F1 (0-100) of the evaluation whose `eval_results.json` is `results`: its
/// `predictions.json` beside it, scored against the dataset it names (cut to its `limit`), so
/// that two evaluations can be compared question by question.
pub fn f1_per_question(results: &Path) -> Result<std::collections::HashMap<String, f64>> {
    let r = EvalResults::read(results)?;
    let predictions = read_predictions(results)?;
    let dataset = crate::squad::read_dataset(Path::new(&r.dataset))?;
    let dataset = match r.limit {
        Some(n) => dataset.first_questions(n),
        None => dataset,
    };
    Ok(crate::squad::metric::f1_per_question(
        &dataset,
        &predictions,
    ))
}

/// Windows are run at their real length rounded up to a multiple of this many tokens.
///
/// Why a fixed rounding and not "the longest window of the batch": a window's logits then
/// depend on the window alone. Run at different padded lengths, the softmax over keys adds
/// its terms in a different order (SIMD lanes), and the last bits of every logit move with
/// whatever the window happened to be batched with; with the length fixed per window, every
/// row of a product is computed in the same order whatever the batch size, so logits, and
/// answers, are bit-identical for every batch size and thread count (tested). Sixteen
/// tokens waste at most 15 padded positions per window and leave 24 lengths at 384.
pub const LENGTH_BUCKET: usize = 16;

/// Real tokens of a window: up to and including its last attended position (at least 1).
pub fn real_length(feature: &Feature) -> usize {
    feature
        .attention_mask
        .iter()
        .rposition(|m| *m == 1)
        .map_or(1, |p| p + 1)
}

/// The length a window is run at: [`real_length`] rounded up to [`LENGTH_BUCKET`], never
/// beyond the window's own (padded) length. A function of the window alone.
pub fn run_length(feature: &Feature) -> usize {
    real_length(feature)
        .next_multiple_of(LENGTH_BUCKET)
        .min(feature.input_ids.len().max(1))
}

/// The batches [`run_model`] runs, as feature indices: windows grouped by [`run_length`]
/// (shortest first, feature order within a length), each group cut into batches of at most
/// `batch_size`. Every batch holds windows of one run length only, so no window is padded
/// for another's sake.
pub fn plan_batches(features: &[Feature], batch_size: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<(usize, usize)> = features
        .iter()
        .enumerate()
        .map(|(i, f)| (run_length(f), i))
        .collect();
    order.sort_unstable();
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut current_len = None;
    for (len, i) in order {
        match batches.last_mut() {
            Some(b) if current_len == Some(len) && b.len() < batch_size.max(1) => b.push(i),
            _ => batches.push(vec![i]),
        }
        current_len = Some(len);
    }
    batches
}

/// Stacks windows into a model batch of `len` tokens per row (their first `len` positions).
/// Training passes each window's full length; inference its [`run_length`].
pub fn stack_windows(
    features: &[&Feature],
    len: usize,
    model_type: ModelType,
    device: &Device,
) -> Result<Batch> {
    let stack = |get: &dyn Fn(&Feature) -> &[u32]| -> Result<Tensor> {
        let mut flat: Vec<u32> = Vec::with_capacity(features.len() * len);
        for f in features {
            let row = get(f);
            if row.len() < len {
                bail!("a window of {} tokens cannot be run at {len}", row.len());
            }
            flat.extend_from_slice(&row[..len]);
        }
        Ok(Tensor::from_vec(flat, (features.len(), len), device)?)
    };
    Ok(Batch {
        input_ids: stack(&|f| &f.input_ids)?,
        attention_mask: stack(&|f| &f.attention_mask)?,
        token_type_ids: match model_type {
            ModelType::DistilBert => None,
            _ => Some(stack(&|f| &f.token_type_ids)?),
        },
    })
}

/// Start and end logits, one row per feature.
pub type LogitRows = (Vec<Vec<f32>>, Vec<Vec<f32>>);

/// Runs the model over every window, in the batches of [`plan_batches`]; returns start and
/// end logits per feature, in feature order and at the feature's full length. Positions past
/// the window's [`run_length`] were not computed and hold `f32::MIN`; decoding reads context
/// positions only, so they never take part. `progress(n)` is called after each batch with
/// its window count.
pub fn run_model(
    model: &QaModel,
    features: &[Feature],
    batch_size: usize,
    mut progress: impl FnMut(usize),
) -> Result<LogitRows> {
    if batch_size == 0 {
        bail!("batch size must be at least 1");
    }
    let mut starts = vec![Vec::new(); features.len()];
    let mut ends = vec![Vec::new(); features.len()];
    for batch in plan_batches(features, batch_size) {
        let rows: Vec<&Feature> = batch.iter().map(|&i| &features[i]).collect();
        let (s, e) = forward_windows(model, &rows)?;
        for ((s, e), &i) in s.into_iter().zip(e).zip(&batch) {
            starts[i] = s;
            ends[i] = e;
        }
        progress(batch.len());
    }
    Ok((starts, ends))
}

/// One forward pass over windows of one [`run_length`] (as [`plan_batches`] and the serving
/// batcher group them): start and end logits per window at the window's full length, with
/// `f32::MIN` past the run length. Windows of different run lengths are refused: run at
/// another length, a window's logits would depend on its batch.
pub fn forward_windows(model: &QaModel, rows: &[&Feature]) -> Result<LogitRows> {
    let Some(first) = rows.first() else {
        return Ok((Vec::new(), Vec::new()));
    };
    let len = run_length(first);
    if let Some(other) = rows.iter().find(|f| run_length(f) != len) {
        bail!(
            "a batch mixes run lengths {len} and {}: windows are run at their own length",
            run_length(other)
        );
    }
    let input = stack_windows(rows, len, model.config().model_type, model.device())?;
    let out = model.forward(&input, &mut ForwardCtx::inference())?;
    let s: Vec<Vec<f32>> = out.start_logits.to_dtype(DType::F32)?.to_vec2()?;
    let e: Vec<Vec<f32>> = out.end_logits.to_dtype(DType::F32)?.to_vec2()?;
    let mut starts = Vec::with_capacity(rows.len());
    let mut ends = Vec::with_capacity(rows.len());
    for ((mut s, mut e), f) in s.into_iter().zip(e).zip(rows) {
        let full = f.input_ids.len().max(len);
        s.resize(full, f32::MIN);
        e.resize(full, f32::MIN);
        starts.push(s);
        ends.push(e);
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

/// Refuses windows longer than the model's position table, before any work.
pub fn check_windows(features: &FeatureConfig, config: &ModelConfig) -> Result<()> {
    if features.max_seq_length > config.max_position_embeddings {
        return Err(input(format!(
            "--max-seq-length {} exceeds the model's max_position_embeddings {}",
            features.max_seq_length, config.max_position_embeddings
        )));
    }
    Ok(())
}
