//! Synthetic bench results (seeded, exactly known) for tests of comparison and reporting.

use std::path::{Path, PathBuf};

use bertbench::bench::output::ResultsFile;
use bertbench::bench::{Cell, CellSettings, Measurement, Memory, Mode, Speed, Status};
use bertbench::bench::{TimingPolicy, Timings};
use bertbench::device::Precision;
use bertbench::stats::Summary;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, LogNormal};

/// Runs per cell, as a default bench run of a fast cell gives.
pub const RUNS: usize = 30;

pub fn settings() -> CellSettings {
    CellSettings {
        dtype: Precision::F32,
        device: bertbench::device::DeviceSpec::Cpu,
        threads: 2,
        isa: Default::default(),
        seed: 0,
        speed: true,
        memory: false,
        load_weights: false,
        offline: true,
        timing: TimingPolicy::default(),
    }
}

pub fn cell(model: &str, batch: usize) -> Cell {
    Cell {
        model: model.into(),
        mode: Mode::Inference,
        batch_size: batch,
        sequence_length: 128,
        threads: 2,
        dtype: Some(bertbench::device::Precision::F32),
    }
}

/// `RUNS` timings with median about `median_s` and a 4% log-normal spread, from `seed`.
pub fn timings(seed: u64, median_s: f64) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    let dist = LogNormal::new(median_s.ln(), 0.04).unwrap();
    (0..RUNS).map(|_| dist.sample(&mut rng)).collect()
}

pub fn measured(cell: Cell, samples: Vec<f64>) -> Measurement {
    Measurement {
        speed: Some(Speed {
            between: None,
            energy: None,
            summary: Summary::of(&samples).unwrap(),
            timings: Timings {
                warmup: vec![samples[0] * 1.5],
                samples,
            },
        }),
        ..failed(cell, Status::Ok)
    }
}

pub fn failed(cell: Cell, status: Status) -> Measurement {
    Measurement {
        cell,
        status,
        reason: (status != Status::Ok).then(|| "synthetic".to_string()),
        speed: None,
        memory: None,
        flops: 1_000_000,
        estimated_bytes: 0,
        settings: settings(),
        drift: Vec::new(),
    }
}

/// Writes `dir/results.json` holding `measurements`.
pub fn write_run(dir: &Path, measurements: Vec<Measurement>) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let results = ResultsFile {
        bertbench_version: "test".into(),
        settings: Some(settings()),
        plan: measurements.iter().map(|m| m.cell.clone()).collect(),
        measurements,
        ..Default::default()
    };
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&results).unwrap(),
    )
    .unwrap();
    dir.to_path_buf()
}

/// A cell of any shape.
pub fn cell_at(model: &str, mode: Mode, batch: usize, seq: usize) -> Cell {
    Cell {
        model: model.into(),
        mode,
        batch_size: batch,
        sequence_length: seq,
        threads: 2,
        dtype: Some(bertbench::device::Precision::F32),
    }
}

/// A measurement whose every timing is `median_s` (so its CI is the median itself) and whose
/// peak memory is `model_bytes + activation_bytes`.
pub fn exact(cell: Cell, median_s: f64, model_bytes: u64, activation_bytes: u64) -> Measurement {
    let mut m = measured(cell, vec![median_s; 10]);
    m.memory = Some(Memory {
        baseline_rss: 10 << 20,
        model_rss: model_bytes,
        peak_rss: model_bytes + activation_bytes,
        peak_rss_reset: true,
        alloc_before_step: model_bytes,
        alloc_peak: model_bytes + activation_bytes,
        gpu_process_peak: None,
        gpu_device_peak: None,
    });
    m
}
