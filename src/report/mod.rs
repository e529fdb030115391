//! Reports over finished runs: comparing two bench runs.

pub mod compare;
