//! `bertbench loadgen` (MLPerf's scenarios on a model behind the batching server, or on any
//! server speaking the QA API, with queries from a SQuAD file) and `bertbench serve` (the
//! batching server over HTTP).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use super::eval::AnswerArgs;
use super::model::ModelArgs;
use super::report::PriceArgs;
use crate::compute::Isa;
use crate::error::input;
use crate::serve::api::{Api, ServerWindows};
use crate::serve::http::{bind, HttpConfig, Loaded, ModelInfo};
use crate::serve::loadgen::{LoadgenJob, LoadgenOutcome, Questions, Target};
use crate::serve::scenario::{ProbeSummary, RunSettings, Scenario, SearchSettings, STOP};
use crate::serve::{BatcherConfig, QaEngine, Server};

/// `bertbench serve`'s arguments.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Address to listen on (loopback by default; 0.0.0.0 for every interface).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free one; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = HttpConfig::default().max_body_bytes)]
    pub max_body_bytes: usize,
    /// Connections open at once; beyond, a connection gets a 503 and is closed.
    #[arg(long, default_value_t = HttpConfig::default().max_connections)]
    pub max_connections: usize,
    /// QA requests answered at once (counted from their body's arrival); beyond, a 503.
    #[arg(long, default_value_t = HttpConfig::default().max_in_flight)]
    pub max_in_flight: usize,
    /// Time a client has to send a request's headers; an idle connection closes after it.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub header_timeout: Duration,
    /// Time a client has to send a request's body, from its headers (beyond: 408).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub body_timeout: Duration,
    /// How long SIGTERM or Ctrl-C waits for requests in flight before closing.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub shutdown_grace: Duration,
    /// Threads running connections (the model's threads are --threads).
    #[arg(long, default_value_t = HttpConfig::default().io_threads)]
    pub io_threads: usize,
}

impl ServeArgs {
    fn http(&self) -> Result<HttpConfig> {
        for (flag, v) in [
            ("--max-body-bytes", self.max_body_bytes),
            ("--max-connections", self.max_connections),
            ("--max-in-flight", self.max_in_flight),
            ("--io-threads", self.io_threads),
        ] {
            if v == 0 {
                return Err(input(format!("{flag} must be at least 1")));
            }
        }
        for (flag, d) in [
            ("--header-timeout", self.header_timeout),
            ("--body-timeout", self.body_timeout),
        ] {
            if d.is_zero() {
                return Err(input(format!("{flag} must be more than 0")));
            }
        }
        Ok(HttpConfig {
            max_body_bytes: self.max_body_bytes,
            max_connections: self.max_connections,
            max_in_flight: self.max_in_flight,
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            shutdown_grace: self.shutdown_grace,
            io_threads: self.io_threads,
        })
    }
}

pub fn serve(args: ServeArgs) -> Result<()> {
    let config = args.engine.batcher()?;
    let http = args.http()?;
    let threads = args.model.compute.use_threads()?;
    let listener = bind(&format!("{}:{}", args.host, args.port))?;
    println!(
        "serving {} on http://{}: POST /v1/qa, POST / (Hugging Face's QA task), GET /health, \
         /ready, /info, /metrics; SIGTERM or Ctrl-C stops",
        args.model.model, listener.addr
    );
    // Tests and scripts read the address from the first line; the rest goes to stderr.
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let name = args.model.model.clone();
    let served = crate::serve::http::serve(
        listener,
        &name,
        http,
        move |observer| {
            let (engine, source, dtype) = args.engine.open(&args.model)?;
            let windows = ServerWindows {
                features: engine.features,
                decode: engine.decode,
                max_positions: engine.model.config().max_position_embeddings,
            };
            let info = ModelInfo {
                model: args.model.model.clone(),
                source,
                precision: dtype,
                isa: Isa::current().name().to_string(),
                threads,
            };
            Ok(Loaded {
                server: Server::start_observed(Arc::new(engine), config, Some(observer)),
                info,
                windows,
            })
        },
        crate::serve::http::signalled(),
    )?;
    if served.abandoned > 0 {
        return Err(crate::error::unavailable(format!(
            "stopped with {} requests unanswered (--shutdown-grace ran out)",
            served.abandoned
        )));
    }
    Ok(())
}

