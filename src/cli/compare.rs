//! `bertbench compare`: did a change make cells slower or faster than a baseline run?

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;

use crate::bench::fmt_time;
use crate::bench::output::ResultsFile;
use crate::error::{input, EXIT_REGRESSION, EXIT_SUCCESS};
use crate::report::compare::{compare as compare_runs, CompareOptions, Comparison, Verdict};

/// Arguments of `bertbench compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Output directory of the baseline bench run (or its results.json).
    pub base_dir: PathBuf,
    /// Output directory of the run to judge (or its results.json).
    pub new_dir: PathBuf,
    /// Smallest relative change of the median that counts (0.05 = 5%).
    #[arg(long, default_value_t = 0.05)]
    pub threshold: f64,
    /// Significance level of the two-sided Mann-Whitney U test on the timed samples.
    #[arg(long, default_value_t = 0.05)]
    pub alpha: f64,
    /// Print the comparison as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Compares two runs and prints the table (or JSON). Returns the exit code: 0, or
/// [`EXIT_REGRESSION`] when a cell regressed beyond the threshold.
pub fn compare(args: CompareArgs) -> Result<i32> {
    if !(args.threshold.is_finite() && args.threshold >= 0.0) {
        return Err(input(format!(
            "--threshold must be a finite number >= 0 (a fraction: 0.05 = 5%), got {}",
            args.threshold
        )));
    }
    if !(args.alpha > 0.0 && args.alpha < 1.0) {
        return Err(input(format!(
            "--alpha must be between 0 and 1, got {}",
            args.alpha
        )));
    }
    let base = ResultsFile::read(&results_path(&args.base_dir))?;
    let new = ResultsFile::read(&results_path(&args.new_dir))?;
    let opts = CompareOptions {
        threshold: args.threshold,
        alpha: args.alpha,
    };
    let comparison = compare_runs(&base, &new, &opts);
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&comparison)?)?;
    } else {
        for w in &comparison.warnings {
            eprintln!("warning: {w}: timings may not be comparable");
        }
        write!(out, "{}", table(&comparison))?;
        writeln!(out, "\n{}", comparison.summary())?;
    }
    // The caller may exit the process with the code right away.
    out.flush()?;
    Ok(if comparison.has_regression() {
        EXIT_REGRESSION
    } else {
        EXIT_SUCCESS
    })
}

/// A run directory's `results.json`, or the path itself if it names a file.
fn results_path(p: &Path) -> PathBuf {
    if p.is_file() {
        p.to_path_buf()
    } else {
        p.join(crate::bench::output::RESULTS_JSON)
    }
}

/// The per-cell table, one line per cell and a line of notes under cells that have one.
fn table(c: &Comparison) -> String {
    let mut s = format!(
        "{:<32} {:<9} {:>5} {:>5}  {:>11} {:>11}  {:>27}  {:>8}  {:>9}  verdict\n",
        "model",
        "mode",
        "batch",
        "seq",
        "base median",
        "new median",
        "change [95% CI]",
        "p-value",
        "processes"
    );
    for row in &c.cells {
        let dash = || "-".to_string();
        let processes = row.speed.as_ref().map_or_else(dash, |sp| {
            format!("{} / {}", sp.base_processes, sp.new_processes)
        });
        let (base, new, change, p) = match &row.speed {
            Some(sp) => (
                fmt_time(sp.base_median_s),
                fmt_time(sp.new_median_s),
                format!(
                    "{} [{}, {}]",
                    pct(sp.change),
                    pct(sp.change_low),
                    pct(sp.change_high)
                ),
                if sp.two_level {
                    "2-level".to_string()
                } else {
                    fmt_p(sp.p_value)
                },
            ),
            None => (dash(), dash(), dash(), dash()),
        };
        let verdict = match row.verdict {
            Verdict::NotComparable => format!(
                "not comparable ({} / {})",
                row.base_status.map_or("-", |s| s.as_str()),
                row.new_status.map_or("-", |s| s.as_str())
            ),
            v => v.to_string(),
        };
        s += &format!(
            "{:<32} {:<9} {:>5} {:>5}  {:>11} {:>11}  {:>27}  {:>8}  {:>9}  {}\n",
            row.cell.model,
            row.cell.mode.as_str(),
            row.cell.batch_size,
            row.cell.sequence_length,
            base,
            new,
            change,
            p,
            processes,
            verdict
        );
        if let Some(note) = &row.note {
            s += &format!("    note: {note}\n");
        }
    }
    s
}

/// A p-value: three decimals, or scientific notation below 0.001.
fn fmt_p(p: f64) -> String {
    if p >= 1e-3 {
        format!("{p:.3}")
    } else {
        format!("{p:.1e}")
    }
}

/// A signed percentage: +19.8%.
fn pct(x: f64) -> String {
    format!("{:+.1}%", 100.0 * x)
}
