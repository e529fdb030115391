//! Assembling `report.md` and `report.html` for a results directory: environment, observations,
//! tables, plots, failures, the largest batches and, when present, accuracy.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::cost::{cost_to_reach_f1, usd_for_seconds, usd_per_1000_questions, Price};
use super::observe::{self, Quantity};
use super::plot::{self, Chart, Metric, Point, Series};
use super::render::{self, Block};
use crate::bench::memory::to_mb;
use crate::bench::output::{atomic_write, ResultsFile};
use crate::bench::{fmt_time, Mode, Status};
use crate::error::input;
use crate::eval::{EvalResults, EVAL_RESULTS_FILE};
use crate::train::checkpoint::TrainerState;
use crate::train::trainer::TrainingArgs;

/// Index of the cost column in the result tables.
const COST_COLUMN: usize = 10;

/// Options of a report.
#[derive(Debug, Clone, Default)]
pub struct ReportOptions {
    /// Names shown instead of the models', in plan order.
    pub short_names: Vec<String>,
    /// Hourly price of the machine, for dollar costs (none: no cost columns).
    pub price: Option<Price>,
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
struct Accuracy {
    model: String,
    f1: f64,
    exact_match: f64,
    questions: u64,
    ms_per_question: f64,
    windows_per_s: f64,
    windows_per_question: f64,
    source: PathBuf,
}

/// A model argument as a short label: a local path by its last component, a Hub id as is.
fn display_name(model: &str) -> String {
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
fn files_named(dir: &Path, name: &str) -> Vec<PathBuf> {
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
                out.push(Accuracy {
                    model: display_name(&r.model),
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
    for p in files_named(dir, "trainer_state.json") {
        let Some(run) = p.parent().map(Path::to_path_buf) else {
            continue;
        };
        let state = std::fs::read_to_string(&p)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<TrainerState>(&t).map_err(|e| e.to_string()));
        let args_path = run.join("training_args.json");
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

/// Writes `report.md`, `report.html` and `plots/*.png` into `dir`, from `dir/results.json`.
pub fn write_report(dir: &Path, opts: &ReportOptions) -> Result<ReportFiles> {
    let results_path = dir.join("results.json");
    if !results_path.is_file() {
        return Err(input(format!(
            "{}: no results.json (run `bertbench bench --output-dir {}` first)",
            dir.display(),
            dir.display()
        )));
    }
    let results = ResultsFile::read(&results_path)?;
    let mut warnings: Vec<String> = Vec::new();
    let models = observe::models(&results);
    let names = |m: &str| -> String {
        models
            .iter()
            .position(|x| x == m)
            .and_then(|i| opts.short_names.get(i).cloned())
            .unwrap_or_else(|| m.to_string())
    };
    let env = |k: &str| {
        results
            .environment
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let peak = results.peak_gflops();

    let mut blocks = vec![Block::Heading(1, "bertbench report".into())];
    blocks.push(Block::Paragraph(format!(
        "{} cells of {} on {} ({} threads, {}, {}), {} {} UTC, bertbench {} ({}), candle {}. Models use {} weights.",
        results.plan.len(),
        models.iter().map(|m| names(m)).collect::<Vec<_>>().join(", "),
        env("cpu"),
        env("threads"),
        env("device"),
        env("dtype"),
        env("date"),
        env("time"),
        env("bertbench_version"),
        env("git_commit"),
        env("candle_version"),
        env("weights"),
    )));

    if let Some(p) = &opts.price {
        blocks.push(Block::Paragraph(format!(
            "Dollar costs use {} at {} USD per hour{}{}. A cost per 1000 sequences is the time of 1000 sequences of the cell's shape at its measured throughput; a cost per 1000 questions uses the evaluation's own throughput and windows per question.",
            p.name,
            p.usd_per_hour,
            p.source.as_ref().map(|s| format!(" (source: {s}")).unwrap_or_default(),
            p.source.as_ref().map(|_| match &p.date { Some(d) => format!(", read {d})"), None => ")".into() }).unwrap_or_default(),
        )));
    }

    // Observations.
    let mut obs: Vec<String> = Vec::new();
    let ratios = observe::speed_ratios(&results);
    // One summary per unordered pair of models and mode, over every cell both measured.
    let mut pairs: Vec<(String, String, Mode)> = Vec::new();
    for r in &ratios {
        let (a, b) = if models.iter().position(|m| *m == r.faster)
            < models.iter().position(|m| *m == r.slower)
        {
            (r.faster.clone(), r.slower.clone())
        } else {
            (r.slower.clone(), r.faster.clone())
        };
        if !pairs.contains(&(a.clone(), b.clone(), r.mode)) {
            pairs.push((a, b, r.mode));
        }
    }
    for (a, b, mode) in &pairs {
        let these: Vec<&observe::SpeedRatio> = ratios
            .iter()
            .filter(|r| {
                r.mode == *mode
                    && ((&r.faster == a && &r.slower == b) || (&r.faster == b && &r.slower == a))
            })
            .collect();
        // log of (time of b / time of a): positive when a is faster.
        let logs: Vec<f64> = these
            .iter()
            .map(|r| {
                if &r.faster == a {
                    r.ratio.ln()
                } else {
                    -r.ratio.ln()
                }
            })
            .collect();
        let gm = (logs.iter().sum::<f64>() / logs.len() as f64).exp();
        let (fast, slow, g) = if gm >= 1.0 {
            (a, b, gm)
        } else {
            (b, a, 1.0 / gm)
        };
        let sig = these
            .iter()
            .filter(|r| r.is_significant() && &r.faster == fast)
            .count();
        let mut sentence = format!(
            "{} is {g:.2}x faster than {} ({}; geometric mean over {} cell(s), each cell's 95% interval above 1 in {sig})",
            names(fast),
            names(slow),
            mode.as_str(),
            these.len()
        );
        if let Some(big) = these
            .iter()
            .max_by_key(|r| (r.batch_size, r.sequence_length))
        {
            sentence.push_str(&format!("; at the largest cell, {}", big.sentence(&names)));
        }
        obs.push(sentence);
    }
    for (quantity, along_batch) in [
        (Quantity::Time, false),
        (Quantity::Time, true),
        (Quantity::ActivationMemory, false),
        (Quantity::ActivationMemory, true),
    ] {
        // One sentence per model and mode: the fit at the largest fixed value.
        let fits = observe::growth(&results, quantity, along_batch);
        let mut seen: Vec<(String, Mode)> = Vec::new();
        for g in fits.iter().rev() {
            let key = (g.model.clone(), g.mode);
            if !seen.contains(&key) && g.points >= 2 {
                seen.push(key);
                obs.push(g.sentence(&names));
            }
        }
    }
    let (order_rows, consistent) = observe::memory_order(&results);
    if let Some(order) = &consistent {
        obs.push(format!(
            "Peak memory orders the models the same way in every measured cell: {}.",
            order
                .iter()
                .map(|m| names(m))
                .collect::<Vec<_>>()
                .join(" < ")
        ));
    } else if order_rows.iter().any(|r| r.models.len() > 1) {
        obs.push(
            "The models' peak-memory order changes between cells (see the memory table).".into(),
        );
    }
    let failures = observe::failures(&results);
    if !failures.is_empty() {
        obs.push(format!(
            "{} cell(s) did not produce numbers: {}.",
            failures.len(),
            failures
                .iter()
                .map(|m| format!("{} ({})", m.cell, m.status.as_str()))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let noisy: Vec<String> = results
        .plan
        .iter()
        .filter_map(|c| results.find(c))
        .filter(|m| m.status == Status::Ok && m.reason.is_some())
        .map(|m| m.cell.to_string())
        .collect();
    if !noisy.is_empty() {
        obs.push(format!(
            "{} cell(s) were noisy (wide confidence intervals): {}; treat their ratios with care.",
            noisy.len(),
            noisy.join(", ")
        ));
    }
    blocks.push(Block::Heading(2, "Observations".into()));
    blocks.push(Block::Bullets(obs.clone()));

    // Speed and memory tables.
    for mode in [Mode::Inference, Mode::Training] {
        let cells: Vec<_> = results
            .plan
            .iter()
            .filter(|c| c.mode == mode)
            .filter_map(|c| results.find(c))
            .collect();
        if cells.is_empty() {
            continue;
        }
        blocks.push(Block::Heading(
            2,
            format!(
                "{} results",
                if mode == Mode::Inference {
                    "Inference"
                } else {
                    "Training"
                }
            ),
        ));
        let rows = cells
            .iter()
            .map(|m| {
                let s = m.speed.as_ref().map(|s| &s.summary);
                let dash = || "-".to_string();
                vec![
                    names(&m.cell.model),
                    m.cell.batch_size.to_string(),
                    m.cell.sequence_length.to_string(),
                    s.map(|s| fmt_time(s.median)).unwrap_or_else(dash),
                    s.map(|s| {
                        format!(
                            "[{}, {}]",
                            fmt_time(s.median_ci_low),
                            fmt_time(s.median_ci_high)
                        )
                    })
                    .unwrap_or_else(dash),
                    s.map(|s| s.n.to_string()).unwrap_or_else(dash),
                    m.tokens_per_s()
                        .map(|t| format!("{t:.0}"))
                        .unwrap_or_else(dash),
                    m.gflops()
                        .map(|g| match peak {
                            Some(p) => format!("{g:.1} ({:.0}%)", 100.0 * g / p),
                            None => format!("{g:.1}"),
                        })
                        .unwrap_or_else(dash),
                    m.memory
                        .as_ref()
                        .map(|mem| format!("{:.0}", to_mb(mem.peak_rss)))
                        .unwrap_or_else(dash),
                    m.memory
                        .as_ref()
                        .map(|mem| format!("{:.0}", to_mb(mem.alloc_peak)))
                        .unwrap_or_else(dash),
                    match (&opts.price, m.samples_per_s()) {
                        // One sequence per question: the cost of 1000 sequences of this shape.
                        (Some(p), Some(sps)) => {
                            format!("{:.4}", usd_per_1000_questions(sps, 1.0, p.usd_per_hour))
                        }
                        _ => dash(),
                    },
                    match (m.status, &m.reason) {
                        (Status::Ok, None) => "ok".into(),
                        (st, r) => format!(
                            "{}{}",
                            st.as_str(),
                            r.as_ref().map(|r| format!(": {r}")).unwrap_or_default()
                        ),
                    },
                ]
            })
            .collect();
        blocks.push(Block::Table {
            header: [
                "model",
                "batch",
                "seq",
                "median",
                "95% CI",
                "runs",
                "tokens/s",
                "GFLOP/s (of peak)",
                "peak RSS MB",
                "alloc peak MB",
                "USD per 1000 sequences",
                "status",
            ]
            .map(String::from)
            .to_vec(),
            rows,
        });
        // Without a price there is no cost column.
        if opts.price.is_none() {
            if let Some(Block::Table { header, rows }) = blocks.last_mut() {
                header.remove(COST_COLUMN);
                for r in rows {
                    r.remove(COST_COLUMN);
                }
            }
        }
    }

    // Largest batches, when searched.
    let max_batch = dir.join("max_batch.csv");
    if max_batch.is_file() {
        let mut reader = csv::Reader::from_path(&max_batch).context("reading max_batch.csv")?;
        let header: Vec<String> = reader.headers()?.iter().take(7).map(String::from).collect();
        let rows: Vec<Vec<String>> = reader
            .records()
            .filter_map(|r| r.ok())
            .map(|r| r.iter().take(7).map(String::from).collect())
            .collect();
        blocks.push(Block::Heading(2, "Largest batch that fits".into()));
        blocks.push(Block::Table { header, rows });
    }

    // Accuracy, when `bertbench eval` results sit in the directory.
    let evals = find_evaluations(dir, &mut warnings);
    let mut figures: Vec<(Chart, String)> = Vec::new();
    if !evals.is_empty() {
        blocks.push(Block::Heading(2, "Accuracy and speed".into()));
        blocks.push(Block::Table {
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
            rows: evals
                .iter()
                .map(|a| {
                    vec![
                        a.model.clone(),
                        format!("{:.2}", a.exact_match),
                        format!("{:.2}", a.f1),
                        a.questions.to_string(),
                        format!("{:.1}", a.ms_per_question),
                        format!("{:.3}", a.windows_per_question),
                        opts.price
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
                            .unwrap_or_else(|| "-".into()),
                        a.source
                            .strip_prefix(dir)
                            .unwrap_or(&a.source)
                            .display()
                            .to_string(),
                    ]
                })
                .collect(),
        });
        let series = evals
            .iter()
            .map(|a| Series {
                label: a.model.clone(),
                points: vec![Point {
                    x: a.ms_per_question,
                    y: a.f1,
                    interval: None,
                }],
            })
            .collect();
        figures.push((
            Chart {
                title: "Accuracy vs latency (up and left is better)".into(),
                x_label: "ms per question".into(),
                y_label: "SQuAD F1".into(),
                log_x: false,
                log_y: false,
                series,
                label_points: true,
            },
            "pareto_f1_latency".into(),
        ));
    }

    // Fine-tuning runs, when their output folders sit in the directory: time and cost to each
    // evaluated F1.
    let trainings = find_training_runs(dir, &mut warnings);
    if !trainings.is_empty() {
        blocks.push(Block::Heading(
            2,
            "Fine-tuning: time and cost to accuracy".into(),
        ));
        let mut rows = Vec::new();
        for t in &trainings {
            let run = t
                .dir
                .strip_prefix(dir)
                .unwrap_or(&t.dir)
                .display()
                .to_string();
            let usd = |secs: f64| {
                opts.price
                    .as_ref()
                    .map(|p| format!("{:.4}", usd_for_seconds(secs, p.usd_per_hour)))
            };
            rows.push(vec![
                run.clone(),
                t.model.clone(),
                format!(
                    "whole run: {} steps, {:.2} epochs",
                    t.state.global_step, t.state.epoch
                ),
                "-".into(),
                format!("{:.0}", t.state.elapsed_s),
                usd(t.state.elapsed_s).unwrap_or_else(|| "-".into()),
            ]);
            for e in t.state.log_history.iter().filter(|e| e.eval_f1.is_some()) {
                let f1 = e.eval_f1.unwrap_or(0.0);
                // The first time the run reached this F1 (an earlier evaluation may have).
                let (secs, cost) = match &opts.price {
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
        blocks.push(Block::Table {
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
        });
    }

    // Plots of every view with at least two x values.
    for mode in [Mode::Inference, Mode::Training] {
        for (metric, mname) in [(Metric::Time, "time"), (Metric::Memory, "memory")] {
            for along_batch in [false, true] {
                let series = plot::series_from_results(
                    &results,
                    mode,
                    metric,
                    along_batch,
                    &opts.short_names,
                );
                if !series.iter().any(|s| s.points.len() >= 2) {
                    continue;
                }
                let name = format!(
                    "{}_{mname}_vs_{}",
                    mode.as_str(),
                    if along_batch { "batch" } else { "sequence" }
                );
                figures.push((
                    plot::hf_chart(series, metric, mode, along_batch, true),
                    name,
                ));
            }
        }
    }
    let plots_dir = dir.join("plots");
    std::fs::create_dir_all(&plots_dir)?;
    let mut plot_files = Vec::new();
    if !figures.is_empty() {
        blocks.push(Block::Heading(2, "Plots".into()));
    }
    for (chart, name) in &figures {
        let png = plots_dir.join(format!("{name}.png"));
        plot::render(chart, &png, (1000, 650))?;
        let svg = plot::render_svg_string(chart, (1000, 650))?;
        blocks.push(Block::Figure {
            caption: chart.title.clone(),
            png: format!("plots/{name}.png"),
            svg,
        });
        plot_files.push(png);
    }

    blocks.push(Block::Heading(2, "Environment".into()));
    blocks.push(Block::Table {
        header: vec!["key".into(), "value".into()],
        rows: results
            .environment
            .iter()
            .map(|(k, v)| vec![k.clone(), v.clone()])
            .collect(),
    });

    let markdown = dir.join("report.md");
    let html = dir.join("report.html");
    atomic_write(&markdown, render::markdown(&blocks).as_bytes())?;
    atomic_write(&html, render::html("bertbench report", &blocks).as_bytes())?;
    Ok(ReportFiles {
        markdown,
        html,
        plots: plot_files,
        observations: obs,
        warnings,
    })
}
