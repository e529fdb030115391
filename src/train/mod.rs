//! Fine-tuning: the loop, its schedule, checkpoints in the Hub's layout and the push; the
//! trainable model and its loss are in [`crate::models::trainable`], the optimizer in
//! [`crate::compute::optim`].

pub(crate) mod checkpoint;
pub(crate) mod push;
pub mod run;
pub(crate) mod schedule;
pub mod trainer;
