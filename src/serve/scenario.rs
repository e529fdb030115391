//! MLPerf's scenarios on a system under test, with queries drawn from a SQuAD file:
//!
//! * **SingleStream**: the next query is sent when the previous answer arrives; judged by its
//!   90th percentile latency.
//! * **Offline**: queries are sent all at once (in waves of `min_query_count` until
//!   `min_duration` has passed); judged by answered queries per second.
//! * **Server**: queries arrive as a Poisson process at a rate; judged by whether a latency
//!   percentile stays within a bound. [`search`] finds the highest rate that keeps it.
//!
//! A run lasts at least `min_duration` and `min_query_count` queries. In accuracy mode every
//! question of the file is sent exactly once, so the answers given under load can be scored
//! like `eval`'s. Latency counts from when a query was due, so a late sender is not hidden.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::arrival::PoissonArrivals;
use super::batcher::{Completion, Rejected, Reply, Server};
use super::latency::LatencySummary;
use crate::squad::Dataset;

/// One question a scenario can send.
#[derive(Debug, Clone)]
pub struct Query {
    pub id: String,
    pub question: Arc<str>,
    pub context: Arc<str>,
}

/// Every question of `dataset`, in file order.
pub fn queries_from(dataset: &Dataset) -> Vec<Query> {
    dataset
        .articles
        .iter()
        .flat_map(|a| &a.paragraphs)
        .flat_map(|p| {
            let context: Arc<str> = Arc::from(p.context.as_str());
            p.qas.iter().map(move |q| Query {
                id: q.id.clone(),
                question: Arc::from(q.question.as_str()),
                context: Arc::clone(&context),
            })
        })
        .collect()
}

/// A system that answers queries: the in-process [`Server`], or a server over HTTP.
pub trait Sut: Sync {
    /// Sends `query`, due at `arrival`; `reply` gets its answer. Refused at once when the
    /// system does not admit it.
    fn issue(&self, query: &Query, arrival: Instant, reply: Reply) -> Result<(), Rejected>;
}

impl Sut for Server {
    fn issue(&self, query: &Query, arrival: Instant, reply: Reply) -> Result<(), Rejected> {
        self.submit(
            Arc::clone(&query.question),
            Arc::clone(&query.context),
            arrival,
            reply,
        )
    }
}

impl<T: Sut + Send> Sut for Arc<T> {
    fn issue(&self, query: &Query, arrival: Instant, reply: Reply) -> Result<(), Rejected> {
        (**self).issue(query, arrival, reply)
    }
}

/// MLPerf's scenarios (MultiStream is left out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    SingleStream,
    Offline,
    Server,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::SingleStream => "single-stream",
            Scenario::Offline => "offline",
            Scenario::Server => "server",
        }
    }
}

/// How long a run is and what it is judged by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunSettings {
    pub min_duration: Duration,
    pub min_query_count: usize,
    /// Seed of the query order and the arrivals.
    pub seed: u64,
    /// The latency percentile (0-100) runs are judged by.
    pub percentile: f64,
    /// Send every query once, in file order, instead of the minimums.
    pub accuracy: bool,
}

/// One query's fate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryRecord {
    /// The run (probe) it belongs to, its scenario and the rate asked for (server).
    pub probe: usize,
    pub scenario: Scenario,
    pub target_qps: Option<f64>,
    /// Its place in the run, and the SQuAD question id.
    pub query: usize,
    pub id: String,
    /// Seconds from the start of the run: when it was due, and when it was answered.
    pub arrival_s: f64,
    pub finished_s: Option<f64>,
    pub latency_ms: Option<f64>,
    pub issue_ms: Option<f64>,
    pub tokenize_ms: Option<f64>,
    pub queue_ms: Option<f64>,
    pub model_ms: Option<f64>,
    pub decode_ms: Option<f64>,
    pub windows: Option<usize>,
    pub batches: Option<usize>,
    /// The batch its last window rode in, and that batch's windows.
    pub batch: Option<u64>,
    pub batch_windows: Option<usize>,
    /// `ok`, `refused` (not admitted) or `failed` (admitted, no answer).
    pub status: String,
    /// Why it was refused or failed.
    pub error: Option<String>,
    pub answer: Option<String>,
}

