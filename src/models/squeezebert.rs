//! SqueezeBERT (Iandola et al., 2020) as transformers' `SqueezeBertModel`: BERT's embeddings,
//! then blocks whose projections are grouped 1x1 convolutions. transformers runs them in
//! `(batch, channels, seq)` layout; the maths is per position, so this runs them in
//! `(batch, seq, channels)` and never transposes the activations.

use anyhow::Result;
use candle_core::Tensor;

use super::bert::Embeddings;
use super::config::ModelConfig;
use super::layers::{
    EncoderBlock, EncoderStack, Form, ForwardCtx, GroupedPointwiseConv, LayerNorm, Linear,
    Projection, Table,
};
use super::weights::Params;

#[derive(Debug, Clone)]
pub struct SqueezeBert {
    embeddings: Embeddings,
    layers: EncoderStack,
    /// Part of `SqueezeBertModel` (and of the Hub checkpoints and parameter count); the QA head
    /// does not use its output.
    _pooler: Linear,
}

impl SqueezeBert {
    /// The word embeddings and the encoder blocks, for
    /// [`crate::models::QaModel::prepare_for_inference`].
    pub fn prepared_parts(&mut self) -> (&mut Table, &mut [EncoderBlock]) {
        (self.embeddings.word_mut(), self.layers.blocks_mut())
    }

    /// `p` points at the base model (`transformer.` in a QA checkpoint).
    /// `form`: each encoder block prepared for inference as it is built ([`EncoderStack::build`]).
    pub fn new(p: &Params, cfg: &ModelConfig, form: Option<Form>) -> Result<Self> {
        let g = cfg.squeeze_groups.expect("squeezebert config has groups");
        let std = cfg.initializer_range;
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let eps = cfg.encoder_layer_norm_eps;
        // The embeddings first: at int8 their f32 table is quantized before any block loads.
        let embeddings = Embeddings::new(&p.pp("embeddings"), cfg, form)?;
        let conv = |p: &Params, cin, cout, groups| {
            Ok::<_, anyhow::Error>(Projection::Grouped(GroupedPointwiseConv::new(
                p, cin, cout, groups, std,
            )?))
        };
        let layers = EncoderStack::build(cfg.num_layers, form, |n| {
            let l = p.pp("encoder.layers").pp(n);
            Ok(EncoderBlock {
                query: conv(&l.pp("attention.query"), h, h, g.q)?,
                key: conv(&l.pp("attention.key"), h, h, g.k)?,
                value: conv(&l.pp("attention.value"), h, h, g.v)?,
                attention_output: conv(&l.pp("post_attention.conv1d"), h, h, g.post_attention)?,
                attention_norm: LayerNorm::new(&l.pp("post_attention.layernorm"), h, eps)?,
                ffn_in: conv(&l.pp("intermediate.conv1d"), h, i, g.intermediate)?,
                ffn_out: conv(&l.pp("output.conv1d"), i, h, g.output)?,
                output_norm: LayerNorm::new(&l.pp("output.layernorm"), h, eps)?,
                heads: cfg.num_heads,
                activation: cfg.activation,
                hidden_dropout: cfg.hidden_dropout,
                attention_dropout: cfg.attention_dropout,
                dropout_on_attention_output: true,
            })
        })?;
        Ok(Self {
            embeddings,
            layers,
            _pooler: Linear::new(&p.pp("pooler.dense"), h, h, std)?,
        })
    }

    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        mask: &Tensor,
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        let x = self.embeddings.forward(input_ids, token_type_ids, ctx)?;
        self.layers.forward(x, mask, ctx)
    }
}
