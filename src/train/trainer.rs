//! The fine-tuning loop: SQuAD features with labels, shuffled per epoch from the seed, AdamW
//! with a linear schedule, gradient accumulation and clipping, dropout drawn from the seed and
//! the step, periodic checkpoints, evaluation at each epoch end.
//!
//! Every random draw derives from the seed and the position in the run (epoch for the data
//! order, micro-batch for dropout), so a run resumed from a checkpoint replays exactly what the
//! uninterrupted run would have done.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::checkpoint::{self, LogEntry, TrainerState};
use super::schedule::{linear_with_warmup, warmup_steps};
use crate::answer::{evaluate_model, stack_windows, EvalConfig, EvalReport};
use crate::compute::optim::{accumulate, global_norm, AdamW, AdamWConfig, Grads};
use crate::device::{DeviceSpec, Precision};
use crate::error::input;
use crate::job::Observer;
use crate::models::trainable::TrainableModel;
use crate::models::weights::{ParamSource, ParamSpec, Params};
use crate::models::{Batch, ModelConfig, QaModel};
use crate::squad::{Dataset, DecodeConfig, Example, Feature, FeatureConfig, QaTokenizer};

/// The run's settings, named as Hugging Face's `TrainingArguments` names them (this is what
/// `training_args.json` holds). The same struct is `bertbench train`'s flags (clap `flatten`),
/// so a flag and the library field cannot drift apart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct TrainingArgs {
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
    /// Windows per optimizer micro-batch.
    #[arg(
        long = "batch-size",
        alias = "per-device-train-batch-size",
        value_name = "N",
        default_value_t = 16
    )]
    pub per_device_train_batch_size: usize,
    /// Windows per forward pass in evaluation.
    #[arg(
        long = "eval-batch-size",
        alias = "per-device-eval-batch-size",
        value_name = "N",
        default_value_t = crate::answer::DEFAULT_BATCH_SIZE
    )]
    pub per_device_eval_batch_size: usize,
    #[arg(
        long = "epochs",
        alias = "num-train-epochs",
        value_name = "N",
        default_value_t = 3
    )]
    pub num_train_epochs: usize,
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
    /// How questions and contexts become windows (saved flat, as Hugging Face does).
    #[command(flatten)]
    #[serde(flatten)]
    pub windows: FeatureConfig,
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
    /// Precision; on the command line this is `--dtype` of the compute flags.
    #[arg(skip = Precision::F32)]
    pub dtype: Precision,
    /// `cpu` or `cuda:N` (written as that text); on the command line `--device`.
    #[arg(skip = DeviceSpec::Cpu)]
    pub device: DeviceSpec,
    /// Compute threads; on the command line `--threads`.
    #[arg(skip = 1usize)]
    pub threads: usize,
    /// Start from the config with random weights instead of the checkpoint's.
    #[arg(long)]
    pub random_init: bool,
}

impl TrainingArgs {
    /// How the per-epoch evaluation runs: the training windows, `run_qa.py`'s decoding, and
    /// the eval batch size.
    pub fn eval_config(&self) -> EvalConfig {
        EvalConfig {
            features: self.windows,
            decode: DecodeConfig::default(),
            batch_size: self.per_device_eval_batch_size,
        }
    }

    /// Checks the numbers before anything expensive happens.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("--batch-size", self.per_device_train_batch_size),
            ("--eval-batch-size", self.per_device_eval_batch_size),
            (
                "--gradient-accumulation-steps",
                self.gradient_accumulation_steps,
            ),
            ("--logging-steps", self.logging_steps),
        ];
        for (flag, v) in positive {
            if v == 0 {
                return Err(input(format!("{flag} must be at least 1")));
            }
        }
        if self.dtype == Precision::Int8 {
            return Err(input(
                "--dtype int8 is an inference precision (weights quantized from trained f32 \
                 ones): train in f32 (or bf16/f16 on a GPU), then eval or bench the checkpoint \
                 with --dtype int8",
            ));
        }
        if self.num_train_epochs == 0 && self.max_steps.is_none() {
            return Err(input("--epochs must be at least 1 (or give --max-steps)"));
        }
        if self.max_steps == Some(0) {
            return Err(input("--max-steps must be at least 1"));
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return Err(input(format!(
                "--learning-rate must be positive, got {}",
                self.learning_rate
            )));
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return Err(input(format!(
                "--warmup-ratio must be in [0, 1), got {}",
                self.warmup_ratio
            )));
        }
        if self.weight_decay < 0.0 || self.max_grad_norm < 0.0 {
            return Err(input(
                "--weight-decay and --max-grad-norm must not be negative",
            ));
        }
        if self.limit == Some(0) || self.eval_limit == Some(0) {
            return Err(input("--limit and --eval-limit must be at least 1"));
        }
        self.windows.validate()
    }

    fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            lr: self.learning_rate,
            beta1: self.adam_beta1,
            beta2: self.adam_beta2,
            eps: self.adam_epsilon,
            weight_decay: self.weight_decay,
        }
    }
}