/// What one run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeSummary {
    pub probe: usize,
    pub scenario: Scenario,
    /// Server: the Poisson rate asked for, and the rate the arrivals had.
    pub target_qps: Option<f64>,
    pub offered_qps: Option<f64>,
    pub queries: usize,
    pub answered: usize,
    pub refused: usize,
    pub failed: usize,
    /// Start of the run to its last answer.
    pub duration_s: f64,
    /// Answered queries per second over `duration_s`.
    pub achieved_qps: f64,
    pub latency: LatencySummary,
    /// Mean per stage over answered queries (ms), where the system says.
    pub mean_stage_ms: Option<StageMeans>,
    /// Server: whether the percentile met the bound.
    pub met: Option<bool>,
    /// Stopped by the user before its minimums.
    pub interrupted: bool,
}

/// Mean time per stage of answered queries, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StageMeans {
    pub issue_ms: f64,
    pub tokenize_ms: f64,
    pub queue_ms: f64,
    pub model_ms: f64,
    pub decode_ms: f64,
    pub windows_per_query: f64,
    pub windows_per_batch: f64,
}

/// A run: its summary and every query's record.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub summary: ProbeSummary,
    pub records: Vec<QueryRecord>,
}

/// Progress of a run, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub probe: usize,
    pub done: usize,
    /// Queries the run will send (a lower bound for time-bounded runs).
    pub total: usize,
    pub elapsed: Duration,
    pub qps: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Set from a Ctrl-C handler: runs stop sending, wait for what they sent, and keep it.
pub static STOP: AtomicBool = AtomicBool::new(false);

fn stopped() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// The queries a run sends, in order: all, once, in file order (accuracy), or a seeded
/// shuffle of them, cycled.
struct Order {
    indices: Vec<usize>,
}

impl Order {
    fn new(n: usize, settings: &RunSettings) -> Self {
        let mut indices: Vec<usize> = (0..n).collect();
        if !settings.accuracy {
            indices.shuffle(&mut rand::rngs::StdRng::seed_from_u64(settings.seed));
        }
        Order { indices }
    }

    fn at(&self, i: usize) -> usize {
        self.indices[i % self.indices.len()]
    }
}

