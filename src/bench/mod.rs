//! The measurement engine: latency, throughput and peak memory of each model over a grid of
//! batch sizes and sequence lengths, for inference and training.
//!
//! A grid is a list of [`Cell`]s; each becomes one [`Measurement`], including the cells that
//! could not run (their status and reason are data too). [`grid`] runs the cells (each in a
//! fresh child process by default), [`cell`] measures one cell in the current process,
//! [`output`] writes the results as they come, and [`run`] is a whole run (plan, resume, peak,
//! cells, largest-batch search) as one call.

pub(crate) mod cell;
pub mod child;
pub mod drift;
pub(crate) mod env;
pub(crate) mod flops;
pub(crate) mod gpu;
pub(crate) mod grid;
pub mod memory;
pub mod output;
pub(crate) mod peak;
pub(crate) mod progress;
pub(crate) mod run;
pub(crate) mod shard;
pub(crate) mod timer;

use serde::{Deserialize, Serialize};

use crate::device::{DeviceSpec, Precision};
use crate::stats::{self, Summary};
pub use gpu::{Energy, EnergySource};
pub use run::{run_bench, BenchConfig, BenchOutcome};
pub use timer::{TimingPolicy, Timings};

/// What a step of a cell does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One forward pass, no gradients.
    Inference,
    /// Forward, QA loss on random start/end positions, backward, AdamW step.
    Training,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Inference => "inference",
            Mode::Training => "training",
        }
    }
}

/// One point of the grid.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cell {
    pub model: String,
    pub mode: Mode,
    pub batch_size: usize,
    pub sequence_length: usize,
    /// Compute threads (`bench --threads 1 2 ...` sweeps them). Results written before the
    /// thread axis have none here; reading them fills in the run's thread count.
    #[serde(default)]
    pub threads: usize,
    /// Precision (`bench --dtype f32 int8 ...` sweeps them). Results written before the
    /// precision axis have none here; reading them fills in the run's.
    #[serde(default)]
    pub dtype: Option<Precision>,
}

impl Cell {
    /// The cell's precision (f32 for a cell made without one).
    pub fn precision(&self) -> Precision {
        self.dtype.unwrap_or(Precision::F32)
    }

    /// The model at the cell's precision, as reports name a row: the model alone at f32, the
    /// model and the precision otherwise (`bert-base-uncased int8`), so a run that sweeps
    /// precisions compares them as it compares models.
    pub fn variant(&self) -> String {
        match self.precision() {
            Precision::F32 => self.model.clone(),
            p => format!("{} {}", self.model, p.as_str()),
        }
    }

    /// A [`Self::variant`] label split into the model and the precision's suffix (`" int8"`,
    /// or empty at f32).
    pub fn split_variant(label: &str) -> (&str, &str) {
        for p in [Precision::Int8, Precision::Bf16, Precision::F16] {
            let suffix = p.as_str();
            if let Some(model) = label.strip_suffix(suffix).and_then(|m| m.strip_suffix(' ')) {
                return (model, &label[model.len()..]);
            }
        }
        (label, "")
    }

    /// Whether two cells ran at the same thread count and precision.
    pub fn same_setup(&self, other: &Cell) -> bool {
        (self.threads, self.precision()) == (other.threads, other.precision())
    }

    /// The same step on the same input shape (mode, batch size, sequence length), whatever
    /// the model and thread count.
    pub fn same_shape(&self, other: &Cell) -> bool {
        (self.mode, self.batch_size, self.sequence_length)
            == (other.mode, other.batch_size, other.sequence_length)
    }
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} b{} s{} t{}",
            self.variant(),
            self.mode.as_str(),
            self.batch_size,
            self.sequence_length,
            self.threads
        )
    }
}

/// How a cell ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Measured.
    Ok,
    /// Not run: the sequence is longer than the model's position table.
    SequenceTooLong,
    /// Not run: the memory estimate exceeds `--max-memory`.
    TooLarge,
    /// Ran and reported an error (e.g. an allocation failure it could catch).
    Failed,
    /// The child process died (killed, out of memory, crashed) before reporting.
    Crashed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::SequenceTooLong => "sequence_too_long",
            Status::TooLarge => "too_large",
            Status::Failed => "failed",
            Status::Crashed => "crashed",
        }
    }
}

