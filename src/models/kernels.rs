//! Fused f32 CPU kernels for inference: the fast path every family's encoder takes when no
//! gradient is needed (see [`super::layers::EncoderStack`]).
//!
//! Why hand-written: measured on the 2-core reference machine, candle's composed element-wise
//! ops cost as much as the matrix products at BERT shapes (`gelu_erf` runs single-threaded
//! through libm, LayerNorm takes five passes, softmax and the mask three, every head split and
//! merge copies a transpose), and its element-wise thread pool spins on the cores the GEMM
//! needs. No maintained crate offers fused transformer kernels on plain slices, so this module
//! does, on top of the `gemm` crate (the GEMM candle itself uses, called directly so bias
//! fuses into the product and strided operands need no copies).
//!
//! Element-wise loops are written branch-free over plain slices so the compiler vectorises
//! them; each has an AVX2+FMA build picked at run time (the binary itself stays portable).
//! Reductions keep eight independent partial sums, which is what lets them vectorise at all.

use gemm::Parallelism;
use rayon::prelude::*;

use super::gemm::{self as packed, PackedWeight};

/// Below this many elements an element-wise pass runs on the calling thread: forking costs
/// more than the work.
const PAR_MIN_ELEMS: usize = 1 << 15;

/// Runs `body` with the AVX2+FMA target features when the CPU has them: the same source,
/// compiled twice, chosen per call (the check is a cached load). The body's closure must be
/// inlined into the target-feature function: compiled on its own it has no FMA, and every
/// `mul_add` in it becomes a call to the software `fmaf` (measured: a SqueezeBERT forward at
/// 384 tokens three times slower), hence `#[inline(always)]`. On a CPU without FMA the plain
/// body runs, and `mul_add` is that software call: slow, but exact.
macro_rules! dispatch {
    ($body:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn wide<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                // SAFETY: the features were just detected on this CPU.
                unsafe {
                    wide(
                        #[inline(always)]
                        || $body,
                    )
                }
            } else {
                $body
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $body
        }
    }};
}

/// The GEMM threading to use for one product: the compute threads configured for the
/// process (rayon's pool, which `--threads` sizes). Called from inside a pool task (the fused
/// forward runs on the pool, see [`super::layers::EncoderStack::forward`]) it still splits:
/// rayon nests.
pub fn parallelism() -> Parallelism {
    match rayon::current_num_threads() {
        1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// Panics unless a `rows x cols` view with strides `rs` (between rows) and `cs` (between
/// columns) fits in `len` elements: the one check that makes the raw-pointer GEMM calls below
/// sound.
fn check_view(len: usize, rows: usize, cols: usize, rs: usize, cs: usize) {
    assert!(
        rows == 0 || cols == 0 || len > (rows - 1) * rs + (cols - 1) * cs,
        "matrix {rows}x{cols} (strides {rs}, {cs}) needs more than {len} elements"
    );
}

/// [`check_view`] for a row-major view, whose rows must not overlap (a written view's rows
/// would alias each other).
fn check_rows(len: usize, rows: usize, cols: usize, stride: usize) {
    assert!(
        cols <= stride || rows <= 1,
        "row stride {stride} < cols {cols}"
    );
    check_view(len, rows, cols, stride, 1);
}

/// A matrix view: element `(r, c)` at `data[r * stride + c * col_stride]`; row-major
/// (`col_stride` 1) unless it is the transpose of one ([`MatRef::t`]).
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major view, rows `stride` apart.
    pub fn new(data: &'a [f32], rows: usize, cols: usize, stride: usize) -> Self {
        check_rows(data.len(), rows, cols, stride);
        Self {
            data,
            rows,
            cols,
            stride,
            col_stride: 1,
        }
    }

    /// The transpose, as a view of the same data.
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            stride: self.col_stride,
            col_stride: self.stride,
            ..self
        }
    }

    /// Columns `start .. start + cols` of every row, without copying.
    pub fn columns(&self, start: usize, cols: usize) -> MatRef<'a> {
        assert!(start + cols <= self.cols);
        MatRef {
            data: &self.data[start * self.col_stride..],
            cols,
            ..*self
        }
    }

    pub(crate) fn is_row_major(&self) -> bool {
        self.col_stride == 1
    }
}

/// A mutable row-major matrix view; see [`MatRef`].
#[derive(Debug)]
pub struct MatMut<'a> {
    pub data: &'a mut [f32],
    pub rows: usize,
    pub cols: usize,
    pub stride: usize,
}

impl<'a> MatMut<'a> {
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize, stride: usize) -> Self {
        check_rows(data.len(), rows, cols, stride);
        Self {
            data,
            rows,
            cols,
            stride,
        }
    }

    /// Columns `start .. start + cols` of every row.
    pub fn columns(&mut self, start: usize, cols: usize) -> MatMut<'_> {
        assert!(start + cols <= self.cols);
        MatMut {
            data: &mut self.data[start..],
            rows: self.rows,
            cols,
            stride: self.stride,
        }
    }
}

