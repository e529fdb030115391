//! Comparing two bench runs cell by cell: did a change make the model slower or faster?
//!
//! For each cell measured in both runs, the change of the median time per step is
//! `new / base - 1`, with a conservative interval from the two medians' 95% confidence
//! intervals ([`ratio_interval`]). Whether the two sets of timed samples differ at all is
//! decided by a two-sided Mann-Whitney U test ([`stats::mann_whitney_u`]), which assumes nothing
//! about the shape of timing distributions. A cell is a regression only when the difference is
//! both significant (`p < alpha`) and larger than a practical threshold: with thousands of runs
//! a 0.5% difference is significant, but nobody should be paged for it.
//!
//! When both runs timed the cell in several processes (`bench --processes K`), the samples
//! of one run are not independent draws (they share each process's drift), so the rank test
//! would overstate significance: the interval then comes from the process medians
//! ([`stats::Between`]), and the difference is significant only when that interval of the
//! ratio excludes 1.

use serde::Serialize;

use crate::bench::env::Key;
use crate::bench::output::ResultsFile;
use crate::bench::{ratio_interval, Cell, Measurement, Speed, Status};
use crate::stats;

/// What counts as a change.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CompareOptions {
    /// Smallest relative change of the median that matters (0.05 = 5%).
    pub threshold: f64,
    /// Significance level of the Mann-Whitney test.
    pub alpha: f64,
}

impl Default for CompareOptions {
    fn default() -> Self {
        Self {
            threshold: 0.05,
            alpha: 0.05,
        }
    }
}

/// The outcome for one cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Significantly slower, by more than the threshold.
    Regressed,
    /// Significantly faster, by more than the threshold.
    Improved,
    /// Not significant, or within the threshold.
    NoChange,
    OnlyInBase,
    OnlyInNew,
    /// In both runs, but at least one has no timings (not `ok`, or run without speed).
    NotComparable,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Regressed => "regressed",
            Verdict::Improved => "improved",
            Verdict::NoChange => "no change",
            Verdict::OnlyInBase => "only in base",
            Verdict::OnlyInNew => "only in new",
            Verdict::NotComparable => "not comparable",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the speed of a cell changed. Times are seconds per step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpeedChange {
    /// The medians the change is computed from: each run's median, or, when it timed the
    /// cell in several processes, the mean of its process medians (the two-level point).
    pub base_median_s: f64,
    pub new_median_s: f64,
    pub base_runs: usize,
    pub new_runs: usize,
    /// Processes each run timed the cell in.
    pub base_processes: usize,
    pub new_processes: usize,
    /// Whether the verdict rests on the processes' two-level interval (both runs had several)
    /// rather than on the rank test of the pooled samples.
    pub two_level: bool,
    /// `new_median / base_median - 1`: +0.20 is 20% slower.
    pub change: f64,
    /// Conservative interval of `change` from the two medians' 95% CIs.
    pub change_low: f64,
    pub change_high: f64,
    /// Mann-Whitney U of the base samples against the new ones.
    pub mann_whitney_u: f64,
    pub p_value: f64,
}

/// One cell of the comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CellComparison {
    pub cell: Cell,
    pub verdict: Verdict,
    pub base_status: Option<Status>,
    pub new_status: Option<Status>,
    pub speed: Option<SpeedChange>,
    /// Why the cell is not comparable, or a caveat about its verdict.
    pub note: Option<String>,
}

/// The whole comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub options: CompareOptions,
    /// Differences between the two runs' settings that make timings hard to compare.
    pub warnings: Vec<String>,
    pub cells: Vec<CellComparison>,
}

impl Comparison {
    /// Number of cells with `verdict`.
    pub fn count(&self, verdict: Verdict) -> usize {
        self.cells.iter().filter(|c| c.verdict == verdict).count()
    }

    /// Whether any cell regressed beyond the threshold.
    pub fn has_regression(&self) -> bool {
        self.count(Verdict::Regressed) > 0
    }

