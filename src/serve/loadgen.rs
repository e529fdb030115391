//! One load-generator run written to a folder: what `bertbench loadgen` does.
//!
//! Files (nothing existing is replaced without `overwrite`):
//! * `queries.csv`: every query of every run (arrival, stages, batch, answer, status);
//! * `loadgen.json`: how the runs were made and what they measured ([`LoadgenResults`]);
//! * `loadgen.csv`: one row per run (rate, throughput, percentiles, verdict);
//! * `latency_vs_load.png` / `.svg` (server scenario): p50/p90/p99 against the rate reached;
//! * `predictions.json` in accuracy mode, the answers given under load.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::api::Api;
use super::batcher::{BatcherConfig, Server};
use super::client::HttpSut;
use super::engine::QaEngine;
use super::scenario::{
    offline, queries_from, search, server, single_stream, Probe, ProbeSummary, Progress, Query,
    QueryRecord, RunSettings, Scenario, SearchSettings, Sut,
};
use crate::chart::{render, Chart, Point, Series};
use crate::compute::Isa;
use crate::cost::{usd_for_seconds, Price};
use crate::device::Precision;
use crate::error::input;
use crate::hub::HubConfig;
use crate::job::Observer;
use crate::models::ModelSpec;
use crate::record::{atomic_write, cpu_model};
use crate::squad::{evaluate, read_dataset, Dataset, DecodeConfig, FeatureConfig};

/// The file names a loadgen folder holds.
pub const RESULTS_FILE: &str = "loadgen.json";
pub const SUMMARY_FILE: &str = "loadgen.csv";
pub const RECORDS_FILE: &str = "queries.csv";
pub const PLOT_STEM: &str = "latency_vs_load";
pub use crate::squad::decode::PREDICTIONS_FILE;

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadgenJob {
    pub scenario: Scenario,
    pub run: RunSettings,
    /// Server: a fixed rate (one run) instead of the search.
    pub rate: Option<f64>,
    /// Server: the bound and how to search.
    pub search: SearchSettings,
    pub output_dir: PathBuf,
    pub overwrite: bool,
    /// The hourly price dollar costs are computed with, when given.
    pub price: Option<Price>,
}

/// Where a load generator's questions come from.
#[derive(Debug, Clone, Default)]
pub struct Questions {
    /// A SQuAD v1.1 file (`.json` or `.json.gz`); `None`: the official dev set, downloaded
    /// once into bertbench's cache and checked by its sha256.
    pub dataset: Option<PathBuf>,
    /// Draw from the first N questions only.
    pub limit: Option<usize>,
    /// Never download (as `HF_HUB_OFFLINE=1`).
    pub offline: bool,
}

impl Questions {
    /// The dataset's path (downloading the dev set where none is given) and its questions,
    /// the first `limit` of them where a limit is given.
    fn read(&self) -> Result<(PathBuf, Dataset)> {
        let path = match &self.dataset {
            Some(p) => p.clone(),
            None => crate::squad::download::dev_set(HubConfig::from_env(self.offline).offline)?,
        };
        let dataset = read_dataset(&path)?;
        let dataset = match self.limit {
            Some(n) => dataset.first_questions(n),
            None => dataset,
        };
        Ok((path, dataset))
    }
}

/// What [`Target::open`] opened: the system under test, the in-process server behind it (to
/// shut down after), and the result's setup.
type Opened = (Box<dyn Sut>, Option<Arc<Server>>, Setup);

/// A result's setup from what was opened: the model's source, the system, the batcher's
/// settings and the precision the model runs at (both `None` for a URL).
type SetupOf<'a> = dyn Fn(String, String, Option<BatcherSetup>, Option<Precision>) -> Setup + 'a;

/// The system under test.
#[derive(Debug, Clone)]
pub enum Target {
    /// A model in this process behind the batching server, with its tokenizer (`None`: the
    /// model's own) and decoding.
    Model {
        spec: ModelSpec,
        tokenizer: Option<PathBuf>,
        decode: DecodeConfig,
    },
    /// A server at `url` speaking `api`; `name` names its model in the results.
    Url { url: String, api: Api, name: String },
}

