//! Benchmark (not a test) of the linear layers' two products at BERT-base shapes: the `gemm`
//! crate's on weights as loaded (training) and [`packed_linear`] on weights packed once
//! (inference). Distinct weights per repetition, so they come from memory as in a forward.
//! It also measures the CPU's multiply-add ceiling, which no product can pass, so the rates
//! can be read as a fraction of it.
//!
//! usage: cargo run --release --example kernels -- [threads] [auto|avx512|avx2|portable]
//!        [--packed-only] [--int8] [--rows 128,384,...] [--rounds N]
//!
//! `--int8` times the int8 product instead ([`int8_linear`], on activations already quantized,
//! and the quantization itself) against the `vpdpbusd` ceiling where the CPU has AVX-512
//! VNNI.
//! (the tier may also come from `BERTBENCH_ISA`, as for the binary's `--isa`). Each cell is
//! the best of `--rounds` timings: on a shared VM a round can lose a fifth of its speed to a
//! neighbour, and the ceiling it is compared with is a best of five too.

use std::time::Instant;

use bertbench::compute::dense::{dense_linear, parallelism};
use bertbench::compute::int8::{int8_linear, Int8Kernel, QuantizedRows, QuantizedWeight};
use bertbench::compute::isa::IsaChoice;
use bertbench::compute::packed::{self, packed_linear, PackedWeight};
use bertbench::compute::{Isa, MatMut, MatRef};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Compute threads.
    #[arg(default_value_t = 2)]
    threads: usize,
    /// Kernel tier, as the binary's `--isa`.
    #[arg(value_enum, env = "BERTBENCH_ISA", default_value_t = IsaChoice::Auto)]
    isa: IsaChoice,
    /// Time only the packed product (the `gemm` crate's takes most of a full run).
    #[arg(long)]
    packed_only: bool,
    /// Time the int8 product (and the activations' quantization) instead.
    #[arg(long)]
    int8: bool,
    /// Row counts to time.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 8, 16, 32, 64, 128, 384, 1024, 3072])]
    rows: Vec<usize>,
    /// Timings per cell; the best is kept.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

