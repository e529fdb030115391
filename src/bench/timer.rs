//! Adaptive timing: warm up until consecutive timings settle, then time until both a minimum
//! number of runs and a minimum time are reached, within a maximum count and time.
//!
//! This replaces the Hugging Face script's "min of 3 x 10 runs, no warm-up": the minimum
//! hides the cost a user actually pays, and without warm-up the first (allocation-heavy) runs
//! pollute the sample.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde::{Deserialize, Serialize};

/// How long and how often to measure.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TimingPolicy {
    /// Warm-up ends when two consecutive timings differ by at most this fraction...
    pub warmup_settle: f64,
    /// ...or after this many warm-up runs...
    pub warmup_max_runs: usize,
    /// ...or when warm-up has taken this long.
    pub warmup_max_time: Duration,
    /// Time at least this many runs...
    pub min_runs: usize,
    /// ...and for at least this long...
    pub min_time: Duration,
    /// ...but never more runs than this...
    pub max_runs: usize,
    /// ...and stop starting new runs after this long (once at least 3 runs are in).
    pub max_time: Duration,
}

impl Default for TimingPolicy {
    fn default() -> Self {
        Self {
            warmup_settle: 0.05,
            warmup_max_runs: 10,
            warmup_max_time: Duration::from_secs(10),
            min_runs: 10,
            min_time: Duration::from_secs(1),
            max_runs: 1000,
            max_time: Duration::from_secs(60),
        }
    }
}

/// Minimum samples kept even past `max_time`, so every cell has a median and a spread.
pub const MIN_SAMPLES: usize = 3;

/// Raw timings of one measurement, in seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub warmup: Vec<f64>,
    pub samples: Vec<f64>,
}

/// Runs `step` under `policy`. `progress` is called after each timed run with (runs so far,
/// elapsed timing time) so a caller can draw a progress bar.
pub fn measure(
    policy: &TimingPolicy,
    mut step: impl FnMut() -> Result<()>,
    mut progress: impl FnMut(usize, Duration),
) -> Result<Timings> {
    let mut out = Timings::default();
    let start = Instant::now();
    loop {
        let t = Instant::now();
        step()?;
        out.warmup.push(t.elapsed().as_secs_f64());
        if settled(&out.warmup, policy.warmup_settle)
            || out.warmup.len() >= policy.warmup_max_runs
            || start.elapsed() >= policy.warmup_max_time
        {
            break;
        }
    }
    let start = Instant::now();
    loop {
        let t = Instant::now();
        step()?;
        out.samples.push(t.elapsed().as_secs_f64());
        let n = out.samples.len();
        let elapsed = start.elapsed();
        progress(n, elapsed);
        let enough = n >= policy.min_runs && elapsed >= policy.min_time;
        let out_of_budget =
            n >= policy.max_runs || (elapsed >= policy.max_time && n >= MIN_SAMPLES);
        if enough || out_of_budget {
            break;
        }
    }
    Ok(out)
}

/// Whether the last two timings are within `tolerance` of each other.
fn settled(timings: &[f64], tolerance: f64) -> bool {
    match timings {
        [.., a, b] => (a - b).abs() <= tolerance * a.max(*b),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> TimingPolicy {
        TimingPolicy {
            warmup_settle: 0.05,
            warmup_max_runs: 5,
            warmup_max_time: Duration::from_secs(5),
            min_runs: 4,
            min_time: Duration::ZERO,
            max_runs: 6,
            max_time: Duration::from_secs(5),
        }
    }

    #[test]
    fn warmup_stops_when_timings_settle() {
        // First run slow (cold), then steady: warm-up ends after the second steady run.
        let mut sleeps = vec![30u64, 5, 5, 5, 5, 5, 5, 5, 5, 5].into_iter();
        // A cap far above the expected warm-up, so stopping at 3-8 runs can only be settling.
        let p = TimingPolicy {
            warmup_max_runs: 50,
            ..policy()
        };
        let t = measure(
            &p,
            || {
                std::thread::sleep(Duration::from_millis(sleeps.next().unwrap_or(5)));
                Ok(())
            },
            |_, _| {},
        )
        .unwrap();
        assert!(t.warmup.len() >= 3 && t.warmup.len() <= 8, "{:?}", t.warmup);
        assert_eq!(t.samples.len(), 4);
        assert!(t.samples.iter().all(|s| *s >= 0.005));
    }

    /// Timings that never settle (alternating 4 ms and 16 ms) end the warm-up at its cap.
    #[test]
    fn warmup_ends_at_its_cap_when_timings_never_settle() {
        let mut n = 0u64;
        let p = TimingPolicy {
            warmup_max_runs: 4,
            ..policy()
        };
        let t = measure(
            &p,
            || {
                n += 1;
                std::thread::sleep(Duration::from_millis(if n.is_multiple_of(2) {
                    16
                } else {
                    4
                }));
                Ok(())
            },
            |_, _| {},
        )
        .unwrap();
        assert_eq!(t.warmup.len(), 4, "{:?}", t.warmup);
    }

    #[test]
    fn min_time_extends_and_max_runs_bounds() {
        let p = TimingPolicy {
            min_time: Duration::from_millis(40),
            max_runs: 1000,
            ..policy()
        };
        let mut last_elapsed = Duration::ZERO;
        let t = measure(
            &p,
            || {
                std::thread::sleep(Duration::from_millis(2));
                Ok(())
            },
            |_, elapsed| last_elapsed = elapsed,
        )
        .unwrap();
        // Past the minimum run count (4), timing went on until 40 ms of the timing phase had
        // passed (wall time, which the samples alone slightly undercount: the loop's own work
        // between runs is not in them), and no further.
        assert!(t.samples.len() > p.min_runs, "{} runs", t.samples.len());
        assert!(last_elapsed >= p.min_time, "stopped at {last_elapsed:?}");
        let total: f64 = t.samples.iter().sum();
        let last = t.samples.last().copied().unwrap_or_default();
        assert!(
            total - last < p.min_time.as_secs_f64(),
            "ran on past 40 ms: {} runs, {total} s",
            t.samples.len()
        );
        let p = TimingPolicy {
            min_time: Duration::from_secs(100),
            ..policy()
        };
        let t = measure(&p, || Ok(()), |_, _| {}).unwrap();
        assert_eq!(t.samples.len(), 6);
    }

    #[test]
    fn max_time_keeps_a_minimum_of_samples() {
        let p = TimingPolicy {
            max_time: Duration::ZERO,
            min_runs: 50,
            ..policy()
        };
        let t = measure(&p, || Ok(()), |_, _| {}).unwrap();
        assert_eq!(t.samples.len(), MIN_SAMPLES);
    }

    #[test]
    fn errors_propagate() {
        let mut n = 0;
        let r = measure(
            &policy(),
            || {
                n += 1;
                if n == 3 {
                    anyhow::bail!("boom")
                }
                Ok(())
            },
            |_, _| {},
        );
        assert!(r.unwrap_err().to_string().contains("boom"));
    }
}
