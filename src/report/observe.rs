//! The observations a person would otherwise write by hand after looking at the plots, computed
//! with their uncertainty: speed ratios of model pairs, how time and memory grow with sequence
//! length and batch size, the memory ordering of the models, and what failed.

use serde::Serialize;

use crate::bench::memory::to_mb;
use crate::bench::output::ResultsFile;
use crate::bench::ratio_interval;
use crate::bench::{threads_label, Measurement, Mode, Status};
use crate::stats::NOISY_CI_RELATIVE_WIDTH;

/// "`faster` is `ratio`x [lo, hi] faster than `slower`" at one cell.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpeedRatio {
    pub mode: Mode,
    pub batch_size: usize,
    pub sequence_length: usize,
    pub threads: usize,
    pub faster: String,
    pub slower: String,
    /// Median time of the slower model over the faster one's (>= 1).
    pub ratio: f64,
    /// Conservative 95% interval from the two medians' intervals.
    pub low: f64,
    pub high: f64,
}

impl SpeedRatio {
    pub fn sentence(&self, names: &dyn Fn(&str) -> String) -> String {
        format!(
            "{} is {:.2}x [{:.2}, {:.2}] faster than {} at batch {}, sequence {}, {} ({})",
            names(&self.faster),
            self.ratio,
            self.low,
            self.high,
            names(&self.slower),
            self.batch_size,
            self.sequence_length,
            threads_label(self.threads),
            self.mode.as_str()
        )
    }

    /// Whether the interval excludes "equally fast".
    pub fn is_significant(&self) -> bool {
        self.low > 1.0
    }
}

/// A cell's status as the results table shows it. A cell timed in several processes is judged
/// by its two-level interval, the one the table shows: the within-process warning a process
/// recorded says nothing about it, so it is replaced by what that interval says.
pub fn status_text(m: &Measurement) -> String {
    let between = m.speed.as_ref().and_then(|s| s.between.as_ref());
    match (m.status, &m.reason, between) {
        (Status::Ok, None, _) => "ok".into(),
        (Status::Ok, Some(r), Some(b)) if r.starts_with(crate::bench::cell::NOISY_REASON) => {
            let width = (b.high - b.low) / b.center;
            if width > NOISY_CI_RELATIVE_WIDTH {
                format!(
                    "noisy: the 2-level 95% CI is {:.1}% of the median",
                    100.0 * width
                )
            } else {
                "ok".into()
            }
        }
        (st, r, _) => format!(
            "{}{}",
            st.as_str(),
            r.as_ref().map(|r| format!(": {r}")).unwrap_or_default()
        ),
    }
}

fn ok_cells(results: &ResultsFile) -> Vec<&Measurement> {
    results
        .plan
        .iter()
        .filter_map(|c| results.find(c))
        .filter(|m| m.status == Status::Ok)
        .collect()
}

/// The models of a run, in plan order.
pub fn models(results: &ResultsFile) -> Vec<String> {
    crate::bench::distinct(results.plan.iter().map(|c| c.variant()))
}

/// Speed ratio of every pair of models at every cell both measured.
pub fn speed_ratios(results: &ResultsFile) -> Vec<SpeedRatio> {
    let cells = ok_cells(results);
    let models = models(results);
    let mut out = Vec::new();
    for (i, a) in models.iter().enumerate() {
        for b in &models[i + 1..] {
            for ma in cells.iter().filter(|m| &m.cell.variant() == a) {
                let Some(mb) = cells.iter().find(|m| {
                    &m.cell.variant() == b
                        && m.cell.same_shape(&ma.cell)
                        && m.cell.threads == ma.cell.threads
                }) else {
                    continue;
                };
                let (Some(sa), Some(sb)) = (&ma.speed, &mb.speed) else {
                    continue;
                };
                // ratio of the slower's time over the faster's
                let (faster, slower, fast, slow) =
                    if sa.median_interval().0 <= sb.median_interval().0 {
                        (a, b, sa, sb)
                    } else {
                        (b, a, sb, sa)
                    };
                let (ratio, low, high) = ratio_interval(slow, fast);
                out.push(SpeedRatio {
                    mode: ma.cell.mode,
                    batch_size: ma.cell.batch_size,
                    sequence_length: ma.cell.sequence_length,
                    threads: ma.cell.threads,
                    faster: faster.clone(),
                    slower: slower.clone(),
                    ratio,
                    low,
                    high,
                });
            }
        }
    }
    out
}

