//! `bertbench train` (fine-tuning on SQuAD) and `bertbench push` (upload to the Hub).

use crate::eval::{EvalResults, EVAL_RESULTS_FILE};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

use crate::cli::model::ComputeArgs;
use crate::device::parse_device;
use crate::error::input;
use crate::hub::{self, HubConfig, Need, TOKENIZER_FILES};
use crate::models::{self, ModelConfig};
use crate::squad::{load_tokenizer, read_dataset};
use crate::train::checkpoint::{self, LogEntry, TrainerState};
use crate::train::push::{check_token, push_folder};
use crate::train::trainer::{self, TrainObserver, TrainSetup, TrainingArgs};
use crate::train::TrainableModel;

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Model to fine-tune: a local directory, a Hub id, or with --random-init a built-in config.
    #[arg(long, default_value = "distilbert-base-uncased")]
    pub model: String,
    /// SQuAD v1.1 training file (.json or .json.gz).
    #[arg(long)]
    pub train_file: PathBuf,
    /// SQuAD v1.1 file to evaluate on at each epoch end.
    #[arg(long)]
    pub eval_file: Option<PathBuf>,
    /// Where checkpoints, the final model and the logs go.
    #[arg(long)]
    pub output_dir: PathBuf,
    /// Windows per optimizer micro-batch (per_device_train_batch_size).
    #[arg(long, alias = "per-device-train-batch-size", default_value_t = 16)]
    pub batch_size: usize,
    /// Windows per forward pass in evaluation.
    #[arg(long, alias = "per-device-eval-batch-size", default_value_t = 32)]
    pub eval_batch_size: usize,
    #[arg(long, alias = "num-train-epochs", default_value_t = 3)]
    pub epochs: usize,
    /// Stop after this many optimizer steps (overrides --epochs).
    #[arg(long)]
    pub max_steps: Option<usize>,
    #[arg(long, default_value_t = 2e-5)]
    pub learning_rate: f64,
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 0.9)]
    pub adam_beta1: f64,
    #[arg(long, default_value_t = 0.999)]
    pub adam_beta2: f64,
    #[arg(long, default_value_t = 1e-8)]
    pub adam_epsilon: f64,
    /// Fraction of the steps spent warming the learning rate up linearly.
    #[arg(long, default_value_t = 0.0)]
    pub warmup_ratio: f64,
    /// Warm-up steps (overrides --warmup-ratio when > 0).
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: usize,
    /// Clip the global gradient norm to this (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    #[arg(long, default_value_t = 1)]
    pub gradient_accumulation_steps: usize,
    #[command(flatten)]
    pub windows: super::eval::WindowArgs,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Train on the first N questions only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Evaluate on the first N questions only.
    #[arg(long)]
    pub eval_limit: Option<usize>,
    /// Save a resumable checkpoint every N optimizer steps (0: only the final model).
    #[arg(long, default_value_t = 500)]
    pub save_steps: usize,
    /// Log the mean loss every N optimizer steps.
    #[arg(long, default_value_t = 500)]
    pub logging_steps: usize,
    /// Continue from the newest checkpoint in --output-dir.
    #[arg(long)]
    pub resume: bool,
    /// Allow writing into an --output-dir that holds another run (its checkpoints are removed).
    #[arg(long)]
    pub overwrite_output_dir: bool,
    /// Upload the final model to this Hub repository (needs HF_TOKEN with write access).
    #[arg(long, value_name = "REPO_ID")]
    pub push_to_hub: Option<String>,
    /// Create the Hub repository as private.
    #[arg(long)]
    pub hub_private: bool,
    /// Tokenizer: a directory, tokenizer.json or vocab.txt (default: the model's own).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Start from the config with random weights instead of the checkpoint's.
    #[arg(long)]
    pub random_init: bool,
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// Never contact the Hub.
    #[arg(long)]
    pub offline: bool,
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

