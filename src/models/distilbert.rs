//! DistilBERT (Sanh et al., 2019) as transformers' `DistilBertModel`: no token types, learned or
//! sinusoidal positions, post-LayerNorm blocks with eps fixed at 1e-12.

use anyhow::Result;
use candle_core::Tensor;

use super::config::ModelConfig;
use super::layers::{activate, attention, ForwardCtx, LayerNorm, Linear};
use super::weights::{Init, Params};

#[derive(Debug, Clone)]
struct Layer {
    q_lin: Linear,
    k_lin: Linear,
    v_lin: Linear,
    out_lin: Linear,
    sa_layer_norm: LayerNorm,
    lin1: Linear,
    lin2: Linear,
    output_layer_norm: LayerNorm,
}

#[derive(Debug, Clone)]
pub struct DistilBert {
    word: Tensor,
    position: Tensor,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    cfg: ModelConfig,
}

impl DistilBert {
    /// `p` points at the base model (`distilbert.` in a QA checkpoint).
    pub fn new(p: &Params, cfg: &ModelConfig) -> Result<Self> {
        let std = cfg.initializer_range;
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let eps = cfg.encoder_layer_norm_eps;
        let emb = p.pp("embeddings");
        let position_init = if cfg.sinusoidal_pos_embds {
            Init::Sinusoidal
        } else {
            Init::Normal { std }
        };
        let layers = (0..cfg.num_layers)
            .map(|n| {
                let l = p.pp("transformer.layer").pp(n);
                Ok(Layer {
                    q_lin: Linear::new(&l.pp("attention.q_lin"), h, h, std)?,
                    k_lin: Linear::new(&l.pp("attention.k_lin"), h, h, std)?,
                    v_lin: Linear::new(&l.pp("attention.v_lin"), h, h, std)?,
                    out_lin: Linear::new(&l.pp("attention.out_lin"), h, h, std)?,
                    sa_layer_norm: LayerNorm::new(&l.pp("sa_layer_norm"), h, eps)?,
                    lin1: Linear::new(&l.pp("ffn.lin1"), h, i, std)?,
                    lin2: Linear::new(&l.pp("ffn.lin2"), i, h, std)?,
                    output_layer_norm: LayerNorm::new(&l.pp("output_layer_norm"), h, eps)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            word: emb.get(
                "word_embeddings.weight",
                &[cfg.vocab_size, h],
                Init::Embedding {
                    std,
                    padding_idx: Some(cfg.pad_token_id),
                },
            )?,
            position: emb.get(
                "position_embeddings.weight",
                &[cfg.max_position_embeddings, h],
                position_init,
            )?,
            embedding_norm: LayerNorm::new(&emb.pp("LayerNorm"), h, cfg.embedding_layer_norm_eps)?,
            layers,
            cfg: cfg.clone(),
        })
    }

    pub fn forward(
        &self,
        input_ids: &Tensor,
        mask: &Tensor,
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (b, s) = input_ids.dims2()?;
        let words = self.word.index_select(&input_ids.flatten_all()?, 0)?;
        let x = words
            .reshape((b, s, cfg.hidden_size))?
            .broadcast_add(&self.position.narrow(0, 0, s)?)?;
        let mut x = ctx.dropout(&self.embedding_norm.forward(&x)?, cfg.hidden_dropout)?;
        for layer in &self.layers {
            let q = layer.q_lin.forward(&x)?;
            let k = layer.k_lin.forward(&x)?;
            let v = layer.v_lin.forward(&x)?;
            let context = attention(&q, &k, &v, mask, cfg.num_heads, cfg.attention_dropout, ctx)?;
            let sa = layer
                .sa_layer_norm
                .forward(&(layer.out_lin.forward(&context)? + &x)?)?;
            let inner = activate(&layer.lin1.forward(&sa)?, cfg.activation)?;
            let ffn = ctx.dropout(&layer.lin2.forward(&inner)?, cfg.hidden_dropout)?;
            x = layer.output_layer_norm.forward(&(ffn + sa)?)?;
        }
        Ok(x)
    }
}
