//! `docket evidence export` and `docket evidence verify`.

use std::io::Write as _;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::client::{Conn, status_err};
use super::text::{json_line, printable};
use super::{CliError, CliResult, ConnArgs, DataArgs};
use crate::api::pb;
use crate::crypto::NoteVerifier;
use crate::datadir::DataDir;
use crate::evidence::{Control, Scope, Trust};

#[derive(Subcommand, Debug)]
pub enum EvidenceCmd {
    /// Export an evidence bundle for one change, a period or a control.
    Export(Box<ExportArgs>),
    /// Verify a bundle offline: manifest signature, digests, checkpoint,
    /// proofs, chain links, signatures, completeness, re-evaluated decisions.
    Verify(VerifyArgs),
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// One change.
    #[arg(long, conflicts_with_all = ["from", "control"])]
    change: Option<String>,
    /// With --change: also carry every entry from the change's opening to
    /// the checkpoint, which proves that none of the change's entries was
    /// left out (the bundle grows with the log written since the opening).
    #[arg(long)]
    complete: bool,
    /// Start of a period (RFC 3339, or a date meaning midnight UTC).
    #[arg(long, requires = "to")]
    from: Option<String>,
    /// End of the period (exclusive).
    #[arg(long, requires = "from")]
    to: Option<String>,
    /// Report this control over the period: soc2-cc8.1, iso27001-a8.32, hipaa-164.312b.
    #[arg(long, requires = "from")]
    control: Option<String>,
    /// Only changes and decisions for these environments (globs; repeatable;
    /// period bundles).
    #[arg(long = "env", conflicts_with_all = ["change", "control"])]
    environments: Vec<String>,
    /// Only changes and decisions for these repositories (globs; repeatable;
    /// period bundles): named on them or recorded for their code by ingested
    /// commits and CI runs; those with no repository at all are kept.
    #[arg(long = "repository", conflicts_with_all = ["change", "control"])]
    repositories: Vec<String>,
    /// Where to write the bundle.
    #[arg(long)]
    out: PathBuf,
    /// An earlier checkpoint of this log that the auditor holds (a signed
    /// note, e.g. saved with `docket checkpoint --out` at the last audit):
    /// the bundle also carries it and the consistency proof from it, so it
    /// verifies with `--checkpoint` and that note. Refused if the log no
    /// longer holds the tree the note describes.
    #[arg(long, value_name = "NOTE")]
    since_checkpoint: Option<PathBuf>,
    /// Read the data directory directly (the server must be stopped)
    /// instead of asking a server.
    #[arg(long)]
    offline: bool,
    /// Show how far the export has got on standard error: `auto` when it is
    /// a terminal, `always` (one line per report when it is not), `never`.
    #[arg(long, value_enum, default_value_t = ShowProgress::Auto)]
    progress: ShowProgress,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShowProgress {
    Auto,
    Always,
    Never,
}

/// Draws export progress on standard error: one line redrawn in place on a
/// terminal, a line per report otherwise.
struct Bar {
    on: bool,
    tty: bool,
    drawn: bool,
}

impl Bar {
    fn new(show: ShowProgress) -> Self {
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        Bar {
            on: show == ShowProgress::Always || (show == ShowProgress::Auto && tty),
            tty,
            drawn: false,
        }
    }