/// Speed of a cell: raw timings (seconds per step) and their summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Speed {
    /// Every process's timings, pooled (in the order the processes ran).
    pub timings: Timings,
    /// Summary of the pooled samples; its median interval is the within-process one.
    pub summary: Summary,
    /// Measured in several processes (`bench --processes K`): each one's median and the
    /// two-level interval they give; absent for one process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub between: Option<stats::Between>,
    /// On a GPU: the energy the device used while the cell was timed (warm-up included),
    /// summed over the processes; absent on the CPU and where the driver reports none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy: Option<Energy>,
}

impl Speed {
    /// Processes the timings come from.
    pub fn processes(&self) -> usize {
        self.between.as_ref().map_or(1, stats::Between::processes)
    }

    /// The median's point and 95% interval at the level that covers the most: across
    /// processes when there are several, else within the one.
    pub fn median_interval(&self) -> (f64, f64, f64) {
        match &self.between {
            Some(b) => (b.center, b.low, b.high),
            None => (
                self.summary.median,
                self.summary.median_ci_low,
                self.summary.median_ci_high,
            ),
        }
    }
}

/// Ratio of two cells' medians with an interval: each side's point and interval at the level
/// that covers the most ([`Speed::median_interval`]: across processes when it was
/// timed in several, else within the one); conservative ([lo_a/hi_b, hi_a/lo_b]).
pub fn ratio_interval(a: &Speed, b: &Speed) -> (f64, f64, f64) {
    let (ma, la, ha) = a.median_interval();
    let (mb, lb, hb) = b.median_interval();
    // A wide two-level interval can reach below zero: a time is never negative.
    (ma / mb, la.max(0.0) / hb, ha / lb.max(f64::MIN_POSITIVE))
}

/// Memory of a cell, in bytes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// Resident set before the model was built.
    pub baseline_rss: u64,
    /// Resident set once the model and inputs existed.
    pub model_rss: u64,
    /// Peak resident set of the process through the measured step.
    pub peak_rss: u64,
    /// Whether the peak could be reset before the step (else it covers the whole process life).
    pub peak_rss_reset: bool,
    /// Bytes held through the allocator when the step started (weights, inputs, optimizer).
    pub alloc_before_step: u64,
    /// Peak bytes held through the allocator during the step.
    pub alloc_peak: u64,
    /// CUDA only: device memory used by this process / by the whole device, peak of samples.
    pub gpu_process_peak: Option<u64>,
    pub gpu_device_peak: Option<u64>,
}

impl Memory {
    /// Peak resident memory above the process's baseline before the model was built.
    pub fn peak_above_baseline(&self) -> u64 {
        self.peak_rss.saturating_sub(self.baseline_rss)
    }
}

/// Settings every cell of a run shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellSettings {
    pub dtype: Precision,
    /// `cpu` or `cuda:N` (written as that text).
    pub device: DeviceSpec,
    pub threads: usize,
    /// The CPU kernels' tier (results written before it existed read as `auto`).
    #[serde(default)]
    pub isa: crate::compute::isa::IsaChoice,
    pub seed: u64,
    pub speed: bool,
    pub memory: bool,
    /// Load the checkpoint's weights instead of random ones (speed does not depend on them).
    pub load_weights: bool,
    pub offline: bool,
    pub timing: TimingPolicy,
}

/// The result of one cell, whatever happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    pub cell: Cell,
    pub status: Status,
    /// Why the cell did not end `ok`; warnings (e.g. noise) when it did.
    pub reason: Option<String>,
    pub speed: Option<Speed>,
    pub memory: Option<Memory>,
    /// Analytic FLOPs of one step.
    pub flops: u64,
    /// Memory the engine estimated before running (bytes).
    pub estimated_bytes: u64,
    pub settings: CellSettings,
    /// The drift monitor's calibration, one per process that timed the cell (CPU only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<drift::DriftSample>,
}

