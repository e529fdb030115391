//! `bertbench eval`: SQuAD accuracy and speed of a model from one run.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;

use super::model::ModelArgs;
use crate::device::device_name;
use crate::error::input;
use crate::eval::{evaluate_model, EvalConfig, EvalResults, EVAL_RESULTS_FILE};
use crate::squad::{load_tokenizer, read_dataset, write_predictions, DecodeConfig, FeatureConfig};

/// How questions and contexts become model windows (`run_qa.py`'s settings); shared by every
/// command that tokenises SQuAD.
#[derive(Debug, Clone, Args)]
pub struct WindowArgs {
    /// Tokens per window, special tokens included.
    #[arg(long, default_value_t = 384)]
    pub max_seq_length: usize,
    /// Context tokens shared by consecutive windows of a long context.
    #[arg(long, default_value_t = 128)]
    pub doc_stride: usize,
    /// Questions are cut to this many tokens.
    #[arg(long, default_value_t = 64)]
    pub max_query_length: usize,
}

impl WindowArgs {
    /// The windowing, validated.
    pub fn features(&self) -> Result<FeatureConfig> {
        let cfg = FeatureConfig {
            max_seq_length: self.max_seq_length,
            doc_stride: self.doc_stride,
            max_query_length: self.max_query_length,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Refuses windows longer than the model's position table, before any work.
    pub fn check_model(&self, config: &crate::models::ModelConfig) -> Result<()> {
        if self.max_seq_length > config.max_position_embeddings {
            return Err(input(format!(
                "--max-seq-length {} exceeds the model's max_position_embeddings {}",
                self.max_seq_length, config.max_position_embeddings
            )));
        }
        Ok(())
    }
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
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Tokenizer: a model directory, tokenizer.json or vocab.txt (default: the model's own).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[command(flatten)]
    pub windows: WindowArgs,
    #[arg(long, default_value_t = 30)]
    pub max_answer_length: usize,
    #[arg(long, default_value_t = 20)]
    pub n_best_size: usize,
    /// Where predictions.json, nbest_predictions.json and eval_results.json go
    /// (default: eval-results/<date-time>).
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// Replace predictions already in --output-dir.
    #[arg(long)]
    pub overwrite: bool,
}

pub fn eval(args: EvalArgs) -> Result<()> {
    if args.batch_size == 0 {
        return Err(input("--batch-size must be at least 1"));
    }
    if args.limit == Some(0) {
        return Err(input("--limit must be at least 1"));
    }
    let features = args.windows.features()?;
    let cfg = EvalConfig {
        features,
        decode: DecodeConfig {
            n_best_size: args.n_best_size,
            max_answer_length: args.max_answer_length,
        },
        batch_size: args.batch_size,
    };
    let out_dir = args
        .output_dir
        .clone()
        .unwrap_or_else(|| super::bench::timestamped_dir(Path::new("eval-results")));
    let results_path = out_dir.join(EVAL_RESULTS_FILE);
    if results_path.exists() && !args.overwrite {
        return Err(input(format!(
            "{} already exists; pass --overwrite to replace it or choose another --output-dir",
            results_path.display()
        )));
    }

    let full = read_dataset(&args.dataset)?;
    let dataset = match args.limit {
        Some(n) => full.first_questions(n),
        None => full,
    };
    let opened = args.model.open()?;
    let tokenizer_path = super::tokenizer_path(
        args.tokenizer.as_deref(),
        opened.dir.as_deref(),
        &args.model.model,
    )?;
    let tokenizer = load_tokenizer(&tokenizer_path)?;
    let model = &opened.model;
    args.windows.check_model(model.config())?;

    let bar = super::progress_bar("windows {bar:30} {pos}/{len}  {per_sec}  eta {eta}");
    let (predictions, score, report) =
        evaluate_model(model, &tokenizer, &dataset, &cfg, |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        })?;
    bar.finish_and_clear();

    let (preds_path, nbest_path) = write_predictions(&out_dir, &predictions, args.overwrite)?;
    let threads = args.model.compute.threads();
    EvalResults::new(
        report.clone(),
        &cfg,
        &args.model.model,
        &opened.source,
        &args.dataset,
        args.limit,
        args.model.compute.dtype.as_str(),
        &device_name(model.device()),
        threads,
    )
    .write(&results_path)?;

    println!("{}  ({})", args.model.model, opened.source);
    println!(
        "  accuracy   EM {:.2}  F1 {:.2}  over {} questions{}",
        score.exact_match,
        score.f1,
        report.questions,
        args.limit
            .map(|n| format!(" (first {n})"))
            .unwrap_or_default()
    );
    println!(
        "  speed      {:.1} questions/s overall, {:.1} windows/s in the model ({} windows, batch {}, {} threads, {} on {})",
        report.questions_per_s,
        report.windows_per_s,
        report.windows,
        args.batch_size,
        threads,
        args.model.compute.dtype.as_str(),
        device_name(model.device())
    );
    println!(
        "  time       {:.2} s: tokenise {:.2} s, model {:.2} s, decode {:.2} s",
        report.wall_s, report.tokenize_s, report.model_s, report.decode_s
    );
    println!(
        "  wrote      {}, {}, {}",
        preds_path.display(),
        nbest_path.display(),
        results_path.display()
    );
    Ok(())
}
