//! A grid's progress told to a job's [`Observer`]: the stage `cells`, the cells done of the
//! plan with the running cell's phase as the status, and a line per finished cell (what the
//! CLI shows above its bar).

use std::time::Duration;

use super::cell::Phase;
use super::grid;
use super::{fmt_time, memory, Cell, Measurement, Mode, Status};
use crate::job::Observer;

/// [`grid::Observer`] on top of a job observer.
pub(crate) struct CellProgress<'a> {
    observer: &'a mut dyn Observer,
    done: u64,
    total: u64,
    /// The running cell, as its status line names it.
    cell: String,
}

impl<'a> CellProgress<'a> {
    /// Progress over `total` cells (a shard's count comes with its first cell).
    pub(crate) fn new(observer: &'a mut dyn Observer, total: usize) -> Self {
        observer.stage("cells");
        Self {
            observer,
            done: 0,
            total: total as u64,
            cell: String::new(),
        }
    }

    fn status(&mut self, what: &str) {
        let status = format!("{}: {what}", self.cell);
        self.observer.progress(self.done, self.total, &status);
    }
}

impl grid::Observer for CellProgress<'_> {
    fn peak_started(&mut self, threads: usize) {
        self.observer.line(&format!(
            "measuring this machine's matmul peak ({})...",
            super::threads_label(threads)
        ));
    }

    fn search_started(&mut self, model: &str, mode: Mode, sequence_length: usize) {
        self.observer.line(&format!(
            "searching the largest batch for {model} {} at sequence {sequence_length}...",
            mode.as_str()
        ));
    }

    fn cell_started(&mut self, _index: usize, total: usize, cell: &Cell) {
        self.total = total as u64;
        self.cell = cell.to_string();
        self.status("starting");
    }

    fn cell_progress(&mut self, phase: Phase, runs: usize, elapsed: Duration) {
        let what = match phase {
            Phase::Building => "building model".to_string(),
            Phase::Memory => "memory step".to_string(),
            Phase::Timing => format!("timed run {runs} ({:.1}s)", elapsed.as_secs_f64()),
        };
        self.status(&what);
    }

    fn cell_skipped(&mut self, _cell: &Cell) {
        self.done += 1;
        self.observer.progress(self.done, self.total, "");
    }

    fn cell_finished(&mut self, m: &Measurement) {
        self.done += 1;
        self.observer.progress(self.done, self.total, "");
        self.observer.line(&one_line(m));
    }
}

/// A finished cell in one line: its median with the interval, its peak memory, its status.
fn one_line(m: &Measurement) -> String {
    let mut parts = vec![format!("{:<40}", m.cell.to_string())];
    if let Some(s) = &m.speed {
        parts.push(format!(
            "{} [{} .. {}] ({} runs)",
            fmt_time(s.summary.median),
            fmt_time(s.summary.median_ci_low),
            fmt_time(s.summary.median_ci_high),
            s.summary.n
        ));
    }
    if let Some(mem) = &m.memory {
        parts.push(format!("peak {:.0} MB", memory::to_mb(mem.peak_rss)));
    }
    if m.status != Status::Ok {
        parts.push(format!(
            "{}: {}",
            m.status.as_str(),
            m.reason.clone().unwrap_or_default()
        ));
    } else if let Some(r) = &m.reason {
        parts.push(format!("warning: {r}"));
    }
    parts.join("  ")
}
