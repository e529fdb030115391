//! Summary statistics of samples (timings, latencies): the one place they are computed, for
//! every layer above (the floor: it knows no benchmark type).
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

/// A cell measured in several processes: each process's median, and the two-level interval
/// of the cell's median that the spread between processes gives.
///
/// Within one process, the median's interval ([`Summary::median_ci_low`]) describes the noise
/// of that process only; a process started minutes later on a shared machine can sit several
/// percent (once 20%) away, outside it. Treating each process's median as one draw of
/// `level + drift`, the interval is Student's t over the process medians:
/// `mean ± t(0.975, K - 1) · s / √K`. The variance of a process median is the drift's variance
/// plus the within-process noise's, and `s²` estimates exactly that sum, so the interval covers
/// both (a simulation test injects drift and checks the coverage). With three processes
/// `t = 4.30`: wide, and the spread `s` of three draws is itself so uncertain that it falls
/// below half its true value about one time in five (`P(χ²₂ < 0.5) = 0.22`).
///
/// A run's cells share the machine, and its drift scales their times alike, so a run pools
/// the relative spread of all its cells' process medians ([`Pool`]) for more degrees of
/// freedom: each cell's interval is then `mean · (1 ± t(0.975, df) · r / √K)` with `r` the
/// larger of the cell's own relative spread and the pooled one, and `df` the pool's
/// ([`Between::pooled`]); the larger of the two keeps a cell that drifted more than the
/// others from borrowing their calm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Between {
    /// Each process's median, in the order they ran.
    pub medians: Vec<f64>,
    /// Mean of the process medians.
    pub center: f64,
    /// 95% interval of the cell's median across processes.
    pub low: f64,
    pub high: f64,
    /// Degrees of freedom of the t multiplier: `K - 1` from this cell alone, more when the
    /// spread was pooled over the run's cells (results written before pooling read as 0).
    #[serde(default)]
    pub df: usize,
    /// The run's pooled relative spread, when the interval used it ([`Between::pooled`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooled_relative_sd: Option<f64>,
}

impl Between {
    /// The interval over `medians` (at least two, all finite, positive), from their own spread.
    pub fn of(medians: &[f64]) -> Option<Self> {
        let k = medians.len();
        let (mean, rel_sd) = relative_spread(medians)?;
        Some(Self::with(medians, mean, rel_sd, k - 1, None))
    }

    /// The interval over `medians` with the run's pooled spread: the larger of this cell's own
    /// relative spread and the pool's, with the pool's degrees of freedom. Without a pool (or
    /// with fewer than two medians) it is [`Between::of`].
    pub fn pooled(medians: &[f64], pool: Option<&Pool>) -> Option<Self> {
        let k = medians.len();
        let (mean, own) = relative_spread(medians)?;
        match pool {
            Some(p) if p.df > k - 1 => Some(Self::with(
                medians,
                mean,
                own.max(p.relative_sd),
                p.df,
                Some(p.relative_sd),
            )),
            _ => Some(Self::with(medians, mean, own, k - 1, None)),
        }
    }

    fn with(medians: &[f64], mean: f64, rel_sd: f64, df: usize, pool: Option<f64>) -> Self {
        let half = t_975(df) * rel_sd * mean / (medians.len() as f64).sqrt();
        Self {
            medians: medians.to_vec(),
            center: mean,
            low: mean - half,
            high: mean + half,
            df,
            pooled_relative_sd: pool,
        }
    }

    pub fn processes(&self) -> usize {
        self.medians.len()
    }
}

/// Mean and relative standard deviation (sd / mean) of at least two finite, positive values.
fn relative_spread(values: &[f64]) -> Option<(f64, f64)> {
    let k = values.len();
    if k < 2 || values.iter().any(|m| !(m.is_finite() && *m > 0.0)) {
        return None;
    }
    let mean = values.iter().sum::<f64>() / k as f64;
    let var = values.iter().map(|m| (m - mean).powi(2)).sum::<f64>() / (k - 1) as f64;
    Some((mean, var.sqrt() / mean))
}

