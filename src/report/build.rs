//! Assembling `report.md` and `report.html` for a results directory: environment, observations,
//! tables, plots, failures, the largest batches and, when present, accuracy.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use super::observe;
use super::plot;
use super::render::{self, dash, Block, Column};
use crate::answer::{EvalResults, EVAL_RESULTS_FILE};
use crate::bench::drift;
use crate::bench::env::Key;
use crate::bench::memory::to_mb;
use crate::bench::output::{ResultsFile, RESULTS_JSON};
use crate::bench::run::MAX_BATCH_FILE;
use crate::bench::{fmt_time, EnergySource, Measurement, Mode};
use crate::chart::{self, Chart, Point, Series};
use crate::cost::{usd_for_seconds, usd_per_1000_questions, Price};
use crate::device::Precision;
use crate::error::input;
use crate::record::atomic_write;
use crate::serve::loadgen::{self, LoadgenResults};
use crate::serve::Scenario;
use crate::train::checkpoint::TrainerState;
use crate::train::checkpoint::{cost_to_reach_f1, TRAINER_STATE_FILE, TRAINING_ARGS_FILE};
use crate::train::trainer::TrainingArgs;

/// Options of a report.
#[derive(Debug, Clone, Default)]
pub struct ReportOptions {
    /// Names shown instead of the models', in plan order.
    pub short_names: Vec<String>,
    /// Hourly price of the machine, for dollar costs (none: no cost columns).
    pub price: Option<Price>,
    /// Where the report and its plots go (none: the results folder).
    pub output_dir: Option<PathBuf>,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct ReportFiles {
    pub markdown: PathBuf,
    pub html: PathBuf,
    pub plots: Vec<PathBuf>,
    pub observations: Vec<String>,
    /// Result files found but not read (each names its file and why).
    pub warnings: Vec<String>,
}

/// An evaluation found next to the results.
#[derive(Debug, Clone)]
pub(super) struct Accuracy {
    /// The model's short name, and the precision when not f32 (`model int8`).
    pub(super) model: String,
    pub(super) f1: f64,
    pub(super) exact_match: f64,
    pub(super) questions: u64,
    pub(super) ms_per_question: f64,
    pub(super) windows_per_s: f64,
    pub(super) windows_per_question: f64,
    /// Its `eval_results.json`.
    pub(super) source: PathBuf,
}

/// A model argument as a short label: a local path by its last component, a Hub id as is.
pub(crate) fn display_name(model: &str) -> String {
    let path = Path::new(model);
    if path.is_absolute() || model.starts_with('.') {
        path.file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| model.to_string())
    } else {
        model.to_string()
    }
}

/// Every file named `name` under `dir`, skipping `checkpoint-*` folders (a training run's
/// intermediate states are not separate results), in path order.
pub(crate) fn files_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                if !e.file_name().to_string_lossy().starts_with("checkpoint-") {
                    stack.push(p);
                }
            } else if e.file_name() == name {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Finds `eval_results.json` files (written by `bertbench eval` and `train`) in the directory
/// tree; a file that does not read as [`EvalResults`] is skipped with a warning naming it.
fn find_evaluations(dir: &Path, warnings: &mut Vec<String>) -> Vec<Accuracy> {
    let mut out: Vec<Accuracy> = Vec::new();
    for p in files_named(dir, EVAL_RESULTS_FILE) {
        match EvalResults::read(&p) {
            Ok(r) => {
                let e = &r.report;
                // A checkpoint evaluated at several precisions is one row each, named as the
                // bench names a precision's variant (`model int8`).
                let model = match r.dtype {
                    Precision::F32 => display_name(&r.model),
                    dtype => format!("{} {}", display_name(&r.model), dtype.as_str()),
                };
                out.push(Accuracy {
                    model,
                    f1: e.f1,
                    exact_match: e.exact_match,
                    questions: e.questions as u64,
                    ms_per_question: if e.questions_per_s > 0.0 {
                        1e3 / e.questions_per_s
                    } else {
                        f64::NAN
                    },
                    windows_per_s: e.windows_per_s,
                    windows_per_question: e.windows as f64 / e.questions as f64,
                    source: p,
                })
            }
            Err(e) => warnings.push(format!("skipped {e:#}")),
        }
    }
    out.sort_by(|a, b| a.model.cmp(&b.model));
    out
}

/// A fine-tuning run found in the directory: its final `trainer_state.json` (not a checkpoint's).
struct Training {
    dir: PathBuf,
    model: String,
    state: TrainerState,
}

/// Finds fine-tuning runs (`trainer_state.json` beside `training_args.json`) in the
/// directory tree; a file that does not read is skipped with a warning naming it.
fn find_training_runs(dir: &Path, warnings: &mut Vec<String>) -> Vec<Training> {
    let mut out = Vec::new();
    for p in files_named(dir, TRAINER_STATE_FILE) {
        let Some(run) = p.parent().map(Path::to_path_buf) else {
            continue;
        };
        let state = std::fs::read_to_string(&p)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<TrainerState>(&t).map_err(|e| e.to_string()));
        let args_path = run.join(TRAINING_ARGS_FILE);
        let args = std::fs::read_to_string(&args_path)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<TrainingArgs>(&t).map_err(|e| e.to_string()));
        match (state, args) {
            (Ok(state), Ok(args)) => out.push(Training {
                dir: run,
                model: args.model,
                state,
            }),
            (Err(e), _) => warnings.push(format!("skipped {}: {e}", p.display())),
            (_, Err(e)) => warnings.push(format!("skipped {}: {e}", args_path.display())),
        }
    }
    out
}

