//! bertbench: choose the BERT-family model to ship for extractive question answering by
//! measuring accuracy, speed, memory and cost on your own hardware.
//!
//! The library does the work; `main.rs` is a thin CLI over it ([`cli`]). The layers, each
//! importing only those above it:
//!
//! | layer | modules | what it is |
//! |---|---|---|
//! | compute | [`compute`] | CPU kernels that know no model: matrix views, ISA dispatch, the products (f32, int8, bf16), norms, softmax, attention, candle custom ops |
//! | models | [`models`], [`hub`], [`device`] | the three families from the Hub's `config.json` and tensor names; finding and downloading checkpoints |
//! | data | [`squad`] | SQuAD files, windows, answer decoding, the official metric (knows no model) |
//! | jobs | [`bench`](mod@bench), [`eval`], [`train`], [`serve`] | one entry point each: [`bench::run_bench`], [`eval::EvalJob::run`], [`train::run::fine_tune`], [`serve::LoadgenJob::run`] (and the batching [`serve::Server`]); each writes one typed result file |
//! | answers | [`report`] | plots, observations, costs, run comparison and the report, read from those files |
//! | process | [`runtime`], [`error`] | the compute pool and allocator settings; error kinds and exit codes |
//!
//! Data flows one way: model spec -> [`models`] -> measurement / evaluation / training ->
//! result files -> [`report`].

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

pub mod bench;
pub mod cli;
pub mod compute;
pub mod device;
pub mod error;
pub mod eval;
pub mod hub;
pub mod models;
pub mod report;
pub mod runtime;
pub mod serve;
pub mod squad;
pub mod train;