    /// One line: how many cells got each verdict.
    pub fn summary(&self) -> String {
        let compared = self.count(Verdict::Regressed)
            + self.count(Verdict::Improved)
            + self.count(Verdict::NoChange);
        let mut parts = vec![format!(
            "{compared} cell(s) compared: {} regressed, {} improved, {} no change",
            self.count(Verdict::Regressed),
            self.count(Verdict::Improved),
            self.count(Verdict::NoChange)
        )];
        for v in [
            Verdict::OnlyInBase,
            Verdict::OnlyInNew,
            Verdict::NotComparable,
        ] {
            let n = self.count(v);
            if n > 0 {
                parts.push(format!("{n} {v}"));
            }
        }
        format!(
            "{} (threshold {}%, alpha {})",
            parts.join("; "),
            100.0 * self.options.threshold,
            self.options.alpha
        )
    }
}

/// Compares every cell of two runs: cells of `base` in its order, then cells only in `new`.
/// Two runs of one precision each are compared cell by cell whatever their precisions (what
/// a precision costs or buys, with `dtype differs` among the warnings), as two runs of other
/// tiers are; runs that sweep precisions compare each precision's cells with its own.
pub fn compare(base: &ResultsFile, new: &ResultsFile, opts: &CompareOptions) -> Comparison {
    let one_precision = |r: &ResultsFile| {
        crate::bench::distinct(r.measurements.iter().map(|m| m.cell.precision())).len() == 1
    };
    let across = one_precision(base) && one_precision(new);
    // The cell as it is matched: without its precision when comparing across precisions.
    let key = |c: &Cell| Cell {
        dtype: if across { None } else { c.dtype },
        ..c.clone()
    };
    let find = |r: &'_ ResultsFile, cell: &Cell| -> Option<Measurement> {
        r.measurements
            .iter()
            .rev()
            .find(|m| key(&m.cell) == *cell)
            .cloned()
    };
    let mut cells: Vec<Cell> = Vec::new();
    for m in base.measurements.iter().chain(&new.measurements) {
        if !cells.contains(&key(&m.cell)) {
            cells.push(key(&m.cell));
        }
    }
    Comparison {
        options: *opts,
        warnings: settings_warnings(base, new),
        cells: cells
            .iter()
            .map(|cell| {
                let (b, n) = (find(base, cell), find(new, cell));
                // The row names the cell as the base run has it (else the new one's).
                let shown = b.as_ref().or(n.as_ref()).map_or(cell, |m| &m.cell);
                compare_cell(shown, b.as_ref(), n.as_ref(), opts)
            })
            .collect(),
    }
}

/// Compares one cell's measurements (either may be missing).
pub fn compare_cell(
    cell: &Cell,
    base: Option<&Measurement>,
    new: Option<&Measurement>,
    opts: &CompareOptions,
) -> CellComparison {
    let row = |verdict, speed, note: Option<String>| CellComparison {
        cell: cell.clone(),
        verdict,
        base_status: base.map(|m| m.status),
        new_status: new.map(|m| m.status),
        speed,
        note,
    };
    let (b, n) = match (base, new) {
        (Some(b), Some(n)) => (b, n),
        (Some(_), None) => return row(Verdict::OnlyInBase, None, None),
        (None, Some(_)) => return row(Verdict::OnlyInNew, None, None),
        (None, None) => return row(Verdict::NotComparable, None, Some("in neither run".into())),
    };
    let (bs, ns) = match (timed(b), timed(n)) {
        (Ok(bs), Ok(ns)) => (bs, ns),
        (bs, ns) => {
            let why: Vec<String> = [("base", bs.err()), ("new", ns.err())]
                .into_iter()
                .filter_map(|(run, why)| why.map(|w| format!("{run}: {w}")))
                .collect();
            return row(Verdict::NotComparable, None, Some(why.join("; ")));
        }
    };
    let (base_samples, base_speed) = bs;
    let (new_samples, new_speed) = ns;
    let two_level = base_speed.between.is_some() && new_speed.between.is_some();
    let (ratio, low, high) = ratio_interval(new_speed, base_speed);
    let Some(test) = stats::mann_whitney_u(base_samples, new_samples) else {
        return row(
            Verdict::NotComparable,
            None,
            Some("timings are not finite numbers".into()),
        );
    };
    let change = ratio - 1.0;
    let significant = if two_level {
        low > 1.0 || high < 1.0
    } else {
        test.p_value < opts.alpha
    };
    let verdict = if significant && change > opts.threshold {
        Verdict::Regressed
    } else if significant && change < -opts.threshold {
        Verdict::Improved
    } else {
        Verdict::NoChange
    };
    let speed = SpeedChange {
        base_median_s: base_speed.median_interval().0,
        new_median_s: new_speed.median_interval().0,
        base_runs: base_samples.len(),
        new_runs: new_samples.len(),
        base_processes: base_speed.processes(),
        new_processes: new_speed.processes(),
        two_level,
        change,
        change_low: low - 1.0,
        change_high: high - 1.0,
        mann_whitney_u: test.u,
        p_value: test.p_value,
    };
    let note = if verdict == Verdict::NoChange {
        no_change_note(&speed, opts.alpha)
    } else {
        None
    };
    row(verdict, Some(speed), note)
}

