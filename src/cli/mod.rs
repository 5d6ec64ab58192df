//! The `docket` subcommands. Exit codes: 0 success, 1 the operation failed
//! (verification found a problem, the server refused or denied), 64 bad
//! usage or config, 69 the server could not be reached or did not answer
//! (sysexits' EX_UNAVAILABLE), so a pipeline can tell "denied" from "could
//! not ask".

/// `println!` for command output. A reader that went away (a closed pipe:
/// `| head`, `| grep -q`) is not an error and must not panic: the command
/// finishes and exits with its own code. A loop that only prints
/// (`tail --follow`) uses [`write_out`], which says whether it wrote.
macro_rules! outln {
    () => {{
        $crate::cli::write_out(format_args!("\n"));
    }};
    ($($arg:tt)*) => {{
        $crate::cli::write_out(format_args!("{}\n", format_args!($($arg)*)));
    }};
}

/// `print!` for command output, as [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {{
        $crate::cli::write_out(format_args!($($arg)*));
    }};
}

pub mod bench;
pub mod bench_gov;
pub mod client;
pub mod commands;
pub mod evidence;
pub mod gov;
pub mod h2client;
pub mod text;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Docket: signed change events in a verifiable log.
#[derive(Parser, Debug)]
#[command(name = "docket", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the data directory is.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Data directory (created by `init`/first `serve`).
    #[arg(long, env = "DOCKET_DATA", default_value = "docket-data")]
    pub data: PathBuf,
}

/// How to reach and authenticate to a server. Defaults come from the data dir.
#[derive(Args, Debug, Clone)]
pub struct ConnArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Server URL; defaults to https://<listen address in the data dir config>.
    #[arg(long, env = "DOCKET_SERVER")]
    pub server: Option<String>,
    /// CA certificate that signed the server's certificate (PEM).
    #[arg(long, env = "DOCKET_CA")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM).
    #[arg(long, env = "DOCKET_CERT")]
    pub cert: Option<PathBuf>,
    /// Client certificate's private key (PEM).
    #[arg(long, env = "DOCKET_CERT_KEY")]
    pub cert_key: Option<PathBuf>,
    /// Talk to a server started with --dangerous-plaintext (no TLS).
    #[arg(long)]
    pub dangerous_plaintext: bool,
    /// The log's verifier key (log.vkey); defaults to <data>/log.vkey. Used by
    /// the commands that receive a signed checkpoint (those that append and
    /// print a receipt, `checkpoint`, `proof`, `verify --since`) to check it;
    /// the others ignore it.
    #[arg(long, env = "DOCKET_LOG_VKEY")]
    pub log_vkey: Option<PathBuf>,
}

/// Which key signs events, as which principal.
#[derive(Args, Debug, Clone)]
pub struct SignArgs {
    /// Ed25519 private key (PKCS#8 PEM); defaults to the data dir's admin key.
    #[arg(long, env = "DOCKET_KEY")]
    pub key: Option<PathBuf>,
    /// Principal id of the signer; defaults to the data dir's admin.
    #[arg(long, env = "DOCKET_SIGNER")]
    pub signer: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server; creates the data directory first when it is absent.
    Serve(commands::ServeArgs),
    /// Create a data directory: keys, development PKI, genesis entry.
    Init(commands::InitArgs),
    /// Write a new Ed25519 key pair (FILE and FILE.pub).
    Keygen(commands::KeygenArgs),
    /// Certificates of the development CA: issue, renew, revoke and list
    /// client certificates; renew the server's.
    #[command(subcommand)]
    Cert(commands::CertCmd),
    /// Register principals and manage their keys.
    #[command(subcommand)]
    Principal(commands::PrincipalCmd),
    /// Sign and append an event; prints the verified receipt.
    Append(commands::AppendArgs),
    /// Print one entry.
    Get(commands::GetArgs),
    /// Print (and optionally save) the latest signed checkpoint.
    Checkpoint(commands::CheckpointArgs),
    /// Fetch inclusion proofs (verified against the signed checkpoint) or consistency proofs.
    #[command(subcommand)]
    Proof(commands::ProofCmd),
    /// Stream entries from an index, optionally following new ones.
    Tail(commands::TailArgs),
    /// Verify a data directory offline, or a saved checkpoint against a server.
    Verify(commands::VerifyArgs),
    /// Replay the log into fresh state and compare it with the live state.
    Rebuild(commands::RebuildArgs),
    /// Loopback load generator: appends and pings over mTLS, and PostgreSQL.
    Bench(bench::BenchArgs),
    /// Load generator for Authorize: fills a log with changes and reviews,
    /// then measures decisions in process and over mTLS gRPC.
    BenchAuthorize(bench_gov::BenchAuthorizeArgs),
    /// Load generator for evidence bundles: export and verify times for one
    /// change and for a period covering a large log.
    BenchEvidence(bench_gov::BenchEvidenceArgs),
    /// Propose, approve and show policy (policy changes are governed changes).
    #[command(subcommand)]
    Policy(gov::PolicyCmd),
    /// Open, amend and show changes.
    #[command(subcommand)]
    Change(gov::ChangeCmd),
    /// Approve a change's current revision (signed with your key).
    Approve(gov::ReviewArgs),
    /// Reject a change's current revision.
    Reject(gov::ReviewArgs),
    /// Report CI runs.
    #[command(subcommand)]
    Ci(gov::CiCmd),
    /// Ask whether a deployment is authorized (records nothing); exit 0
    /// allow, 1 deny. A pipeline gate.
    Authorize(gov::AuthorizeArgs),
    /// Record a deployment about to happen; Docket decides it under the
    /// policy in force. Exit 0 allow, 1 deny.
    Deploy(gov::DeployArgs),
    /// List break-glass review obligations (open, overdue, closed).
    Obligations(gov::ObligationsArgs),
    /// List violations: overdue or late reviews, unjustified break-glass.
    Violations(gov::ViolationsArgs),
    /// Review a break-glass deployment, closing its obligation.
    ReviewBreakGlass(gov::ReviewBreakGlassArgs),
    /// Record git commits.
    #[command(subcommand)]
    Git(gov::GitCmd),
    /// Export and verify evidence bundles.
    #[command(subcommand)]
    Evidence(evidence::EvidenceCmd),
}

