//! Splitting a grid over a cluster: `bench --shard K/N` measures the K-th of N parts of the
//! grid, `--shard auto` takes K and N from the scheduler (a Slurm job array, a Kubernetes
//! Indexed Job), and [`merge`] makes one result folder from the parts.
//!
//! The split is deterministic (every task computes the same one from the same grid) and
//! balanced by each cell's expected cost, its analytic FLOPs: cells go, most expensive first,
//! to the part with the least work so far (the longest-processing-time rule, within 4/3 of the
//! best possible balance). Each part keeps its cells in the grid's order and is a normal result
//! folder that `--resume` can finish; it records the whole grid, so [`merge`] can list what is
//! missing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::env::Key;
use super::output::ResultsFile;
use super::{distinct, Cell, CellSettings, Measurement, Status};
use crate::error::input;

/// One part of a grid: the `index`-th (1-based) of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// A shard, refused unless `1 <= index <= count`.
    pub fn new(index: usize, count: usize) -> Result<Self> {
        if count == 0 || index == 0 || index > count {
            return Err(input(format!(
                "shard {index}/{count}: expected K/N with 1 <= K <= N (e.g. --shard 2/4)"
            )));
        }
        Ok(Self { index, count })
    }

    /// The shard the scheduler gave this task, read through `var` (the process environment in
    /// use): a Slurm job array task (`SLURM_ARRAY_TASK_ID` counted from
    /// `SLURM_ARRAY_TASK_MIN`, of `SLURM_ARRAY_TASK_COUNT`), or a Kubernetes Indexed Job pod
    /// (`JOB_COMPLETION_INDEX`, 0-based, of `BERTBENCH_SHARD_COUNT`, which the manifest sets to
    /// the job's completions: Kubernetes does not tell a pod the count).
    pub fn from_scheduler(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let number = |name: &str| -> Result<Option<usize>> {
            match var(name) {
                None => Ok(None),
                Some(v) => v.trim().parse::<usize>().map(Some).map_err(|_| {
                    input(format!("--shard auto: {name}={v:?} is not a whole number"))
                }),
            }
        };
        if let Some(id) = number("SLURM_ARRAY_TASK_ID")? {
            let (Some(min), Some(count)) = (
                number("SLURM_ARRAY_TASK_MIN")?,
                number("SLURM_ARRAY_TASK_COUNT")?,
            ) else {
                return Err(input(
                    "--shard auto: SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_MIN or \
                     SLURM_ARRAY_TASK_COUNT is not (Slurm sets all three in a job array)",
                ));
            };
            // Array indices may skip (--array=0-6:2); the split needs them contiguous.
            let max = number("SLURM_ARRAY_TASK_MAX")?;
            if max.is_some_and(|max| max + 1 != min + count) {
                return Err(input(format!(
                    "--shard auto: the job array's indices are not contiguous (min {min}, \
                     count {count}, max {}); submit --array=1-N, or pass --shard K/N",
                    max.unwrap_or_default()
                )));
            }
            return Shard::new((id + 1).saturating_sub(min), count);
        }
        if let Some(index) = number("JOB_COMPLETION_INDEX")? {
            let Some(count) = number("BERTBENCH_SHARD_COUNT")? else {
                return Err(input(
                    "--shard auto: JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job) but \
                     BERTBENCH_SHARD_COUNT is not: set it to the job's completions",
                ));
            };
            return Shard::new(index + 1, count);
        }
        Err(input(
            "--shard auto: no scheduler index found (expected SLURM_ARRAY_TASK_ID in a Slurm job \
             array, or JOB_COMPLETION_INDEX in a Kubernetes Indexed Job); pass --shard K/N",
        ))
    }

    /// The cells of `plan` in this shard, in plan order, when cell `i` costs `costs[i]`.
    pub fn select(&self, plan: &[Cell], costs: &[f64]) -> Vec<Cell> {
        let owner = assign(costs, self.count);
        plan.iter()
            .zip(owner)
            .filter(|(_, o)| *o + 1 == self.index)
            .map(|(c, _)| c.clone())
            .collect()
    }
}

