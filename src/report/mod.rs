//! Reports over finished runs: comparing two bench runs, dollar costs.

pub mod compare;
pub mod cost;
