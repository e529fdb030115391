//! Building blocks shared by the three families: linear layers, LayerNorm, activations,
//! dropout, scaled-dot-product attention and SqueezeBERT's grouped 1x1 convolution.
//!
//! Everything here stays differentiable (the training issue backpropagates through it) and is
//! written so the model files never touch a kernel directly: this is the one place where
//! faster kernels get swapped in.
//!
//! Inference (no gradient recorded, f32 on the CPU) takes the fused kernels of
//! [`crate::compute`] instead: [`EncoderStack::forward`] runs the whole stack of blocks on plain buffers with
//! the attention, GELU, residual and LayerNorm fused, and [`LayerNorm`] uses the fused row
//! kernel. Everything else (training, half precision, GPUs) takes the composed candle ops.
//!
//! Two measured pitfalls shape the code (see `../shared/STACK-NOTES.md`): candle's batched CPU
//! matmul returns wrong values when the left operand is a transposed view and the right one is
//! broadcast over the batch, so inputs are made contiguous and flattened to 2-D before every
//! matmul with a weight; and candle's fused LayerNorm records no backward and computes the
//! variance as E\[x²\]-mean², so LayerNorm here is the two-pass differentiable form.

use std::borrow::Cow;
use std::sync::Arc;

use anyhow::Result;
use candle_core::{DType, Device, Tensor, D};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::config::{Activation, ModelConfig};
use super::weights::{Init, Params};
use crate::compute::attention::{self as fused_attention, AttentionDims, AttentionScratch};
use crate::compute::bf16::{bf16_linear, Bf16Rows, Bf16Weight};
use crate::compute::dense::{dense_linear, parallelism};
use crate::compute::dropout::{dropout_mask, DropoutDraw};
use crate::compute::int8::{int8_linear, QuantizedRows, QuantizedTable, QuantizedWeight};
use crate::compute::math::{gelu_erf, gelu_tanh, relu};
use crate::compute::norm::add_layer_norm;
use crate::compute::ops::{self, CpuF32};
use crate::compute::packed::{self, packed_linear, Epilogue, PackedWeight};
use crate::compute::{MatMut, MatRef};

/// Whether this forward may take the fused kernels: `x` is an f32 CPU tensor that records no
/// gradient.
fn fused_eligible(x: &Tensor) -> bool {
    CpuF32::of(x).is_some()
}

/// Per-forward state: whether dropout is active, and the seeded generator that drives it (so a
/// resumed training run draws the same masks).
pub struct ForwardCtx {
    rng: Option<StdRng>,
    fused: bool,
}

impl ForwardCtx {
    /// Evaluation: dropout off; the fused kernels where the tensors allow them.
    pub fn inference() -> Self {
        Self {
            rng: None,
            fused: true,
        }
    }

    /// Evaluation through the composed candle ops only: the reference the fused kernels are
    /// tested against, and the baseline their speed-up is measured from.
    pub fn inference_composed() -> Self {
        Self {
            rng: None,
            fused: false,
        }
    }

    /// Training: dropout on, masks drawn from a generator seeded with `seed`; the fused ops
    /// (with their backward passes) where the tensors allow them.
    pub fn training(seed: u64) -> Self {
        Self {
            rng: Some(StdRng::seed_from_u64(seed)),
            fused: true,
        }
    }

    /// Training through the composed candle ops only (same dropout masks as [`Self::training`]
    /// with the same seed): the reference the fused ops' gradients are tested against.
    pub fn training_composed(seed: u64) -> Self {
        Self {
            rng: Some(StdRng::seed_from_u64(seed)),
            fused: false,
        }
    }

    /// Whether the fused kernels and ops may be used.
    pub fn fused(&self) -> bool {
        self.fused
    }

    pub fn is_training(&self) -> bool {
        self.rng.is_some()
    }

    /// Inverted dropout: zero each element with probability `p`, scale the rest by 1/(1-p).
    pub fn dropout(&mut self, x: &Tensor, p: f64) -> Result<Tensor> {
        let Some(drop) = self.draw_dropout(p) else {
            return Ok(x.clone());
        };
        let mut mask = vec![0f32; x.elem_count()];
        dropout_mask(drop, &mut mask);
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        Ok(x.mul(&mask)?)
    }

    /// The next dropout mask's parameters, `None` when dropout is off (evaluation, or `p`
    /// 0). One draw per mask keys a counter-based generator: the mask is filled in parallel
    /// (or block by block, as the training attention does) and still depends only on the seed
    /// and the call order.
    fn draw_dropout(&mut self, p: f64) -> Option<DropoutDraw> {
        let rng = self.rng.as_mut()?;
        if p <= 0.0 {
            return None;
        }
        let keep = 1.0 - p;
        Some(DropoutDraw {
            key: rng.random::<u64>(),
            keep,
            scale: (1.0 / keep) as f32,
        })
    }
}

/// A projection's weight: as loaded (the Hub's layout, any device and dtype), or prepared once
/// by [`crate::models::QaModel::prepare_for_inference`]: packed for [`packed_linear`],
/// quantized to int8 for [`int8_linear`], or rounded to bf16 for [`bf16_linear`]. A prepared
/// weight replaces the tensor (the model holds its weights once); the composed ops still work
/// on it, through a tensor unpacked (or dequantized) afresh on each use.
#[derive(Debug, Clone)]
pub enum Weight {
    Dense(Tensor),
    Packed(Arc<PackedWeight>),
    Int8(Arc<QuantizedWeight>),
    Bf16(Arc<Bf16Weight>),
}