/// Collects the answers of one run.
struct Collector<'a> {
    probe: usize,
    scenario: Scenario,
    target_qps: Option<f64>,
    start: Instant,
    queries: &'a [Query],
    records: Vec<QueryRecord>,
    outstanding: usize,
    tx: Sender<(usize, Result<Completion, String>)>,
    rx: Receiver<(usize, Result<Completion, String>)>,
    last_report: Instant,
    progress: &'a mut dyn FnMut(&Progress),
    total: usize,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl<'a> Collector<'a> {
    fn new(
        probe: usize,
        scenario: Scenario,
        target_qps: Option<f64>,
        queries: &'a [Query],
        total: usize,
        progress: &'a mut dyn FnMut(&Progress),
    ) -> Self {
        let (tx, rx) = channel();
        Collector {
            probe,
            scenario,
            target_qps,
            start: Instant::now(),
            queries,
            records: Vec::new(),
            outstanding: 0,
            tx,
            rx,
            last_report: Instant::now(),
            progress,
            total,
        }
    }

    /// Sends query `index` (of the file), due at `arrival`, as the run's next.
    fn issue(&mut self, sut: &dyn Sut, index: usize, arrival: Instant) {
        let seq = self.records.len();
        let q = &self.queries[index];
        self.records.push(QueryRecord {
            probe: self.probe,
            scenario: self.scenario,
            target_qps: self.target_qps,
            query: seq,
            id: q.id.clone(),
            arrival_s: arrival.saturating_duration_since(self.start).as_secs_f64(),
            finished_s: None,
            latency_ms: None,
            issue_ms: None,
            tokenize_ms: None,
            queue_ms: None,
            model_ms: None,
            decode_ms: None,
            windows: None,
            batches: None,
            batch: None,
            batch_windows: None,
            status: "pending".into(),
            error: None,
            answer: None,
        });
        let tx = self.tx.clone();
        match sut.issue(q, arrival, Box::new(move |r| drop(tx.send((seq, r))))) {
            Ok(()) => self.outstanding += 1,
            Err(e) => {
                let r = &mut self.records[seq];
                r.status = "refused".into();
                r.error = Some(e.to_string());
            }
        }
    }

    fn record(&mut self, seq: usize, result: Result<Completion, String>, arrival: Instant) {
        self.outstanding -= 1;
        let r = &mut self.records[seq];
        match result {
            Ok(c) => {
                r.status = "ok".into();
                r.finished_s = Some(
                    c.finished
                        .saturating_duration_since(self.start)
                        .as_secs_f64(),
                );
                r.latency_ms = Some(ms(c.finished.saturating_duration_since(arrival)));
                r.answer = Some(c.answer.text);
                if let Some(s) = c.stages {
                    r.issue_ms = Some(ms(s.issue));
                    r.tokenize_ms = Some(ms(s.tokenize));
                    r.queue_ms = Some(ms(s.queue));
                    r.model_ms = Some(ms(s.model));
                    r.decode_ms = Some(ms(s.decode));
                    r.windows = Some(s.windows);
                    r.batches = Some(s.batches);
                    r.batch = Some(s.batch);
                    r.batch_windows = Some(s.batch_windows);
                }
            }
            Err(e) => {
                r.status = "failed".into();
                r.error = Some(e);
            }
        }
    }

    fn arrival_of(&self, seq: usize) -> Instant {
        self.start + Duration::from_secs_f64(self.records[seq].arrival_s)
    }

    /// Takes answers that have arrived, waiting up to `wait` for the first.
    fn poll(&mut self, wait: Duration) {
        let first = if wait.is_zero() {
            self.rx.try_recv().ok()
        } else {
            self.rx.recv_timeout(wait).ok()
        };
        let mut next = first;
        while let Some((seq, result)) = next {
            let arrival = self.arrival_of(seq);
            self.record(seq, result, arrival);
            next = self.rx.try_recv().ok();
        }
        self.report(false);
    }

    /// Waits for every sent query's answer.
    fn drain(&mut self) {
        while self.outstanding > 0 {
            self.poll(Duration::from_millis(100));
        }
        self.report(true);
    }

    fn report(&mut self, force: bool) {
        if !force && self.last_report.elapsed() < Duration::from_millis(250) {
            return;
        }
        self.last_report = Instant::now();
        let mut lat: Vec<f64> = self.records.iter().filter_map(|r| r.latency_ms).collect();
        lat.sort_by(f64::total_cmp);
        let q = |p: f64| (!lat.is_empty()).then(|| crate::stats::quantile_sorted(&lat, p));
        let elapsed = self.start.elapsed();
        (self.progress)(&Progress {
            probe: self.probe,
            done: self.records.len() - self.outstanding,
            total: self.total.max(self.records.len()),
            elapsed,
            qps: lat.len() as f64 / elapsed.as_secs_f64().max(1e-9),
            p50_ms: q(0.5),
            p99_ms: q(0.99),
        });
    }

    fn finish(
        self,
        settings: &RunSettings,
        offered_qps: Option<f64>,
        bound_ms: Option<f64>,
    ) -> Probe {
        let lat: Vec<f64> = self.records.iter().filter_map(|r| r.latency_ms).collect();
        let count = |s: &str| self.records.iter().filter(|r| r.status == s).count();
        let (refused, failed) = (count("refused"), count("failed"));
        let last = self
            .records
            .iter()
            .filter_map(|r| r.finished_s)
            .fold(0.0, f64::max);
        let latency = LatencySummary::of(&lat, refused + failed, settings.percentile);
        let answered: Vec<&QueryRecord> = self
            .records
            .iter()
            .filter(|r| r.windows.is_some())
            .collect();
        let mean_stage_ms = (!answered.is_empty()).then(|| {
            let mean = |f: &dyn Fn(&QueryRecord) -> f64| {
                answered.iter().map(|r| f(r)).sum::<f64>() / answered.len() as f64
            };
            StageMeans {
                issue_ms: mean(&|r| r.issue_ms.unwrap_or(0.0)),
                tokenize_ms: mean(&|r| r.tokenize_ms.unwrap_or(0.0)),
                queue_ms: mean(&|r| r.queue_ms.unwrap_or(0.0)),
                model_ms: mean(&|r| r.model_ms.unwrap_or(0.0)),
                decode_ms: mean(&|r| r.decode_ms.unwrap_or(0.0)),
                windows_per_query: mean(&|r| r.windows.unwrap_or(0) as f64),
                windows_per_batch: mean(&|r| r.batch_windows.unwrap_or(0) as f64),
            }
        });
        let summary = ProbeSummary {
            probe: self.probe,
            scenario: self.scenario,
            target_qps: self.target_qps,
            offered_qps,
            queries: self.records.len(),
            answered: lat.len(),
            refused,
            failed,
            duration_s: last,
            achieved_qps: if last > 0.0 {
                lat.len() as f64 / last
            } else {
                0.0
            },
            met: bound_ms.map(|b| latency.meets(b)),
            latency,
            mean_stage_ms,
            interrupted: stopped(),
        };
        Probe {
            summary,
            records: self.records,
        }
    }
}

