//! The server's metrics in Prometheus' text format (`GET /metrics`), on the Prometheus
//! project's own Rust client: what an operator scrapes to see load, batching and where a
//! query's time goes (the set text-embeddings-inference exports, for QA).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::batcher::{BatchRecord, Stages};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// The route (a fixed name, never the raw path: the label set stays bounded).
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

/// Why a request or connection was turned away with a 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-connections` open already: the connection got a 503 and was closed.
    Connections,
    /// `--max-in-flight` requests being answered already.
    InFlight,
    /// The batcher's queue was full (`--queue-capacity`).
    QueueFull,
    /// The model is still loading or warming up.
    NotReady,
    /// The server is shutting down.
    ShuttingDown,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Connections => "connections",
            Refusal::InFlight => "in_flight",
            Refusal::QueueFull => "queue_full",
            Refusal::NotReady => "not_ready",
            Refusal::ShuttingDown => "shutting_down",
        }
    }
}

fn seconds_buckets() -> impl Iterator<Item = f64> {
    // 0.5 ms to ~33 s, doubling.
    exponential_buckets(0.0005, 2.0, 17)
}

fn count_buckets() -> impl Iterator<Item = f64> {
    // 1, 2, 4 ... 256.
    exponential_buckets(1.0, 2.0, 9)
}

fn seconds_histogram() -> Histogram {
    Histogram::new(seconds_buckets())
}

/// Every metric the server keeps.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    refusals: Family<ReasonLabels, Counter>,
    connections: Gauge,
    in_flight: Gauge,
    queue_queries: Gauge,
    queue_windows: Gauge,
    batch_windows: Histogram,
    batch_tokens: Histogram,
    batch_duration: Histogram,
    query_windows: Histogram,
    stages: Family<StageLabels, Histogram, fn() -> Histogram>,
    /// Slow clients cut off (header or body read timeouts).
    timeouts: Counter,
    /// Connections accepted in all.
    accepted: Counter,
    /// Queries dropped unrun because their client went away (the batcher's count, as of the
    /// last scrape).
    abandoned: Counter,
    abandoned_seen: std::sync::atomic::AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("bertbench");
        let m = Metrics {
            registry: Registry::default(),
            requests: Family::default(),
            refusals: Family::default(),
            connections: Gauge::default(),
            in_flight: Gauge::default(),
            queue_queries: Gauge::default(),
            queue_windows: Gauge::default(),
            batch_windows: Histogram::new(count_buckets()),
            batch_tokens: Histogram::new(exponential_buckets(16.0, 2.0, 10)),
            batch_duration: seconds_histogram(),
            query_windows: Histogram::new(count_buckets()),
            stages: Family::new_with_constructor(seconds_histogram as fn() -> Histogram),
            timeouts: Counter::default(),
            accepted: Counter::default(),
            abandoned: Counter::default(),
            abandoned_seen: Default::default(),
        };
        registry.register(
            "requests",
            "HTTP requests answered, by route and status",
            m.requests.clone(),
        );
        registry.register(
            "refusals",
            "Requests and connections turned away with a 503, by reason",
            m.refusals.clone(),
        );
        registry.register(
            "client_timeouts",
            "Connections and requests cut off because the client sent its headers or body \
             too slowly (or a kept-alive connection stayed idle past the header timeout)",
            m.timeouts.clone(),
        );
        registry.register(
            "connections_accepted",
            "Connections accepted",
            m.accepted.clone(),
        );
        registry.register(
            "queries_abandoned",
            "Queries dropped before they ran because their client went away",
            m.abandoned.clone(),
        );
        registry.register(
            "connections_open",
            "Connections open",
            m.connections.clone(),
        );
        registry.register(
            "requests_in_flight",
            "QA requests admitted and not yet answered",
            m.in_flight.clone(),
        );
        registry.register(
            "queue_queries",
            "Queries in the batcher, admitted and not yet answered",
            m.queue_queries.clone(),
        );
        registry.register(
            "queue_windows",
            "Windows waiting for a batch",
            m.queue_windows.clone(),
        );
        registry.register(
            "batch_windows",
            "Windows per forward pass",
            m.batch_windows.clone(),
        );
        registry.register(
            "batch_tokens",
            "Run length (tokens) of a forward pass's windows",
            m.batch_tokens.clone(),
        );
        registry.register(
            "batch_duration_seconds",
            "Wall time of a forward pass",
            m.batch_duration.clone(),
        );
        registry.register(
            "query_windows",
            "Windows a query's context became",
            m.query_windows.clone(),
        );
        registry.register(
            "stage_duration_seconds",
            "Time an answered query spent in each stage (tokenize, queue, inference, decode) \
             and in all (total: request read to answer)",
            m.stages.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn request(&self, route: &'static str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels { route, status })
            .inc();
    }

    pub fn refused(&self, why: Refusal) {
        self.refusals
            .get_or_create(&ReasonLabels {
                reason: why.as_str(),
            })
            .inc();
    }

    pub fn timed_out(&self) {
        self.timeouts.inc();
    }

    /// A connection opened; the returned guard counts it until dropped.
    pub fn connection(&self) -> GaugeGuard<'_> {
        self.accepted.inc();
        GaugeGuard::new(&self.connections)
    }

    /// A QA request admitted; counted in flight until the guard drops.
    pub fn in_flight(&self) -> GaugeGuard<'_> {
        GaugeGuard::new(&self.in_flight)
    }

    pub fn batch(&self, b: &BatchRecord) {
        self.batch_windows.observe(b.windows as f64);
        self.batch_tokens.observe(b.length as f64);
        self.batch_duration.observe(b.duration.as_secs_f64());
    }

    pub fn answered(&self, stages: &Stages, total: Duration) {
        self.query_windows.observe(stages.windows as f64);
        for (stage, d) in [
            ("tokenize", stages.tokenize),
            ("queue", stages.queue),
            ("inference", stages.model),
            ("decode", stages.decode),
            ("total", total),
        ] {
            self.stages
                .get_or_create(&StageLabels { stage })
                .observe(d.as_secs_f64());
        }
    }

    /// The text exposition, with the batcher's state as it is now (`None` while loading).
    pub fn encode(&self, batcher: Option<BatcherNow>) -> String {
        use std::sync::atomic::Ordering;
        let now = batcher.unwrap_or_default();
        self.queue_queries.set(now.queries as i64);
        self.queue_windows.set(now.windows as i64);
        let before = self.abandoned_seen.swap(now.abandoned, Ordering::SeqCst);
        self.abandoned.inc_by(now.abandoned.saturating_sub(before));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// The batcher's counts at a scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatcherNow {
    /// Queries admitted and not yet answered, and windows waiting for a batch.
    pub queries: usize,
    pub windows: usize,
    /// Queries abandoned so far.
    pub abandoned: u64,
}

/// Holds one unit of a gauge until dropped (a connection open, a request in flight).
pub struct GaugeGuard<'a>(&'a Gauge);

impl<'a> GaugeGuard<'a> {
    fn new(g: &'a Gauge) -> Self {
        g.inc();
        GaugeGuard(g)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
