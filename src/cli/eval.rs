//! `bertbench eval`: SQuAD accuracy and speed of a model from one run.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;

use super::model::ModelArgs;
use crate::answer::EvalConfig;
use crate::eval::{EvalJob, EvalOutcome};
use crate::squad::{DecodeConfig, FeatureConfig};

/// How questions become windows and windows answers: the tokenizer, the windowing and the
/// decoding; shared by every command that answers questions (`eval`, `loadgen`, `serve`).
#[derive(Debug, Clone, Args)]
pub struct AnswerArgs {
    /// Tokenizer: a model directory, tokenizer.json or vocab.txt (default: the model's own).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[command(flatten)]
    pub windows: FeatureConfig,
    #[command(flatten)]
    pub decode: DecodeConfig,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// SQuAD v1.1 file (.json or .json.gz).
    #[arg(long)]
    pub dataset: PathBuf,
    /// Evaluate only the first N questions (in file order); the score covers exactly those.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Windows per forward pass.
    #[arg(long, default_value_t = crate::answer::DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    #[command(flatten)]
    pub answers: AnswerArgs,
    /// Where predictions.json, nbest_predictions.json and eval_results.json go
    /// (default: eval-results/<date-time>).
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// Replace predictions already in --output-dir.
    #[arg(long)]
    pub overwrite: bool,
}

pub fn eval(args: EvalArgs) -> Result<()> {
    let job = EvalJob {
        spec: args.model.spec(),
        dataset: args.dataset.clone(),
        limit: args.limit,
        config: EvalConfig {
            features: args.answers.windows,
            decode: args.answers.decode,
            batch_size: args.batch_size,
        },
        tokenizer: args.answers.tokenizer.clone(),
        output_dir: args
            .output_dir
            .clone()
            .unwrap_or_else(|| crate::record::timestamped_dir(Path::new("eval-results"))),
        overwrite: args.overwrite,
    };
    args.model.compute.use_threads()?;
    evaluate(&job)
}

/// The progress bar of an evaluation (`eval`, and each of `run`'s).
pub(crate) const BAR: &str = "{prefix} {bar:30} {pos}/{len}  {per_sec}  eta {eta}";

/// Runs `job` with a progress bar and prints what it found (the compute pool is sized
/// before).
fn evaluate(job: &EvalJob) -> Result<()> {
    let mut bar = super::Bar::new(BAR);
    let outcome = job.run(&mut bar);
    bar.finish();
    print_eval(job, &outcome?);
    Ok(())
}

/// What an evaluation found, one screen (`eval`, and each of `run`'s).
pub(crate) fn print_eval(job: &EvalJob, outcome: &EvalOutcome) {
    let r = &outcome.results.report;
    println!("{}  ({})", job.spec.model, outcome.results.model_source);
    println!(
        "  accuracy   EM {:.2}  F1 {:.2}  over {} questions{}",
        r.exact_match,
        r.f1,
        r.questions,
        job.limit
            .map(|n| format!(" (first {n})"))
            .unwrap_or_default()
    );
    println!(
        "  speed      {:.1} questions/s overall, {:.1} windows/s in the model ({} windows, batch {}, {} threads, {} on {})",
        r.questions_per_s,
        r.windows_per_s,
        r.windows,
        job.config.batch_size,
        outcome.results.threads,
        outcome.results.dtype.as_str(),
        outcome.results.device
    );
    println!(
        "  time       {:.2} s: tokenise {:.2} s, model {:.2} s, decode {:.2} s",
        r.wall_s, r.tokenize_s, r.model_s, r.decode_s
    );
    println!(
        "  wrote      {}, {}, {}",
        outcome.predictions_file.display(),
        outcome.nbest_file.display(),
        outcome.results_file.display()
    );
}
