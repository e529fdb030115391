//! Compute device and dtype selection.
