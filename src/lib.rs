//! bertbench: choose the BERT-family model to ship for extractive question answering by
//! measuring accuracy, speed, memory and cost on your own hardware.
//!
//! The library does the work; `main.rs` is a thin CLI over it. Data flows one way:
//! model spec -> [`models`] -> measurement / evaluation / training -> results -> reports.

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
pub mod squad;
pub mod train;
