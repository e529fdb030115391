//! Compute device and precision as the user names them (`cpu`, `cuda:0`; `f32`, `f16`, `bf16`).

use anyhow::Result;
use candle_core::{DType, Device};

use crate::error::input;

/// Floating-point precision of weights and activations.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    F16,
    Bf16,
    /// int8 weights (symmetric, per output channel) and activations quantized per row as they
    /// arrive, on the CPU's int8 kernels; the rest of the model in f32.
    Int8,
}

impl Precision {
    /// The dtype the model's tensors are built in (f32 for int8, whose weights are quantized
    /// from f32 ones when the model is prepared for inference).
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 | Precision::Int8 => DType::F32,
            Precision::F16 => DType::F16,
            Precision::Bf16 => DType::BF16,
        }
    }

    /// The dtype a model to run at this precision on `device` is loaded in: [`Self::dtype`],
    /// except bf16 on the CPU, whose bf16 kernels read f32 tensors (the weights are rounded
    /// to bf16 when the model is prepared for inference, the rest runs in f32).
    pub fn load_dtype(self, device: &Device) -> DType {
        match self {
            Precision::Bf16 if device.is_cpu() => DType::F32,
            p => p.dtype(),
        }
    }

    /// The precision a model built in `dtype` runs at before any quantization.
    pub fn of_dtype(dtype: DType) -> Self {
        match dtype {
            DType::F16 => Precision::F16,
            DType::BF16 => Precision::Bf16,
            _ => Precision::F32,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
        }
    }
}

/// Parses `cpu`, `cuda` or `cuda:N`. CUDA needs a build with `--features cuda`.
pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = spec.trim().to_ascii_lowercase();
    if spec == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match spec.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| {
                input(format!(
                    "device `{spec}`: expected `cpu`, `cuda` or `cuda:N`"
                ))
            })?,
        None => {
            return Err(input(format!(
                "device `{spec}`: expected `cpu`, `cuda` or `cuda:N`"
            )))
        }
    };
    if !cfg!(feature = "cuda") {
        return Err(input(format!(
            "device `{spec}`: this bertbench was built without CUDA support; rebuild with `cargo build --release --features cuda`"
        )));
    }
    Device::new_cuda(ordinal).map_err(|e| {
        input(format!(
            "device `{spec}`: cannot open CUDA device {ordinal}: {e}"
        ))
    })
}

/// A short name for a device: `cpu` or `cuda:N`.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_or_explain() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        let bad = parse_device("tpu").unwrap_err().to_string();
        assert!(bad.contains("expected `cpu`"), "{bad}");
        let bad = parse_device("cuda:x").unwrap_err().to_string();
        assert!(bad.contains("cuda:N"), "{bad}");
        if !cfg!(feature = "cuda") {
            let err = parse_device("cuda:0").unwrap_err().to_string();
            assert!(err.contains("--features cuda"), "{err}");
        }
    }
}
