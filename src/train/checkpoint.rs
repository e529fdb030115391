//! Checkpoints in the Hugging Face layout: `config.json`, `model.safetensors` with the Hub's
//! tensor names (so transformers and bertbench both load it), the tokenizer files,
//! `training_args.json`, and `trainer_state.json` + `optimizer.safetensors` with what
//! `--resume` needs to continue exactly where the run stopped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::answer::EvalReport;
use crate::compute::optim::AdamW;
use crate::models::ModelConfig;
use crate::record::atomic_write;

/// One row of the training log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    pub step: usize,
    pub epoch: f64,
    /// Mean training loss over the steps since the previous row.
    pub loss: Option<f64>,
    pub learning_rate: Option<f64>,
    pub grad_norm: Option<f64>,
    pub samples_per_s: Option<f64>,
    pub elapsed_s: f64,
    pub eval_exact_match: Option<f64>,
    pub eval_f1: Option<f64>,
    pub eval_questions: Option<usize>,
}

impl LogEntry {
    /// The row of an evaluation after `step`.
    pub fn evaluation(step: usize, epoch: f64, elapsed_s: f64, report: &EvalReport) -> Self {
        Self {
            step,
            epoch,
            loss: None,
            learning_rate: None,
            grad_norm: None,
            samples_per_s: None,
            elapsed_s,
            eval_exact_match: Some(report.exact_match),
            eval_f1: Some(report.f1),
            eval_questions: Some(report.questions),
        }
    }

    /// The row as a line for the person watching: a loss row or an evaluation row (`None`
    /// for a row with neither).
    pub fn line(&self) -> Option<String> {
        match (self.loss, self.eval_f1) {
            (Some(loss), _) => Some(format!(
                "step {:>6}  epoch {:.2}  loss {loss:.4}  lr {:.2e}  grad norm {:.3}  {:.1} samples/s",
                self.step,
                self.epoch,
                self.learning_rate.unwrap_or(0.0),
                self.grad_norm.unwrap_or(0.0),
                self.samples_per_s.unwrap_or(0.0)
            )),
            (None, Some(f1)) => Some(format!(
                "step {:>6}  epoch {:.2}  eval EM {:.2}  F1 {f1:.2}  ({} questions, {:.0} s into training)",
                self.step,
                self.epoch,
                self.eval_exact_match.unwrap_or(0.0),
                self.eval_questions.unwrap_or(0),
                self.elapsed_s
            )),
            (None, None) => None,
        }
    }
}

/// Where training stands: enough to resume with the same data order and the same result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps taken.
    pub global_step: usize,
    /// Total optimizer steps of the run.
    pub max_steps: usize,
    pub num_train_epochs: usize,
    /// Fractional epochs done.
    pub epoch: f64,
    /// Training seconds before this checkpoint (summed over resumed sessions).
    pub elapsed_s: f64,
    pub log_history: Vec<LogEntry>,
    /// The seed every random draw of the run derives from (data order, dropout).
    pub seed: u64,
}

/// Name of the directory for a checkpoint at `step`.
pub fn checkpoint_dir(output_dir: &Path, step: usize) -> PathBuf {
    output_dir.join(format!("checkpoint-{step}"))
}

/// A run's (and a checkpoint's) training state, in transformers' Trainer layout.
pub const TRAINER_STATE_FILE: &str = "trainer_state.json";
/// The arguments a run was started with.
pub const TRAINING_ARGS_FILE: &str = "training_args.json";

/// The newest `checkpoint-N` directory in `output_dir` that holds a complete checkpoint.
pub fn latest_checkpoint(output_dir: &Path) -> Option<(usize, PathBuf)> {
    std::fs::read_dir(output_dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step: usize = name.strip_prefix("checkpoint-")?.parse().ok()?;
            let dir = e.path();
            dir.join(TRAINER_STATE_FILE)
                .is_file()
                .then_some((step, dir))
        })
        .max_by_key(|(step, _)| *step)
}

/// The `config.json` to save: the one read, marked as the QA architecture and its dtype.
pub fn config_json(config: &ModelConfig, dtype: DType) -> serde_json::Value {
    let mut raw = config.raw.clone();
    if let Some(obj) = raw.as_object_mut() {
        obj.insert(
            "architectures".into(),
            serde_json::json!([config.model_type.qa_class()]),
        );
        let name = match dtype {
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            _ => "float32",
        };
        // transformers 5 reads `dtype`, 4 reads `torch_dtype`; keep whichever the file used.
        let key = if obj.contains_key("dtype") {
            "dtype"
        } else {
            "torch_dtype"
        };
        obj.insert(key.into(), serde_json::json!(name));
    }
    raw
}

/// Writes `tensors` as safetensors with the `{"format": "pt"}` metadata transformers expects.
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let tmp = path.with_extension("safetensors.tmp");
    let contiguous: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.contiguous()?)))
        .collect::<Result<_>>()?;
    safetensors::tensor::serialize_to_file(
        contiguous.iter().map(|(n, t)| (n.as_str(), t)),
        Some(metadata),
        &tmp,
    )
    .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// What a saved model directory is made of.
pub struct ModelFiles<'a> {
    pub config: &'a ModelConfig,
    /// Parameters by Hub name.
    pub params: &'a [(String, Var)],
    pub dtype: DType,
    /// Copied in beside the weights.
    pub tokenizer_files: &'a [PathBuf],
}