/// Parses arguments and runs the subcommand.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // --help and --version print and succeed; anything else is bad
            // usage, which this CLI reports as 64 (EX_USAGE), not clap's 2.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(64)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DOCKET_LOG")
                // rpgp logs every unparsable OpenPGP signature it meets at
                // info level, so one hostile commit could flood the log;
                // Docket reports the verdict itself.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,pgp=warn")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal who has not asked
        // for none (NO_COLOR), never in log files.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.enable_all();
    // A task woken by another normally runs next on the waker's thread (the
    // "LIFO slot"). For the server that means the HTTP/2 connection task runs
    // as soon as any one reply is ready and writes it alone; run in order, it
    // finds more replies ready and writes them together. Measured over mTLS
    // gRPC at 64 clients: +6-9% decisions/s and a lower p99
    // (docs/performance.md). The setting needs `--cfg tokio_unstable`
    // (.cargo/config.toml); a build without it keeps tokio's default.
    #[cfg(tokio_unstable)]
    b.disable_lifo_slot();
    let rt = match b.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let res = rt.block_on(async move {
        match cli.command {
            Command::Serve(a) => commands::serve(a).await,
            Command::Init(a) => commands::init(a),
            Command::Keygen(a) => commands::keygen(a),
            Command::Cert(c) => commands::cert(c),
            Command::Principal(c) => commands::principal(c).await,
            Command::Append(a) => commands::append(a).await,
            Command::Get(a) => commands::get(a).await,
            Command::Checkpoint(a) => commands::checkpoint(a).await,
            Command::Proof(c) => commands::proof(c).await,
            Command::Tail(a) => commands::tail(a).await,
            Command::Verify(a) => commands::verify(a).await,
            Command::Rebuild(a) => commands::rebuild(a),
            Command::Bench(a) => bench::run(a).await,
            Command::BenchAuthorize(a) => bench_gov::run(a).await,
            Command::BenchEvidence(a) => bench_gov::run_evidence(a).await,
            Command::Policy(c) => gov::policy(c).await,
            Command::Change(c) => gov::change(c).await,
            Command::Approve(a) => gov::review(a, true).await,
            Command::Reject(a) => gov::review(a, false).await,
            Command::Ci(c) => gov::ci(c).await,
            Command::Authorize(a) => gov::authorize(a).await,
            Command::Deploy(a) => gov::deploy(a).await,
            Command::Obligations(a) => gov::obligations(a).await,
            Command::Violations(a) => gov::violations(a).await,
            Command::ReviewBreakGlass(a) => gov::review_break_glass(a).await,
            Command::Git(c) => gov::git(c).await,
            Command::Evidence(c) => evidence::evidence(c).await,
        }
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

/// A CLI failure: message and exit code.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub code: u8,
}

impl CliError {
    pub(crate) fn failed(m: impl std::fmt::Display) -> Self {
        CliError {
            message: m.to_string(),
            code: 1,
        }
    }
    pub(crate) fn usage(m: impl std::fmt::Display) -> Self {
        CliError {
            message: m.to_string(),
            code: 64,
        }
    }
    /// The server could not be reached (refused, timed out, TLS failed).
    pub(crate) fn unavailable(m: impl std::fmt::Display) -> Self {
        CliError {
            message: m.to_string(),
            code: 69,
        }
    }
}

type CliResult = Result<(), CliError>;

/// Writes command output to stdout; see [`outln!`]. A closed pipe is
/// reported once on stderr only when `DOCKET_LOG` asks for debug output;
/// any other write error once as a warning.
pub(crate) fn write_out(args: std::fmt::Arguments<'_>) -> bool {
    use std::io::Write as _;
    use std::sync::atomic::{AtomicBool, Ordering};
    static FAILED: AtomicBool = AtomicBool::new(false);
    if FAILED.load(Ordering::Relaxed) {
        return false;
    }
    let mut out = std::io::stdout().lock();
    match out.write_fmt(args) {
        Ok(()) => true,
        Err(e) => {
            FAILED.store(true, Ordering::Relaxed);
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                tracing::debug!("stdout was closed by its reader; output stops here");
            } else {
                tracing::warn!(error = %e, "writing to stdout failed; output stops here");
            }
            false
        }
    }
}

