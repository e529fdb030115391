//! The machine's practical matrix-multiply rate, so each cell can say what share of it the
//! model reached. Measured with the same candle matmul the models use, on BERT-like shapes.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::stats::Summary;
use super::timer::{measure, TimingPolicy};

/// One measured shape: `(m x k) @ (k x n)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeakShape {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub median_s: f64,
    pub gflops: f64,
    pub runs: usize,
}

/// Shapes of BERT-base's projections at 1024 tokens, and a square one.
pub const SHAPES: [(usize, usize, usize); 3] =
    [(1024, 768, 3072), (1024, 3072, 768), (2048, 2048, 2048)];

/// Measures each shape; the peak is the best median rate.
pub fn measure_peak(
    device: &Device,
    dtype: DType,
    policy: &TimingPolicy,
) -> Result<Vec<PeakShape>> {
    SHAPES
        .iter()
        .map(|&(m, k, n)| {
            let a = Tensor::randn(0f32, 1.0, (m, k), device)?.to_dtype(dtype)?;
            let b = Tensor::randn(0f32, 1.0, (k, n), device)?.to_dtype(dtype)?;
            let t = measure(
                policy,
                || {
                    let c = a.matmul(&b)?;
                    c.device().synchronize()?;
                    Ok(())
                },
                |_, _| {},
            )?;
            let s = Summary::of(&t.samples).expect("timings");
            let flops = 2.0 * (m * k * n) as f64;
            Ok(PeakShape {
                m,
                k,
                n,
                median_s: s.median,
                gflops: flops / s.median / 1e9,
                runs: s.n,
            })
        })
        .collect()
}

/// The best median rate among measured shapes.
pub fn peak_gflops(shapes: &[PeakShape]) -> f64 {
    shapes.iter().map(|s| s.gflops).fold(0.0, f64::max)
}