/// What every section reads: the folder, its results, the options and the models' names.
pub(super) struct Context<'a> {
    pub(super) dir: &'a Path,
    /// Where the report and its plots are written.
    pub(super) out: &'a Path,
    pub(super) results: &'a ResultsFile,
    pub(super) opts: &'a ReportOptions,
    /// The models in plan order.
    pub(super) models: Vec<String>,
}

impl Context<'_> {
    /// A model's name in the report (its short name where one was given), with the
    /// precision of a variant label (`model int8`) kept after it.
    pub(super) fn name(&self, label: &str) -> String {
        let (model, suffix) = crate::bench::Cell::split_variant(label);
        let name = self
            .models
            .iter()
            .position(|x| x == model)
            .and_then(|i| self.opts.short_names.get(i).cloned())
            .unwrap_or_else(|| model.to_string());
        format!("{name}{suffix}")
    }

    /// A value of the environment file, empty when missing.
    pub(super) fn env(&self, key: Key) -> String {
        self.results.env(key).unwrap_or_default().to_string()
    }

    /// A path inside the folder, relative to it.
    fn relative(&self, path: &Path) -> String {
        path.strip_prefix(self.dir)
            .unwrap_or(path)
            .display()
            .to_string()
    }
}

/// Writes `report.md`, `report.html` and `plots/*.png` into `dir` (or `opts.output_dir`), from `dir/results.json`
/// and whatever evaluations and fine-tuning runs sit in the folder. Each section is built by
/// its own function below, in the order the report shows them.
pub fn write_report(dir: &Path, opts: &ReportOptions) -> Result<ReportFiles> {
    let results_path = dir.join(RESULTS_JSON);
    if !results_path.is_file() {
        return Err(input(format!(
            "{}: no results.json (run `bertbench bench --output-dir {}` first)",
            dir.display(),
            dir.display()
        )));
    }
    let results = ResultsFile::read(&results_path)?;
    let out = opts.output_dir.as_deref().unwrap_or(dir);
    std::fs::create_dir_all(out).map_err(|e| {
        input(format!(
            "cannot create output directory {}: {e}",
            out.display()
        ))
    })?;
    let cx = Context {
        dir,
        out,
        results: &results,
        opts,
        // The models themselves: a precision's variant is named after its model.
        models: crate::bench::distinct(results.plan.iter().map(|c| c.model.clone())),
    };
    let mut warnings: Vec<String> = Vec::new();
    let evals = find_evaluations(dir, &mut warnings);
    let trainings = find_training_runs(dir, &mut warnings);
    let observations = observe::observations(&results, &|m: &str| cx.name(m));

    // The answer first (which model at which precision), then what it rests on, the detailed
    // observations folded.
    let mut blocks = vec![Block::Heading(1, "bertbench report".into())];
    let (answer, mut answer_plots) = super::summary::section(&cx, &evals)?;
    blocks.extend(answer);
    blocks.push(Block::Heading(2, "Setup".into()));
    blocks.extend(summary_section(&cx));
    blocks.push(Block::Heading(2, "Observations".into()));
    blocks.push(Block::Details {
        summary: format!(
            "{} observations: speed ratios of every pair, growth with sequence length and \
             batch size, memory order, failures",
            observations.len()
        ),
        blocks: vec![Block::Bullets(observations.clone())],
    });
    for mode in [Mode::Inference, Mode::Training] {
        blocks.extend(results_section(&cx, mode));
    }
    let (drift_blocks, mut drift_plots) = drift_section(&cx)?;
    blocks.extend(drift_blocks);
    blocks.extend(max_batch_section(dir, &mut warnings));
    blocks.extend(accuracy_section(&cx, &evals));
    blocks.extend(training_section(&cx, &trainings));
    let (serving_blocks, mut serving_plots) = serving_section(&cx, &evals, &mut warnings)?;
    blocks.extend(serving_blocks);
    let (plot_blocks, mut plots) = plots_section(&cx)?;
    answer_plots.append(&mut plots);
    let mut plots = answer_plots;
    plots.append(&mut serving_plots);
    plots.append(&mut drift_plots);
    blocks.extend(plot_blocks);
    blocks.extend(environment_section(&results));

    ReportFiles::write(
        out,
        "bertbench report",
        &blocks,
        plots,
        observations,
        warnings,
    )
}