/// What a weight is prepared as for inference (see [`Weight`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// f32, packed for the register kernels.
    Packed,
    /// int8, per output channel.
    Int8,
    /// bf16.
    Bf16,
}

impl Weight {
    /// The weight as a tensor in the Hub's layout (a packed one as `[groups * out, in]`).
    pub fn tensor(&self) -> Result<Cow<'_, Tensor>> {
        Ok(match self {
            Self::Dense(t) => Cow::Borrowed(t),
            Self::Packed(p) => Cow::Owned(Tensor::from_vec(
                p.unpack(),
                (p.groups() * p.n(), p.k()),
                &Device::Cpu,
            )?),
            Self::Int8(q) => Cow::Owned(Tensor::from_vec(
                q.dequantize(),
                (q.groups() * q.n(), q.k()),
                &Device::Cpu,
            )?),
            Self::Bf16(b) => Cow::Owned(Tensor::from_vec(
                b.to_f32(),
                (b.groups() * b.n(), b.k()),
                &Device::Cpu,
            )?),
        })
    }

    /// A prepared weight's `(groups, outputs per group, inputs per group)`; `None` as loaded.
    fn prepared_shape(&self) -> Option<(usize, usize, usize)> {
        match self {
            Self::Dense(_) => None,
            Self::Packed(w) => Some((w.groups(), w.n(), w.k())),
            Self::Int8(w) => Some((w.groups(), w.n(), w.k())),
            Self::Bf16(w) => Some((w.groups(), w.n(), w.k())),
        }
    }

    /// Prepares a dense f32 CPU weight that records no gradient (`groups` blocks of `n` rows)
    /// as `form`; anything else stays as it is.
    fn prepare(&mut self, form: Form, groups: usize, n: usize) {
        let Self::Dense(t) = self else { return };
        if groups * n == 0 {
            return;
        }
        let prepared = CpuF32::of(t).map(|data| {
            let (w, k) = (data.slice(), data.len / (groups * n));
            match form {
                Form::Packed => Self::Packed(Arc::new(PackedWeight::pack(w, groups, n, k))),
                Form::Int8 => Self::Int8(Arc::new(QuantizedWeight::quantize(w, groups, n, k))),
                Form::Bf16 => Self::Bf16(Arc::new(Bf16Weight::convert(w, groups, n, k))),
            }
        });
        if let Some(prepared) = prepared {
            *self = prepared;
        }
    }
}

/// An embedding table (`[rows, hidden]`): as loaded, or, for int8 inference, quantized per
/// row ([`QuantizedTable`]) by [`Self::prepare`], which drops the loaded tensor.
#[derive(Debug, Clone)]
pub enum Table {
    Dense(Tensor),
    Int8(Arc<QuantizedTable>),
}

impl Table {
    /// The word embeddings of `p` (`word_embeddings.weight`, `[vocab, hidden]`, initialised
    /// as transformers' embeddings with the padding row zeroed), prepared as `form` when given.
    pub fn word_embeddings(p: &Params, cfg: &ModelConfig, form: Option<Form>) -> Result<Self> {
        let mut word = Self::Dense(p.get(
            "word_embeddings.weight",
            &[cfg.vocab_size, cfg.hidden_size],
            Init::Embedding {
                std: cfg.initializer_range,
                padding_idx: Some(cfg.pad_token_id),
            },
        )?);
        if let Some(form) = form {
            word.prepare(form);
        }
        Ok(word)
    }

    /// Values per row.
    pub fn dim(&self) -> Result<usize> {
        Ok(match self {
            Self::Dense(t) => t.dim(1)?,
            Self::Int8(q) => q.k(),
        })
    }

    /// Prepares a dense f32 CPU table that records no gradient for inference as `form`: at
    /// int8 it is quantized per row; other forms and tables stay as they are (a lookup reads
    /// each row once: nothing to pack).
    pub fn prepare(&mut self, form: Form) {
        let Self::Dense(t) = self else { return };
        if form != Form::Int8 {
            return;
        }
        let Ok((rows, k)) = t.dims2() else { return };
        let table = CpuF32::of(t).map(|data| QuantizedTable::quantize(data.slice(), rows, k));
        if let Some(table) = table {
            *self = Self::Int8(Arc::new(table));
        }
    }

    /// The rows of `ids` (u32, any shape), as `(ids.elem_count(), dim)`.
    pub fn lookup(&self, ids: &Tensor) -> Result<Tensor> {
        let ids = ids.flatten_all()?;
        match self {
            Self::Dense(t) => Ok(t.index_select(&ids, 0)?),
            Self::Int8(q) => {
                let ids = ids.to_vec1::<u32>()?;
                let mut out = vec![0f32; ids.len() * q.k()];
                if let Err(id) = q.gather(&ids, &mut out) {
                    anyhow::bail!(
                        "token id {id} is outside the embedding table of {} rows",
                        q.rows()
                    );
                }
                Ok(Tensor::from_vec(out, (ids.len(), q.k()), &Device::Cpu)?)
            }
        }
    }
}

/// `y = x W^T + b` with the Hub's `[out, in]` weight layout.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Weight,
    pub bias: Tensor,
}

impl Linear {
    /// A Linear named `p.weight` / `p.bias`, initialised normal(0, std) / zeros.
    pub fn new(p: &Params, in_dim: usize, out_dim: usize, std: f64) -> Result<Self> {
        Ok(Self {
            weight: Weight::Dense(p.get("weight", &[out_dim, in_dim], Init::Normal { std })?),
            bias: p.get("bias", &[out_dim], Init::Zeros)?,
        })
    }

