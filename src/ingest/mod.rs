//! Adapters that turn outside data into events. Only [`git`] uses git2; [`openpgp`] checks
//! OpenPGP commit signatures with rpgp.

pub mod git;
pub mod openpgp;