impl ReportFiles {
    /// Writes `blocks` as `out/report.md` and `out/report.html` (titled `title`).
    pub(crate) fn write(
        out: &Path,
        title: &str,
        blocks: &[Block],
        plots: Vec<PathBuf>,
        observations: Vec<String>,
        warnings: Vec<String>,
    ) -> Result<Self> {
        let markdown = out.join("report.md");
        let html = out.join("report.html");
        atomic_write(&markdown, render::markdown(blocks).as_bytes())?;
        atomic_write(&html, render::html(title, blocks).as_bytes())?;
        Ok(Self {
            markdown,
            html,
            plots,
            observations,
            warnings,
        })
    }
}

/// What was measured, where, with what, and the price the costs use.
fn summary_section(cx: &Context) -> Vec<Block> {
    // Runs before the kernel tier and cache sizes were recorded have neither.
    let kernels = match cx.env(Key::Isa) {
        isa if isa.is_empty() => String::new(),
        isa => format!(" {isa} kernels,"),
    };
    let caches = match (cx.env(Key::L1dCacheKib), cx.env(Key::L2CacheKib)) {
        (l1, l2) if l1.is_empty() || l2.is_empty() => String::new(),
        // An L2 that hardware threads or a cluster's cores share (runs before this was
        // recorded have no count).
        (l1, l2) => match cx.env(Key::L2CacheSharedBy).as_str() {
            "" | "1" => format!(" (L1d {l1} KiB, L2 {l2} KiB per core)"),
            n => format!(" (L1d {l1} KiB, L2 {l2} KiB per {n} logical CPUs)"),
        },
    };
    // Blocks forced by BERTBENCH_BLOCKING instead of sized from those caches ("rule").
    let kernels = match cx.env(Key::Blocking) {
        b if b.is_empty() || b == "rule" => kernels,
        b => format!("{kernels} blocks forced to {b} by BERTBENCH_BLOCKING,"),
    };
    let mut blocks = vec![Block::Paragraph(format!(
        "{} cells of {} on {}{caches} ({} threads,{kernels} {}, {}), {} {} UTC, bertbench {} ({}), candle {}. Models use {} weights.",
        cx.results.plan.len(),
        cx.models.iter().map(|m| cx.name(m)).collect::<Vec<_>>().join(", "),
        cx.env(Key::Cpu),
        cx.env(Key::Threads),
        cx.env(Key::Device),
        // A run over several precisions lists them all.
        match cx.env(Key::Dtypes) {
            d if d.is_empty() => cx.env(Key::Dtype),
            d => d,
        },
        cx.env(Key::Date),
        cx.env(Key::Time),
        cx.env(Key::BertbenchVersion),
        cx.env(Key::GitCommit),
        cx.env(Key::CandleVersion),
        cx.env(Key::Weights),
    ))];
    let processes = cx
        .results
        .measurements
        .iter()
        .filter_map(|m| m.speed.as_ref().map(|s| s.processes()))
        .max()
        .unwrap_or(1);
    blocks.push(Block::Paragraph(if processes > 1 {
        format!(
            "Each cell was timed in {processes} separate processes, interleaved with the other \
             cells in {processes} rounds; intervals marked 2-level (and the speed ratios) come \
             from the spread between processes, so they include the machine's drift between \
             them (Student's t over the process medians, their relative spread pooled over the \
             run's cells)."
        )
    } else {
        "Each cell was timed in one process: its interval describes the noise within that \
         process, not the machine's drift between processes (`bench --processes 3` measures \
         that)."
            .to_string()
    }));
    if let Some(p) = &cx.opts.price {
        blocks.push(Block::Paragraph(format!(
            "Dollar costs use {} at {} USD per hour{}{}. A cost per 1000 sequences is the time of 1000 sequences of the cell's shape at its measured throughput; a cost per 1000 questions uses the evaluation's own throughput and windows per question.",
            p.name,
            p.usd_per_hour,
            p.source.as_ref().map(|s| format!(" (source: {s}")).unwrap_or_default(),
            p.source.as_ref().map(|_| match &p.date { Some(d) => format!(", read {d})"), None => ")".into() }).unwrap_or_default(),
        )));
    }
    blocks
}

