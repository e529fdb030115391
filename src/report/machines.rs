//! One report across machines: the same study's result folders from different machines side by
//! side, speed ratios between the machines with intervals, and, with a price per machine, the
//! dollar cost of each machine x model and the cheapest machine for each model at each shape
//! (and at the latency bound, where `loadgen` results sit in the folders).
//!
//! A machine is one result folder (a run, or shards merged with `bertbench merge`), named from
//! its environment file (CPU or GPU model, logical CPUs) unless the user names it.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use super::build::{display_name, figure, files_named, ReportFiles};
use super::plot;
use super::render::{self, dash, Block, Column};
use crate::bench::env::Key;
use crate::bench::memory::to_mb;
use crate::bench::output::ResultsFile;
use crate::bench::ratio_interval;
use crate::bench::{distinct, fmt_time, Cell, Measurement, Mode, Status};
use crate::chart::{Chart, Series};
use crate::cost::{usd_for_seconds, usd_per_1000_questions, Price, PriceTable, BUILTIN};
use crate::device::DeviceSpec;
use crate::error::input;
use crate::serve::loadgen::{self, LoadgenResults};
use crate::serve::Scenario;

/// One machine's results.
#[derive(Debug, Clone)]
pub struct Machine {
    pub name: String,
    pub dir: PathBuf,
    pub results: ResultsFile,
    /// Its hourly price, when known.
    pub price: Option<Price>,
}

/// Where the machines' prices come from.
#[derive(Debug, Clone, Default)]
pub enum MachinePrices {
    /// No prices: no cost tables.
    #[default]
    None,
    /// One USD-per-hour price per folder, in the folders' order.
    PerFolder(Vec<f64>),
    /// A price table with an entry per machine name ([`PriceTable::find`]).
    Table(PriceTable),
}

impl MachinePrices {
    /// From the command line: one price per folder wins over a table (a path, or `builtin`);
    /// neither, no prices.
    pub fn from_flags(per_folder: &[f64], table: Option<&str>) -> Result<Self> {
        Ok(match (per_folder, table) {
            ([_, ..], _) => MachinePrices::PerFolder(per_folder.to_vec()),
            ([], Some(BUILTIN)) => MachinePrices::Table(PriceTable::builtin()?),
            ([], Some(path)) => MachinePrices::Table(PriceTable::from_file(Path::new(path))?),
            ([], None) => MachinePrices::None,
        })
    }

    /// The price of the `i`th folder's machine, named `name`, read from `dir`.
    fn price_for(&self, i: usize, name: &str, dir: &Path) -> Result<Option<Price>> {
        Ok(match self {
            MachinePrices::None => None,
            MachinePrices::PerFolder(p) => {
                let usd = p[i];
                if !usd.is_finite() || usd < 0.0 {
                    return Err(input(format!(
                        "--price-per-hour must be finite numbers >= 0, got {usd}"
                    )));
                }
                Some(Price {
                    name: name.to_string(),
                    description: None,
                    usd_per_hour: usd,
                    source: None,
                    date: None,
                })
            }
            MachinePrices::Table(t) => Some(
                t.find(name)
                    .with_context(|| {
                        format!(
                            "pricing machine {name:?} ({}); name the machines after the table's \
                             entries with --machine-names",
                            dir.display()
                        )
                    })?
                    .clone(),
            ),
        })
    }
}

/// A machine's name from its environment: the GPU when the run used one, else the CPU model
/// (without trademark marks and "Processor"), its logical CPUs and its memory.
pub fn machine_label(results: &ResultsFile) -> String {
    let gpu = results.env(Key::Gpu).unwrap_or("");
    let on_gpu = results
        .env_parsed::<DeviceSpec>(Key::Device)
        .is_some_and(|d| !d.is_cpu());
    if on_gpu && !gpu.is_empty() && !gpu.starts_with("N/A") {
        return gpu.to_string();
    }
    let cpu = results
        .env(Key::Cpu)
        .unwrap_or("")
        .replace("(R)", "")
        .replace("(TM)", "")
        .replace(" Processor", "")
        .replace(" CPU", "");
    let cpu = cpu.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut label = if cpu.is_empty() {
        "unknown CPU".into()
    } else {
        cpu
    };
    if let Some(n) = results.env_parsed::<usize>(Key::LogicalCpus) {
        label.push_str(&format!(", {n} CPUs"));
    }
    if let Some(mb) = results.env_parsed::<f64>(Key::CpuRamMb) {
        label.push_str(&format!(", {:.0} GB", mb / 1024.0));
    }
    label
}