/// Opens the log of an existing data directory for an offline command
/// (`verify`, `rebuild`, `evidence export --offline`). A directory `init`
/// never completed, or one without its `db`, is refused rather than given a
/// fresh empty store (sled creates what it opens); a store another process
/// holds is a usage error naming the fix; anything else sled reports
/// (corrupt files) is a failure.
pub(crate) fn open_offline_store(
    dd: &crate::datadir::DataDir,
) -> Result<crate::ledger::SledStore, CliError> {
    require_data_dir(dd)?;
    crate::ledger::SledStore::open(&dd.db()).map_err(|e| {
        let text = e.to_string();
        if text.contains("could not acquire lock") {
            CliError::usage(format!(
                "{}: in use by another process (a running docket serve?); stop it first, offline commands need the store to themselves",
                dd.db().display()
            ))
        } else {
            CliError::failed(format!("{}: {text}", dd.db().display()))
        }
    })
}

/// A store opened from a scratch copy of a data directory's `db`, for the
/// commands that only read it (`verify`, `evidence export --offline`).
/// Opening a sled store recovers it, and recovery cuts the log at the first
/// damaged message as if it were a torn tail: opened in place, a damaged
/// store would lose the entries after the damage, and the check meant to
/// find that would report the shortened log as sound. The copy takes that
/// instead, the original is never written (so read-only media can be
/// checked too), and the copy is removed when this is dropped.
pub(crate) struct ScratchStore {
    pub store: crate::ledger::SledStore,
    // Dropped after the store (fields drop in order).
    _dir: ScratchDir,
}

impl ScratchStore {
    /// The store, and the directory that must outlive it.
    pub(crate) fn split(self) -> (crate::ledger::SledStore, ScratchDir) {
        (self.store, self._dir)
    }
}

/// A scratch directory in use. Its file `in-use` is locked exclusively for
/// as long as this lives, so a later offline command can tell a copy left
/// behind by a killed one (no process holds the lock: removed) from one a
/// command still reads (locked: left alone).
pub(crate) struct ScratchDir {
    // Removed while the lock is still held (fields drop in order).
    dir: tempfile::TempDir,
    _lock: std::fs::File,
}

impl ScratchDir {
    fn claim(dir: tempfile::TempDir) -> std::io::Result<Self> {
        // Locked under another name, then renamed: `in-use` is never seen
        // unlocked while its directory is new.
        let fresh = dir.path().join("in-use.new");
        let lock = std::fs::File::create(&fresh)?;
        lock.try_lock().map_err(std::io::Error::other)?;
        std::fs::rename(&fresh, dir.path().join(SCRATCH_LOCK))?;
        Ok(ScratchDir { dir, _lock: lock })
    }