/// Which part (0-based) of `parts` each cell goes to when cell `i` costs `costs[i]`: most
/// expensive first (ties in plan order) to the part with the least cost so far (ties to the
/// one with fewest cells, then the lowest part). A cost that is not a positive number counts
/// as nothing.
pub fn assign(costs: &[f64], parts: usize) -> Vec<usize> {
    let costs: Vec<f64> = costs
        .iter()
        .map(|&v| if v.is_finite() && v > 0.0 { v } else { 0.0 })
        .collect();
    let mut order: Vec<usize> = (0..costs.len()).collect();
    order.sort_by(|&a, &b| costs[b].total_cmp(&costs[a]).then(a.cmp(&b)));
    let mut load = vec![0.0f64; parts.max(1)];
    let mut count = vec![0usize; parts.max(1)];
    let mut owner = vec![0; costs.len()];
    for i in order {
        let part = (0..load.len())
            .min_by(|&a, &b| {
                load[a]
                    .total_cmp(&load[b])
                    .then(count[a].cmp(&count[b]))
                    .then(a.cmp(&b))
            })
            .unwrap_or(0);
        owner[i] = part;
        load[part] += costs[i];
        count[part] += 1;
    }
    owner
}

/// What a shard's `results.json` records of its place in the study.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardRecord {
    pub index: usize,
    pub count: usize,
    /// The whole grid, every shard's cells, in order.
    pub grid: Vec<Cell>,
}

/// The environment keys that name a kind of machine: shards that differ in one of them ran on
/// different kinds and are not merged (memory may differ by a few percent between VMs of one
/// kind, so it is compared within 5%).
pub const MACHINE_KEYS: [Key; 5] = [
    Key::Cpu,
    Key::LogicalCpus,
    Key::Gpu,
    Key::Isa,
    Key::CpuRamMb,
];

/// How two runs' machines differ, if they do (`None`: the same kind).
pub fn machine_difference(a: &ResultsFile, b: &ResultsFile) -> Option<String> {
    for key in MACHINE_KEYS {
        let (va, vb) = (a.env(key).unwrap_or(""), b.env(key).unwrap_or(""));
        let ram = |r: &ResultsFile| r.env_parsed::<f64>(Key::CpuRamMb);
        let same = match (key, ram(a), ram(b)) {
            (Key::CpuRamMb, Some(x), Some(y)) => (x - y).abs() <= 0.05 * x.max(y),
            _ => va == vb,
        };
        if !same {
            return Some(format!("{} {va:?} vs {vb:?}", key.name()));
        }
    }
    None
}

/// Settings that must agree for shards to be parts of one study (`offline` only says how
/// configs were found).
fn study_settings(s: &CellSettings) -> CellSettings {
    CellSettings {
        offline: false,
        ..s.clone()
    }
}

/// One shard folder, read.
struct Part {
    dir: PathBuf,
    results: ResultsFile,
    record: ShardRecord,
}

/// What [`merge`] may let through.
#[derive(Debug, Clone, Copy, Default)]
pub struct MergeOptions {
    /// Merge even when cells of the grid are missing (they stay in the plan, unmeasured).
    pub allow_missing: bool,
}

/// One results file from the shards in `dirs`: refused, with the reason, when they are not
/// parts of one study on one kind of machine (different grid, settings, bertbench version or
/// machine; a shard given twice; a cell measured in two shards), and when cells of the grid
/// are missing (listed, with the command that finishes them) unless `allow_missing`.
pub fn merge(dirs: &[PathBuf], opts: MergeOptions) -> Result<ResultsFile> {
    let parts = read_parts(dirs)?;
    let seen = check_parts(&parts)?;
    let first = &parts[0];
    let grid = first.record.grid.clone();
    let (mut measurements, owner) = measurements_of(&parts, &grid)?;
    let missing: Vec<&Cell> = grid.iter().filter(|c| !owner.contains_key(c)).collect();
    if !missing.is_empty() && !opts.allow_missing {
        return Err(missing_cells(
            &missing,
            grid.len(),
            &seen,
            first.record.count,
        ));
    }
    // Unfinished or failed cells are data, not gaps: they merge as they are.
    let failed = measurements
        .iter()
        .filter(|m| m.status != Status::Ok)
        .count();
    let mut merged = first.results.clone();
    merged.shard = None;
    merged.plan = grid.clone();
    measurements.sort_by_key(|m| grid.iter().position(|c| *c == m.cell));
    merged.measurements = measurements;
    merged.peak_matmul = best_peaks(&parts);
    let hosts = distinct(
        parts
            .iter()
            .map(|p| p.results.env(Key::Hostname).unwrap_or("").to_string()),
    );
    let hosts: Vec<String> = hosts.into_iter().filter(|h| !h.is_empty()).collect();
    for (key, value) in [
        (
            Key::MergedShards,
            format!("{} of {}", parts.len(), first.record.count),
        ),
        (Key::MergedHosts, hosts.join(" ")),
        (Key::MergedMissingCells, missing.len().to_string()),
        (Key::MergedNotOkCells, failed.to_string()),
    ] {
        merged.environment.retain(|(k, _)| k != key.name());
        merged.environment.push((key.name().into(), value));
    }
    Ok(merged)
}