/// The one call into the `gemm` crate: `dst = (accumulate ? dst : 0) + a b`, with `dst`
/// row-major at row stride `dst_rs` and the operands at their views' strides.
///
/// # Safety
/// `dst` must be valid for `a.rows x b.cols` elements at row stride `dst_rs`, and must not
/// overlap the operands or be written by anyone else meanwhile.
unsafe fn gemm_raw(
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    a: MatRef,
    b: MatRef,
    par: Parallelism,
) {
    assert_eq!(a.cols, b.rows, "inner dimensions");
    gemm::gemm(
        a.rows,
        b.cols,
        a.cols,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        a.data.as_ptr(),
        a.col_stride as isize,
        a.stride as isize,
        b.data.as_ptr(),
        b.col_stride as isize,
        b.stride as isize,
        if accumulate { 1.0 } else { 0.0 },
        1.0,
        false,
        false,
        false,
        par,
    );
}

/// `out = a b` for any views (pass `x.t()` for a transposed operand: read in place).
pub fn matmul(a: MatRef, b: MatRef, out: MatMut, par: Parallelism) {
    assert_eq!((out.rows, out.cols), (a.rows, b.cols), "output shape");
    // SAFETY: the views were bounds-checked at construction and the shape just now; `out` is
    // exclusively borrowed, so it aliases neither operand.
    unsafe { gemm_raw(out.data.as_mut_ptr(), out.stride, false, a, b, par) }
}

/// `out = x W^T + bias`, with `W` in the Hub's `[out, in]` layout (row-major `n x k`), read in
/// place as the transposed right operand of the `gemm` crate's product; the bias is written
/// first and accumulated into (one pass over `out`, not two). This is the product on weights as
/// loaded (training, whose weights change every step); inference on a prepared model reads
/// weights packed once ([`super::gemm`]).
pub fn linear(x: MatRef, w: MatRef, bias: Option<&[f32]>, out: MatMut, par: Parallelism) {
    let (m, n) = (x.rows, w.rows);
    assert_eq!((out.rows, out.cols), (m, n), "output shape");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "bias length");
        for r in 0..m {
            out.data[r * out.stride..r * out.stride + n].copy_from_slice(b);
        }
    }
    // SAFETY: as in `matmul`.
    unsafe {
        gemm_raw(
            out.data.as_mut_ptr(),
            out.stride,
            bias.is_some(),
            x,
            w.t(),
            par,
        )
    }
}

/// Dot product with eight partial sums (inlined, so it vectorises with its caller's target
/// features).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
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

/// `e^x` for `x <= 0` (softmax after subtracting the maximum, and `e^{-x^2}`), branch-free so
/// it vectorises: Cody-Waite range reduction `x = n ln2 + r`, a degree-7 Taylor polynomial on
/// `|r| <= ln2/2` (truncation error < 1e-8 relative), and `2^n` built in the exponent bits.
/// Below -87.3 (where `2^n` would leave the normal range) it returns exactly 0, as the
/// softmax of a masked position should be.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n * LN2_HI is exact for |n| < 2^9.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    const LOW: f32 = -87.3;
    let xc = x.clamp(LOW, 0.0);
    let t = xc.mul_add(LOG2E, ROUND);
    let n = t - ROUND;
    let n_int = t.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, xc));
    let p = [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ]
    .iter()
    .fold(1.0 / 5040.0, |acc: f32, &c| acc.mul_add(r, c));
    let scale = f32::from_bits(((n_int + 127) as u32) << 23);
    let y = p * scale;
    if x < LOW {
        0.0
    } else {
        y
    }
}

/// `erf(x)` as the rational function `x P(x^2) / Q(x^2)` on `|x| <= 3.8` (erf(3.8) is
/// 1 - 7.7e-8; beyond, `x` is clamped): 11 fused multiply-adds and one division, branch-free,
/// so GELU vectorises at a few instructions per value. (It replaced a series + exponential
/// form that took ~45 operations and made GELU 9% of a SqueezeBERT forward.) The coefficients
/// come from `scripts/fit_erf.py` (a minimax fit); the tests measure < 3.5e-7 absolute error
/// against libm in f32, which is the rounding of the evaluation, not of the fit.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const X_MAX: f32 = 3.8;
    const P: [f32; 7] = [
        1.1283789,
        0.19514577,
        0.049965892,
        0.0035319563,
        0.00014062815,
        -2.019959e-06,
        2.1241272e-08,
    ];
    const Q: [f32; 5] = [1.0, 0.5062735, 0.11305153, 0.013973817, 0.00092429935];
    let x = x.clamp(-X_MAX, X_MAX);
    let t = x * x;
    let num = P[..6].iter().rev().fold(P[6], |acc, &c| acc.mul_add(t, c));
    let den = Q[..4].iter().rev().fold(Q[4], |acc, &c| acc.mul_add(t, c));
    x * num / den
}

/// `tanh(x)` through `e^{-2|x|}` (so only the non-positive exponential is needed).
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let e = exp_nonpositive(-2.0 * x.abs());
    ((1.0 - e) / (1.0 + e)).copysign(x)
}

