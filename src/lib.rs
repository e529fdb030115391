//! bertbench: choose the BERT-family model to ship for extractive question answering by
//! measuring accuracy, speed, memory and cost on your own hardware.
//!
//! The library does the work; `main.rs` is a thin CLI over it ([`cli`]). The layers, from the
//! bottom up, each importing only those below it (`tests/layering.rs` holds the exact matrix,
//! fails on an import it forbids, and lists the few that still break it):
//!
//! | layer | modules | what it is |
//! |---|---|---|
//! | floor | [`error`], [`device`], [`runtime`], [`record`], [`job`], [`stats`], [`cost`], [`chart`] | error kinds and exit codes; devices and precisions; the compute pool and allocator settings; provenance and atomic writes; what a job tells its observer; summary statistics; dollar cost and price tables; charts |
//! | compute | [`compute`] | CPU kernels that know no model: matrix views, ISA dispatch, the products (f32, int8, bf16), norms, softmax, attention, candle custom ops |
//! | models and data | [`models`], [`hub`], [`squad`] | the three families from the Hub's `config.json` and tensor names; finding and downloading checkpoints; SQuAD files, windows, answer decoding, the official metric |
//! | answering | [`answer`] | questions answered with a model (windows batched by length, forward, decode, score): what the jobs share |
//! | jobs | [`bench`](mod@bench), [`eval`], [`train`], [`serve`] | one entry point each: [`bench::run_bench`], [`eval::EvalJob::run`], [`train::run::fine_tune`], [`serve::LoadgenJob::drive`] (and the batching [`serve::Server`]); each writes one typed result file; no job imports another |
//! | answers | [`report`] | plots, observations, costs, run comparison and the report, read from those files' types (it never runs a model) |
//! | study | [`study`] | `bertbench run`: the benches, the evaluations and the reports composed, planned and checked before any work ([`study::StudyJob`]) |
//! | cli | [`cli`] | flags to typed configurations, one library call, progress and exit codes |
//!
//! Data flows one way: model spec -> [`models`] -> measurement / evaluation / training ->
//! result files -> [`report`].

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

pub mod answer;
pub mod bench;
pub mod chart;
pub mod cli;
pub mod compute;
pub mod cost;
pub mod device;
pub mod error;
pub mod eval;
pub mod hub;
pub mod job;
pub mod models;
pub mod record;
pub mod report;
pub mod runtime;
pub mod serve;
pub mod squad;
pub mod stats;
pub mod study;
pub mod train;
