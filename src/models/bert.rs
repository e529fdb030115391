//! BERT (Devlin et al., 2019) as transformers' `BertModel` without the pooler, which
//! `BertForQuestionAnswering` does not build. Post-LayerNorm blocks; tensor names as on the Hub.

use anyhow::Result;
use candle_core::Tensor;

use super::config::ModelConfig;
use super::layers::{
    EncoderBlock, EncoderStack, Form, ForwardCtx, LayerNorm, Linear, Projection, Table,
};
use super::weights::{Init, Params};

/// Word + position + token-type embeddings, then LayerNorm and dropout. SqueezeBERT's
/// embeddings are the same module, so it reuses this one.
#[derive(Debug, Clone)]
pub struct Embeddings {
    word: Table,
    position: Tensor,
    token_type: Tensor,
    layer_norm: LayerNorm,
    dropout: f64,
}

impl Embeddings {
    /// `form`: the word embeddings prepared for inference as they load ([`Table::prepare`]).
    pub fn new(p: &Params, cfg: &ModelConfig, form: Option<Form>) -> Result<Self> {
        let std = cfg.initializer_range;
        let h = cfg.hidden_size;
        Ok(Self {
            word: Table::word_embeddings(p, cfg, form)?,
            position: p.get(
                "position_embeddings.weight",
                &[cfg.max_position_embeddings, h],
                Init::Normal { std },
            )?,
            token_type: p.get(
                "token_type_embeddings.weight",
                &[cfg.type_vocab_size, h],
                Init::Normal { std },
            )?,
            layer_norm: LayerNorm::new(&p.pp("LayerNorm"), h, cfg.embedding_layer_norm_eps)?,
            dropout: cfg.hidden_dropout,
        })
    }

    /// The word embeddings (what int8 inference quantizes).
    pub fn word_mut(&mut self) -> &mut Table {
        &mut self.word
    }

    /// `input_ids`, `token_type_ids`: `(batch, seq)` u32. Positions are `0..seq`.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        let (b, s) = input_ids.dims2()?;
        let h = self.word.dim()?;
        let words = self.word.lookup(input_ids)?;
        let types = self
            .token_type
            .index_select(&token_type_ids.flatten_all()?, 0)?;
        let positions = self.position.narrow(0, 0, s)?;
        let x = (words + types)?
            .reshape((b, s, h))?
            .broadcast_add(&positions)?;
        let x = self.layer_norm.forward(&x, ctx.fused())?;
        ctx.dropout(&x, self.dropout)
    }
}

/// The BERT encoder stack with its embeddings: what `BertModel` returns as `last_hidden_state`.
#[derive(Debug, Clone)]
pub struct Bert {
    embeddings: Embeddings,
    layers: EncoderStack,
}

impl Bert {
    /// The word embeddings and the encoder blocks, for
    /// [`crate::models::QaModel::prepare_for_inference`].
    pub fn prepared_parts(&mut self) -> (&mut Table, &mut [EncoderBlock]) {
        (self.embeddings.word_mut(), self.layers.blocks_mut())
    }

    /// `p` points at the base model (`bert.` in a QA checkpoint). `form`: each encoder block
    /// prepared for inference as it is built ([`EncoderStack::build`]).
    pub fn new(p: &Params, cfg: &ModelConfig, form: Option<Form>) -> Result<Self> {
        let std = cfg.initializer_range;
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let eps = cfg.encoder_layer_norm_eps;
        // The embeddings first: at int8 their f32 table is quantized before any block loads.
        let embeddings = Embeddings::new(&p.pp("embeddings"), cfg, form)?;
        let linear = |p: &Params, cin, cout| {
            Ok::<_, anyhow::Error>(Projection::Linear(Linear::new(p, cin, cout, std)?))
        };
        let layers = EncoderStack::build(cfg.num_layers, form, |n| {
            let l = p.pp("encoder.layer").pp(n);
            let att = l.pp("attention");
            Ok(EncoderBlock {
                query: linear(&att.pp("self.query"), h, h)?,
                key: linear(&att.pp("self.key"), h, h)?,
                value: linear(&att.pp("self.value"), h, h)?,
                attention_output: linear(&att.pp("output.dense"), h, h)?,
                attention_norm: LayerNorm::new(&att.pp("output.LayerNorm"), h, eps)?,
                ffn_in: linear(&l.pp("intermediate.dense"), h, i)?,
                ffn_out: linear(&l.pp("output.dense"), i, h)?,
                output_norm: LayerNorm::new(&l.pp("output.LayerNorm"), h, eps)?,
                heads: cfg.num_heads,
                activation: cfg.activation,
                hidden_dropout: cfg.hidden_dropout,
                attention_dropout: cfg.attention_dropout,
                dropout_on_attention_output: true,
            })
        })?;
        Ok(Self { embeddings, layers })
    }

    /// `mask` is the additive `(batch, 1, 1, seq)` mask from [`super::layers::additive_mask`].
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
