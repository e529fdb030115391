//! From numbers to answers: plots, computed observations, dollar cost, run comparison and the
//! generated report.

pub mod build;
pub mod compare;
pub mod cost;
pub mod observe;
pub mod plot;
pub mod render;
