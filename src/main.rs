//! The `docket` binary: parse arguments, start tracing, run a subcommand.

fn main() -> std::process::ExitCode {
    docket::cli::main()
}