/// Which quantity a growth fit describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Quantity {
    /// Median seconds per step.
    Time,
    /// Peak resident memory above the model's own footprint (activations), bytes.
    ActivationMemory,
}

/// How a quantity grows along sequence length (batch fixed) or batch size (sequence fixed).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Growth {
    pub model: String,
    pub mode: Mode,
    pub threads: usize,
    pub quantity: Quantity,
    /// `true`: along batch size at a fixed sequence length; `false`: along sequence length.
    pub along_batch: bool,
    /// The fixed batch size or sequence length.
    pub fixed: usize,
    /// Least-squares slope of the quantity per unit of x (seconds or bytes per token / sample).
    pub slope: f64,
    /// Exponent k of a power law y ~ x^k fitted on log-log axes.
    pub exponent: f64,
    /// R² of the log-log fit.
    pub r_squared: f64,
    pub points: usize,
}

impl Growth {
    /// Linear, superlinear (attention's quadratic term shows) or sublinear (fixed costs).
    pub fn shape(&self) -> &'static str {
        if self.exponent > 1.15 {
            "superlinear"
        } else if self.exponent < 0.85 {
            "sublinear"
        } else {
            "about linear"
        }
    }

    pub fn sentence(&self, names: &dyn Fn(&str) -> String) -> String {
        let (x, unit) = if self.along_batch {
            ("batch size", "sample")
        } else {
            ("sequence length", "token")
        };
        let fixed = if self.along_batch {
            format!("sequence {}, {}", self.fixed, threads_label(self.threads))
        } else {
            format!("batch {}, {}", self.fixed, threads_label(self.threads))
        };
        let (what, per) = match self.quantity {
            Quantity::Time => (
                "time",
                format!("{:.3} ms per extra {unit}", self.slope * 1e3),
            ),
            Quantity::ActivationMemory => (
                "activation memory",
                format!("{:.2} MB per extra {unit}", self.slope / (1024.0 * 1024.0)),
            ),
        };
        let why = match (self.shape(), self.quantity, self.along_batch) {
            ("superlinear", _, false) => ": attention's quadratic term shows",
            ("sublinear", Quantity::Time, _) => {
                ": fixed per-step costs still dominate at these sizes"
            }
            _ => "",
        };
        // Two points always fit exactly: an R² is only worth printing from three on.
        let fit = if self.points > 2 {
            format!("R² {:.3}, {} points", self.r_squared, self.points)
        } else {
            "2 points".into()
        };
        format!(
            "{} {} {what} grows as {x}^{:.2} at {fixed} ({fit}; {per}), {}{why}",
            names(&self.model),
            self.mode.as_str(),
            self.exponent,
            self.shape()
        )
    }
}

/// Least squares y = a + b x; returns (b, R²).
pub fn linear_fit(points: &[(f64, f64)]) -> (f64, f64) {
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let syy: f64 = points.iter().map(|p| (p.1 - my).powi(2)).sum();
    let b = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    let r2 = if sxx > 0.0 && syy > 0.0 {
        (sxy * sxy) / (sxx * syy)
    } else {
        1.0
    };
    (b, r2)
}

