//! Summary statistics of timing samples: the one place they are computed.
//!
//! Quantiles use linear interpolation between order statistics (numpy's default, "type 7"), so
//! numbers agree with what a user recomputes in pandas. The confidence interval of the median is
//! distribution-free (binomial order statistics), because timing distributions are skewed and
//! multi-modal and a normal approximation would overstate precision. Outliers are classified
//! with Tukey's fences, as criterion does, and reported rather than dropped.

use serde::{Deserialize, Serialize};

/// Relative width of the median's 95% CI above which a measurement is called noisy.
pub const NOISY_CI_RELATIVE_WIDTH: f64 = 0.10;
/// Coefficient of variation above which a measurement is called noisy.
pub const NOISY_CV: f64 = 0.15;

/// Summary of a set of samples (seconds, or any unit: the fields keep the samples' unit).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation (n - 1 in the denominator); 0 for one sample.
    pub std_dev: f64,
    pub min: f64,
    pub max: f64,
    pub median: f64,
    pub q1: f64,
    pub q3: f64,
    pub iqr: f64,
    pub p90: f64,
    pub p99: f64,
    /// Distribution-free 95% confidence interval of the median (order statistics); with fewer
    /// than 6 samples no interval reaches 95% and this is [min, max].
    pub median_ci_low: f64,
    pub median_ci_high: f64,
    /// Actual coverage of the interval above (>= 0.95 when n >= 6).
    pub median_ci_coverage: f64,
    pub outliers: Outliers,
}

/// Tukey-fence outlier counts: mild beyond 1.5 IQR, severe beyond 3 IQR from the quartiles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outliers {
    pub low_severe: usize,
    pub low_mild: usize,
    pub high_mild: usize,
    pub high_severe: usize,
}

impl Outliers {
    pub fn total(&self) -> usize {
        self.low_severe + self.low_mild + self.high_mild + self.high_severe
    }
}