    fn draw(&mut self, what: &str, done: u64, total: u64, unit: &str) {
        if !self.on {
            return;
        }
        let frac = if total == 0 {
            1.0
        } else {
            done as f64 / total as f64
        };
        let bar = ((frac * 30.0) as usize).min(30);
        let line = format!(
            "{what:<9} [{}{}] {:>5.1}%  {done}/{total} {unit}",
            "#".repeat(bar),
            " ".repeat(30 - bar),
            frac * 100.0,
        );
        if self.tty {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
        let _ = std::io::stderr().flush();
        self.drawn = true;
    }

    fn step(&mut self, stage: &str, done: u64, total: u64) {
        let unit = match stage {
            "signing" => "manifest",
            "proving" => "proofs",
            _ => "entries",
        };
        self.draw(stage, done, total, unit);
    }

    fn end(&mut self) {
        if self.on && self.tty && self.drawn {
            eprintln!();
        }
    }
}

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("trust").required(true).multiple(true).args(["log_key", "checkpoint"]))]
pub struct VerifyArgs {
    /// The bundle.
    file: PathBuf,
    /// The log's verifier key (log.vkey), obtained from the log's operator.
    #[arg(long)]
    log_key: Option<PathBuf>,
    /// A checkpoint you already trust (a signed note, e.g. saved with
    /// `docket checkpoint --out`); the bundle must be for exactly that tree,
    /// or for a later one and carry the consistency proof from it (exported
    /// with --since-checkpoint and this note). Without --log-key, the key
    /// is the one the bundle's genesis names, proven in the pinned tree.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Parses RFC 3339, or a plain date meaning midnight UTC.
fn time_arg(flag: &str, s: &str) -> Result<i64, CliError> {
    // A bare date is midnight UTC. Anything else must be a timestamp with
    // its offset: jiff's date parser would also take "2026-06-15T15:30" and
    // silently drop the time of day, moving the period's edge.
    let bare_date = s.len() == 10
        && s.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    let t: jiff::Timestamp = if bare_date {
        s.parse::<jiff::civil::Date>()
            .map_err(|e| CliError::usage(format!("{flag} {s:?}: {e}")))?
            .to_zoned(jiff::tz::TimeZone::UTC)
            .map_err(|e| CliError::usage(format!("{flag} {s:?}: {e}")))?
            .timestamp()
    } else if s
        .find(['T', 't', ' '])
        .is_some_and(|i| crate::policy::names_leap_second(&s[i..]))
    {
        // jiff would read it as :59, moving the period's edge by a second.
        return Err(CliError::usage(format!(
            "{flag} {s:?} names a leap second (:60); write :59 or the next minute"
        )));
    } else {
        s.parse().map_err(|e| {
            CliError::usage(format!(
                "{flag} {s:?}: give an RFC 3339 time with its offset (2026-06-15T15:30:00Z, \
                 2026-06-15T15:30:00-04:00) or a date (2026-06-15, midnight UTC): {e}"
            ))
        })?
    };
    i64::try_from(t.as_nanosecond())
        .map_err(|_| CliError::usage(format!("{flag} {s:?}: out of range")))
}

fn scope_of(a: &ExportArgs) -> Result<Scope, CliError> {
    if a.complete && a.change.is_none() {
        return Err(CliError::usage(
            "--complete applies to --change only; a period or control bundle always proves its period complete",
        ));
    }
    if let Some(c) = &a.change {
        return Ok(Scope::Change {
            id: c.clone(),
            complete: a.complete,
        });
    }
    let (Some(from), Some(to)) = (&a.from, &a.to) else {
        return Err(CliError::usage(
            "give --change ID, or --from and --to (with --control C for a control)",
        ));
    };
    let (from, to) = (time_arg("--from", from)?, time_arg("--to", to)?);
    Ok(match &a.control {
        Some(c) => Scope::Control {
            control: Control::parse(c).ok_or_else(|| {
                CliError::usage(format!(
                    "--control {c:?}: expected soc2-cc8.1, iso27001-a8.32 or hipaa-164.312b"
                ))
            })?,
            from,
            to,
        },
        None => {
            crate::evidence::check_filters("--env", &a.environments).map_err(CliError::usage)?;
            crate::evidence::check_filters("--repository", &a.repositories)
                .map_err(CliError::usage)?;
            Scope::Period {
                from,
                to,
                environments: a.environments.clone(),
                repositories: a.repositories.clone(),
            }
        }
    })
}

pub(crate) async fn evidence(c: EvidenceCmd) -> CliResult {
    match c {
        EvidenceCmd::Export(a) => export(*a).await,
        EvidenceCmd::Verify(a) => verify(a),
    }
}

async fn export(a: ExportArgs) -> CliResult {
    let scope = scope_of(&a)?;
    let since = a
        .since_checkpoint
        .as_deref()
        .map(|p| super::read_small_file("--since-checkpoint", p, crate::evidence::MAX_SINCE_NOTE))
        .transpose()?;
    let started = std::time::Instant::now();
    let mut bar = Bar::new(a.progress);
    let bytes = if a.offline {
        offline(&a.conn.data, &scope, since, &mut bar).await
    } else {
        online(&a.conn, &scope, since, &mut bar).await
    };
    bar.end();
    let bytes = bytes?;
    std::fs::write(&a.out, &bytes)
        .map_err(|e| CliError::failed(format!("{}: {e}", a.out.display())))?;
    let trust = match &a.since_checkpoint {
        Some(p) => format!("--checkpoint {}", p.display()),
        None => "--log-key log.vkey".into(),
    };
    outln!(
        "wrote {} ({} bytes, BLAKE3 {}) in {:.3} s; check it with: docket evidence verify {} {trust}",
        a.out.display(),
        bytes.len(),
        hex::encode(crate::crypto::blake3_256(&bytes)),
        started.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}

async fn offline(
    data: &DataArgs,
    scope: &Scope,
    since: Option<String>,
    bar: &mut Bar,
) -> Result<Vec<u8>, CliError> {
    let dd = DataDir::new(&data.data);
    let cfg = dd.config().map_err(CliError::usage)?;
    let signer = dd.note_signer(&cfg).map_err(CliError::usage)?;
    // A scratch copy, as for `docket verify`: the original is never opened.
    let (store, scratch) = super::surviving_store_panics(|| super::open_offline_copy(&dd))?.split();
    let progress = std::sync::Arc::new(crate::evidence::Progress::default());
    let (p, scope) = (progress.clone(), scope.clone());
    let work = tokio::task::spawn_blocking(move || {
        // Dropped last, after the reader and its store.
        let _scratch = scratch;
        let reader = crate::ledger::LedgerReader::new(std::sync::Arc::new(store));
        // A store that recovered less than it handed out is refused, as by
        // `serve`: a bundle of it would prove a shortened log.
        if let Some((size, reason)) = reader
            .published_mark_problem(&signer.verifier())
            .map_err(CliError::failed)?
        {
            return Err(CliError::failed(
                crate::service::OpenError::PublishedMark { size, reason }.to_string(),
            ));
        }
        let state = crate::service::current_state(&reader).map_err(CliError::failed)?;
        crate::evidence::export_offline(&state, &reader, &signer, &scope, since.as_deref(), &p)
            .map_err(CliError::failed)
    });
    tokio::pin!(work);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
    loop {
        let done = tokio::select! {
            r = &mut work => Some(r),
            () = progress.changed() => None,
            _ = tick.tick() => None,
        };
        for s in progress.take() {
            bar.step(s.stage.name(), s.done, s.total);
        }
        if let Some(r) = done {
            return r.map_err(|e| CliError::failed(e.to_string()))?;
        }
    }
}

async fn online(
    conn: &ConnArgs,
    scope: &Scope,
    since: Option<String>,
    bar: &mut Bar,
) -> Result<Vec<u8>, CliError> {
    use pb::export_evidence_request::Scope as S;
    let req = pb::ExportEvidenceRequest {
        scope: Some(match scope {
            Scope::Change { id, .. } => S::ChangeId(id.clone()),
            Scope::Period {
                from,
                to,
                environments,
                repositories,
            } => S::Period(pb::PeriodScope {
                from_unix_nanos: *from,
                to_unix_nanos: *to,
                environments: environments.clone(),
                repositories: repositories.clone(),
            }),
            Scope::Control { control, from, to } => S::Control(pb::ControlScope {
                control: control.key().into(),
                from_unix_nanos: *from,
                to_unix_nanos: *to,
            }),
        }),
        progress: bar.on,
        complete: matches!(scope, Scope::Change { complete: true, .. }),
        since_checkpoint: since.unwrap_or_default(),
    };
    // No bound on the call: without progress reports the server sends its
    // first byte only once the bundle is built, which may take minutes.
    let mut g = Conn::resolve(conn)?.governance_with(None).await?;
    let mut stream = g
        .export_evidence(req)
        .await
        .map_err(|s| status_err("export evidence", s))?
        .into_inner();
    let mut out = Vec::new();
    let mut total: Option<u64> = None;
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|s| status_err("export evidence", s))?
    {
        if let Some(p) = &chunk.progress {
            if !out.is_empty() {
                return Err(CliError::failed(
                    "the server sent a progress report after the bundle's bytes began",
                ));
            }
            // The stage name is the server's text: only known names reach
            // the terminal.
            let stage = match p.stage.as_str() {
                s @ ("scanning" | "reading" | "proving" | "folding" | "signing" | "checking") => s,
                _ => "building",
            };
            bar.step(stage, p.done, p.total);
            continue;
        }
        if chunk.offset != out.len() as u64 {
            return Err(CliError::failed(
                "the server sent bundle chunks out of order",
            ));
        }
        if total.is_some_and(|t| t != chunk.total_bytes) {
            return Err(CliError::failed(
                "the server changed the bundle's total size between chunks",
            ));
        }
        total = Some(chunk.total_bytes);
        out.extend_from_slice(&chunk.data);
        bar.draw("receiving", out.len() as u64, chunk.total_bytes, "bytes");
    }
    whole(out, total)
}

/// The bundle once the stream has ended: a stream that ends early (a proxy
/// cutting it, a server stopping between chunks) must not leave a short
/// file behind as if whole. `total`: the size the chunks announced.
fn whole(out: Vec<u8>, total: Option<u64>) -> Result<Vec<u8>, CliError> {
    match total {
        None => Err(CliError::failed(
            "the server ended the export without sending the bundle",
        )),
        Some(t) if t != out.len() as u64 => Err(CliError::failed(format!(
            "the server ended the export after {} of {t} bytes",
            out.len()
        ))),
        Some(_) => Ok(out),
    }
}

fn read_vkey(p: &std::path::Path) -> Result<NoteVerifier, CliError> {
    let t = crate::files::read_bounded_text(p, 64 << 10)
        .map_err(|e| CliError::usage(format!("{}: {e}", p.display())))?;
    NoteVerifier::from_vkey(t.trim()).map_err(|e| CliError::usage(format!("{}: {e}", p.display())))
}

fn verify(a: VerifyArgs) -> CliResult {
    let key = a.log_key.as_deref().map(read_vkey).transpose()?;
    let trust = match (&a.checkpoint, key) {
        (Some(p), key) => Trust::Pinned {
            note: crate::files::read_bounded_text(p, 64 << 10)
                .map_err(|e| CliError::usage(format!("{}: {e}", p.display())))?,
            key,
        },
        (None, Some(key)) => Trust::Key(key),
        (None, None) => return Err(CliError::usage("give --log-key or --checkpoint")),
    };
    // A bundle is a file: a device or pipe (/dev/zero) could be read forever.
    let meta = std::fs::metadata(&a.file)
        .map_err(|e| CliError::usage(format!("{}: {e}", a.file.display())))?;
    if !meta.is_file() {
        return Err(CliError::usage(format!(
            "{}: not a regular file; give the bundle's file",
            a.file.display()
        )));
    }
    let bytes = std::fs::read(&a.file)
        .map_err(|e| CliError::usage(format!("{}: {e}", a.file.display())))?;
    let started = std::time::Instant::now();
    match crate::evidence::verify(&bytes, &trust) {
        Ok(r) => {
            let secs = started.elapsed().as_secs_f64();
            if a.json {
                outln!(
                    "{}",
                    json_line(&serde_json::json!({
                        "ok": true, "origin": r.origin,
                        "scope": serde_json::from_str::<serde_json::Value>(&r.scope).unwrap_or_default(),
                        "checkpoint_size": r.checkpoint_size, "entries": r.entries,
                        "inclusion_proofs": r.inclusion_proofs,
                        "range": r.range.map(|(s, e)| serde_json::json!({"start": s, "end": e})),
                        "signatures": r.signatures, "decisions": r.decisions, "files": r.files,
                        "violations": r.violations, "seconds": secs,
                        "as_of": crate::state::gov::fmt_nanos(r.as_of),
                        "as_of_unix_nanos": r.as_of,
                        "period_unfinished": r.period_unfinished,
                        "history_proven_to": r.history_proven_to,
                        "decisions_based": r.decisions_based,
                        "change_entries_proven": r.change_entries_proven,
                        "subjects_proven": r.subjects_proven,
                        "since": r.since.map(|(size, root)| serde_json::json!({"size": size, "root": hex::encode(root)})),
                    }))
                );
            } else {
                outln!(
                    "OK: {} entries of log {} at checkpoint {} ({} inclusion proofs{}), {} signatures, {} decisions re-evaluated, {} files regenerated or digest-checked; {} violation(s) in scope; {:.3} s",
                    r.entries,
                    printable(&r.origin),
                    r.checkpoint_size,
                    r.inclusion_proofs,
                    r.range
                        .map(|(s, e)| format!(", range {s}..{e} proven complete"))
                        .unwrap_or_default(),
                    r.signatures,
                    r.decisions,
                    r.files,
                    r.violations,
                    secs
                );
                // What the bundle is about and when it stops, so a genuine
                // bundle of another scope or an earlier day is not taken
                // for the one the reader asked for.
                outln!(
                    "scope: {}; as of {}",
                    printable(&r.scope_words),
                    crate::state::gov::fmt_nanos(r.as_of)
                );
                if let Some((size, root)) = r.since {
                    outln!(
                        "consistency: the checkpoint extends the log's earlier checkpoint for tree size {size} (root {}), which the bundle carries",
                        hex::encode(root)
                    );
                }
                match r.history_proven_to {
                    Some(i) => outln!(
                        "history: every identity and policy entry up to entry {i} is carried"
                    ),
                    None => eprintln!(
                        "warning: the bundle carries no entry of format version 2 or later, so it cannot \
                         show that it carries every key, role and policy change (ledger-format §4.3)"
                    ),
                }
                let scope: serde_json::Value = serde_json::from_str(&r.scope).unwrap_or_default();
                if let Some(id) = scope["change"].as_str().map(printable) {
                    match (r.range, r.change_entries_proven) {
                        (_, Some(k)) if let Some(s) = r.subjects_proven => outln!(
                            "completeness: the {k} entries concerning change {id} (its opening, amendments, \
                             reviews, the deployments decided on it and their break-glass reviews) are all carried, \
                             as the change head the checkpoint signs proves, and so is every entry concerning \
                             its {s} subjects (their commit observations, CI runs, bindings and deployment requests), \
                             as the subject heads prove"
                        ),
                        (_, Some(k)) => outln!(
                            "completeness: the {k} entries concerning change {id} (its opening, amendments, \
                             reviews, the deployments decided on it and their break-glass reviews) are all carried, \
                             as the change head the checkpoint signs proves; facts of its subjects (CI runs, \
                             commit observations, other deployment requests) are proven complete only as far as \
                             its recorded decisions read them"
                        ),
                        (Some((start, _)), None) => outln!(
                            "completeness: every entry from the one that opened change {id} \
                             (entry {start}) to the checkpoint is carried, so none concerning it from its opening \
                             on was left out; facts recorded before its opening (CI runs and commit observations \
                             of its subjects) are proven complete only as far as its recorded decisions read them"
                        ),
                        (None, None) => eprintln!(
                            "warning: this change bundle does not show that it carries every entry concerning \
                             the change, since its checkpoint signs no change heads (a log written before them): \
                             no carried decision read its reviews, amendments and CI runs after \
                             its last carried deployment, nor its deployments of subjects it no longer binds \
                             (an earlier break-glass, say), so those could be left out (evidence-format \
                             §2.3); export it with --complete for one that does"
                        ),
                    }
                }
                if r.decisions_based > 0 {
                    outln!(
                        "decision bases: every entry the {} decision(s) recorded in entry format \
                         version 3 rest on is carried",
                        r.decisions_based
                    );
                }
                if r.decisions_based < r.decisions {
                    eprintln!(
                        "warning: {} of {} decision(s) were recorded before entry format version 3; \
                         the bundle cannot show that it carries every fact they rest on \
                         (ledger-format §4.4)",
                        r.decisions - r.decisions_based,
                        r.decisions
                    );
                }
                if r.period_unfinished {
                    eprintln!(
                        "warning: the log had not reached the end of the period at this checkpoint; the bundle covers the period only up to {} (export again after the period ends for all of it)",
                        crate::state::gov::fmt_nanos(r.as_of)
                    );
                }
            }
            Ok(())
        }
        Err(f) => {
            if a.json {
                outln!(
                    "{}",
                    json_line(
                        &serde_json::json!({"ok": false, "what": f.what, "reason": f.reason})
                    )
                );
            }
            Err(CliError::failed(format!(
                "FAILED: {}",
                printable(&f.to_string())
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{time_arg, whole};

    #[test]
    fn period_edges_keep_their_time_of_day_or_are_refused() {
        let at = |s: &str| time_arg("--from", s);
        let ns =
            |s: &str| i64::try_from(s.parse::<jiff::Timestamp>().unwrap().as_nanosecond()).unwrap();
        assert_eq!(at("2026-06-15").unwrap(), ns("2026-06-15T00:00:00Z"));
        assert!(
            at("2026-12-31T23:59:60Z")
                .unwrap_err()
                .message
                .contains("names a leap second")
        );
        assert_eq!(
            at("2026-12-31T23:59:59Z").unwrap(),
            ns("2026-12-31T23:59:59Z")
        );
        assert_eq!(
            at("2026-06-15T15:30:00Z").unwrap(),
            ns("2026-06-15T15:30:00Z")
        );
        assert_eq!(
            at("2026-06-15T15:30:00-04:00[America/New_York]").unwrap(),
            ns("2026-06-15T19:30:00Z")
        );
        // A time without an offset used to become midnight of its date.
        for s in [
            "2026-06-15T15:30:00",
            "2026-06-15T15:30:00[America/New_York]",
            "2026-06-15 15:30",
            "20260615",
            "2026-6-15",
        ] {
            let e = at(s).unwrap_err().message;
            assert!(
                e.starts_with(&format!(
                    "--from {s:?}: give an RFC 3339 time with its offset"
                )),
                "{s}: {e}"
            );
        }
    }

    #[test]
    fn a_stream_that_ends_short_is_an_error() {
        assert_eq!(whole(vec![1, 2, 3], Some(3)).unwrap(), [1, 2, 3]);
        let e = whole(vec![1, 2], Some(3)).unwrap_err().message;
        assert!(e.contains("after 2 of 3 bytes"), "{e}");
        let e = whole(Vec::new(), None).unwrap_err().message;
        assert!(e.contains("without sending the bundle"), "{e}");
    }

    #[test]
    fn period_filters_are_bounded_and_printable() {
        let check = |l: &[&str]| {
            crate::evidence::check_filters(
                "--env",
                &l.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
        };
        assert!(check(&["prod*", "staging"]).is_ok());
        assert_eq!(check(&["prod", ""]).unwrap_err(), "--env[1]: \"\" is empty");
        assert!(
            check(&["\u{1b}[31m"])
                .unwrap_err()
                .contains("control character")
        );
        let long = "a".repeat(257);
        assert!(
            check(&[long.as_str()])
                .unwrap_err()
                .contains("longer than 256 bytes")
        );
        let many = vec!["e"; 65];
        assert_eq!(check(&many).unwrap_err(), "--env: 65 patterns; at most 64");
    }
}
