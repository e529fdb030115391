//! The drift monitor: a short, fixed calibration workload timed in every process that
//! measures a cell, right after the cell's timings, with the load average at that moment.
//!
//! The workload is one packed product of fixed size (64 x 768 activations by a 768 x 768
//! weight, BERT-base's attention projection at 64 tokens), best of five after one warm-up:
//! under a millisecond on the 2-vCPU machines here, depending on the machine alone. Its
//! series over a run shows how fast the machine was when each cell was measured; a cell
//! measured while the machine ran more than [`SLOW_THRESHOLD`] slower than its own best in the
//! run is flagged in the report.
//! It runs after the timings (not before) so that the memory measurement, taken first, never
//! sees its buffers.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::output::ResultsFile;
use super::timer::{measure, TimingPolicy};
use super::Cell;
use crate::compute::packed::{packed_linear, PackedWeight};
use crate::compute::{MatMut, MatRef};

/// A cell measured while the calibration ran this much slower than the run's best is flagged.
pub const SLOW_THRESHOLD: f64 = 0.10;

/// One process's calibration.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DriftSample {
    /// Best time of the calibration product (seconds).
    pub calibration_s: f64,
    /// The 1-minute load average then (Linux), and the logical CPUs it compares with.
    pub load_1m: Option<f64>,
    pub cpus: usize,
    /// Seconds since the Unix epoch when it was taken.
    pub at_unix_s: f64,
}

const M: usize = 64;
const K: usize = 768;
const N: usize = 768;

/// Times the calibration product on this process's compute pool.
pub fn calibrate() -> DriftSample {
    let x: Vec<f32> = (0..M * K).map(|i| (i % 7) as f32 * 0.1).collect();
    let w: Vec<f32> = (0..K * N).map(|i| (i % 13) as f32 * 0.01).collect();
    let packed = PackedWeight::pack(&w, 1, N, K);
    let mut out = vec![0f32; M * N];
    let threads = rayon::current_num_threads();
    let policy = TimingPolicy {
        warmup_max_runs: 1,
        min_runs: 5,
        min_time: Duration::ZERO,
        max_runs: 5,
        ..TimingPolicy::default()
    };
    let step = || {
        packed_linear(
            MatRef::new(&x, M, K, K),
            &packed,
            None,
            None,
            MatMut::new(&mut out, M, N, N),
            threads,
        );
        Ok(())
    };
    let best = measure(&policy, step, |_, _| {})
        .map(|t| t.samples.iter().copied().fold(f64::INFINITY, f64::min))
        .unwrap_or(f64::NAN);
    DriftSample {
        calibration_s: best,
        load_1m: load_average(),
        cpus: super::env::logical_cpus(),
        at_unix_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    }
}

/// The 1-minute load average from `/proc/loadavg`, where there is one.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A cell measured while the machine was slow or busy.
#[derive(Debug, Clone, PartialEq)]
pub struct SlowCell {
    pub cell: Cell,
    /// The slowest of its processes' calibrations relative to the run's best (0.25 = 25%).
    pub slowdown: f64,
    /// The highest load average among its processes, when above the logical CPUs.
    pub busy_load: Option<f64>,
}

