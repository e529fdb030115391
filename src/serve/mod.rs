//! Serving under load: a batching server in front of a model ([`batcher`]), MLPerf's
//! scenarios on it with queries from a SQuAD file ([`scenario`]), the statistics a latency
//! percentile needs ([`latency`]), Poisson arrivals ([`arrival`]) and a whole run written to
//! a folder ([`loadgen`]).

pub mod arrival;
pub mod batcher;
pub mod engine;
pub mod http;
pub mod latency;
pub mod loadgen;
pub mod scenario;

pub use batcher::{Answer, BatcherConfig, Completion, Engine, Rejected, Server, Stages};
pub use engine::QaEngine;
pub use loadgen::{LoadgenJob, LoadgenResults};
pub use scenario::{queries_from, Query, RunSettings, Scenario, SearchSettings, Sut};