/// Growth fits for every model, mode and fixed value with at least 2 points.
pub fn growth(results: &ResultsFile, quantity: Quantity, along_batch: bool) -> Vec<Growth> {
    let cells = ok_cells(results);
    let mut keys: Vec<(String, Mode, usize, usize)> = Vec::new();
    for m in &cells {
        let fixed = if along_batch {
            m.cell.sequence_length
        } else {
            m.cell.batch_size
        };
        let key = (m.cell.variant(), m.cell.mode, m.cell.threads, fixed);
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    let mut out = Vec::new();
    for (model, mode, threads, fixed) in keys {
        let mut points: Vec<(f64, f64)> = cells
            .iter()
            .filter(|m| {
                m.cell.variant() == model && m.cell.mode == mode && m.cell.threads == threads
            })
            .filter(|m| {
                if along_batch {
                    m.cell.sequence_length == fixed
                } else {
                    m.cell.batch_size == fixed
                }
            })
            .filter_map(|m| {
                let x = if along_batch {
                    m.cell.batch_size
                } else {
                    m.cell.sequence_length
                } as f64;
                let y = match quantity {
                    Quantity::Time => m.median_s()?,
                    Quantity::ActivationMemory => {
                        let mem = m.memory.as_ref()?;
                        mem.peak_rss.checked_sub(mem.model_rss).filter(|v| *v > 0)? as f64
                    }
                };
                Some((x, y))
            })
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        points.dedup_by(|a, b| a.0 == b.0);
        if points.len() < 2 {
            continue;
        }
        let (slope, _) = linear_fit(&points);
        let logs: Vec<(f64, f64)> = points.iter().map(|(x, y)| (x.ln(), y.ln())).collect();
        let (exponent, r_squared) = linear_fit(&logs);
        out.push(Growth {
            model,
            mode,
            threads,
            quantity,
            along_batch,
            fixed,
            slope,
            exponent,
            r_squared,
            points: points.len(),
        });
    }
    out
}

/// The models ordered by peak memory at one cell (MB, smallest first).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryRow {
    pub mode: Mode,
    pub batch_size: usize,
    pub sequence_length: usize,
    pub threads: usize,
    pub models: Vec<(String, f64)>,
}

/// Models ordered by peak memory at each cell, and the order if it is the same everywhere.
pub fn memory_order(results: &ResultsFile) -> (Vec<MemoryRow>, Option<Vec<String>>) {
    let cells = ok_cells(results);
    let mut rows: Vec<MemoryRow> = Vec::new();
    for m in &cells {
        let Some(mem) = &m.memory else { continue };
        let mb = to_mb(mem.peak_rss);
        let same = |r: &&mut MemoryRow| {
            (r.mode, r.batch_size, r.sequence_length, r.threads)
                == (
                    m.cell.mode,
                    m.cell.batch_size,
                    m.cell.sequence_length,
                    m.cell.threads,
                )
        };
        match rows.iter_mut().find(same) {
            Some(r) => r.models.push((m.cell.variant(), mb)),
            None => rows.push(MemoryRow {
                mode: m.cell.mode,
                batch_size: m.cell.batch_size,
                sequence_length: m.cell.sequence_length,
                threads: m.cell.threads,
                models: vec![(m.cell.variant(), mb)],
            }),
        }
    }
    for r in &mut rows {
        r.models.sort_by(|a, b| a.1.total_cmp(&b.1));
    }
    let full: Vec<&Vec<(String, f64)>> = rows
        .iter()
        .map(|r| &r.models)
        .filter(|v| v.len() > 1)
        .collect();
    let consistent = full.first().and_then(|first| {
        let order: Vec<String> = first.iter().map(|(m, _)| m.clone()).collect();
        full.iter()
            .all(|v| v.iter().map(|(m, _)| m).eq(order.iter()))
            .then_some(order)
    });
    (rows, consistent)
}

/// Cells that did not end `ok`, with their reason.
pub fn failures(results: &ResultsFile) -> Vec<&Measurement> {
    results
        .plan
        .iter()
        .filter_map(|c| results.find(c))
        .filter(|m| m.status != Status::Ok)
        .collect()
}

/// How much faster one cell runs on the most threads of a sweep than on the fewest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scaling {
    pub model: String,
    pub mode: Mode,
    pub batch_size: usize,
    pub sequence_length: usize,
    /// The fewest and the most threads measured.
    pub from: usize,
    pub to: usize,
    /// Median time on `from` threads over the median on `to` (conservative 95% interval).
    pub speedup: f64,
    pub low: f64,
    pub high: f64,
}