impl Measurement {
    /// A row for a cell that did not produce numbers.
    pub fn failed(
        cell: Cell,
        status: Status,
        reason: String,
        flops: u64,
        estimated_bytes: u64,
        settings: &CellSettings,
    ) -> Self {
        Self {
            cell,
            status,
            reason: Some(reason),
            speed: None,
            memory: None,
            flops,
            estimated_bytes,
            settings: settings.clone(),
            drift: Vec::new(),
        }
    }

    /// Processes this cell's numbers come from (0 for a row without timings or memory).
    pub fn processes(&self) -> usize {
        match (&self.speed, &self.memory) {
            (Some(s), _) => s.processes(),
            (None, Some(_)) => 1,
            (None, None) => 0,
        }
    }

    /// This measurement with one more process's (`bench --processes K`): timings pooled, the
    /// process medians and their two-level interval updated, the memory of the process that
    /// peaked highest kept. A process that failed leaves the numbers as they were and adds its
    /// reason; a first success replaces a failed row.
    pub fn merged(self, next: Measurement) -> Measurement {
        if next.status != Status::Ok {
            if self.status != Status::Ok {
                return next;
            }
            let why = next.reason.unwrap_or_else(|| next.status.as_str().into());
            let note = format!("a later process did not finish: {why}");
            return Measurement {
                reason: Some(match self.reason {
                    Some(r) => format!("{r}; {note}"),
                    None => note,
                }),
                ..self
            };
        }
        if self.status != Status::Ok {
            return next;
        }
        let speed = match (self.speed, next.speed) {
            (Some(mut s), Some(n)) => {
                let mut medians = s
                    .between
                    .as_ref()
                    .map(|b| b.medians.clone())
                    .unwrap_or_else(|| vec![s.summary.median]);
                medians.push(n.summary.median);
                s.timings.warmup.extend(n.timings.warmup);
                s.timings.samples.extend(n.timings.samples);
                if let Some(pooled) = stats::Summary::of(&s.timings.samples) {
                    s.summary = pooled;
                }
                s.between = stats::Between::of(&medians);
                s.energy = match (s.energy, n.energy) {
                    (Some(a), Some(b)) => Some(a.plus(b)),
                    (a, b) => a.or(b),
                };
                Some(s)
            }
            (s, n) => s.or(n),
        };
        let mut drift = self.drift;
        drift.extend(next.drift);
        let memory = match (self.memory, next.memory) {
            (Some(a), Some(b)) => Some(if b.peak_rss > a.peak_rss { b } else { a }),
            (a, b) => a.or(b),
        };
        Measurement {
            speed,
            memory,
            drift,
            reason: self.reason.or(next.reason),
            ..self
        }
    }

    /// Median seconds per step.
    pub fn median_s(&self) -> Option<f64> {
        self.speed.as_ref().map(|s| s.summary.median)
    }

    /// Achieved GFLOP/s at the median.
    pub fn gflops(&self) -> Option<f64> {
        self.median_s().map(|m| self.flops as f64 / m / 1e9)
    }

    pub fn samples_per_s(&self) -> Option<f64> {
        self.median_s().map(|m| self.cell.batch_size as f64 / m)
    }

    pub fn tokens_per_s(&self) -> Option<f64> {
        self.median_s()
            .map(|m| (self.cell.batch_size * self.cell.sequence_length) as f64 / m)
    }
}