/// Saves a model directory: config, weights (Hub names), tokenizer files.
pub fn save_model(dir: &Path, model: &ModelFiles) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let config = config_json(model.config, model.dtype);
    atomic_write(
        &dir.join("config.json"),
        serde_json::to_string_pretty(&config)?.as_bytes(),
    )?;
    let tensors: Vec<(String, Tensor)> = model
        .params
        .iter()
        .map(|(n, v)| {
            Ok((
                n.clone(),
                v.as_tensor().to_device(&candle_core::Device::Cpu)?,
            ))
        })
        .collect::<Result<_>>()?;
    write_safetensors(&dir.join("model.safetensors"), &tensors)?;
    for file in model.tokenizer_files {
        let name = file.file_name().context("tokenizer file without a name")?;
        std::fs::copy(file, dir.join(name))
            .with_context(|| format!("copying {}", file.display()))?;
    }
    Ok(())
}

/// Saves a model with its run: `training_args.json`, `trainer_state.json` and, for a resumable
/// checkpoint, `optimizer.safetensors` (the final model, like the Trainer's, has none).
pub fn save_run(
    dir: &Path,
    model: &ModelFiles,
    args_json: &serde_json::Value,
    state: &TrainerState,
    optimizer: Option<&AdamW>,
) -> Result<()> {
    save_model(dir, model)?;
    atomic_write(
        &dir.join(TRAINING_ARGS_FILE),
        serde_json::to_string_pretty(args_json)?.as_bytes(),
    )?;
    if let Some(optimizer) = optimizer {
        write_safetensors(
            &dir.join("optimizer.safetensors"),
            &optimizer.state_tensors()?,
        )?;
    }
    // Written last: its presence marks a checkpoint complete.
    atomic_write(
        &dir.join(TRAINER_STATE_FILE),
        serde_json::to_string_pretty(state)?.as_bytes(),
    )?;
    Ok(())
}

/// Reads a checkpoint's trainer state and optimizer tensors.
pub fn read_checkpoint(dir: &Path) -> Result<(TrainerState, HashMap<String, Tensor>)> {
    let state_path = dir.join(TRAINER_STATE_FILE);
    let state: TrainerState = serde_json::from_str(
        &std::fs::read_to_string(&state_path)
            .with_context(|| format!("reading {}", state_path.display()))?,
    )
    .with_context(|| format!("parsing {}", state_path.display()))?;
    let optimizer = candle_core::safetensors::load(
        dir.join("optimizer.safetensors"),
        &candle_core::Device::Cpu,
    )
    .with_context(|| format!("reading {}", dir.join("optimizer.safetensors").display()))?;
    Ok((state, optimizer))
}

/// Writes the log as `train_log.csv`: one row per logging step or evaluation.
pub fn write_log_csv(path: &Path, log: &[LogEntry]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "step",
        "epoch",
        "loss",
        "learning_rate",
        "grad_norm",
        "samples_per_s",
        "elapsed_s",
        "eval_exact_match",
        "eval_f1",
        "eval_questions",
    ])?;
    let f = |x: Option<f64>| x.map(|v| v.to_string()).unwrap_or_default();
    for e in log {
        w.write_record([
            e.step.to_string(),
            format!("{:.4}", e.epoch),
            f(e.loss),
            f(e.learning_rate),
            f(e.grad_norm),
            f(e.samples_per_s),
            format!("{:.3}", e.elapsed_s),
            f(e.eval_exact_match),
            f(e.eval_f1),
            e.eval_questions.map(|q| q.to_string()).unwrap_or_default(),
        ])?;
    }
    atomic_write(path, &w.into_inner()?)
}

/// Training time and dollars until a run first reached `target_f1` (the log's scale, 0-100):
/// the first log row with an evaluation F1 >= `target_f1`, costed as
/// `usd = elapsed_s / 3600 * usd_per_hour`, with `elapsed_s` the training clock of that row
/// (summed over resumed sessions). `None` if no evaluation reached the target.
pub fn cost_to_reach_f1(log: &[LogEntry], target_f1: f64, usd_per_hour: f64) -> Option<(f64, f64)> {
    log.iter()
        .find(|e| e.eval_f1.is_some_and(|f1| f1 >= target_f1))
        .map(|e| {
            (
                e.elapsed_s,
                crate::cost::usd_for_seconds(e.elapsed_s, usd_per_hour),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1.0)
    }

    fn row(step: usize, elapsed_s: f64, eval_f1: Option<f64>) -> LogEntry {
        LogEntry {
            step,
            epoch: step as f64 / 100.0,
            loss: Some(1.0),
            learning_rate: None,
            grad_norm: None,
            samples_per_s: None,
            elapsed_s,
            eval_exact_match: eval_f1.map(|f| f - 8.0),
            eval_f1,
            eval_questions: eval_f1.map(|_| 100),
        }
    }

    #[test]
    fn cost_to_reach_f1_takes_the_first_evaluation_at_target() {
        let log = [
            row(10, 60.0, None),
            row(100, 600.0, Some(70.0)),
            row(150, 900.0, None),
            row(200, 1200.0, Some(85.5)),
            row(300, 1800.0, Some(88.0)),
        ];
        // 85 is first reached at 1200 s: at $3/h, 1200 / 3600 * 3 = $1.
        let (s, usd) = cost_to_reach_f1(&log, 85.0, 3.0).unwrap();
        assert_eq!(s, 1200.0);
        assert!(close(usd, 1.0));
        // Exactly the target counts.
        assert_eq!(cost_to_reach_f1(&log, 88.0, 3.0).unwrap().0, 1800.0);
        assert_eq!(cost_to_reach_f1(&log, 70.0, 3.0).unwrap().0, 600.0);
        assert!(cost_to_reach_f1(&log, 90.0, 3.0).is_none());
        assert!(cost_to_reach_f1(&[], 1.0, 3.0).is_none());
    }
}
