//! Adapters that turn outside data into events. Only [`git`] uses git2.

pub mod git;