/// Applies `f` to every element, split over the compute threads when large.
fn map_inplace(x: &mut [f32], f: impl Fn(f32) -> f32 + Sync + Copy) {
    let run = |c: &mut [f32]| dispatch!(c.iter_mut().for_each(|v| *v = f(*v)));
    if x.len() < PAR_MIN_ELEMS {
        run(x);
    } else {
        x.par_chunks_mut(PAR_MIN_ELEMS / 4).for_each(run);
    }
}

/// Exact GELU, `x/2 (1 + erf(x/sqrt 2))`: Hugging Face's `"gelu"`.
pub fn gelu_erf(x: &mut [f32]) {
    map_inplace(x, |v| {
        let half = 0.5 * v;
        half.mul_add(erf(v * std::f32::consts::FRAC_1_SQRT_2), half)
    });
}

/// The tanh approximation of GELU: `"gelu_new"` / `"gelu_pytorch_tanh"`.
pub fn gelu_tanh(x: &mut [f32]) {
    const C: f32 = 0.797_884_6; // sqrt(2/pi)
    map_inplace(x, |v| {
        0.5 * v * (1.0 + tanh(C * (v + 0.044_715 * v * v * v)))
    });
}

pub fn relu(x: &mut [f32]) {
    map_inplace(x, |v| v.max(0.0));
}

/// Sum with eight independent partial sums (vectorisable; also more accurate than one
/// running sum).
#[inline(always)]
fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Sum of squared deviations from `mean`, as [`sum`].
#[inline(always)]
fn sum_sq_dev(xs: &[f32], mean: f32) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|v| (v - mean) * (v - mean))
        .sum();
    for c in chunks {
        for i in 0..8 {
            let d = c[i] - mean;
            acc[i] += d * d;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// One row of LayerNorm, two-pass (mean, then the variance of the centred values, as PyTorch).
#[inline(always)]
fn layer_norm_row(row: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let n = row.len() as f32;
    let mean = sum(row) / n;
    let var = sum_sq_dev(row, mean) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
        *v = (*v - mean) * inv * g + b;
    }
}

/// `x = LayerNorm(x + residual)` over rows of `gamma.len()` values that start `stride` apart
/// in `x` and `residual` (the values between rows are left alone), in place: the residual add
/// and the normalisation in one pass over memory per row.
pub fn add_layer_norm(
    x: &mut [f32],
    residual: Option<&[f32]>,
    stride: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) {
    let h = gamma.len();
    assert_eq!(beta.len(), h);
    assert!(h <= stride, "rows of {h} at stride {stride}");
    assert_eq!(x.len() % stride, 0, "rows at stride {stride}");
    if let Some(r) = residual {
        assert_eq!(r.len(), x.len(), "residual length");
    }
    let rows_per_task = (PAR_MIN_ELEMS / 4 / h).max(1);
    let run = |(i, chunk): (usize, &mut [f32])| {
        dispatch!({
            for (j, row) in chunk.chunks_exact_mut(stride).enumerate() {
                let row = &mut row[..h];
                if let Some(r) = residual {
                    let start = (i * rows_per_task + j) * stride;
                    for (v, a) in row.iter_mut().zip(&r[start..start + h]) {
                        *v += a;
                    }
                }
                layer_norm_row(row, gamma, beta, eps);
            }
        })
    };
    if x.len() < PAR_MIN_ELEMS {
        run((0, x));
    } else {
        x.par_chunks_mut(rows_per_task * stride)
            .enumerate()
            .for_each(run);
    }
}

/// `dx = dy * act'(x)` for the GELU forms, in place over `dy`.
pub fn gelu_backward(x: &[f32], dy: &mut [f32], tanh_form: bool) {
    assert_eq!(x.len(), dy.len());
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    const C: f32 = 0.797_884_6; // sqrt(2/pi)
    let run = |(x, dy): (&[f32], &mut [f32])| {
        dispatch!({
            for (g, v) in dy.iter_mut().zip(x) {
                let v = *v;
                let d = if tanh_form {
                    let t = tanh(C * (v + 0.044_715 * v * v * v));
                    0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * C * (1.0 + 0.134_145 * v * v)
                } else {
                    0.5 * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2))
                        + v * INV_SQRT_2PI * exp_nonpositive(-0.5 * v * v)
                };
                *g *= d;
            }
        })
    };
    if x.len() < PAR_MIN_ELEMS {
        run((x, dy));
    } else {
        x.par_chunks(PAR_MIN_ELEMS / 4)
            .zip(dy.par_chunks_mut(PAR_MIN_ELEMS / 4))
            .for_each(run);
    }
}

