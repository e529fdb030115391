//! `bertbench run` as a job: the main job on built-in defaults. Speed and memory of the
//! study's three models over a grid sized for the machine (one bench per experiment of the
//! preset, each in its folder, at every precision), then each checkpoint evaluated at every
//! precision, the report of each bench folder (which sees the evaluations under the run's
//! folder), and a report across machines where other machines' folders are given. Every step
//! is planned and checked before any work ([`StudyJob::plan`]); the observer hears each
//! job's progress and results as they come ([`StudyObserver`]).
//!
//! It composes the jobs below it (`bench`, `eval`) and the reports, so it sits above
//! `report` and below only `cli`.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::answer::EvalConfig;
use crate::bench::grid::{Isolation, Preset};
use crate::bench::output::RESULTS_JSON;
use crate::bench::run::{default_processes, default_settings, BenchOutcome};
use crate::bench::{run_bench, BenchConfig, CellSettings};
use crate::compute::isa::IsaChoice;
use crate::cost::Price;
use crate::device::{DeviceSpec, Precision};
use crate::error::input;
use crate::eval::{EvalJob, EvalOutcome};
use crate::job::Observer;
use crate::models::ModelSpec;
use crate::report::build::{write_report, ReportFiles, ReportOptions};
use crate::report::machines::{load_machines, write_machines_report, MachinePrices};
use crate::squad::{DecodeConfig, FeatureConfig};

/// What a study measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StudyPreset {
    /// Batch 1 and 8, sequence 32 and 128: a few minutes on 2 CPU cores.
    CpuQuick,
    /// The original study's three experiments (GPU-sized), each in its own folder.
    Seed,
}

impl StudyPreset {
    /// The bench presets it runs, each with its sub-folder (`None`: the run's folder).
    fn experiments(self) -> Vec<(Preset, Option<&'static str>)> {
        match self {
            StudyPreset::CpuQuick => vec![(Preset::CpuQuick, None)],
            StudyPreset::Seed => vec![
                (Preset::SeedMemorySeq, Some("seed-memory-seq")),
                (Preset::SeedMemoryBatch, Some("seed-memory-batch")),
                (Preset::SeedTime, Some("seed-time")),
            ],
        }
    }
}

/// What `bertbench run` was asked for.
#[derive(Debug, Clone)]
pub struct StudyConfig {
    pub preset: StudyPreset,
    /// Models to bench; empty: the study's three.
    pub models: Vec<String>,
    /// The run's folder, new or empty; `None`: a new `runs/<date-time>`.
    pub output_dir: Option<PathBuf>,
    /// Precisions to measure; empty: on the CPU every precision this CPU runs fast on the
    /// tier `isa` chooses (so the report answers "which model at which precision"), on a GPU
    /// f32.
    pub precisions: Vec<Precision>,
    pub device: DeviceSpec,
    pub isa: IsaChoice,
    /// This process's compute threads.
    pub threads: usize,
    /// Fine-tuned QA checkpoints to evaluate on `dataset`.
    pub checkpoints: Vec<String>,
    pub dataset: Option<PathBuf>,
    /// Questions evaluated (the first N).
    pub eval_limit: usize,
    /// This machine's price, for the reports' costs.
    pub price: Option<Price>,
    /// Other machines' `run` (or `bench`) folders of the same preset, for a report across
    /// machines (this one first).
    pub compare_with: Vec<PathBuf>,
    /// The machines' names: this one first, then one per folder (empty: from the folders).
    pub machine_names: Vec<String>,
    /// The machines' prices for that report.
    pub machine_prices: MachinePrices,
    /// Never contact the Hub.
    pub offline: bool,
}

/// A study planned and checked: the benches, the evaluations and the reports, in order.
#[derive(Debug, Clone)]
pub struct StudyJob {
    /// The run's folder.
    pub root: PathBuf,
    pub benches: Vec<BenchConfig>,
    pub evals: Vec<EvalJob>,
    /// Per bench, the other machines' folders to compare it with.
    pub others: Vec<Vec<PathBuf>>,
    pub machine_names: Vec<String>,
    pub machine_prices: MachinePrices,
    pub report: ReportOptions,
}

/// What a study tells the one watching it. Each job reports its progress to
/// [`Self::progress`]; the rest say when a job starts and what it found.
pub trait StudyObserver {
    /// Where the running job's progress goes (a bench's cells, an evaluation's windows).
    fn progress(&mut self) -> &mut dyn Observer;
    fn bench_started(&mut self, _config: &BenchConfig) {}
    fn bench_finished(&mut self, _outcome: &BenchOutcome) {}
    fn eval_started(&mut self, _job: &EvalJob) {}
    fn eval_finished(&mut self, _job: &EvalJob, _outcome: &EvalOutcome) {}
    /// A bench folder's report was written.
    fn report_written(&mut self, _files: &ReportFiles) {}
    /// The report across `machines` machines of a bench folder was written.
    fn machines_report_written(&mut self, _machines: usize, _files: &ReportFiles) {}
}