/// Every calibration of the run, in time order, as (seconds since the first, calibration s)
/// per thread count (calibrations at different thread counts are not comparable).
pub fn series(results: &ResultsFile) -> Vec<(usize, Vec<(f64, f64)>)> {
    let mut out: Vec<(usize, Vec<(f64, f64)>)> = Vec::new();
    let first = results
        .measurements
        .iter()
        .flat_map(|m| &m.drift)
        .map(|d| d.at_unix_s)
        .fold(f64::INFINITY, f64::min);
    for m in &results.measurements {
        for d in &m.drift {
            let i = match out.iter().position(|(t, _)| *t == m.cell.threads) {
                Some(i) => i,
                None => {
                    out.push((m.cell.threads, Vec::new()));
                    out.len() - 1
                }
            };
            out[i].1.push((d.at_unix_s - first, d.calibration_s));
        }
    }
    for (_, s) in &mut out {
        s.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out.sort_by_key(|(t, _)| *t);
    out
}

/// Cells measured while the calibration ran more than `threshold` slower than the run's best
/// at the same thread count, or while the load average exceeded the logical CPUs.
pub fn slow_cells(results: &ResultsFile, threshold: f64) -> Vec<SlowCell> {
    let best = |threads: usize| {
        results
            .measurements
            .iter()
            .filter(|m| m.cell.threads == threads)
            .flat_map(|m| &m.drift)
            .map(|d| d.calibration_s)
            .fold(f64::INFINITY, f64::min)
    };
    results
        .measurements
        .iter()
        .filter(|m| !m.drift.is_empty())
        .filter_map(|m| {
            let b = best(m.cell.threads);
            let slowdown = m
                .drift
                .iter()
                .map(|d| d.calibration_s / b - 1.0)
                .fold(0.0, f64::max);
            let busy_load = m
                .drift
                .iter()
                .filter_map(|d| d.load_1m.filter(|l| *l > d.cpus as f64))
                .reduce(f64::max);
            (slowdown > threshold || busy_load.is_some()).then(|| SlowCell {
                cell: m.cell.clone(),
                slowdown,
                busy_load,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::run::default_settings;
    use crate::bench::{Measurement, Mode, Status};

    fn cell(model: &str, threads: usize) -> Cell {
        Cell {
            model: model.into(),
            mode: Mode::Inference,
            batch_size: 1,
            sequence_length: 8,
            threads,
            dtype: Some(crate::device::Precision::F32),
        }
    }

    fn with_drift(cell: Cell, samples: &[(f64, Option<f64>)]) -> Measurement {
        let mut m =
            Measurement::failed(cell, Status::Ok, String::new(), 1, 0, &default_settings(1));
        m.drift = samples
            .iter()
            .enumerate()
            .map(|(i, &(s, load))| DriftSample {
                calibration_s: s,
                load_1m: load,
                cpus: 2,
                at_unix_s: 1000.0 + i as f64,
            })
            .collect();
        m
    }

    /// Slow cells are those whose calibration ran beyond the threshold over the best at the
    /// same thread count, or whose load exceeded the CPUs; series come per thread count, in
    /// time order.
    #[test]
    fn slow_and_busy_cells_are_found() {
        let results = ResultsFile {
            measurements: vec![
                with_drift(cell("a", 1), &[(0.010, Some(0.5)), (0.0105, None)]),
                with_drift(cell("b", 1), &[(0.0125, Some(1.0))]),
                with_drift(cell("c", 1), &[(0.010, Some(3.5))]),
                // Another thread count is compared with its own best only.
                with_drift(cell("d", 2), &[(0.020, None), (0.021, None)]),
            ],
            ..Default::default()
        };
        let slow = slow_cells(&results, SLOW_THRESHOLD);
        let names: Vec<&str> = slow.iter().map(|s| s.cell.model.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
        assert!((slow[0].slowdown - 0.25).abs() < 1e-9 && slow[0].busy_load.is_none());
        assert_eq!(slow[1].busy_load, Some(3.5));
        let s = series(&results);
        assert_eq!(
            s.iter().map(|(t, v)| (*t, v.len())).collect::<Vec<_>>(),
            [(1, 4), (2, 2)]
        );
        assert!(s[0].1.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    /// The calibration measures something real: a positive time well under a second.
    #[test]
    #[cfg_attr(miri, ignore = "a real product is too slow interpreted")]
    fn calibration_times_the_product() {
        let d = calibrate();
        assert!(d.calibration_s > 0.0 && d.calibration_s < 1.0, "{d:?}");
        assert!(d.cpus >= 1 && d.at_unix_s > 1.6e9);
    }
}
