//! The model in its trainable form: every parameter a [`Var`] recorded with its Hub name, and
//! the QA loss. Below the jobs, so that `bench` (training steps) and `train` share it.

use std::cell::RefCell;
use std::path::Path;

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};

use crate::compute::optim::{grads_of, Grads};
use crate::models::qa::HEAD_PREFIXES;
use crate::models::weights::{
    Checkpoint, CheckpointSource, ParamSource, ParamSpec, Params, RandomInit, WeightFiles,
};
use crate::models::{
    Batch, ForwardCtx, LoadReport, ModelConfig, QaModel, QaOutput, HEAD_INIT_SEED,
};

/// Wraps a parameter source so that every parameter becomes a trainable [`Var`], recorded with
/// its Hub name for the optimizer and for saving.
pub struct TrainableSource<'a> {
    inner: &'a dyn ParamSource,
    vars: RefCell<Vec<(String, Var)>>,
}

impl<'a> TrainableSource<'a> {
    pub fn new(inner: &'a dyn ParamSource) -> Self {
        Self {
            inner,
            vars: RefCell::new(Vec::new()),
        }
    }

    pub fn into_vars(self) -> Vec<(String, Var)> {
        self.vars.into_inner()
    }
}

impl ParamSource for TrainableSource<'_> {
    fn get(&self, spec: &ParamSpec) -> Result<Tensor> {
        let var = Var::from_tensor(&self.inner.get(spec)?)?;
        let tensor = var.as_tensor().clone();
        self.vars.borrow_mut().push((spec.name.clone(), var));
        Ok(tensor)
    }
}

/// A QA model with its trainable parameters.
pub struct TrainableModel {
    pub model: QaModel,
    /// Parameters by Hub name, in construction order.
    pub params: Vec<(String, Var)>,
}

impl TrainableModel {
    /// Loads a checkpoint directory's weights as trainable variables (a base checkpoint gets a
    /// freshly initialised QA head, reported in the [`LoadReport`]).
    pub fn from_dir(
        dir: &Path,
        config: &ModelConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<(Self, LoadReport)> {
        let checkpoint = Checkpoint::open(WeightFiles::find(dir)?)?;
        let source = CheckpointSource::new(
            &checkpoint,
            config.model_type.base_prefix(),
            &HEAD_PREFIXES,
            HEAD_INIT_SEED,
            dtype,
            device,
        );
        let trainable = TrainableSource::new(&source);
        let model = QaModel::new(config, &Params::new(&trainable), dtype, device)?;
        let params = trainable.into_vars();
        Ok((Self { model, params }, source.finish()?))
    }

    /// Builds a model from a config with random weights, every parameter a variable.
    pub fn random(config: &ModelConfig, seed: u64, dtype: DType, device: &Device) -> Result<Self> {
        let init = RandomInit::new(seed, dtype, device);
        let source = TrainableSource::new(&init);
        let model = QaModel::new(config, &Params::new(&source), dtype, device)?;
        Ok(Self {
            model,
            params: source.into_vars(),
        })
    }

    /// One training forward (dropout masks drawn from `dropout_seed`), the QA loss and the
    /// backward pass: the loss and every parameter's gradient, in parameter order. Runs as one
    /// task on the compute pool (see [`crate::runtime::on_compute_pool`]).
    pub fn loss_and_grads(
        &self,
        batch: &Batch,
        start_positions: &Tensor,
        end_positions: &Tensor,
        dropout_seed: u64,
    ) -> Result<(Tensor, Grads)> {
        crate::runtime::on_compute_pool(|| {
            let out = self
                .model
                .forward(batch, &mut ForwardCtx::training(dropout_seed))?;
            let loss = qa_loss(&out, start_positions, end_positions)?;
            let grads = grads_of(&self.params, &loss.backward()?);
            Ok((loss, grads))
        })
    }
}

/// The extractive-QA loss transformers uses: mean of the start and end cross-entropies.
/// `start_positions`, `end_positions`: `(batch,)` u32 token indices.
/// Half-precision logits are upcast to f32 first, as autocast does.
pub fn qa_loss(out: &QaOutput, start_positions: &Tensor, end_positions: &Tensor) -> Result<Tensor> {
    let upcast = |t: &Tensor| -> Result<Tensor> {
        Ok(match t.dtype() {
            DType::F16 | DType::BF16 => t.to_dtype(DType::F32)?,
            _ => t.clone(),
        })
    };
    let start = candle_nn::loss::cross_entropy(&upcast(&out.start_logits)?, start_positions)?;
    let end = candle_nn::loss::cross_entropy(&upcast(&out.end_logits)?, end_positions)?;
    Ok(((start + end)? / 2.0)?)
}