/// Each folder's results with its shard record; a folder without one is not a shard.
fn read_parts(dirs: &[PathBuf]) -> Result<Vec<Part>> {
    if dirs.is_empty() {
        return Err(input("merge: no shard folders given"));
    }
    let mut parts = Vec::new();
    for dir in dirs {
        let results = ResultsFile::read(&dir.join(super::output::RESULTS_JSON))?;
        let Some(record) = results.shard.clone() else {
            return Err(input(format!(
                "{}: not a shard (its results.json has no shard record; shards come from \
                 `bench --shard K/N`)",
                dir.display()
            )));
        };
        parts.push(Part {
            dir: dir.clone(),
            results,
            record,
        });
    }
    Ok(parts)
}

/// Refuses parts that are not shards of one study (grid, version, settings, blocks, kind of
/// machine) or that repeat a shard; returns each shard's folder by its index.
fn check_parts(parts: &[Part]) -> Result<BTreeMap<usize, &Path>> {
    let first = &parts[0];
    let mut seen: BTreeMap<usize, &Path> = BTreeMap::new();
    for p in parts {
        let other = |what: &str| {
            input(format!(
                "{} and {} are not shards of one study: {what}",
                first.dir.display(),
                p.dir.display()
            ))
        };
        if p.record.count != first.record.count || p.record.grid != first.record.grid {
            return Err(other(&format!(
                "different grids (shards of {} with {} cells vs of {} with {} cells)",
                first.record.count,
                first.record.grid.len(),
                p.record.count,
                p.record.grid.len()
            )));
        }
        if p.results.bertbench_version != first.results.bertbench_version {
            return Err(other(&format!(
                "bertbench {} vs {}",
                first.results.bertbench_version, p.results.bertbench_version
            )));
        }
        let settings = |r: &ResultsFile| r.settings.as_ref().map(study_settings);
        if settings(&p.results) != settings(&first.results) {
            return Err(other(
                "different settings (precision, device, seed, weights, what was measured or \
                 the timing policy)",
            ));
        }
        // The products' blocks (sized by rule, or forced by BERTBENCH_BLOCKING).
        let blocking = |r: &ResultsFile| r.env(Key::Blocking).unwrap_or("").to_string();
        if blocking(&p.results) != blocking(&first.results) {
            return Err(other(&format!(
                "the products' blocks differ (env.csv blocking {:?} vs {:?})",
                blocking(&first.results),
                blocking(&p.results)
            )));
        }
        if let Some(diff) = machine_difference(&first.results, &p.results) {
            return Err(input(format!(
                "{} and {} ran on different kinds of machine ({diff}): results from different \
                 machines stay apart; compare them with `bertbench report {} {} --output-dir OUT`",
                first.dir.display(),
                p.dir.display(),
                first.dir.display(),
                p.dir.display()
            )));
        }
        if let Some(earlier) = seen.insert(p.record.index, &p.dir) {
            return Err(input(format!(
                "shard {}/{} given twice: {} and {}",
                p.record.index,
                p.record.count,
                earlier.display(),
                p.dir.display()
            )));
        }
    }
    Ok(seen)
}

/// Every measured cell from exactly one shard, and which shard measured it.
fn measurements_of<'a>(
    parts: &'a [Part],
    grid: &[Cell],
) -> Result<(Vec<Measurement>, BTreeMap<&'a Cell, &'a Part>)> {
    let mut owner: BTreeMap<&Cell, &Part> = BTreeMap::new();
    let mut measurements: Vec<Measurement> = Vec::new();
    for p in parts {
        for m in &p.results.measurements {
            if !grid.contains(&m.cell) {
                return Err(input(format!(
                    "{}: cell {} is not in the study's grid",
                    p.dir.display(),
                    m.cell
                )));
            }
            if let Some(q) = owner.insert(&m.cell, p) {
                return Err(input(format!(
                    "cell {} was measured twice: in {} (shard {}) and {} (shard {})",
                    m.cell,
                    q.dir.display(),
                    q.record.index,
                    p.dir.display(),
                    p.record.index
                )));
            }
            measurements.push(m.clone());
        }
    }
    Ok((measurements, owner))
}