/// What a "no change" rests on: the two-level interval, or, with so few runs that even
/// completely separated samples cannot reach `alpha`, that (rather than let "no change" read
/// as evidence of no change).
fn no_change_note(s: &SpeedChange, alpha: f64) -> Option<String> {
    if s.two_level {
        return Some(format!(
            "two-level interval over {} and {} processes: {:+.1}% to {:+.1}%",
            s.base_processes,
            s.new_processes,
            100.0 * s.change_low,
            100.0 * s.change_high
        ));
    }
    let (nb, nn) = (s.base_runs, s.new_runs);
    let separated: Vec<f64> = (0..nb + nn).map(|i| i as f64).collect();
    let best = stats::mann_whitney_u(&separated[..nb], &separated[nb..]);
    best.filter(|t| t.p_value >= alpha).map(|t| {
        format!(
            "too few runs ({nb} vs {nn}) for any difference to reach p < {alpha}: the smallest \
             possible p is {:.3}",
            t.p_value
        )
    })
}

/// The timed samples and their speed, or why there are none.
fn timed(m: &Measurement) -> Result<(&[f64], &Speed), String> {
    if m.status != Status::Ok {
        return Err(match &m.reason {
            Some(r) => format!("{} ({r})", m.status.as_str()),
            None => m.status.as_str().to_string(),
        });
    }
    match &m.speed {
        Some(s) if !s.timings.samples.is_empty() && s.summary.median > 0.0 => {
            Ok((&s.timings.samples, s))
        }
        _ => Err("no timings (run without speed measurement?)".into()),
    }
}

/// Settings that differ between the runs and change what the timings mean.
fn settings_warnings(base: &ResultsFile, new: &ResultsFile) -> Vec<String> {
    let (Some(b), Some(n)) = (&base.settings, &new.settings) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut differ = |what: &str, x: String, y: String| {
        if x != y {
            out.push(format!("{what} differs: base {x}, new {y}"));
        }
    };
    differ("dtype", b.dtype.as_str().into(), n.dtype.as_str().into());
    differ("device", b.device.to_string(), n.device.to_string());
    differ("threads", b.threads.to_string(), n.threads.to_string());
    differ(
        "weights",
        weights(b.load_weights).into(),
        weights(n.load_weights).into(),
    );
    // The tier that ran, from the environment file (runs before it was recorded have none).
    let isa = |r: &ResultsFile| r.env(Key::Isa).map(str::to_string);
    if let (Some(x), Some(y)) = (isa(base), isa(new)) {
        differ("CPU kernels (isa)", x, y);
    }
    // How the products' blocks were sized (`rule`, or forced by BERTBENCH_BLOCKING).
    let blocking = |r: &ResultsFile| r.env(Key::Blocking).map(str::to_string);
    if let (Some(x), Some(y)) = (blocking(base), blocking(new)) {
        differ("product blocking", x, y);
    }
    out
}