/// Reads the folders as machines, named by `names` (one per folder, unique) or from their
/// environment (a name two folders share gets `#2`, `#3`), priced by `prices`.
pub fn load_machines(
    dirs: &[PathBuf],
    names: &[String],
    prices: &MachinePrices,
) -> Result<Vec<Machine>> {
    if !names.is_empty() && names.len() != dirs.len() {
        return Err(input(format!(
            "--machine-names gives {} names for {} result folders: give one per folder",
            names.len(),
            dirs.len()
        )));
    }
    if let MachinePrices::PerFolder(p) = prices {
        if p.len() != dirs.len() {
            return Err(input(format!(
                "--price-per-hour gives {} prices for {} result folders: give one per folder, \
                 in the folders' order",
                p.len(),
                dirs.len()
            )));
        }
    }
    let mut machines: Vec<Machine> = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let path = dir.join(crate::bench::output::RESULTS_JSON);
        if !path.is_file() {
            return Err(input(format!(
                "{}: no results.json (each folder is one machine's `bertbench bench` output)",
                dir.display()
            )));
        }
        let results = ResultsFile::read(&path)?;
        let name = machine_name(names.get(i), &machines, &results)?;
        let price = prices.price_for(i, &name, dir)?;
        machines.push(Machine {
            name,
            dir: dir.clone(),
            results,
            price,
        });
    }
    Ok(machines)
}

/// A machine's name: the one given (not empty, not given twice), else [`machine_label`] with
/// `#2`, `#3` after it where machines already `named` have that label.
fn machine_name(
    given: Option<&String>,
    named: &[Machine],
    results: &ResultsFile,
) -> Result<String> {
    match given {
        Some(n) if n.trim().is_empty() => Err(input("--machine-names: a name is empty")),
        Some(n) if named.iter().any(|m| m.name == *n) => {
            Err(input(format!("--machine-names: {n:?} is given twice")))
        }
        Some(n) => Ok(n.clone()),
        None => {
            let base = machine_label(results);
            let taken = named
                .iter()
                .filter(|m| m.name == base || m.name.starts_with(&format!("{base} #")))
                .count();
            Ok(if taken == 0 {
                base
            } else {
                format!("{base} #{}", taken + 1)
            })
        }
    }
}

/// The thread count a machine is compared at: its largest (a folder that swept thread counts
/// is compared at the most it was given).
fn compared_threads(m: &Machine) -> usize {
    m.results.plan.iter().map(|c| c.threads).max().unwrap_or(0)
}

/// One machine's measurement of a cell of `model` at a shape, at [`compared_threads`].
fn cell_of<'a>(
    m: &'a Machine,
    model: &str,
    shape: (Mode, usize, usize),
) -> Option<&'a Measurement> {
    let (mode, batch, seq) = shape;
    let threads = compared_threads(m);
    m.results
        .measurements
        .iter()
        .rev()
        .find(|x| {
            x.cell.variant() == model
                && x.cell.threads == threads
                && (x.cell.mode, x.cell.batch_size, x.cell.sequence_length) == (mode, batch, seq)
        })
        .filter(|x| x.status == Status::Ok)
}

/// The models and shapes any machine measured, in first-seen plan order.
fn grid(machines: &[Machine]) -> (Vec<String>, Vec<(Mode, usize, usize)>) {
    let cells: Vec<&Cell> = machines
        .iter()
        .flat_map(|m| m.results.plan.iter())
        .collect();
    let models = distinct(cells.iter().map(|c| c.variant()));
    let mut shapes = distinct(
        cells
            .iter()
            .map(|c| (c.mode, c.batch_size, c.sequence_length)),
    );
    shapes.sort();
    (models, shapes)
}