/// What a finished run produced.
pub struct TrainOutcome {
    pub state: TrainerState,
    pub final_eval: Option<EvalReport>,
}

/// Everything the loop needs besides the args.
pub struct TrainSetup<'a> {
    pub config: ModelConfig,
    /// The model to train (from a checkpoint, random, or a resumed checkpoint).
    pub model: TrainableModel,
    pub tokenizer: &'a QaTokenizer,
    /// Files copied into every saved model directory.
    pub tokenizer_files: Vec<PathBuf>,
    pub train: &'a Dataset,
    pub eval: Option<&'a Dataset>,
    /// Resume from this checkpoint (trainer state and optimizer).
    pub resume_from: Option<PathBuf>,
}

/// A plain (untracked) copy of the trainable model's current weights, for evaluation: no
/// backward graph is recorded and the fast inference kernels apply (its weights are packed
/// for them, a second copy held while evaluation runs).
pub fn inference_copy(config: &ModelConfig, model: &TrainableModel) -> Result<QaModel> {
    struct Detached(HashMap<String, Tensor>);
    impl ParamSource for Detached {
        fn get(&self, spec: &ParamSpec) -> Result<Tensor> {
            self.0
                .get(&spec.name)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("no parameter `{}`", spec.name))
        }
    }
    let source = Detached(
        model
            .params
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
            .collect(),
    );
    let mut copy = QaModel::new(
        config,
        &Params::new(&source),
        model.model.dtype(),
        model.model.device(),
    )?;
    copy.prepare_for_inference(crate::device::Precision::of_dtype(copy.dtype()))?;
    Ok(copy)
}

/// Stacks training features into a batch with labels, at the windows' full (padded) length
/// as the Trainer does.
/// The training set's windows.
fn training_windows(
    args: &TrainingArgs,
    setup: &TrainSetup,
    observer: &mut dyn Observer,
) -> Result<Vec<Feature>> {
    observer.line("tokenising the training set...");
    let examples: Vec<Example> = setup.train.examples().collect();
    let features = setup.tokenizer.features(&examples, &args.windows)?;
    if features.is_empty() {
        bail!("the training set produced no windows");
    }
    Ok(features)
}

/// A checkpoint of the run so far (with the optimizer's state, so it resumes exactly) in
/// `checkpoint-<step>/`.
fn save_checkpoint(
    args: &TrainingArgs,
    files: &checkpoint::ModelFiles,
    args_json: &serde_json::Value,
    state: &TrainerState,
    optimizer: &AdamW,
    observer: &mut dyn Observer,
) -> Result<()> {
    let dir = checkpoint::checkpoint_dir(&args.output_dir, state.global_step);
    checkpoint::save_run(&dir, files, args_json, state, Some(optimizer))?;
    observer.line(&format!("saved {}", dir.display()));
    Ok(())
}

/// One micro-batch forward and backward: its loss (refused when not finite, naming the
/// optimizer step `step` it was for) and gradients.
fn micro_batch(
    model: &TrainableModel,
    features: &[&Feature],
    config: &ModelConfig,
    dropout_seed: u64,
    step: usize,
) -> Result<(f64, Grads)> {
    let (batch, starts, ends) = batch_of(features, config, model.model.device())?;
    let (loss, grads) = model.loss_and_grads(&batch, &starts, &ends, dropout_seed)?;
    let loss_value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    if !loss_value.is_finite() {
        bail!("the loss became {loss_value} at step {step}; lower the learning rate");
    }
    Ok((loss_value, grads))
}

fn batch_of(
    features: &[&Feature],
    config: &ModelConfig,
    device: &Device,
) -> Result<(Batch, Tensor, Tensor)> {
    let len = features[0].input_ids.len();
    let batch = stack_windows(features, len, config.model_type, device)?;
    let labels = |get: &dyn Fn(&Feature) -> usize| -> Result<Tensor> {
        let v: Vec<u32> = features.iter().map(|f| get(f) as u32).collect();
        Ok(Tensor::from_vec(v, features.len(), device)?)
    };
    Ok((
        batch,
        labels(&|f| f.start_position)?,
        labels(&|f| f.end_position)?,
    ))
}

/// The order of the training features in `epoch`: a permutation drawn from the seed and the
/// epoch alone.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(
        seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    order.shuffle(&mut rng);
    order
}

/// Evaluates the current weights on `eval` and returns the report.
fn evaluate_now(
    config: &ModelConfig,
    model: &TrainableModel,
    setup: &TrainSetup,
    args: &TrainingArgs,
) -> Result<Option<EvalReport>> {
    let Some(eval) = setup.eval else {
        return Ok(None);
    };
    let copy = inference_copy(config, model)?;
    let (_, _, report) =
        evaluate_model(&copy, setup.tokenizer, eval, &args.eval_config(), |_, _| {})?;
    Ok(Some(report))
}