impl Scaling {
    /// Speed-up per thread added, as a share of perfect (linear) scaling.
    pub fn efficiency(&self) -> f64 {
        self.speedup / (self.to as f64 / self.from as f64)
    }

    pub fn sentence(&self, names: &dyn Fn(&str) -> String) -> String {
        format!(
            "{} {} at batch {}, sequence {} runs {:.2}x [{:.2}, {:.2}] faster on {} than on {} ({:.0}% of linear scaling)",
            names(&self.model),
            self.mode.as_str(),
            self.batch_size,
            self.sequence_length,
            self.speedup,
            self.low,
            self.high,
            threads_label(self.to),
            threads_label(self.from),
            100.0 * self.efficiency()
        )
    }
}

/// The speed-up from the fewest to the most threads at every cell measured at both (empty
/// unless the run swept thread counts).
pub fn thread_scaling(results: &ResultsFile) -> Vec<Scaling> {
    let counts = results.thread_counts();
    let (Some(&from), Some(&to)) = (counts.iter().min(), counts.iter().max()) else {
        return Vec::new();
    };
    if from == to {
        return Vec::new();
    }
    let cells = ok_cells(results);
    let mut out = Vec::new();
    for few in cells.iter().filter(|m| m.cell.threads == from) {
        let Some(many) = cells.iter().find(|m| {
            m.cell.threads == to
                && m.cell.variant() == few.cell.variant()
                && m.cell.same_shape(&few.cell)
        }) else {
            continue;
        };
        let (Some(a), Some(b)) = (&few.speed, &many.speed) else {
            continue;
        };
        let (speedup, low, high) = ratio_interval(a, b);
        out.push(Scaling {
            model: few.cell.variant(),
            mode: few.cell.mode,
            batch_size: few.cell.batch_size,
            sequence_length: few.cell.sequence_length,
            from,
            to,
            speedup,
            low,
            high,
        });
    }
    out
}

/// Every observation of a results file, as sentences, in the order the report lists them:
/// the speed ratio of each pair of models (geometric mean over the cells both measured, and
/// the largest cell with its interval), how time and activation memory grow, the models'
/// memory order, what failed and what was noisy. `names` labels a model.
pub fn observations(results: &ResultsFile, names: &dyn Fn(&str) -> String) -> Vec<String> {
    let mut obs = pair_speeds(results, names);
    obs.extend(growth_sentences(results, names));
    obs.extend(scaling_sentences(results, names));
    obs.extend(memory_order_sentence(results, names));
    obs.extend(failures_and_noise(results));
    obs
}