impl Target {
    /// The model's name as the results give it.
    fn name(&self) -> &str {
        match self {
            Self::Model { spec, .. } => &spec.model,
            Self::Url { name, .. } => name,
        }
    }

    /// Opens the system under test: a connection to the URL with at most
    /// `batcher.queue_capacity` requests in flight, or the model behind a batching server
    /// (the observer hears what loading it had to do).
    fn open(
        &self,
        batcher: BatcherConfig,
        features: FeatureConfig,
        setup: &SetupOf,
        observer: &mut dyn Observer,
    ) -> Result<Opened> {
        Ok(match self {
            Target::Url { url, api, .. } => (
                Box::new(HttpSut::connect(url, *api, batcher.queue_capacity)?),
                None,
                setup(format!("the server at {url}"), url.clone(), None, None),
            ),
            Target::Model {
                spec,
                tokenizer,
                decode,
            } => {
                let opened = QaEngine::open(spec, tokenizer.as_deref(), features, *decode)?;
                for line in opened.report.iter().flat_map(|r| r.warnings()) {
                    observer.line(&line);
                }
                let precision = opened.engine.model.precision();
                let server = Arc::new(Server::start(Arc::new(opened.engine), batcher));
                let setup = setup(
                    opened.source,
                    "in-process".into(),
                    Some(batcher.into()),
                    Some(precision),
                );
                (Box::new(Arc::clone(&server)), Some(server), setup)
            }
        })
    }
}

/// Dollars per million questions at the rate a run sustained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServingCost {
    pub price: String,
    pub usd_per_hour: f64,
    pub qps: f64,
    /// `1e6 / qps / 3600 * usd_per_hour`: the machine busy at that rate all the time paid for.
    pub usd_per_million_questions: f64,
}

/// Where the model and the machine stand, as recorded beside the measurements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Setup {
    pub model: String,
    pub model_source: String,
    pub dataset: String,
    /// `in-process` or the URL driven.
    pub system: String,
    pub batcher: Option<BatcherSetup>,
    pub threads: usize,
    /// The kernel tier the model ran on; `None` when driving a URL (the server's own).
    pub isa: Option<Isa>,
    pub cpu: String,
    /// The precision the model ran at; `None` when driving a URL (unknown here).
    #[serde(default, deserialize_with = "crate::device::optional_precision")]
    pub dtype: Option<Precision>,
    pub max_seq_length: usize,
    pub doc_stride: usize,
}

/// [`BatcherConfig`] as written.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BatcherSetup {
    pub max_batch: usize,
    pub max_queue_delay_ms: f64,
    pub queue_capacity: usize,
    pub workers: usize,
}

impl From<BatcherConfig> for BatcherSetup {
    fn from(c: BatcherConfig) -> Self {
        Self {
            max_batch: c.max_batch,
            max_queue_delay_ms: c.max_queue_delay.as_secs_f64() * 1e3,
            queue_capacity: c.queue_capacity,
            workers: c.workers,
        }
    }
}

/// The server search's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchResult {
    pub target_latency_ms: f64,
    pub percentile: f64,
    pub start_qps: f64,
    /// The highest rate that met the bound, and the lowest that did not.
    pub max_qps: Option<f64>,
    pub failed_qps: Option<f64>,
    pub verdict: String,
}

/// EM/F1 of the answers given under load, over the questions they answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnderLoadAccuracy {
    pub questions: usize,
    pub exact_match: f64,
    pub f1: f64,
    /// Questions answered more than once with different texts (should be 0: answers do not
    /// depend on batching).
    pub inconsistent: usize,
}