/// The relative spread of process medians pooled over a run's cells: every cell with `K_c ≥ 2`
/// processes contributes its squared relative deviations from its own mean and `K_c - 1`
/// degrees of freedom, `r² = Σ_c Σ_i (m_ci / mean_c - 1)² / Σ_c (K_c - 1)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pool {
    pub relative_sd: f64,
    pub df: usize,
}

impl Pool {
    /// The pool of the cells' process medians; `None` when no cell has two.
    pub fn of<'a>(cells: impl IntoIterator<Item = &'a [f64]>) -> Option<Self> {
        let (mut ss, mut df) = (0.0, 0);
        for medians in cells {
            if let Some((mean, _)) = relative_spread(medians) {
                ss += medians
                    .iter()
                    .map(|m| (m / mean - 1.0).powi(2))
                    .sum::<f64>();
                df += medians.len() - 1;
            }
        }
        (df > 0).then(|| Self {
            relative_sd: (ss / df as f64).sqrt(),
            df,
        })
    }
}

/// Student's t 0.975 quantile for `df` degrees of freedom (the two-sided 95% multiplier): the
/// standard table to df 30, then the Cornish-Fisher expansion around the normal quantile
/// (within 1e-3 there). The test integrates the t density to check every entry.
pub fn t_975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::INFINITY,
        1..=30 => TABLE[df - 1],
        _ => {
            let (z, n) = (1.959_963_984_540_054_f64, df as f64);
            z + (z.powi(3) + z) / (4.0 * n)
                + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * n * n)
        }
    }
}

/// A two-sided Mann-Whitney U test (Wilcoxon rank-sum) of two independent samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MannWhitney {
    /// U of the first sample: the number of pairs (a, b) with a > b, ties counting one half
    /// (scipy's `mannwhitneyu(a, b).statistic`). The second sample's U is `n_a * n_b - u`.
    pub u: f64,
    /// Standard score of `u` under the null hypothesis, after the continuity correction; positive
    /// when the first sample tends to be larger, 0 when every value ties.
    pub z: f64,
    /// Two-sided p-value of the normal approximation.
    pub p_value: f64,
}

/// Two-sided Mann-Whitney U test of `a` against `b`: are values of one sample systematically
/// larger than values of the other? Distribution-free, so skewed and multi-modal timings are
/// fine. `None` for an empty sample or non-finite values.
///
/// Uses the normal approximation with tie and continuity corrections, which is what
/// `scipy.stats.mannwhitneyu(a, b, method="asymptotic")` computes (its default for samples with
/// ties or larger than 8):
///
/// - ranks of the pooled samples, tied values taking the mean of their ranks;
/// - `U = R_a - n_a (n_a + 1) / 2`, with `R_a` the rank sum of `a`;
/// - under the null `U` has mean `n_a n_b / 2` and variance
///   `n_a n_b / 12 * ((n + 1) - sum(t^3 - t) / (n (n - 1)))`, `t` the size of each tie group;
/// - `z = (|U - mean| - 1/2) / sd` (0 if negative), `p = 2 (1 - Phi(z)) = erfc(z / sqrt 2)`.
///
/// With every value tied the variance is 0 and the test says nothing: `p = 1`. The smallest
/// p-value the approximation can give for tiny samples is large (3 vs 3 runs: 0.081), so a
/// comparison of few runs can never be significant at 0.05; that is correct, not a bug.
pub fn mann_whitney_u(a: &[f64], b: &[f64]) -> Option<MannWhitney> {
    if a.is_empty() || b.is_empty() || a.iter().chain(b).any(|x| !x.is_finite()) {
        return None;
    }
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let n = na + nb;
    // (value, from a) pooled and sorted; ties get the mean of the 1-based ranks they span.
    let mut pooled: Vec<(f64, bool)> = a
        .iter()
        .map(|&x| (x, true))
        .chain(b.iter().map(|&x| (x, false)))
        .collect();
    pooled.sort_by(|x, y| x.0.total_cmp(&y.0));
    let mut rank_sum_a = 0.0;
    let mut tie_term = 0.0;
    let mut i = 0;
    while i < pooled.len() {
        let mut j = i + 1;
        while j < pooled.len() && pooled[j].0 == pooled[i].0 {
            j += 1;
        }
        // 1-based ranks i+1 ..= j: their mean.
        let mean_rank = (i + 1 + j) as f64 / 2.0;
        let in_a = pooled[i..j].iter().filter(|(_, from_a)| *from_a).count();
        rank_sum_a += mean_rank * in_a as f64;
        let t = (j - i) as f64;
        tie_term += t * t * t - t;
        i = j;
    }
    let u = rank_sum_a - na * (na + 1.0) / 2.0;
    let mean = na * nb / 2.0;
    let variance = na * nb / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)));
    if variance.is_nan() || variance <= 0.0 {
        return Some(MannWhitney {
            u,
            z: 0.0,
            p_value: 1.0,
        });
    }
    let distance = ((u - mean).abs() - 0.5).max(0.0);
    let z = (distance / variance.sqrt()).copysign(u - mean);
    let p_value = libm::erfc(z.abs() / std::f64::consts::SQRT_2).min(1.0);
    Some(MannWhitney { u, z, p_value })
}