fn main() {
    let args = Args::parse();
    let threads = args.threads;
    let isa = bertbench::compute::isa::use_isa(args.isa).unwrap_or_else(|e| panic!("{e:#}"));
    bertbench::runtime::use_threads(threads).expect("thread pool");
    println!(
        "kernel: {} ({} available), {threads} threads, {}",
        isa.name(),
        Isa::available_names(),
        bertbench::compute::cache::CacheSizes::detect()
    );
    if args.int8 {
        int8_table(&args);
        return;
    }
    // The ceiling is measured before and after the products and the higher kept, so a slow
    // stretch of a shared VM during one measurement does not flatter the products.
    let before = fma_ceiling(isa, threads);
    // Weights for every shape are made first, then each round times every cell once: the
    // best of a cell's rounds is then spread over the whole run, not one stretch of it.
    struct Shape {
        k: usize,
        n: usize,
        weights: Vec<Vec<f32>>,
        packed: Vec<PackedWeight>,
        bias: Vec<f32>,
        next: usize,
        /// Per row count: the activations and the output, made once.
        buffers: Vec<(Vec<f32>, Vec<f32>)>,
    }
    let mut shapes: Vec<Shape> = [(768, 768), (768, 3072), (3072, 768)]
        .into_iter()
        .map(|(k, n)| {
            let copies = (256 << 20) / (4 * k * n);
            let weights: Vec<Vec<f32>> = (0..copies)
                .map(|c| (0..k * n).map(|i| ((i + c) % 13) as f32 * 0.01).collect())
                .collect();
            let packed = weights
                .iter()
                .map(|w| PackedWeight::pack(w, 1, n, k))
                .collect();
            let bias = vec![0.1f32; n];
            // Rows padded as the model's buffers are (see `packed::activation_stride`).
            let lda = packed::activation_stride(k);
            let buffers = args
                .rows
                .iter()
                .map(|&m| {
                    let x = (0..m * lda).map(|i| (i % 7) as f32 * 0.1).collect();
                    (x, vec![0f32; m * n])
                })
                .collect();
            Shape {
                k,
                n,
                weights,
                packed,
                bias,
                next: 0,
                buffers,
            }
        })
        .collect();
    let products: &[bool] = if args.packed_only {
        &[true]
    } else {
        &[false, true]
    };
    // (shape, m) -> best seconds of the gemm crate's product and of the packed one.
    let mut best = vec![[None::<f64>; 2]; shapes.len() * args.rows.len()];
    for round in 0..args.rounds.max(1) {
        for (s, shape) in shapes.iter_mut().enumerate() {
            let (k, n) = (shape.k, shape.n);
            let copies = shape.packed.len();
            let lda = packed::activation_stride(k);
            for (i, &m) in args.rows.iter().enumerate() {
                let (x, out) = &mut shape.buffers[i];
                // Enough products per timing to last ~20 ms, each on weights not used since
                // the last pass over all copies (256 MiB: they come from memory, as in a
                // forward).
                let reps = ((4e9 / (2.0 * (m * k * n) as f64)) as usize).clamp(1, copies);
                for &prepacked in products {
                    // Timed as a forward or a training step calls the products: from a thread
                    // of the compute pool, whose other threads are still spinning from the
                    // last product. Called from outside the pool, each product is injected
                    // into it and waited for: 12-66 us more per two-way split on a 2-vCPU
                    // Zen 5 (2-15 us from inside), up to a tenth of a 128-row 768x768
                    // product, which no forward pays (docs/performance.md).
                    let (packed_weights, next) = (&shape.packed, shape.next);
                    let (weights, bias) = (&shape.weights, &shape.bias);
                    let t = bertbench::runtime::on_compute_pool(|| {
                        let start = Instant::now();
                        for c in (next..next + reps).map(|c| c % copies) {
                            let xv = MatRef::new(x, m, k, lda);
                            let ov = MatMut::new(out, m, n, n);
                            if prepacked {
                                packed_linear(
                                    xv,
                                    &packed_weights[c],
                                    Some(bias),
                                    None,
                                    ov,
                                    threads,
                                );
                            } else {
                                let wv = MatRef::new(&weights[c], n, k, k);
                                dense_linear(xv, wv, Some(bias), ov, parallelism());
                            }
                        }
                        start.elapsed().as_secs_f64() / reps as f64
                    });
                    let cell = &mut best[s * args.rows.len() + i][prepacked as usize];
                    *cell = Some(cell.map_or(t, |best| best.min(t)));
                    shape.next += reps;
                }
            }
        }
        eprintln!("round {} of {} done", round + 1, args.rounds.max(1));
    }
    let ceiling = before
        .zip(fma_ceiling(isa, threads))
        .map(|((one0, all0), (one1, all1))| {
            let (one, all) = (one0.max(one1), all0.max(all1));
            println!(
                "multiply-add ceiling: {one:.1} GFLOP/s on one thread (best before and after the \
             products: {one0:.1}, {one1:.1}); on {threads}: {all:.1} measured, {:.1} derived \
             (one thread's x {threads}, used below)",
                one * threads as f64
            );
            one * threads as f64
        });
    println!("| m | k x n | gemm crate ms | GFLOP/s | pre-packed ms | GFLOP/s | of ceiling |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for (s, shape) in shapes.iter().enumerate() {
        let (k, n) = (shape.k, shape.n);
        for (i, &m) in args.rows.iter().enumerate() {
            let [crate_s, packed_s] = best[s * args.rows.len() + i];
            let packed_s = packed_s.expect("every round times the packed product");
            let gf = |t: f64| 2.0 * (m * k * n) as f64 / t / 1e9;
            let crate_cols =
                crate_s.map_or("- | -".into(), |t| format!("{:.3} | {:.1}", t * 1e3, gf(t)));
            println!(
                "| {m} | {k}x{n} | {crate_cols} | {:.3} | {:.1} | {} |",
                packed_s * 1e3,
                gf(packed_s),
                ceiling.map_or("-".into(), |c| format!("{:.0}%", 100.0 * gf(packed_s) / c))
            );
        }
    }
}