/// `loadgen.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadgenResults {
    pub scenario: Scenario,
    pub setup: Setup,
    pub min_duration_s: f64,
    pub min_query_count: usize,
    pub seed: u64,
    pub accuracy_mode: bool,
    /// SingleStream: the judged percentile (90th by default) in ms; Offline: answered/s;
    /// Server: the highest rate meeting the bound.
    pub metric: Option<f64>,
    pub metric_name: String,
    pub runs: Vec<ProbeSummary>,
    pub search: Option<SearchResult>,
    pub accuracy: Option<UnderLoadAccuracy>,
    pub cost: Option<ServingCost>,
    pub interrupted: bool,
    pub date: String,
    pub bertbench_version: String,
    pub git_commit: String,
}

impl LoadgenResults {
    /// The rate the scenario sustained: Server, the highest meeting the bound; Offline,
    /// answered/s; SingleStream, one query at a time (1 / mean latency).
    pub fn qps(&self) -> Option<f64> {
        match self.scenario {
            Scenario::Server | Scenario::Offline => self.metric,
            Scenario::SingleStream => self.runs[0].latency.mean_ms.map(|m| 1e3 / m),
        }
        .filter(|q| q.is_finite() && *q > 0.0)
    }

    pub fn read(path: &Path) -> Result<Self> {
        crate::error::read_json(path, "a loadgen.json of this bertbench")
    }
}

/// What [`LoadgenJob::run`] measured and wrote.
#[derive(Debug, Clone)]
pub struct LoadgenOutcome {
    pub results: LoadgenResults,
    pub files: Vec<PathBuf>,
}