/// The batching server's settings and how queries become windows and answers; shared by
/// `loadgen` and `serve`.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Most windows per forward pass.
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,
    /// How long the oldest window may wait for a fuller batch (ms).
    #[arg(long, default_value_t = 5.0)]
    pub max_queue_delay_ms: f64,
    /// Queries admitted and not yet answered; beyond, a query is refused (loadgen's offline
    /// scenario raises it to its wave; with --url, requests in flight).
    #[arg(long, default_value_t = 256)]
    pub queue_capacity: usize,
    /// Threads taking batches (each forward pass uses every compute thread).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    #[command(flatten)]
    pub answers: AnswerArgs,
}

impl EngineArgs {
    /// The batcher's settings, checked.
    fn batcher(&self) -> Result<BatcherConfig> {
        if !(self.max_queue_delay_ms.is_finite() && self.max_queue_delay_ms >= 0.0) {
            return Err(input(format!(
                "--max-queue-delay-ms must be 0 or more, got {}",
                self.max_queue_delay_ms
            )));
        }
        for (flag, v) in [
            ("--max-batch", self.max_batch),
            ("--queue-capacity", self.queue_capacity),
            ("--workers", self.workers),
        ] {
            if v == 0 {
                return Err(input(format!("{flag} must be at least 1")));
            }
        }
        self.answers.windows.validate()?;
        Ok(BatcherConfig {
            max_batch: self.max_batch,
            max_queue_delay: Duration::from_secs_f64(self.max_queue_delay_ms / 1e3),
            queue_capacity: self.queue_capacity,
            workers: self.workers,
        })
    }

    /// Opens the model and its tokenizer as an engine ([`QaEngine::open`]), saying on
    /// stderr what loading had to do; returns it with the model's origin and precision.
    fn open(&self, model: &ModelArgs) -> Result<(QaEngine, String, String)> {
        let opened = QaEngine::open(
            &model.spec(),
            self.answers.tokenizer.as_deref(),
            self.answers.windows,
            self.answers.decode,
        )?;
        super::model::warn_about_load(opened.report.as_ref());
        let dtype = opened.engine.model.precision().as_str().to_string();
        Ok((opened.engine, opened.source, dtype))
    }
}

#[derive(Debug, Args)]
pub struct LoadgenArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// single-stream (p90 latency, one query at a time), offline (samples/s, all at once) or
    /// server (Poisson arrivals; the highest rate meeting --target-latency).
    #[arg(long, value_enum)]
    pub scenario: Scenario,
    /// SQuAD v1.1 file the questions and contexts come from (.json or .json.gz); default: the
    /// official dev set, downloaded once into bertbench's cache and checked by its sha256.
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Draw from the first N questions only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Send every question once, in file order, and score the answers (predictions.json).
    #[arg(long)]
    pub accuracy: bool,
    /// Shortest run (e.g. 60s, 500ms, 2m).
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub min_duration: Duration,
    /// Fewest queries per run.
    #[arg(long, default_value_t = 1024)]
    pub min_query_count: usize,
    /// MLPerf's run lengths: 600 s, and 1,024 (single-stream), 270,336 (server) or 10,833
    /// (offline) queries. Overrides --min-duration and --min-query-count.
    #[arg(long)]
    pub mlperf_durations: bool,
    /// Latency bound of the server scenario (e.g. 130ms, MLPerf's for BERT).
    #[arg(long, value_parser = parse_duration, default_value = "130ms")]
    pub target_latency: Duration,
    /// Percentile judged (default: 90 for single-stream, 99 otherwise).
    #[arg(long)]
    pub percentile: Option<f64>,
    /// Server: run at this rate (QPS) once instead of searching.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Server search: the first rate tried (default: from 8 queries sent one at a time).
    #[arg(long)]
    pub start_rate: Option<f64>,
    /// Server search: stop when the bracket is this narrow (relative).
    #[arg(long, default_value_t = 0.05)]
    pub search_tolerance: f64,
    /// Server search: the most runs.
    #[arg(long, default_value_t = 12)]
    pub max_runs: usize,
    /// Seed of the query order and the arrival times.
    #[arg(long, default_value_t = 0)]
    pub arrival_seed: u64,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Drive a server at this URL (e.g. http://127.0.0.1:8080) over its QA API instead of
    /// the model in this process; --model then only names it.
    #[arg(long)]
    pub url: Option<String>,
    /// The API the server at --url speaks: bertbench's (POST /v1/qa) or Hugging Face's QA
    /// task (POST /).
    #[arg(long, value_enum, default_value_t = Api::Bertbench, requires = "url")]
    pub api: Api,
    #[command(flatten)]
    pub price: PriceArgs,
    /// Where the files go (default: loadgen-results/<date-time>).
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// Replace results already in --output-dir.
    #[arg(long)]
    pub overwrite: bool,
}

