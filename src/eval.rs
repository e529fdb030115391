//! `bertbench eval` as a job: one evaluation of a model on a SQuAD file, written to a folder
//! (`predictions.json`, `nbest_predictions.json`, `eval_results.json`). The answering itself
//! is [`crate::answer`]'s.

use std::path::PathBuf;

use anyhow::Result;

use crate::answer::{check_windows, evaluate_model, EvalConfig, EvalResults, EVAL_RESULTS_FILE};
use crate::device::DeviceSpec;
use crate::error::input;
use crate::job::Observer;
use crate::models::ModelSpec;
use crate::squad::{load_tokenizer, read_dataset, tokenizer_path, write_predictions};

/// One evaluation written to a folder: what `bertbench eval` does, and `run` per checkpoint.
#[derive(Debug, Clone)]
pub struct EvalJob {
    /// The model, as the user named it (recorded in `eval_results.json`), and how to run it.
    pub spec: ModelSpec,
    /// The SQuAD v1.1 file.
    pub dataset: PathBuf,
    /// Only the first N questions, in file order; the score covers exactly those.
    pub limit: Option<usize>,
    pub config: EvalConfig,
    /// A model directory, `tokenizer.json` or `vocab.txt`; `None`: the model's own.
    pub tokenizer: Option<PathBuf>,
    /// Where `predictions.json`, `nbest_predictions.json` and `eval_results.json` go.
    pub output_dir: PathBuf,
    /// Replace those files when they exist (else an existing one is an error).
    pub overwrite: bool,
}

/// What [`EvalJob::run`] measured and wrote.
#[derive(Debug, Clone)]
pub struct EvalOutcome {
    pub results: EvalResults,
    pub predictions_file: PathBuf,
    pub nbest_file: PathBuf,
    pub results_file: PathBuf,
}

impl EvalJob {
    /// Refuses a job that cannot run or would overwrite results, before anything is loaded.
    pub fn check(&self) -> Result<()> {
        if self.config.batch_size == 0 {
            return Err(input("--batch-size must be at least 1"));
        }
        if self.limit == Some(0) {
            return Err(input("--limit must be at least 1"));
        }
        self.config.features.validate()?;
        let results = self.output_dir.join(EVAL_RESULTS_FILE);
        if results.exists() && !self.overwrite {
            return Err(input(format!(
                "{} already exists; pass --overwrite to replace it or choose another --output-dir",
                results.display()
            )));
        }
        Ok(())
    }

    /// Opens the model (prepared for inference; the compute pool and tier are chosen
    /// before), answers the questions, scores them and writes the three files. The observer
    /// hears what loading had to do, then the windows answered (stage `windows`).
    pub fn run(&self, observer: &mut dyn Observer) -> Result<EvalOutcome> {
        self.check()?;
        let full = read_dataset(&self.dataset)?;
        let dataset = match self.limit {
            Some(n) => full.first_questions(n),
            None => full,
        };
        let opened = self.spec.open()?;
        for line in opened.report.iter().flat_map(|r| r.warnings()) {
            observer.line(&line);
        }
        let model = &opened.model;
        check_windows(&self.config.features, model.config())?;
        let tokenizer = load_tokenizer(&tokenizer_path(
            self.tokenizer.as_deref(),
            opened.dir.as_deref(),
            &self.spec.model,
        )?)?;
        observer.stage("windows");
        let (predictions, _, report) =
            evaluate_model(model, &tokenizer, &dataset, &self.config, |done, total| {
                observer.progress(done as u64, total as u64, "")
            })?;
        let (predictions_file, nbest_file) =
            write_predictions(&self.output_dir, &predictions, self.overwrite)?;
        let results = EvalResults::new(
            report,
            &self.config,
            &self.spec.model,
            &opened.source,
            &self.dataset,
            self.limit,
            model.precision(),
            DeviceSpec::of(model.device())?,
            rayon::current_num_threads(),
        );
        let results_file = self.output_dir.join(EVAL_RESULTS_FILE);
        results.write(&results_file)?;
        Ok(EvalOutcome {
            results,
            predictions_file,
            nbest_file,
            results_file,
        })
    }
}