/// "123.4 ms [120.1, 130.2]" from a measurement's best interval (2-level when it has one).
fn time_with_interval(m: &Measurement) -> Option<String> {
    let s = m.speed.as_ref()?;
    let (point, low, high) = s.median_interval();
    Some(format!(
        "{} [{}, {}]",
        fmt_time(point),
        fmt_time(low),
        fmt_time(high)
    ))
}

/// Seconds per step at the level the interval is from.
fn point_time(m: &Measurement) -> Option<f64> {
    m.speed.as_ref().map(|s| s.median_interval().0)
}

/// Dollars per 1,000 sequences of the cell's shape (one sequence per question) on `price`.
fn usd_per_1000(m: &Measurement, price: &Price) -> Option<f64> {
    let t = point_time(m)?;
    Some(usd_per_1000_questions(
        m.cell.batch_size as f64 / t,
        1.0,
        price.usd_per_hour,
    ))
}

const TITLE: &str = "bertbench report: comparing machines";

const NO_PRICES: &str = "No cost tables: give every machine a price (`--price-per-hour` once \
     per folder, or `--prices TABLE` with an entry named after each machine).";

const NO_OBSERVATION: &str =
    "No speed ratio between machines excludes 1: no machine is faster beyond the intervals.";

/// How the report's times and ratios are to be read, after its counts.
const HOW_TO_READ: &str = "Times are medians per step with their 95% interval (2-level, across \
     processes, where a machine timed cells in several). A speed ratio is the first machine's \
     time over the other's (above 1: the other is faster), with the conservative interval of \
     the two intervals.";

/// Writes `report.md`, `report.html` and `plots/*.png` into `out`, comparing `machines`.
pub fn write_machines_report(
    machines: &[Machine],
    out: &Path,
    short_names: &[String],
) -> Result<ReportFiles> {
    if machines.len() < 2 {
        return Err(input(
            "a report across machines needs at least two result folders",
        ));
    }
    std::fs::create_dir_all(out).map_err(|e| {
        input(format!(
            "cannot create output directory {}: {e}",
            out.display()
        ))
    })?;
    let (models, shapes) = grid(machines);
    let name = |model: &str| -> String {
        models
            .iter()
            .position(|m| m == model)
            .and_then(|i| short_names.get(i).cloned())
            .unwrap_or_else(|| display_name(model))
    };
    let mut warnings = Vec::new();
    let mut observations = Vec::new();
    let mut blocks = vec![
        Block::Heading(1, TITLE.into()),
        Block::Paragraph(format!(
            "{} machines, {} models, {} shapes. {HOW_TO_READ}",
            machines.len(),
            models.len(),
            shapes.len()
        )),
    ];
    blocks.extend(machines_section(machines));

    // Side by side, ratios against the first machine, memory and cost, per mode.
    for mode in [Mode::Inference, Mode::Training] {
        let at: Vec<_> = shapes.iter().copied().filter(|s| s.0 == mode).collect();
        if !at.is_empty() {
            blocks.extend(mode_section(
                machines,
                &models,
                &at,
                &name,
                mode,
                &mut observations,
            ));
        }
    }
    if machines.iter().any(|m| m.price.is_none()) {
        blocks.push(Block::Paragraph(NO_PRICES.into()));
    }
    blocks.extend(serving_section(
        machines,
        &name,
        &mut warnings,
        &mut observations,
    ));
    let (plot_blocks, plots) = plots_section(machines, out, short_names)?;
    blocks.extend(plot_blocks);
    let bullets = if observations.is_empty() {
        vec![NO_OBSERVATION.into()]
    } else {
        observations.clone()
    };
    blocks.insert(2, Block::Heading(2, "Observations".into()));
    blocks.insert(3, Block::Bullets(bullets));
    ReportFiles::write(out, TITLE, &blocks, plots, observations, warnings)
}

/// One model at one shape on every machine: a row of the tables across machines.
struct ShapeRow<'a> {
    model: String,
    shape: (Mode, usize, usize),
    /// Each machine's measurement ([`cell_of`]), in the machines' order.
    cells: Vec<Option<&'a Measurement>>,
}