    /// Prepares the weight for inference (see [`Weight`]).
    pub fn prepare(&mut self, form: Form) {
        self.weight.prepare(form, 1, self.bias.dim(0).unwrap_or(0));
    }

    /// `fused`: one op with its own backward (f32 CPU tensors), as [`ForwardCtx::fused`] says.
    pub fn forward(&self, x: &Tensor, fused: bool) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (last, lead) = dims
            .split_last()
            .expect("linear input has at least one dim");
        let rows: usize = lead.iter().product();
        let x2 = x.contiguous()?.reshape((rows, *last))?;
        let packed = if fused {
            forward_prepared(&x2, &self.weight, &self.bias)?
        } else {
            None
        };
        let y = match (packed, &self.weight) {
            (Some(y), _) => y,
            (None, Weight::Dense(w)) if fused && ops::supported(&x2) && ops::supported(w) => {
                x2.apply_op3(w, &self.bias, ops::LinearOp)?
            }
            (None, w) => x2.matmul(&w.tensor()?.t()?)?.broadcast_add(&self.bias)?,
        };
        let mut out_dims = lead.to_vec();
        out_dims.push(self.bias.dim(0)?);
        Ok(y.reshape(out_dims)?)
    }
}

/// `x W^T + b` through a prepared weight's product (packed f32, int8 or bf16: the fused path's
/// [`ProjectionData::forward`]), for a contiguous f32 CPU `rows x k` input of a linear layer
/// (`None` otherwise, or for a weight as loaded). Each output row is computed in the same order
/// whatever the number of rows or threads, and int8 and bf16 take each row's values on their
/// own, so a row's result does not depend on what it is batched with (the `gemm` crate, which
/// the dense path uses, picks its kernels and blocking by shape).
fn forward_prepared(x: &Tensor, weight: &Weight, bias: &Tensor) -> Result<Option<Tensor>> {
    let Some(input) = CpuF32::of(x) else {
        return Ok(None);
    };
    let (rows, k) = x.dims2()?;
    let Some(data) = ProjectionData::of_parts(weight, bias, 1) else {
        return Ok(None);
    };
    let n = data.out_dim();
    if weight.prepared_shape() != Some((1, n, k)) {
        return Ok(None);
    }
    let (mut quantized, mut bf16) = (QuantizedRows::new(), Bf16Rows::new());
    let mut input = Input::new(
        MatRef::new(input.slice(), rows, k, k),
        &mut quantized,
        &mut bf16,
    );
    let mut out = vec![0f32; rows * n];
    data.forward(&mut input, MatMut::new(&mut out, rows, n, n), None);
    Ok(Some(Tensor::from_vec(out, (rows, n), &Device::Cpu)?))
}

/// LayerNorm over the last dimension, two-pass (mean, then variance of the centred values).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(p: &Params, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: p.get("weight", &[dim], Init::Ones)?,
            bias: p.get("bias", &[dim], Init::Zeros)?,
            eps,
        })
    }

    /// `fused`: one op with its own backward (f32 CPU tensors), as [`ForwardCtx::fused`] says.
    pub fn forward(&self, x: &Tensor, fused: bool) -> Result<Tensor> {
        if fused && ops::supported(x) && ops::supported(&self.weight) {
            let op = ops::LayerNormOp {
                eps: self.eps as f32,
            };
            return Ok(x.contiguous()?.apply_op3(&self.weight, &self.bias, op)?);
        }
        let dtype = x.dtype();
        // Half precision accumulates in f32, as PyTorch does.
        let internal = match dtype {
            DType::F16 | DType::BF16 => DType::F32,
            d => d,
        };
        let x = x.to_dtype(internal)?;
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok(normed
            .to_dtype(dtype)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)?)
    }
}

/// Applies the feed-forward activation (GELU through the fused op when `fused` allows and
/// the tensor is f32 on the CPU).
pub fn activate(x: &Tensor, act: Activation, fused: bool) -> Result<Tensor> {
    if fused && ops::supported(x) && act != Activation::Relu {
        let op = ops::GeluOp {
            tanh: act == Activation::GeluTanh,
        };
        return Ok(x.contiguous()?.apply_op1(op)?);
    }
    Ok(match act {
        Activation::Gelu => x.gelu_erf()?,
        Activation::GeluTanh => x.gelu()?,
        Activation::Relu => x.relu()?,
    })
}

/// The additive attention mask transformers builds: 0 where a key is real, the dtype's most
/// negative finite value where it is padding, shaped `(batch, 1, 1, seq)` to broadcast over
/// heads and queries.
pub fn additive_mask(attention_mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let min = match dtype {
        DType::F16 => f64::from(half::f16::MIN),
        DType::BF16 => f64::from(half::bf16::MIN),
        DType::F64 => f64::MIN,
        _ => f64::from(f32::MIN),
    };
    let (b, s) = attention_mask.dims2()?;
    // (1 - mask) * min, computed in f32 (f64 for f64 models, whose minimum f32 cannot hold)
    // then cast, as transformers does.
    let work = if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let m = attention_mask.to_dtype(work)?;
    let masked = m.affine(-1.0, 1.0)?.affine(min, 0.0)?;
    Ok(masked.to_dtype(dtype)?.reshape((b, 1, 1, s))?)
}