/// One table per mode: speed, share of peak, memory, cost and status of every cell.
fn results_section(cx: &Context, mode: Mode) -> Vec<Block> {
    let results = cx.results;
    let cells: Vec<_> = results
        .plan
        .iter()
        .filter(|c| c.mode == mode)
        .filter_map(|c| results.find(c))
        .collect();
    if cells.is_empty() {
        return Vec::new();
    }
    let mut columns: Vec<Column<&Measurement>> = vec![
        Column::new("model", |m: &&Measurement| cx.name(&m.cell.variant())),
        Column::new("batch", |m: &&Measurement| m.cell.batch_size.to_string()),
        Column::new("seq", |m: &&Measurement| m.cell.sequence_length.to_string()),
    ];
    if results.thread_counts().len() > 1 {
        columns.push(Column::new("threads", |m: &&Measurement| {
            m.cell.threads.to_string()
        }));
    }
    columns.extend(speed_columns(results));
    columns.extend(memory_and_energy_columns(&cells));
    if let Some(p) = cx.opts.price.as_ref() {
        // One sequence per question: the cost of 1000 sequences of this shape.
        columns.push(Column::new(
            "USD per 1000 sequences",
            move |m: &&Measurement| {
                m.samples_per_s()
                    .map(|sps| format!("{:.4}", usd_per_1000_questions(sps, 1.0, p.usd_per_hour)))
                    .unwrap_or_else(dash)
            },
        ));
    }
    columns.push(Column::new("status", |m: &&Measurement| {
        observe::status_text(m)
    }));
    let title = match mode {
        Mode::Inference => "Inference results",
        Mode::Training => "Training results",
    };
    vec![
        Block::Heading(2, title.into()),
        render::table(&cells, &columns),
    ]
}

