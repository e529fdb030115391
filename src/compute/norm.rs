//! LayerNorm forward (fused with the residual add, over padded rows) and backward.

use rayon::prelude::*;

use super::PAR_MIN_ELEMS;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::testing::random;

    #[test]
    fn layer_norm_with_residual_matches_two_pass_reference() {
        // Contiguous rows, and rows with padding between them that must be left alone.
        let shapes: &[(usize, usize, usize)] = if cfg!(miri) {
            &[(3, 5, 5), (4, 37, 40)]
        } else {
            &[(3, 5, 5), (100, 768, 768), (64, 1000, 1000), (70, 512, 528)]
        };
        for &(rows, h, stride) in shapes {
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
}
