//! BERT-family models for extractive question answering: one file per family, the shared
//! building blocks in [`layers`], the Hub's `config.json` in [`config`], checkpoints and
//! initialisation in [`weights`], and the QA model over them in [`qa`].

pub(crate) mod bert;
pub(crate) mod config;
pub(crate) mod distilbert;
pub(crate) mod inputs;
pub(crate) mod layers;
pub(crate) mod qa;
pub(crate) mod squeezebert;
pub mod trainable;
pub mod weights;

use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::{DType, Device};

pub use config::{Activation, ModelConfig, ModelType};
pub use inputs::TokenInputs;
pub use layers::ForwardCtx;
pub use qa::{Batch, QaModel, QaOutput};
pub use weights::LoadReport;

use crate::device::Precision;
use crate::hub::{self, HubConfig, Need};
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
    random_model_for(config, seed, dtype, device, None)
}

/// [`random_model`], readied for inference at a precision as it is built when `inference` says
/// so ([`QaModel::new_for_inference`]).
pub fn random_model_for(
    config: &ModelConfig,
    seed: u64,
    dtype: DType,
    device: &Device,
    inference: Option<Precision>,
) -> Result<QaModel> {
    let source = RandomInit::new(seed, dtype, device);
    build(config, &Params::new(&source), dtype, device, inference)
}

/// Loads a checkpoint directory (`config.json` plus weights in any supported format).
pub fn load_dir(dir: &Path, dtype: DType, device: &Device) -> Result<(QaModel, LoadReport)> {
    load_dir_for(dir, dtype, device, None)
}

/// [`load_dir`], readied for inference at a precision as it loads when `inference` says so.
pub fn load_dir_for(
    dir: &Path,
    dtype: DType,
    device: &Device,
    inference: Option<Precision>,
) -> Result<(QaModel, LoadReport)> {
    let config = ModelConfig::from_file(&dir.join("config.json"))?;
    load_weights_for(&config, WeightFiles::find(dir)?, dtype, device, inference)
}

/// Loads weights for a known config.
pub fn load_weights(
    config: &ModelConfig,
    files: WeightFiles,
    dtype: DType,
    device: &Device,
) -> Result<(QaModel, LoadReport)> {
    load_weights_for(config, files, dtype, device, None)
}

/// [`load_weights`], readied for inference at a precision as it loads when `inference` says so.
pub fn load_weights_for(
    config: &ModelConfig,
    files: WeightFiles,
    dtype: DType,
    device: &Device,
    inference: Option<Precision>,
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
    let model = build(config, &Params::new(&source), dtype, device, inference)?;
    Ok((model, source.finish()?))
}

/// The model as loaded (for training), or readied for inference at a precision.
fn build(
    config: &ModelConfig,
    params: &Params,
    dtype: DType,
    device: &Device,
    inference: Option<Precision>,
) -> Result<QaModel> {
    match inference {
        Some(precision) => QaModel::new_for_inference(config, params, dtype, device, precision),
        None => QaModel::new(config, params, dtype, device),
    }
}

/// How to turn a model argument into a model.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Ignore any weights: build from the config with random weights.
    pub random_init: bool,
    /// Seed of the random initialisation.
    pub seed: u64,
    pub dtype: DType,
    pub device: Device,
    pub hub: HubConfig,
    /// `Some`: readied for inference at this precision as it loads (each encoder block
    /// prepared before the next is read: [`QaModel::new_for_inference`]); `None`: as loaded.
    pub inference: Option<Precision>,
}

/// Which model to run and how: what a command's model flags say, as the library takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// A local directory, a Hub model id, or (with `random_init`) a built-in config name.
    pub model: String,
    /// Build from the config with seeded random weights instead of loading weights.
    pub random_init: bool,
    /// Seed of the random weights.
    pub seed: u64,
    /// Never contact the Hub.
    pub offline: bool,
    pub precision: Precision,
    pub device: crate::device::DeviceSpec,
}

impl ModelSpec {
    /// Opens the model for inference at its precision (weights prepared for the fast kernels
    /// as they load, see [`QaModel::new_for_inference`]). The compute pool and the kernels'
    /// tier must be chosen before (`runtime::use_threads`, `compute::isa::use_isa`).
    pub fn open(&self) -> Result<OpenedModel> {
        let device = self.device.open()?;
        let opts = OpenOptions {
            random_init: self.random_init,
            seed: self.seed,
            dtype: self.precision.load_dtype(&device),
            device,
            hub: HubConfig::from_env(self.offline),
            inference: Some(self.precision),
        };
        open(&self.model, &opts)
    }
}

/// A model ready to run, with where it came from.
pub struct OpenedModel {
    pub model: QaModel,
    /// Human-readable origin: a directory, the cache, a download, or a built-in config.
    pub source: String,
    /// What loading did, for checkpoints (`None` for random weights).
    pub report: Option<LoadReport>,
    /// The model directory (where tokenizer files live), `None` for a built-in config.
    pub dir: Option<PathBuf>,
}

/// Finds a model's config: a local directory or cached snapshot, a built-in config, then the
/// Hub. Returns the config and where it came from.
pub fn open_config(arg: &str, hub: &HubConfig) -> Result<(ModelConfig, String)> {
    let (config, source, _) = locate_config(arg, hub)?;
    Ok((config, source))
}

/// [`open_config`], plus the model directory when there is one (not for built-in configs).
fn locate_config(arg: &str, hub: &HubConfig) -> Result<(ModelConfig, String, Option<PathBuf>)> {
    let dir = match hub::find_local(arg, hub, Need::Config)? {
        Some(dir) => dir,
        None => {
            if let Some(config) = ModelConfig::builtin(arg) {
                return Ok((config, format!("built-in config for {arg}"), None));
            }
            hub::download(arg, hub, Need::Config)?
        }
    };
    let config = ModelConfig::from_file(&dir.path.join("config.json"))?;
    Ok((config, dir.describe(), Some(dir.path)))
}

/// Opens a model argument: a checkpoint (directory, cache or Hub), or with `random_init` a
/// config with seeded random weights.
pub fn open(arg: &str, opts: &OpenOptions) -> Result<OpenedModel> {
    if opts.random_init {
        let (config, origin, dir) = locate_config(arg, &opts.hub)?;
        let model = random_model_for(&config, opts.seed, opts.dtype, &opts.device, opts.inference)?;
        return Ok(OpenedModel {
            model,
            source: format!("{origin}, random weights (seed {})", opts.seed),
            report: None,
            dir,
        });
    }
    let dir = match hub::find_local(arg, &opts.hub, Need::Weights)? {
        Some(dir) => dir,
        None => hub::download(arg, &opts.hub, Need::Weights).map_err(|e| {
            if ModelConfig::builtin(arg).is_some() {
                crate::error::unavailable(format!(
                    "{e:#}\nhint: `{arg}` has a built-in config: add --random-init to run it with random weights"
                ))
            } else {
                e
            }
        })?,
    };
    let (model, report) = load_dir_for(&dir.path, opts.dtype, &opts.device, opts.inference)?;
    Ok(OpenedModel {
        model,
        source: dir.describe(),
        report: Some(report),
        dir: Some(dir.path),
    })
}
