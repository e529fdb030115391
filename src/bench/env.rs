//! The environment file: what machine and software produced a set of numbers.
//!
//! Keys include every key Hugging Face's benchmark wrote (so old tooling still finds them),
//! with bertbench's values, plus what a reader needs to judge the numbers: CPU model, cores,
//! threads, memory, OS and kernel, versions and the git commit.

use super::memory;
use super::CellSettings;
pub use crate::record::cpu_model;
use crate::record::{CANDLE_VERSION, GIT_COMMIT, RUSTC_VERSION, VERSION};

/// Ordered key/value pairs, as the file holds them.
pub type EnvInfo = Vec<(String, String)>;

/// Declares [`Key`] and its spellings.
macro_rules! keys {
    ($($variant:ident => $name:literal),* $(,)?) => {
        /// The environment file's keys: every key bertbench writes, in the order `collect`
        /// writes them (then the GPU's, then those a precision sweep and a merge add), so a
        /// reader names a key by type, not by its spelling. Files keep them as text, so a
        /// file from another version reads whatever keys it has.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Key {
            $($variant),*
        }

        impl Key {
            /// Every key, in the order above.
            #[cfg(test)]
            pub const ALL: &[Key] = &[$(Key::$variant),*];

            /// The key as the file spells it.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Key::$variant => $name),*
                }
            }
        }
    };
}

keys! {
    BertbenchVersion => "bertbench_version",
    GitCommit => "git_commit",
    TransformersVersion => "transformers_version",
    Framework => "framework",
    FrameworkVersion => "framework_version",
    CandleVersion => "candle_version",
    RustcVersion => "rustc_version",
    PythonVersion => "python_version",
    UseTorchscript => "use_torchscript",
    System => "system",
    Os => "os",
    Kernel => "kernel",
    Hostname => "hostname",
    Cpu => "cpu",
    Architecture => "architecture",
    LogicalCpus => "logical_cpus",
    Threads => "threads",
    Isa => "isa",
    IsaAvailable => "isa_available",
    Int8Kernel => "int8_kernel",
    Bf16Kernel => "bf16_kernel",
    L1dCacheKib => "l1d_cache_kib",
    L2CacheKib => "l2_cache_kib",
    L2CacheSharedBy => "l2_cache_shared_by",
    L3CacheKib => "l3_cache_kib",
    CacheSizesDetected => "cache_sizes_detected",
    Blocking => "blocking",
    CpuRamMb => "cpu_ram_mb",
    AvailableRamMbAtStart => "available_ram_mb_at_start",
    Date => "date",
    Time => "time",
    Timezone => "timezone",
    Dtype => "dtype",
    Fp16 => "fp16",
    Device => "device",
    UseMultiprocessing => "use_multiprocessing",
    OnlyPretrainModel => "only_pretrain_model",
    Weights => "weights",
    Seed => "seed",
    UseGpu => "use_gpu",
    NumGpus => "num_gpus",
    UseTpu => "use_tpu",
    MinRuns => "min_runs",
    MinTimeS => "min_time_s",
    MaxRuns => "max_runs",
    MaxTimeS => "max_time_s",
    WarmupMaxRuns => "warmup_max_runs",
    PeakMatmulGflops => "peak_matmul_gflops",
    Gpu => "gpu",
    GpuDriver => "gpu_driver",
    GpuRamMb => "gpu_ram_mb",
    GpuPowerWatts => "gpu_power_watts",
    GpuPerformanceState => "gpu_performance_state",
    Dtypes => "dtypes",
    MergedShards => "merged_shards",
    MergedHosts => "merged_hosts",
    MergedMissingCells => "merged_missing_cells",
    MergedNotOkCells => "merged_not_ok_cells",
}

/// The machine's host name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`), empty if unknown:
/// a merged study lists the hosts its shards ran on.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

fn os_name() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("PRETTY_NAME=")).map(|l| {
                l.trim_start_matches("PRETTY_NAME=")
                    .trim_matches('"')
                    .to_string()
            })
        })
        .unwrap_or_else(|| std::env::consts::OS.to_string())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// How the products' blocks were sized: `rule` (from the cache sizes beside it), or the
/// `MC,KC` that `BERTBENCH_BLOCKING` forced on every product of the run.
fn blocking() -> String {
    match crate::compute::packed::Blocking::forced() {
        Ok(Some(b)) => format!("{},{}", b.mc, b.kc),
        // A malformed value is refused before a run computes (`compute::isa::use_isa`).
        _ => "rule".into(),
    }
}

/// Logical CPUs this process may use.
pub fn logical_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Collects the environment for a run with `settings`; `multiprocess` says whether cells ran in
/// child processes, `peak_gflops` is the machine's measured matmul rate if known.
pub fn collect(settings: &CellSettings, multiprocess: bool, peak_gflops: Option<f64>) -> EnvInfo {
    let mut info = software();
    info.extend(machine(settings.threads));
    info.extend(run(settings, multiprocess, peak_gflops));
    info.extend(gpu(settings));
    info.into_iter()
        .map(|(k, v)| (k.name().to_string(), v))
        .collect()
}

/// Megabytes as the file writes them, `N/A` where unknown.
fn mb(bytes: Option<u64>) -> String {
    bytes
        .map(|b| format!("{:.0}", memory::to_mb(b)))
        .unwrap_or_else(|| "N/A".into())
}

/// Hugging Face's `True`/`False`.
fn py_bool(b: bool) -> String {
    if b { "True" } else { "False" }.into()
}

