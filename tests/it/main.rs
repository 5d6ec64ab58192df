//! End-to-end tests: one test binary (STYLE.md §5).
#![allow(unreachable_pub)]

mod benches;
mod certs;
mod ci_templates;
mod cli;
mod cli_gov;
mod common;
mod compat;
mod crash;
mod e2e;
mod evidence;
mod failstop;
mod git;
mod governance;
mod h2client;
mod policy_change;
mod props;
mod python_client;
mod races;
mod vectors;