/// LayerNorm's backward over rows of `gamma.len()`: returns `dx` in place of `dy`, and
/// `(dgamma, dbeta)`. The row statistics are recomputed from `x` (cheaper than storing them).
pub fn layer_norm_backward(
    x: &[f32],
    dy: &mut [f32],
    gamma: &[f32],
    eps: f32,
) -> (Vec<f32>, Vec<f32>) {
    let h = gamma.len();
    assert_eq!(x.len(), dy.len());
    let rows_per_task = (PAR_MIN_ELEMS / 4 / h).max(1);
    let partial = |(x, dy): (&[f32], &mut [f32])| {
        let mut dgamma = vec![0f32; h];
        let mut dbeta = vec![0f32; h];
        dispatch!({
            for (xr, gr) in x.chunks_exact(h).zip(dy.chunks_exact_mut(h)) {
                let n = h as f32;
                let mean = sum(xr) / n;
                let rstd = 1.0 / (sum_sq_dev(xr, mean) / n + eps).sqrt();
                // With xhat = (x - mean) rstd and g = dy * gamma:
                // dx = rstd (g - mean(g) - xhat mean(g xhat)).
                let (mut sg, mut sgx) = (0f32, 0f32);
                for j in 0..h {
                    let xhat = (xr[j] - mean) * rstd;
                    let g = gr[j] * gamma[j];
                    dgamma[j] += gr[j] * xhat;
                    dbeta[j] += gr[j];
                    sg += g;
                    sgx += g * xhat;
                }
                let (mg, mgx) = (sg / n, sgx / n);
                for j in 0..h {
                    let xhat = (xr[j] - mean) * rstd;
                    gr[j] = rstd * (gr[j] * gamma[j] - mg - xhat * mgx);
                }
            }
        });
        (dgamma, dbeta)
    };
    let add = |(mut a, mut b): (Vec<f32>, Vec<f32>), (c, d): (Vec<f32>, Vec<f32>)| {
        a.iter_mut().zip(&c).for_each(|(a, c)| *a += c);
        b.iter_mut().zip(&d).for_each(|(b, d)| *b += d);
        (a, b)
    };
    if x.len() < PAR_MIN_ELEMS {
        partial((x, dy))
    } else {
        x.par_chunks(rows_per_task * h)
            .zip(dy.par_chunks_mut(rows_per_task * h))
            .map(partial)
            .reduce(|| (vec![0f32; h], vec![0f32; h]), add)
    }
}

/// The softmax's backward: `dx = scale * y (dy - sum(dy y))` per row, in place over `dy`.
pub fn softmax_backward(y: &[f32], dy: &mut [f32], cols: usize, scale: f32) {
    assert_eq!(y.len(), dy.len());
    let run = |(y, dy): (&[f32], &mut [f32])| {
        dispatch!({
            for (yr, gr) in y.chunks_exact(cols).zip(dy.chunks_exact_mut(cols)) {
                let d = dot(yr, gr);
                for (g, v) in gr.iter_mut().zip(yr) {
                    *g = scale * v * (*g - d);
                }
            }
        })
    };
    let chunk = (PAR_MIN_ELEMS / 4 / cols).max(1) * cols;
    if y.len() < PAR_MIN_ELEMS {
        run((y, dy));
    } else {
        y.par_chunks(chunk)
            .zip(dy.par_chunks_mut(chunk))
            .for_each(run);
    }
}

/// Inverted-dropout mask: each element `scale` with probability `keep`, else 0, drawn from a
/// counter-based generator (SplitMix64's mixer of `key + index`), so the mask is a pure
/// function of `(key, index)`: reproducible, and computed in parallel.
pub fn dropout_mask(draw: DropoutDraw, out: &mut [f32]) {
    let fill = |(i, chunk): (usize, &mut [f32])| {
        dropout_mask_at(draw, (i * (PAR_MIN_ELEMS / 4)) as u64, chunk)
    };
    if out.len() < PAR_MIN_ELEMS {
        out.chunks_mut(PAR_MIN_ELEMS / 4).enumerate().for_each(fill);
    } else {
        out.par_chunks_mut(PAR_MIN_ELEMS / 4)
            .enumerate()
            .for_each(fill);
    }
}

