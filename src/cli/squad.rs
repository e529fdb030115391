//! `bertbench score`: the official SQuAD v1.1 metric over a predictions file.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::squad::{evaluate, read_dataset, read_predictions};

/// Arguments of `bertbench score`.
#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// SQuAD v1.1 dataset file (.json or .json.gz), e.g. dev-v1.1.json.
    pub dataset: PathBuf,
    /// Predictions: a JSON object mapping question ids to answer strings.
    pub predictions: PathBuf,
}

/// Print `{"exact_match": ..., "f1": ...}` exactly as `evaluate-v1.1.py` prints it, so the
/// line can be compared with (or stand in for) the official script's output. Counts of
/// unanswered questions and of unknown ids go to stderr.
pub fn score(args: ScoreArgs) -> Result<()> {
    let dataset = read_dataset(&args.dataset)?;
    let predictions = read_predictions(&args.predictions)?;
    let score = evaluate(&dataset, &predictions);
    if score.missing > 0 {
        eprintln!(
            "warning: {} of {} questions have no prediction in {}; they score 0 (as in the \
             official script)",
            score.missing,
            score.total,
            args.predictions.display()
        );
    }
    if score.unknown_ids > 0 {
        eprintln!(
            "warning: {} predictions have ids that are not questions of {}; they are ignored",
            score.unknown_ids,
            args.dataset.display()
        );
    }
    println!("{}", score.to_official_json());
    Ok(())
}