fn enough(settings: &RunSettings, queries: usize, sent: usize, elapsed: Duration) -> bool {
    if settings.accuracy {
        sent >= queries
    } else {
        sent >= settings.min_query_count && elapsed >= settings.min_duration
    }
}

/// SingleStream: one query at a time, the next when the previous is answered.
pub fn single_stream(
    sut: &dyn Sut,
    queries: &[Query],
    settings: &RunSettings,
    probe: usize,
    progress: &mut dyn FnMut(&Progress),
) -> Probe {
    let order = Order::new(queries.len(), settings);
    let total = if settings.accuracy {
        queries.len()
    } else {
        settings.min_query_count
    };
    let mut c = Collector::new(
        probe,
        Scenario::SingleStream,
        None,
        queries,
        total,
        progress,
    );
    let mut sent = 0;
    while !queries.is_empty()
        && !enough(settings, queries.len(), sent, c.start.elapsed())
        && !stopped()
    {
        c.issue(sut, order.at(sent), Instant::now());
        sent += 1;
        c.drain();
    }
    c.finish(settings, None, None)
}

/// Offline: waves of `min_query_count` queries (every query, once, in accuracy mode), all
/// due at the wave's start, until `min_duration` has passed.
pub fn offline(
    sut: &dyn Sut,
    queries: &[Query],
    settings: &RunSettings,
    probe: usize,
    progress: &mut dyn FnMut(&Progress),
) -> Probe {
    let order = Order::new(queries.len(), settings);
    let wave = if settings.accuracy {
        queries.len()
    } else {
        settings.min_query_count.max(1)
    };
    let mut c = Collector::new(probe, Scenario::Offline, None, queries, wave, progress);
    let mut sent = 0;
    while !queries.is_empty()
        && !enough(settings, queries.len(), sent, c.start.elapsed())
        && !stopped()
    {
        let due = Instant::now();
        for _ in 0..wave {
            if stopped() {
                break;
            }
            c.issue(sut, order.at(sent), due);
            sent += 1;
            c.poll(Duration::ZERO);
        }
        c.drain();
    }
    c.finish(settings, None, None)
}

/// Server: Poisson arrivals at `rate` per second, `max(min_query_count, rate x min_duration)`
/// of them (every query once in accuracy mode); `met` says whether the percentile stayed
/// within `bound_ms`.
pub fn server(
    sut: &dyn Sut,
    queries: &[Query],
    settings: &RunSettings,
    rate: f64,
    bound_ms: f64,
    probe: usize,
    progress: &mut dyn FnMut(&Progress),
) -> Probe {
    let order = Order::new(queries.len(), settings);
    let n = if settings.accuracy {
        queries.len()
    } else {
        settings
            .min_query_count
            .max((rate * settings.min_duration.as_secs_f64()).ceil() as usize)
    };
    let arrivals = PoissonArrivals::new(rate, settings.seed)
        .map(|a| a.take_offsets(n))
        .unwrap_or_default();
    let mut c = Collector::new(probe, Scenario::Server, Some(rate), queries, n, progress);
    if !queries.is_empty() {
        for (i, offset) in arrivals.iter().enumerate() {
            let due = c.start + *offset;
            // Answers are taken while waiting, so the progress bar and the channel keep up.
            loop {
                let now = Instant::now();
                if now >= due || stopped() {
                    break;
                }
                c.poll((due - now).min(Duration::from_millis(20)));
                let now = Instant::now();
                if due > now && due - now < Duration::from_millis(2) {
                    std::thread::sleep(due - now);
                }
            }
            if stopped() {
                break;
            }
            c.issue(sut, order.at(i), due);
        }
    }
    let offered = arrivals
        .last()
        .filter(|d| !d.is_zero())
        .map(|d| arrivals.len() as f64 / d.as_secs_f64());
    c.drain();
    c.finish(settings, offered, Some(bound_ms))
}

