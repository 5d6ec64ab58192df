//! The load generators run end to end on small workloads, so the commands
//! that produce docs/performance.md keep working and keep measuring what it
//! says they measure (the allow/deny mix, every phase, a verified bundle).
//! No figure is asserted beyond "work was done": speed lives in benchmarks.

use std::process::Command;

use crate::common::BIN;

fn run(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .env("DOCKET_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?} failed:\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The table row whose first cell is `name` (an open-loop row's followed by
/// its pacer's lateness), as its cells.
fn row<'a>(out: &'a str, name: &str) -> Vec<&'a str> {
    let line = out
        .lines()
        .find(|l| {
            l.starts_with(&format!("| {name} |"))
                || l.starts_with(&format!("| {name} (pacer's p99 lateness "))
        })
        .unwrap_or_else(|| panic!("no row {name:?} in:\n{out}"));
    line.trim_matches('|').split('|').map(str::trim).collect()
}

fn number(cell: &str) -> f64 {
    cell.replace(',', "")
        .parse()
        .unwrap_or_else(|_| panic!("{cell:?} is not a number"))
}

#[test]
fn bench_authorize_runs_every_phase_on_the_stated_workload() {
    let out = run(&[
        "bench-authorize",
        "--changes",
        "40",
        "--reviews",
        "4",
        "--ops",
        "400",
        "--concurrency",
        "1,4",
        "--open-rates",
        "400",
    ]);
    assert!(
        out.contains("state holds 40 changes and 160 reviews"),
        "{out}"
    );
    // Four reviews: the author's and the requester's are not counted, the
    // third (a developer) and fourth (security) are; every other change was
    // deployed to staging, so half pass the promotion rule.
    assert!(
        out.contains("decisions on the first 40 changes: 20 allow, 20 deny"),
        "{out}"
    );
    for (name, ops) in [
        ("Authorize in process, 1 task(s)", 100.0),
        ("Authorize in process, 4 task(s)", 400.0),
        ("empty RPC (Ping) over mTLS gRPC, 4 client(s)", 400.0),
        (
            "Authorize over mTLS gRPC, 1 client(s), one connection",
            100.0,
        ),
        (
            "Authorize over mTLS gRPC, 4 client(s), one connection",
            400.0,
        ),
        (
            "Authorize over mTLS gRPC, 4 client(s), 4 connections",
            400.0,
        ),
        (
            "Authorize over mTLS gRPC, 4 client(s), 4 connections (lean h2 client)",
            400.0,
        ),
        // 64 open-loop clients, 400 / 64 = 6 requests each.
        (
            "Authorize over mTLS gRPC, 64 clients, one connection, open loop at 400/s offered",
            384.0,
        ),
        (
            "Authorize over mTLS gRPC, 64 clients, 4 connections, open loop at 400/s offered",
            384.0,
        ),
        (
            "Authorize over mTLS gRPC, 64 clients, 4 connections (lean h2 client), open loop at 400/s offered",
            384.0,
        ),
    ] {
        let cells = row(&out, name);
        if name.contains("open loop") {
            let late = cells[0]
                .strip_prefix(name)
                .and_then(|l| l.strip_prefix(" (pacer's p99 lateness "))
                .and_then(|l| l.strip_suffix(" ms)"))
                .unwrap_or_else(|| panic!("{name}: no pacer lateness in {:?}", cells[0]));
            assert!(number(late) >= 0.0, "{name}");
        }
        assert_eq!(number(cells[1]), ops, "{name}");
        assert!(number(cells[2]) > 0.0, "{name}: no rate");
        assert!(number(cells[3]) <= number(cells[4]), "{name}: p50 > p99");
    }
}

#[test]
fn bench_evidence_exports_and_verifies_both_bundle_kinds() {
    let keep = tempfile::tempdir().unwrap();
    let keep_s = keep.path().display().to_string();
    let out = run(&[
        "bench-evidence",
        "--changes",
        "30",
        "--runs",
        "3",
        "--period-runs",
        "1",
        "--keep",
        &keep_s,
    ]);
    let entries: f64 = out
        .split("log of ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .map(number)
        .unwrap_or_else(|| panic!("no log size in:\n{out}"));
    assert!(entries > 30.0 * 13.0, "{out}");
    let period = row(&out, "period, whole log (median of 1)");
    assert_eq!(
        number(period[1]),
        entries,
        "the period bundle holds the whole log"
    );
    assert!(number(period[5]) > 0.0);
    let one = row(&out, "one change (median of 3)");
    assert!(number(one[1]) > 0.0 && number(one[1]) < entries);
    assert!(number(one[3]) > 0.0 && number(one[4]) > 0.0);
    // The latest change was opened before every review of the log, so its
    // complete bundle carries those too.
    let complete = row(&out, "latest change, `--complete` (median of 1)");
    assert!(number(complete[1]) > 30.0 * 10.0 && number(complete[1]) <= entries);
    assert!(number(complete[3]) > 0.0 && number(complete[4]) > 0.0);
    let verify = row(&out, "(comparison) `docket verify` of the same log");
    assert_eq!(number(verify[1]), entries);
    // --keep leaves the period bundle, its key and the log it came from,
    // which `docket verify` and `docket evidence verify` accept.
    for args in [
        vec![
            "verify".to_string(),
            "--data".into(),
            format!("{keep_s}/data"),
        ],
        vec![
            "evidence".to_string(),
            "verify".into(),
            format!("{keep_s}/period.tar"),
            "--log-key".into(),
            format!("{keep_s}/log.vkey"),
        ],
    ] {
        let o = Command::new(BIN)
            .args(&args)
            .env("DOCKET_LOG", "warn")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{args:?}: {text}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(text.contains(&format!("{entries}")), "{args:?}: {text}");
    }
    // A second run refuses to overwrite the kept log.
    let o = Command::new(BIN)
        .args(["bench-evidence", "--changes", "2", "--keep", &keep_s])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
}
