//! SqueezeBERT (Iandola et al., 2020) as transformers' `SqueezeBertModel`: BERT's embeddings,
//! then blocks whose projections are grouped 1x1 convolutions. transformers runs them in
//! `(batch, channels, seq)` layout; the maths is per position, so this runs them in
//! `(batch, seq, channels)` and never transposes the activations.

use anyhow::Result;
use candle_core::Tensor;

use super::bert::Embeddings;
use super::config::ModelConfig;
use super::layers::{activate, attention, ForwardCtx, GroupedPointwiseConv, LayerNorm, Linear};
use super::weights::Params;

#[derive(Debug, Clone)]
struct Layer {
    query: GroupedPointwiseConv,
    key: GroupedPointwiseConv,
    value: GroupedPointwiseConv,
    post_attention: GroupedPointwiseConv,
    post_attention_norm: LayerNorm,
    intermediate: GroupedPointwiseConv,
    output: GroupedPointwiseConv,
    output_norm: LayerNorm,
}

#[derive(Debug, Clone)]
pub struct SqueezeBert {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    /// Part of `SqueezeBertModel` (and of the Hub checkpoints and parameter count); the QA head
    /// does not use its output.
    _pooler: Linear,
    cfg: ModelConfig,
}

impl SqueezeBert {
    /// `p` points at the base model (`transformer.` in a QA checkpoint).
    pub fn new(p: &Params, cfg: &ModelConfig) -> Result<Self> {
        let g = cfg.squeeze_groups.expect("squeezebert config has groups");
        let std = cfg.initializer_range;
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let eps = cfg.encoder_layer_norm_eps;
        let layers = (0..cfg.num_layers)
            .map(|n| {
                let l = p.pp("encoder.layers").pp(n);
                Ok(Layer {
                    query: GroupedPointwiseConv::new(&l.pp("attention.query"), h, h, g.q, std)?,
                    key: GroupedPointwiseConv::new(&l.pp("attention.key"), h, h, g.k, std)?,
                    value: GroupedPointwiseConv::new(&l.pp("attention.value"), h, h, g.v, std)?,
                    post_attention: GroupedPointwiseConv::new(
                        &l.pp("post_attention.conv1d"),
                        h,
                        h,
                        g.post_attention,
                        std,
                    )?,
                    post_attention_norm: LayerNorm::new(&l.pp("post_attention.layernorm"), h, eps)?,
                    intermediate: GroupedPointwiseConv::new(
                        &l.pp("intermediate.conv1d"),
                        h,
                        i,
                        g.intermediate,
                        std,
                    )?,
                    output: GroupedPointwiseConv::new(&l.pp("output.conv1d"), i, h, g.output, std)?,
                    output_norm: LayerNorm::new(&l.pp("output.layernorm"), h, eps)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embeddings: Embeddings::new(&p.pp("embeddings"), cfg)?,
            layers,
            _pooler: Linear::new(&p.pp("pooler.dense"), h, h, std)?,
            cfg: cfg.clone(),
        })
    }

    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        mask: &Tensor,
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let mut x = self.embeddings.forward(input_ids, token_type_ids, ctx)?;
        for layer in &self.layers {
            let q = layer.query.forward(&x)?;
            let k = layer.key.forward(&x)?;
            let v = layer.value.forward(&x)?;
            let context = attention(&q, &k, &v, mask, cfg.num_heads, cfg.attention_dropout, ctx)?;
            let post = ctx.dropout(&layer.post_attention.forward(&context)?, cfg.hidden_dropout)?;
            let x1 = layer.post_attention_norm.forward(&(post + &x)?)?;
            let inner = activate(&layer.intermediate.forward(&x1)?, cfg.activation)?;
            let out = ctx.dropout(&layer.output.forward(&inner)?, cfg.hidden_dropout)?;
            x = layer.output_norm.forward(&(out + x1)?)?;
        }
        Ok(x)
    }
}
