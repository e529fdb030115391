//! Benchmark (not a test) of the linear layers' two products at BERT-base shapes: the `gemm`
//! crate's on weights as loaded (training) and [`gemm::linear`] on weights packed once
//! (inference). Distinct weights per repetition, so they come from memory as in a forward.
//!
//! usage: cargo run --release --example kernels [threads]

use std::time::Instant;

use bertbench::models::gemm::{self, PackedWeight};
use bertbench::models::kernels::{self, MatMut, MatRef};

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
    println!("kernel: {:?}, {threads} threads", gemm::Isa::detect());
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
            // Rows padded as the model's buffers are (see `gemm::activation_stride`).
            let lda = gemm::activation_stride(k);
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
                            gemm::linear(xv, pw, Some(&bias), None, ov, threads);
                        } else {
                            let wv = MatRef::new(w, n, k, k);
                            kernels::linear(xv, wv, Some(&bias), ov, kernels::parallelism());
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
