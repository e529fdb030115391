//! From numbers to answers: plots, computed observations, dollar cost, run comparison and the
//! generated report, for one machine or several.

pub mod build;
pub(crate) mod compare;
pub(crate) mod machines;
pub mod observe;
pub(crate) mod plot;
pub(crate) mod render;
pub(crate) mod summary;
