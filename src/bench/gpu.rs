//! NVIDIA GPU facts, memory sampling and energy through NVML (the library behind
//! `nvidia-smi`).
//!
//! NVML is loaded at run time, so this builds and runs everywhere and reports a clear reason
//! where there is no NVIDIA driver. The GPU is chosen by the same index the compute uses: the
//! CUDA ordinal, mapped through `CUDA_VISIBLE_DEVICES` when that lists numeric indices.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::Nvml;
use serde::{Deserialize, Serialize};

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

/// Where an energy figure comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnergySource {
    /// NVML's total-energy counter (Volta and later), read before and after the region.
    Counter,
    /// The power draw sampled every few milliseconds, times the time between samples: an
    /// estimate, where the driver exposes no energy counter.
    PowerTimesTime,
}

impl EnergySource {
    pub fn as_str(self) -> &'static str {
        match self {
            EnergySource::Counter => "counter",
            EnergySource::PowerTimesTime => "power x time",
        }
    }
}

/// The energy the whole GPU used over a timed region, and the work done in it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Energy {
    pub joules: f64,
    /// Sequences processed in the region (steps run x batch size).
    pub sequences: u64,
    /// Wall time of the region.
    pub seconds: f64,
    pub source: EnergySource,
}

impl Energy {
    /// Joules per 1,000 sequences; none when no sequence ran.
    pub fn per_1k_sequences(&self) -> Option<f64> {
        (self.sequences > 0).then(|| 1000.0 * self.joules / self.sequences as f64)
    }

    /// Mean power over the region, in watts.
    pub fn mean_watts(&self) -> Option<f64> {
        (self.seconds > 0.0).then(|| self.joules / self.seconds)
    }

    /// Two regions together (two processes' timings of one cell); an estimate in either
    /// makes the sum an estimate.
    pub fn plus(self, other: Energy) -> Energy {
        Energy {
            joules: self.joules + other.joules,
            sequences: self.sequences + other.sequences,
            seconds: self.seconds + other.seconds,
            source: if self.source == other.source {
                self.source
            } else {
                EnergySource::PowerTimesTime
            },
        }
    }
}

/// Measures the energy a GPU uses from [`EnergyMeter::start`] to [`EnergyMeter::finish`]: by
/// its energy counter where the driver has one, else by sampling its power draw.
pub struct EnergyMeter {
    started: Instant,
    how: Metering,
}

enum Metering {
    Counter {
        // Boxed: NVML's function table is 12 KB.
        nvml: Box<Nvml>,
        index: u32,
        start_mj: u64,
    },
    Power(PowerSampler),
}

impl EnergyMeter {
    pub fn start(ordinal: usize) -> Result<Self> {
        let nvml = Nvml::init().context("NVML is not available (no NVIDIA driver?)")?;
        let index = nvml_index(ordinal) as u32;
        let device = nvml.device_by_index(index)?;
        let how = match device.total_energy_consumption() {
            Ok(start_mj) => Metering::Counter {
                nvml: Box::new(nvml),
                index,
                start_mj,
            },
            Err(_) => {
                device
                    .power_usage()
                    .context("the GPU reports neither an energy counter nor its power draw")?;
                Metering::Power(PowerSampler::start(nvml, index))
            }
        };
        Ok(Self {
            started: Instant::now(),
            how,
        })
    }

    /// The energy used since the start, over `sequences` sequences.
    pub fn finish(self, sequences: u64) -> Result<Energy> {
        let (joules, source) = match self.how {
            Metering::Counter {
                nvml,
                index,
                start_mj,
            } => {
                let end_mj = nvml.device_by_index(index)?.total_energy_consumption()?;
                (counter_joules(start_mj, end_mj), EnergySource::Counter)
            }
            Metering::Power(sampler) => (sampler.finish()?, EnergySource::PowerTimesTime),
        };
        Ok(Energy {
            joules,
            sequences,
            seconds: self.started.elapsed().as_secs_f64(),
            source,
        })
    }
}

/// Joules between two readings of NVML's millijoule counter (it only counts up, from the
/// driver's load; a reset between the readings gives 0, not a negative).
fn counter_joules(start_mj: u64, end_mj: u64) -> f64 {
    end_mj.saturating_sub(start_mj) as f64 / 1000.0
}

/// Power samples `(seconds since start, watts)` integrated by the trapezoid rule.
fn integrate_watts(samples: &[(f64, f64)]) -> f64 {
    samples
        .windows(2)
        .map(|w| (w[1].0 - w[0].0) * (w[0].1 + w[1].1) / 2.0)
        .sum()
}

struct PowerSampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<f64>>,
}

impl PowerSampler {
    fn start(nvml: Nvml, index: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || -> Result<f64> {
            let device = nvml.device_by_index(index)?;
            let start = Instant::now();
            let mut samples = Vec::new();
            loop {
                let watts = f64::from(device.power_usage()?) / 1000.0;
                samples.push((start.elapsed().as_secs_f64(), watts));
                if flag.load(Ordering::Relaxed) {
                    return Ok(integrate_watts(&samples));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Self { stop, handle }
    }

    fn finish(self) -> Result<f64> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| anyhow::anyhow!("GPU power sampler thread panicked"))?
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
            let err = EnergyMeter::start(0).err().unwrap().to_string();
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
        let meter = EnergyMeter::start(0).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let energy = meter.finish(10).unwrap();
        assert!(energy.joules >= 0.0 && energy.seconds >= 0.2, "{energy:?}");
    }

    #[test]
    fn energy_per_sequence_and_its_sum_over_processes() {
        assert_eq!(counter_joules(10_500, 13_000), 2.5);
        assert_eq!(
            counter_joules(13_000, 10_500),
            0.0,
            "a reset is not negative energy"
        );
        // 100 W for 1 s, then a ramp to 300 W over 1 s: 100 + 200 J.
        assert!(
            (integrate_watts(&[(0.0, 100.0), (1.0, 100.0), (2.0, 300.0)]) - 300.0).abs() < 1e-12
        );
        assert_eq!(integrate_watts(&[(0.0, 100.0)]), 0.0);
        let a = Energy {
            joules: 30.0,
            sequences: 600,
            seconds: 0.5,
            source: EnergySource::Counter,
        };
        assert_eq!(a.per_1k_sequences(), Some(50.0));
        assert_eq!(a.mean_watts(), Some(60.0));
        let none = Energy {
            sequences: 0,
            seconds: 0.0,
            ..a
        };
        assert_eq!((none.per_1k_sequences(), none.mean_watts()), (None, None));
        let b = Energy {
            joules: 10.0,
            sequences: 400,
            seconds: 0.5,
            source: EnergySource::PowerTimesTime,
        };
        let both = a.plus(b);
        assert_eq!(both.per_1k_sequences(), Some(40.0));
        assert_eq!(both.source, EnergySource::PowerTimesTime);
        assert_eq!(a.plus(a).source, EnergySource::Counter);
        let text = serde_json::to_string(&b).unwrap();
        assert!(text.contains("\"power_times_time\""), "{text}");
    }
}