/// How many windows, micro-batches and optimizer steps a run has, as the Trainer counts them.
struct Schedule {
    /// Windows per micro-batch.
    batch: usize,
    /// Micro-batches per optimizer step.
    accum: usize,
    micro_per_epoch: usize,
    steps_per_epoch: usize,
    total_steps: usize,
    epochs: usize,
    warmup: usize,
}

impl Schedule {
    fn new(args: &TrainingArgs, windows: usize) -> Self {
        let batch = args.per_device_train_batch_size;
        let accum = args.gradient_accumulation_steps;
        let micro_per_epoch = windows.div_ceil(batch);
        let steps_per_epoch = micro_per_epoch.div_ceil(accum);
        let total_steps = args
            .max_steps
            .unwrap_or(args.num_train_epochs * steps_per_epoch);
        Self {
            batch,
            accum,
            micro_per_epoch,
            steps_per_epoch,
            total_steps,
            epochs: total_steps.div_ceil(steps_per_epoch),
            warmup: warmup_steps(args.warmup_steps, args.warmup_ratio, total_steps),
        }
    }
}

/// The trainer's state at the start: fresh, or read with the optimizer's from the checkpoint
/// to resume from (which must have been made with the same seed and steps).
fn starting_state(
    args: &TrainingArgs,
    setup: &TrainSetup,
    schedule: &Schedule,
    optimizer: &mut AdamW,
    observer: &mut dyn Observer,
) -> Result<TrainerState> {
    let fresh = TrainerState {
        global_step: 0,
        max_steps: schedule.total_steps,
        num_train_epochs: schedule.epochs,
        epoch: 0.0,
        elapsed_s: 0.0,
        log_history: Vec::new(),
        seed: args.seed,
    };
    let Some(dir) = &setup.resume_from else {
        return Ok(fresh);
    };
    let (saved, opt_state) = checkpoint::read_checkpoint(dir)?;
    if saved.seed != args.seed || saved.max_steps != schedule.total_steps {
        return Err(input(format!(
            "{}: the checkpoint was made with seed {} and {} total steps, this run has seed {} and {} steps; \
             resume with the same arguments",
            dir.display(),
            saved.seed,
            saved.max_steps,
            args.seed,
            schedule.total_steps
        )));
    }
    optimizer.load_state(&opt_state)?;
    observer.line(&format!(
        "resuming from {} (step {})",
        dir.display(),
        saved.global_step
    ));
    Ok(saved)
}

/// What the training log's next loss row averages: the losses, windows and seconds of training
/// steps (evaluation excluded) since the previous row.
#[derive(Default)]
struct SinceLog {
    losses: Vec<f64>,
    samples: usize,
    secs: f64,
}

impl SinceLog {
    /// The loss row at `state`'s step, and a fresh start for the next.
    fn take_row(&mut self, state: &TrainerState, lr: f64, norm: f64) -> LogEntry {
        let row = LogEntry {
            step: state.global_step,
            epoch: state.epoch,
            loss: Some(self.losses.iter().sum::<f64>() / self.losses.len().max(1) as f64),
            learning_rate: Some(lr),
            grad_norm: Some(norm),
            samples_per_s: Some(self.samples as f64 / self.secs.max(1e-9)),
            elapsed_s: state.elapsed_s,
            eval_exact_match: None,
            eval_f1: None,
            eval_questions: None,
        };
        *self = Self::default();
        row
    }
}

/// Adds `row` to the log: its line to the observer, the history and `train_log.csv`.
fn log_row(
    row: LogEntry,
    state: &mut TrainerState,
    log_path: &std::path::Path,
    observer: &mut dyn Observer,
) -> Result<()> {
    if let Some(line) = row.line() {
        observer.line(&line);
    }
    state.log_history.push(row);
    checkpoint::write_log_csv(log_path, &state.log_history)
}

/// One optimizer step on the accumulated gradients, as the Trainer takes it: the loss divided
/// by the accumulation steps, then the global norm clipped. Returns the learning rate and the
/// norm.
fn optimizer_step(
    optimizer: &mut AdamW,
    acc: &Grads,
    args: &TrainingArgs,
    schedule: &Schedule,
    step: usize,
) -> Result<(f64, f64)> {
    let accum = schedule.accum as f64;
    let norm = global_norm(acc)? / accum;
    let clip = if args.max_grad_norm > 0.0 {
        (args.max_grad_norm / (norm + 1e-6)).min(1.0)
    } else {
        1.0
    };
    let lr = args.learning_rate * linear_with_warmup(step, schedule.warmup, schedule.total_steps);
    optimizer.step(acc, lr, clip / accum)?;
    Ok((lr, norm))
}

