//! DistilBERT (Sanh et al., 2019) as transformers' `DistilBertModel`: no token types, learned or
//! sinusoidal positions, post-LayerNorm blocks with eps fixed at 1e-12 and no dropout on the
//! attention output.

use anyhow::Result;
use candle_core::Tensor;

use super::config::ModelConfig;
use super::layers::{
    EncoderBlock, EncoderStack, Form, ForwardCtx, LayerNorm, Linear, Projection, Table,
};
use super::weights::{Init, Params};

#[derive(Debug, Clone)]
pub struct DistilBert {
    word: Table,
    position: Tensor,
    embedding_norm: LayerNorm,
    dropout: f64,
    layers: EncoderStack,
}

impl DistilBert {
    /// The word embeddings and the encoder blocks, for
    /// [`crate::models::QaModel::prepare_for_inference`].
    pub fn prepared_parts(&mut self) -> (&mut Table, &mut [EncoderBlock]) {
        (&mut self.word, self.layers.blocks_mut())
    }

    /// `p` points at the base model (`distilbert.` in a QA checkpoint).
    /// `form`: each encoder block prepared for inference as it is built ([`EncoderStack::build`]).
    pub fn new(p: &Params, cfg: &ModelConfig, form: Option<Form>) -> Result<Self> {
        let std = cfg.initializer_range;
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let eps = cfg.encoder_layer_norm_eps;
        let emb = p.pp("embeddings");
        let position_init = if cfg.sinusoidal_pos_embds {
            Init::Sinusoidal
        } else {
            Init::Normal { std }
        };
        // The embeddings first: at int8 their f32 table is quantized before any block loads.
        let word = Table::word_embeddings(&emb, cfg, form)?;
        let position = emb.get(
            "position_embeddings.weight",
            &[cfg.max_position_embeddings, h],
            position_init,
        )?;
        let embedding_norm = LayerNorm::new(&emb.pp("LayerNorm"), h, cfg.embedding_layer_norm_eps)?;
        let linear = |p: &Params, cin, cout| {
            Ok::<_, anyhow::Error>(Projection::Linear(Linear::new(p, cin, cout, std)?))
        };
        let layers = EncoderStack::build(cfg.num_layers, form, |n| {
            let l = p.pp("transformer.layer").pp(n);
            Ok(EncoderBlock {
                query: linear(&l.pp("attention.q_lin"), h, h)?,
                key: linear(&l.pp("attention.k_lin"), h, h)?,
                value: linear(&l.pp("attention.v_lin"), h, h)?,
                attention_output: linear(&l.pp("attention.out_lin"), h, h)?,
                attention_norm: LayerNorm::new(&l.pp("sa_layer_norm"), h, eps)?,
                ffn_in: linear(&l.pp("ffn.lin1"), h, i)?,
                ffn_out: linear(&l.pp("ffn.lin2"), i, h)?,
                output_norm: LayerNorm::new(&l.pp("output_layer_norm"), h, eps)?,
                heads: cfg.num_heads,
                activation: cfg.activation,
                hidden_dropout: cfg.hidden_dropout,
                attention_dropout: cfg.attention_dropout,
                dropout_on_attention_output: false,
            })
        })?;
        Ok(Self {
            word,
            position,
            embedding_norm,
            dropout: cfg.hidden_dropout,
            layers,
        })
    }

    pub fn forward(
        &self,
        input_ids: &Tensor,
        mask: &Tensor,
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        let (b, s) = input_ids.dims2()?;
        let h = self.word.dim()?;
        let words = self.word.lookup(input_ids)?;
        let x = words
            .reshape((b, s, h))?
            .broadcast_add(&self.position.narrow(0, 0, s)?)?;
        let x = ctx.dropout(&self.embedding_norm.forward(&x, ctx.fused())?, self.dropout)?;
        self.layers.forward(x, mask, ctx)
    }
}
