//! candle ops backed by the fused kernels of this layer, each with its backward pass:
//! what a forward that records gradients (training) uses on f32 CPU tensors instead of the
//! composed ops: the composed LayerNorm (seven ops forward, more backward), libm's
//! single-threaded `gelu_erf` and the three-op softmax took a large share of a training step
//! (docs/performance.md, "Measurements behind the code").
//!
//! The backward passes are themselves fused kernels (they record no graph: second derivatives
//! are not needed). `tests/train.rs` checks every gradient against the composed ops.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp3, DType, Layout, Shape, Storage, StorageRef, Tensor,
};

use std::sync::Mutex;

use super::attention::{attention_train_backward, attention_train_forward, AttentionDims};
use super::dense::{column_sums, dense_linear, matmul, parallelism};
use super::dropout::DropoutDraw;
use super::math::{gelu_backward, gelu_erf, gelu_tanh};
use super::norm::{add_layer_norm, layer_norm_backward};
use super::view::{MatMut, MatRef};

type CResult<T> = candle_core::Result<T>;

/// Whether `t` can go through these ops: f32 on the CPU.
pub fn supported(t: &Tensor) -> bool {
    t.dtype() == DType::F32 && t.device().is_cpu()
}

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> CResult<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: needs a contiguous input")))?;
    Ok(&data[start..end])
}

/// Read access to the data of a contiguous f32 CPU tensor, without copying: what the kernels
/// work on.
pub(crate) struct CpuF32<'a> {
    storage: StorageRef<'a>,
    start: usize,
    pub len: usize,
}

impl<'a> CpuF32<'a> {
    /// `None` when the tensor is not a contiguous f32 tensor on the CPU.
    pub fn data(t: &'a Tensor) -> Option<Self> {
        if !supported(t) {
            return None;
        }
        let (storage, layout) = t.storage_and_layout();
        let (start, end) = layout.contiguous_offsets()?;
        matches!(&*storage, Storage::Cpu(_)).then_some(Self {
            storage,
            start,
            len: end - start,
        })
    }

    /// As [`Self::data`], and `None` too when the tensor records a gradient (the fused
    /// inference path must not silently cut a graph).
    pub fn of(t: &'a Tensor) -> Option<Self> {
        if t.track_op() {
            return None;
        }
        Self::data(t)
    }

    pub fn slice(&self) -> &[f32] {
        match &*self.storage {
            Storage::Cpu(cpu) => {
                let all = cpu.as_slice::<f32>().expect("checked f32 in CpuF32::data");
                &all[self.start..self.start + self.len]
            }
            _ => unreachable!("checked CPU storage in CpuF32::data"),
        }
    }
}

/// Runs `f` on a tensor's f32 data (copied to a contiguous layout first if it is not one).
fn read<R>(t: &Tensor, op: &str, f: impl FnOnce(&[f32]) -> R) -> CResult<R> {
    let t = t.contiguous()?;
    let data = CpuF32::data(&t)
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: f32 CPU tensors only")))?;
    Ok(f(data.slice()))
}

/// A gradient as an owned, contiguous f32 vector: the buffer the backward kernels write into.
fn owned(grad: &Tensor) -> CResult<Vec<f32>> {
    grad.flatten_all()?.to_vec1::<f32>()
}

/// GELU, exact (`tanh: false`) or the tanh form.
pub struct GeluOp {
    pub tanh: bool,
}

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "bertbench-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let mut y = contiguous(s, l, self.name())?.to_vec();
        if self.tanh {
            gelu_tanh(&mut y);
        } else {
            gelu_erf(&mut y);
        }
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        let mut dx = owned(grad)?;
        read(arg, self.name(), |x| gelu_backward(x, &mut dx, self.tanh))?;
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

/// LayerNorm over the last dimension of `x`, with `gamma` and `beta` (two-pass statistics).
pub struct LayerNormOp {
    pub eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "bertbench-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let mut y = contiguous(s1, l1, self.name())?.to_vec();
        let gamma = contiguous(s2, l2, self.name())?;
        let beta = contiguous(s3, l3, self.name())?;
        add_layer_norm(&mut y, None, gamma.len(), gamma, beta, self.eps);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let mut dx = owned(grad)?;
        let (dgamma, dbeta) = read(x, self.name(), |x| {
            read(gamma, self.name(), |g| {
                layer_norm_backward(x, &mut dx, g, self.eps)
            })
        })??;
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dgamma, gamma.shape(), dev)?),
            Some(Tensor::from_vec(dbeta, beta.shape(), dev)?),
        ))
    }
}

