//! The extractive-QA model: a family's encoder plus `qa_outputs` (hidden -> 2: start, end).

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

use super::bert::Bert;
use super::config::{ModelConfig, ModelType};
use super::distilbert::DistilBert;
use super::layers::{additive_mask, Form, ForwardCtx, Linear};
use super::squeezebert::SqueezeBert;
use super::weights::{ParamSpec, Params, SpecCollector};
use crate::compute::bf16::Bf16Kernel;
use crate::device::Precision;

/// Tensor-name prefixes of parameters that a base-model checkpoint lacks and that are then
/// freshly initialised (with a warning): the QA head, and SqueezeBERT's unused pooler.
pub const HEAD_PREFIXES: [&str; 2] = ["qa_outputs.", "transformer.pooler."];

#[derive(Debug, Clone)]
enum Encoder {
    Bert(Bert),
    DistilBert(DistilBert),
    SqueezeBert(SqueezeBert),
}

/// `BertForQuestionAnswering` / `DistilBertForQuestionAnswering` /
/// `SqueezeBertForQuestionAnswering`, with the Hub's tensor names.
#[derive(Debug, Clone)]
pub struct QaModel {
    config: ModelConfig,
    encoder: Encoder,
    qa_outputs: Linear,
    dtype: DType,
    device: Device,
    /// What inference runs at: the dtype, or int8 once prepared for it.
    precision: Precision,
}

/// A batch of token ids as the tokenizer produced them, on the model's device.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `(batch, seq)` u32.
    pub input_ids: Tensor,
    /// `(batch, seq)` u32, 1 for real tokens, 0 for padding.
    pub attention_mask: Tensor,
    /// `(batch, seq)` u32; `None` means all zeros (and is what DistilBERT takes).
    pub token_type_ids: Option<Tensor>,
}

/// What a forward pass returns.
#[derive(Debug, Clone)]
pub struct QaOutput {
    /// `(batch, seq)`.
    pub start_logits: Tensor,
    /// `(batch, seq)`.
    pub end_logits: Tensor,
    /// `(batch, seq, hidden)`: the base model's output, which feeds `qa_outputs`.
    pub last_hidden_state: Tensor,
}

impl QaModel {
    /// Builds the model from a parameter source (a checkpoint, a random init, ...), as loaded:
    /// what training takes. Inference builds through [`Self::new_for_inference`].
    pub fn new(
        config: &ModelConfig,
        params: &Params,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Self::build(config, params, dtype, device, None)
    }

    /// Builds the model for inference only at `precision`, each encoder block prepared as it
    /// loads (see [`Self::prepare_for_inference`] for what is prepared and what is refused), so
    /// that loading holds the f32 weights of one block at a time, not of the whole model.
    pub fn new_for_inference(
        config: &ModelConfig,
        params: &Params,
        dtype: DType,
        device: &Device,
        precision: Precision,
    ) -> Result<Self> {
        let form = inference_form(precision, dtype, device)?;
        let mut model = Self::build(config, params, dtype, device, form)?;
        model.finish_preparing(precision);
        Ok(model)
    }

    fn build(
        config: &ModelConfig,
        params: &Params,
        dtype: DType,
        device: &Device,
        form: Option<Form>,
    ) -> Result<Self> {
        let base = params.pp(config.model_type.base_prefix());
        let encoder = match config.model_type {
            ModelType::Bert => Encoder::Bert(Bert::new(&base, config, form)?),
            ModelType::DistilBert => Encoder::DistilBert(DistilBert::new(&base, config, form)?),
            ModelType::SqueezeBert => Encoder::SqueezeBert(SqueezeBert::new(&base, config, form)?),
        };
        let qa_outputs = Linear::new(
            &params.pp("qa_outputs"),
            config.hidden_size,
            2,
            config.initializer_range,
        )?;
        Ok(Self {
            config: config.clone(),
            encoder,
            qa_outputs,
            dtype,
            device: device.clone(),
            precision: Precision::of_dtype(dtype),
        })
    }

    /// Every parameter the model has, with its Hub name, shape and initialisation, in
    /// construction order; nothing is allocated.
    pub fn param_specs(config: &ModelConfig) -> Result<Vec<ParamSpec>> {
        let collector = SpecCollector::default();
        Self::new(config, &Params::new(&collector), DType::F32, &Device::Cpu)?;
        Ok(collector.into_specs())
    }

    /// Number of parameters, as `sum(p.numel() for p in model.parameters())` counts them.
    pub fn num_parameters(config: &ModelConfig) -> Result<usize> {
        Ok(Self::param_specs(config)?
            .iter()
            .map(ParamSpec::numel)
            .sum())
    }

