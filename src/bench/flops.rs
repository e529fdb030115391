//! Analytic floating-point operations of one model step: the matrix multiplications of every
//! projection plus attention's two batched products (QK^T and PV). Element-wise work
//! (LayerNorm, softmax, GELU, embeddings) is left out, as is customary; it is a few percent.

use crate::models::{ModelConfig, ModelType};

/// FLOPs (multiply and add counted separately) of one inference forward pass.
pub fn forward_flops(config: &ModelConfig, batch: usize, seq: usize) -> u64 {
    let tokens = (batch * seq) as u64;
    let h = config.hidden_size as u64;
    let i = config.intermediate_size as u64;
    let s = seq as u64;
    // A (tokens x cin) @ (cin x cout) product with `groups` blocks.
    let proj = |cin: u64, cout: u64, groups: u64| 2 * tokens * cin * cout / groups;
    let per_layer = match (config.model_type, config.squeeze_groups) {
        (ModelType::SqueezeBert, Some(g)) => {
            proj(h, h, g.q as u64)
                + proj(h, h, g.k as u64)
                + proj(h, h, g.v as u64)
                + proj(h, h, g.post_attention as u64)
                + proj(h, i, g.intermediate as u64)
                + proj(i, h, g.output as u64)
        }
        _ => 4 * proj(h, h, 1) + proj(h, i, 1) + proj(i, h, 1),
    };
    // QK^T and PV: each 2 * batch * heads * s * s * head_dim = 2 * tokens * s * h.
    let attention = 2 * (2 * tokens * s * h);
    let head = proj(h, 2, 1);
    config.num_layers as u64 * (per_layer + attention) + head
}

/// FLOPs of one training step: forward plus a backward pass of about twice the forward.
pub fn training_step_flops(config: &ModelConfig, batch: usize, seq: usize) -> u64 {
    3 * forward_flops(config, batch, seq)
}

/// Analytic FLOPs of one step of `cell`.
pub fn step_flops(config: &ModelConfig, cell: &super::Cell) -> u64 {
    match cell.mode {
        super::Mode::Inference => forward_flops(config, cell.batch_size, cell.sequence_length),
        super::Mode::Training => training_step_flops(config, cell.batch_size, cell.sequence_length),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bert_base_forward_flops_by_hand() {
        let c = ModelConfig::builtin("bert-base-uncased").unwrap();
        // Per token and layer: 4*768*768 + 2*768*3072 multiply-adds = 7,077,888; x2 flops.
        // Attention at seq 128: 2 * 2 * 128 * 768 per token and layer.
        let tokens = 8 * 128u64;
        let per_token_layer = 2 * 7_077_888 + 4 * 128 * 768;
        let expect = 12 * tokens * per_token_layer + 2 * tokens * 768 * 2;
        assert_eq!(forward_flops(&c, 8, 128), expect);
    }

    #[test]
    fn squeezebert_groups_cut_the_projection_work() {
        let sq = ModelConfig::builtin("squeezebert/squeezebert-uncased").unwrap();
        let bert = ModelConfig::builtin("bert-base-uncased").unwrap();
        let (f_sq, f_bert) = (forward_flops(&sq, 1, 128), forward_flops(&bert, 1, 128));
        // q, k, v, intermediate and output use 4 groups, post-attention 1.
        let tokens = 128u64;
        let proj_sq = 2 * tokens * (3 * 768 * 768 / 4 + 768 * 768 + 2 * 768 * 3072 / 4);
        let attn = 4 * tokens * 128 * 768;
        assert_eq!(f_sq, 12 * (proj_sq + attn) + 2 * tokens * 768 * 2);
        assert!(f_sq < f_bert);
        assert_eq!(training_step_flops(&sq, 1, 128), 3 * f_sq);
    }
}
