//! From numbers to answers: plots, computed observations, dollar cost, run comparison and the
//! generated report, for one machine or several.

pub mod build;
pub mod compare;
pub mod machines;
pub mod observe;
pub mod plot;
pub mod render;
pub mod summary;