impl ShapeRow<'_> {
    /// Machine `i`'s speed relative to the first machine's, with its interval.
    fn ratio(&self, i: usize) -> Option<Ratio> {
        let base = self.cells[0]?.speed.as_ref()?;
        let other = self.cells[i]?.speed.as_ref()?;
        Some(ratio_interval(base, other))
    }

    /// Machine `i`'s peak RSS in MB, where it measured it.
    fn peak_mb(&self, i: usize) -> Option<f64> {
        self.cells[i]?.memory.as_ref().map(|m| to_mb(m.peak_rss))
    }

    /// Machine `i`'s USD per 1,000 sequences, where it has a time and a price.
    fn usd(&self, machines: &[Machine], i: usize) -> Option<f64> {
        usd_per_1000(self.cells[i]?, machines[i].price.as_ref()?)
    }

    /// The fastest machine's index.
    fn fastest(&self) -> Option<usize> {
        self.cells
            .iter()
            .enumerate()
            .filter_map(|(i, c)| Some((point_time((*c)?)?, i)))
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, i)| i)
    }

    /// The cheapest machine and, where another machine is priced too, the runner-up with
    /// whether the runner-up costs more beyond the interval of their cost ratio.
    fn cheapest(&self, machines: &[Machine]) -> Option<(usize, Option<(usize, bool)>)> {
        let mut ranked: Vec<(f64, usize)> = (0..machines.len())
            .filter_map(|i| Some((self.usd(machines, i)?, i)))
            .collect();
        ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (&(_, best), next) = (ranked.first()?, ranked.get(1));
        let runner_up = next.map(|&(_, next)| {
            let (a, b) = (&machines[next], &machines[best]);
            let (_, lo, _) = cost_ratio(
                self.cells[next]?,
                a.price.as_ref()?,
                self.cells[best]?,
                b.price.as_ref()?,
            );
            Some((next, lo > 1.0))
        });
        Some((best, runner_up.flatten()))
    }
}

/// The rows of one mode's tables: every model at every shape of `at` that some machine measured,
/// models first.
fn shape_rows<'a>(
    machines: &'a [Machine],
    models: &[String],
    at: &[(Mode, usize, usize)],
) -> Vec<ShapeRow<'a>> {
    let mut rows = Vec::new();
    for model in models {
        for &shape in at {
            let cells: Vec<Option<&Measurement>> =
                machines.iter().map(|m| cell_of(m, model, shape)).collect();
            if cells.iter().any(Option::is_some) {
                rows.push(ShapeRow {
                    model: model.clone(),
                    shape,
                    cells,
                });
            }
        }
    }
    rows
}

/// The columns every table across machines starts with: model, batch, sequence length.
fn lead_columns<'a>(name: &'a dyn Fn(&str) -> String) -> Vec<Column<'a, ShapeRow<'a>>> {
    vec![
        Column::new("model", move |r: &ShapeRow| name(&r.model)),
        Column::new("batch", |r: &ShapeRow| r.shape.1.to_string()),
        Column::new("seq", |r: &ShapeRow| r.shape.2.to_string()),
    ]
}

