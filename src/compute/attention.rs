//! Multi-head attention on the projections' output, read in place: the inference kernel
//! (packed products, softmax normalised on the context rows) and the training forward and
//! backward (one (sequence, head) pair per task).

use gemm::Parallelism;
use rayon::prelude::*;

use super::dense::{gemm_raw, matmul};
use super::dropout::DropoutDraw;
use super::isa::Isa;
use super::packed::{self, PackedWeight};
use super::softmax::{softmax_backward, softmax_row, softmax_row_unnormalized};
use super::view::{MatMut, MatRef, SendPtr};

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
/// heads merged in place. Both products take the packed-weight product ([`super::packed`]): each
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
    mut out: MatMut,
    scratch: &mut AttentionScratch,
) {
    let hidden = q.cols();
    assert_eq!(hidden % heads, 0);
    let d = hidden / heads;
    assert_eq!(q.rows(), batch * seq);
    assert_eq!(
        (k.rows(), k.cols(), v.rows(), v.cols()),
        (q.rows(), hidden, q.rows(), hidden)
    );
    assert!(q.is_row_major() && k.is_row_major() && v.is_row_major());
    assert_eq!((out.rows(), out.cols()), (q.rows(), hidden));
    assert_eq!(mask.len(), batch * seq);
    let scale = 1.0 / (d as f32).sqrt();
    let out_stride = out.stride();
    // Tasks write disjoint (rows of one sequence) x (columns of one head) blocks of `out`.
    let out_ptr = SendPtr(out.as_mut_ptr());
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
    // The portable tier multiplies on the `gemm` crate (`Isa::packs_weights`); the others on
    // the packed product, each head's keys and values packed per task. Either way a head's
    // products have the shape of its sequence alone, whatever the batch.
    let portable = !Isa::current().packs_weights();
    let run = |(index, slot): (usize, &mut Slot)| {
        slot.scores.resize(seq * score_stride, 0.0);
        slot.inverse_sums.resize(seq, 0.0);
        for task in index * per_slot..((index + 1) * per_slot).min(tasks) {
            let (bi, hi) = (task / heads, task % heads);
            let key_mask = &mask[bi * seq..(bi + 1) * seq];
            if portable {
                matmul(
                    head(q, bi, hi, seq, d),
                    head(k, bi, hi, seq, d).t(),
                    MatMut::new(&mut slot.scores, seq, seq, score_stride),
                    Parallelism::None,
                );
            } else {
                slot.keys.repack(head(k, bi, hi, seq, d));
                // SAFETY: the scores buffer holds seq rows at `score_stride` and is this
                // slot's own.
                unsafe {
                    packed::packed_linear_serial_raw(
                        head(q, bi, hi, seq, d),
                        &slot.keys,
                        slot.scores.as_mut_ptr(),
                        score_stride,
                    )
                };
            }
            let inv = &mut slot.inverse_sums;
            dispatch!(M => {
                for (row, inv) in slot
                    .scores
                    .chunks_exact_mut(score_stride)
                    .zip(inv.iter_mut())
                {
                    *inv = softmax_row_unnormalized::<M>(&mut row[..seq], scale, key_mask);
                }
            });
            if !portable {
                slot.values.repack(head(v, bi, hi, seq, d).t());
            }
            let scores = MatRef::new(&slot.scores, seq, seq, score_stride);
            // SAFETY: `out` was bounds-checked for (batch*seq) x hidden at `out_stride`; each
            // task writes only its own block (rows of sequence bi, columns of head hi, a seq x d
            // block that overlaps neither operand), so concurrent tasks never touch the same
            // element.
            unsafe {
                let block = out_ptr.get().add(bi * seq * out_stride + hi * d);
                if portable {
                    gemm_raw(
                        block,
                        out_stride,
                        false,
                        scores,
                        head(v, bi, hi, seq, d),
                        Parallelism::None,
                    );
                } else {
                    packed::packed_linear_serial_raw(scores, &slot.values, block, out_stride);
                }
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
            dispatch!(M => {
                for row in p.chunks_exact_mut(seq) {
                    softmax_row::<M>(row, scale, key_mask);
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
    MatRef::new(
        &m.data()[bi * seq * m.stride() + hi * d..],
        seq,
        d,
        m.stride(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::testing::random;

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