/// One sentence per unordered pair of models, mode and thread count: the geometric mean of
/// the speed ratio over every cell both measured, and the largest cell with its interval.
fn pair_speeds(results: &ResultsFile, names: &dyn Fn(&str) -> String) -> Vec<String> {
    let models = models(results);
    let ratios = speed_ratios(results);
    let mut pairs: Vec<(String, String, Mode, usize)> = Vec::new();
    for r in &ratios {
        let (a, b) = if models.iter().position(|m| *m == r.faster)
            < models.iter().position(|m| *m == r.slower)
        {
            (r.faster.clone(), r.slower.clone())
        } else {
            (r.slower.clone(), r.faster.clone())
        };
        if !pairs.contains(&(a.clone(), b.clone(), r.mode, r.threads)) {
            pairs.push((a, b, r.mode, r.threads));
        }
    }
    let mut obs = Vec::new();
    for (a, b, mode, threads) in &pairs {
        let these: Vec<&SpeedRatio> = ratios
            .iter()
            .filter(|r| {
                r.mode == *mode
                    && r.threads == *threads
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
            "{} is {g:.2}x faster than {} ({}, {}; geometric mean over {} cell(s), each cell's 95% interval above 1 in {sig})",
            names(fast),
            names(slow),
            mode.as_str(),
            threads_label(*threads),
            these.len()
        );
        if let Some(big) = these
            .iter()
            .max_by_key(|r| (r.batch_size, r.sequence_length))
        {
            sentence.push_str(&format!("; at the largest cell, {}", big.sentence(names)));
        }
        obs.push(sentence);
    }
    obs
}

/// How time and activation memory grow along the sequence and the batch: per model and mode,
/// the fit at the largest fixed value, where it rests on three points or more (two always fit
/// a power law exactly).
fn growth_sentences(results: &ResultsFile, names: &dyn Fn(&str) -> String) -> Vec<String> {
    let mut obs = Vec::new();
    for (quantity, along_batch) in [
        (Quantity::Time, false),
        (Quantity::Time, true),
        (Quantity::ActivationMemory, false),
        (Quantity::ActivationMemory, true),
    ] {
        let fits = growth(results, quantity, along_batch);
        let mut seen: Vec<(String, Mode, usize)> = Vec::new();
        for g in fits.iter().rev() {
            let key = (g.model.clone(), g.mode, g.threads);
            if !seen.contains(&key) && g.points >= 3 {
                seen.push(key);
                obs.push(g.sentence(names));
            }
        }
    }
    obs
}

/// Thread scaling: per model and mode, the largest cell measured at both ends of the sweep.
fn scaling_sentences(results: &ResultsFile, names: &dyn Fn(&str) -> String) -> Vec<String> {
    let scaling = thread_scaling(results);
    let mut seen: Vec<(String, Mode)> = Vec::new();
    let mut obs = Vec::new();
    for sc in scaling.iter().rev().filter(|sc| {
        let biggest = scaling
            .iter()
            .filter(|o| o.model == sc.model && o.mode == sc.mode)
            .map(|o| o.batch_size * o.sequence_length)
            .max();
        biggest == Some(sc.batch_size * sc.sequence_length)
    }) {
        let key = (sc.model.clone(), sc.mode);
        if !seen.contains(&key) {
            seen.push(key);
            obs.push(sc.sentence(names));
        }
    }
    obs
}

/// The models' peak-memory order, where the cells agree on one (or that they do not).
fn memory_order_sentence(results: &ResultsFile, names: &dyn Fn(&str) -> String) -> Option<String> {
    let (order_rows, consistent) = memory_order(results);
    if let Some(order) = &consistent {
        Some(format!(
            "Peak memory orders the models the same way in every measured cell: {}.",
            order
                .iter()
                .map(|m| names(m))
                .collect::<Vec<_>>()
                .join(" < ")
        ))
    } else if order_rows.iter().any(|r| r.models.len() > 1) {
        Some("The models' peak-memory order changes between cells (see the memory table).".into())
    } else {
        None
    }
}

/// The cells that gave no numbers, and those whose timings were noisy.
fn failures_and_noise(results: &ResultsFile) -> Vec<String> {
    let mut obs = Vec::new();
    let failures = failures(results);
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
        .filter(|m| m.status == Status::Ok && status_text(m) != "ok")
        .map(|m| m.cell.to_string())
        .collect();
    if !noisy.is_empty() {
        obs.push(format!(
            "{} cell(s) were noisy (wide confidence intervals): {}; treat their ratios with care.",
            noisy.len(),
            noisy.join(", ")
        ));
    }
    obs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_recover_known_laws() {
        let line: Vec<(f64, f64)> = [1.0, 2.0, 4.0, 8.0]
            .iter()
            .map(|x| (*x, 3.0 + 2.0 * x))
            .collect();
        let (b, r2) = linear_fit(&line);
        assert!((b - 2.0).abs() < 1e-12 && (r2 - 1.0).abs() < 1e-12);
        // y = 5 x^2 on log-log axes has slope 2.
        let logs: Vec<(f64, f64)> = [8.0f64, 32.0, 128.0]
            .iter()
            .map(|x| (x.ln(), (5.0 * x * x).ln()))
            .collect();
        let (k, r2) = linear_fit(&logs);
        assert!((k - 2.0).abs() < 1e-12 && (r2 - 1.0).abs() < 1e-12);
    }
}