/// Refuses to clobber another run; with --overwrite-output-dir removes its checkpoints.
fn prepare_output_dir(args: &TrainArgs) -> Result<Option<PathBuf>> {
    let dir = &args.output_dir;
    let has_content = std::fs::read_dir(dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if args.resume {
        let Some((_, latest)) = checkpoint::latest_checkpoint(dir) else {
            return Err(input(format!(
                "--resume: {} holds no checkpoint-N folder to resume from",
                dir.display()
            )));
        };
        return Ok(Some(latest));
    }
    if has_content {
        if !args.overwrite_output_dir {
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

struct BarObserver {
    bar: indicatif::ProgressBar,
}

impl TrainObserver for BarObserver {
    fn start(&mut self, total: usize, first: usize, windows: usize) {
        self.bar.set_length(total as u64);
        self.bar.set_position(first as u64);
        self.bar.reset_eta();
        self.message(&format!(
            "training on {windows} windows for {total} optimizer steps"
        ));
    }

    fn step(&mut self, state: &TrainerState, loss: f64, lr: f64) {
        self.bar.set_position(state.global_step as u64);
        self.bar.set_message(format!(
            "loss {loss:.4}  lr {lr:.2e}  epoch {:.2}",
            state.epoch
        ));
    }

    fn log(&mut self, e: &LogEntry) {
        let line = match (e.loss, e.eval_f1) {
            (Some(loss), _) => format!(
                "step {:>6}  epoch {:.2}  loss {loss:.4}  lr {:.2e}  grad norm {:.3}  {:.1} samples/s",
                e.step,
                e.epoch,
                e.learning_rate.unwrap_or(0.0),
                e.grad_norm.unwrap_or(0.0),
                e.samples_per_s.unwrap_or(0.0)
            ),
            (None, Some(f1)) => format!(
                "step {:>6}  epoch {:.2}  eval EM {:.2}  F1 {f1:.2}  ({} questions, {:.0} s into training)",
                e.step,
                e.epoch,
                e.eval_exact_match.unwrap_or(0.0),
                e.eval_questions.unwrap_or(0),
                e.elapsed_s
            ),
            _ => return,
        };
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    fn message(&mut self, text: &str) {
        if self.bar.is_hidden() {
            eprintln!("{text}");
        } else {
            self.bar.println(text);
        }
    }
}

pub fn train(args: TrainArgs) -> Result<()> {
    let threads = args.compute.use_threads()?;
    let settings = TrainingArgs {
        model: args.model.clone(),
        train_file: args.train_file.clone(),
        eval_file: args.eval_file.clone(),
        output_dir: args.output_dir.clone(),
        per_device_train_batch_size: args.batch_size,
        per_device_eval_batch_size: args.eval_batch_size,
        num_train_epochs: args.epochs,
        max_steps: args.max_steps,
        learning_rate: args.learning_rate,
        weight_decay: args.weight_decay,
        adam_beta1: args.adam_beta1,
        adam_beta2: args.adam_beta2,
        adam_epsilon: args.adam_epsilon,
        warmup_ratio: args.warmup_ratio,
        warmup_steps: args.warmup_steps,
        max_grad_norm: args.max_grad_norm,
        gradient_accumulation_steps: args.gradient_accumulation_steps,
        max_seq_length: args.windows.max_seq_length,
        doc_stride: args.windows.doc_stride,
        max_query_length: args.windows.max_query_length,
        seed: args.seed,
        limit: args.limit,
        eval_limit: args.eval_limit,
        save_steps: args.save_steps,
        logging_steps: args.logging_steps,
        dtype: args.compute.dtype,
        device: args.compute.device.clone(),
        threads,
        random_init: args.random_init,
    };
    settings.validate()?;
    let device = parse_device(&args.compute.device)?;
    let hub = HubConfig::from_env(args.offline);
    // Fail fast: a missing or rejected token must not cost a training run.
    if args.push_to_hub.is_some() {
        let user = check_token(&hub)?;
        eprintln!("Hub token accepted (user {user})");
    }
    let train_set = read_dataset(&args.train_file)?;
    let train_set = match args.limit {
        Some(n) => train_set.first_questions(n),
        None => train_set,
    };
    let eval_set = match &args.eval_file {
        Some(path) => {
            let d = read_dataset(path)?;
            Some(match args.eval_limit {
                Some(n) => d.first_questions(n),
                None => d,
            })
        }
        None => None,
    };
    let resume_from = prepare_output_dir(&args)?;

    let dtype = args.compute.dtype.dtype();
    let (config, model, model_dir) = match &resume_from {
        Some(dir) => {
            let config = ModelConfig::from_file(&dir.join("config.json"))?;
            let (model, _) = TrainableModel::from_dir(dir, &config, dtype, &device)?;
            (config, model, Some(dir.clone()))
        }
        None if args.random_init => {
            let (config, _) = models::open_config(&args.model, &hub)?;
            let model = TrainableModel::random(&config, args.seed, dtype, &device)?;
            let dir = hub::find_local(&args.model, &hub, Need::Config)?.map(|d| d.path);
            (config, model, dir)
        }
        None => {
            let dir = hub::resolve(&args.model, &hub, Need::Weights)?;
            let config = ModelConfig::from_file(&dir.path.join("config.json"))?;
            let (model, report) = TrainableModel::from_dir(&dir.path, &config, dtype, &device)?;
            if !report.initialised.is_empty() {
                eprintln!(
                    "note: new QA head initialised: {}",
                    report.initialised.join(", ")
                );
            }
            (config, model, Some(dir.path))
        }
    };
    let tokenizer_path =
        super::tokenizer_path(args.tokenizer.as_deref(), model_dir.as_deref(), &args.model)?;
    args.windows.check_model(&config)?;
    let tokenizer = load_tokenizer(&tokenizer_path)?;
    let files = tokenizer_files(&tokenizer_path);

    let bar =
        super::progress_bar("steps {bar:30} {pos}/{len}  {msg}  elapsed {elapsed}  eta {eta}");
    let mut observer = BarObserver { bar };
    let setup = TrainSetup {
        config,
        model,
        tokenizer: &tokenizer,
        tokenizer_files: files,
        train: &train_set,
        eval: eval_set.as_ref(),
        resume_from,
    };
    let outcome = trainer::train(&settings, setup, &mut observer)?;
    observer.bar.finish_and_clear();

    if let (Some(report), Some(eval_file)) = (&outcome.final_eval, &args.eval_file) {
        EvalResults::new(
            report.clone(),
            &settings.eval_config(),
            &args.output_dir.display().to_string(),
            &format!("fine-tuned from {} by bertbench train", args.model),
            eval_file,
            args.eval_limit,
            args.compute.dtype.as_str(),
            &crate::device::device_name(&device),
            threads,
        )
        .write(&args.output_dir.join(EVAL_RESULTS_FILE))?;
    }
    let s = &outcome.state;
    println!(
        "trained {} steps ({:.2} epochs) in {:.1} s; model saved in {}",
        s.global_step,
        s.epoch,
        s.elapsed_s,
        args.output_dir.display()
    );
    if let Some(last) = s.log_history.iter().rev().find(|e| e.loss.is_some()) {
        println!(
            "  last logged loss {:.4} at step {}",
            last.loss.unwrap_or(0.0),
            last.step
        );
    }
    if let Some(r) = &outcome.final_eval {
        println!(
            "  eval: EM {:.2}  F1 {:.2} over {} questions",
            r.exact_match, r.f1, r.questions
        );
    }
    if let Some(repo) = &args.push_to_hub {
        let report = push_folder(
            &args.output_dir,
            repo,
            &hub,
            args.hub_private,
            "Upload model fine-tuned with bertbench",
        )?;
        println!(
            "  pushed to {repo}: {} files ({} through LFS){}",
            report.regular.len() + report.lfs.len(),
            report.lfs.len(),
            report
                .commit_url
                .map(|u| format!(", {u}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// A saved model directory (checkpoint-* folders inside are not uploaded).
    pub dir: PathBuf,
    /// Hub repository, `user/name` or `org/name`; created if missing.
    pub repo_id: String,
    /// Create the repository as private.
    #[arg(long)]
    pub private: bool,
    /// Commit message.
    #[arg(long, default_value = "Upload model with bertbench")]
    pub message: String,
}

pub fn push(args: PushArgs) -> Result<()> {
    let hub = HubConfig::from_env(false);
    let report = push_folder(&args.dir, &args.repo_id, &hub, args.private, &args.message)
        .with_context(|| format!("pushing {} to {}", args.dir.display(), args.repo_id))?;
    println!(
        "pushed {} files to {} ({} through LFS){}",
        report.regular.len() + report.lfs.len(),
        report.repo_id,
        report.lfs.len(),
        report
            .commit_url
            .map(|u| format!(": {u}"))
            .unwrap_or_default()
    );
    Ok(())
}