fn weights(load: bool) -> &'static str {
    if load {
        "checkpoint"
    } else {
        "random"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{CellSettings, Mode, Speed, Timings};
    use crate::device::Precision;

    fn settings(threads: usize) -> CellSettings {
        CellSettings {
            memory: false,
            offline: true,
            ..crate::bench::run::default_settings(threads)
        }
    }

    fn cell(batch: usize) -> Cell {
        Cell {
            model: "m".into(),
            mode: Mode::Inference,
            batch_size: batch,
            sequence_length: 128,
            threads: 2,
            dtype: Some(crate::device::Precision::F32),
        }
    }

    fn measured(cell: Cell, samples: Vec<f64>) -> Measurement {
        let summary = stats::Summary::of(&samples).unwrap();
        Measurement {
            cell,
            status: Status::Ok,
            reason: None,
            speed: Some(Speed {
                between: None,
                energy: None,
                timings: Timings {
                    warmup: vec![],
                    samples,
                },
                summary,
            }),
            memory: None,
            flops: 1,
            estimated_bytes: 0,
            settings: settings(2),
            drift: Vec::new(),
        }
    }

    /// `n` samples around `center`, spread +-2% in a fixed scrambled order.
    fn samples(n: usize, center: f64) -> Vec<f64> {
        (0..n)
            .map(|i| center * (0.98 + 0.04 * ((i * 7919) % n) as f64 / n as f64))
            .collect()
    }

    fn verdict_of(base: Vec<f64>, new: Vec<f64>) -> CellComparison {
        compare_cell(
            &cell(1),
            Some(&measured(cell(1), base)),
            Some(&measured(cell(1), new)),
            &CompareOptions::default(),
        )
    }

    /// Timed in three processes each: the verdict rests on the process medians. Pooled
    /// samples 20% apart are a regression when the processes agree, and no change (with the
    /// interval in the note) when the processes scatter as widely as the difference, although
    /// the rank test of the pooled samples would call it significant.
    #[test]
    fn several_processes_are_judged_by_their_medians() {
        let with_processes = |medians: [f64; 3]| {
            let mut m = measured(cell(1), samples(60, medians[1]));
            let speed = m.speed.as_mut().unwrap();
            speed.between = stats::Between::of(&medians);
            m
        };
        let judge = |base: [f64; 3], new: [f64; 3]| {
            compare_cell(
                &cell(1),
                Some(&with_processes(base)),
                Some(&with_processes(new)),
                &CompareOptions::default(),
            )
        };
        let tight = judge([0.099, 0.1, 0.101], [0.119, 0.12, 0.121]);
        assert_eq!(tight.verdict, Verdict::Regressed);
        let s = tight.speed.unwrap();
        assert!(s.two_level && s.base_processes == 3 && s.new_processes == 3);
        let loose = judge([0.07, 0.1, 0.13], [0.09, 0.12, 0.15]);
        assert_eq!(loose.verdict, Verdict::NoChange);
        assert!(
            loose.speed.as_ref().unwrap().p_value < 0.05,
            "pooled samples look separated"
        );
        assert!(loose
            .note
            .unwrap()
            .contains("two-level interval over 3 and 3 processes"));
    }

    #[test]
    fn verdicts_need_significance_and_size() {
        let slower = verdict_of(samples(20, 0.1), samples(20, 0.12));
        assert_eq!(slower.verdict, Verdict::Regressed);
        let s = slower.speed.unwrap();
        assert!((s.change - 0.2).abs() < 1e-9, "{}", s.change);
        assert!(s.change_low <= s.change && s.change <= s.change_high);
        assert!(s.p_value < 1e-6);
        assert_eq!(s.mann_whitney_u, 0.0, "every base sample is faster");

        let faster = verdict_of(samples(20, 0.1), samples(20, 0.08));
        assert_eq!(faster.verdict, Verdict::Improved);

        // 3% slower is significant with 20 runs each, but inside the 5% threshold.
        let small = verdict_of(samples(20, 0.1), samples(20, 0.103));
        assert!(small.speed.as_ref().unwrap().p_value < 0.05);
        assert_eq!(small.verdict, Verdict::NoChange);
        assert_eq!(small.note, None);

        // 3 runs each can never reach p < 0.05, however far apart: no change, with a note.
        let few = verdict_of(samples(3, 0.1), samples(3, 0.2));
        assert_eq!(few.verdict, Verdict::NoChange);
        assert!(few.note.unwrap().contains("too few runs (3 vs 3)"));
    }

    #[test]
    fn cells_without_timings_are_not_comparable() {
        let ok = measured(cell(1), samples(10, 0.1));
        let mut failed = ok.clone();
        failed.status = Status::TooLarge;
        failed.speed = None;
        failed.reason = Some("estimated 9 GB".into());
        let c = compare_cell(&cell(1), Some(&ok), Some(&failed), &Default::default());
        assert_eq!(c.verdict, Verdict::NotComparable);
        assert_eq!(
            (c.base_status, c.new_status),
            (Some(Status::Ok), Some(Status::TooLarge))
        );
        assert_eq!(c.note.as_deref(), Some("new: too_large (estimated 9 GB)"));

        let mut no_speed = ok.clone();
        no_speed.speed = None;
        let c = compare_cell(&cell(1), Some(&no_speed), Some(&ok), &Default::default());
        assert_eq!(c.verdict, Verdict::NotComparable);
        assert!(c.note.unwrap().starts_with("base: no timings"));
    }

    #[test]
    fn whole_runs() {
        let base = ResultsFile {
            settings: Some(settings(2)),
            measurements: vec![
                measured(cell(1), samples(20, 0.1)),
                measured(cell(2), samples(20, 0.2)),
            ],
            ..Default::default()
        };
        let new = ResultsFile {
            settings: Some(settings(4)),
            measurements: vec![
                measured(cell(4), samples(20, 0.4)),
                measured(cell(1), samples(20, 0.13)),
            ],
            ..Default::default()
        };
        let c = compare(&base, &new, &CompareOptions::default());
        let order: Vec<(usize, Verdict)> = c
            .cells
            .iter()
            .map(|c| (c.cell.batch_size, c.verdict))
            .collect();
        assert_eq!(
            order,
            [
                (1, Verdict::Regressed),
                (2, Verdict::OnlyInBase),
                (4, Verdict::OnlyInNew)
            ]
        );
        assert!(c.has_regression());
        assert_eq!(c.warnings, ["threads differs: base 2, new 4"]);

        // Runs of one precision each compare cell by cell across precisions (what int8 buys),
        // and say the precisions differ; a run sweeping both keeps them apart.
        let int8 = |batch| Cell {
            dtype: Some(Precision::Int8),
            ..cell(batch)
        };
        let mut quantized = ResultsFile {
            settings: Some(CellSettings {
                dtype: Precision::Int8,
                ..settings(2)
            }),
            measurements: vec![measured(int8(1), samples(20, 0.04))],
            ..Default::default()
        };
        let across = compare(&base, &quantized, &CompareOptions::default());
        assert_eq!(
            across.cells.iter().map(|c| c.verdict).collect::<Vec<_>>(),
            [Verdict::Improved, Verdict::OnlyInBase]
        );
        assert_eq!(across.warnings, ["dtype differs: base f32, new int8"]);
        quantized
            .measurements
            .push(measured(cell(1), samples(20, 0.1)));
        let swept = compare(&base, &quantized, &CompareOptions::default());
        assert_eq!(swept.cells.len(), 3, "f32 and int8 cells apart in a sweep");

        // The kernels' tier and blocks, from the environment files (absent in older runs).
        let env = |isa: &str, blocking: &str| {
            [("isa", isa), ("blocking", blocking)]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .to_vec()
        };
        let (mut b2, mut n2) = (base.clone(), new.clone());
        b2.settings = Some(settings(2));
        n2.settings = Some(settings(2));
        b2.environment = env("avx512", "rule");
        n2.environment = env("avx2", "84,768");
        assert_eq!(
            compare(&b2, &n2, &CompareOptions::default()).warnings,
            [
                "CPU kernels (isa) differs: base avx512, new avx2",
                "product blocking differs: base rule, new 84,768"
            ]
        );
        n2.environment = env("avx512", "rule");
        assert!(compare(&b2, &n2, &CompareOptions::default())
            .warnings
            .is_empty());
        assert_eq!(
            c.summary(),
            "1 cell(s) compared: 1 regressed, 0 improved, 0 no change; 1 only in base; \
             1 only in new (threshold 5%, alpha 0.05)"
        );
    }
}
