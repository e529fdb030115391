//! The machine's practical matrix-multiply rate, so each cell can say what share of it the
//! model reached. Measured on BERT-like shapes with the products the models use: candle's
//! matmul (training, other dtypes and devices, and inference on the portable tier) and, for
//! f32 on the CPU with a register kernel (`avx512`, `avx2`), the packed-weight GEMM of
//! inference ([`crate::compute::packed`]); for int8, the int8 product on activations already
//! quantized ([`crate::compute::int8`]); the peak is the best of them.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::timer::{measure, TimingPolicy};
use crate::compute::bf16::{bf16_linear, Bf16Kernel, Bf16Rows, Bf16Weight};
use crate::compute::int8::{int8_linear, QuantizedRows, QuantizedWeight};
use crate::compute::packed::{self, packed_linear, PackedWeight};
use crate::compute::{Isa, MatMut, MatRef};
use crate::device::Precision;
use crate::stats::Summary;

/// One measured shape: `(m x k) @ (k x n)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeakShape {
    /// Which product: `candle` (its matmul), `packed` (the f32 inference GEMM) or `int8`.
    #[serde(default = "candle_kernel")]
    pub kernel: String,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub median_s: f64,
    pub gflops: f64,
    pub runs: usize,
    /// Compute threads it ran on (files from before the thread axis: the run's count).
    #[serde(default)]
    pub threads: usize,
}

/// Shapes of BERT-base's projections at 1024 tokens, and a square one.
pub const SHAPES: [(usize, usize, usize); 3] =
    [(1024, 768, 3072), (1024, 3072, 768), (2048, 2048, 2048)];

fn candle_kernel() -> String {
    "candle".into()
}

/// Measures each shape with each product the precisions run on the current compute pool (run
/// it inside a pool's `install` to measure another thread count); the peak is the best median
/// rate of a kind of product (int8 and bf16 have their own: [`kind_of`]). Candle's matmul runs
/// in the first precision's dtype.
pub fn measure_peak(
    device: &Device,
    precisions: &[Precision],
    policy: &TimingPolicy,
) -> Result<Vec<PeakShape>> {
    measure_peak_on(&SHAPES, device, precisions, policy)
}

/// [`measure_peak`] on `shapes` (the tests' are small: an emulated CPU takes minutes over
/// [`SHAPES`]).
fn measure_peak_on(
    shapes_mkn: &[(usize, usize, usize)],
    device: &Device,
    precisions: &[Precision],
    policy: &TimingPolicy,
) -> Result<Vec<PeakShape>> {
    let first = precisions.first().copied().unwrap_or(Precision::F32);
    let dtype = first.load_dtype(device);
    let cpu = device.is_cpu();
    let int8 = cpu && precisions.contains(&Precision::Int8);
    let bf16 = cpu && precisions.contains(&Precision::Bf16) && Bf16Kernel::current().fast();
    // Not on the portable tier: its forward multiplies on candle's matmul (the `gemm` crate;
    // `Isa::packs_weights`), and the packed product's plain-Rust tile, which it would time
    // instead, runs no encoder product there (and is far slower).
    let packed = device.is_cpu() && dtype == DType::F32 && Isa::current().packs_weights();
    let kinds = Prepared { packed, bf16, int8 };
    let threads = rayon::current_num_threads();
    let mut shapes = Vec::new();
    for &(m, k, n) in shapes_mkn {
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
        shapes.push(shape("candle", m, k, n, threads, &t.samples));
        if !(packed || bf16 || int8) {
            continue;
        }
        // The prepared products: the weight in the Hub's `[out, in]` layout (b's transpose),
        // prepared once, the activations in f32.
        let (w, a): (Vec<f32>, Vec<f32>) = (
            b.t()?
                .contiguous()?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1()?,
            a.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
        );
        shapes.extend(time_prepared(kinds, &a, &w, (m, k, n), threads, policy)?);
    }
    Ok(shapes)
}

/// Which prepared products, beside candle's matmul, a peak measures.
#[derive(Debug, Clone, Copy)]
struct Prepared {
    packed: bool,
    bf16: bool,
    int8: bool,
}

/// Times the prepared products of `kinds` on `(m x k) @ (k x n)`: the f32 activations `a`
/// (`m x k`) and the weight `w` in the Hub's `[out, in]` layout, prepared once per product.
fn time_prepared(
    kinds: Prepared,
    a: &[f32],
    w: &[f32],
    (m, k, n): (usize, usize, usize),
    threads: usize,
    policy: &TimingPolicy,
) -> Result<Vec<PeakShape>> {
    let mut shapes = Vec::new();
    let mut out = vec![0f32; m * n];
    let mut time = |kernel: &str, product: &mut dyn FnMut(MatMut)| -> Result<()> {
        let t = measure(
            policy,
            || {
                product(MatMut::new(&mut out, m, n, n));
                Ok(())
            },
            |_, _| {},
        )?;
        shapes.push(shape(kernel, m, k, n, threads, &t.samples));
        Ok(())
    };
    if kinds.packed {
        // The activations' rows at the stride the model's buffers give them.
        let lda = packed::activation_stride(k);
        let mut x = vec![0f32; m * lda];
        for (to, from) in x.chunks_exact_mut(lda).zip(a.chunks_exact(k)) {
            to[..k].copy_from_slice(from);
        }
        let w = PackedWeight::pack(w, 1, n, k);
        let x = MatRef::new(&x, m, k, lda);
        time("packed", &mut |out| {
            packed_linear(x, &w, None, None, out, threads)
        })?;
    }
    if kinds.bf16 {
        let w = Bf16Weight::convert(w, 1, n, k);
        let mut x = Bf16Rows::new();
        x.convert(MatRef::new(a, m, k, k), 1, threads);
        time("bf16", &mut |out| {
            bf16_linear(&x, &w, None, None, out, threads)
        })?;
    }
    if kinds.int8 {
        let w = QuantizedWeight::quantize(w, 1, n, k);
        let mut x = QuantizedRows::new();
        x.quantize(MatRef::new(a, m, k, k), 1, threads);
        time("int8", &mut |out| {
            int8_linear(&x, &w, None, None, out, threads)
        })?;
    }
    Ok(shapes)
}