impl StudyJob {
    /// Plans every step and checks what can be checked before any work: the flags that go
    /// together, the run's folder (new or empty), the other machines' folders, each bench's
    /// grid and each evaluation (a clash fails in seconds, not after the grid).
    pub fn plan(config: &StudyConfig) -> Result<Self> {
        check(config)?;
        let root = output_root(config)?;
        let experiments = config.preset.experiments();
        let precisions = precisions(config)?;
        let others = other_machines(config, &experiments)?;
        let benches = bench_configs(config, &experiments, &precisions, &root)?;
        let evals = eval_jobs(config, &precisions, &root)?;
        Ok(Self {
            root,
            benches,
            evals,
            others,
            machine_names: config.machine_names.clone(),
            machine_prices: config.machine_prices.clone(),
            report: ReportOptions {
                short_names: Vec::new(),
                price: config.price.clone(),
                output_dir: None,
            },
        })
    }

    /// Runs the benches, then the evaluations, then writes each bench folder's report (which
    /// sees the evaluations under the run's folder) and the reports across machines. The
    /// compute pool is sized before.
    pub fn run(&self, observer: &mut dyn StudyObserver) -> Result<()> {
        for config in &self.benches {
            observer.bench_started(config);
            let outcome = run_bench(config, observer.progress())?;
            observer.bench_finished(&outcome);
        }
        for job in &self.evals {
            observer.eval_started(job);
            let outcome = job.run(observer.progress())?;
            observer.eval_finished(job, &outcome);
        }
        for config in &self.benches {
            let files = write_report(&config.files.dir, &self.report)?;
            observer.report_written(&files);
        }
        for (config, others) in self.benches.iter().zip(&self.others) {
            if others.is_empty() {
                continue;
            }
            let dir = &config.files.dir;
            let mut dirs = vec![dir.clone()];
            dirs.extend(others.iter().cloned());
            let machines = load_machines(&dirs, &self.machine_names, &self.machine_prices)?;
            let files = write_machines_report(&machines, &dir.join("machines"), &[])?;
            observer.machines_report_written(machines.len(), &files);
        }
        Ok(())
    }
}

/// Refuses settings that do not go together, before anything runs.
fn check(config: &StudyConfig) -> Result<()> {
    if !config.checkpoints.is_empty() && config.dataset.is_none() {
        return Err(input(
            "--checkpoint needs --dataset (a SQuAD v1.1 file) to measure accuracy",
        ));
    }
    let (names, others) = (config.machine_names.len(), config.compare_with.len());
    if names != 0 && names != others + 1 {
        return Err(input(format!(
            "--machine-names gives {names} names for {} machines (this one and {others} \
             --compare-with folders)",
            others + 1
        )));
    }
    Ok(())
}

/// The run's folder: the one asked for if it is new or empty, else a new `runs/<date-time>`.
fn output_root(config: &StudyConfig) -> Result<PathBuf> {
    Ok(match &config.output_dir {
        Some(d) if d.exists() && std::fs::read_dir(d)?.next().is_some() => {
            return Err(input(format!(
                "{} is not empty; `run` always starts a new folder",
                d.display()
            )))
        }
        Some(d) => d.clone(),
        None => crate::record::timestamped_dir(Path::new("runs")),
    })
}

/// The precisions measured (see [`StudyConfig::precisions`]; the tier is chosen first on the
/// CPU: it decides which run fast).
fn precisions(config: &StudyConfig) -> Result<Vec<Precision>> {
    if !config.precisions.is_empty() {
        return Ok(crate::bench::distinct(config.precisions.iter().copied()));
    }
    if config.device.is_cpu() {
        crate::compute::isa::use_isa(config.isa)?;
        return Ok(crate::compute::fast_precisions());
    }
    Ok(vec![Precision::F32])
}

/// The other machines' folders for each experiment, each checked to hold results.
fn other_machines(
    config: &StudyConfig,
    experiments: &[(Preset, Option<&str>)],
) -> Result<Vec<Vec<PathBuf>>> {
    let mut others = Vec::new();
    for (_, sub) in experiments {
        let dirs: Vec<PathBuf> = config
            .compare_with
            .iter()
            .map(|d| sub.map_or(d.clone(), |s| d.join(s)))
            .collect();
        for d in &dirs {
            if !d.join(RESULTS_JSON).is_file() {
                return Err(input(format!(
                    "--compare-with: {} has no results.json (give the other machine's `run` \
                     folder of the same --preset)",
                    d.display()
                )));
            }
        }
        others.push(dirs);
    }
    Ok(others)
}

