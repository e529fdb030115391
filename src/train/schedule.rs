//! Learning-rate schedule: linear warm-up then linear decay to zero, as transformers'
//! `get_linear_schedule_with_warmup` (the Trainer's default).

/// Multiplier of the base learning rate for optimizer step `step` (0-based) of `total`.
pub fn linear_with_warmup(step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return step as f64 / warmup.max(1) as f64;
    }
    ((total as f64 - step as f64) / (total - warmup).max(1) as f64).max(0.0)
}

/// Warm-up steps: `warmup_steps` if given (> 0), else `ceil(warmup_ratio * total)`, as the
/// Trainer computes them.
pub fn warmup_steps(warmup_steps: usize, warmup_ratio: f64, total: usize) -> usize {
    if warmup_steps > 0 {
        warmup_steps
    } else {
        (warmup_ratio * total as f64).ceil() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_transformers_lambda() {
        // warmup 2, total 10: 0, 0.5, then (10 - s) / 8.
        let got: Vec<f64> = (0..11).map(|s| linear_with_warmup(s, 2, 10)).collect();
        let want = [
            0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0,
        ];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{got:?}");
        }
        // No warm-up: full rate at step 0, decaying to 0 at the end.
        assert_eq!(linear_with_warmup(0, 0, 4), 1.0);
        assert_eq!(linear_with_warmup(3, 0, 4), 0.25);
        assert_eq!(warmup_steps(0, 0.1, 95), 10);
        assert_eq!(warmup_steps(7, 0.1, 95), 7);
    }
}
