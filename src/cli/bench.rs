//! `docket bench`: a bounded loopback load generator.

use clap::Args;

use super::CliResult;

#[derive(Args, Debug)]
pub struct BenchArgs {}

pub(crate) async fn run(_a: BenchArgs) -> CliResult {
    Err(super::CliError::usage("bench: not built yet"))
}