/// The error for a merge with cells missing: the first 20 of them, the shards not given, and
/// how to finish or merge anyway.
fn missing_cells(
    missing: &[&Cell],
    grid_cells: usize,
    seen: &BTreeMap<usize, &Path>,
    count: usize,
) -> anyhow::Error {
    let absent: Vec<usize> = (1..=count).filter(|i| !seen.contains_key(i)).collect();
    let mut msg = format!(
        "{} of the grid's {} cells are missing:",
        missing.len(),
        grid_cells
    );
    for c in missing.iter().take(20) {
        msg.push_str(&format!("\n  {c}"));
    }
    if missing.len() > 20 {
        msg.push_str(&format!("\n  ... and {} more", missing.len() - 20));
    }
    if !absent.is_empty() {
        let list: Vec<String> = absent.iter().map(|i| format!("{i}/{count}")).collect();
        msg.push_str(&format!("\nshards not given: {}", list.join(", ")));
    }
    msg.push_str(
        "\nfinish a shard with `bench ... --shard K/N --resume --output-dir ITS_FOLDER`, \
         or merge what there is with --allow-missing",
    );
    input(msg)
}

/// The peak: the best rate of each shape over the shards (each measured its own).
fn best_peaks(parts: &[Part]) -> Vec<super::peak::PeakShape> {
    let mut peaks: Vec<super::peak::PeakShape> = Vec::new();
    for p in parts {
        for s in &p.results.peak_matmul {
            let same = |q: &&mut super::peak::PeakShape| {
                (q.kernel.as_str(), q.m, q.k, q.n, q.threads)
                    == (s.kernel.as_str(), s.m, s.k, s.n, s.threads)
            };
            match peaks.iter_mut().find(same) {
                Some(q) if q.gflops >= s.gflops => {}
                Some(q) => *q = s.clone(),
                None => peaks.push(s.clone()),
            }
        }
    }
    peaks
}

/// Cells' expected cost for the split: their analytic FLOPs, from each model's config (none
/// for a cell longer than the model's position table, which is refused without running).
pub fn flops_cost(
    plan: &[Cell],
    configs: &mut super::grid::Configs,
    hub: &crate::hub::HubConfig,
) -> Result<Vec<f64>> {
    plan.iter()
        .map(|c| {
            let config = configs.get(&c.model, hub)?;
            Ok(if c.sequence_length > config.max_position_embeddings {
                0.0
            } else {
                super::flops::step_flops(config, c) as f64
            })
        })
        .collect()
}

impl FromStr for ShardChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "auto" {
            return Ok(ShardChoice::Auto);
        }
        let (k, n) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected K/N (e.g. 2/4) or auto"))?;
        let parse = |v: &str| {
            v.trim()
                .parse::<usize>()
                .map_err(|_| format!("{s:?}: expected K/N with whole numbers (e.g. 2/4)"))
        };
        let shard = Shard::new(parse(k)?, parse(n)?).map_err(|e| e.to_string())?;
        Ok(ShardChoice::Fixed(shard))
    }
}

/// `--shard K/N` or `--shard auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardChoice {
    Fixed(Shard),
    Auto,
}

