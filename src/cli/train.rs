//! `bertbench train` (fine-tuning on SQuAD) and `bertbench push` (upload to the Hub).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::cli::model::ComputeArgs;
use crate::hub::HubConfig;
use crate::train::push::{check_token, push_folder};
use crate::train::run::{fine_tune, RunOptions};
use crate::train::trainer::TrainingArgs;

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The run's settings (recorded in training_args.json).
    #[command(flatten)]
    pub training: TrainingArgs,
    #[command(flatten)]
    pub compute: ComputeArgs,
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
    /// Never contact the Hub.
    #[arg(long)]
    pub offline: bool,
}

pub fn train(args: TrainArgs) -> Result<()> {
    let mut settings = args.training;
    settings.dtype = args.compute.precision();
    settings.device = args.compute.device;
    settings.threads = args.compute.threads();
    settings.validate()?;
    let hub = HubConfig::from_env(args.offline);
    // Fail fast: a missing or rejected token must not cost a training run.
    if args.push_to_hub.is_some() {
        let user = check_token(&hub)?;
        eprintln!("Hub token accepted (user {user})");
    }
    args.compute.use_threads()?;
    let opts = RunOptions {
        resume: args.resume,
        overwrite_output_dir: args.overwrite_output_dir,
        tokenizer: args.tokenizer.clone(),
        hub: hub.clone(),
    };
    let mut bar =
        super::Bar::new("{prefix} {bar:30} {pos}/{len}  {msg}  elapsed {elapsed}  eta {eta}");
    let outcome = fine_tune(&settings, &opts, &mut bar);
    bar.finish();
    let outcome = outcome?;

    let s = &outcome.state;
    println!(
        "trained {} steps ({:.2} epochs) in {:.1} s; model saved in {}",
        s.global_step,
        s.epoch,
        s.elapsed_s,
        settings.output_dir.display()
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
            &settings.output_dir,
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
