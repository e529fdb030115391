//! AdamW as PyTorch's `torch.optim.AdamW` computes it (decoupled weight decay, bias-corrected
//! moments), with Hugging Face Trainer's rule of no decay on biases and LayerNorm weights.
//!
//! Written here rather than using `candle_nn::AdamW` because of measured speed: candle-nn's
//! version builds a dozen full-size temporaries per parameter per step (5.7 s per step for
//! BERT-base's 109M parameters on the 2-core machine), while one fused pass over each
//! parameter's values does the same arithmetic in a fraction of a second.

use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Hyper-parameters, with Hugging Face `TrainingArguments` defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 2e-5,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// Whether a parameter is exempt from weight decay (biases and LayerNorm weights).
pub fn no_decay(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    name.ends_with("bias") || lower.contains("layernorm") || lower.contains("layer_norm")
}

struct Slot {
    var: Var,
    decay: bool,
    m: Vec<f32>,
    v: Vec<f32>,
}

/// AdamW over named variables; moments are kept in f32 whatever the parameters' dtype.
pub struct AdamW {
    pub config: AdamWConfig,
    slots: Vec<(String, Slot)>,
    /// Number of steps taken.
    pub step: u64,
}

impl AdamW {
    pub fn new(params: &[(String, Var)], config: AdamWConfig) -> Self {
        let slots = params
            .iter()
            .map(|(name, var)| {
                let n = var.elem_count();
                (
                    name.clone(),
                    Slot {
                        var: var.clone(),
                        decay: !no_decay(name),
                        m: vec![0.0; n],
                        v: vec![0.0; n],
                    },
                )
            })
            .collect();
        Self {
            config,
            slots,
            step: 0,
        }
    }

    /// One update at learning rate `lr` (the schedule's current value). Parameters without a
    /// gradient are left unchanged.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        let step_size = (lr / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        // 1 - beta is formed in f64 as PyTorch does with its Python-float betas: in f32,
        // 1 - 0.999f32 is off by 1e-5 relative.
        let (b1, b2, eps) = (c.beta1 as f32, c.beta2 as f32, c.eps as f32);
        let (one_minus_b1, one_minus_b2) = ((1.0 - c.beta1) as f32, (1.0 - c.beta2) as f32);
        for (_, slot) in &mut self.slots {
            let Some(grad) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            let dtype = slot.var.dtype();
            let decay = if slot.decay {
                (1.0 - lr * c.weight_decay) as f32
            } else {
                1.0
            };
            let mut p: Vec<f32> = slot
                .var
                .as_tensor()
                .flatten_all()?
                .to_dtype(DType::F32)?
                .to_vec1()?;
            let g: Vec<f32> = grad.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
            const CHUNK: usize = 1 << 14;
            p.par_chunks_mut(CHUNK)
                .zip(slot.m.par_chunks_mut(CHUNK))
                .zip(slot.v.par_chunks_mut(CHUNK))
                .zip(g.par_chunks(CHUNK))
                .for_each(|(((p, m), v), g)| {
                    for i in 0..p.len() {
                        m[i] = b1 * m[i] + one_minus_b1 * g[i];
                        v[i] = b2 * v[i] + one_minus_b2 * g[i] * g[i];
                        let denom = v[i].sqrt() / bc2_sqrt + eps;
                        p[i] = p[i] * decay - step_size * m[i] / denom;
                    }
                });
            let updated =
                Tensor::from_vec(p, slot.var.shape(), slot.var.device())?.to_dtype(dtype)?;
            slot.var.set(&updated)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Three steps on a tiny problem against PyTorch's AdamW, computed by hand from its
    /// documented update rule in f64.
    #[test]
    fn matches_the_reference_update() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::new(&[1.0f32, -2.0, 0.5], &dev)?;
        let b = Var::new(&[0.3f32], &dev)?;
        let params = vec![
            ("layer.weight".to_string(), w.clone()),
            ("layer.bias".to_string(), b.clone()),
        ];
        let cfg = AdamWConfig {
            lr: 0.1,
            weight_decay: 0.5,
            ..Default::default()
        };
        let mut opt = AdamW::new(&params, cfg);
        // loss = sum(w^2) + 3 b  ->  grad w = 2w, grad b = 3.
        let (mut rw, mut rb) = ([1.0f64, -2.0, 0.5], 0.3f64);
        let (mut mw, mut vw, mut mb, mut vb) = ([0.0f64; 3], [0.0f64; 3], 0.0f64, 0.0f64);
        for t in 1..=3 {
            let loss = (w.as_tensor().sqr()?.sum_all()? + (b.as_tensor().sum_all()? * 3.0)?)?;
            opt.step(&loss.backward()?, cfg.lr)?;
            let (bc1, bc2) = (1.0 - 0.9f64.powi(t), 1.0 - 0.999f64.powi(t));
            for i in 0..3 {
                let g = 2.0 * rw[i];
                rw[i] *= 1.0 - 0.1 * 0.5;
                mw[i] = 0.9 * mw[i] + 0.1 * g;
                vw[i] = 0.999 * vw[i] + 0.001 * g * g;
                rw[i] -= 0.1 / bc1 * mw[i] / ((vw[i]).sqrt() / bc2.sqrt() + 1e-8);
            }
            mb = 0.9 * mb + 0.1 * 3.0;
            vb = 0.999 * vb + 0.001 * 9.0;
            rb -= 0.1 / bc1 * mb / (vb.sqrt() / bc2.sqrt() + 1e-8); // no decay on biases
        }
        let got: Vec<f32> = w.as_tensor().to_vec1()?;
        for i in 0..3 {
            assert!((got[i] as f64 - rw[i]).abs() < 1e-6, "{got:?} vs {rw:?}");
        }
        assert!((b.as_tensor().to_vec1::<f32>()?[0] as f64 - rb).abs() < 1e-6);
        assert_eq!(opt.step, 3);
        Ok(())
    }

    #[test]
    fn decay_exemptions_follow_the_trainer() {
        assert!(no_decay("bert.encoder.layer.0.output.dense.bias"));
        assert!(no_decay("bert.embeddings.LayerNorm.weight"));
        assert!(no_decay(
            "distilbert.transformer.layer.0.sa_layer_norm.weight"
        ));
        assert!(no_decay(
            "transformer.encoder.layers.0.output.layernorm.weight"
        ));
        assert!(!no_decay("bert.encoder.layer.0.output.dense.weight"));
        assert!(!no_decay("bert.embeddings.word_embeddings.weight"));
    }
}
