//! Latency percentiles of a run, and whether the run had enough queries to trust one.
//!
//! A percentile of `n` latencies is reported with `n`, and with a one-sided upper confidence
//! bound in the spirit of MLPerf's early-stopping rule: the number of latencies at or below
//! the true `p`-quantile is Binomial(n, p), so the `k`-th smallest latency lies at or above it
//! with probability `P(Binomial(n, p) <= k - 1)`. The bound is the smallest such order
//! statistic with at least [`CONFIDENCE`]; a run too short to have one (e.g. fewer than 459
//! queries for the 99th percentile) says so instead of printing a number it cannot back.
//! Queries refused or failed count as infinitely slow: a run that sheds load cannot look fast.

use serde::{Deserialize, Serialize};

use crate::stats::quantile_sorted;

/// Confidence of the percentiles' upper bounds (MLPerf's early stopping uses 99%).
pub const CONFIDENCE: f64 = 0.99;

/// What one run's latencies were, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Queries the percentiles rest on (answered, refused and failed).
    pub queries: usize,
    /// Of those, refused (queue full) or failed: counted as infinitely slow.
    pub unanswered: usize,
    /// Over answered queries only.
    pub mean_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// The percentile the run is judged by (0-100), its value, and its upper bound at
    /// [`CONFIDENCE`] (`None`: too few queries for one, or the bound is an unanswered query).
    pub percentile: f64,
    pub percentile_ms: Option<f64>,
    pub percentile_upper_ms: Option<f64>,
    /// The fewest queries that give the percentile an upper bound at [`CONFIDENCE`].
    pub queries_needed: usize,
}

impl LatencySummary {
    /// Summarises answered latencies (ms) and `unanswered` queries, judged at `percentile`
    /// (0-100, exclusive of 100).
    pub fn of(latencies_ms: &[f64], unanswered: usize, percentile: f64) -> Self {
        let mut sorted: Vec<f64> = latencies_ms.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted.extend(std::iter::repeat_n(f64::INFINITY, unanswered));
        let n = sorted.len();
        let p = percentile / 100.0;
        let finite = |x: f64| x.is_finite().then_some(x);
        let at = |q: f64| {
            (n > 0)
                .then(|| quantile_sorted(&sorted, q))
                .and_then(finite)
        };
        LatencySummary {
            queries: n,
            unanswered,
            mean_ms: (!latencies_ms.is_empty())
                .then(|| latencies_ms.iter().sum::<f64>() / latencies_ms.len() as f64),
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            max_ms: latencies_ms.iter().copied().reduce(f64::max),
            percentile,
            percentile_ms: at(p),
            percentile_upper_ms: upper_bound_rank(n, p, CONFIDENCE)
                .map(|k| sorted[k])
                .and_then(finite),
            queries_needed: queries_needed(p, CONFIDENCE),
        }
    }

    /// Whether the run has enough queries to bound its percentile at [`CONFIDENCE`].
    pub fn estimable(&self) -> bool {
        self.queries >= self.queries_needed
    }

    /// Whether the percentile is within `bound_ms` (an unanswered query at the percentile
    /// fails it).
    pub fn meets(&self, bound_ms: f64) -> bool {
        self.percentile_ms.is_some_and(|v| v <= bound_ms)
    }
}

/// 0-based rank of the order statistic that bounds the `p`-quantile from above with at least
/// `confidence`: the smallest `k` (1-based) with `P(Binomial(n, p) <= k - 1) >= confidence`,
/// returned as `k - 1`; `None` when even the largest of `n` values is not enough.
pub fn upper_bound_rank(n: usize, p: f64, confidence: f64) -> Option<usize> {
    if n == 0 || !(0.0..1.0).contains(&p) {
        return None;
    }
    // P(X = i) in log space: ln C(n, i) + i ln p + (n - i) ln(1 - p).
    let (lp, lq) = (p.ln(), (1.0 - p).ln());
    let mut ln_choose = 0.0f64;
    let mut cdf = 0.0f64;
    for i in 0..n {
        if i > 0 {
            ln_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        let term = if p == 0.0 {
            if i == 0 {
                1.0
            } else {
                0.0
            }
        } else {
            (ln_choose + i as f64 * lp + (n - i) as f64 * lq).exp()
        };
        cdf += term;
        // cdf = P(X <= i): the (i + 1)-th smallest value bounds the quantile.
        if cdf >= confidence {
            return Some(i);
        }
    }
    None
}

/// The fewest latencies for which [`upper_bound_rank`] exists: the largest value bounds the
/// `p`-quantile once `1 - p^n >= confidence`.
pub fn queries_needed(p: f64, confidence: f64) -> usize {
    if p <= 0.0 {
        return 1;
    }
    if p >= 1.0 {
        return usize::MAX;
    }
    ((1.0 - confidence).ln() / p.ln()).ceil().max(1.0) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MLPerf's figure: the 99th percentile needs 459 queries for a 99% bound (0.99^459 < 0.01
    /// < 0.99^458); below that, no bound, and the summary says the run is too short.
    #[test]
    fn the_99th_percentile_needs_459_queries() {
        assert_eq!(queries_needed(0.99, 0.99), 459);
        assert_eq!(upper_bound_rank(458, 0.99, 0.99), None);
        assert_eq!(upper_bound_rank(459, 0.99, 0.99), Some(458));
        let lat: Vec<f64> = (1..=300).map(f64::from).collect();
        let s = LatencySummary::of(&lat, 0, 99.0);
        assert!(!s.estimable());
        assert_eq!(s.percentile_upper_ms, None);
        assert!(s.percentile_ms.is_some());
    }

    /// The bound covers the true quantile at least as often as promised: 2,000 runs of 1,000
    /// uniform latencies, where the true 90th percentile is 0.9.
    #[test]
    fn the_upper_bound_covers_the_quantile() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let runs = 2000;
        let covered = (0..runs)
            .filter(|_| {
                let lat: Vec<f64> = (0..1000).map(|_| rng.random::<f64>()).collect();
                let s = LatencySummary::of(&lat, 0, 90.0);
                s.percentile_upper_ms.unwrap() >= 0.9
            })
            .count();
        let rate = covered as f64 / runs as f64;
        // At least 99% nominal; 3 standard errors (0.7%) below it would be a real shortfall.
        assert!(rate >= 0.983, "coverage {rate}");
        // And it is not the maximum: a bound that never moves could not fail.
        let lat: Vec<f64> = (0..1000).map(f64::from).collect();
        let s = LatencySummary::of(&lat, 0, 90.0);
        assert!(s.percentile_upper_ms.unwrap() < 999.0);
    }

    /// Refused queries are infinitely slow: with 2% refused, the 99th percentile is not met
    /// however fast the answered ones were, and the summary keeps the answered statistics.
    #[test]
    fn unanswered_queries_fail_the_percentile() {
        let lat = vec![5.0; 980];
        let s = LatencySummary::of(&lat, 20, 99.0);
        assert_eq!(s.queries, 1000);
        assert_eq!(s.percentile_ms, None);
        assert!(!s.meets(1e9));
        assert_eq!(s.p50_ms, Some(5.0));
        assert_eq!(s.mean_ms, Some(5.0));
        let s = LatencySummary::of(&lat, 5, 99.0);
        assert!(s.meets(5.0));
        assert!(!s.meets(4.9));
    }
}
