//! Benchmark (not a test) of the two linear-layer products at BERT-base shapes: the packed
//! `gemm` crate product and the weight-streaming one for few rows. Picks `SMALL_M`.
//!
//! usage: cargo run --release --example kernels [threads]

use std::time::Instant;

use bertbench::models::gemm::{self, PackedWeight};
use bertbench::models::kernels::{self, MatMut, MatRef};

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("thread pool");
    println!("| m | k x n | gemm crate ms | GFLOP/s | streaming ms | GFLOP/s | pre-packed ms | GFLOP/s |");
    println!("|---|---|---|---|---|---|---|---|");
    for (k, n) in [(768, 768), (768, 3072), (3072, 768)] {
        // Distinct weights per repetition so the weights come from memory, as in a forward.
        let copies = (256 << 20) / (4 * k * n);
        let weights: Vec<Vec<f32>> = (0..copies)
            .map(|c| (0..k * n).map(|i| ((i + c) % 13) as f32 * 0.01).collect())
            .collect();
        let packed: Vec<PackedWeight> = weights
            .iter()
            .map(|w| PackedWeight::pack(w, 1, n, k))
            .collect();
        let bias = vec![0.1f32; n];
        for m in [1, 8, 16, 32, 48, 64, 128, 384, 1024, 3072] {
            let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
            let mut out = vec![0f32; m * n];
            let mut time = |kind: usize| {
                let mut best = f64::MAX;
                for _round in 0..3 {
                    let start = Instant::now();
                    for (w, pw) in weights.iter().zip(&packed) {
                        let (xv, wv) = (MatRef::new(&x, m, k, k), MatRef::new(w, n, k, k));
                        let ov = MatMut::new(&mut out, m, n, n);
                        match kind {
                            0 => kernels::linear_packed(
                                xv,
                                wv,
                                Some(&bias),
                                ov,
                                kernels::parallelism(),
                            ),
                            1 => kernels::linear_rows(xv, wv, Some(&bias), ov),
                            _ => gemm::linear(xv, pw, Some(&bias), ov, threads),
                        }
                    }
                    best = best.min(start.elapsed().as_secs_f64() / copies as f64);
                }
                best
            };
            let (p, s, q) = (time(0), time(1), time(2));
            let gf = |t: f64| 2.0 * (m * k * n) as f64 / t / 1e9;
            println!(
                "| {m} | {k}x{n} | {:.3} | {:.1} | {:.3} | {:.1} | {:.3} | {:.1} |",
                p * 1e3,
                gf(p),
                s * 1e3,
                gf(s),
                q * 1e3,
                gf(q)
            );
        }
    }
}