/// Softmax over the last dimension: candle's fused kernel when no gradient is needed, the
/// composed (differentiable) form otherwise.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if x.track_op() {
        Ok(candle_nn::ops::softmax(x, D::Minus1)?)
    } else {
        Ok(candle_nn::ops::softmax_last_dim(&x.contiguous()?)?)
    }
}

/// Splits `(batch, seq, heads*dim)` into contiguous `(batch, heads, seq, dim)`.
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, s, h) = x.dims3()?;
    Ok(x.reshape((b, s, heads, h / heads))?
        .transpose(1, 2)?
        .contiguous()?)
}

/// Scaled dot-product attention on `(batch, seq, hidden)` projections: scores scaled by
/// 1/sqrt(head_dim), padded keys masked additively, softmax, dropout on the probabilities, and
/// heads merged back to `(batch, seq, hidden)`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    heads: usize,
    dropout: f64,
    ctx: &mut ForwardCtx,
) -> Result<Tensor> {
    let (b, s, h) = q.dims3()?;
    let head_dim = h / heads;
    if ctx.fused() && ops::supported(q) && ops::supported(k) && ops::supported(v) {
        let dims = AttentionDims {
            batch: b,
            seq: s,
            heads,
            head_dim,
        };
        let mask = mask.flatten_all()?.to_vec1::<f32>()?;
        let op = ops::AttentionOp::new(dims, mask, ctx.draw_dropout(dropout));
        return Ok(q
            .contiguous()?
            .apply_op3(&k.contiguous()?, &v.contiguous()?, op)?);
    }
    let q = split_heads(q, heads)?;
    let k = split_heads(k, heads)?;
    let v = split_heads(v, heads)?;
    let kt = k.transpose(2, 3)?.contiguous()?;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let raw = q.matmul(&kt)?;
    let probs = softmax_last(&raw.affine(scale, 0.0)?.broadcast_add(mask)?)?;
    let probs = ctx.dropout(&probs, dropout)?;
    let context = probs.matmul(&v)?; // (b, heads, s, head_dim)
    Ok(context.transpose(1, 2)?.reshape((b, s, h))?)
}

/// A 1x1 `Conv1d` with groups, applied in `(batch, seq, channels)` layout as a batched matmul
/// of the per-group blocks (faster than candle's grouped conv, whose backward is wrong for
/// batch > 1). Weight layout is the Hub's Conv1d `[c_out, c_in/groups, 1]`.
#[derive(Debug, Clone)]
pub struct GroupedPointwiseConv {
    pub weight: Weight,
    pub bias: Tensor,
    pub groups: usize,
}

impl GroupedPointwiseConv {
    pub fn new(p: &Params, c_in: usize, c_out: usize, groups: usize, std: f64) -> Result<Self> {
        let weight = p.get("weight", &[c_out, c_in / groups, 1], Init::Normal { std })?;
        Ok(Self {
            weight: Weight::Dense(weight),
            bias: p.get("bias", &[c_out], Init::Zeros)?,
            groups,
        })
    }

    /// Prepares the weight for inference (see [`Weight`]), one block per group.
    pub fn prepare(&mut self, form: Form) {
        let c_out = self.bias.dim(0).unwrap_or(0);
        self.weight.prepare(form, self.groups, c_out / self.groups);
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, s, c_in) = x.dims3()?;
        let c_out = self.bias.dim(0)?;
        let g = self.groups;
        let cin_g = c_in / g;
        let n = b * s;
        let x = x.contiguous()?.reshape((n, c_in))?;
        let weight = self.weight.tensor()?;
        let y = if g == 1 {
            x.matmul(&weight.reshape((c_out, cin_g))?.t()?)?
        } else {
            // Group i of the output reads input channels i*cin_g .. (i+1)*cin_g.
            let xg = x.reshape((n, g, cin_g))?.transpose(0, 1)?.contiguous()?; // (g, n, cin_g)
                                                                               // The weight's (g, cout_g, cin_g) blocks, transposed as a view: the matmul reads
                                                                               // them in place (a contiguous left operand and a real batch stride on the right
                                                                               // keep clear of candle's strided-matmul bug), so no weight is copied per forward.
            let blocks = weight.reshape((g, c_out / g, cin_g))?.transpose(1, 2)?;
            let yg = xg.matmul(&blocks)?; // (g, n, cout_g)
            yg.transpose(0, 1)?.reshape((n, c_out))?
        };
        Ok(y.broadcast_add(&self.bias)?.reshape((b, s, c_out))?)
    }
}

/// A projection inside an encoder block: a Linear layer, or SqueezeBERT's grouped 1x1 conv.
#[derive(Debug, Clone)]
pub enum Projection {
    Linear(Linear),
    Grouped(GroupedPointwiseConv),
}

impl Projection {
    /// Prepares the weight for inference (see [`Weight`]).
    pub fn prepare(&mut self, form: Form) {
        match self {
            Projection::Linear(l) => l.prepare(form),
            Projection::Grouped(c) => c.prepare(form),
        }
    }

    pub fn forward(&self, x: &Tensor, fused: bool) -> Result<Tensor> {
        match self {
            Projection::Linear(l) => l.forward(x, fused),
            Projection::Grouped(c) => c.forward(x),
        }
    }
}

