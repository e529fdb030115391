//! The attention softmax over one row of scores (scale, additive mask, maximum, exponential
//! and sum in two passes) and its backward.

use rayon::prelude::*;

use super::isa::MulAdd;
use super::math::exp_nonpositive;
use super::PAR_MIN_ELEMS;

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

/// Softmax of one row of attention scores: `softmax(scores * scale + mask)`, in place. `M`:
/// how `a * b + c` is computed ([`MulAdd`], chosen by `dispatch!`).
#[inline(always)]
pub(crate) fn softmax_row<M: MulAdd>(row: &mut [f32], scale: f32, mask: &[f32]) {
    let inv = softmax_row_unnormalized::<M>(row, scale, mask);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// [`softmax_row`] without its last pass: leaves `e^(x - max)` in the row and returns the
/// factor `1 / sum` that normalises it. Inference applies it to the row of `p v` instead
/// (`head_dim` values, not `seq`). Two passes: scale, mask and maximum; then exponential and
/// sum (eight partial results each, so they vectorise).
#[inline(always)]
pub(crate) fn softmax_row_unnormalized<M: MulAdd>(
    row: &mut [f32],
    scale: f32,
    mask: &[f32],
) -> f32 {
    assert_eq!(row.len(), mask.len());
    // The running maxima are a compare and select, not `f32::max`: its NaN rule (the other
    // operand wins) has no single vector instruction, and it kept this loop scalar (a
    // `vcmpunordss` and a blend per value; `perf annotate` put 40% of the softmax's time
    // here). `v > top ? v : top` is one `vmaxps`; a NaN score is passed over the same way.
    let mut top = [f32::NEG_INFINITY; 8];
    let mut chunks = row.chunks_exact_mut(8);
    for (c, m) in (&mut chunks).zip(mask.chunks_exact(8)) {
        // Whole arrays, so the multiply-adds are one vector instruction too.
        let (c, m): (&mut [f32; 8], &[f32; 8]) = (c.try_into().unwrap(), m.try_into().unwrap());
        let v: [f32; 8] = std::array::from_fn(|i| M::mul_add(c[i], scale, m[i]));
        *c = v;
        for i in 0..8 {
            top[i] = if v[i] > top[i] { v[i] } else { top[i] };
        }
    }
    let done = row.len() / 8 * 8;
    let mut tail_top = f32::NEG_INFINITY;
    for (v, m) in row[done..].iter_mut().zip(&mask[done..]) {
        *v = M::mul_add(*v, scale, *m);
        tail_top = if *v > tail_top { *v } else { tail_top };
    }
    let top = top.iter().fold(tail_top, |a, b| a.max(*b));
    let mut acc = [0f32; 8];
    let mut chunks = row.chunks_exact_mut(8);
    for c in &mut chunks {
        for i in 0..8 {
            c[i] = exp_nonpositive::<M>(c[i] - top);
            acc[i] += c[i];
        }
    }
    let mut tail = 0.0;
    for v in chunks.into_remainder() {
        *v = exp_nonpositive::<M>(*v - top);
        tail += *v;
    }
    1.0 / (acc.iter().sum::<f32>() + tail)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::isa::{Fused, Unfused};
    use crate::compute::testing::random;

    fn reference(x: &[f32], scale: f32, mask: &[f32]) -> Vec<f64> {
        let s: Vec<f64> = x
            .iter()
            .zip(mask)
            .map(|(v, m)| *v as f64 * scale as f64 + *m as f64)
            .collect();
        let top = s.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = s.iter().map(|v| (v - top).exp()).collect();
        let total: f64 = e.iter().sum();
        e.iter().map(|v| v / total).collect()
    }

    fn rows_match_the_reference<M: MulAdd>(form: &str) {
        // Lengths around the eight-lane chunks, masked keys inside and at the end.
        for n in [1, 7, 8, 9, 23, 64] {
            let x = random(n, n as u64);
            let mut mask = vec![0f32; n];
            for i in (n / 2..n).step_by(3) {
                mask[i] = f32::MIN;
            }
            mask[0] = 0.0; // at least one real key
            let want = reference(&x, 0.25, &mask);
            let mut row = x.clone();
            softmax_row::<M>(&mut row, 0.25, &mask);
            let mut unnormalized = x.clone();
            let inv = softmax_row_unnormalized::<M>(&mut unnormalized, 0.25, &mask);
            for i in 0..n {
                assert!(
                    (row[i] as f64 - want[i]).abs() < 1e-6,
                    "{form}: n {n} key {i}"
                );
                assert!((unnormalized[i] * inv - row[i]).abs() < 1e-6);
                if mask[i] == f32::MIN {
                    assert_eq!(row[i], 0.0, "{form}: masked key {i} of {n}");
                }
            }
        }
    }

    /// Both builds' forms (`dispatch!` runs the fused one with AVX2+FMA, the unfused one on an
    /// x86 CPU without FMA).
    #[test]
    fn softmax_rows_match_a_reference_and_masked_keys_get_exactly_zero() {
        rows_match_the_reference::<Fused>("fused");
        rows_match_the_reference::<Unfused>("unfused");
    }

    #[test]
    fn softmax_backward_matches_the_jacobian() {
        let (rows, cols, scale) = (3, 11, 0.5f32);
        let x = random(rows * cols, 1);
        let dy = random(rows * cols, 2);
        let mut y = x.clone();
        for row in y.chunks_exact_mut(cols) {
            softmax_row::<Fused>(row, 1.0, &vec![0.0; cols]);
        }
        let mut dx = dy.clone();
        softmax_backward(&y, &mut dx, cols, scale);
        for r in 0..rows {
            let (yr, gr) = (&y[r * cols..][..cols], &dy[r * cols..][..cols]);
            for i in 0..cols {
                // dx_i = scale * sum_j dy_j * y_j (delta_ij - y_i)
                let want: f64 = (0..cols)
                    .map(|j| {
                        let d = if i == j { 1.0 } else { 0.0 };
                        gr[j] as f64 * yr[j] as f64 * (d - yr[i] as f64)
                    })
                    .sum::<f64>()
                    * scale as f64;
                assert!((dx[r * cols + i] as f64 - want).abs() < 1e-6, "({r}, {i})");
            }
        }
    }
}