/// Elements `start..start + out.len()` of [`dropout_mask`]'s mask (the training attention
/// draws each head's block of the probabilities' mask this way).
pub fn dropout_mask_at(draw: DropoutDraw, start: u64, out: &mut [f32]) {
    // keep probability as a 24-bit threshold.
    let threshold = (draw.keep * (1u64 << 24) as f64).round() as u64;
    for (j, v) in out.iter_mut().enumerate() {
        let mut z = draw
            .key
            .wrapping_add((start + j as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        *v = if (z >> 40) < threshold {
            draw.scale
        } else {
            0.0
        };
    }
}

/// Softmax of one row of attention scores: `softmax(scores * scale + mask)`, in place.
#[inline(always)]
fn softmax_row(row: &mut [f32], scale: f32, mask: &[f32]) {
    let inv = softmax_row_unnormalized(row, scale, mask);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// [`softmax_row`] without its last pass: leaves `e^(x - max)` in the row and returns the
/// factor `1 / sum` that normalises it. Inference applies it to the row of `p v` instead
/// (`head_dim` values, not `seq`). Two passes: scale, mask and maximum; then exponential and
/// sum (eight partial results each, so they vectorise).
#[inline(always)]
fn softmax_row_unnormalized(row: &mut [f32], scale: f32, mask: &[f32]) -> f32 {
    assert_eq!(row.len(), mask.len());
    let mut top = [f32::NEG_INFINITY; 8];
    let mut chunks = row.chunks_exact_mut(8);
    for (c, m) in (&mut chunks).zip(mask.chunks_exact(8)) {
        for i in 0..8 {
            c[i] = c[i].mul_add(scale, m[i]);
            top[i] = top[i].max(c[i]);
        }
    }
    let done = row.len() / 8 * 8;
    let mut tail_top = f32::NEG_INFINITY;
    for (v, m) in row[done..].iter_mut().zip(&mask[done..]) {
        *v = v.mul_add(scale, *m);
        tail_top = tail_top.max(*v);
    }
    let top = top.iter().fold(tail_top, |a, b| a.max(*b));
    let mut acc = [0f32; 8];
    let mut chunks = row.chunks_exact_mut(8);
    for c in &mut chunks {
        for i in 0..8 {
            c[i] = exp_nonpositive(c[i] - top);
            acc[i] += c[i];
        }
    }
    let mut tail = 0.0;
    for v in chunks.into_remainder() {
        *v = exp_nonpositive(*v - top);
        tail += *v;
    }
    1.0 / (acc.iter().sum::<f32>() + tail)
}

/// Per-thread scratch space of [`attention`]: one `seq x seq` block of scores (rows padded as
/// [`packed::activation_stride`] says) and one head's keys and values packed for the GEMM. A caller running several layers keeps one and passes
/// it each time, so nothing is allocated per layer.
#[derive(Default)]
pub struct AttentionScratch {
    slots: Vec<Slot>,
}

struct Slot {
    scores: Vec<f32>,
    /// Each score row's softmax normalisation, applied to its row of the context.
    inverse_sums: Vec<f32>,
    keys: PackedWeight,
    values: PackedWeight,
}

/// Multi-head scaled dot-product attention straight from the projections, the (sequence,
/// head) pairs split evenly over the compute threads: `q`, `k`, `v` are row-major
/// `(batch*seq) x hidden` views (heads side by side in the columns, as the projections produce
/// them, so no head is ever split out into a copy of its queries); `mask` is the additive
/// `batch x seq` key mask; the context is written into `out` (`(batch*seq) x hidden`) with
/// heads merged in place. Both products take the packed-weight GEMM ([`super::gemm`]): each
/// head's keys (for `q k^T`) and values (for `p v`) are packed into the thread's scratch, a
/// copy of `seq x d` values against `2 seq^2 d` multiply-adds.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: MatRef,
    k: MatRef,
    v: MatRef,
    mask: &[f32],
    batch: usize,
    seq: usize,
    heads: usize,
    out: MatMut,
    scratch: &mut AttentionScratch,
) {
    let hidden = q.cols;
    assert_eq!(hidden % heads, 0);
    let d = hidden / heads;
    assert_eq!(q.rows, batch * seq);
    assert_eq!(
        (k.rows, k.cols, v.rows, v.cols),
        (q.rows, hidden, q.rows, hidden)
    );
    assert!(q.is_row_major() && k.is_row_major() && v.is_row_major());
    assert_eq!((out.rows, out.cols), (q.rows, hidden));
    assert_eq!(mask.len(), batch * seq);
    let scale = 1.0 / (d as f32).sqrt();
    let out_stride = out.stride;
    // Tasks write disjoint (rows of one sequence) x (columns of one head) blocks of `out`.
    let out_ptr = SendPtr(out.data.as_mut_ptr());
    let tasks = batch * heads;
    let n_slots = rayon::current_num_threads().min(tasks).max(1);
    let per_slot = tasks.div_ceil(n_slots);
    scratch.slots.resize_with(n_slots, || Slot {
        scores: Vec::new(),
        inverse_sums: Vec::new(),
        keys: PackedWeight::empty(),
        values: PackedWeight::empty(),
    });
    // The scores are the left operand of `p v`: rows padded as the product prefers.
    let score_stride = packed::activation_stride(seq);
    let run = |(index, slot): (usize, &mut Slot)| {
        slot.scores.resize(seq * score_stride, 0.0);
        slot.inverse_sums.resize(seq, 0.0);
        for task in index * per_slot..((index + 1) * per_slot).min(tasks) {
            let (bi, hi) = (task / heads, task % heads);
            let key_mask = &mask[bi * seq..(bi + 1) * seq];
            slot.keys.repack(head(k, bi, hi, seq, d));
            // SAFETY: the scores buffer holds seq rows at `score_stride` and is this slot's own.
            unsafe {
                packed::linear_serial_raw(
                    head(q, bi, hi, seq, d),
                    &slot.keys,
                    slot.scores.as_mut_ptr(),
                    score_stride,
                )
            };
            let inv = &mut slot.inverse_sums;
            dispatch!({
                for (row, inv) in slot
                    .scores
                    .chunks_exact_mut(score_stride)
                    .zip(inv.iter_mut())
                {
                    *inv = softmax_row_unnormalized(&mut row[..seq], scale, key_mask);
                }
            });
            slot.values.repack(head(v, bi, hi, seq, d).t());
            // SAFETY: `out` was bounds-checked for (batch*seq) x hidden at `out_stride`; each
            // task writes only its own block (rows of sequence bi, columns of head hi), so
            // concurrent tasks never touch the same element.
            unsafe {
                let block = out_ptr.get().add(bi * seq * out_stride + hi * d);
                packed::linear_serial_raw(
                    MatRef::new(&slot.scores, seq, seq, score_stride),
                    &slot.values,
                    block,
                    out_stride,
                );
                // The softmax's normalisation, on the context rows.
                for (r, inv) in slot.inverse_sums.iter().enumerate() {
                    let row = std::slice::from_raw_parts_mut(block.add(r * out_stride), d);
                    row.iter_mut().for_each(|v| *v *= inv);
                }
            }
        }
    };
    let slots = &mut scratch.slots[..n_slots];
    if n_slots == 1 {
        slots.iter_mut().enumerate().for_each(run);
    } else {
        slots.par_iter_mut().enumerate().for_each(run);
    }
}

/// Sizes of the training attention ([`attention_train_forward`]).
#[derive(Clone, Copy, Debug)]
pub struct AttentionDims {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl AttentionDims {
    /// `(batch, seq, heads, head_dim)`.
    fn parts(self) -> (usize, usize, usize, usize) {
        (self.batch, self.seq, self.heads, self.head_dim)
    }

    /// `x` as the `(batch*seq) x hidden` row-major view the projections produce.
    fn view(self, x: &[f32]) -> MatRef<'_> {
        let h = self.heads * self.head_dim;
        MatRef::new(x, self.batch * self.seq, h, h)
    }

    /// Elements of one (sequence, head) pair's probabilities.
    fn block(self) -> usize {
        self.seq * self.seq
    }
}

/// One inverted-dropout mask as drawn: the key of [`dropout_mask`]'s generator, the keep
/// probability and the scale of kept values. The mask itself is computed from these where it
/// is needed: whole ([`dropout_mask`]) or block by block (the training attention, which draws
/// it again in its backward).
#[derive(Clone, Copy, Debug)]
pub struct DropoutDraw {
    pub key: u64,
    pub keep: f64,
    pub scale: f32,
}

impl DropoutDraw {
    /// The mask of (sequence, head) pair `task`, into `out` (its probabilities' size).
    fn block_mask(self, task: usize, out: &mut [f32]) {
        dropout_mask_at(self, (task * out.len()) as u64, out);
    }
}

/// Multi-head attention for training, one (sequence, head) pair per task: `q`, `k`, `v` are
/// row-major `(batch*seq) x hidden` (heads side by side), read in place; writes the softmax
/// probabilities (`(batch, heads, seq, seq)`, kept for the backward) and the context
/// `(batch*seq) x hidden`. The probabilities are scaled by 1/sqrt(head_dim) and masked by the
/// additive `batch x seq` key mask before the softmax; `dropout` applies to them before
/// they meet the values. As composed candle ops this was ~16 graph nodes per layer, each with
/// a gradient buffer zero-filled and accumulated into by candle's backward.
#[allow(clippy::too_many_arguments)]
pub fn attention_train_forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: &[f32],
    dims: AttentionDims,
    dropout: Option<DropoutDraw>,
    probs: &mut [f32],
    out: &mut [f32],
) {
    let (batch, seq, heads, d) = dims.parts();
    let (q, k, v) = (dims.view(q), dims.view(k), dims.view(v));
    assert_eq!(mask.len(), batch * seq);
    assert_eq!(probs.len(), batch * heads * seq * seq);
    let (scale, block) = (1.0 / (d as f32).sqrt(), dims.block());
    let mut context = vec![0f32; out.len()];
    probs
        .par_chunks_mut(block)
        .zip(context.par_chunks_mut(seq * d))
        .enumerate()
        // `dropped`: the task's dropped-out probabilities, one buffer per split of the work.
        .for_each_init(Vec::new, |dropped, (task, (p, c))| {
            let (bi, hi) = (task / heads, task % heads);
            let p_view = MatMut::new(p, seq, seq, seq);
            matmul(
                head(q, bi, hi, seq, d),
                head(k, bi, hi, seq, d).t(),
                p_view,
                Parallelism::None,
            );
            let key_mask = &mask[bi * seq..(bi + 1) * seq];
            dispatch!({
                for row in p.chunks_exact_mut(seq) {
                    softmax_row(row, scale, key_mask);
                }
            });
            let c_view = MatMut::new(c, seq, d, d);
            let v_head = head(v, bi, hi, seq, d);
            match dropout {
                Some(drop) => {
                    dropped.resize(block, 0.0);
                    drop.block_mask(task, dropped);
                    dropped.iter_mut().zip(p.iter()).for_each(|(m, p)| *m *= p);
                    let dropped = MatRef::new(dropped, seq, seq, seq);
                    matmul(dropped, v_head, c_view, Parallelism::None);
                }
                None => matmul(
                    MatRef::new(p, seq, seq, seq),
                    v_head,
                    c_view,
                    Parallelism::None,
                ),
            }
        });
    merge_heads(&context, dims, out);
}

/// The gradients of [`attention_train_forward`] with respect to `q`, `k` and `v`
/// (`(batch*seq) x hidden` each) from the context's gradient `grad`, with the probabilities it
/// kept and the same dropout (the mask is drawn again from its key).
#[allow(clippy::too_many_arguments)]
pub fn attention_train_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    probs: &[f32],
    dims: AttentionDims,
    dropout: Option<DropoutDraw>,
    grad: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let (batch, seq, heads, d) = dims.parts();
    let (q, k, v, grad) = (dims.view(q), dims.view(k), dims.view(v), dims.view(grad));
    assert_eq!(probs.len(), batch * heads * seq * seq);
    let (scale, block) = (1.0 / (d as f32).sqrt(), dims.block());
    let n = batch * seq * heads * d;
    let mut by_head = vec![0f32; 3 * n];
    let (dq_h, rest) = by_head.split_at_mut(n);
    let (dk_h, dv_h) = rest.split_at_mut(n);
    dq_h.par_chunks_mut(seq * d)
        .zip(dk_h.par_chunks_mut(seq * d))
        .zip(dv_h.par_chunks_mut(seq * d))
        .enumerate()
        // The task's dropout mask, dropped-out probabilities and dP: one set of buffers per
        // split of the work, not per task.
        .for_each_init(
            <[Vec<f32>; 3]>::default,
            |[mask, dropped, dp], (task, ((dq_t, dk_t), dv_t))| {
                let (bi, hi) = (task / heads, task % heads);
                let p = &probs[task * block..(task + 1) * block];
                let d_context = head(grad, bi, hi, seq, d);
                // dV = P_dropped^T dC; dP = (dC V^T) * mask.
                if let Some(drop) = dropout {
                    mask.resize(block, 0.0);
                    drop.block_mask(task, mask);
                    dropped.clear();
                    dropped.extend(mask.iter().zip(p).map(|(m, p)| m * p));
                }
                let p_used = if dropout.is_some() { &dropped[..] } else { p };
                let dv_view = MatMut::new(dv_t, seq, d, d);
                matmul(
                    MatRef::new(p_used, seq, seq, seq).t(),
                    d_context,
                    dv_view,
                    Parallelism::None,
                );
                dp.resize(block, 0.0);
                let v_head = head(v, bi, hi, seq, d);
                matmul(
                    d_context,
                    v_head.t(),
                    MatMut::new(dp, seq, seq, seq),
                    Parallelism::None,
                );
                if dropout.is_some() {
                    dp.iter_mut().zip(mask.iter()).for_each(|(g, m)| *g *= m);
                }
                // dS = scale * P * (dP - rowsum(P * dP)).
                softmax_backward(p, dp, seq, scale);
                let ds = MatRef::new(dp, seq, seq, seq);
                let dq_view = MatMut::new(dq_t, seq, d, d);
                matmul(ds, head(k, bi, hi, seq, d), dq_view, Parallelism::None);
                let dk_view = MatMut::new(dk_t, seq, d, d);
                matmul(ds.t(), head(q, bi, hi, seq, d), dk_view, Parallelism::None);
            },
        );
    merge_heads(dq_h, dims, dq);
    merge_heads(dk_h, dims, dk);
    merge_heads(dv_h, dims, dv);
}

