//! `info` and `logits`, and the model arguments every model-running command shares.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use candle_core::Tensor;
use clap::Args;
use serde_json::json;

use crate::compute::isa::IsaChoice;
use crate::device::{device_name, DeviceSpec, Precision};
use crate::hub::HubConfig;
use crate::models::{self, ForwardCtx, LoadReport, ModelConfig, ModelSpec, QaModel, TokenInputs};

/// How to find and run a model; shared by every command that runs one.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Model: a local directory, a Hugging Face model id (cache, then the Hub), or with
    /// --random-init one of the built-in configs (bert-base-uncased, distilbert-base-uncased,
    /// squeezebert/squeezebert-uncased).
    #[arg(long, short)]
    pub model: String,
    /// Build the model from its config with seeded random weights instead of loading weights.
    #[arg(long)]
    pub random_init: bool,
    /// Seed for --random-init.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Never contact the Hub (same as HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

/// Where and how a command computes; shared by every command that runs a model.
#[derive(Debug, Clone, Args)]
pub struct ComputeArgs {
    /// Precision of weights and activations: f32 (the default); int8 (CPU inference: weights
    /// quantized once per output channel, activations per row); bf16 (on the CPU: bf16
    /// products where it has AVX512_BF16; on a GPU, bf16 tensors); f16 (GPUs). Training keeps
    /// f32 master weights. `bench` and `run` take several and measure every cell at each;
    /// `run` without `--dtype` on the CPU measures every precision this CPU runs fast.
    #[arg(long, value_enum, num_args = 1..)]
    pub dtype: Vec<Precision>,
    /// Compute device: cpu, cuda or cuda:N (CUDA needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Compute threads, at least 1 (default: every logical CPU); `bench` takes several and
    /// measures every cell at each.
    #[arg(long, value_parser = thread_count, num_args = 1..)]
    pub threads: Vec<usize>,
    /// CPU kernels: auto (the best this CPU has), avx512, avx2 or portable; a tier the CPU
    /// lacks is refused.
    #[arg(long, value_enum, env = "BERTBENCH_ISA", default_value_t = IsaChoice::Auto)]
    pub isa: IsaChoice,
}

/// `--threads`: a whole number, at least 1.
fn thread_count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "expected a whole number of threads, at least 1, got {s:?}"
        )),
    }
}

impl ComputeArgs {
    /// The precision this process runs: the first `--dtype` given.
    pub fn precision(&self) -> Precision {
        self.dtype.first().copied().unwrap_or(Precision::F32)
    }

    /// Every precision asked for, each once (`bench` and `run` sweep them).
    pub fn precisions(&self) -> Vec<Precision> {
        let all = crate::bench::distinct(self.dtype.iter().copied());
        if all.is_empty() {
            vec![Precision::F32]
        } else {
            all
        }
    }

    /// The thread count this process computes with: the first `--threads` given, else every
    /// logical CPU.
    pub fn threads(&self) -> usize {
        self.threads
            .first()
            .copied()
            .unwrap_or_else(crate::bench::env::logical_cpus)
            .max(1)
    }

    /// Every thread count asked for (`bench` sweeps them), at least this process's.
    pub fn thread_counts(&self) -> Vec<usize> {
        if self.threads.is_empty() {
            vec![self.threads()]
        } else {
            self.threads.clone()
        }
    }

    /// Sizes this process's compute pool ([`crate::runtime::use_threads`]) at the first thread
    /// count, chooses the CPU kernels ([`crate::compute::isa::use_isa`]) and returns the thread
    /// count; call it before anything computes.
    pub fn use_pool(&self) -> Result<usize> {
        crate::compute::isa::use_isa(self.isa)?;
        crate::runtime::use_threads(self.threads())
    }

    /// [`ComputeArgs::use_pool`] for a command that runs at one thread count and precision:
    /// several are refused (only `bench` and `run` sweep them).
    pub fn use_threads(&self) -> Result<usize> {
        if self.precisions().len() > 1 {
            return Err(crate::error::input(format!(
                "--dtype takes one precision here (got {}); only bench and run sweep several",
                self.precisions().len()
            )));
        }
        self.use_one_thread_count()
    }

    /// [`ComputeArgs::use_pool`], refusing several thread counts (only `bench` sweeps them).
    pub fn use_one_thread_count(&self) -> Result<usize> {
        if self.threads.len() > 1 {
            return Err(crate::error::input(format!(
                "--threads takes one count here (got {}); only bench sweeps several",
                self.threads.len()
            )));
        }
        self.use_pool()
    }
}

impl ModelArgs {
    /// The model these flags name, at this process's precision.
    pub fn spec(&self) -> ModelSpec {
        ModelSpec {
            model: self.model.clone(),
            random_init: self.random_init,
            seed: self.seed,
            offline: self.offline,
            precision: self.compute.precision(),
            device: self.compute.device,
        }
    }

    /// Sizes the compute pool, opens the model for inference (its weights packed for the fast
    /// kernels, see [`QaModel::prepare_for_inference`]) and reports on stderr what loading had
    /// to do.
    pub fn open(&self) -> Result<models::OpenedModel> {
        self.compute.use_threads()?;
        let opened = self.spec().open()?;
        warn_about_load(opened.report.as_ref());
        Ok(opened)
    }
}

