//! Products on weights as loaded (training, whose weights change every step), through the
//! `gemm` crate (the GEMM candle itself uses, called directly so the bias fuses into the
//! product and strided or transposed operands need no copies). Inference on a prepared model
//! reads weights packed once ([`super::packed`]).

use gemm::Parallelism;
use rayon::prelude::*;

use super::view::{MatMut, MatRef};
use super::PAR_MIN_ELEMS;

/// The GEMM threading to use for one product: the compute threads configured for the
/// process (rayon's pool, which `--threads` sizes). Called from inside a pool task (the fused
/// forward runs on the pool) it still splits:
/// rayon nests.
pub fn parallelism() -> Parallelism {
    match rayon::current_num_threads() {
        1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// The one call into the `gemm` crate: `dst = (accumulate ? dst : 0) + a b`, with `dst`
/// row-major at row stride `dst_rs` and the operands at their views' strides.
///
/// # Safety
/// `dst` must be valid for `a.rows x b.cols` elements at row stride `dst_rs`, and must not
/// overlap the operands or be written by anyone else meanwhile.
pub(crate) unsafe fn gemm_raw(
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    a: MatRef,
    b: MatRef,
    par: Parallelism,
) {
    assert_eq!(a.cols(), b.rows(), "inner dimensions");
    // SAFETY: the operands are checked views (in bounds for their strides); `dst` is valid
    // for the a.rows() x b.cols() result at `dst_rs` and aliases nothing (caller).
    unsafe {
        gemm::gemm(
            a.rows(),
            b.cols(),
            a.cols(),
            dst,
            1,
            dst_rs as isize,
            accumulate,
            a.data().as_ptr(),
            a.col_stride() as isize,
            a.stride() as isize,
            b.data().as_ptr(),
            b.col_stride() as isize,
            b.stride() as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            par,
        )
    };
}

/// `out = a b` for any views (pass `x.t()` for a transposed operand: read in place).
pub fn matmul(a: MatRef, b: MatRef, mut out: MatMut, par: Parallelism) {
    assert_eq!(
        (out.rows(), out.cols()),
        (a.rows(), b.cols()),
        "output shape"
    );
    // SAFETY: the views were bounds-checked at construction and the shape just now; `out` is
    // exclusively borrowed, so it aliases neither operand.
    unsafe { gemm_raw(out.as_mut_ptr(), out.stride(), false, a, b, par) }
}

/// `out = x W^T + bias`, with `W` in the Hub's `[out, in]` layout (row-major `n x k`), read in
/// place as the transposed right operand of the `gemm` crate's product; the bias is written
/// first and accumulated into (one pass over `out`, not two). This is the product on weights as
/// loaded (training, whose weights change every step); inference on a prepared model reads
/// weights packed once ([`super::packed`]).
pub fn dense_linear(x: MatRef, w: MatRef, bias: Option<&[f32]>, mut out: MatMut, par: Parallelism) {
    let (m, n) = (x.rows(), w.rows());
    assert_eq!((out.rows(), out.cols()), (m, n), "output shape");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "bias length");
        for r in 0..m {
            out.row_mut(r).copy_from_slice(b);
        }
    }
    // SAFETY: as in `matmul`.
    unsafe {
        gemm_raw(
            out.as_mut_ptr(),
            out.stride(),
            bias.is_some(),
            x,
            w.t(),
            par,
        )
    }
}

/// Column sums of a `rows x cols` matrix (a bias gradient), split over the compute threads.
pub fn column_sums(x: &[f32], cols: usize) -> Vec<f32> {
    let rows_per_task = (PAR_MIN_ELEMS / 4 / cols).max(1);
    let partial = |chunk: &[f32]| {
        let mut acc = vec![0f32; cols];
        for row in chunk.chunks_exact(cols) {
            acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
        }
        acc
    };
    x.par_chunks(rows_per_task * cols).map(partial).reduce(
        || vec![0f32; cols],
        |mut a, b| {
            a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
            a
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::testing::random;

    fn naive_linear(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, b: &[f32]) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for r in 0..m {
            for j in 0..n {
                out[r * n + j] = b[j] as f64
                    + (0..k)
                        .map(|i| x[r * k + i] as f64 * w[j * k + i] as f64)
                        .sum::<f64>();
            }
        }
        out
    }

    #[test]
    fn linear_writes_strided_columns_with_bias() {
        for m in [37, 5, 1, 8] {
            linear_case(m, 50, 23, dense_linear);
        }
    }

    fn linear_case(
        m: usize,
        k: usize,
        n: usize,
        linear: impl Fn(MatRef, MatRef, Option<&[f32]>, MatMut, Parallelism),
    ) {
        let x = random(m * k, 6);
        let w = random(n * k, 7);
        let b = random(n, 8);
        let want = naive_linear(&x, m, k, &w, n, &b);
        // Into columns 5..5+n of a wider buffer, as the QKV projections do.
        let stride = n + 9;
        let mut buf = vec![f32::NAN; m * stride];
        let mut out = MatMut::new(&mut buf, m, stride, stride);
        linear(
            MatRef::new(&x, m, k, k),
            MatRef::new(&w, n, k, k),
            Some(&b),
            out.columns(5, n),
            parallelism(),
        );
        for r in 0..m {
            for j in 0..stride {
                let v = buf[r * stride + j];
                if (5..5 + n).contains(&j) {
                    assert!((v as f64 - want[r * n + j - 5]).abs() < 1e-4);
                } else {
                    assert!(v.is_nan(), "wrote outside its columns");
                }
            }
        }
    }

    #[test]
    fn matmul_reads_transposed_views_in_place() {
        let (m, k, n) = (9, 13, 7);
        let a = random(m * k, 10); // m x k
        let at = random(k * m, 11); // stored k x m, used transposed
        let b = random(k * n, 12); // k x n
        let bt = random(n * k, 13); // stored n x k, used transposed
        let get = |x: &[f32], stride: usize, r: usize, c: usize| x[r * stride + c] as f64;
        for (name, lhs, rhs) in [
            ("a b", MatRef::new(&a, m, k, k), MatRef::new(&b, k, n, n)),
            (
                "a bt^T",
                MatRef::new(&a, m, k, k),
                MatRef::new(&bt, n, k, k).t(),
            ),
            (
                "at^T b",
                MatRef::new(&at, k, m, m).t(),
                MatRef::new(&b, k, n, n),
            ),
        ] {
            let mut out = vec![0f32; m * n];
            matmul(lhs, rhs, MatMut::new(&mut out, m, n, n), parallelism());
            for r in 0..m {
                for c in 0..n {
                    let want: f64 = (0..k)
                        .map(|i| {
                            let l = if name.starts_with("at") {
                                get(&at, m, i, r)
                            } else {
                                get(&a, k, r, i)
                            };
                            let x = if name.contains("bt") {
                                get(&bt, k, c, i)
                            } else {
                                get(&b, n, i, c)
                            };
                            l * x
                        })
                        .sum();
                    assert!(
                        (out[r * n + c] as f64 - want).abs() < 1e-4,
                        "{name} ({r}, {c})"
                    );
                }
            }
        }
    }
}