fn shape(kernel: &str, m: usize, k: usize, n: usize, threads: usize, samples: &[f64]) -> PeakShape {
    let s = Summary::of(samples).expect("timings");
    let flops = 2.0 * (m * k * n) as f64;
    PeakShape {
        kernel: kernel.into(),
        m,
        k,
        n,
        median_s: s.median,
        gflops: flops / s.median / 1e9,
        runs: s.n,
        threads,
    }
}

/// The products with a peak of their own, as [`PeakShape::kernel`] names them: the others
/// (`candle`, `packed`) share the f32 peak.
const OWN_PEAK: [&str; 2] = ["int8", "bf16"];

/// The kind of product a precision's cells run on, as [`PeakShape::kernel`] names it for its
/// own peak (`int8`, `bf16`), `None` for the floating-point products (`candle`, `packed`).
pub fn kind_of(precision: Precision, device_is_cpu: bool) -> Option<&'static str> {
    match precision {
        Precision::Int8 => Some(OWN_PEAK[0]),
        Precision::Bf16 if device_is_cpu => Some(OWN_PEAK[1]),
        _ => None,
    }
}

/// The peak of one kind of product among `shapes` (`None`: the f32 products'), if measured.
pub fn peak_of_kind(shapes: &[PeakShape], kind: Option<&str>) -> Option<f64> {
    let of: Vec<PeakShape> = shapes
        .iter()
        .filter(|s| match kind {
            Some(k) => s.kernel == k,
            None => !OWN_PEAK.contains(&s.kernel.as_str()),
        })
        .cloned()
        .collect();
    (!of.is_empty()).then(|| peak_gflops(&of))
}

/// The best median rate among measured shapes.
pub fn peak_gflops(shapes: &[PeakShape]) -> f64 {
    shapes.iter().map(|s| s.gflops).fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Shapes of BERT's projections scaled down (the widths not multiples of the kernels'
    /// tiles), and a square one.
    const SMALL: [(usize, usize, usize); 3] = [(50, 48, 200), (50, 200, 48), (64, 64, 64)];

    /// On f32 CPU both products are measured on every shape (the packed one where a register
    /// kernel runs), each rate from its own timings.
    #[test]
    fn peak_measures_both_products() {
        let policy = TimingPolicy {
            warmup_max_runs: 1,
            min_runs: 1,
            min_time: Duration::ZERO,
            max_runs: 1,
            ..TimingPolicy::default()
        };
        let shapes = measure_peak_on(&SMALL, &Device::Cpu, &[Precision::F32], &policy).unwrap();
        let kernels: &[&str] = if Isa::current().packs_weights() {
            &["candle", "packed"]
        } else {
            &["candle"]
        };
        assert_eq!(shapes.len(), kernels.len() * SMALL.len());
        for &kernel in kernels {
            let of_kernel: Vec<_> = shapes.iter().filter(|s| s.kernel == kernel).collect();
            let dims: Vec<_> = of_kernel.iter().map(|s| (s.m, s.k, s.n)).collect();
            assert_eq!(dims, SMALL, "{kernel}");
            for s in of_kernel {
                assert_eq!((s.runs, s.threads), (1, rayon::current_num_threads()));
                let flops = 2.0 * (s.m * s.k * s.n) as f64;
                assert!((s.gflops - flops / s.median_s / 1e9).abs() < 1e-9 * s.gflops);
            }
        }
    }

    /// At int8 the int8 product is measured too, on every shape.
    #[test]
    fn peak_at_int8_measures_the_int8_product() {
        let policy = TimingPolicy {
            warmup_max_runs: 1,
            min_runs: 1,
            min_time: Duration::ZERO,
            max_runs: 1,
            ..TimingPolicy::default()
        };
        let shapes = measure_peak_on(&SMALL, &Device::Cpu, &[Precision::Int8], &policy).unwrap();
        let dims: Vec<_> = shapes
            .iter()
            .filter(|s| s.kernel == "int8")
            .map(|s| (s.m, s.k, s.n))
            .collect();
        assert_eq!(dims, SMALL);
    }

    /// The rate is FLOPs over the median time, and the peak the best rate, on numbers whose
    /// answers are known.
    #[test]
    fn rates_and_peak_from_known_timings() {
        // 2 * 1000^3 FLOPs; median of 0.5, 1 and 4 seconds is 1 s: 2 GFLOP/s.
        let s = shape("packed", 1000, 1000, 1000, 2, &[4.0, 0.5, 1.0]);
        assert_eq!((s.median_s, s.gflops, s.runs, s.threads), (1.0, 2.0, 3, 2));
        let t = shape("candle", 1000, 1000, 1000, 2, &[0.25]);
        assert_eq!(t.gflops, 8.0);
        assert_eq!(peak_gflops(&[s.clone(), t, s]), 8.0);
        assert_eq!(peak_gflops(&[]), 0.0);
    }
}