/// The post-LayerNorm transformer block all three families share:
/// `x1 = LN(x + drop(out(attention(q(x), k(x), v(x)))))`, `y = LN(x1 + drop(ffn_out(act(ffn_in(x1)))))`.
/// DistilBERT applies no dropout to the attention output; the others do.
#[derive(Debug, Clone)]
pub struct EncoderBlock {
    pub query: Projection,
    pub key: Projection,
    pub value: Projection,
    pub attention_output: Projection,
    pub attention_norm: LayerNorm,
    pub ffn_in: Projection,
    pub ffn_out: Projection,
    pub output_norm: LayerNorm,
    pub heads: usize,
    pub activation: Activation,
    pub hidden_dropout: f64,
    pub attention_dropout: f64,
    pub dropout_on_attention_output: bool,
}

impl EncoderBlock {
    /// Prepares every projection's weight for inference (see [`Weight`]).
    pub fn prepare(&mut self, form: Form) {
        self.projections_mut().for_each(|p| p.prepare(form));
    }

    /// [`Self::prepare`], then the freed pages go back: block by block, because the heap cannot
    /// always reuse a freed weight's space for the next prepared one (sizes differ), and the
    /// peak would grow by the gaps.
    pub fn prepare_releasing(&mut self, form: Form) {
        self.prepare(form);
        crate::runtime::release_free_memory();
    }

    /// The six projections: attention's query, key, value and output, the feed-forward's two.
    fn projections_mut(&mut self) -> impl Iterator<Item = &mut Projection> {
        [
            &mut self.query,
            &mut self.key,
            &mut self.value,
            &mut self.attention_output,
            &mut self.ffn_in,
            &mut self.ffn_out,
        ]
        .into_iter()
    }

    /// `mask` is the additive `(batch, 1, 1, seq)` mask from [`additive_mask`].
    pub fn forward(&self, x: &Tensor, mask: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let fused = ctx.fused();
        let q = self.query.forward(x, fused)?;
        let k = self.key.forward(x, fused)?;
        let v = self.value.forward(x, fused)?;
        let context = attention(&q, &k, &v, mask, self.heads, self.attention_dropout, ctx)?;
        let mut attended = self.attention_output.forward(&context, fused)?;
        if self.dropout_on_attention_output {
            attended = ctx.dropout(&attended, self.hidden_dropout)?;
        }
        let x1 = self.attention_norm.forward(&(attended + x)?, fused)?;
        let inner = activate(&self.ffn_in.forward(&x1, fused)?, self.activation, fused)?;
        let out = ctx.dropout(&self.ffn_out.forward(&inner, fused)?, self.hidden_dropout)?;
        self.output_norm.forward(&(out + x1)?, fused)
    }
}

/// A model's stack of encoder blocks, with the buffers of the fused inference path kept from
/// one forward to the next.
#[derive(Debug, Clone)]
pub struct EncoderStack {
    blocks: Vec<EncoderBlock>,
    workspace: Workspace,
}

impl EncoderStack {
    pub fn new(blocks: Vec<EncoderBlock>) -> Self {
        Self {
            blocks,
            workspace: Workspace::default(),
        }
    }

    /// Builds `layers` blocks with `block(n)`, each prepared as `form` (when given) as soon as it
    /// is built, so that its loaded f32 weights are dropped before the next block is read:
    /// loading for inference never holds more than one block's f32 weights beside the prepared
    /// ones (measured, BERT-base int8: peak RSS 429 MB when the whole f32 model was loaded
    /// first and prepared after, see docs/precision.md).
    pub fn build(
        layers: usize,
        form: Option<Form>,
        mut block: impl FnMut(usize) -> Result<EncoderBlock>,
    ) -> Result<Self> {
        let mut blocks = Vec::with_capacity(layers);
        for n in 0..layers {
            let mut built = block(n)?;
            if let Some(form) = form {
                built.prepare_releasing(form);
            }
            blocks.push(built);
        }
        Ok(Self::new(blocks))
    }

    /// The blocks, for [`crate::models::QaModel::prepare_for_inference`].
    pub fn blocks_mut(&mut self) -> &mut [EncoderBlock] {
        &mut self.blocks
    }

    /// Runs the blocks on `(batch, seq, hidden)` activations: the fused kernels when this is
    /// inference on f32 CPU tensors (and `ctx` allows them), the composed, differentiable ops
    /// otherwise. `mask` is the additive mask from [`additive_mask`].
    pub fn forward(&self, x: Tensor, mask: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        if ctx.fused() && !ctx.is_training() && fused_eligible(&x) {
            let fused = || {
                // A forward running meanwhile on the same model holds the buffers: this one
                // takes fresh ones.
                let mut fresh = Buffers::default();
                let mut held = self.workspace.0.try_lock().ok();
                let buffers = held.as_deref_mut().unwrap_or(&mut fresh);
                encode_fused(&self.blocks, &x, mask, buffers)
            };
            if let Some(y) = crate::runtime::on_compute_pool(fused)? {
                return Ok(y);
            }
        }
        let mut x = x;
        for layer in &self.blocks {
            x = layer.forward(&x, mask, ctx)?;
        }
        Ok(x)
    }
}

/// The fused path's buffers ([`encode_fused`]), kept by the model between forwards: allocating
/// them each time paid for zeroing them, and (above glibc's 32 MiB heap limit, e.g. the
/// feed-forward's at BERT-base 8x384) for fresh pages, about 1% of a forward at large shapes.
/// They keep the size of the largest input seen so far, which the forward's peak memory
/// included anyway. A clone of the model starts with none.
#[derive(Default)]
struct Workspace(std::sync::Mutex<Buffers>);

