//! A whole fine-tuning run as one library call: check the output folder, read the data, open
//! the model (a checkpoint with a fresh QA head, a built-in config with random weights, or the
//! newest checkpoint of an interrupted run), train, and write the final evaluation.
//! `bertbench train` is this call with a progress bar and the Hub upload around it.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::checkpoint;
use super::trainer::{self, TrainOutcome, TrainSetup, TrainingArgs};
use crate::answer::{check_windows, EvalResults, EVAL_RESULTS_FILE};
use crate::device::DeviceSpec;
use crate::error::input;
use crate::hub::{self, HubConfig, Need, TOKENIZER_FILES};
use crate::job::Observer;
use crate::models::trainable::TrainableModel;
use crate::models::{self, ModelConfig};
use crate::squad::{load_tokenizer, read_dataset, tokenizer_path};

/// What a run does with its output folder and where it finds things, beside the
/// [`TrainingArgs`] it records.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Continue from the newest `checkpoint-N` in the output folder.
    pub resume: bool,
    /// Write into a folder that holds another run (its checkpoints are removed first).
    pub overwrite_output_dir: bool,
    /// A directory, `tokenizer.json` or `vocab.txt`; `None`: the model's own.
    pub tokenizer: Option<PathBuf>,
    pub hub: HubConfig,
}

/// Fine-tunes `args.model` as `args` says (compute threads must already be set, see
/// [`crate::runtime::use_threads`]). With an eval file, the final evaluation is also written to
/// `eval_results.json` in the output folder.
pub fn fine_tune(
    args: &TrainingArgs,
    opts: &RunOptions,
    observer: &mut dyn Observer,
) -> Result<TrainOutcome> {
    args.validate()?;
    let device = args.device.open()?;
    let limited = |path: &Path, limit: Option<usize>| -> Result<crate::squad::Dataset> {
        let d = read_dataset(path)?;
        Ok(match limit {
            Some(n) => d.first_questions(n),
            None => d,
        })
    };
    let train_set = limited(&args.train_file, args.limit)?;
    let eval_set = match &args.eval_file {
        Some(path) => Some(limited(path, args.eval_limit)?),
        None => None,
    };
    let resume_from = prepare_output_dir(&args.output_dir, opts)?;

    let dtype = args.dtype.dtype();
    let (config, model, model_dir) = match &resume_from {
        Some(dir) => {
            let config = ModelConfig::from_file(&dir.join("config.json"))?;
            let (model, _) = TrainableModel::from_dir(dir, &config, dtype, &device)?;
            (config, model, Some(dir.clone()))
        }
        None if args.random_init => {
            let (config, _) = models::open_config(&args.model, &opts.hub)?;
            let model = TrainableModel::random(&config, args.seed, dtype, &device)?;
            let dir = hub::find_local(&args.model, &opts.hub, Need::Config)?.map(|d| d.path);
            (config, model, dir)
        }
        None => {
            let dir = hub::resolve(&args.model, &opts.hub, Need::Weights)?;
            let config = ModelConfig::from_file(&dir.path.join("config.json"))?;
            let (model, report) = TrainableModel::from_dir(&dir.path, &config, dtype, &device)?;
            if !report.initialised.is_empty() {
                observer.line(&format!(
                    "note: new QA head initialised: {}",
                    report.initialised.join(", ")
                ));
            }
            (config, model, Some(dir.path))
        }
    };
    check_windows(&args.windows, &config)?;
    let tokenizer_at =
        tokenizer_path(opts.tokenizer.as_deref(), model_dir.as_deref(), &args.model)?;
    let tokenizer = load_tokenizer(&tokenizer_at)?;
    let setup = TrainSetup {
        config,
        model,
        tokenizer: &tokenizer,
        tokenizer_files: tokenizer_files(&tokenizer_at),
        train: &train_set,
        eval: eval_set.as_ref(),
        resume_from,
    };
    let outcome = trainer::train(args, setup, observer)?;

    if let (Some(report), Some(eval_file)) = (&outcome.final_eval, &args.eval_file) {
        EvalResults::new(
            report.clone(),
            &args.eval_config(),
            &args.output_dir.display().to_string(),
            &format!("fine-tuned from {} by bertbench train", args.model),
            eval_file,
            args.eval_limit,
            args.dtype,
            DeviceSpec::of(&device)?,
            args.threads,
        )
        .write(&args.output_dir.join(EVAL_RESULTS_FILE))?;
    }
    Ok(outcome)
}

/// The tokenizer files to copy into saved models, from a directory or a single file.
fn tokenizer_files(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    TOKENIZER_FILES
        .iter()
        .map(|f| path.join(f))
        .filter(|p| p.is_file())
        .collect()
}

/// Makes `dir` ready for a run and returns the checkpoint to resume from, if resuming. A folder
/// holding another run is refused unless `overwrite_output_dir` (then its checkpoints are
/// removed; nothing else in it is touched).
pub fn prepare_output_dir(dir: &Path, opts: &RunOptions) -> Result<Option<PathBuf>> {
    if opts.resume {
        let Some((_, latest)) = checkpoint::latest_checkpoint(dir) else {
            return Err(input(format!(
                "--resume: {} holds no checkpoint-N folder to resume from",
                dir.display()
            )));
        };
        return Ok(Some(latest));
    }
    let has_content = std::fs::read_dir(dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if has_content {
        if !opts.overwrite_output_dir {
            return Err(input(format!(
                "{} is not empty (another run's output?); pass --resume to continue it or --overwrite-output-dir to replace it",
                dir.display()
            )));
        }
        for entry in std::fs::read_dir(dir)?.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with("checkpoint-")
                && entry.path().is_dir()
            {
                std::fs::remove_dir_all(entry.path())?;
            }
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| {
        input(format!(
            "cannot create output directory {}: {e}",
            dir.display()
        ))
    })?;
    let probe = dir.join(".bertbench-write-test");
    std::fs::write(&probe, b"").map_err(|e| {
        input(format!(
            "output directory {} is not writable: {e}",
            dir.display()
        ))
    })?;
    std::fs::remove_file(&probe)?;
    Ok(None)
}
