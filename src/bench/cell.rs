//! Measuring one cell in the current process: build the model, make inputs, take the memory
//! step, then the timed steps.

use std::time::Duration;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::memory::{self, CountingAlloc};
use super::timer;
use super::{Cell, CellSettings, Measurement, Memory, Mode, Speed, Status};
use crate::compute::optim::{AdamW, AdamWConfig};

use crate::device::{DeviceSpec, Precision};
use crate::hub::HubConfig;
use crate::models::trainable::TrainableModel;
use crate::models::{self, Batch, ForwardCtx, ModelConfig, ModelType, QaModel};
use crate::stats::Summary;

/// What the measurement is doing, for progress reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Building,
    Memory,
    Timing,
}

/// Rough estimate of the memory a cell needs above the process's baseline, in bytes: weights,
/// plus activations of one layer at a time for inference, of every layer (with gradients and
/// AdamW moments) for training. On the tiny fixture models it lands within ~10% of the measured
/// peak. It only decides whether to refuse a cell up front; the measured peak is the answer.
///
/// Inference holds its weights as `precision` prepares them on `device`: at int8 one byte
/// each (the projections and the word embeddings; the position and token-type tables stay
/// f32), at bf16 on the CPU two for the projections and four for the embeddings (which stay
/// f32), and activations in the dtype the model runs in (f32 for both on the CPU).
pub fn estimate_bytes(
    config: &ModelConfig,
    cell: &Cell,
    precision: Precision,
    device: DeviceSpec,
) -> u64 {
    let params = QaModel::num_parameters(config).unwrap_or(0) as u64;
    let el = precision.dtype().size_in_bytes() as u64;
    let (b, s) = (cell.batch_size as u64, cell.sequence_length as u64);
    let (h, i, heads) = (
        config.hidden_size as u64,
        config.intermediate_size as u64,
        config.num_heads as u64,
    );
    // Per layer: ~8 hidden-sized and 2 intermediate-sized tensors, 3 attention-score-sized ones.
    let per_layer = b * s * (8 * h + 2 * i) + 3 * b * heads * s * s;
    match cell.mode {
        Mode::Inference => {
            let other_tables = (config.max_position_embeddings + config.type_vocab_size) as u64 * h;
            let tables = config.vocab_size as u64 * h + other_tables;
            let weights = match precision {
                Precision::Int8 => params.saturating_sub(other_tables) + other_tables * 4,
                Precision::Bf16 if device.is_cpu() => {
                    params.saturating_sub(tables) * 2 + tables * 4
                }
                _ => params * el,
            };
            let act = precision.load_dtype_on(device.is_cpu()).size_in_bytes() as u64;
            weights + per_layer * act
        }
        // Weights + grads in the model dtype, two f32 moments, a copy during the update, and
        // every layer's activations kept for the backward pass.
        Mode::Training => params * (2 * el + 8 + 4) + config.num_layers as u64 * per_layer * el * 2,
    }
}

/// Seeded random inputs like the Hugging Face benchmark's: random ids, full attention mask,
/// and (for models with token types) a question/context split: the first quarter of the
/// sequence is segment 0, the rest segment 1.
pub fn random_batch(
    config: &ModelConfig,
    batch: usize,
    seq: usize,
    seed: u64,
    device: &Device,
) -> Result<Batch> {
    let mut rng = StdRng::seed_from_u64(seed);
    let ids: Vec<u32> = (0..batch * seq)
        .map(|_| rng.random_range(0..config.vocab_size as u32))
        .collect();
    let question = (seq / 4).max(1);
    let types: Vec<u32> = (0..batch * seq)
        .map(|k| u32::from(k % seq >= question))
        .collect();
    Ok(Batch {
        input_ids: Tensor::from_vec(ids, (batch, seq), device)?,
        attention_mask: Tensor::ones((batch, seq), DType::U32, device)?,
        token_type_ids: match config.model_type {
            ModelType::DistilBert => None,
            _ if config.type_vocab_size < 2 => None,
            _ => Some(Tensor::from_vec(types, (batch, seq), device)?),
        },
    })
}

/// A runnable step for one mode.
enum Stepper {
    Inference {
        model: QaModel,
        batch: Batch,
    },
    Training {
        model: TrainableModel,
        batch: Batch,
        optimizer: AdamW,
        starts: Tensor,
        ends: Tensor,
        step: u64,
        seed: u64,
    },
}