/// The values of `items` in first-seen order, each once (the grid's axes, the models and
/// thread counts of a plan).
pub fn distinct<T: PartialEq + Clone>(items: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// "1 thread", "2 threads".
pub fn threads_label(n: usize) -> String {
    if n == 1 {
        "1 thread".into()
    } else {
        format!("{n} threads")
    }
}

/// Seconds in a readable unit (s, ms or µs).
pub fn fmt_time(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.3} s")
    } else if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Between;

    /// Two processes' timings of one GPU cell: their energies add up (an estimate in either
    /// makes the sum one), and a process without a reading leaves the other's.
    #[test]
    fn merged_processes_add_their_energy() {
        let settings = CellSettings {
            dtype: Precision::F16,
            device: DeviceSpec::Cuda(0),
            ..run::default_settings(1)
        };
        let cell = Cell {
            model: "m".into(),
            mode: Mode::Inference,
            batch_size: 8,
            sequence_length: 128,
            threads: 1,
            dtype: Some(Precision::F16),
        };
        let timed = |joules: Option<f64>, source: EnergySource| {
            let samples = vec![0.01; 5];
            Measurement {
                status: Status::Ok,
                reason: None,
                speed: Some(Speed {
                    timings: Timings {
                        warmup: vec![],
                        samples: samples.clone(),
                    },
                    summary: Summary::of(&samples).unwrap(),
                    between: None,
                    energy: joules.map(|joules| Energy {
                        joules,
                        sequences: 400,
                        seconds: 0.1,
                        source,
                    }),
                }),
                ..Measurement::failed(cell.clone(), Status::Ok, String::new(), 0, 0, &settings)
            }
        };
        let energy = |m: Measurement| m.speed.unwrap().energy;
        let both = timed(Some(20.0), EnergySource::Counter)
            .merged(timed(Some(60.0), EnergySource::PowerTimesTime));
        let e = energy(both).unwrap();
        assert_eq!((e.joules, e.sequences), (80.0, 800));
        assert_eq!(e.per_1k_sequences(), Some(100.0));
        assert_eq!(e.source, EnergySource::PowerTimesTime);
        let one =
            timed(None, EnergySource::Counter).merged(timed(Some(8.0), EnergySource::Counter));
        assert_eq!(energy(one).unwrap().joules, 8.0);
        let none = timed(None, EnergySource::Counter).merged(timed(None, EnergySource::Counter));
        assert!(energy(none).is_none());
    }

    #[test]
    fn distinct_keeps_first_seen_order() {
        assert_eq!(distinct([3, 1, 3, 2, 1]), vec![3, 1, 2]);
        assert!(distinct(Vec::<u8>::new()).is_empty());
        assert_eq!(
            (threads_label(1), threads_label(4)),
            ("1 thread".into(), "4 threads".into())
        );
    }

    /// Fewer than two processes give no interval; the ratio falls back to the within-process
    /// intervals, and uses the two-level ones when both sides have them.
    #[test]
    fn ratios_use_the_two_level_interval_when_there_is_one() {
        assert!(Between::of(&[1.0]).is_none());
        let speed = |v: f64, between: Option<Between>| Speed {
            timings: Timings {
                warmup: vec![],
                samples: vec![v; 6],
            },
            summary: Summary::of(&[v; 6]).unwrap(),
            between,
            energy: None,
        };
        assert_eq!(
            ratio_interval(&speed(2.0, None), &speed(1.0, None)),
            (2.0, 2.0, 2.0)
        );
        let wa = Between::of(&[1.9, 2.0, 2.1]).unwrap();
        let wb = Between::of(&[0.9, 1.0, 1.1]).unwrap();
        let (r, lo, hi) =
            ratio_interval(&speed(2.0, Some(wa.clone())), &speed(1.0, Some(wb.clone())));
        assert!((r - 2.0).abs() < 1e-12);
        assert!((lo - wa.low / wb.high).abs() < 1e-12 && (hi - wa.high / wb.low).abs() < 1e-12);
        assert!(lo < 2.0 && hi > 2.0);
        // An interval reaching below zero bounds the ratio by 0 and a huge number, never a
        // negative one.
        let wide = Between::of(&[0.1, 1.0, 1.9]).unwrap();
        assert!(wide.low < 0.0);
        let (_, lo, hi) = ratio_interval(&speed(1.0, Some(wide.clone())), &speed(1.0, None));
        assert_eq!(lo, 0.0);
        let (_, lo, hi2) = ratio_interval(&speed(1.0, None), &speed(1.0, Some(wide)));
        assert!(lo > 0.0 && hi2 > 1e300 && hi < 1e300);
    }
}