impl LoadgenJob {
    /// Refuses settings that cannot run, and a folder that already holds results (unless
    /// `overwrite`), before anything is loaded.
    pub fn check(&self) -> Result<()> {
        let r = &self.run;
        if !(r.percentile > 0.0 && r.percentile < 100.0) {
            return Err(input(format!(
                "--percentile must be above 0 and below 100, got {}",
                r.percentile
            )));
        }
        if r.min_query_count == 0 {
            return Err(input("--min-query-count must be at least 1"));
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(input(format!("--rate must be above 0 QPS, got {rate}")));
            }
        }
        let s = &self.search;
        if !(s.target_ms.is_finite() && s.target_ms > 0.0) {
            return Err(input(format!(
                "--target-latency must be above 0, got {} ms",
                s.target_ms
            )));
        }
        if let Some(q) = s.start_qps {
            if !(q.is_finite() && q > 0.0) {
                return Err(input(format!("--start-rate must be above 0 QPS, got {q}")));
            }
        }
        if !self.overwrite {
            for name in [RESULTS_FILE, RECORDS_FILE, SUMMARY_FILE, PREDICTIONS_FILE] {
                let p = self.output_dir.join(name);
                if p.exists() {
                    return Err(input(format!(
                        "{} already exists; pass --overwrite to replace it or choose another \
                         --output-dir",
                        p.display()
                    )));
                }
            }
        }
        Ok(())
    }

    /// The whole run: reads the questions, opens the system under test (the model behind a
    /// batching server with `batcher`, or a connection to a URL with at most
    /// `batcher.queue_capacity` requests in flight), runs the scenario, stops what it started
    /// and writes the files. `features` are the windows asked for; `threads` the compute
    /// threads this process runs with (its pool is sized before). The observer hears of each
    /// run's progress and of what loading the model had to do.
    pub fn drive(
        &self,
        target: &Target,
        questions: &Questions,
        mut batcher: BatcherConfig,
        features: FeatureConfig,
        threads: usize,
        observer: &mut dyn Observer,
    ) -> Result<LoadgenOutcome> {
        self.check()?;
        let (path, dataset) = questions.read()?;
        let queries = queries_from(&dataset);
        if self.scenario == Scenario::Offline {
            // The offline scenario sends its whole wave at once: the queue must hold it.
            let wave = if self.run.accuracy {
                queries.len()
            } else {
                self.run.min_query_count
            };
            batcher.queue_capacity = batcher.queue_capacity.max(wave);
        }
        let setup = |model_source: String,
                     system: String,
                     batcher: Option<BatcherSetup>,
                     model_at: Option<Precision>| Setup {
            model: target.name().to_string(),
            model_source,
            dataset: path.display().to_string(),
            system,
            batcher,
            threads,
            isa: model_at.map(|_| Isa::current()),
            cpu: cpu_model(),
            dtype: model_at,
            max_seq_length: features.max_seq_length,
            doc_stride: features.doc_stride,
        };
        let (sut, local, setup) = target.open(batcher, features, &setup, observer)?;
        let mut probe = None;
        let outcome = self.run_checked(sut.as_ref(), &dataset, &queries, setup, &mut |p| {
            if probe != Some(p.probe) {
                probe = Some(p.probe);
                observer.stage(&format!("run {}", p.probe + 1));
            }
            let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
            observer.progress(
                p.done as u64,
                p.total as u64,
                &format!(
                    "{:.2} QPS  p50 {} ms  p99 {} ms",
                    p.qps,
                    ms(p.p50_ms),
                    ms(p.p99_ms)
                ),
            );
        });
        drop(sut);
        if let Some(server) = local.and_then(Arc::into_inner) {
            server.shutdown();
        }
        outcome
    }

    /// Runs the scenario on `sut` with `queries` (drawn from `dataset`) and writes the files,
    /// once [`Self::check`] passes.
    pub fn run(
        &self,
        sut: &dyn Sut,
        dataset: &Dataset,
        queries: &[Query],
        setup: Setup,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<LoadgenOutcome> {
        self.check()?;
        self.run_checked(sut, dataset, queries, setup, progress)
    }

    /// [`Self::run`] on a job already checked ([`Self::drive`] checks before it loads).
    fn run_checked(
        &self,
        sut: &dyn Sut,
        dataset: &Dataset,
        queries: &[Query],
        setup: Setup,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<LoadgenOutcome> {
        if queries.is_empty() {
            return Err(input(format!("{}: no questions to send", setup.dataset)));
        }
        let (probes, search_result) = self.probes(sut, queries, progress);
        let runs: Vec<ProbeSummary> = probes.iter().map(|p| p.summary.clone()).collect();
        let (metric, metric_name) = self.metric(&runs, search_result.as_ref());
        let records: Vec<&QueryRecord> = probes.iter().flat_map(|p| &p.records).collect();
        let accuracy = score_answers(dataset, &records);
        let mut results = LoadgenResults {
            scenario: self.scenario,
            setup,
            min_duration_s: self.run.min_duration.as_secs_f64(),
            min_query_count: self.run.min_query_count,
            seed: self.run.seed,
            accuracy_mode: self.run.accuracy,
            metric,
            metric_name,
            interrupted: runs.iter().any(|r| r.interrupted),
            runs,
            search: search_result,
            accuracy,
            cost: None,
            date: chrono::Local::now().to_rfc3339(),
            bertbench_version: crate::record::VERSION.to_string(),
            git_commit: crate::record::GIT_COMMIT.to_string(),
        };
        if let (Some(price), Some(qps)) = (&self.price, results.qps()) {
            results.cost = Some(ServingCost {
                price: price.name.clone(),
                usd_per_hour: price.usd_per_hour,
                qps,
                usd_per_million_questions: usd_for_seconds(1e6 / qps, price.usd_per_hour),
            });
        }
        let files = self.write(&results, &probes)?;
        Ok(LoadgenOutcome { results, files })
    }

    /// The scenario's runs: one, or at Server without a rate, the search's probes and what it
    /// found.
    fn probes(
        &self,
        sut: &dyn Sut,
        queries: &[Query],
        progress: &mut dyn FnMut(&Progress),
    ) -> (Vec<Probe>, Option<SearchResult>) {
        match self.scenario {
            Scenario::SingleStream => (
                vec![single_stream(sut, queries, &self.run, 0, progress)],
                None,
            ),
            Scenario::Offline => (vec![offline(sut, queries, &self.run, 0, progress)], None),
            Scenario::Server => match self.rate {
                Some(rate) => {
                    let p = server(
                        sut,
                        queries,
                        &self.run,
                        rate,
                        self.search.target_ms,
                        0,
                        progress,
                    );
                    (vec![p], None)
                }
                None => {
                    let o = search(sut, queries, &self.run, &self.search, progress);
                    let result = SearchResult {
                        target_latency_ms: self.search.target_ms,
                        percentile: self.run.percentile,
                        start_qps: o.start_qps,
                        max_qps: o.best_qps,
                        failed_qps: o.failed_qps,
                        verdict: o.verdict,
                    };
                    (o.probes, Some(result))
                }
            },
        }
    }

    /// The scenario's figure and its name, from its runs (and the search's answer).
    fn metric(
        &self,
        runs: &[ProbeSummary],
        search: Option<&SearchResult>,
    ) -> (Option<f64>, String) {
        match self.scenario {
            Scenario::SingleStream => (
                runs[0].latency.percentile_ms,
                format!("p{} latency (ms)", self.run.percentile),
            ),
            Scenario::Offline => (Some(runs[0].achieved_qps), "samples/s".to_string()),
            Scenario::Server => match search {
                Some(s) => (
                    s.max_qps,
                    format!(
                        "max QPS with p{} <= {} ms",
                        self.run.percentile, self.search.target_ms
                    ),
                ),
                None => (
                    runs[0].met.filter(|m| *m).map(|_| runs[0].achieved_qps),
                    format!(
                        "QPS at p{} <= {} ms (one rate)",
                        self.run.percentile, self.search.target_ms
                    ),
                ),
            },
        }
    }

    fn write(&self, results: &LoadgenResults, probes: &[Probe]) -> Result<Vec<PathBuf>> {
        let dir = &self.output_dir;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut files = Vec::new();
        let path = dir.join(RECORDS_FILE);
        let mut w = csv::Writer::from_writer(Vec::new());
        for r in probes.iter().flat_map(|p| &p.records) {
            w.serialize(r)?;
        }
        atomic_write(&path, &w.into_inner()?)?;
        files.push(path);
        let path = dir.join(SUMMARY_FILE);
        let mut w = csv::Writer::from_writer(Vec::new());
        for r in &results.runs {
            w.serialize(SummaryRow::of(r))?;
        }
        atomic_write(&path, &w.into_inner()?)?;
        files.push(path);
        if self.run.accuracy {
            let path = dir.join(PREDICTIONS_FILE);
            let answers: BTreeMap<&str, &str> = probes
                .iter()
                .flat_map(|p| &p.records)
                .filter_map(|r| Some((r.id.as_str(), r.answer.as_deref()?)))
                .collect();
            atomic_write(&path, serde_json::to_string_pretty(&answers)?.as_bytes())?;
            files.push(path);
        }
        if self.scenario == Scenario::Server {
            let chart = latency_chart(results);
            for ext in ["png", "svg"] {
                let path = dir.join(format!("{PLOT_STEM}.{ext}"));
                render(&chart, &path, (900, 600))?;
                files.push(path);
            }
        }
        let path = dir.join(RESULTS_FILE);
        atomic_write(&path, serde_json::to_string_pretty(results)?.as_bytes())?;
        files.push(path);
        Ok(files)
    }
}

/// A row of `loadgen.csv`: a run's summary, flat.
#[derive(Debug, Serialize)]
struct SummaryRow {
    probe: usize,
    scenario: Scenario,
    target_qps: Option<f64>,
    offered_qps: Option<f64>,
    achieved_qps: f64,
    queries: usize,
    answered: usize,
    refused: usize,
    failed: usize,
    duration_s: f64,
    mean_ms: Option<f64>,
    p50_ms: Option<f64>,
    p90_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
    percentile: f64,
    percentile_ms: Option<f64>,
    percentile_upper_ms: Option<f64>,
    queries_needed: usize,
    met: Option<bool>,
    tokenize_ms: Option<f64>,
    queue_ms: Option<f64>,
    model_ms: Option<f64>,
    decode_ms: Option<f64>,
    windows_per_query: Option<f64>,
    windows_per_batch: Option<f64>,
    interrupted: bool,
}

impl SummaryRow {
    fn of(r: &ProbeSummary) -> Self {
        let l = &r.latency;
        let st = r.mean_stage_ms;
        Self {
            probe: r.probe,
            scenario: r.scenario,
            target_qps: r.target_qps,
            offered_qps: r.offered_qps,
            achieved_qps: r.achieved_qps,
            queries: r.queries,
            answered: r.answered,
            refused: r.refused,
            failed: r.failed,
            duration_s: r.duration_s,
            mean_ms: l.mean_ms,
            p50_ms: l.p50_ms,
            p90_ms: l.p90_ms,
            p99_ms: l.p99_ms,
            max_ms: l.max_ms,
            percentile: l.percentile,
            percentile_ms: l.percentile_ms,
            percentile_upper_ms: l.percentile_upper_ms,
            queries_needed: l.queries_needed,
            met: r.met,
            tokenize_ms: st.map(|s| s.tokenize_ms),
            queue_ms: st.map(|s| s.queue_ms),
            model_ms: st.map(|s| s.model_ms),
            decode_ms: st.map(|s| s.decode_ms),
            windows_per_query: st.map(|s| s.windows_per_query),
            windows_per_batch: st.map(|s| s.windows_per_batch),
            interrupted: r.interrupted,
        }
    }
}

/// EM/F1 of the answers in `records` over the questions they answered (the first answer of
/// each), with the number of questions answered differently on different occasions.
pub fn score_answers(dataset: &Dataset, records: &[&QueryRecord]) -> Option<UnderLoadAccuracy> {
    let mut answers: HashMap<String, String> = HashMap::new();
    let mut inconsistent = std::collections::HashSet::new();
    for r in records {
        if let Some(a) = &r.answer {
            match answers.get(&r.id) {
                Some(first) if first != a => {
                    inconsistent.insert(r.id.clone());
                }
                Some(_) => {}
                None => {
                    answers.insert(r.id.clone(), a.clone());
                }
            }
        }
    }
    if answers.is_empty() {
        return None;
    }
    let answered = dataset.questions_where(|q| answers.contains_key(&q.id));
    let score = evaluate(&answered, &answers);
    Some(UnderLoadAccuracy {
        questions: score.total,
        exact_match: score.exact_match,
        f1: score.f1,
        inconsistent: inconsistent.len(),
    })
}

/// p50, p90 and p99 against the rate each run reached, and the bound as a line.
pub fn latency_chart(results: &LoadgenResults) -> Chart {
    let mut runs: Vec<&ProbeSummary> = results.runs.iter().filter(|r| r.answered > 0).collect();
    runs.sort_by(|a, b| a.achieved_qps.total_cmp(&b.achieved_qps));
    let line = |label: &str, get: &dyn Fn(&ProbeSummary) -> Option<f64>| Series {
        label: label.to_string(),
        points: runs
            .iter()
            .filter_map(|r| {
                get(r).map(|y| Point {
                    x: r.achieved_qps,
                    y,
                    interval: None,
                })
            })
            .collect(),
        ..Default::default()
    };
    let mut series = vec![
        line("p50", &|r| r.latency.p50_ms),
        line("p90", &|r| r.latency.p90_ms),
        line("p99", &|r| r.latency.p99_ms),
    ];
    if let (Some(s), Some(first), Some(last)) = (&results.search, runs.first(), runs.last()) {
        series.push(Series {
            label: format!("bound: p{} <= {} ms", s.percentile, s.target_latency_ms),
            points: [first.achieved_qps, last.achieved_qps]
                .iter()
                .map(|&x| Point {
                    x,
                    y: s.target_latency_ms,
                    interval: None,
                })
                .collect(),
            ..Default::default()
        });
    }
    Chart {
        title: format!("Latency under load: {}", results.setup.model),
        x_label: "answered queries per second".into(),
        y_label: "latency (ms)".into(),
        log_x: false,
        log_y: true,
        y_from_zero: true,
        series,
        label_points: false,
    }
}