    /// Readies the model for inference only at `precision`, on f32 CPU weights: every
    /// encoder projection's weight is packed once for the fused kernels' GEMM (or, at int8,
    /// quantized once: [`crate::compute::int8`]; at bf16 on the CPU, rounded once:
    /// [`crate::compute::bf16`]) and the loaded tensor dropped, so the model
    /// still holds its weights once (see [`super::layers::Weight`]). A model that will be
    /// trained must not be prepared (its trainable weights are left alone anyway: they record
    /// gradients). Other dtypes and devices are left as they are.
    ///
    /// On the portable tier (a CPU without a register kernel here, such as Arm, or
    /// `--isa portable`) an f32 encoder keeps its weights as loaded: its products then run on
    /// the `gemm` crate ([`crate::compute::Isa::packs_weights`]).
    ///
    /// int8 is refused unless the model is f32 on the CPU (the int8 kernels are CPU kernels),
    /// and bf16 on the CPU unless its AVX512_BF16 kernel runs.
    /// At int8 the word embeddings are quantized too, per row ([`super::layers::Table`]); the
    /// other embeddings, LayerNorms, the attention's score products and the QA head stay f32.
    pub fn prepare_for_inference(&mut self, precision: Precision) -> Result<()> {
        let form = inference_form(precision, self.dtype, &self.device)?;
        let (word, blocks) = match &mut self.encoder {
            Encoder::Bert(m) => m.prepared_parts(),
            Encoder::DistilBert(m) => m.prepared_parts(),
            Encoder::SqueezeBert(m) => m.prepared_parts(),
        };
        if let Some(form) = form {
            word.prepare(form);
            blocks.iter_mut().for_each(|b| b.prepare_releasing(form));
        }
        self.finish_preparing(precision);
        Ok(())
    }

    /// What preparing does besides the encoder's blocks.
    fn finish_preparing(&mut self, precision: Precision) {
        self.precision = precision;
        // The QA head too: not for speed (hidden -> 2 is tiny) but because the packed product
        // computes each row the same way whatever the batch, so a window's logits do not
        // depend on the windows batched with it (the dense path's `gemm` crate picks its
        // kernel by shape and moved the logits' last bits with the batch size).
        self.qa_outputs.prepare(Form::Packed);
    }

    /// What inference runs at: the dtype the model was built in, or int8 once
    /// [`Self::prepare_for_inference`] quantized it.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs the model. `ctx` decides whether dropout is active.
    pub fn forward(&self, batch: &Batch, ctx: &mut ForwardCtx) -> Result<QaOutput> {
        let (b, s) = batch.input_ids.dims2()?;
        if s > self.config.max_position_embeddings {
            bail!(
                "sequence length {s} exceeds the model's max_position_embeddings {}",
                self.config.max_position_embeddings
            );
        }
        if batch.attention_mask.dims2()? != (b, s) {
            bail!(
                "attention_mask shape {:?} differs from input_ids ({b}, {s})",
                batch.attention_mask.dims()
            );
        }
        let mask = additive_mask(&batch.attention_mask, self.dtype)?;
        let zeros;
        let token_types = match &batch.token_type_ids {
            Some(t) => t,
            None => {
                zeros = Tensor::zeros((b, s), DType::U32, &self.device)?;
                &zeros
            }
        };
        let hidden = match &self.encoder {
            Encoder::Bert(m) => m.forward(&batch.input_ids, token_types, &mask, ctx)?,
            Encoder::DistilBert(m) => m.forward(&batch.input_ids, &mask, ctx)?,
            Encoder::SqueezeBert(m) => m.forward(&batch.input_ids, token_types, &mask, ctx)?,
        };
        let head_in = ctx.dropout(&hidden, self.config.qa_dropout)?;
        let logits = self.qa_outputs.forward(&head_in, ctx.fused())?; // (b, s, 2)
        Ok(QaOutput {
            start_logits: logits.narrow(2, 0, 1)?.squeeze(2)?.contiguous()?,
            end_logits: logits.narrow(2, 1, 1)?.squeeze(2)?.contiguous()?,
            last_hidden_state: hidden,
        })
    }
}

/// What a model of `dtype` on `device` prepares its encoder projections as to run at
/// `precision` (`None`: left as loaded), or why it cannot: see
/// [`QaModel::prepare_for_inference`].
fn inference_form(precision: Precision, dtype: DType, device: &Device) -> Result<Option<Form>> {
    let cpu_f32 = device.is_cpu() && dtype == DType::F32;
    if precision == Precision::Int8 && !cpu_f32 {
        return Err(crate::error::input(format!(
            "int8 runs on the CPU's int8 kernels, from f32 weights: this model is {} on {}; \
             use --device cpu, or f16/bf16 on a GPU",
            dtype.as_str(),
            crate::device::device_name(device)
        )));
    }
    // bf16 on the CPU: f32 weights rounded for the bf16 kernels (refused where they would be
    // slower than f32); a model built in bf16 (a GPU's) is left as it is.
    let cpu_bf16 = precision == Precision::Bf16 && cpu_f32;
    if cpu_bf16 && !Bf16Kernel::current().fast() {
        return Err(crate::error::input(format!(
            "bf16 on the CPU needs AVX512_BF16 and the avx512 kernels (this CPU {}; kernels \
             {}): without them its products are slower than f32; use --dtype f32 or int8",
            if Bf16Kernel::available().contains(&Bf16Kernel::Avx512Bf16) {
                "has AVX512_BF16"
            } else {
                "lacks AVX512_BF16"
            },
            crate::compute::Isa::current().name()
        )));
    }
    if precision.dtype() != dtype && precision != Precision::Int8 && !cpu_bf16 {
        return Err(crate::error::input(format!(
            "the model was loaded as {} and cannot be prepared for {}",
            dtype.as_str(),
            precision.as_str()
        )));
    }
    Ok(match precision {
        Precision::Int8 => Some(Form::Int8),
        Precision::Bf16 if cpu_bf16 => Some(Form::Bf16),
        _ if crate::compute::Isa::current().packs_weights() => Some(Form::Packed),
        _ => None,
    })
}