/// One mode's tables across machines: time per step with the fastest machine, speed
/// relative to the first machine (an observation for each ratio whose interval excludes 1),
/// peak memory where measured, and cost where every machine has a price.
fn mode_section(
    machines: &[Machine],
    models: &[String],
    at: &[(Mode, usize, usize)],
    name: &dyn Fn(&str) -> String,
    mode: Mode,
    observations: &mut Vec<String>,
) -> Vec<Block> {
    let base = &machines[0];
    let rows = shape_rows(machines, models, at);
    for row in &rows {
        for (i, other) in machines.iter().enumerate().skip(1) {
            match row.ratio(i) {
                Some((r, lo, hi)) if lo > 1.0 || hi < 1.0 => observations.push(format!(
                    "{} {} b{} s{}: {} is {r:.2}x as fast as {} [{lo:.2}, {hi:.2}].",
                    name(&row.model),
                    mode.as_str(),
                    row.shape.1,
                    row.shape.2,
                    other.name,
                    base.name
                )),
                _ => {}
            }
        }
    }
    let title = match mode {
        Mode::Inference => "Inference",
        Mode::Training => "Training",
    };
    let mut time = lead_columns(name);
    for (i, m) in machines.iter().enumerate() {
        time.push(Column::new(m.name.clone(), move |r: &ShapeRow| {
            r.cells[i].and_then(time_with_interval).unwrap_or_else(dash)
        }));
    }
    time.push(Column::new("fastest", |r: &ShapeRow| {
        r.fastest()
            .map(|i| machines[i].name.clone())
            .unwrap_or_else(dash)
    }));
    let mut ratio = lead_columns(name);
    for (i, m) in machines.iter().enumerate().skip(1) {
        ratio.push(Column::new(
            format!("{} vs {}", m.name, base.name),
            move |r: &ShapeRow| {
                r.ratio(i)
                    .map(|(r, lo, hi)| format!("{r:.2} [{lo:.2}, {hi:.2}]"))
                    .unwrap_or_else(dash)
            },
        ));
    }
    let mut blocks = vec![
        Block::Heading(2, format!("{title}: time per step")),
        render::table(&rows, &time),
        Block::Heading(3, format!("{title}: speed relative to {}", base.name)),
        render::table(&rows, &ratio),
    ];
    let measured: Vec<&ShapeRow> = rows
        .iter()
        .filter(|r| (0..machines.len()).any(|i| r.peak_mb(i).is_some()))
        .collect();
    if !measured.is_empty() {
        let mut memory = lead_columns(name);
        for (i, m) in machines.iter().enumerate() {
            memory.push(Column::new(
                format!("{} peak RSS MB", m.name),
                move |r: &ShapeRow| r.peak_mb(i).map(|v| format!("{v:.0}")).unwrap_or_else(dash),
            ));
        }
        blocks.push(Block::Heading(3, format!("{title}: peak memory")));
        blocks.push(render::table(measured.iter().copied(), &memory));
    }
    if machines.iter().all(|m| m.price.is_some()) {
        let (b, o) = cost_section(machines, &rows, name, title);
        blocks.extend(b);
        observations.extend(o);
    }
    blocks
}

/// A speed ratio and its 95% interval: `(ratio, low, high)`.
type Ratio = (f64, f64, f64);

/// The machines' facts, one row each.
fn machines_section(machines: &[Machine]) -> Vec<Block> {
    let env = |k: Key| move |m: &Machine| m.results.env(k).unwrap_or("").to_string();
    let columns: Vec<Column<Machine>> = vec![
        Column::new("machine", |m: &Machine| m.name.clone()),
        Column::new("folder", |m: &Machine| m.dir.display().to_string()),
        Column::new("CPU", env(Key::Cpu)),
        Column::new("CPUs", env(Key::LogicalCpus)),
        Column::new("RAM MB", env(Key::CpuRamMb)),
        Column::new("GPU", env(Key::Gpu)),
        Column::new("kernels", env(Key::Isa)),
        Column::new("L2 KiB", env(Key::L2CacheKib)),
        Column::new("threads compared", |m: &Machine| {
            compared_threads(m).to_string()
        }),
        Column::new("processes per cell", |m: &Machine| {
            m.results
                .measurements
                .iter()
                .filter_map(|x| x.speed.as_ref().map(|s| s.processes()))
                .max()
                .unwrap_or(0)
                .to_string()
        }),
        Column::new("measured", move |m: &Machine| {
            format!("{} {} UTC", env(Key::Date)(m), env(Key::Time)(m))
        }),
        Column::new("bertbench", move |m: &Machine| {
            format!(
                "{} ({})",
                env(Key::BertbenchVersion)(m),
                env(Key::GitCommit)(m)
            )
        }),
        Column::new("USD/hour", |m: &Machine| {
            m.price
                .as_ref()
                .map(|p| format!("{}", p.usd_per_hour))
                .unwrap_or_else(dash)
        }),
    ];
    vec![
        Block::Heading(2, "Machines".into()),
        render::table(machines, &columns),
    ]
}