/// Prints what transformers would warn about: freshly initialised weights, unused tensors.
pub(crate) fn warn_about_load(report: Option<&LoadReport>) {
    for line in report.map(LoadReport::warnings).unwrap_or_default() {
        eprintln!("{line}");
    }
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Model: a local directory, a Hub model id, or a built-in config name.
    pub model: String,
    /// Never contact the Hub (same as HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn info(args: InfoArgs) -> Result<()> {
    let hub = HubConfig::from_env(args.offline);
    let (config, source) = models::open_config(&args.model, &hub)?;
    let params = ParamCounts::of(&config)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let summary = info_json(&args.model, &source, &config, &params);
        writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
        return Ok(());
    }
    writeln!(out, "{}  ({})", args.model, source)?;
    print_info(&mut out, &config, &params)?;
    Ok(())
}

/// A model's parameters, in all and by part.
struct ParamCounts {
    total: usize,
    embeddings: usize,
    encoder: usize,
    head: usize,
}

impl ParamCounts {
    fn of(config: &ModelConfig) -> Result<Self> {
        let specs = QaModel::param_specs(config)?;
        let total: usize = specs.iter().map(|s| s.numel()).sum();
        let count = |prefix: &str| -> usize {
            specs
                .iter()
                .filter(|s| s.name.starts_with(prefix))
                .map(|s| s.numel())
                .sum()
        };
        let embeddings = count(&format!("{}.embeddings.", config.model_type.base_prefix()));
        let head = count("qa_outputs.");
        Ok(Self {
            total,
            embeddings,
            encoder: total - embeddings - head,
            head,
        })
    }
}

/// `info --json`.
fn info_json(
    model: &str,
    source: &str,
    config: &ModelConfig,
    params: &ParamCounts,
) -> serde_json::Value {
    json!({
        "model": model,
        "source": source,
        "model_type": config.model_type.as_str(),
        "class": config.model_type.qa_class(),
        "hidden_size": config.hidden_size,
        "num_layers": config.num_layers,
        "num_heads": config.num_heads,
        "intermediate_size": config.intermediate_size,
        "activation": activation_name(config),
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_position_embeddings,
        "type_vocab_size": config.type_vocab_size,
        "squeezebert_groups": config.squeeze_groups.map(|g| json!({
            "q": g.q, "k": g.k, "v": g.v, "post_attention": g.post_attention,
            "intermediate": g.intermediate, "output": g.output,
        })),
        "torch_dtype": config.torch_dtype,
        "parameters": {
            "total": params.total,
            "embeddings": params.embeddings,
            "encoder": params.encoder,
            "qa_head": params.head,
        },
        "f32_weight_bytes": params.total * 4,
    })
}

fn activation_name(config: &ModelConfig) -> String {
    format!("{:?}", config.activation).to_lowercase()
}

/// `info`'s text, after the model's name.
fn print_info(out: &mut impl Write, config: &ModelConfig, params: &ParamCounts) -> Result<()> {
    writeln!(
        out,
        "  class               {}",
        config.model_type.qa_class()
    )?;
    writeln!(
        out,
        "  shape               {} layers, hidden {}, {} heads x {}, intermediate {}",
        config.num_layers,
        config.hidden_size,
        config.num_heads,
        config.head_dim(),
        config.intermediate_size
    )?;
    writeln!(out, "  activation          {}", activation_name(config))?;
    writeln!(
        out,
        "  vocabulary          {} tokens, {} positions, {} token types",
        config.vocab_size, config.max_position_embeddings, config.type_vocab_size
    )?;
    if let Some(g) = config.squeeze_groups {
        writeln!(
            out,
            "  groups              q {} k {} v {}, post-attention {}, intermediate {}, output {}",
            g.q, g.k, g.v, g.post_attention, g.intermediate, g.output
        )?;
    }
    writeln!(out, "  parameters          {}", thousands(params.total))?;
    writeln!(
        out,
        "    embeddings        {}",
        thousands(params.embeddings)
    )?;
    writeln!(out, "    encoder           {}", thousands(params.encoder))?;
    writeln!(out, "    qa head           {}", thousands(params.head))?;
    writeln!(
        out,
        "  f32 weights         {:.1} MiB",
        (params.total * 4) as f64 / (1024.0 * 1024.0)
    )?;
    Ok(())
}

/// `1234567` -> `1,234,567`.
fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[derive(Debug, Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// JSON file: {"input_ids": [[...]], "attention_mask": [[...]], "token_type_ids": [[...]] | null}
    /// (a fixture's expected.json also works).
    #[arg(long)]
    pub inputs: PathBuf,
    /// Also print the base model's last hidden state.
    #[arg(long)]
    pub hidden: bool,
}

pub fn logits(args: LogitsArgs) -> Result<()> {
    let inputs = TokenInputs::from_file(&args.inputs)?;
    let opened = args.model.open()?;
    let model = &opened.model;
    inputs.validate(model.config(), &args.inputs.display().to_string())?;
    let batch = inputs.to_batch(model.device())?;
    let out = model.forward(&batch, &mut ForwardCtx::inference())?;
    let mut result = json!({
        "start_logits": to_f32_nested2(&out.start_logits)?,
        "end_logits": to_f32_nested2(&out.end_logits)?,
    });
    if args.hidden {
        result["last_hidden_state"] = json!(out
            .last_hidden_state
            .to_dtype(candle_core::DType::F32)?
            .to_vec3::<f32>()?);
    }
    eprintln!(
        "{} on {} ({}), {}",
        opened.source,
        device_name(model.device()),
        args.model.compute.precision().as_str(),
        describe_config(model.config())
    );
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, &result)?;
    writeln!(stdout)?;
    Ok(())
}

fn to_f32_nested2(t: &Tensor) -> Result<Vec<Vec<f32>>> {
    Ok(t.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?)
}

fn describe_config(c: &ModelConfig) -> String {
    format!(
        "{} with {} layers, hidden {}",
        c.model_type.qa_class(),
        c.num_layers,
        c.hidden_size
    )
}