/// The results table's timing columns: the median with its interval, the runs behind it,
/// throughput and the share of the matmul peak.
fn speed_columns<'a>(results: &'a ResultsFile) -> Vec<Column<'a, &'a Measurement>> {
    vec![
        // The point of the interval beside it (with several processes, the mean of their
        // medians).
        Column::new("median", |m: &&Measurement| {
            m.speed
                .as_ref()
                .map(|sp| fmt_time(sp.median_interval().0))
                .unwrap_or_else(dash)
        }),
        Column::new("95% CI", |m: &&Measurement| {
            m.speed
                .as_ref()
                .map(|sp| {
                    let (_, low, high) = sp.median_interval();
                    let level = if sp.between.is_some() {
                        " (2-level)"
                    } else {
                        ""
                    };
                    format!("[{}, {}]{level}", fmt_time(low), fmt_time(high))
                })
                .unwrap_or_else(dash)
        }),
        Column::new("runs", |m: &&Measurement| {
            m.speed
                .as_ref()
                .map(|sp| match sp.processes() {
                    1 => sp.summary.n.to_string(),
                    k => format!("{} in {k} processes", sp.summary.n),
                })
                .unwrap_or_else(dash)
        }),
        Column::new("tokens/s", |m: &&Measurement| {
            m.tokens_per_s()
                .map(|t| format!("{t:.0}"))
                .unwrap_or_else(dash)
        }),
        Column::new("GFLOP/s (of peak)", move |m: &&Measurement| {
            m.gflops()
                .map(
                    |g| match results.peak_gflops(m.cell.threads, m.cell.precision()) {
                        Some(p) => format!("{g:.1} ({:.0}%)", 100.0 * g / p),
                        None => format!("{g:.1}"),
                    },
                )
                .unwrap_or_else(dash)
        }),
    ]
}

/// The results table's memory columns, and on a GPU its device memory and energy (only where
/// some cell has them).
fn memory_and_energy_columns<'a>(cells: &[&Measurement]) -> Vec<Column<'a, &'a Measurement>> {
    let mut columns: Vec<Column<&Measurement>> = vec![
        Column::new("peak RSS MB", |m: &&Measurement| {
            m.memory
                .as_ref()
                .map(|mem| format!("{:.0}", to_mb(mem.peak_rss)))
                .unwrap_or_else(dash)
        }),
        Column::new("alloc peak MB", |m: &&Measurement| {
            m.memory
                .as_ref()
                .map(|mem| format!("{:.0}", to_mb(mem.alloc_peak)))
                .unwrap_or_else(dash)
        }),
    ];
    if cells.iter().any(|m| gpu_peak(m).is_some()) {
        columns.push(Column::new("GPU peak MB", |m: &&Measurement| {
            gpu_peak(m)
                .map(|b| format!("{:.0}", to_mb(b)))
                .unwrap_or_else(dash)
        }));
    }
    let energy = |m: &Measurement| m.speed.as_ref().and_then(|sp| sp.energy);
    if cells.iter().any(|m| energy(m).is_some()) {
        columns.push(Column::new("J per 1000 seq", move |m: &&Measurement| {
            energy(m)
                .and_then(|e| {
                    let how = match e.source {
                        EnergySource::Counter => String::new(),
                        estimate => format!(" ({})", estimate.as_str()),
                    };
                    e.per_1k_sequences().map(|j| format!("{j:.1}{how}"))
                })
                .unwrap_or_else(dash)
        }));
    }
    columns
}

/// A GPU cell's peak device memory: the process's own where NVML reports it, else the whole
/// device's.
fn gpu_peak(m: &Measurement) -> Option<u64> {
    let mem = m.memory.as_ref()?;
    mem.gpu_process_peak.or(mem.gpu_device_peak)
}

/// The largest batch that fits, when `bench --find-max-batch` searched it; a file that does not
/// read is left out with a warning naming it.
fn max_batch_section(dir: &Path, warnings: &mut Vec<String>) -> Vec<Block> {
    let path = dir.join(MAX_BATCH_FILE);
    if !path.is_file() {
        return Vec::new();
    }
    let read = || -> Result<(Vec<String>, Vec<Vec<String>>)> {
        let mut reader = csv::Reader::from_path(&path)?;
        let header: Vec<String> = reader.headers()?.iter().take(7).map(String::from).collect();
        let mut rows = Vec::new();
        for record in reader.records() {
            rows.push(record?.iter().take(7).map(String::from).collect());
        }
        Ok((header, rows))
    };
    match read() {
        Ok((header, rows)) => vec![
            Block::Heading(2, "Largest batch that fits".into()),
            Block::Table { header, rows },
        ],
        Err(e) => {
            warnings.push(format!("skipped {}: {e:#}", path.display()));
            Vec::new()
        }
    }
}