/// USD per 1,000 sequences per machine x model at each shape of `rows`, the cheapest machine,
/// and an observation per model and cheapest machine.
fn cost_section(
    machines: &[Machine],
    rows: &[ShapeRow],
    name: &dyn Fn(&str) -> String,
    title: &str,
) -> (Vec<Block>, Vec<String>) {
    let priced: Vec<&ShapeRow> = rows
        .iter()
        .filter(|r| (0..machines.len()).any(|i| r.usd(machines, i).is_some()))
        .collect();
    let mut columns = lead_columns(name);
    for (i, m) in machines.iter().enumerate() {
        columns.push(Column::new(
            format!("{} USD", m.name),
            move |r: &ShapeRow| {
                r.usd(machines, i)
                    .map(|c| format!("{c:.5}"))
                    .unwrap_or_else(dash)
            },
        ));
    }
    columns.push(Column::new("cheapest", |r: &ShapeRow| {
        match r.cheapest(machines) {
            None => dash(),
            Some((best, Some((next, false)))) => format!(
                "{} (tied with {})",
                machines[best].name, machines[next].name
            ),
            Some((best, _)) => machines[best].name.clone(),
        }
    }));
    let mut observations = Vec::new();
    let models = distinct(priced.iter().map(|r| r.model.clone()));
    for model in models {
        // (cheapest machine, whether the runner-up costs more beyond the intervals), at each
        // shape where two machines are priced
        let wins: Vec<(&str, bool)> = priced
            .iter()
            .filter(|r| r.model == model)
            .filter_map(|r| match r.cheapest(machines)? {
                (best, Some((_, clear))) => Some((machines[best].name.as_str(), clear)),
                (_, None) => None,
            })
            .collect();
        for m in distinct(wins.iter().map(|(n, _)| *n)) {
            let n = wins.iter().filter(|(w, _)| *w == m).count();
            let clear = wins.iter().filter(|(w, c)| *w == m && *c).count();
            observations.push(format!(
                "{} ({}): {m} is the cheapest machine at {n} of {} shapes ({clear} beyond the \
                 intervals of the runner-up's cost).",
                name(&model),
                title.to_lowercase(),
                wins.len()
            ));
        }
    }
    (
        vec![
            Block::Heading(3, format!("{title}: USD per 1000 sequences")),
            Block::Paragraph(
                "The time of 1000 sequences of the cell's shape at its measured throughput, on \
                 each machine's hourly price (one sequence per question; the machine busy all \
                 the time it is paid for). The cheapest machine is \"tied\" with the runner-up \
                 when the interval of their cost ratio (the speed ratio's, times the prices' \
                 ratio) includes 1."
                    .into(),
            ),
            render::table(priced.iter().copied(), &columns),
        ],
        observations,
    )
}

/// The ratio of two machines' cost per sequence at one cell, `a` over `b`, with the interval
/// of their speed ratio ([`ratio_interval`]) scaled by the prices' ratio.
fn cost_ratio(a: &Measurement, pa: &Price, b: &Measurement, pb: &Price) -> (f64, f64, f64) {
    let (Some(sa), Some(sb)) = (a.speed.as_ref(), b.speed.as_ref()) else {
        return (f64::NAN, f64::NAN, f64::NAN);
    };
    // Cost per sequence is time per step / batch x price, and the batches are the same cell's.
    let (r, lo, hi) = ratio_interval(sa, sb);
    let prices = pa.usd_per_hour / pb.usd_per_hour;
    (r * prices, lo * prices, hi * prices)
}

