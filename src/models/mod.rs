//! BERT-family models for extractive question answering: one file per family, the shared
//! building blocks in [`layers`], the Hub's `config.json` in [`config`], checkpoints and
//! initialisation in [`weights`], and the QA model over them in [`qa`].

pub mod bert;
pub mod config;
pub mod distilbert;
pub mod inputs;
pub mod layers;
pub mod qa;
pub mod squeezebert;
pub mod weights;

use std::path::Path;

use anyhow::Result;
use candle_core::{DType, Device};

pub use config::{Activation, ModelConfig, ModelType};
pub use inputs::TokenInputs;
pub use layers::ForwardCtx;
pub use qa::{Batch, QaModel, QaOutput};
pub use weights::LoadReport;

use weights::{Checkpoint, CheckpointSource, Params, RandomInit, WeightFiles};

/// Seed for parameters a checkpoint lacks (a fresh QA head), so two loads of the same base
/// checkpoint give the same model.
pub const HEAD_INIT_SEED: u64 = 42;

/// Builds a model with random weights from a config, initialised as transformers does.
pub fn random_model(
    config: &ModelConfig,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> Result<QaModel> {
    let source = RandomInit::new(seed, dtype, device);
    QaModel::new(config, &Params::new(&source), dtype, device)
}

/// Loads a checkpoint directory (`config.json` plus weights in any supported format).
pub fn load_dir(dir: &Path, dtype: DType, device: &Device) -> Result<(QaModel, LoadReport)> {
    let config = ModelConfig::from_file(&dir.join("config.json"))?;
    load_weights(&config, WeightFiles::find(dir)?, dtype, device)
}

/// Loads weights for a known config.
pub fn load_weights(
    config: &ModelConfig,
    files: WeightFiles,
    dtype: DType,
    device: &Device,
) -> Result<(QaModel, LoadReport)> {
    let checkpoint = Checkpoint::open(files)?;
    let source = CheckpointSource::new(
        &checkpoint,
        config.model_type.base_prefix(),
        &qa::HEAD_PREFIXES,
        HEAD_INIT_SEED,
        dtype,
        device,
    );
    let model = QaModel::new(config, &Params::new(&source), dtype, device)?;
    Ok((model, source.finish()?))
}