/// `60s`, `500ms`, `2m`, `1.5s` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (t, 1.0)
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(Duration::from_secs_f64(v * scale)),
        _ => Err(format!(
            "expected a duration such as 60s, 500ms or 2m, got {s:?}"
        )),
    }
}

impl LoadgenArgs {
    fn job(&self) -> Result<LoadgenJob> {
        let price = self.price.resolve()?;
        let (min_duration, min_query_count) = if self.mlperf_durations {
            let count = match self.scenario {
                Scenario::SingleStream => 1024,
                Scenario::Server => 270_336,
                Scenario::Offline => 10_833,
            };
            (Duration::from_secs(600), count)
        } else {
            (self.min_duration, self.min_query_count)
        };
        let percentile = self.percentile.unwrap_or(match self.scenario {
            Scenario::SingleStream => 90.0,
            _ => 99.0,
        });
        if self.rate.is_some() && self.scenario != Scenario::Server {
            return Err(input("--rate is for --scenario server"));
        }
        self.engine.batcher()?;
        if self.max_runs == 0 {
            return Err(input("--max-runs must be at least 1"));
        }
        if self.limit == Some(0) {
            return Err(input("--limit must be at least 1"));
        }
        Ok(LoadgenJob {
            scenario: self.scenario,
            run: RunSettings {
                min_duration,
                min_query_count,
                seed: self.arrival_seed,
                percentile,
                accuracy: self.accuracy,
            },
            rate: self.rate,
            search: SearchSettings {
                target_ms: self.target_latency.as_secs_f64() * 1e3,
                start_qps: self.start_rate,
                tolerance: self.search_tolerance,
                max_probes: self.max_runs,
            },
            output_dir: self
                .output_dir
                .clone()
                .unwrap_or_else(|| crate::record::timestamped_dir(Path::new("loadgen-results"))),
            overwrite: self.overwrite,
            price,
        })
    }
}

/// Ctrl-C: the first stops sending (what was measured is kept and written); a second quits.
fn stop_on_ctrl_c() {
    let _ = ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nstopping: waiting for the queries already sent (Ctrl-C again to quit)");
    });
}