impl Clone for Workspace {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Workspace")
    }
}

/// The hidden state and a spare, the q/k/v projections side by side, the attention context,
/// the feed-forward's inner activations and the attention's scratch.
#[derive(Default)]
struct Buffers {
    hidden: Vec<f32>,
    spare: Vec<f32>,
    qkv: Vec<f32>,
    context: Vec<f32>,
    ffn: Vec<f32>,
    attention: AttentionScratch,
    /// The int8 projections' input, quantized once for every projection that reads it.
    quantized: QuantizedRows,
    /// The bf16 projections' input, likewise.
    bf16: Bf16Rows,
}

/// A projection's input as the fused path hands it over: the f32 activations, and (for int8
/// or bf16 weights) their quantized or rounded form, made when a projection first asks and
/// reused by the others that read the same input (the query, key and value).
struct Input<'a> {
    x: MatRef<'a>,
    buffers: (&'a mut QuantizedRows, &'a mut Bf16Rows),
    /// The groups the buffers hold the input for, once they do.
    quantized_for: Option<usize>,
    bf16_for: Option<usize>,
}

impl<'a> Input<'a> {
    fn new(x: MatRef<'a>, quantized: &'a mut QuantizedRows, bf16: &'a mut Bf16Rows) -> Self {
        Self {
            x,
            buffers: (quantized, bf16),
            quantized_for: None,
            bf16_for: None,
        }
    }

    /// The input quantized per row for `groups` blocks of columns.
    fn quantized(&mut self, groups: usize) -> &QuantizedRows {
        if self.quantized_for != Some(groups) {
            let threads = rayon::current_num_threads();
            self.buffers.0.quantize(self.x, groups, threads);
            self.quantized_for = Some(groups);
        }
        self.buffers.0
    }

    /// The input rounded to bf16 for `groups` blocks of columns.
    fn bf16(&mut self, groups: usize) -> &Bf16Rows {
        if self.bf16_for != Some(groups) {
            let threads = rayon::current_num_threads();
            self.buffers.1.convert(self.x, groups, threads);
            self.bf16_for = Some(groups);
        }
        self.buffers.1
    }
}

/// A projection's weights, readable by the kernels: `groups` blocks (1 for a linear layer)
/// of `out / groups` outputs, each reading its own `in / groups` columns.
enum ProjectionData<'a> {
    /// Packed for [`packed_linear`] (see [`Weight`]).
    Packed {
        weight: &'a PackedWeight,
        bias: CpuF32<'a>,
    },
    /// Quantized for [`int8_linear`].
    Int8 {
        weight: &'a QuantizedWeight,
        bias: CpuF32<'a>,
    },
    /// Rounded for [`bf16_linear`].
    Bf16 {
        weight: &'a Bf16Weight,
        bias: CpuF32<'a>,
    },
    /// As loaded (a model not prepared for inference).
    Dense {
        weight: CpuF32<'a>,
        bias: CpuF32<'a>,
        groups: usize,
    },
}

impl<'a> ProjectionData<'a> {
    fn of(p: &'a Projection) -> Option<Self> {
        match p {
            Projection::Linear(l) => Self::of_parts(&l.weight, &l.bias, 1),
            Projection::Grouped(c) => Self::of_parts(&c.weight, &c.bias, c.groups),
        }
    }

    /// A projection's data from its weight, bias and groups (`None` unless f32 on the CPU).
    fn of_parts(weight: &'a Weight, bias: &'a Tensor, groups: usize) -> Option<Self> {
        let bias = CpuF32::of(bias)?;
        Some(match weight {
            Weight::Packed(weight) => Self::Packed { weight, bias },
            Weight::Int8(weight) => Self::Int8 { weight, bias },
            Weight::Bf16(weight) => Self::Bf16 { weight, bias },
            Weight::Dense(w) => Self::Dense {
                weight: CpuF32::of(w)?,
                bias,
                groups,
            },
        })
    }

    fn out_dim(&self) -> usize {
        match self {
            Self::Packed { bias, .. }
            | Self::Int8 { bias, .. }
            | Self::Bf16 { bias, .. }
            | Self::Dense { bias, .. } => bias.len,
        }
    }

    /// `out = act(project(x))`; a grouped projection is one product per group on column
    /// blocks of `x` and `out`, read and written in place. Prepared weights (packed, int8,
    /// bf16) apply `act` inside the product (see [`Epilogue`]).
    fn forward(&self, input: &mut Input, mut out: MatMut, act: Option<Epilogue>) {
        let x = input.x;
        match self {
            Self::Int8 { weight, bias } => int8_linear(
                input.quantized(weight.groups()),
                weight,
                Some(bias.slice()),
                act,
                out,
                rayon::current_num_threads(),
            ),
            Self::Bf16 { weight, bias } => bf16_linear(
                input.bf16(weight.groups()),
                weight,
                Some(bias.slice()),
                act,
                out,
                rayon::current_num_threads(),
            ),
            Self::Packed { weight, bias } => packed_linear(
                x,
                weight,
                Some(bias.slice()),
                act,
                out,
                rayon::current_num_threads(),
            ),
            Self::Dense {
                weight,
                bias,
                groups,
            } => {
                let (cin, cout) = (x.cols() / groups, out.cols() / groups);
                for g in 0..*groups {
                    let w = &weight.slice()[g * cout * cin..(g + 1) * cout * cin];
                    dense_linear(
                        x.columns(g * cin, cin),
                        MatRef::new(w, cout, cin, cin),
                        Some(&bias.slice()[g * cout..(g + 1) * cout]),
                        out.columns(g * cout, cout),
                        parallelism(),
                    );
                }
                if let Some(act) = act {
                    out.for_each_row(act);
                }
            }
        }
    }
}