/// How the server search goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SearchSettings {
    /// The latency bound the percentile must stay within.
    pub target_ms: f64,
    /// The first rate tried; `None`: from a short SingleStream calibration.
    pub start_qps: Option<f64>,
    /// Bisection stops when the bracket is this narrow relative to its low end.
    pub tolerance: f64,
    /// The most runs the search makes (calibration not counted).
    pub max_probes: usize,
}

/// What the server search found: every run it made, in order, and the highest rate that
/// met the bound.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchOutcome {
    pub probes: Vec<Probe>,
    pub best_qps: Option<f64>,
    /// The lowest rate that failed (the bracket's top).
    pub failed_qps: Option<f64>,
    /// The calibration's estimate the search started from.
    pub start_qps: f64,
    /// Why it stopped, in words.
    pub verdict: String,
}

/// Rates below this are not tried (a system this slow fails every useful bound).
const MIN_SEARCH_QPS: f64 = 0.01;

/// How far below its start the search goes looking for a rate that meets the bound.
const MAX_HALVING: f64 = 8.0;

/// The highest Poisson rate whose percentile latency meets the bound: from the start rate,
/// doubled until a run fails (or halved until one passes), then bisected until the bracket
/// is within `tolerance`; every run is as long as the settings ask, so each percentile rests
/// on enough queries.
pub fn search(
    sut: &dyn Sut,
    queries: &[Query],
    settings: &RunSettings,
    search: &SearchSettings,
    progress: &mut dyn FnMut(&Progress),
) -> SearchOutcome {
    let start_qps = search
        .start_qps
        .unwrap_or_else(|| calibrate(sut, queries, settings));
    let mut probes: Vec<Probe> = Vec::new();
    let (mut lo, mut hi): (Option<f64>, Option<f64>) = (None, None);
    let mut rate = start_qps.max(MIN_SEARCH_QPS);
    let verdict = loop {
        if stopped() {
            break "interrupted".to_string();
        }
        if probes.len() >= search.max_probes {
            break format!("stopped after {} runs", probes.len());
        }
        let p = server(
            sut,
            queries,
            settings,
            rate,
            search.target_ms,
            probes.len(),
            progress,
        );
        let met = p.summary.met == Some(true) && !p.summary.interrupted;
        probes.push(p);
        if met {
            lo = Some(lo.map_or(rate, |l: f64| l.max(rate)));
        } else {
            hi = Some(hi.map_or(rate, |h: f64| h.min(rate)));
        }
        rate = match (lo, hi) {
            (Some(l), None) => l * 2.0,
            (None, Some(h)) => {
                // Each run lasts at least `min_query_count` arrivals, so runs grow as the
                // rate falls: below an eighth of the start, the bound is out of reach.
                if h / 2.0 < (start_qps / MAX_HALVING).max(MIN_SEARCH_QPS) {
                    break format!("bound not met at any rate down to {h:.3} QPS");
                }
                h / 2.0
            }
            (Some(l), Some(h)) => {
                if h <= l {
                    // A lower rate failed after a higher one passed: noise larger than the
                    // bracket; the highest rate that passed stands.
                    break format!("runs disagree near {l:.2} QPS (a lower rate failed)");
                }
                if (h - l) / l <= search.tolerance {
                    break format!(
                        "bracket {l:.2}-{h:.2} QPS is within {:.0}%",
                        search.tolerance * 100.0
                    );
                }
                (l + h) / 2.0
            }
            (None, None) => unreachable!("every run sets one end"),
        };
    };
    SearchOutcome {
        probes,
        best_qps: lo,
        failed_qps: hi,
        start_qps,
        verdict,
    }
}

/// A first rate for the search: what one query at a time sustains (eight queries, the
/// answers discarded).
fn calibrate(sut: &dyn Sut, queries: &[Query], settings: &RunSettings) -> f64 {
    let short = RunSettings {
        min_duration: Duration::ZERO,
        min_query_count: 8,
        accuracy: false,
        ..*settings
    };
    let p = single_stream(sut, queries, &short, usize::MAX, &mut |_| {});
    match p.summary.latency.mean_ms {
        Some(m) if m > 0.0 => 1e3 / m,
        _ => 1.0,
    }
}