impl ShardChoice {
    /// The shard, reading the scheduler's variables from the process environment for `auto`.
    pub fn resolve(self) -> Result<Shard> {
        match self {
            ShardChoice::Fixed(s) => Ok(s),
            ShardChoice::Auto => Shard::from_scheduler(|k| std::env::var(k).ok()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Mode;

    fn cell(model: &str, batch: usize, seq: usize) -> Cell {
        Cell {
            model: model.into(),
            mode: Mode::Inference,
            batch_size: batch,
            sequence_length: seq,
            threads: 1,
            dtype: Some(crate::device::Precision::F32),
        }
    }

    #[test]
    fn shard_flags_parse_and_refuse() {
        assert_eq!(
            "2/4".parse::<ShardChoice>(),
            Ok(ShardChoice::Fixed(Shard { index: 2, count: 4 }))
        );
        assert_eq!("auto".parse::<ShardChoice>(), Ok(ShardChoice::Auto));
        for bad in ["0/4", "5/4", "1/0", "a/b", "3", "-1/2"] {
            let err = bad.parse::<ShardChoice>().unwrap_err();
            assert!(
                err.contains("K/N") || err.contains("1 <= K <= N"),
                "{bad}: {err}"
            );
        }
        assert_eq!(Shard { index: 3, count: 8 }.to_string(), "3/8");
    }

    #[test]
    fn the_scheduler_names_the_shard() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        // sbatch --array=1-4, task 3; --array=0-3, task 0.
        let slurm = env(&[
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_MAX", "4"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        assert_eq!(
            Shard::from_scheduler(slurm).unwrap(),
            Shard { index: 3, count: 4 }
        );
        let zero = env(&[
            ("SLURM_ARRAY_TASK_ID", "0"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_MAX", "3"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        assert_eq!(
            Shard::from_scheduler(zero).unwrap(),
            Shard { index: 1, count: 4 }
        );
        // --array=0-6:2 skips indices: refused.
        let stepped = env(&[
            ("SLURM_ARRAY_TASK_ID", "2"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_MAX", "6"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        let err = Shard::from_scheduler(stepped).unwrap_err().to_string();
        assert!(err.contains("not contiguous"), "{err}");
        let k8s = env(&[
            ("JOB_COMPLETION_INDEX", "0"),
            ("BERTBENCH_SHARD_COUNT", "5"),
        ]);
        assert_eq!(
            Shard::from_scheduler(k8s).unwrap(),
            Shard { index: 1, count: 5 }
        );
        let no_count = env(&[("JOB_COMPLETION_INDEX", "0")]);
        let err = Shard::from_scheduler(no_count).unwrap_err().to_string();
        assert!(err.contains("BERTBENCH_SHARD_COUNT"), "{err}");
        let err = Shard::from_scheduler(env(&[])).unwrap_err().to_string();
        assert!(err.contains("--shard K/N"), "{err}");
        let junk = env(&[
            ("JOB_COMPLETION_INDEX", "x"),
            ("BERTBENCH_SHARD_COUNT", "2"),
        ]);
        let err = Shard::from_scheduler(junk).unwrap_err().to_string();
        assert!(err.contains("JOB_COMPLETION_INDEX"), "{err}");
    }

    /// Every cell lands in exactly one shard, each shard keeps plan order, the split is the
    /// same every time, and the largest part is within the longest-processing-time rule's
    /// bound (4/3 of the best possible, which is at least the mean and the largest cell).
    #[test]
    fn the_split_covers_the_grid_once_and_balances_it() {
        let mut plan = Vec::new();
        for model in ["a", "b", "c"] {
            for batch in [1, 8, 32] {
                for seq in [8, 32, 128, 512] {
                    plan.push(cell(model, batch, seq));
                }
            }
        }
        let costs: Vec<f64> = plan
            .iter()
            .map(|c| (c.batch_size * c.sequence_length * c.sequence_length.max(64)) as f64)
            .collect();
        for n in [1, 2, 3, 4, 7, 36, 50] {
            let parts: Vec<Vec<Cell>> = (1..=n)
                .map(|k| Shard::new(k, n).unwrap().select(&plan, &costs))
                .collect();
            let mut all: Vec<&Cell> = parts.iter().flatten().collect();
            assert_eq!(all.len(), plan.len(), "n = {n}");
            all.sort();
            all.dedup();
            assert_eq!(all.len(), plan.len(), "a cell in two shards, n = {n}");
            for part in &parts {
                let pos: Vec<usize> = part
                    .iter()
                    .map(|c| plan.iter().position(|p| p == c).unwrap())
                    .collect();
                assert!(pos.windows(2).all(|w| w[0] < w[1]), "plan order, n = {n}");
            }
            let load = |part: &[Cell]| -> f64 {
                part.iter()
                    .map(|c| costs[plan.iter().position(|p| p == c).unwrap()])
                    .sum()
            };
            let total: f64 = costs.iter().sum();
            let largest = costs.iter().cloned().fold(0.0, f64::max);
            let bound = (total / n as f64).max(largest) * 4.0 / 3.0;
            let worst = parts.iter().map(|p| load(p)).fold(0.0, f64::max);
            assert!(worst <= bound + 1e-6, "n = {n}: {worst} > {bound}");
            assert_eq!(assign(&costs, n), assign(&costs, n));
            // More shards than cells: every cell alone, the rest empty.
            if n >= plan.len() {
                assert!(parts.iter().all(|p| p.len() <= 1));
            }
        }
        // Cells of no cost still spread out instead of piling onto one shard.
        let zeros = vec![0.0; 6];
        let owner = assign(&zeros, 3);
        for part in 0..3 {
            assert_eq!(owner.iter().filter(|&&o| o == part).count(), 2);
        }
    }
}