/// Serving results (`loadgen`) found in the machines' folders: each model's rate per machine in
/// each scenario and, with prices, USD per million questions and the cheapest machine.
fn serving_section(
    machines: &[Machine],
    name: &dyn Fn(&str) -> String,
    warnings: &mut Vec<String>,
    observations: &mut Vec<String>,
) -> Vec<Block> {
    let found = serving_results(machines, warnings);
    if found.is_empty() {
        return Vec::new();
    }
    let rows = serving_rows(machines, &found);
    let priced = machines.iter().all(|m| m.price.is_some());
    if priced {
        for row in rows.iter().filter(|r| r.scenario == Scenario::Server) {
            if let Some((u, i)) = row.cheapest() {
                observations.push(format!(
                    "{} served within its latency bound: cheapest on {}, {u:.2} USD per million questions.",
                    name(&row.model),
                    machines[i].name
                ));
            }
        }
    }
    let mut columns: Vec<Column<ServingRow>> = vec![
        Column::new("model", |r: &ServingRow| name(&r.model)),
        Column::new("scenario", |r: &ServingRow| r.scenario.name().to_string()),
        Column::new("metric", |r: &ServingRow| r.metric.clone()),
    ];
    for (i, m) in machines.iter().enumerate() {
        columns.push(Column::new(m.name.clone(), move |r: &ServingRow| {
            r.per[i]
                .and_then(|r| r.metric)
                .map(|v| format!("{v:.2}"))
                .unwrap_or_else(dash)
        }));
    }
    if priced {
        for (i, m) in machines.iter().enumerate() {
            columns.push(Column::new(
                format!("{} USD per million", m.name),
                move |r: &ServingRow| r.usd[i].map(|u| format!("{u:.2}")).unwrap_or_else(dash),
            ));
        }
        columns.push(Column::new("cheapest", |r: &ServingRow| {
            r.cheapest()
                .map(|(_, i)| machines[i].name.clone())
                .unwrap_or_else(dash)
        }));
    }
    vec![
        Block::Heading(2, "Serving under load".into()),
        Block::Paragraph(
            "From `bertbench loadgen` results in each machine's folder: SingleStream, the judged \
             latency percentile (ms); Offline, answered questions per second; Server, the \
             highest rate meeting the latency bound. USD per million questions is the machine \
             busy at that rate all the time it is paid for."
                .into(),
        ),
        render::table(&rows, &columns),
    ]
}

/// Every `loadgen` result under the machines' folders, with its machine's index; a file that
/// cannot be read is a warning.
fn serving_results(
    machines: &[Machine],
    warnings: &mut Vec<String>,
) -> Vec<(usize, LoadgenResults)> {
    let mut found = Vec::new();
    for (i, m) in machines.iter().enumerate() {
        for p in files_named(&m.dir, loadgen::RESULTS_FILE) {
            match LoadgenResults::read(&p) {
                Ok(r) => found.push((i, r)),
                Err(e) => warnings.push(format!("skipped {e:#}")),
            }
        }
    }
    found
}

/// A row per model, scenario and metric found: each machine's latest result and its cost.
fn serving_rows<'a>(
    machines: &[Machine],
    found: &'a [(usize, LoadgenResults)],
) -> Vec<ServingRow<'a>> {
    let keys = distinct(
        found
            .iter()
            .map(|(_, r)| (r.setup.model.clone(), r.scenario, r.metric_name.clone())),
    );
    keys.into_iter()
        .map(|(model, scenario, metric)| {
            let per: Vec<Option<&LoadgenResults>> = (0..machines.len())
                .map(|i| {
                    found
                        .iter()
                        .rev()
                        .find(|(j, r)| {
                            *j == i
                                && r.setup.model == model
                                && r.scenario == scenario
                                && r.metric_name == metric
                        })
                        .map(|(_, r)| r)
                })
                .collect();
            let usd = per
                .iter()
                .zip(machines)
                .map(|(r, m)| {
                    let qps = r.and_then(|r| r.qps())?;
                    Some(usd_for_seconds(1e6 / qps, m.price.as_ref()?.usd_per_hour))
                })
                .collect();
            ServingRow {
                model,
                scenario,
                metric,
                per,
                usd,
            }
        })
        .collect()
}

/// A row of the serving table: one model, scenario and figure on every machine.
struct ServingRow<'a> {
    model: String,
    scenario: Scenario,
    metric: String,
    /// Each machine's latest result, in the machines' order.
    per: Vec<Option<&'a LoadgenResults>>,
    /// Each machine's USD per million questions at its rate, where it has a price.
    usd: Vec<Option<f64>>,
}

