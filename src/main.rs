//! The `docket` binary: parse arguments, start tracing, run a subcommand.

/// mimalloc instead of glibc malloc: allocation and free were about a fifth
/// of the CPU of an Authorize over gRPC (many small, short-lived buffers
/// across two worker threads). See docs/performance.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    docket::cli::main()
}