/// The mean of paired differences with a 95% percentile bootstrap interval: `resamples`
/// resamplings of the pairs with replacement (seeded, so a report is reproducible), the 2.5th
/// and 97.5th percentiles of their means (Efron's percentile interval, as a paired bootstrap
/// of per-question scores is usually reported for SQuAD). `None` for no pairs.
pub fn paired_bootstrap_mean(
    diffs: &[f64],
    resamples: usize,
    seed: u64,
) -> Option<(f64, f64, f64)> {
    use rand::{Rng, SeedableRng};
    if diffs.is_empty() || resamples == 0 {
        return None;
    }
    let n = diffs.len();
    let mean = diffs.iter().sum::<f64>() / n as f64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| (0..n).map(|_| diffs[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    Some((
        mean,
        quantile_sorted(&means, 0.025),
        quantile_sorted(&means, 0.975),
    ))
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

    fn close_rel(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs()
    }

    #[test]
    fn mann_whitney_hand_computed() {
        // Fully separated 3 vs 3: U = 0, mean 4.5, variance 9/12 * 7 = 5.25,
        // z = -(4.5 - 0.5) / sqrt(5.25) = -1.7457, p = erfc(1.7457 / sqrt 2).
        let r = mann_whitney_u(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]).unwrap();
        assert_eq!(r.u, 0.0);
        assert!(close_rel(r.z, -4.0 / 5.25f64.sqrt(), 1e-12), "{}", r.z);
        // scipy.stats.mannwhitneyu([1,2,3], [4,5,6], method="asymptotic"): 0.08085559837005224
        assert!(
            close_rel(r.p_value, 0.08085559837005224, 1e-10),
            "{}",
            r.p_value
        );

        // Ties: a = 1 2 2 3, b = 2 3 3 4 5. Pooled ranks: 1 -> 1, the three 2s -> 3, the three
        // 3s -> 6, 4 -> 8, 5 -> 9. R_a = 1 + 3 + 3 + 6 = 13, U = 13 - 10 = 3. Tie term
        // 2 * (27 - 3) = 48, variance 20/12 * (10 - 48/72) = 15.556, z = -6.5 / 3.944.
        let r = mann_whitney_u(&[1.0, 2.0, 2.0, 3.0], &[2.0, 3.0, 3.0, 4.0, 5.0]).unwrap();
        assert_eq!(r.u, 3.0);
        let variance = 20.0 / 12.0 * (10.0 - 48.0 / 72.0);
        assert!(close_rel(r.z, -6.5 / f64::sqrt(variance), 1e-12), "{}", r.z);
        // scipy: 0.09934224785346528
        assert!(
            close_rel(r.p_value, 0.09934224785346528, 1e-10),
            "{}",
            r.p_value
        );
    }

    #[test]
    fn mann_whitney_matches_scipy() {
        // Values from scipy 1.17.1, mannwhitneyu(a, b, alternative="two-sided",
        // use_continuity=True, method="asymptotic"), on the same sequences built in Python.
        let a: Vec<f64> = (0..20)
            .map(|i| 1.0 + ((i * 7) % 11) as f64 * 0.01)
            .collect();
        let b: Vec<f64> = (0..25)
            .map(|i| 1.03 + ((i * 5) % 13) as f64 * 0.01)
            .collect();
        let r = mann_whitney_u(&a, &b).unwrap();
        assert_eq!(r.u, 114.0);
        assert!(
            close_rel(r.p_value, 0.0019175589131618395, 1e-9),
            "{}",
            r.p_value
        );
        assert!(r.z < 0.0);

        // Timings rounded to the millisecond: many ties.
        let round3 = |x: f64| (x * 1000.0).round() / 1000.0;
        let a: Vec<f64> = (0..30)
            .map(|i| round3(0.1 + ((i * 37) % 17) as f64 * 0.001))
            .collect();
        let b: Vec<f64> = (0..30)
            .map(|i| round3(0.104 + ((i * 23) % 19) as f64 * 0.001))
            .collect();
        let r = mann_whitney_u(&a, &b).unwrap();
        assert_eq!(r.u, 246.0);
        assert!(
            close_rel(r.p_value, 0.0025922709316531407, 1e-9),
            "{}",
            r.p_value
        );
    }

    #[test]
    fn mann_whitney_symmetry_and_degenerate_cases() {
        let a = [0.3, 0.1, 0.4, 0.15, 0.9, 0.26];
        let b = [0.5, 0.35, 0.8, 0.97, 0.93, 0.23, 0.84];
        let ab = mann_whitney_u(&a, &b).unwrap();
        let ba = mann_whitney_u(&b, &a).unwrap();
        assert_eq!(ab.u + ba.u, (a.len() * b.len()) as f64);
        assert!(close_rel(ab.p_value, ba.p_value, 1e-15));
        assert!(close_rel(ab.z, -ba.z, 1e-15));
        // Identical samples: U at its mean, p = 1.
        let same = mann_whitney_u(&a, &a).unwrap();
        assert_eq!((same.z, same.p_value), (0.0, 1.0));
        // Every value tied: no information (scipy: p = 1).
        let tied = mann_whitney_u(&[7.0; 3], &[7.0; 2]).unwrap();
        assert_eq!((tied.u, tied.z, tied.p_value), (3.0, 0.0, 1.0));
        assert!(mann_whitney_u(&[], &[1.0]).is_none());
        assert!(mann_whitney_u(&[1.0], &[f64::NAN]).is_none());
        // One value each still works (variance 1/12 * 3 = 0.25).
        let one = mann_whitney_u(&[1.0], &[2.0]).unwrap();
        assert_eq!(one.u, 0.0);
        assert_eq!((one.z, one.p_value), (0.0, 1.0));
    }

    /// Every t quantile in the table, and the expansion beyond it, puts 97.5% of Student's t
    /// distribution below it (the density integrated numerically).
    #[test]
    fn t_quantiles_are_right() {
        let cdf = |t: f64, df: f64| {
            let c = (libm::lgamma((df + 1.0) / 2.0) - libm::lgamma(df / 2.0)).exp()
                / (df * std::f64::consts::PI).sqrt();
            let f = |x: f64| c * (1.0 + x * x / df).powf(-(df + 1.0) / 2.0);
            let n = 20_000;
            let h = t / n as f64;
            let inner: f64 = (1..n)
                .map(|i| f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 })
                .sum();
            0.5 + h / 3.0 * (f(0.0) + inner + f(t))
        };
        for df in (1..=40).chain([60, 120, 500]) {
            let p = cdf(t_975(df), df as f64);
            assert!((p - 0.975).abs() < 2e-4, "df {df}: P = {p}");
        }
        assert_eq!(t_975(0), f64::INFINITY);
    }

    /// The two-level interval with injected drift: three processes whose levels scatter
    /// (sd 5) around the truth, 30 noisy samples each (sd 1). Over 2,000 simulated cells the
    /// interval from the processes covers the truth at about its nominal 95%, while the
    /// within-process interval of the pooled samples, blind to the drift, covers it far less
    /// often; without drift the two-level interval still covers at its nominal rate.
    #[test]
    fn the_two_level_interval_covers_injected_drift() {
        use rand::SeedableRng;
        use rand_distr::{Distribution, Normal};
        let mut rng = rand::rngs::StdRng::seed_from_u64(19);
        let truth = 100.0;
        let trial = |drift_sd: f64, rng: &mut rand::rngs::StdRng| {
            let drift = Normal::new(0.0, drift_sd.max(1e-12)).unwrap();
            let noise = Normal::new(0.0, 1.0).unwrap();
            let mut pooled = Vec::new();
            let mut medians = Vec::new();
            for _ in 0..3 {
                let level = truth + drift.sample(rng);
                let samples: Vec<f64> = (0..30).map(|_| level + noise.sample(rng)).collect();
                medians.push(Summary::of(&samples).unwrap().median);
                pooled.extend(samples);
            }
            let within = Summary::of(&pooled).unwrap();
            let between = Between::of(&medians).unwrap();
            (
                within.median_ci_low <= truth && truth <= within.median_ci_high,
                between.low <= truth && truth <= between.high,
            )
        };
        let runs = 2000;
        let rate = |drift_sd: f64, rng: &mut rand::rngs::StdRng| {
            let (mut w, mut b) = (0, 0);
            for _ in 0..runs {
                let (cw, cb) = trial(drift_sd, rng);
                w += usize::from(cw);
                b += usize::from(cb);
            }
            (w as f64 / runs as f64, b as f64 / runs as f64)
        };
        let (within, between) = rate(5.0, &mut rng);
        assert!(
            (0.93..=0.975).contains(&between),
            "two-level coverage {between}"
        );
        assert!(within < 0.5, "within-process coverage {within}");
        let (_, between) = rate(0.0, &mut rng);
        assert!((0.93..=0.985).contains(&between), "no drift: {between}");
    }

    /// The pooled interval ([`Pool`], [`Between::pooled`]) on simulated runs of six cells
    /// (levels 10 to 1,000, so the pool works on a relative scale), three processes each, each
    /// process's level off the truth by a relative drift (sd 5%) plus 30 samples of noise (sd
    /// 1%). It covers the truth at least at its nominal rate, and is on average far narrower
    /// than the cell's own interval with t(0.975, 2) = 4.30 (measured: 96% coverage, 0.63 of the
    /// width). A cell that drifts three times as much as the others keeps most of its coverage
    /// (85%), because its own spread is used when it is the larger.
    #[test]
    fn the_pooled_interval_covers_and_is_narrower() {
        use rand::SeedableRng;
        use rand_distr::{Distribution, Normal};
        let mut rng = rand::rngs::StdRng::seed_from_u64(1919);
        let truths = [10.0, 30.0, 100.0, 200.0, 500.0, 1000.0];
        let run = |wild: Option<usize>, rng: &mut rand::rngs::StdRng| {
            let cells: Vec<Vec<f64>> = truths
                .iter()
                .enumerate()
                .map(|(c, &truth)| {
                    let sd = if wild == Some(c) { 0.15 } else { 0.05 };
                    let drift = Normal::new(0.0, sd).unwrap();
                    let noise = Normal::new(0.0, 0.01 * truth).unwrap();
                    (0..3)
                        .map(|_| {
                            let level = truth * (1.0 + drift.sample(rng));
                            let s: Vec<f64> = (0..30).map(|_| level + noise.sample(rng)).collect();
                            Summary::of(&s).unwrap().median
                        })
                        .collect()
                })
                .collect();
            let pool = Pool::of(cells.iter().map(|c| c.as_slice())).unwrap();
            assert_eq!(pool.df, 12);
            cells
                .iter()
                .zip(truths)
                .map(|(medians, truth)| {
                    let own = Between::of(medians).unwrap();
                    let pooled = Between::pooled(medians, Some(&pool)).unwrap();
                    assert_eq!((own.df, pooled.df), (2, 12));
                    assert!((own.center - pooled.center).abs() < 1e-12);
                    let covers = pooled.low <= truth && truth <= pooled.high;
                    let width = |b: &Between| (b.high - b.low) / truth;
                    (covers, width(&pooled), width(&own))
                })
                .collect::<Vec<_>>()
        };
        let trials = 1000;
        let (mut covered, mut width, mut own_width) = (0usize, 0.0, 0.0);
        let mut wild_covered = 0usize;
        for _ in 0..trials {
            for (covers, w, o) in run(None, &mut rng) {
                covered += usize::from(covers);
                width += w;
                own_width += o;
            }
            wild_covered += usize::from(run(Some(2), &mut rng)[2].0);
        }
        let n = (trials * truths.len()) as f64;
        let (coverage, width) = (covered as f64 / n, width / own_width);
        let wild = wild_covered as f64 / trials as f64;
        assert!(
            (0.95..=0.995).contains(&coverage),
            "pooled coverage {coverage}"
        );
        assert!(width < 0.75, "mean width, pooled / own: {width}");
        assert!(wild > 0.8, "the wild cell's coverage {wild}");
        // One cell alone, or no pool: the cell's own interval.
        let medians = [1.0, 1.1, 0.9];
        let pool = Pool::of([medians.as_slice()]).unwrap();
        assert_eq!(
            Between::pooled(&medians, Some(&pool)),
            Between::of(&medians)
        );
        assert_eq!(Between::pooled(&medians, None), Between::of(&medians));
        assert!(Pool::of([[1.0].as_slice()]).is_none());
    }

    /// The interval covers the mean, narrows as pairs are added, and is a point when every
    /// difference is the same; the same seed gives the same interval.
    #[test]
    fn the_paired_bootstrap_brackets_the_mean() {
        let diffs: Vec<f64> = (0..200)
            .map(|i| if i % 4 == 0 { -1.0 } else { 0.5 })
            .collect();
        let (mean, lo, hi) = paired_bootstrap_mean(&diffs, 2000, 7).unwrap();
        assert!((mean - 0.125).abs() < 1e-12);
        assert!(lo < mean && mean < hi, "{lo} {mean} {hi}");
        // The normal approximation: sd 0.65 / sqrt(200) = 0.046, so about +-0.09.
        assert!((hi - lo - 0.18).abs() < 0.04, "width {}", hi - lo);
        let more: Vec<f64> = diffs.iter().cycle().take(800).copied().collect();
        let (_, lo4, hi4) = paired_bootstrap_mean(&more, 2000, 7).unwrap();
        assert!(hi4 - lo4 < 0.7 * (hi - lo));
        assert_eq!(
            paired_bootstrap_mean(&[2.0; 10], 100, 1),
            Some((2.0, 2.0, 2.0))
        );
        assert_eq!(
            paired_bootstrap_mean(&diffs, 2000, 7),
            paired_bootstrap_mean(&diffs, 2000, 7)
        );
        assert!(paired_bootstrap_mean(&[], 100, 1).is_none());
    }
}
