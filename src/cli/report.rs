//! `plot`, `report` and `run`: from results to pictures and sentences.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::bench::Mode;
use crate::cost::{resolve_price, Price};
use crate::error::input;
use crate::report::build::{write_report, ReportOptions};
use crate::report::machines::{load_machines, write_machines_report, MachinePrices};
use crate::report::plot::{self, Metric};

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// A Hugging Face-layout CSV (model,batch_size,sequence_length,result) or bertbench's tidy
    /// results.csv (which adds 95% CI error bars to time plots).
    #[arg(long, alias = "csv_file")]
    pub csv_file: PathBuf,
    /// Output figure: .png or .svg.
    #[arg(long, alias = "figure_png_file")]
    pub figure_png_file: PathBuf,
    /// Linear axes instead of logarithmic ones.
    #[arg(long, alias = "no_log_scale")]
    pub no_log_scale: bool,
    /// Batch size on the x axis (one series per model and sequence length).
    #[arg(long, alias = "plot_along_batch")]
    pub plot_along_batch: bool,
    /// The CSV holds times (default: memory).
    #[arg(long, alias = "is_time")]
    pub is_time: bool,
    /// The CSV holds training results (default: inference).
    #[arg(long, alias = "is_train")]
    pub is_train: bool,
    /// Names to show instead of the models', in order of first appearance.
    #[arg(long, alias = "short_model_names", num_args = 1..)]
    pub short_model_names: Vec<String>,
    /// Figure size in pixels, WIDTHxHEIGHT.
    #[arg(long, default_value = "1000x650", value_parser = parse_size)]
    pub size: (u32, u32),
}

fn parse_size(s: &str) -> std::result::Result<(u32, u32), String> {
    let (w, h) = s
        .split_once('x')
        .ok_or("expected WIDTHxHEIGHT, e.g. 1000x650")?;
    let parse = |v: &str| v.parse::<u32>().ok().filter(|n| (100..=10000).contains(n));
    match (parse(w), parse(h)) {
        (Some(w), Some(h)) => Ok((w, h)),
        _ => Err("width and height must be whole numbers of pixels between 100 and 10000".into()),
    }
}

pub fn plot(args: PlotArgs) -> Result<()> {
    let metric = if args.is_time {
        Metric::Time
    } else {
        Metric::Memory
    };
    let mode = if args.is_train {
        Mode::Training
    } else {
        Mode::Inference
    };
    let series = if plot::is_tidy_csv(&args.csv_file)? {
        plot::series_from_tidy_csv(
            &args.csv_file,
            mode,
            metric,
            args.plot_along_batch,
            &args.short_model_names,
        )?
    } else {
        plot::series_from_hf_csv(
            &args.csv_file,
            args.plot_along_batch,
            &args.short_model_names,
        )?
    };
    let chart = plot::hf_chart(
        series,
        metric,
        mode,
        args.plot_along_batch,
        !args.no_log_scale,
    );
    crate::chart::render(&chart, &args.figure_png_file, args.size)?;
    println!(
        "wrote {} ({} series)",
        args.figure_png_file.display(),
        chart.series.len()
    );
    Ok(())
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A bench output directory (with results.json; eval_results.json and loadgen.json files
    /// inside it add accuracy and serving), or several, one per machine, for a report across
    /// machines (then --output-dir is required).
    #[arg(required = true, num_args = 1..)]
    pub results_dirs: Vec<PathBuf>,
    /// Where the report goes (default for one folder: that folder).
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// Names of the machines, one per folder (default: from each folder's env.csv).
    #[arg(long, num_args = 1..)]
    pub machine_names: Vec<String>,
    /// Names to show instead of the models', in order of first appearance.
    #[arg(long, num_args = 1..)]
    pub short_model_names: Vec<String>,
    /// Hourly price in USD: one for one folder, one per folder (in their order) for several
    /// (takes precedence over --prices).
    #[arg(long, num_args = 1..)]
    pub price_per_hour: Vec<f64>,
    /// A TOML price table, or `builtin` for the built-in one; with several folders every
    /// machine is priced by the entry of its name.
    #[arg(long)]
    pub prices: Option<String>,
    /// The machine to take from the price table (one folder only).
    #[arg(long)]
    pub machine: Option<String>,
}

/// Where the hourly price for dollar costs comes from.
#[derive(Debug, Clone, Args)]
pub struct PriceArgs {
    /// Hourly price of this machine in USD (takes precedence over --prices).
    #[arg(long)]
    pub price_per_hour: Option<f64>,
    /// A TOML price table, or `builtin` for the built-in one (every entry names its source).
    #[arg(long)]
    pub prices: Option<String>,
    /// The machine to take from the price table (an exact name, or part of one).
    #[arg(long)]
    pub machine: Option<String>,
}

impl PriceArgs {
    pub fn resolve(&self) -> Result<Option<Price>> {
        resolve_price(
            self.price_per_hour,
            self.prices.as_deref(),
            self.machine.as_deref(),
        )
    }
}

pub fn report(args: ReportArgs) -> Result<()> {
    let files = match args.results_dirs.as_slice() {
        [dir] => {
            if !args.machine_names.is_empty() {
                return Err(input("--machine-names names the folders of a report across machines; give several folders"));
            }
            if args.price_per_hour.len() > 1 {
                return Err(input(format!(
                    "--price-per-hour gives {} prices for one folder",
                    args.price_per_hour.len()
                )));
            }
            let opts = ReportOptions {
                short_names: args.short_model_names.clone(),
                price: resolve_price(
                    args.price_per_hour.first().copied(),
                    args.prices.as_deref(),
                    args.machine.as_deref(),
                )?,
                output_dir: args.output_dir.clone(),
            };
            write_report(dir, &opts)?
        }
        dirs => {
            let Some(out) = &args.output_dir else {
                return Err(input(
                    "a report across machines needs --output-dir (it belongs to no one folder)",
                ));
            };
            if args.machine.is_some() {
                return Err(input(
                    "--machine picks one price for one folder; across machines, name each \
                     machine (--machine-names) after its entry in --prices",
                ));
            }
            let prices = MachinePrices::from_flags(&args.price_per_hour, args.prices.as_deref())?;
            let machines = load_machines(dirs, &args.machine_names, &prices)?;
            write_machines_report(&machines, out, &args.short_model_names)?
        }
    };
    for w in &files.warnings {
        eprintln!("warning: {w}");
    }
    for o in &files.observations {
        println!("- {o}");
    }
    println!(
        "\nwrote {} and {} ({} plots)",
        files.markdown.display(),
        files.html.display(),
        files.plots.len()
    );
    Ok(())
}
