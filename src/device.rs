//! Compute device and precision as the user names them (`cpu`, `cuda:0`; `f32`, `f16`, `bf16`).

use anyhow::Result;
use candle_core::{DType, Device};

use crate::error::{input, unavailable};

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
        self.load_dtype_on(device.is_cpu())
    }

    /// [`Self::load_dtype`] on the CPU (`cpu`) or a GPU, before the device is opened.
    pub fn load_dtype_on(self, cpu: bool) -> DType {
        match self {
            Precision::Bf16 if cpu => DType::F32,
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

/// Reads an optional precision that files written before it was typed spelled `""` when
/// unknown (a load-generator run driving a URL): `""` and `null` are `None`.
pub fn optional_precision<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Precision>, D::Error> {
    use serde::Deserialize;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        Precision(Precision),
        Other(String),
    }
    match Option::<Text>::deserialize(d)? {
        None => Ok(None),
        Some(Text::Precision(p)) => Ok(Some(p)),
        Some(Text::Other(s)) if s.is_empty() => Ok(None),
        Some(Text::Other(s)) => Err(serde::de::Error::custom(format!(
            "precision {s:?}: expected f32, f16, bf16 or int8"
        ))),
    }
}

/// A compute device as the user names it: `cpu`, `cuda` or `cuda:N`. Parsed once (from the
/// command line or a results file) and carried typed; written back as the same text, so the
/// files that record it (`results.json`, `env.csv`, `training_args.json`) read as before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    Cpu,
    /// A CUDA GPU by ordinal.
    Cuda(usize),
}

impl DeviceSpec {
    pub fn is_cpu(self) -> bool {
        self == DeviceSpec::Cpu
    }

    /// The CUDA ordinal, for a GPU.
    pub fn cuda_ordinal(self) -> Option<usize> {
        match self {
            DeviceSpec::Cpu => None,
            DeviceSpec::Cuda(n) => Some(n),
        }
    }

    /// The spec of a device [`Self::open`] opened (a CPU or a CUDA GPU; anything else is an
    /// error naming it).
    pub fn of(device: &Device) -> Result<Self> {
        match device.location() {
            candle_core::DeviceLocation::Cpu => Ok(DeviceSpec::Cpu),
            candle_core::DeviceLocation::Cuda { gpu_id } => Ok(DeviceSpec::Cuda(gpu_id)),
            other => Err(input(format!(
                "device {other:?}: only cpu and cuda:N are supported"
            ))),
        }
    }

    /// Opens the device. CUDA needs a build with `--features cuda`.
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(ordinal) => {
                // Unavailable (exit 4), like a model that cannot be fetched: the request is
                // well-formed, this build or machine cannot serve it.
                if !cfg!(feature = "cuda") {
                    return Err(unavailable(format!(
                        "device `{self}`: this bertbench was built without CUDA support; rebuild with `cargo build --release --features cuda`"
                    )));
                }
                Device::new_cuda(ordinal).map_err(|e| {
                    unavailable(format!(
                        "device `{self}`: cannot open CUDA device {ordinal}: {e}"
                    ))
                })
            }
        }
    }
}

impl std::str::FromStr for DeviceSpec {
    type Err = anyhow::Error;

    /// `cpu`, `cuda` or `cuda:N` (any case, surrounding space ignored).
    fn from_str(spec: &str) -> Result<Self> {
        let spec = spec.trim().to_ascii_lowercase();
        if spec == "cpu" {
            return Ok(DeviceSpec::Cpu);
        }
        let expected = || {
            input(format!(
                "device `{spec}`: expected `cpu`, `cuda` or `cuda:N`"
            ))
        };
        match spec.strip_prefix("cuda") {
            Some("") => Ok(DeviceSpec::Cuda(0)),
            Some(rest) => rest
                .strip_prefix(':')
                .and_then(|n| n.parse::<usize>().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(expected),
            None => Err(expected()),
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
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

    /// A precision read where older files wrote `""` for unknown: `""`, `null` and a missing
    /// field are none, a name is that precision, anything else an error naming it.
    #[test]
    fn optional_precisions_read_old_and_new_files() {
        #[derive(serde::Deserialize)]
        struct Setup {
            #[serde(default, deserialize_with = "optional_precision")]
            dtype: Option<Precision>,
        }
        let read = |json: &str| serde_json::from_str::<Setup>(json).map(|s| s.dtype);
        assert_eq!(read(r#"{"dtype": "int8"}"#).unwrap(), Some(Precision::Int8));
        assert_eq!(read(r#"{"dtype": ""}"#).unwrap(), None);
        assert_eq!(read(r#"{"dtype": null}"#).unwrap(), None);
        assert_eq!(read("{}").unwrap(), None);
        let e = read(r#"{"dtype": "fp8"}"#).unwrap_err().to_string();
        assert!(e.contains("precision \"fp8\": expected"), "{e}");
    }

    #[test]
    fn devices_parse_or_explain() {
        let parse = |s: &str| s.parse::<DeviceSpec>().and_then(DeviceSpec::open);
        assert!(parse("cpu").unwrap().is_cpu());
        let bad = parse("tpu").unwrap_err().to_string();
        assert!(bad.contains("expected `cpu`"), "{bad}");
        let bad = parse("cuda:x").unwrap_err().to_string();
        assert!(bad.contains("cuda:N"), "{bad}");
        for (text, spec) in [
            ("cpu", DeviceSpec::Cpu),
            (" CPU ", DeviceSpec::Cpu),
            ("cuda", DeviceSpec::Cuda(0)),
            ("cuda:3", DeviceSpec::Cuda(3)),
        ] {
            assert_eq!(text.parse::<DeviceSpec>().unwrap(), spec);
            // Written as it is read, so files that record it stay the same.
            let json = serde_json::to_string(&spec).unwrap();
            assert_eq!(serde_json::from_str::<DeviceSpec>(&json).unwrap(), spec);
        }
        assert_eq!(DeviceSpec::Cuda(3).to_string(), "cuda:3");
        assert!(serde_json::from_str::<DeviceSpec>("\"tpu\"").is_err());
        if !cfg!(feature = "cuda") {
            let err = parse("cuda:0").unwrap_err().to_string();
            assert!(err.contains("--features cuda"), "{err}");
        }
    }
}
