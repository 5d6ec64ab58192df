//! The `docket` binary: parse arguments, start tracing, run a subcommand.

/// mimalloc instead of glibc malloc: allocation and free were about a fifth
/// of the CPU of an Authorize over gRPC (many small, short-lived buffers
/// across two worker threads). See docs/performance.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    no_transparent_huge_pages();
    docket::cli::main()
}

/// mimalloc asks for transparent huge pages on its arenas (`MADV_HUGEPAGE`).
/// On this project's machine a first touch then zeroes 2 MiB at once, and
/// page faults took up to a third of `docket evidence verify` (0.4-1.3 s of
/// system time per 100,000-entry bundle against 0.36 s with 4 KiB pages;
/// docs/performance.md). The kernel checks this per-process flag at every
/// fault, so arenas reserved before `main` are covered too.
fn no_transparent_huge_pages() {
    // Refused only by kernels older than 3.15; 4 KiB pages are then merely
    // slower, so there is nothing to report.
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}
