//! Benchmark (not a test) of the linear layers' two products at BERT-base shapes: the `gemm`
//! crate's on weights as loaded (training) and [`packed_linear`] on weights packed once
//! (inference). Distinct weights per repetition, so they come from memory as in a forward.
//! First it measures the CPU's multiply-add ceiling, which no product can pass, so the rates
//! below can be read as a fraction of it.
//!
//! usage: cargo run --release --example kernels [threads] [auto|avx512|avx2|portable]
//! (the tier may also come from `BERTBENCH_ISA`, as for the binary's `--isa`)

use std::time::Instant;

use bertbench::compute::dense::{dense_linear, parallelism};
use bertbench::compute::packed::{self, packed_linear, PackedWeight};
use bertbench::compute::{Isa, MatMut, MatRef};
use bertbench::runtime::IsaChoice;
use clap::ValueEnum;

fn main() {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
    let choice = args
        .next()
        .or_else(|| std::env::var("BERTBENCH_ISA").ok())
        .map(|name| IsaChoice::from_str(&name, true).expect("auto, avx512, avx2 or portable"))
        .unwrap_or_default();
    let isa = bertbench::runtime::use_isa(choice).unwrap_or_else(|e| panic!("{e:#}"));
    bertbench::runtime::use_threads(threads).expect("thread pool");
    println!(
        "kernel: {} ({} available), {threads} threads, {}",
        isa.name(),
        Isa::available_names(),
        bertbench::compute::cache::CacheSizes::detect()
    );
    let ceiling = fma_ceiling(isa, threads).map(|(one, all)| {
        println!(
            "multiply-add ceiling: {one:.1} GFLOP/s on one thread; on {threads}: {all:.1} \
             measured, {:.1} derived (one thread's x {threads}, used below)",
            one * threads as f64
        );
        one * threads as f64
    });
    println!("| m | k x n | gemm crate ms | GFLOP/s | pre-packed ms | GFLOP/s | of ceiling |");
    println!("|---|---|---:|---:|---:|---:|---:|");
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
                "| {m} | {k}x{n} | {:.3} | {:.1} | {:.3} | {:.1} | {} |",
                crate_s * 1e3,
                gf(crate_s),
                packed_s * 1e3,
                gf(packed_s),
                ceiling.map_or("-".into(), |c| format!("{:.0}%", 100.0 * gf(packed_s) / c))
            );
        }
    }
}

/// GFLOP/s of independent fused multiply-add chains of the tier's vector width, nothing loaded
/// or stored, on one thread and on all `threads` at once, best of five tries each (`None` for
/// the portable tier). The all-thread figure is printed but not used: on a shared VM a sibling
/// thread's slice of the core is not guaranteed, and one try measured below what products
/// reached in the same run.
fn fma_ceiling(isa: Isa, threads: usize) -> Option<(f64, f64)> {
    #[cfg(target_arch = "x86_64")]
    {
        let (lanes, chains): (usize, fn(usize) -> f32) = match isa {
            // SAFETY: the tier was checked available: AVX-512F is present.
            Isa::Avx512 => (16, |n| unsafe { fma::chains_512(n) }),
            // SAFETY: the tier was checked available: AVX2 and FMA are present.
            Isa::Avx2 => (8, |n| unsafe { fma::chains_256(n) }),
            Isa::Portable => return None,
        };
        let iters = 100_000_000;
        let rate = |on: usize| {
            let mut best = 0f64;
            for _ in 0..5 {
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
        let _ = (isa, threads);
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