impl Summary {
    /// Summarises samples; `None` for an empty slice or non-finite values.
    pub fn of(samples: &[f64]) -> Option<Self> {
        if samples.is_empty() || samples.iter().any(|x| !x.is_finite()) {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let n = sorted.len();
        let mean = sorted.iter().sum::<f64>() / n as f64;
        let std_dev = if n > 1 {
            (sorted.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        let q1 = quantile_sorted(&sorted, 0.25);
        let q3 = quantile_sorted(&sorted, 0.75);
        let iqr = q3 - q1;
        let mut outliers = Outliers::default();
        for &x in &sorted {
            if x < q1 - 3.0 * iqr {
                outliers.low_severe += 1;
            } else if x < q1 - 1.5 * iqr {
                outliers.low_mild += 1;
            } else if x > q3 + 3.0 * iqr {
                outliers.high_severe += 1;
            } else if x > q3 + 1.5 * iqr {
                outliers.high_mild += 1;
            }
        }
        let (lo, hi, coverage) = median_ci_ranks(n, 0.95);
        Some(Self {
            n,
            mean,
            std_dev,
            min: sorted[0],
            max: sorted[n - 1],
            median: quantile_sorted(&sorted, 0.5),
            q1,
            q3,
            iqr,
            p90: quantile_sorted(&sorted, 0.90),
            p99: quantile_sorted(&sorted, 0.99),
            median_ci_low: sorted[lo],
            median_ci_high: sorted[hi],
            median_ci_coverage: coverage,
            outliers,
        })
    }

    /// Coefficient of variation (std / mean).
    pub fn cv(&self) -> f64 {
        if self.mean > 0.0 {
            self.std_dev / self.mean
        } else {
            0.0
        }
    }

    /// Width of the median's CI relative to the median.
    pub fn ci_relative_width(&self) -> f64 {
        if self.median > 0.0 {
            (self.median_ci_high - self.median_ci_low) / self.median
        } else {
            0.0
        }
    }

    /// Whether the spread says the machine was noisy during the measurement.
    pub fn is_noisy(&self) -> bool {
        self.ci_relative_width() > NOISY_CI_RELATIVE_WIDTH || self.cv() > NOISY_CV
    }
}

/// Quantile `q` in [0, 1] of sorted data, linear interpolation (numpy's default).
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    if n == 1 {
        return sorted[0];
    }
    let pos = q.clamp(0.0, 1.0) * (n - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// 0-based ranks (lo, hi) of the order statistics bounding a distribution-free confidence
/// interval of the median with at least `level` coverage, and the coverage achieved.
///
/// The number of samples below the true median is Binomial(n, 1/2); the interval
/// [x(l), x(n+1-l)] (1-based) covers the median with probability 1 - 2 P(X <= l-1). We take the
/// largest l that keeps that at or above `level`.
pub fn median_ci_ranks(n: usize, level: f64) -> (usize, usize, f64) {
    assert!(n > 0);
    let alpha_half = (1.0 - level) / 2.0;
    // P(X <= i) for X ~ Binomial(n, 1/2), accumulated in log space to stay finite for large n.
    let ln_half_n = n as f64 * 0.5f64.ln();
    let mut cdf = Vec::with_capacity(n + 1);
    let mut ln_choose = 0.0f64; // ln C(n, 0)
    let mut acc = 0.0f64;
    for i in 0..=n {
        if i > 0 {
            ln_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        acc += (ln_choose + ln_half_n).exp();
        cdf.push(acc.min(1.0));
    }
    // l is 1-based; l = 1 is [min, max].
    let mut l = 1usize;
    while l < n.div_ceil(2) && cdf[l] <= alpha_half {
        l += 1;
    }
    let coverage = if n == 1 { 0.0 } else { 1.0 - 2.0 * cdf[l - 1] };
    (l - 1, n - l, coverage)
}

/// Ratio of two medians with a conservative interval from their CIs: [lo_a/hi_b, hi_a/lo_b].
pub fn ratio_interval(a: &Summary, b: &Summary) -> (f64, f64, f64) {
    (
        a.median / b.median,
        a.median_ci_low / b.median_ci_high,
        a.median_ci_high / b.median_ci_low,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12 * b.abs().max(1.0)
    }

    #[test]
    fn hand_computed_summary() {
        // numpy: np.percentile([1..10], [25, 50, 75, 90, 99]) = 3.25 5.5 7.75 9.1 9.91
        let xs: Vec<f64> = (1..=10).map(f64::from).collect();
        let s = Summary::of(&xs).unwrap();
        assert_eq!(s.n, 10);
        assert!(close(s.mean, 5.5));
        assert!(close(s.median, 5.5));
        assert!(close(s.q1, 3.25) && close(s.q3, 7.75) && close(s.iqr, 4.5));
        assert!(close(s.p90, 9.1) && close(s.p99, 9.91));
        // sample std of 1..10 = sqrt(55/6)
        assert!(close(s.std_dev, (55.0f64 / 6.0).sqrt()));
        // n = 10: the 95% interval is [x(2), x(9)] with coverage 1 - 2 * 11/1024.
        assert_eq!((s.median_ci_low, s.median_ci_high), (2.0, 9.0));
        assert!(close(s.median_ci_coverage, 1.0 - 2.0 * 11.0 / 1024.0));
        assert_eq!(s.outliers.total(), 0);
    }

    #[test]
    fn outliers_are_counted_not_dropped() {
        let mut xs = vec![10.0; 8];
        xs.extend([10.5, 9.5, 30.0, 12.1]);
        let s = Summary::of(&xs).unwrap();
        // Sorted: 9.5, 10 x8, 10.5, 12.1, 30. q1 = 10 (rank 2.75), q3 = 10.125 (rank 8.25),
        // IQR 0.125: mild fences 9.8125 / 10.3125, severe fences 9.625 / 10.5.
        assert_eq!(s.n, 12);
        assert!(close(s.q1, 10.0) && close(s.q3, 10.125));
        assert_eq!(
            s.outliers,
            Outliers {
                low_severe: 1,
                low_mild: 0,
                high_mild: 1,
                high_severe: 2
            }
        );
        assert!(close(s.max, 30.0));
    }

    #[test]
    fn median_ci_ranks_match_binomial_tables() {
        // Classic table values (1-based ranks): n=6 -> (1,6), n=10 -> (2,9), n=20 -> (6,15),
        // n=100 -> (40,61).
        for (n, lo, hi) in [(6, 1, 6), (10, 2, 9), (20, 6, 15), (100, 40, 61)] {
            let (l, h, cov) = median_ci_ranks(n, 0.95);
            assert_eq!((l + 1, h + 1), (lo, hi), "n={n}");
            assert!(cov >= 0.95, "n={n}: {cov}");
        }
        // Too few samples for 95%: [min, max] with its true (lower) coverage.
        let (l, h, cov) = median_ci_ranks(5, 0.95);
        assert_eq!((l, h), (0, 4));
        assert!((cov - (1.0 - 2.0 / 32.0)).abs() < 1e-12);
        // Large n stays finite.
        let (l, h, cov) = median_ci_ranks(5000, 0.95);
        assert!(l < 2500 && h > 2500 && cov >= 0.95);
    }

    #[test]
    fn noise_flag() {
        let steady: Vec<f64> = (0..20).map(|i| 1.0 + 0.001 * (i % 3) as f64).collect();
        assert!(!Summary::of(&steady).unwrap().is_noisy());
        let noisy: Vec<f64> = (0..20)
            .map(|i| if i % 2 == 0 { 1.0 } else { 1.6 })
            .collect();
        assert!(Summary::of(&noisy).unwrap().is_noisy());
    }

    #[test]
    fn degenerate_inputs() {
        assert!(Summary::of(&[]).is_none());
        assert!(Summary::of(&[f64::NAN]).is_none());
        let one = Summary::of(&[2.0]).unwrap();
        assert_eq!(
            (
                one.median,
                one.std_dev,
                one.median_ci_low,
                one.median_ci_high
            ),
            (2.0, 0.0, 2.0, 2.0)
        );
    }
}