/// A linear layer `y = x W^T + b` on 2-D `x` (`rows x in`), `W` in the Hub's `[out, in]`
/// layout. Its backward produces `dW` directly in that layout and `db` as column sums, where
/// the composed form (matmul with a transposed view, then a broadcast add) had candle
/// transpose, copy and add the weight gradient through strided element-wise ops.
pub struct LinearOp;

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "bertbench-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (rows, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        if k != k2 || l3.shape().dims() != [n] {
            return Err(candle_core::Error::Msg(format!(
                "{}: shapes {:?} x {:?}^T + {:?}",
                self.name(),
                l1.shape().dims(),
                l2.shape().dims(),
                l3.shape().dims()
            )));
        }
        let x = contiguous(s1, l1, self.name())?;
        let w = contiguous(s2, l2, self.name())?;
        let b = contiguous(s3, l3, self.name())?;
        let mut y = vec![0f32; rows * n];
        dense_linear(
            MatRef::new(x, rows, k, k),
            MatRef::new(w, n, k, k),
            Some(b),
            MatMut::new(&mut y, rows, n, n),
            parallelism(),
        );
        Ok((CpuStorage::F32(y), Shape::from((rows, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (rows, k) = x.dims2()?;
        let n = w.dim(0)?;
        let par = parallelism();
        let (dx, dw, db) = read(grad, self.name(), |dy| {
            let dy_m = MatRef::new(dy, rows, n, n);
            let mut dx = vec![0f32; rows * k];
            let mut dw = vec![0f32; n * k];
            read(w, self.name(), |w| {
                matmul(
                    dy_m,
                    MatRef::new(w, n, k, k),
                    MatMut::new(&mut dx, rows, k, k),
                    par,
                )
            })?;
            read(x, self.name(), |x| {
                matmul(
                    dy_m.t(),
                    MatRef::new(x, rows, k, k),
                    MatMut::new(&mut dw, n, k, k),
                    par,
                )
            })?;
            Ok::<_, candle_core::Error>((dx, dw, column_sums(dy, n)))
        })??;
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, (rows, k), dev)?),
            Some(Tensor::from_vec(dw, (n, k), dev)?),
            Some(Tensor::from_vec(db, n, dev)?),
        ))
    }
}

/// Multi-head attention on the `(batch, seq, hidden)` query, key and value projections, as one
/// graph node ([`attention_train_forward`]): scaled scores, the additive key mask
/// (`batch x seq`), softmax, dropout on the probabilities (the mask drawn again from its key in
/// the backward) and heads merged. The forward keeps the probabilities for the backward.
pub struct AttentionOp {
    dims: AttentionDims,
    mask: Vec<f32>,
    dropout: Option<DropoutDraw>,
    probs: Mutex<Vec<f32>>,
}

impl AttentionOp {
    pub fn new(dims: AttentionDims, mask: Vec<f32>, dropout: Option<DropoutDraw>) -> Self {
        Self {
            dims,
            mask,
            dropout,
            probs: Mutex::new(Vec::new()),
        }
    }

    fn check(&self, l: &Layout) -> CResult<()> {
        let AttentionDims {
            batch,
            seq,
            heads,
            head_dim,
        } = self.dims;
        let want = [batch, seq, heads * head_dim];
        if l.shape().dims() != want || self.mask.len() != batch * seq {
            return Err(candle_core::Error::Msg(format!(
                "{}: input shape {:?} and mask of {}, expected {want:?} and {}",
                self.name(),
                l.shape().dims(),
                self.mask.len(),
                batch * seq
            )));
        }
        Ok(())
    }
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "bertbench-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        for l in [l1, l2, l3] {
            self.check(l)?;
        }
        let (q, k, v) = (
            contiguous(s1, l1, self.name())?,
            contiguous(s2, l2, self.name())?,
            contiguous(s3, l3, self.name())?,
        );
        let d = self.dims;
        let mut probs = vec![0f32; d.batch * d.heads * d.seq * d.seq];
        let mut out = vec![0f32; q.len()];
        attention_train_forward(q, k, v, &self.mask, d, self.dropout, &mut probs, &mut out);
        *self.probs.lock().expect("attention probabilities lock") = probs;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let probs = self.probs.lock().expect("attention probabilities lock");
        if probs.is_empty() {
            return Err(candle_core::Error::Msg(format!(
                "{}: backward before forward",
                self.name()
            )));
        }
        let n = q.elem_count();
        let (mut dq, mut dk, mut dv) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        read(q, self.name(), |q| {
            read(k, self.name(), |k| {
                read(v, self.name(), |v| {
                    read(grad, self.name(), |g| {
                        attention_train_backward(
                            q,
                            k,
                            v,
                            &probs,
                            self.dims,
                            self.dropout,
                            g,
                            &mut dq,
                            &mut dk,
                            &mut dv,
                        )
                    })
                })
            })
        })????;
        let tensor = |data| Tensor::from_vec(data, q.shape(), q.device());
        Ok((Some(tensor(dq)?), Some(tensor(dk)?), Some(tensor(dv)?)))
    }
}