/// Runs (or resumes) training and saves the final model in `args.output_dir`.
pub fn train(
    args: &TrainingArgs,
    setup: TrainSetup,
    observer: &mut dyn Observer,
) -> Result<TrainOutcome> {
    args.validate()?;
    let config = setup.config.clone();
    let model = &setup.model;
    let args_json = serde_json::to_value(args)?;

    let features = training_windows(args, &setup, observer)?;
    let schedule = Schedule::new(args, features.len());
    let total_steps = schedule.total_steps;
    let mut optimizer = AdamW::new(&model.params, args.adamw())?;
    let mut state = starting_state(args, &setup, &schedule, &mut optimizer, observer)?;
    observer.line(&format!(
        "training on {} windows for {total_steps} optimizer steps",
        features.len()
    ));
    observer.stage("steps");
    observer.progress(state.global_step as u64, total_steps as u64, "");

    let session = Instant::now();
    let base_elapsed = state.elapsed_s;
    let mut acc: Grads = Vec::new();
    let mut in_group = 0usize;
    let mut since_log = SinceLog::default();
    let mut last_eval: Option<EvalReport> = None;
    let log_path = args.output_dir.join("train_log.csv");
    let files = checkpoint::ModelFiles {
        config: &config,
        params: &model.params,
        dtype: model.model.dtype(),
        tokenizer_files: &setup.tokenizer_files,
    };

    'epochs: for epoch in 0..schedule.epochs {
        let order = epoch_order(features.len(), args.seed, epoch);
        for (micro, chunk) in order.chunks(schedule.batch).enumerate() {
            let step_of_micro = epoch * schedule.steps_per_epoch + micro / schedule.accum;
            if step_of_micro < state.global_step {
                continue; // done before the checkpoint we resumed from
            }
            if state.global_step >= total_steps {
                break 'epochs;
            }
            let step_clock = Instant::now();
            let batch_features: Vec<&Feature> = chunk.iter().map(|&i| &features[i]).collect();
            let dropout_seed = args.seed.wrapping_mul(0x2545_F491_4F6C_DD1D)
                ^ ((epoch * schedule.micro_per_epoch + micro) as u64);
            let (loss_value, grads) = micro_batch(
                model,
                &batch_features,
                &config,
                dropout_seed,
                state.global_step + 1,
            )?;
            since_log.losses.push(loss_value);
            since_log.samples += chunk.len();
            accumulate(&mut acc, grads)?;
            in_group += 1;
            let last_micro = micro + 1 == schedule.micro_per_epoch;
            if in_group < schedule.accum && !last_micro {
                since_log.secs += step_clock.elapsed().as_secs_f64();
                continue;
            }
            let (lr, norm) =
                optimizer_step(&mut optimizer, &acc, args, &schedule, state.global_step)?;
            acc.clear();
            in_group = 0;
            since_log.secs += step_clock.elapsed().as_secs_f64();
            state.global_step += 1;
            state.epoch = epoch as f64 + (micro + 1) as f64 / schedule.micro_per_epoch as f64;
            state.elapsed_s = base_elapsed + session.elapsed().as_secs_f64();
            observer.progress(
                state.global_step as u64,
                total_steps as u64,
                &format!(
                    "loss {loss_value:.4}  lr {lr:.2e}  epoch {:.2}",
                    state.epoch
                ),
            );

            if state.global_step.is_multiple_of(args.logging_steps)
                || state.global_step == total_steps
            {
                let row = since_log.take_row(&state, lr, norm);
                log_row(row, &mut state, &log_path, observer)?;
            }
            let epoch_done = last_micro || state.global_step == total_steps;
            if epoch_done && setup.eval.is_some() {
                observer.line(&format!("evaluating after epoch {}...", epoch + 1));
                if let Some(report) = evaluate_now(&config, model, &setup, args)? {
                    let elapsed_s = base_elapsed + session.elapsed().as_secs_f64();
                    let row =
                        LogEntry::evaluation(state.global_step, state.epoch, elapsed_s, &report);
                    log_row(row, &mut state, &log_path, observer)?;
                    last_eval = Some(report);
                }
            }
            if args.save_steps > 0
                && state.global_step.is_multiple_of(args.save_steps)
                && state.global_step < total_steps
            {
                save_checkpoint(args, &files, &args_json, &state, &optimizer, observer)?;
            }
        }
    }

    state.elapsed_s = base_elapsed + session.elapsed().as_secs_f64();
    // The final model, as the Trainer's `save_model` leaves it: no optimizer state.
    checkpoint::save_run(&args.output_dir, &files, &args_json, &state, None)?;
    checkpoint::write_log_csv(&log_path, &state.log_history)?;
    Ok(TrainOutcome {
        state,
        final_eval: last_eval,
    })
}