/// One bench per experiment, each in its folder, at every precision, each cell in a fresh
/// child process of this binary.
fn bench_configs(
    config: &StudyConfig,
    experiments: &[(Preset, Option<&str>)],
    precisions: &[Precision],
    root: &Path,
) -> Result<Vec<BenchConfig>> {
    let settings = CellSettings {
        dtype: precisions[0],
        device: config.device,
        isa: config.isa,
        offline: config.offline,
        ..default_settings(config.threads)
    };
    let mut benches = Vec::new();
    for &(preset, sub) in experiments {
        let dir = sub.map_or(root.to_path_buf(), |s| root.join(s));
        let mut bench = BenchConfig::new(Some(preset), &config.models, settings.clone(), &dir);
        bench.dtypes = precisions.to_vec();
        bench.isolation = Isolation::this_binary()?;
        bench.processes = default_processes(&bench.isolation, bench.settings.device);
        bench.validate()?;
        benches.push(bench);
    }
    Ok(benches)
}

/// Each checkpoint evaluated at every precision, so the report puts each one's EM/F1 beside
/// its speed: one job per checkpoint and precision, each checked now.
fn eval_jobs(config: &StudyConfig, precisions: &[Precision], root: &Path) -> Result<Vec<EvalJob>> {
    let Some(dataset) = &config.dataset else {
        return Ok(Vec::new());
    };
    let mut evals = Vec::new();
    for (i, model) in config.checkpoints.iter().enumerate() {
        let name: String = model
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        for &precision in precisions {
            let suffix = match precision {
                Precision::F32 => String::new(),
                p => format!("-{}", p.as_str()),
            };
            let job = EvalJob {
                spec: ModelSpec {
                    model: model.clone(),
                    random_init: false,
                    seed: 0,
                    offline: config.offline,
                    precision,
                    device: config.device,
                },
                dataset: dataset.clone(),
                limit: Some(config.eval_limit),
                config: EvalConfig {
                    features: FeatureConfig::default(),
                    decode: DecodeConfig::default(),
                    batch_size: crate::answer::DEFAULT_BATCH_SIZE,
                },
                tokenizer: None,
                output_dir: root.join("eval").join(format!("{i}-{name}{suffix}")),
                overwrite: false,
            };
            // Checked now, before the benches run (each job checks again as it starts).
            job.check()?;
            evals.push(job);
        }
    }
    Ok(evals)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(root: &Path) -> StudyConfig {
        StudyConfig {
            preset: StudyPreset::Seed,
            models: vec!["distilbert-base-uncased".into()],
            output_dir: Some(root.join("run")),
            precisions: vec![Precision::F32],
            device: DeviceSpec::Cpu,
            isa: IsaChoice::Auto,
            threads: 1,
            checkpoints: Vec::new(),
            dataset: None,
            eval_limit: 10,
            price: None,
            compare_with: Vec::new(),
            machine_names: Vec::new(),
            machine_prices: MachinePrices::None,
            offline: true,
        }
    }

    /// The seed preset plans its three experiments, each in its folder under the run's, with
    /// the models and precisions asked for; a checkpoint becomes one evaluation per
    /// precision; nothing is written while planning.
    #[test]
    fn a_study_is_planned_before_any_work() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = config(tmp.path());
        c.precisions = vec![Precision::F32, Precision::Int8, Precision::F32];
        c.checkpoints = vec!["some/checkpoint".into()];
        c.dataset = Some(tmp.path().join("dev.json"));
        let job = StudyJob::plan(&c).unwrap();
        let dirs: Vec<_> = job.benches.iter().map(|b| b.files.dir.clone()).collect();
        let root = tmp.path().join("run");
        assert_eq!(
            dirs,
            ["seed-memory-seq", "seed-memory-batch", "seed-time"].map(|s| root.join(s))
        );
        for b in &job.benches {
            assert_eq!(b.models, ["distilbert-base-uncased"]);
            assert_eq!(b.dtypes, [Precision::F32, Precision::Int8]);
        }
        let evals: Vec<_> = job.evals.iter().map(|e| e.output_dir.clone()).collect();
        let eval = root.join("eval");
        assert_eq!(
            evals,
            [
                eval.join("0-some_checkpoint"),
                eval.join("0-some_checkpoint-int8")
            ]
        );
        assert!(!root.exists());
    }

    /// Settings that do not go together are refused by name before anything runs.
    #[test]
    fn a_study_that_cannot_run_is_refused_up_front() {
        let tmp = tempfile::tempdir().unwrap();
        let refused = |c: &StudyConfig| StudyJob::plan(c).unwrap_err().to_string();
        let mut c = config(tmp.path());
        c.checkpoints = vec!["x".into()];
        assert!(refused(&c).contains("--checkpoint needs --dataset"));
        let mut c = config(tmp.path());
        c.machine_names = vec!["a".into(), "b".into()];
        assert!(refused(&c).contains("2 names for 1 machines"));
        let mut c = config(tmp.path());
        c.compare_with = vec![tmp.path().join("elsewhere")];
        assert!(refused(&c).contains("has no results.json"));
        let c = config(tmp.path());
        std::fs::create_dir_all(tmp.path().join("run/old")).unwrap();
        assert!(refused(&c).contains("is not empty"));
    }
}