impl Stepper {
    fn step(&mut self) -> Result<()> {
        match self {
            Stepper::Inference { model, batch } => {
                let out = model.forward(batch, &mut ForwardCtx::inference())?;
                // Make sure the work happened (asynchronous devices) before the clock stops.
                out.start_logits.device().synchronize()?;
            }
            Stepper::Training {
                model,
                batch,
                optimizer,
                starts,
                ends,
                step,
                seed,
            } => {
                *step += 1;
                let (loss, grads) = model.loss_and_grads(batch, starts, ends, *seed + *step)?;
                optimizer.step(&grads, optimizer.config.lr, 1.0)?;
                loss.device().synchronize()?;
            }
        }
        Ok(())
    }
}

/// How a cell's reason starts when its process's timings were noisy (what the report replaces
/// by its two-level interval's verdict when the cell was timed in several processes).
pub const NOISY_REASON: &str = "noisy";

/// Measures `cell` in this process. `progress(phase, runs, elapsed)` is called as it goes.
pub fn run_cell(
    cell: &Cell,
    settings: &CellSettings,
    progress: &mut dyn FnMut(Phase, usize, Duration),
) -> Result<Measurement> {
    let baseline = memory::rss().unwrap_or_default();
    crate::compute::isa::use_isa(settings.isa)?;
    progress(Phase::Building, 0, Duration::ZERO);
    let device = settings.device.open()?;
    let hub = HubConfig::from_env(settings.offline);
    let (config, _) = models::open_config(&cell.model, &hub)?;
    let mut stepper = Stepper::new(cell, settings, &config, &device, &hub)?;
    let model_rss = memory::rss().unwrap_or_default();
    let memory = if settings.memory {
        progress(Phase::Memory, 0, Duration::ZERO);
        Some(measure_memory(
            &mut stepper,
            settings,
            baseline.current,
            model_rss.current,
        )?)
    } else {
        None
    };
    let (speed, reason) = if settings.speed {
        let (speed, reason) = measure_speed(&mut stepper, cell, settings, progress)?;
        (Some(speed), reason)
    } else {
        (None, None)
    };
    // The drift monitor, after the timings (see `drift`): CPU processes that timed the cell.
    let drift = if speed.is_some() && device.is_cpu() {
        vec![super::drift::calibrate()]
    } else {
        Vec::new()
    };
    Ok(Measurement {
        cell: cell.clone(),
        status: Status::Ok,
        reason,
        speed,
        memory,
        flops: super::flops::step_flops(&config, cell),
        estimated_bytes: estimate_bytes(&config, cell, settings.dtype, settings.device),
        settings: settings.clone(),
        drift,
    })
}

impl Stepper {
    /// The cell's model (its weights loaded, or random from the seed) and seeded inputs: for
    /// inference prepared at the cell's precision, for training with an optimizer and
    /// random answer positions.
    fn new(
        cell: &Cell,
        settings: &CellSettings,
        config: &ModelConfig,
        device: &Device,
        hub: &HubConfig,
    ) -> Result<Self> {
        // Inference loads what the precision runs from (f32 for bf16 on the CPU); training
        // steps train in the precision's own dtype.
        let dtype = match cell.mode {
            Mode::Inference => settings.dtype.load_dtype(device),
            Mode::Training => settings.dtype.dtype(),
        };
        let (b, seq) = (cell.batch_size, cell.sequence_length);
        let batch = random_batch(config, b, seq, settings.seed, device)?;
        Ok(match cell.mode {
            Mode::Inference => {
                let inference = Some(settings.dtype);
                let model = if settings.load_weights {
                    let opts = models::OpenOptions {
                        random_init: false,
                        seed: settings.seed,
                        dtype,
                        device: device.clone(),
                        hub: hub.clone(),
                        inference,
                    };
                    models::open(&cell.model, &opts)?.model
                } else {
                    models::random_model_for(config, settings.seed, dtype, device, inference)?
                };
                Stepper::Inference { model, batch }
            }
            Mode::Training => {
                let model = TrainableModel::random(config, settings.seed, dtype, device)?;
                let optimizer = AdamW::new(&model.params, AdamWConfig::default())?;
                let mut rng = StdRng::seed_from_u64(settings.seed ^ 0x5eed);
                let mut positions = |n: usize| -> Vec<u32> {
                    (0..n).map(|_| rng.random_range(0..seq as u32)).collect()
                };
                let starts = Tensor::from_vec(positions(b), b, device)?;
                let ends = Tensor::from_vec(positions(b), b, device)?;
                Stepper::Training {
                    model,
                    batch,
                    optimizer,
                    starts,
                    ends,
                    step: 0,
                    seed: settings.seed,
                }
            }
        })
    }
}