/// One block's parameters, readable by the kernels.
struct BlockData<'a> {
    query: ProjectionData<'a>,
    key: ProjectionData<'a>,
    value: ProjectionData<'a>,
    attention_output: ProjectionData<'a>,
    attention_norm: [CpuF32<'a>; 2],
    ffn_in: ProjectionData<'a>,
    ffn_out: ProjectionData<'a>,
    output_norm: [CpuF32<'a>; 2],
}

impl<'a> BlockData<'a> {
    fn of(b: &'a EncoderBlock) -> Option<Self> {
        Some(Self {
            query: ProjectionData::of(&b.query)?,
            key: ProjectionData::of(&b.key)?,
            value: ProjectionData::of(&b.value)?,
            attention_output: ProjectionData::of(&b.attention_output)?,
            attention_norm: [
                CpuF32::of(&b.attention_norm.weight)?,
                CpuF32::of(&b.attention_norm.bias)?,
            ],
            ffn_in: ProjectionData::of(&b.ffn_in)?,
            ffn_out: ProjectionData::of(&b.ffn_out)?,
            output_norm: [
                CpuF32::of(&b.output_norm.weight)?,
                CpuF32::of(&b.output_norm.bias)?,
            ],
        })
    }
}

/// The fused inference path of [`EncoderStack::forward`]: the activations live in `buffers`,
/// reused by every block (and kept for the next forward); nothing is transposed or copied
/// between kernels. `None` when some parameter is not an f32 CPU tensor (then nothing was
/// computed).
fn encode_fused(
    layers: &[EncoderBlock],
    x: &Tensor,
    mask: &Tensor,
    buffers: &mut Buffers,
) -> Result<Option<Tensor>> {
    let (b, s, h) = x.dims3()?;
    let rows = b * s;
    let (Some(input), Some(mask_data)) = (CpuF32::of(x), CpuF32::of(mask)) else {
        return Ok(None);
    };
    if mask_data.len != rows {
        return Ok(None);
    }
    let Some(blocks) = layers.iter().map(BlockData::of).collect::<Option<Vec<_>>>() else {
        return Ok(None);
    };
    let inner = blocks.iter().map(|d| d.ffn_in.out_dim()).max().unwrap_or(0);
    // Rows padded where the product prefers it (see `packed::activation_stride`). Every value
    // a kernel reads is written first in this forward: what a buffer held before is not read.
    let at = Layout {
        batch: b,
        seq: s,
        width: h,
        hidden: packed::activation_stride(h),
        qkv: packed::activation_stride(3 * h),
        context: packed::activation_stride(h),
        ffn: packed::activation_stride(inner),
    };
    for (buffer, stride) in [
        (&mut buffers.hidden, at.hidden),
        (&mut buffers.spare, at.hidden),
        (&mut buffers.qkv, at.qkv),
        (&mut buffers.context, at.context),
        (&mut buffers.ffn, at.ffn),
    ] {
        buffer.resize(rows * stride, 0.0);
    }
    for (to, from) in buffers
        .hidden
        .chunks_exact_mut(at.hidden)
        .zip(input.slice().chunks_exact(h))
    {
        to[..h].copy_from_slice(from);
    }
    for (layer, d) in layers.iter().zip(&blocks) {
        encode_block(layer, d, mask_data.slice(), at, buffers);
    }
    let mut out = Vec::with_capacity(rows * h);
    for row in buffers.hidden.chunks_exact(at.hidden) {
        out.extend_from_slice(&row[..h]);
    }
    Ok(Some(Tensor::from_vec(out, (b, s, h), &Device::Cpu)?))
}

/// The shape of a fused forward's activations: `batch x seq` rows of `width` values, each
/// buffer's rows at its stride.
#[derive(Debug, Clone, Copy)]
struct Layout {
    batch: usize,
    seq: usize,
    width: usize,
    /// The strides of the hidden states (and their spare), the query-key-value rows, the
    /// attention's context and the feed-forward's inner activations.
    hidden: usize,
    qkv: usize,
    context: usize,
    ffn: usize,
}

/// One encoder block of the fused path, from `buffers.hidden` back into `buffers.hidden`
/// (through `spare`, swapped twice): attention, its output projection with residual and
/// LayerNorm, then the feed-forward with residual and LayerNorm.
fn encode_block(
    layer: &EncoderBlock,
    d: &BlockData,
    mask: &[f32],
    at: Layout,
    buffers: &mut Buffers,
) {
    let (rows, h, i) = (at.batch * at.seq, at.width, d.ffn_in.out_dim());
    let (mut hidden, mut spare) = (&mut buffers.hidden, &mut buffers.spare);
    let (qkv, context, ffn) = (&mut buffers.qkv, &mut buffers.context, &mut buffers.ffn);
    let (quantized, bf16) = (&mut buffers.quantized, &mut buffers.bf16);
    let mut x_in = Input::new(MatRef::new(hidden, rows, h, at.hidden), quantized, bf16);
    let mut qkv_view = MatMut::new(qkv, rows, 3 * h, at.qkv);
    d.query.forward(&mut x_in, qkv_view.columns(0, h), None);
    d.key.forward(&mut x_in, qkv_view.columns(h, h), None);
    d.value.forward(&mut x_in, qkv_view.columns(2 * h, h), None);
    let qkv_ref = MatRef::new(qkv, rows, 3 * h, at.qkv);
    fused_attention::attention(
        qkv_ref.columns(0, h),
        qkv_ref.columns(h, h),
        qkv_ref.columns(2 * h, h),
        mask,
        at.batch,
        at.seq,
        layer.heads,
        MatMut::new(context, rows, h, at.context),
        &mut buffers.attention,
    );
    d.attention_output.forward(
        &mut Input::new(MatRef::new(context, rows, h, at.context), quantized, bf16),
        MatMut::new(spare, rows, h, at.hidden),
        None,
    );
    let [g, beta] = &d.attention_norm;
    let eps = layer.attention_norm.eps as f32;
    add_layer_norm(spare, Some(hidden), at.hidden, g.slice(), beta.slice(), eps);
    std::mem::swap(&mut hidden, &mut spare);

    let act: Epilogue = match layer.activation {
        Activation::Gelu => gelu_erf,
        Activation::GeluTanh => gelu_tanh,
        Activation::Relu => relu,
    };
    d.ffn_in.forward(
        &mut Input::new(MatRef::new(hidden, rows, h, at.hidden), quantized, bf16),
        MatMut::new(ffn, rows, i, at.ffn),
        Some(act),
    );
    d.ffn_out.forward(
        &mut Input::new(MatRef::new(ffn, rows, i, at.ffn), quantized, bf16),
        MatMut::new(spare, rows, h, at.hidden),
        None,
    );
    let [g, beta] = &d.output_norm;
    let eps = layer.output_norm.eps as f32;
    // Into `buffers.hidden` (`spare` since the swap): the block's output is where its input was.
    add_layer_norm(spare, Some(hidden), at.hidden, g.slice(), beta.slice(), eps);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::weights::RandomInit;
    use candle_core::Device;

    /// A grouped 1x1 convolution equals a dense one with a block-diagonal weight.
    #[test]
    fn grouped_conv_is_block_diagonal_matmul() -> Result<()> {
        let dev = Device::Cpu;
        let src = RandomInit::new(3, DType::F32, &dev);
        let p = Params::new(&src);
        let (c_in, c_out, g) = (8, 12, 4);
        let mut conv = GroupedPointwiseConv::new(&p.pp("c"), c_in, c_out, g, 0.5)?;
        conv.bias = Tensor::randn(0f32, 1.0, c_out, &dev)?;
        let x = Tensor::randn(0f32, 1.0, (2, 5, c_in), &dev)?;
        let y: Vec<f32> = conv.forward(&x)?.flatten_all()?.to_vec1()?;
        let w: Vec<f32> = conv.weight.tensor()?.flatten_all()?.to_vec1()?;
        let bias: Vec<f32> = conv.bias.to_vec1()?;
        let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let (cin_g, cout_g) = (c_in / g, c_out / g);
        for row in 0..10 {
            for o in 0..c_out {
                let grp = o / cout_g;
                let mut acc = bias[o];
                for i in 0..cin_g {
                    acc += w[o * cin_g + i] * xs[row * c_in + grp * cin_g + i];
                }
                assert!((acc - y[row * c_out + o]).abs() < 1e-5);
            }
        }
        Ok(())
    }

    #[test]
    fn layer_norm_normalises_and_keeps_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let ln = LayerNorm {
            weight: Tensor::ones(4, DType::F32, &dev)?,
            bias: Tensor::zeros(4, DType::F32, &dev)?,
            eps: 1e-12,
        };
        // A large common offset: the E[x^2]-mean^2 form would lose all precision here.
        let x = Tensor::new(&[[1000.0f32, 1001.0, 1002.0, 1003.0]], &dev)?;
        let y: Vec<f32> = ln.forward(&x, false)?.flatten_all()?.to_vec1()?;
        let expect = [-1.3416408f32, -0.4472136, 0.4472136, 1.3416408];
        for (a, b) in y.iter().zip(expect) {
            assert!((a - b).abs() < 1e-5, "{y:?}");
        }
        Ok(())
    }

    #[test]
    fn dropout_is_seeded_and_scaled() -> Result<()> {
        let x = Tensor::ones((1000,), DType::F32, &Device::Cpu)?;
        let a: Vec<f32> = ForwardCtx::training(1).dropout(&x, 0.25)?.to_vec1()?;
        let b: Vec<f32> = ForwardCtx::training(1).dropout(&x, 0.25)?.to_vec1()?;
        assert_eq!(a, b);
        let zeros = a.iter().filter(|v| **v == 0.0).count();
        assert!((180..320).contains(&zeros), "{zeros} zeros");
        assert!(a
            .iter()
            .all(|v| *v == 0.0 || (*v - 1.0 / 0.75).abs() < 1e-6));
        let c: Vec<f32> = ForwardCtx::inference().dropout(&x, 0.25)?.to_vec1()?;
        assert!(c.iter().all(|v| *v == 1.0));
        Ok(())
    }

    #[test]
    fn mask_uses_the_dtype_minimum() -> Result<()> {
        let m = Tensor::new(&[[1u32, 1, 0]], &Device::Cpu)?;
        let add: Vec<f32> = additive_mask(&m, DType::F32)?.flatten_all()?.to_vec1()?;
        assert_eq!(add, vec![0.0, 0.0, f32::MIN]);
        Ok(())
    }
}