/// `(batch, heads, seq, head_dim)` blocks into `(batch*seq) x hidden` rows, heads side by side.
fn merge_heads(by_head: &[f32], dims: AttentionDims, out: &mut [f32]) {
    let (_, seq, heads, d) = dims.parts();
    let h = heads * d;
    assert_eq!(out.len(), by_head.len());
    out.par_chunks_mut(seq * h)
        .zip(by_head.par_chunks(seq * h))
        .for_each(|(out, blocks)| {
            for (hi, block) in blocks.chunks_exact(seq * d).enumerate() {
                for (r, row) in block.chunks_exact(d).enumerate() {
                    out[r * h + hi * d..][..d].copy_from_slice(row);
                }
            }
        });
}

/// The `seq x d` block of head `hi` in sequence `bi` of a `(batch*seq) x hidden` view.
fn head(m: MatRef<'_>, bi: usize, hi: usize, seq: usize, d: usize) -> MatRef<'_> {
    MatRef::new(&m.data[bi * seq * m.stride + hi * d..], seq, d, m.stride)
}

/// An output pointer handed to parallel tasks that each write their own disjoint block of it
/// (attention heads here, column ranges in [`super::gemm`]).
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: only ever used for tasks that write disjoint elements.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect()
    }

    #[test]
    fn exp_matches_libm() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.0f32 * i as f32 / 200_000.0;
            let got = exp_nonpositive(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 4e-7, "max relative error {worst}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-100.0), 0.0);
        assert_eq!(exp_nonpositive(f32::MIN), 0.0);
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn erf_and_tanh_match_libm() {
        let (mut erf_err, mut tanh_err) = (0f64, 0f64);
        for i in -100_000..=100_000 {
            let x = i as f32 / 10_000.0;
            erf_err = erf_err.max((erf(x) as f64 - libm::erf(x as f64)).abs());
            tanh_err = tanh_err.max((tanh(x) as f64 - (x as f64).tanh()).abs());
        }
        assert!(erf_err < 3.5e-7, "erf max abs error {erf_err}");
        assert!(tanh_err < 3e-7, "tanh max abs error {tanh_err}");
        assert_eq!(erf(0.0), 0.0);
    }

    #[test]
    fn gelu_forms_match_their_definitions() {
        for form in ["erf", "tanh"] {
            let mut x = random(100_000, 1);
            let orig = x.clone();
            if form == "erf" {
                gelu_erf(&mut x);
            } else {
                gelu_tanh(&mut x);
            }
            for (g, v) in x.iter().zip(&orig) {
                let v = *v as f64;
                let want = if form == "erf" {
                    0.5 * v * (1.0 + libm::erf(v / 2f64.sqrt()))
                } else {
                    let c = (2.0 / std::f64::consts::PI).sqrt();
                    0.5 * v * (1.0 + (c * (v + 0.044715 * v * v * v)).tanh())
                };
                assert!(
                    (*g as f64 - want).abs() < 1e-6,
                    "{form} gelu({v}) = {g}, want {want}"
                );
            }
        }
        let mut x = vec![-1.0, 0.0, 2.5];
        relu(&mut x);
        assert_eq!(x, vec![0.0, 0.0, 2.5]);
    }

    #[test]
    fn layer_norm_with_residual_matches_two_pass_reference() {
        // Contiguous rows, and rows with padding between them that must be left alone.
        for (rows, h, stride) in [(3, 5, 5), (100, 768, 768), (64, 1000, 1000), (70, 512, 528)] {
            let mut x = random(rows * stride, 2);
            let res = random(rows * stride, 3);
            let orig = x.clone();
            let gamma = random(h, 4);
            let beta = random(h, 5);
            let mut want: Vec<f64> = x.iter().map(|v| *v as f64).collect();
            for r in 0..rows {
                let at = r * stride;
                let row: Vec<f64> = (0..h)
                    .map(|j| x[at + j] as f64 + res[at + j] as f64)
                    .collect();
                let mean = row.iter().sum::<f64>() / h as f64;
                let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / h as f64;
                for j in 0..h {
                    want[at + j] =
                        (row[j] - mean) / (var + 1e-12).sqrt() * gamma[j] as f64 + beta[j] as f64;
                }
            }
            add_layer_norm(&mut x, Some(&res), stride, &gamma, &beta, 1e-12);
            for (i, (g, w)) in x.iter().zip(&want).enumerate() {
                if i % stride >= h {
                    assert_eq!(*g, orig[i], "padding at {i} ({rows}x{h} at {stride})");
                } else {
                    assert!((*g as f64 - w).abs() < 2e-5, "{g} vs {w} ({rows}x{h})");
                }
            }
        }
        // A large common offset: E[x^2] - mean^2 would lose every digit here.
        let mut x = vec![1000.0f32, 1001.0, 1002.0, 1003.0];
        add_layer_norm(&mut x, None, 4, &[1.0; 4], &[0.0; 4], 1e-12);
        for (a, b) in x
            .iter()
            .zip([-1.3416408f32, -0.4472136, 0.4472136, 1.3416408])
        {
            assert!((a - b).abs() < 1e-5, "{x:?}");
        }
    }

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
            linear_case(m, 50, 23, linear);
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

    #[test]
    fn attention_matches_a_naive_reference_with_padding() {
        let (batch, seq, heads, d) = (2, 7, 3, 4);
        let hidden = heads * d;
        let rows = batch * seq;
        // q, k, v side by side in one buffer, as the fused projection writes them.
        let qkv = random(rows * 3 * hidden, 9);
        let view = MatRef::new(&qkv, rows, 3 * hidden, 3 * hidden);
        let mut mask = vec![0f32; rows];
        mask[seq + 5] = f32::MIN; // the second sequence has two padded keys
        mask[seq + 6] = f32::MIN;
        let mut out = vec![0f32; rows * hidden];
        attention(
            view.columns(0, hidden),
            view.columns(hidden, hidden),
            view.columns(2 * hidden, hidden),
            &mask,
            batch,
            seq,
            heads,
            MatMut::new(&mut out, rows, hidden, hidden),
            &mut AttentionScratch::default(),
        );
        let at = |r: usize, c: usize| qkv[r * 3 * hidden + c] as f64;
        for b in 0..batch {
            for h in 0..heads {
                for i in 0..seq {
                    let scores: Vec<f64> = (0..seq)
                        .map(|j| {
                            let dot: f64 = (0..d)
                                .map(|c| {
                                    at(b * seq + i, h * d + c) * at(b * seq + j, hidden + h * d + c)
                                })
                                .sum();
                            dot / (d as f64).sqrt() + mask[b * seq + j] as f64
                        })
                        .collect();
                    let top = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - top).exp()).collect();
                    let total: f64 = e.iter().sum();
                    for c in 0..d {
                        let want: f64 = (0..seq)
                            .map(|j| e[j] / total * at(b * seq + j, 2 * hidden + h * d + c))
                            .sum();
                        let got = out[(b * seq + i) * hidden + h * d + c] as f64;
                        assert!(
                            (got - want).abs() < 1e-5,
                            "b{b} h{h} i{i} c{c}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