/// Accuracy, speed and cost per question of the evaluations found in the folder.
fn accuracy_section(cx: &Context, evals: &[Accuracy]) -> Vec<Block> {
    if evals.is_empty() {
        return Vec::new();
    }
    let rows = evals
        .iter()
        .map(|a| {
            vec![
                a.model.clone(),
                format!("{:.2}", a.exact_match),
                format!("{:.2}", a.f1),
                a.questions.to_string(),
                format!("{:.1}", a.ms_per_question),
                format!("{:.3}", a.windows_per_question),
                cx.opts
                    .price
                    .as_ref()
                    .map(|p| {
                        format!(
                            "{:.4}",
                            usd_per_1000_questions(
                                a.windows_per_s,
                                a.windows_per_question,
                                p.usd_per_hour
                            )
                        )
                    })
                    .unwrap_or_else(dash),
                cx.relative(&a.source),
            ]
        })
        .collect();
    vec![
        Block::Heading(2, "Accuracy and speed".into()),
        Block::Table {
            header: [
                "model",
                "EM",
                "F1",
                "questions",
                "ms per question (eval run)",
                "windows per question",
                "USD per 1000 questions",
                "source",
            ]
            .map(String::from)
            .to_vec(),
            rows,
        },
    ]
}

/// The drift monitor: how fast the machine ran the calibration product while each cell was
/// measured, as a plot over the run, and the cells measured while it was slow or busy.
fn drift_section(cx: &Context) -> Result<(Vec<Block>, Vec<PathBuf>)> {
    let series = drift::series(cx.results);
    if series.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let samples: usize = series.iter().map(|(_, s)| s.len()).sum();
    let mut blocks = vec![
        Block::Heading(2, "Machine drift".into()),
        Block::Paragraph(format!(
            "Every process that timed a cell also timed a fixed calibration product (64 x 768 \
             by 768 x 768, best of five) right after, {samples} in all: the machine's own speed \
             while the cell was measured. A cell is flagged when a calibration of its ran more \
             than {:.0}% slower than the run's best, or the load average exceeded the logical \
             CPUs.",
            100.0 * drift::SLOW_THRESHOLD
        )),
    ];
    let slow = drift::slow_cells(cx.results, drift::SLOW_THRESHOLD);
    blocks.push(Block::Bullets(if slow.is_empty() {
        vec!["No cell was measured while the machine ran slow or busy.".into()]
    } else {
        slow.iter()
            .map(|s| {
                let mut text = format!(
                    "{} {} batch {}, sequence {}, {} threads: the calibration ran up to {:.0}% \
                     slower than the run's best",
                    cx.name(&s.cell.variant()),
                    s.cell.mode.as_str(),
                    s.cell.batch_size,
                    s.cell.sequence_length,
                    s.cell.threads,
                    100.0 * s.slowdown
                );
                if let Some(l) = s.busy_load {
                    text += &format!("; load average {l:.2} above the logical CPUs");
                }
                text
            })
            .collect()
    }));
    let chart = Chart {
        title: "Machine drift: the calibration product over the run".into(),
        x_label: "seconds since the first cell".into(),
        y_label: "calibration product (ms)".into(),
        log_x: false,
        log_y: false,
        y_from_zero: true,
        series: series
            .iter()
            .map(|(threads, s)| Series {
                label: format!("{threads} threads"),
                points: s
                    .iter()
                    .map(|&(x, y)| Point {
                        x,
                        y: y * 1e3,
                        interval: None,
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
        label_points: false,
    };
    let plots_dir = cx.out.join("plots");
    let (fig, png) = figure(&chart, &plots_dir, "drift", (1000, 500))?;
    blocks.push(fig);
    Ok((blocks, vec![png]))
}

/// Load-generator runs found in the folder (`loadgen.json`, from `bertbench loadgen`): each
/// scenario's figure, the answers' EM/F1 under load beside the same model's `eval` score, and
/// dollars per million questions at the rate sustained; the server runs' latency curves.
fn serving_section(
    cx: &Context,
    evals: &[Accuracy],
    warnings: &mut Vec<String>,
) -> Result<(Vec<Block>, Vec<PathBuf>)> {
    let mut found: Vec<(PathBuf, LoadgenResults)> = Vec::new();
    for p in files_named(cx.dir, loadgen::RESULTS_FILE) {
        match LoadgenResults::read(&p) {
            Ok(r) => found.push((p, r)),
            Err(e) => warnings.push(format!("skipped {e:#}")),
        }
    }
    if found.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let columns = serving_columns(cx, evals);
    let mut blocks = vec![
        Block::Heading(2, "Serving under load".into()),
        Block::Paragraph(
            "MLPerf-style scenarios through the batching server (`bertbench loadgen`): \
             SingleStream sends one query at a time, Offline all at once, Server a Poisson \
             stream; the Server figure is the highest rate whose latency percentile met the \
             bound. p50/p99 are of the first run. Answers under load are scored like `eval`'s \
             (EM / F1 over the questions answered)."
                .into(),
        ),
        render::table(&found, &columns),
    ];
    let mut files = Vec::new();
    let plots_dir = cx.out.join("plots");
    for (i, (_, r)) in found.iter().enumerate() {
        if r.scenario != Scenario::Server || r.runs.iter().all(|x| x.answered == 0) {
            continue;
        }
        let chart = loadgen::latency_chart(r);
        let name = format!("latency_vs_load_{}", i + 1);
        let (fig, png) = figure(&chart, &plots_dir, &name, (1000, 650))?;
        blocks.push(fig);
        files.push(png);
    }
    Ok((blocks, files))
}

/// The serving table's columns, a row per `loadgen.json` (with the path it was read from).
fn serving_columns<'a>(
    cx: &'a Context,
    evals: &'a [Accuracy],
) -> Vec<Column<'a, (PathBuf, LoadgenResults)>> {
    type Row = (PathBuf, LoadgenResults);
    let f2 = |v: Option<f64>| v.map_or_else(dash, |v| format!("{v:.2}"));
    let scores = |em: f64, f1: f64, questions: u64| format!("{em:.2} / {f1:.2} ({questions} q)");
    vec![
        Column::new("model", |(_, r): &Row| display_name(&r.setup.model)),
        Column::new("scenario", |(_, r): &Row| r.scenario.name().to_string()),
        Column::new("figure", |(_, r): &Row| r.metric_name.clone()),
        Column::new("value", move |(_, r): &Row| f2(r.metric)),
        Column::new("rests on", |(_, r): &Row| {
            let queries: usize = r.runs.iter().map(|x| x.queries).sum();
            format!("{} run(s), {queries} queries", r.runs.len())
        }),
        Column::new("p50 ms", move |(_, r): &Row| f2(r.runs[0].latency.p50_ms)),
        Column::new("p99 ms", move |(_, r): &Row| f2(r.runs[0].latency.p99_ms)),
        Column::new("EM / F1 under load", move |(_, r): &Row| {
            r.accuracy
                .as_ref()
                .map(|a| scores(a.exact_match, a.f1, a.questions as u64))
                .unwrap_or_else(dash)
        }),
        Column::new("EM / F1 by eval", move |(_, r): &Row| {
            let model = display_name(&r.setup.model);
            evals
                .iter()
                .find(|e| e.model == model)
                .map(|e| scores(e.exact_match, e.f1, e.questions))
                .unwrap_or_else(dash)
        }),
        Column::new("USD per million questions", move |(_, r): &Row| {
            f2(match (&cx.opts.price, r.qps()) {
                (Some(p), Some(qps)) => Some(usd_for_seconds(1e6 / qps, p.usd_per_hour)),
                _ => r.cost.as_ref().map(|c| c.usd_per_million_questions),
            })
        }),
        Column::new("source", |(path, _): &Row| cx.relative(path)),
    ]
}

/// Fine-tuning runs found in the folder: time and cost to each evaluated F1.
fn training_section(cx: &Context, trainings: &[Training]) -> Vec<Block> {
    if trainings.is_empty() {
        return Vec::new();
    }
    let price = cx.opts.price.as_ref();
    let mut rows = Vec::new();
    for t in trainings {
        let run = cx.relative(&t.dir);
        let usd =
            |secs: f64| price.map(|p| format!("{:.4}", usd_for_seconds(secs, p.usd_per_hour)));
        rows.push(vec![
            run.clone(),
            t.model.clone(),
            format!(
                "whole run: {} steps, {:.2} epochs",
                t.state.global_step, t.state.epoch
            ),
            "-".into(),
            format!("{:.0}", t.state.elapsed_s),
            usd(t.state.elapsed_s).unwrap_or_else(dash),
        ]);
        for e in t.state.log_history.iter().filter(|e| e.eval_f1.is_some()) {
            let f1 = e.eval_f1.unwrap_or(0.0);
            // The first time the run reached this F1 (an earlier evaluation may have).
            let (secs, cost) = match price {
                Some(p) => cost_to_reach_f1(&t.state.log_history, f1, p.usd_per_hour)
                    .map(|(s, c)| (s, format!("{c:.4}")))
                    .unwrap_or((e.elapsed_s, "-".into())),
                None => (e.elapsed_s, "-".into()),
            };
            rows.push(vec![
                run.clone(),
                t.model.clone(),
                format!(
                    "step {} (epoch {:.2}), {} questions",
                    e.step,
                    e.epoch,
                    e.eval_questions.unwrap_or(0)
                ),
                format!("{f1:.2}"),
                format!("{secs:.0}"),
                cost,
            ]);
        }
    }
    vec![
        Block::Heading(2, "Fine-tuning: time and cost to accuracy".into()),
        Block::Table {
            header: [
                "run",
                "model",
                "point",
                "eval F1",
                "training seconds to reach it",
                "USD",
            ]
            .map(String::from)
            .to_vec(),
            rows,
        },
    ]
}

/// The charts the report shows besides the summary's: time and memory against sequence length
/// and batch size for every view with at least two x values.
fn charts(cx: &Context) -> Vec<(Chart, String)> {
    let mut charts = Vec::new();
    for view in plot::views() {
        let series = plot::series_from_results(
            cx.results,
            view.mode,
            view.metric,
            view.along_batch,
            &cx.opts.short_names,
        );
        if !series.iter().any(|s| s.points.len() >= 2) {
            continue;
        }
        charts.push((
            plot::hf_chart(series, view.metric, view.mode, view.along_batch, true),
            view.name,
        ));
    }
    charts
}

/// Renders the charts into `plots/` (PNG) and into the report (SVG inline); returns the
/// section and the PNG files.
fn plots_section(cx: &Context) -> Result<(Vec<Block>, Vec<PathBuf>)> {
    let charts = charts(cx);
    let plots_dir = cx.out.join("plots");
    let mut blocks = Vec::new();
    let mut files = Vec::new();
    if !charts.is_empty() {
        blocks.push(Block::Heading(2, "Plots".into()));
    }
    for (chart, name) in &charts {
        let (fig, png) = figure(chart, &plots_dir, name, (1000, 650))?;
        blocks.push(fig);
        files.push(png);
    }
    Ok((blocks, files))
}

/// Renders `chart` to `plots_dir/NAME.png` and as the report's figure (the PNG linked from
/// `plots/NAME.png`, the SVG inline); returns the figure and the PNG's path.
pub(crate) fn figure(
    chart: &Chart,
    plots_dir: &Path,
    name: &str,
    size: (u32, u32),
) -> Result<(Block, PathBuf)> {
    std::fs::create_dir_all(plots_dir)
        .with_context(|| format!("creating {}", plots_dir.display()))?;
    let png = plots_dir.join(format!("{name}.png"));
    chart::render(chart, &png, size)?;
    let block = Block::Figure {
        caption: chart.title.clone(),
        png: format!("plots/{name}.png"),
        svg: chart::render_svg_string(chart, size)?,
    };
    Ok((block, png))
}

/// The environment file as a table.
fn environment_section(results: &ResultsFile) -> Vec<Block> {
    vec![
        Block::Heading(2, "Environment".into()),
        Block::Table {
            header: vec!["key".into(), "value".into()],
            rows: results
                .environment
                .iter()
                .map(|(k, v)| vec![k.clone(), v.clone()])
                .collect(),
        },
    ]
}
