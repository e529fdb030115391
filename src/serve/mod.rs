//! Serving under load: a batching server in front of a model ([`batcher`]), over HTTP
//! ([`http`], speaking the APIs of [`api`], with [`metrics`]), MLPerf's
//! scenarios on it with queries from a SQuAD file ([`scenario`]), the statistics a latency
//! percentile needs ([`latency`]), Poisson arrivals ([`arrival`]) and a whole run written to
//! a folder ([`loadgen`]), on a model in this process or a server over HTTP ([`client`]).

pub mod api;
pub(crate) mod arrival;
pub(crate) mod batcher;
pub(crate) mod client;
pub(crate) mod engine;
pub mod http;
pub(crate) mod latency;
pub mod loadgen;
pub(crate) mod metrics;
pub mod scenario;

pub use batcher::{
    Answer, BatchObserver, BatchRecord, BatcherConfig, Completion, Engine, QueryOptions, Rejected,
    Server, Stages, Submission,
};
pub use engine::QaEngine;
pub use loadgen::{LoadgenJob, LoadgenResults};
pub use scenario::{queries_from, Query, RunSettings, Scenario, SearchSettings, Sut};