    pub(crate) fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

const SCRATCH_LOCK: &str = "in-use";

/// Removes the scratch directories named `prefix*` in `place` that no
/// process holds (left by an offline command that was killed). Only
/// directories of this user are looked at (a shared temporary directory
/// holds other people's), and only those whose `in-use` is a regular file:
/// one being made, or not Docket's, is left alone. Returns those removed
/// and those that could not be, with why.
pub(crate) fn remove_abandoned_scratch(
    place: &std::path::Path,
    prefix: &str,
) -> (
    Vec<std::path::PathBuf>,
    Vec<(std::path::PathBuf, std::io::Error)>,
) {
    let (mut removed, mut failed) = (Vec::new(), Vec::new());
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt as _;
        let me = rustix::process::geteuid().as_raw();
        let Ok(entries) = std::fs::read_dir(place) else {
            return (removed, failed);
        };
        for e in entries.flatten() {
            let path = e.path();
            let ours = e
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(prefix))
                && path
                    .symlink_metadata()
                    .is_ok_and(|m| m.is_dir() && m.uid() == me);
            let lock_path = path.join(SCRATCH_LOCK);
            if !ours || !lock_path.symlink_metadata().is_ok_and(|m| m.is_file()) {
                continue;
            }
            let Ok(lock) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&lock_path)
            else {
                continue;
            };
            if lock.try_lock().is_err() {
                continue;
            }
            // The copy first and the lock file last, so a removal cut short
            // leaves a directory the next command still recognises.
            let emptied = std::fs::read_dir(&path).and_then(|inside| {
                for e in inside {
                    let e = e?;
                    if e.file_name() == SCRATCH_LOCK {
                        continue;
                    }
                    if e.file_type()?.is_dir() {
                        std::fs::remove_dir_all(e.path())?;
                    } else {
                        std::fs::remove_file(e.path())?;
                    }
                }
                Ok(())
            });
            match emptied.and_then(|()| std::fs::remove_dir_all(&path)) {
                Ok(()) => removed.push(path),
                Err(e) => failed.push((path, e)),
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (place, prefix);
    (removed, failed)
}

pub(crate) fn open_offline_copy(dd: &crate::datadir::DataDir) -> Result<ScratchStore, CliError> {
    require_data_dir(dd)?;
    let db = dd.db();
    let root = db.parent().map(PathBuf::from).unwrap_or_default();
    // sled holds an exclusive lock on this file while it has the store
    // open; taking it for the copy refuses a store a server is writing.
    let lock_path = db.join("db");
    let lock = std::fs::File::open(&lock_path)
        .map_err(|e| CliError::failed(format!("{}: {e}", lock_path.display())))?;
    match lock.try_lock_shared() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(CliError::usage(format!(
                "{}: in use by another process (a running docket serve?); stop it first, offline commands need the store to themselves",
                db.display()
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(CliError::failed(format!("{}: {e}", lock_path.display())));
        }
    }
    // In the data directory first (same disk, usually room), else in the
    // system's temporary directory (read-only media, a full disk).
    // Copies left there by a killed command go first: each is a whole store.
    let temp = std::env::temp_dir();
    let places = [
        (root.as_path(), ".docket-scratch-"),
        (temp.as_path(), "docket-scratch-"),
    ];
    for (place, prefix) in places {
        let (removed, failed) = remove_abandoned_scratch(place, prefix);
        for gone in removed {
            tracing::warn!(
                path = %gone.display(),
                "removed a scratch copy of a store left behind by an offline command that was stopped"
            );
        }
        for (left, e) in failed {
            tracing::warn!(
                path = %left.display(),
                error = %e,
                "could not remove a scratch copy of a store left behind by an offline command that was stopped; remove it by hand"
            );
        }
    }
    let mut tried = Vec::new();
    let mut made = None;
    for (place, prefix) in places {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(place)
            .and_then(ScratchDir::claim);
        let dir = match dir {
            Ok(d) => d,
            Err(e) => {
                tried.push(format!("a scratch directory: {e}"));
                continue;
            }
        };
        let copy = dir.path().join("db");
        match copy_tree(&db, &copy) {
            Ok(()) => {
                made = Some(dir);
                break;
            }
            Err(e) => tried.push(format!("copying to {}: {e}", copy.display())),
        }
    }
    drop(lock);
    let Some(scratch) = made else {
        return Err(CliError::failed(format!(
            "{}: offline commands read a copy of the store, and none could be made ({})",
            db.display(),
            tried.join("; ")
        )));
    };
    let copy = scratch.path().join("db");
    let store = crate::ledger::SledStore::open(&copy)
        .map_err(|e| CliError::failed(format!("{}: {e}", db.display())))?;
    Ok(ScratchStore {
        store,
        _dir: scratch,
    })
}

/// Runs `f`, which reads a store, turning a panic inside it (sled panics
/// on some damaged pages rather than returning an error) into a failure
/// that names the message of this thread's first panic, without the default hook's
/// backtrace on stderr.
pub(crate) fn surviving_store_panics<T>(
    f: impl FnOnce() -> Result<T, CliError>,
) -> Result<T, CliError> {
    static FIRST: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    let first = || FIRST.lock().unwrap_or_else(|p| p.into_inner());
    *first() = None;
    let previous = std::panic::take_hook();
    // Only a panic of this thread can end `f`; a panic that another thread
    // catches (a signature check, which fails its entry with the message)
    // must not take the place of the one reported here.
    let caller = std::thread::current().id();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() != caller {
            return;
        }
        let p = info.payload();
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info
            .location()
            .map(|l| format!(" (at {}:{})", l.file(), l.line()))
            .unwrap_or_default();
        first().get_or_insert(format!("{msg}{at}"));
    }));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(previous);
    r.unwrap_or_else(|_| {
        Err(CliError::failed(format!(
            "reading the store panicked (a damaged store, or a bug in Docket): {}; if the store is damaged, restore the data directory from a copy",
            first().take().unwrap_or_default()
        )))
    })
}