/// One step's memory: the resident peak (reset first where the OS can), the allocator's
/// counts and, on a GPU, NVML's peaks; beside the process's resident memory before the cell
/// (`baseline_rss`) and with its model built (`model_rss`).
fn measure_memory(
    stepper: &mut Stepper,
    settings: &CellSettings,
    baseline_rss: u64,
    model_rss: u64,
) -> Result<Memory> {
    let reset = memory::reset_rss_peak();
    let alloc_before_step = CountingAlloc::current() as u64;
    let sampler = settings
        .device
        .cuda_ordinal()
        .map(super::gpu::Sampler::start)
        .transpose()
        .context("GPU memory sampling")?;
    CountingAlloc::reset_peak();
    stepper.step().context("memory step")?;
    let gpu = sampler.map(super::gpu::Sampler::finish).transpose()?;
    let rss = memory::rss().unwrap_or_default();
    Ok(Memory {
        baseline_rss,
        model_rss,
        peak_rss: rss.peak,
        peak_rss_reset: reset,
        alloc_before_step,
        alloc_peak: CountingAlloc::peak() as u64,
        gpu_process_peak: gpu.and_then(|g| g.process),
        gpu_device_peak: gpu.map(|g| g.device),
    })
}

/// The step timed under the settings' policy, and the reason to record when the process's
/// own timings were noisy. On a GPU, the energy it used meanwhile (NVML), where the driver
/// reports it: a GPU without an energy counter or power reading times as well, with none.
fn measure_speed(
    stepper: &mut Stepper,
    cell: &Cell,
    settings: &CellSettings,
    progress: &mut dyn FnMut(Phase, usize, Duration),
) -> Result<(Speed, Option<String>)> {
    let meter = settings
        .device
        .cuda_ordinal()
        .and_then(|ordinal| super::gpu::EnergyMeter::start(ordinal).ok());
    let mut steps = 0u64;
    let timings = timer::measure(
        &settings.timing,
        || {
            steps += 1;
            stepper.step()
        },
        |runs, elapsed| progress(Phase::Timing, runs, elapsed),
    )?;
    let energy = meter.and_then(|m| m.finish(steps * cell.batch_size as u64).ok());
    let summary = Summary::of(&timings.samples).context("no valid timings")?;
    let reason = summary.is_noisy().then(|| {
        format!(
            "{NOISY_REASON} within its process: the median's 95% CI there is {:.1}% of the median, CV {:.1}%; close other programs or raise --min-time",
            100.0 * summary.ci_relative_width(),
            100.0 * summary.cv()
        )
    });
    Ok((
        Speed {
            timings,
            summary,
            between: None,
            energy,
        },
        reason,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An inference cell's estimate follows what the precision holds: int8 about a quarter of
    /// f32's weights (the word embeddings quantized too), bf16 on the CPU about half of the
    /// projections' with f32 embeddings, and at bf16 on a GPU every weight and activation in
    /// two bytes. BERT-base has 109.5M parameters, 23.8M of them in the word table.
    #[test]
    fn estimates_follow_what_each_precision_holds() {
        let config = ModelConfig::builtin("bert-base-uncased").unwrap();
        let cell = Cell {
            model: "bert-base-uncased".into(),
            mode: Mode::Inference,
            batch_size: 1,
            sequence_length: 128,
            threads: 2,
            dtype: None,
        };
        let mb = |p, d| estimate_bytes(&config, &cell, p, d) as f64 / 1e6;
        let f32 = mb(Precision::F32, DeviceSpec::Cpu);
        let int8 = mb(Precision::Int8, DeviceSpec::Cpu);
        let bf16 = mb(Precision::Bf16, DeviceSpec::Cpu);
        let gpu_bf16 = mb(Precision::Bf16, DeviceSpec::Cuda(0));
        assert!((430.0..450.0).contains(&f32), "f32 {f32}");
        assert!((105.0..120.0).contains(&int8), "int8 {int8}");
        assert!((270.0..290.0).contains(&bf16), "bf16 on the CPU {bf16}");
        assert!(
            (215.0..225.0).contains(&gpu_bf16),
            "bf16 on a GPU {gpu_bf16}"
        );
    }
}