/// The int8 product's table: per shape and row count, the best of `--rounds` timings of the
/// product on activations quantized beforehand, and of that quantization alone, against the
/// `vpdpbusd` ceiling (64 multiply-adds an instruction) where the kernel is VNNI's.
fn int8_table(args: &Args) {
    let threads = args.threads;
    let kernel = Int8Kernel::current();
    println!("int8 kernel: {}", Int8Kernel::described());
    let before = vnni_ceiling(kernel, threads);
    struct Shape {
        k: usize,
        n: usize,
        weights: Vec<QuantizedWeight>,
        next: usize,
        buffers: Vec<(Vec<f32>, QuantizedRows, Vec<f32>)>,
    }
    let mut shapes: Vec<Shape> = [(768, 768), (768, 3072), (3072, 768)]
        .into_iter()
        .map(|(k, n)| {
            // 256 MiB of int8 weights in all: they come from memory, as in a forward.
            let copies = (256 << 20) / (k * n);
            let weights = (0..copies)
                .map(|c| {
                    let w: Vec<f32> = (0..k * n)
                        .map(|i| ((i + c) % 13) as f32 * 0.01 - 0.06)
                        .collect();
                    QuantizedWeight::quantize(&w, 1, n, k)
                })
                .collect();
            let buffers = args
                .rows
                .iter()
                .map(|&m| {
                    let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect();
                    let mut q = QuantizedRows::new();
                    q.quantize(MatRef::new(&x, m, k, k), 1, threads);
                    // Output rows padded as the model's buffers are (at a stride of a
                    // multiple of 512 floats a tile's rows would share L1 sets).
                    (x, q, vec![0f32; m * packed::activation_stride(n)])
                })
                .collect();
            Shape {
                k,
                n,
                weights,
                next: 0,
                buffers,
            }
        })
        .collect();
    // (shape, m) -> best seconds of the product and of the quantization.
    let mut best = vec![[f64::MAX; 2]; shapes.len() * args.rows.len()];
    for round in 0..args.rounds.max(1) {
        for (s, shape) in shapes.iter_mut().enumerate() {
            let (k, n) = (shape.k, shape.n);
            let copies = shape.weights.len();
            for (i, &m) in args.rows.iter().enumerate() {
                let reps = ((8e9 / (2.0 * (m * k * n) as f64)) as usize).clamp(1, copies);
                let (x, q, out) = &mut shape.buffers[i];
                let (weights, next) = (&shape.weights, shape.next);
                let [product, quantize] = bertbench::runtime::on_compute_pool(|| {
                    let start = Instant::now();
                    for c in (next..next + reps).map(|c| c % copies) {
                        let ldc = packed::activation_stride(n);
                        int8_linear(
                            q,
                            &weights[c],
                            None,
                            None,
                            MatMut::new(out, m, n, ldc),
                            threads,
                        );
                    }
                    let product = start.elapsed().as_secs_f64() / reps as f64;
                    let start = Instant::now();
                    for _ in 0..reps {
                        q.quantize(MatRef::new(x, m, k, k), 1, threads);
                    }
                    [product, start.elapsed().as_secs_f64() / reps as f64]
                });
                let cell = &mut best[s * args.rows.len() + i];
                cell[0] = cell[0].min(product);
                cell[1] = cell[1].min(quantize);
                shape.next += reps;
            }
        }
        eprintln!("round {} of {} done", round + 1, args.rounds.max(1));
    }
    let ceiling = before.zip(vnni_ceiling(kernel, threads)).map(|(a, b)| {
        let one = a.max(b);
        println!(
            "vpdpbusd ceiling: {one:.0} GOP/s on one thread (best before and after: {a:.0}, \
             {b:.0}); x {threads} threads = {:.0}, used below",
            one * threads as f64
        );
        one * threads as f64
    });
    println!("| m | k x n | int8 ms | GOP/s | of ceiling | quantizing the input ms |");
    println!("|---|---|---:|---:|---:|---:|");
    for (s, shape) in shapes.iter().enumerate() {
        let (k, n) = (shape.k, shape.n);
        for (i, &m) in args.rows.iter().enumerate() {
            let [product, quantize] = best[s * args.rows.len() + i];
            let gops = 2.0 * (m * k * n) as f64 / product / 1e9;
            println!(
                "| {m} | {k}x{n} | {:.3} | {gops:.0} | {} | {:.3} |",
                product * 1e3,
                ceiling.map_or("-".into(), |c| format!("{:.0}%", 100.0 * gops / c)),
                quantize * 1e3
            );
        }
    }
}

/// GOP/s (two per multiply-add) of independent `vpdpbusd` chains on one thread, best of five
/// (`None` unless the kernel is VNNI's).
fn vnni_ceiling(kernel: Int8Kernel, threads: usize) -> Option<f64> {
    let _ = threads;
    #[cfg(target_arch = "x86_64")]
    if kernel == Int8Kernel::Vnni512 {
        let iters = 50_000_000;
        let mut best = 0f64;
        for _ in 0..5 {
            let start = Instant::now();
            // SAFETY: the VNNI kernel runs only where AVX-512 VNNI is.
            std::hint::black_box(unsafe { fma::dpbusd_chains(iters) });
            let ops = (iters * fma::CHAINS * 64 * 2) as f64;
            best = best.max(ops / start.elapsed().as_secs_f64() / 1e9);
        }
        return Some(best);
    }
    let _ = kernel;
    None
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

    /// Independent `vpdpbusd` accumulators (64 multiply-adds each per instruction).
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub unsafe fn dpbusd_chains(iters: usize) -> i32 {
        let (a, b) = (
            _mm512_set1_epi32(0x0101_0101),
            _mm512_set1_epi32(0x0102_0102),
        );
        let mut acc = [_mm512_setzero_si512(); CHAINS];
        for _ in 0..iters {
            for c in acc.iter_mut() {
                *c = _mm512_dpbusd_epi32(*c, a, b);
            }
        }
        acc.iter().map(|c| _mm512_reduce_add_epi32(*c)).sum()
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
