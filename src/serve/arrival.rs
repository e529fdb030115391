//! When queries arrive: MLPerf's Server scenario sends them as a Poisson process, so the gaps
//! between arrivals are independent exponential draws with mean `1 / rate`, from a fixed seed
//! (every run of a probe sees the same arrival times).

use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Exp};

/// Arrival times of a Poisson process at `rate` queries per second, as offsets from the start
/// of a run: the first after one gap, each later one a fresh exponential gap after the last.
#[derive(Debug, Clone)]
pub struct PoissonArrivals {
    gaps: Exp<f64>,
    rng: StdRng,
    now: f64,
}

impl PoissonArrivals {
    /// Arrivals at `rate` per second (finite and above zero, else `None`) from `seed`.
    pub fn new(rate: f64, seed: u64) -> Option<Self> {
        if !(rate.is_finite() && rate > 0.0) {
            return None;
        }
        Some(Self {
            gaps: Exp::new(rate).ok()?,
            rng: StdRng::seed_from_u64(seed),
            now: 0.0,
        })
    }

    /// The first `n` arrival offsets.
    pub fn take_offsets(self, n: usize) -> Vec<Duration> {
        self.take(n).collect()
    }
}

impl Iterator for PoissonArrivals {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.now += self.gaps.sample(&mut self.rng);
        Some(Duration::from_secs_f64(self.now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaps(rate: f64, seed: u64, n: usize) -> Vec<f64> {
        let t = PoissonArrivals::new(rate, seed).unwrap().take_offsets(n);
        let mut last = 0.0;
        t.iter()
            .map(|d| {
                let g = d.as_secs_f64() - last;
                last = d.as_secs_f64();
                g
            })
            .collect()
    }

    /// Over 20,000 arrivals the achieved rate is within 3% of the one asked for (the standard
    /// error of the mean gap is 0.7% there), and arrivals only move forward.
    #[test]
    fn the_rate_is_the_one_asked_for() {
        for rate in [0.5, 40.0, 2500.0] {
            let t = PoissonArrivals::new(rate, 7).unwrap().take_offsets(20_000);
            assert!(t.windows(2).all(|w| w[0] <= w[1]));
            let achieved = t.len() as f64 / t.last().unwrap().as_secs_f64();
            assert!(
                (achieved / rate - 1.0).abs() < 0.03,
                "rate {rate}: achieved {achieved}"
            );
        }
    }

    /// The gaps are exponential: the Kolmogorov-Smirnov distance of 20,000 gaps from the
    /// exponential distribution's CDF stays below the 1% critical value (1.63 / sqrt(n)), and
    /// a uniform draw with the same mean fails the same test (so it can fail).
    #[test]
    fn the_gaps_are_exponential() {
        let rate = 25.0;
        let n = 20_000;
        let ks = |mut g: Vec<f64>| -> f64 {
            g.sort_by(f64::total_cmp);
            g.iter()
                .enumerate()
                .map(|(i, x)| {
                    let cdf = 1.0 - (-rate * x).exp();
                    let lo = i as f64 / n as f64;
                    let hi = (i + 1) as f64 / n as f64;
                    (cdf - lo).abs().max((hi - cdf).abs())
                })
                .fold(0.0, f64::max)
        };
        let critical = 1.63 / (n as f64).sqrt();
        let d = ks(gaps(rate, 11, n));
        assert!(d < critical, "KS distance {d} >= {critical}");
        let uniform: Vec<f64> = (0..n)
            .map(|i| (i as f64 + 0.5) / n as f64 * 2.0 / rate)
            .collect();
        assert!(ks(uniform) > critical);
        // Memoryless: the share of gaps longer than the mean is e^-1.
        let long = gaps(rate, 12, n)
            .iter()
            .filter(|g| **g > 1.0 / rate)
            .count();
        assert!((long as f64 / n as f64 - (-1f64).exp()).abs() < 0.015);
    }

    /// The same seed gives the same arrivals; another seed other ones; no rate, no process.
    #[test]
    fn arrivals_are_seeded_and_rates_checked() {
        assert_eq!(gaps(3.0, 1, 50), gaps(3.0, 1, 50));
        assert_ne!(gaps(3.0, 1, 50), gaps(3.0, 2, 50));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(PoissonArrivals::new(bad, 0).is_none());
        }
    }
}