/// Copies the directory tree `from` to `to` (regular files and
/// directories; anything else is refused).
fn copy_tree(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        // Followed, as sled follows them: a store may keep a directory
        // elsewhere behind a symbolic link.
        let t = std::fs::metadata(e.path())?;
        let dest = to.join(e.file_name());
        if t.is_dir() {
            copy_tree(&e.path(), &dest)?;
        } else if t.is_file() {
            std::fs::copy(e.path(), &dest)?;
        } else {
            return Err(std::io::Error::other(format!(
                "{}: not a regular file or directory",
                e.path().display()
            )));
        }
    }
    Ok(())
}

/// Refuses a directory `init` never completed, or one without its `db`.
pub(crate) fn require_data_dir(dd: &crate::datadir::DataDir) -> Result<(), CliError> {
    let root = dd.db().parent().map(PathBuf::from).unwrap_or_default();
    if !dd.is_initialised() {
        if dd.db().exists() || dd.log_key().exists() {
            return Err(CliError::usage(format!(
                "{}: {}",
                root.display(),
                dd.missing_config()
            )));
        }
        return Err(CliError::usage(format!(
            "{}: not a Docket data directory (no config.json); create one with docket init, or name yours with --data",
            root.display()
        )));
    }
    if !dd.db().is_dir() {
        return Err(CliError::usage(format!(
            "{}: the data directory has no log store (db/ is missing)",
            root.display()
        )));
    }
    Ok(())
}

/// Reads a small text file named on the command line (`flag`: the option,
/// for messages), refusing what is not a regular file of at most `max`
/// bytes before reading it: a wrong path could name a device or a huge file.
pub(crate) fn read_small_file(
    flag: &str,
    p: &std::path::Path,
    max: usize,
) -> Result<String, CliError> {
    let named = |e: &dyn std::fmt::Display| CliError::usage(format!("{flag} {}: {e}", p.display()));
    let meta = std::fs::metadata(p).map_err(|e| named(&e))?;
    if !meta.is_file() {
        return Err(named(&"not a regular file"));
    }
    if meta.len() > max as u64 {
        return Err(named(&format_args!(
            "{} bytes; at most {max} are read",
            meta.len()
        )));
    }
    std::fs::read_to_string(p).map_err(|e| named(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(r: Result<(), CliError>) -> String {
        r.expect_err("the panic should be a failure").message
    }

    /// One test, as the panic hook is the process's: cases run in parallel
    /// would swap it under each other.
    #[test]
    fn a_store_panic_is_reported_by_its_own_message_not_another_threads() {
        let r = surviving_store_panics(|| -> Result<(), CliError> { panic!("page 7 is torn") });
        let m = message(r);
        assert!(m.contains("reading the store panicked"), "{m}");
        assert!(m.contains("page 7 is torn (at src/cli/mod.rs:"), "{m}");

        let r = surviving_store_panics(|| -> Result<(), CliError> {
            // A signature thread's panic, caught there.
            let other = std::thread::spawn(|| {
                std::panic::catch_unwind(|| panic!("a signature check")).is_err()
            });
            assert!(other.join().unwrap());
            panic!("the store's own");
        });
        let m = message(r);
        assert!(m.contains("the store's own"), "{m}");
        assert!(!m.contains("a signature check"), "{m}");

        // When only another thread panicked, the work's result stands.
        let ok = surviving_store_panics(|| {
            let other = std::thread::spawn(|| std::panic::catch_unwind(|| panic!("caught")));
            assert!(other.join().unwrap().is_err());
            Ok(5)
        });
        assert_eq!(ok.unwrap(), 5);
    }
}