impl ServingRow<'_> {
    /// The cheapest machine's cost and index.
    fn cheapest(&self) -> Option<(f64, usize)> {
        self.usd
            .iter()
            .enumerate()
            .filter_map(|(i, u)| Some(((*u)?, i)))
            .min_by(|a, b| a.0.total_cmp(&b.0))
    }
}

/// Time and memory against sequence length and batch size, one line per machine x model (x
/// the other axis), into `out/plots`.
fn plots_section(
    machines: &[Machine],
    out: &Path,
    short_names: &[String],
) -> Result<(Vec<Block>, Vec<PathBuf>)> {
    let plots_dir = out.join("plots");
    let mut blocks = Vec::new();
    let mut files = Vec::new();
    for view in plot::views() {
        // A machine's lines keep the colours of the first machine's (one model, one colour)
        // and take its own dash pattern: solid, dashed, dotted.
        let series: Vec<Series> = machines
            .iter()
            .enumerate()
            .flat_map(|(k, m)| {
                let names: Vec<String> = if short_names.is_empty() {
                    super::observe::models(&m.results)
                        .iter()
                        .map(|x| display_name(x))
                        .collect()
                } else {
                    short_names.to_vec()
                };
                plot::series_from_results(
                    &m.results,
                    view.mode,
                    view.metric,
                    view.along_batch,
                    &names,
                )
                .into_iter()
                .enumerate()
                .map(|(i, s)| Series {
                    label: format!("{}: {}", m.name, s.label),
                    points: s.points,
                    color: Some(i),
                    dash: k.min(2) as u8,
                })
                .collect::<Vec<_>>()
            })
            .collect();
        if !series.iter().any(|s| s.points.len() >= 2) {
            continue;
        }
        let mut chart: Chart =
            plot::hf_chart(series, view.metric, view.mode, view.along_batch, true);
        let axis = if view.along_batch {
            "batch size"
        } else {
            "sequence length"
        };
        chart.title = format!("{} across machines, by {axis}", chart.title);
        let (fig, png) = figure(&chart, &plots_dir, &view.name, (1100, 700))?;
        blocks.push(fig);
        files.push(png);
    }
    if !blocks.is_empty() {
        blocks.insert(0, Block::Heading(2, "Plots".into()));
    }
    Ok((blocks, files))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_env(pairs: &[(&str, &str)]) -> ResultsFile {
        ResultsFile {
            environment: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..ResultsFile::default()
        }
    }

    #[test]
    fn machines_are_named_from_their_environment() {
        let cpu = with_env(&[
            ("cpu", "Intel(R) Xeon(R) Platinum 8488C CPU @ 2.40GHz"),
            ("logical_cpus", "8"),
            ("cpu_ram_mb", "31642"),
            ("device", "cpu"),
            ("gpu", "N/A"),
        ]);
        assert_eq!(
            machine_label(&cpu),
            "Intel Xeon Platinum 8488C @ 2.40GHz, 8 CPUs, 31 GB"
        );
        let amd = with_env(&[
            ("cpu", "AMD EPYC 9R14 96-Core Processor"),
            ("logical_cpus", "2"),
        ]);
        assert_eq!(machine_label(&amd), "AMD EPYC 9R14 96-Core, 2 CPUs");
        let gpu = with_env(&[
            ("cpu", "AMD EPYC"),
            ("device", "cuda:0"),
            ("gpu", "NVIDIA H200"),
        ]);
        assert_eq!(machine_label(&gpu), "NVIDIA H200");
        assert_eq!(machine_label(&with_env(&[])), "unknown CPU");
    }

    #[test]
    fn prices_come_per_folder_or_from_a_table() {
        assert!(matches!(
            MachinePrices::from_flags(&[], None).unwrap(),
            MachinePrices::None
        ));
        assert!(matches!(
            MachinePrices::from_flags(&[0.1, 0.2], Some(BUILTIN)).unwrap(),
            MachinePrices::PerFolder(p) if p == [0.1, 0.2]
        ));
        assert!(matches!(
            MachinePrices::from_flags(&[], Some(BUILTIN)).unwrap(),
            MachinePrices::Table(_)
        ));
        assert!(MachinePrices::from_flags(&[], Some("/no/such/prices.toml")).is_err());
    }
}
