//! NVIDIA GPU facts and memory sampling through NVML (the library behind `nvidia-smi`).
//!
//! NVML is loaded at run time, so this builds and runs everywhere and reports a clear reason
//! where there is no NVIDIA driver. The GPU is chosen by the same index the compute uses: the
//! CUDA ordinal, mapped through `CUDA_VISIBLE_DEVICES` when that lists numeric indices.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::Nvml;

/// The NVML index of CUDA device `ordinal`.
pub fn nvml_index(ordinal: usize) -> usize {
    std::env::var("CUDA_VISIBLE_DEVICES")
        .ok()
        .and_then(|v| {
            let ids: Vec<usize> = v.split(',').filter_map(|s| s.trim().parse().ok()).collect();
            ids.get(ordinal).copied()
        })
        .unwrap_or(ordinal)
}

/// Static facts about one GPU, for the environment file.
#[derive(Debug, Clone)]
pub struct GpuInfo {
    pub name: String,
    pub driver: String,
    pub memory_total: u64,
    pub power_watts: Option<f64>,
    pub performance_state: Option<String>,
}

pub fn info(ordinal: usize) -> Result<GpuInfo> {
    let nvml = Nvml::init().context("NVML is not available (no NVIDIA driver?)")?;
    let device = nvml.device_by_index(nvml_index(ordinal) as u32)?;
    Ok(GpuInfo {
        name: device.name()?,
        driver: nvml.sys_driver_version()?,
        memory_total: device.memory_info()?.total,
        power_watts: device.power_usage().ok().map(|mw| mw as f64 / 1000.0),
        performance_state: device.performance_state().ok().map(|p| format!("{p:?}")),
    })
}

/// Peaks seen by a [`Sampler`], in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GpuPeaks {
    /// Device memory used by this process.
    pub process: Option<u64>,
    /// Device memory used on the whole GPU.
    pub device: u64,
}

/// Samples device memory every few milliseconds on a background thread while a step runs.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<GpuPeaks>>,
}

impl Sampler {
    pub fn start(ordinal: usize) -> Result<Self> {
        let nvml = Nvml::init().context("NVML is not available (no NVIDIA driver?)")?;
        let index = nvml_index(ordinal) as u32;
        nvml.device_by_index(index)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let pid = std::process::id();
        let handle = std::thread::spawn(move || -> Result<GpuPeaks> {
            let device = nvml.device_by_index(index)?;
            let mut peaks = GpuPeaks::default();
            loop {
                peaks.device = peaks.device.max(device.memory_info()?.used);
                if let Ok(procs) = device.running_compute_processes() {
                    for p in procs.iter().filter(|p| p.pid == pid) {
                        if let UsedGpuMemory::Used(bytes) = p.used_gpu_memory {
                            peaks.process = Some(peaks.process.unwrap_or(0).max(bytes));
                        }
                    }
                }
                if flag.load(Ordering::Relaxed) {
                    return Ok(peaks);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Ok(Self { stop, handle })
    }

    /// Stops sampling (after one last sample) and returns the peaks.
    pub fn finish(self) -> Result<GpuPeaks> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| anyhow::anyhow!("GPU sampler thread panicked"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where there is no NVIDIA driver (CI), both entry points refuse with the same clear
    /// reason; where there is one, they report a real device: a name, memory, and a sampled
    /// peak that lies within it.
    #[test]
    fn nvml_reports_a_device_or_a_clear_reason() {
        if Nvml::init().is_err() {
            let err = info(0).unwrap_err().to_string();
            assert!(err.contains("NVML is not available"), "{err}");
            let err = Sampler::start(0).err().unwrap().to_string();
            assert!(err.contains("NVML is not available"), "{err}");
            return;
        }
        let gpu = info(0).unwrap();
        assert!(!gpu.name.is_empty() && !gpu.driver.is_empty());
        assert!(gpu.memory_total > 0, "{gpu:?}");
        let sampler = Sampler::start(0).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let peaks = sampler.finish().unwrap();
        assert!(
            peaks.device > 0 && peaks.device <= gpu.memory_total,
            "{peaks:?} of {}",
            gpu.memory_total
        );
        if let Some(own) = peaks.process {
            assert!(own <= peaks.device, "{peaks:?}");
        }
    }
}