pub fn loadgen(args: LoadgenArgs) -> Result<()> {
    let job = args.job()?;
    let batcher = args.engine.batcher()?;
    let threads = args.model.compute.use_threads()?;
    let answers = &args.engine.answers;
    let target = match &args.url {
        Some(url) => Target::Url {
            url: url.clone(),
            api: args.api,
            name: args.model.model.clone(),
        },
        None => Target::Model {
            spec: args.model.spec(),
            tokenizer: answers.tokenizer.clone(),
            decode: answers.decode,
        },
    };
    let questions = Questions {
        dataset: args.dataset.clone(),
        limit: args.limit,
        offline: args.model.offline,
    };
    stop_on_ctrl_c();
    let mut bar =
        super::Bar::new("{prefix} {bar:25} {pos}/{len} queries  {elapsed_precise}  {msg}");
    let outcome = job.drive(
        &target,
        &questions,
        batcher,
        answers.windows,
        threads,
        &mut bar,
    );
    bar.finish();
    print_loadgen(&outcome?, args.url.as_deref());
    Ok(())
}

/// What a load-generator run found, one screen: the system, each run's counts and
/// percentiles, the search's verdict, the result, the answers under load, the cost and the
/// files written.
fn print_loadgen(outcome: &LoadgenOutcome, url: Option<&str>) {
    let r = &outcome.results;
    let system = match url {
        Some(url) => format!("driving {url}"),
        None => format!(
            "{} threads, {} kernels",
            r.setup.threads,
            r.setup.isa.map_or("?", |isa| isa.name())
        ),
    };
    println!(
        "{}  ({}), {} scenario, {system}",
        r.setup.model,
        r.setup.model_source,
        r.scenario.name(),
    );
    for run in &r.runs {
        print_run(run);
    }
    if let Some(s) = &r.search {
        println!("  search: {}", s.verdict);
    }
    match r.metric {
        Some(m) => println!("  result: {} = {m:.2}", r.metric_name),
        None => println!("  result: {}: not reached", r.metric_name),
    }
    if let Some(a) = &r.accuracy {
        println!(
            "  answers under load: EM {:.2}  F1 {:.2}  over {} questions{}",
            a.exact_match,
            a.f1,
            a.questions,
            if a.inconsistent > 0 {
                format!(
                    " ({} answered differently on different occasions)",
                    a.inconsistent
                )
            } else {
                String::new()
            }
        );
    }
    if let Some(c) = &r.cost {
        println!(
            "  cost: ${:.2} per million questions at {:.2} QPS and ${}/hour ({})",
            c.usd_per_million_questions, c.qps, c.usd_per_hour, c.price
        );
    }
    if r.interrupted {
        println!("  interrupted: the results cover what was measured before Ctrl-C");
    }
    let shown: Vec<String> = outcome
        .files
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    println!("  wrote {}", shown.join(", "));
}

/// One run of a loadgen scenario: its queries, rate, latency percentiles against the bound,
/// and the mean time in each stage.
fn print_run(run: &ProbeSummary) {
    let l = &run.latency;
    let f = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.1}"));
    println!(
        "  run {:>2}{}: {} queries ({} refused, {} failed) in {:.1} s, {:.2} answered/s; \
         latency p50 {} p90 {} p99 {} ms; p{} {} ms (99% upper bound {}{}){}",
        run.probe + 1,
        run.target_qps
            .map(|q| format!(" at {q:.2} QPS"))
            .unwrap_or_default(),
        run.queries,
        run.refused,
        run.failed,
        run.duration_s,
        run.achieved_qps,
        f(l.p50_ms),
        f(l.p90_ms),
        f(l.p99_ms),
        l.percentile,
        f(l.percentile_ms),
        f(l.percentile_upper_ms),
        if l.estimable() {
            String::new()
        } else {
            format!(": too few queries, {} needed", l.queries_needed)
        },
        match run.met {
            Some(true) => "  bound met",
            Some(false) => "  bound NOT met",
            None => "",
        }
    );
    if let Some(s) = &run.mean_stage_ms {
        println!(
            "          mean stages: tokenise {:.2} ms, queue {:.2} ms, model {:.2} ms, \
             decode {:.2} ms; {:.2} windows per query, {:.2} per batch",
            s.tokenize_ms,
            s.queue_ms,
            s.model_ms,
            s.decode_ms,
            s.windows_per_query,
            s.windows_per_batch
        );
    }
}
