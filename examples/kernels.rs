//! Benchmark (not a test) of the linear layers' two products at BERT-base shapes: the `gemm`
//! crate's on weights as loaded (training) and [`packed_linear`] on weights packed once
//! (inference). Distinct weights per repetition, so they come from memory as in a forward.
//! First it measures the CPU's multiply-add ceiling, which no product can pass, so the rates
//! below can be read as a fraction of it.
//!
//! usage: cargo run --release --example kernels [threads]

use std::time::Instant;

use bertbench::compute::dense::{dense_linear, parallelism};
use bertbench::compute::packed::{self, packed_linear, PackedWeight};
use bertbench::compute::{Isa, MatMut, MatRef};

fn main() {
    bertbench::runtime::init();
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("thread pool");
    println!("kernel: {:?}, {threads} threads", Isa::current());
    if let Some((one, all)) = fma_ceiling(threads) {
        println!("multiply-add ceiling: {one:.1} GFLOP/s on one thread, {all:.1} on {threads}");
    }
    println!("| m | k x n | gemm crate ms | GFLOP/s | pre-packed ms | GFLOP/s |");
    println!("|---|---|---:|---:|---:|---:|");
    for (k, n) in [(768, 768), (768, 3072), (3072, 768)] {
        let copies = (256 << 20) / (4 * k * n);
        let weights: Vec<Vec<f32>> = (0..copies)
            .map(|c| (0..k * n).map(|i| ((i + c) % 13) as f32 * 0.01).collect())
            .collect();
        let packed: Vec<PackedWeight> = weights
            .iter()
            .map(|w| PackedWeight::pack(w, 1, n, k))
            .collect();
        let bias = vec![0.1f32; n];
        for m in [1, 8, 16, 32, 64, 128, 384, 1024, 3072] {
            // Rows padded as the model's buffers are (see `packed::activation_stride`).
            let lda = packed::activation_stride(k);
            let x: Vec<f32> = (0..m * lda).map(|i| (i % 7) as f32 * 0.1).collect();
            let mut out = vec![0f32; m * n];
            let mut time = |prepacked: bool| {
                let mut best = f64::MAX;
                for _round in 0..3 {
                    let start = Instant::now();
                    for (w, pw) in weights.iter().zip(&packed) {
                        let xv = MatRef::new(&x, m, k, lda);
                        let ov = MatMut::new(&mut out, m, n, n);
                        if prepacked {
                            packed_linear(xv, pw, Some(&bias), None, ov, threads);
                        } else {
                            let wv = MatRef::new(w, n, k, k);
                            dense_linear(xv, wv, Some(&bias), ov, parallelism());
                        }
                    }
                    best = best.min(start.elapsed().as_secs_f64() / copies as f64);
                }
                best
            };
            let (crate_s, packed_s) = (time(false), time(true));
            let gf = |t: f64| 2.0 * (m * k * n) as f64 / t / 1e9;
            println!(
                "| {m} | {k}x{n} | {:.3} | {:.1} | {:.3} | {:.1} |",
                crate_s * 1e3,
                gf(crate_s),
                packed_s * 1e3,
                gf(packed_s)
            );
        }
    }
}

/// GFLOP/s of independent fused multiply-add chains, nothing loaded or stored, on one thread
/// and on all `threads` at once (`None` without AVX2+FMA).
fn fma_ceiling(threads: usize) -> Option<(f64, f64)> {
    #[cfg(target_arch = "x86_64")]
    {
        let (lanes, chains): (usize, fn(usize) -> f32) = if is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F is present.
            (16, |n| unsafe { fma::chains_512(n) })
        } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: AVX2 and FMA are present.
            (8, |n| unsafe { fma::chains_256(n) })
        } else {
            return None;
        };
        let iters = 100_000_000;
        let rate = |on: usize| {
            let mut best = 0f64;
            for _ in 0..3 {
                let start = Instant::now();
                let sums =
                    rayon::broadcast(|ctx| if ctx.index() < on { chains(iters) } else { 0.0 });
                std::hint::black_box(sums);
                let flops = (on * iters * fma::CHAINS * lanes * 2) as f64;
                best = best.max(flops / start.elapsed().as_secs_f64() / 1e9);
            }
            best
        };
        Some((rate(1), rate(threads)))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = threads;
        None
    }
}

#[cfg(target_arch = "x86_64")]
mod fma {
    use std::arch::x86_64::*;

    /// Independent accumulators: more than latency x issue width on current x86 cores (Zen 4:
    /// 4 cycles x 1 512-bit FMA per cycle; Intel: 4 x 2).
    pub const CHAINS: usize = 12;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn chains_512(iters: usize) -> f32 {
        let (b, c) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        let mut acc = [_mm512_set1_ps(1.0); CHAINS];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm512_fmadd_ps(*a, b, c);
            }
        }
        acc.iter().map(|a| _mm512_reduce_add_ps(*a)).sum()
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn chains_256(iters: usize) -> f32 {
        let (b, c) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        let mut acc = [_mm256_set1_ps(1.0); CHAINS];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm256_fmadd_ps(*a, b, c);
            }
        }
        let mut lanes = [0f32; 8];
        acc.iter()
            .map(|a| {
                _mm256_storeu_ps(lanes.as_mut_ptr(), *a);
                lanes.iter().sum::<f32>()
            })
            .sum()
    }
}
