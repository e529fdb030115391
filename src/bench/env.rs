//! The environment file: what machine and software produced a set of numbers.
//!
//! Keys include every key Hugging Face's benchmark wrote (so old tooling still finds them),
//! with bertbench's values, plus what a reader needs to judge the numbers: CPU model, cores,
//! threads, memory, OS and kernel, versions and the git commit.

use super::memory;
use super::CellSettings;
pub use crate::record::cpu_model;
use crate::record::{CANDLE_VERSION, GIT_COMMIT, RUSTC_VERSION, VERSION};

/// Ordered key/value pairs.
pub type EnvInfo = Vec<(String, String)>;

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
    let now = chrono::Utc::now();
    let mb = |b: Option<u64>| {
        b.map(|b| format!("{:.0}", memory::to_mb(b)))
            .unwrap_or_else(|| "N/A".into())
    };
    let use_gpu = !settings.device.is_cpu();
    let caches = crate::compute::cache::CacheSizes::detect();
    let mut info: EnvInfo = vec![
        ("bertbench_version", VERSION.to_string()),
        ("git_commit", GIT_COMMIT.to_string()),
        ("transformers_version", "N/A (bertbench)".into()),
        ("framework", "candle".into()),
        ("framework_version", CANDLE_VERSION.to_string()),
        ("candle_version", CANDLE_VERSION.to_string()),
        ("rustc_version", RUSTC_VERSION.to_string()),
        ("python_version", "N/A".into()),
        ("use_torchscript", "False".into()),
        ("system", os_name()),
        ("os", std::env::consts::OS.to_string()),
        ("kernel", kernel()),
        ("hostname", hostname()),
        ("cpu", cpu_model()),
        ("architecture", std::env::consts::ARCH.to_string()),
        ("logical_cpus", logical_cpus().to_string()),
        ("threads", settings.threads.to_string()),
        ("isa", crate::compute::Isa::current().name().to_string()),
        ("isa_available", crate::compute::Isa::available_names()),
        ("int8_kernel", crate::compute::int8::Int8Kernel::described()),
        (
            "bf16_kernel",
            crate::compute::bf16::Bf16Kernel::current()
                .name()
                .to_string(),
        ),
        ("l1d_cache_kib", (caches.l1d >> 10).to_string()),
        ("l2_cache_kib", (caches.l2 >> 10).to_string()),
        ("l2_cache_shared_by", caches.l2_shared_by.to_string()),
        (
            "l3_cache_kib",
            caches.l3.map_or("N/A".into(), |b| (b >> 10).to_string()),
        ),
        ("cache_sizes_detected", caches.detected.to_string()),
        ("blocking", blocking()),
        ("cpu_ram_mb", mb(memory::total_memory())),
        ("available_ram_mb_at_start", mb(memory::available_memory())),
        ("date", now.format("%Y-%m-%d").to_string()),
        ("time", now.format("%H:%M:%S").to_string()),
        ("timezone", "UTC".into()),
        ("dtype", settings.dtype.as_str().to_string()),
        (
            "fp16",
            (settings.dtype == crate::device::Precision::F16).to_string(),
        ),
        ("device", settings.device.to_string()),
        (
            "use_multiprocessing",
            if multiprocess { "True" } else { "False" }.into(),
        ),
        ("only_pretrain_model", "False".into()),
        (
            "weights",
            if settings.load_weights {
                "checkpoint"
            } else {
                "random (seeded)"
            }
            .into(),
        ),
        ("seed", settings.seed.to_string()),
        ("use_gpu", if use_gpu { "True" } else { "False" }.into()),
        ("num_gpus", if use_gpu { "1" } else { "0" }.into()),
        ("use_tpu", "False".into()),
        ("min_runs", settings.timing.min_runs.to_string()),
        (
            "min_time_s",
            settings.timing.min_time.as_secs_f64().to_string(),
        ),
        ("max_runs", settings.timing.max_runs.to_string()),
        (
            "max_time_s",
            settings.timing.max_time.as_secs_f64().to_string(),
        ),
        (
            "warmup_max_runs",
            settings.timing.warmup_max_runs.to_string(),
        ),
        (
            "peak_matmul_gflops",
            peak_gflops
                .map(|g| format!("{g:.1}"))
                .unwrap_or_else(|| "N/A".into()),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let gpu = settings.device.cuda_ordinal().map(super::gpu::info);
    let gpu_keys: [(&str, String); 5] = match gpu {
        Some(Ok(g)) => [
            ("gpu", g.name),
            ("gpu_driver", g.driver),
            (
                "gpu_ram_mb",
                format!("{:.0}", memory::to_mb(g.memory_total)),
            ),
            (
                "gpu_power_watts",
                g.power_watts
                    .map(|w| format!("{w:.0}"))
                    .unwrap_or_else(|| "N/A".into()),
            ),
            (
                "gpu_performance_state",
                g.performance_state.unwrap_or_else(|| "N/A".into()),
            ),
        ],
        Some(Err(e)) => {
            let na = format!("N/A ({e:#})");
            [
                ("gpu", na.clone()),
                ("gpu_driver", na.clone()),
                ("gpu_ram_mb", na.clone()),
                ("gpu_power_watts", na.clone()),
                ("gpu_performance_state", na),
            ]
        }
        None => [
            "gpu",
            "gpu_driver",
            "gpu_ram_mb",
            "gpu_power_watts",
            "gpu_performance_state",
        ]
        .map(|k| (k, "N/A".to_string())),
    };
    info.extend(gpu_keys.into_iter().map(|(k, v)| (k.to_string(), v)));
    info
}