/// bertbench's and its framework's versions (and Hugging Face's keys for them).
fn software() -> Vec<(Key, String)> {
    vec![
        (Key::BertbenchVersion, VERSION.to_string()),
        (Key::GitCommit, GIT_COMMIT.to_string()),
        (Key::TransformersVersion, "N/A (bertbench)".into()),
        (Key::Framework, "candle".into()),
        (Key::FrameworkVersion, CANDLE_VERSION.to_string()),
        (Key::CandleVersion, CANDLE_VERSION.to_string()),
        (Key::RustcVersion, RUSTC_VERSION.to_string()),
        (Key::PythonVersion, "N/A".into()),
        (Key::UseTorchscript, py_bool(false)),
    ]
}

/// The machine: OS, CPU and the threads used of it, the kernel tier and kernels, caches and
/// how the products' blocks were sized, memory.
fn machine(threads: usize) -> Vec<(Key, String)> {
    let caches = crate::compute::cache::CacheSizes::detect();
    vec![
        (Key::System, os_name()),
        (Key::Os, std::env::consts::OS.to_string()),
        (Key::Kernel, kernel()),
        (Key::Hostname, hostname()),
        (Key::Cpu, cpu_model()),
        (Key::Architecture, std::env::consts::ARCH.to_string()),
        (Key::LogicalCpus, logical_cpus().to_string()),
        (Key::Threads, threads.to_string()),
        (Key::Isa, crate::compute::Isa::current().name().to_string()),
        (Key::IsaAvailable, crate::compute::Isa::available_names()),
        (
            Key::Int8Kernel,
            crate::compute::int8::Int8Kernel::described(),
        ),
        (
            Key::Bf16Kernel,
            crate::compute::bf16::Bf16Kernel::current()
                .name()
                .to_string(),
        ),
        (Key::L1dCacheKib, (caches.l1d >> 10).to_string()),
        (Key::L2CacheKib, (caches.l2 >> 10).to_string()),
        (Key::L2CacheSharedBy, caches.l2_shared_by.to_string()),
        (
            Key::L3CacheKib,
            caches.l3.map_or("N/A".into(), |b| (b >> 10).to_string()),
        ),
        (Key::CacheSizesDetected, caches.detected.to_string()),
        (Key::Blocking, blocking()),
        (Key::CpuRamMb, mb(memory::total_memory())),
        (Key::AvailableRamMbAtStart, mb(memory::available_memory())),
    ]
}

/// The run: when, at what precision on which device, the weights, and the timing policy.
fn run(
    settings: &CellSettings,
    multiprocess: bool,
    peak_gflops: Option<f64>,
) -> Vec<(Key, String)> {
    let now = chrono::Utc::now();
    let use_gpu = !settings.device.is_cpu();
    let timing = &settings.timing;
    vec![
        (Key::Date, now.format("%Y-%m-%d").to_string()),
        (Key::Time, now.format("%H:%M:%S").to_string()),
        (Key::Timezone, "UTC".into()),
        (Key::Dtype, settings.dtype.as_str().to_string()),
        (
            Key::Fp16,
            (settings.dtype == crate::device::Precision::F16).to_string(),
        ),
        (Key::Device, settings.device.to_string()),
        (Key::UseMultiprocessing, py_bool(multiprocess)),
        (Key::OnlyPretrainModel, py_bool(false)),
        (
            Key::Weights,
            if settings.load_weights {
                "checkpoint"
            } else {
                "random (seeded)"
            }
            .into(),
        ),
        (Key::Seed, settings.seed.to_string()),
        (Key::UseGpu, py_bool(use_gpu)),
        (Key::NumGpus, if use_gpu { "1" } else { "0" }.into()),
        (Key::UseTpu, py_bool(false)),
        (Key::MinRuns, timing.min_runs.to_string()),
        (Key::MinTimeS, timing.min_time.as_secs_f64().to_string()),
        (Key::MaxRuns, timing.max_runs.to_string()),
        (Key::MaxTimeS, timing.max_time.as_secs_f64().to_string()),
        (Key::WarmupMaxRuns, timing.warmup_max_runs.to_string()),
        (
            Key::PeakMatmulGflops,
            peak_gflops
                .map(|g| format!("{g:.1}"))
                .unwrap_or_else(|| "N/A".into()),
        ),
    ]
}

/// The GPU's facts (NVML) on a CUDA run, `N/A` (with the reason where NVML failed) otherwise.
fn gpu(settings: &CellSettings) -> Vec<(Key, String)> {
    const KEYS: [Key; 5] = [
        Key::Gpu,
        Key::GpuDriver,
        Key::GpuRamMb,
        Key::GpuPowerWatts,
        Key::GpuPerformanceState,
    ];
    let values: [String; 5] = match settings.device.cuda_ordinal().map(super::gpu::info) {
        Some(Ok(g)) => [
            g.name,
            g.driver,
            format!("{:.0}", memory::to_mb(g.memory_total)),
            g.power_watts
                .map(|w| format!("{w:.0}"))
                .unwrap_or_else(|| "N/A".into()),
            g.performance_state.unwrap_or_else(|| "N/A".into()),
        ],
        Some(Err(e)) => std::array::from_fn(|_| format!("N/A ({e:#})")),
        None => std::array::from_fn(|_| "N/A".to_string()),
    };
    KEYS.into_iter().zip(values).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file is written in [`Key`]'s order, every key once: the GPU's keys follow the
    /// machine's, and the ones a sweep or a merge adds are the only ones left over.
    #[test]
    fn the_file_is_written_in_the_keys_order() {
        let settings = crate::bench::run::default_settings(1);
        let info = collect(&settings, false, None);
        let written: Vec<&str> = info.iter().map(|(k, _)| k.as_str()).collect();
        let all: Vec<&str> = Key::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(written, all[..written.len()]);
        assert_eq!(
            all[written.len()..],
            [
                "dtypes",
                "merged_shards",
                "merged_hosts",
                "merged_missing_cells",
                "merged_not_ok_cells"
            ]
        );
    }
}
