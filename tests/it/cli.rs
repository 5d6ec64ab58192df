//! The `docket` binary as a user drives it: init, serve, keygen, principals,
//! append from JSON, get, proofs, checkpoints, and `verify --since` catching a
//! forked history signed with the same log key.

use std::path::Path;
use std::process::{Child, Command};

use crate::common::{BIN, copy_dir};

struct Served {
    child: Child,
    server: String,
    /// Lines the server prints on stdout after its banner.
    lines: std::sync::mpsc::Receiver<String>,
}

impl Served {
    /// Sends SIGHUP and waits for the server to say it reloaded.
    fn reload(&self) -> String {
        let sent = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        loop {
            let line = self
                .lines
                .recv_timeout(std::time::Duration::from_secs(60))
                .expect("the server said nothing after SIGHUP");
            if line.starts_with("reloaded: ") {
                return line;
            }
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(data: &Path) -> Served {
    let (child, addr, lines) = crate::common::spawn_serve_lines(data);
    Served {
        child,
        server: format!("https://{addr}"),
        lines,
    }
}

/// Runs the CLI against `data`; returns (success, stdout, stderr).
fn docket(data: &Path, server: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("DOCKET_DATA", data)
        .env("DOCKET_LOG", "warn");
    if let Some(s) = server {
        cmd.env("DOCKET_SERVER", s);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(r: (bool, String, String)) -> String {
    assert!(r.0, "command failed:\nstdout: {}\nstderr: {}", r.1, r.2);
    r.1
}

#[test]
fn cli_walkthrough_and_forked_history_detection() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let init = ok(docket(
        &data,
        None,
        &[
            "init",
            "--origin",
            "cli.test/log",
            "--listen",
            "127.0.0.1:0",
        ],
    ));
    assert!(init.contains("log verifier key"), "{init}");
    // A second init refuses to overwrite the log, with the usage exit code.
    let again = Command::new(BIN)
        .args(["init", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a Docket log"));

    // A reader that goes away (`| head`, `| grep -q`) does not panic the
    // CLI: output stops and the command exits with its own code.
    {
        let args = ["verify"];
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let closed = Command::new(BIN)
            .args(args)
            .env("DOCKET_DATA", &data)
            .env("DOCKET_LOG", "warn")
            .stdout(writer)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&closed.stderr);
        assert_eq!(closed.status.code(), Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }

    // Offline commands open only an existing log: a directory init never
    // made is refused and left as it was (sled would create a store).
    let plain_dir = dir.path().join("not-data");
    std::fs::create_dir(&plain_dir).unwrap();
    for args in [
        &["verify"][..],
        &["rebuild"][..],
        &["rebuild", "--replace"][..],
    ] {
        for target in [plain_dir.clone(), dir.path().join("absent/deep")] {
            let r = Command::new(BIN)
                .args(args)
                .env("DOCKET_DATA", &target)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&r.stderr);
            assert_eq!(r.status.code(), Some(64), "{args:?} {target:?}: {err}");
            assert!(
                err.contains("not a Docket data directory (no config.json)"),
                "{err}"
            );
        }
    }
    assert_eq!(std::fs::read_dir(&plain_dir).unwrap().count(), 0);
    assert!(!dir.path().join("absent").exists());

    // A log whose config.json was lost: serve (which would init) and the
    // offline commands say how to write it again, with the origin log.vkey
    // names, and never to remove a directory whose db/ may hold a log.
    let config = data.join("config.json");
    let saved = std::fs::read(&config).unwrap();
    std::fs::remove_file(&config).unwrap();
    for args in [&["serve", "--listen", "127.0.0.1:0"][..], &["verify"][..]] {
        let r = Command::new(BIN)
            .args(args)
            .env("DOCKET_DATA", &data)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{args:?}: {err}");
        assert!(
            err.contains("do not remove the directory")
                && err.contains("\"origin\": \"cli.test/log\""),
            "{args:?}: {err}"
        );
    }
    std::fs::write(&config, saved).unwrap();

    // serve refuses limits that would refuse every event or overflow, and
    // certificate files it cannot use, before it says it is serving.
    for (flag, v) in [
        ("--max-clock-skew-secs", "18446744073709551615"),
        ("--max-event-age-secs", "0"),
        ("--max-payload-bytes", "0"),
    ] {
        let r = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", flag, v])
            .env("DOCKET_DATA", &data)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(64), "{flag}: {err}");
        assert!(
            err.contains(&format!("{flag} {v}: must be between")),
            "{err}"
        );
        assert!(!String::from_utf8_lossy(&r.stdout).contains("docket serving"));
    }
    let broken = dir.path().join("broken-tls");
    copy_dir(&data, &broken);
    std::fs::write(broken.join("tls/server.pem"), b"").unwrap();
    let r = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("DOCKET_DATA", &broken)
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr),
    );
    assert!(
        !r.status.success() && !out.contains("docket serving"),
        "{out}\n{err}"
    );
    assert!(err.contains("server.pem: no certificate found"), "{err}");

    // An origin that cannot name a signed-note key is refused before any file is written.
    let bad_dir = dir.path().join("bad");
    let bad = docket(&bad_dir, None, &["init", "--origin", "a+b"]);
    assert!(!bad.0 && bad.2.contains("--origin"), "{}", bad.2);
    assert!(!bad_dir.exists());

    // Keep a copy of the data dir at this point: an insider's old backup.
    let fork = dir.path().join("fork");
    copy_dir(&data, &fork);

    // A CI runner's certificate, allowed to append and read checkpoints.
    let issued = ok(docket(
        &data,
        None,
        &[
            "cert",
            "issue",
            "--cn",
            "ci-runner",
            "--allow",
            "Append",
            "--allow",
            "GetCheckpoint",
        ],
    ));
    assert!(issued.contains("\"CN=ci-runner\""), "{issued}");
    let bad_grant = docket(
        &data,
        None,
        &["cert", "issue", "--cn", "x", "--allow", "Apend"],
    );
    assert!(
        !bad_grant.0 && bad_grant.2.contains("unknown method \"Apend\""),
        "{}",
        bad_grant.2
    );

    let s = serve(&data);
    let srv = Some(s.server.as_str());
    // The server runs without transparent huge pages (src/main.rs): the
    // kernel reports the per-process switch in /proc/PID/status.
    #[cfg(target_os = "linux")]
    {
        let status = std::fs::read_to_string(format!("/proc/{}/status", s.child.id())).unwrap();
        let thp = status.lines().find(|l| l.starts_with("THP_enabled:"));
        assert_eq!(
            thp.map(|l| l.split_whitespace().nth(1)),
            Some(Some("0")),
            "{status}"
        );
    }
    let clients = data.join("tls/clients");
    let as_ci = |args: &[&str]| {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("DOCKET_DATA", &data)
            .env("DOCKET_SERVER", &s.server)
            .env("DOCKET_CERT", clients.join("ci-runner.pem"))
            .env("DOCKET_CERT_KEY", clients.join("ci-runner.key"));
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let ci_append = ok(as_ci(&[
        "append",
        "--subject",
        "ci/build",
        "--text",
        "build 7 passed",
    ]));
    assert!(
        ci_append.contains("\"verified_offline\": true"),
        "{ci_append}"
    );
    // The running server holds the store: an offline command says so.
    let busy = docket(&data, None, &["verify"]);
    assert!(
        !busy.0
            && busy
                .2
                .contains("in use by another process (a running docket serve?)"),
        "{}",
        busy.2
    );
    let denied = as_ci(&["get", "1"]);
    assert!(
        !denied.0 && denied.2.contains("PermissionDenied"),
        "{}",
        denied.2
    );
    // An http:// URL would drop TLS (tonic speaks it only to https://):
    // refused before anything is sent, unless asked for by name.
    let plain_url = s.server.replacen("https://", "http://", 1);
    let plain = Command::new(BIN)
        .args(["append", "--subject", "ci/build", "--text", "x"])
        .env("DOCKET_DATA", &data)
        .env("DOCKET_SERVER", &plain_url)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&plain.stderr);
    assert_eq!(plain.status.code(), Some(64), "{err}");
    assert!(
        err.contains(&format!(
            "--server {plain_url}: http:// would talk to the server without TLS"
        )),
        "{err}"
    );
    // A CA file that is not one is a usage error naming it, not a "retry".
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, b"not a certificate").unwrap();
    let bad_ca = docket(&data, srv, &["checkpoint", "--ca", junk.to_str().unwrap()]);
    assert!(
        !bad_ca.0
            && bad_ca.2.contains(&format!(
                "TLS files: {}: no certificate found",
                junk.display()
            )),
        "{}",
        bad_ca.2
    );
    let mixed = docket(
        &data,
        srv,
        &[
            "append",
            "--subject",
            "x",
            "--text",
            "x",
            "--dangerous-plaintext",
        ],
    );
    assert!(
        !mixed.0
            && mixed
                .2
                .contains("--dangerous-plaintext talks without TLS, so the URL must be http://"),
        "{}",
        mixed.2
    );
    let alice = dir.path().join("alice.key");
    ok(docket(
        &data,
        None,
        &["keygen", "--out", alice.to_str().unwrap()],
    ));
    let alice_pub = format!("{}.pub", alice.display());
    let added = ok(docket(
        &data,
        srv,
        &[
            "principal",
            "add",
            "--id",
            "alice",
            "--kind",
            "human",
            "--name",
            "Alice",
            "--role",
            "dev",
            "--key-file",
            &alice_pub,
        ],
    ));
    let receipt: serde_json::Value = serde_json::from_str(&added).unwrap();
    assert_eq!(receipt["index"], 2);
    assert_eq!(receipt["verified_offline"], true);

    let json = dir.path().join("event.json");
    std::fs::write(&json, r#"{"event_id": "deploy-42", "annotation": {"subject": "repo/payments", "kind": "deploy", "text": "v1.2.3 to staging", "attributes": {"ticket": "OPS-12"}}}"#).unwrap();
    let r: serde_json::Value = serde_json::from_str(&ok(docket(
        &data,
        srv,
        &[
            "append",
            "--json",
            json.to_str().unwrap(),
            "--key",
            alice.to_str().unwrap(),
            "--signer",
            "alice",
        ],
    )))
    .unwrap();
    assert_eq!(r["index"], 3);
    // Unknown JSON fields are refused before anything is sent.
    std::fs::write(
        &json,
        r#"{"annotation": {"subject": "x"}, "colour": "red"}"#,
    )
    .unwrap();
    let bad = docket(&data, srv, &["append", "--json", json.to_str().unwrap()]);
    assert!(
        !bad.0 && bad.2.contains("unknown field `colour`"),
        "{}",
        bad.2
    );

    let got: serde_json::Value =
        serde_json::from_str(&ok(docket(&data, srv, &["get", "3"]))).unwrap();
    assert_eq!(got["event_id"], "deploy-42");
    assert_eq!(got["signer"], "alice");
    assert_eq!(got["transport_identity"], "CN=docket-admin");
    // Genesis and alice's registration precede it.
    assert_eq!(got["format_version"], 3);
    assert_eq!(got["history_count"], 2, "{got}");
    // An annotation is decided on nothing: its decision basis is empty.
    assert_eq!(got["basis"], serde_json::json!({}), "{got}");

    let shown: serde_json::Value = serde_json::from_str(&ok(docket(
        &data,
        srv,
        &["principal", "show", "--id", "alice"],
    )))
    .unwrap();
    assert_eq!(shown["roles"], serde_json::json!(["dev"]));

    let inc: serde_json::Value =
        serde_json::from_str(&ok(docket(&data, srv, &["proof", "inclusion", "1"]))).unwrap();
    assert_eq!(inc["verified"], true);

    let saved = dir.path().join("cp.txt");
    let note = ok(docket(
        &data,
        srv,
        &["checkpoint", "--out", saved.to_str().unwrap()],
    ));
    assert!(note.starts_with("cli.test/log\n4\n"), "{note}");
    ok(docket(
        &data,
        srv,
        &["append", "--subject", "repo/x", "--text", "later"],
    ));
    let consistent = ok(docket(
        &data,
        srv,
        &["verify", "--since", saved.to_str().unwrap()],
    ));
    assert!(
        consistent
            .contains("consistent: saved tree size 4 is a prefix of the server's tree size 5"),
        "{consistent}"
    );

    let tail = ok(docket(&data, srv, &["tail", "--from", "0"]));
    let indexes: Vec<u64> = tail
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["index"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(indexes, vec![0, 1, 2, 3, 4]);
    cert_lifecycle(&data, &s);
    drop(s);

    // The insider restores the old backup and writes a different history,
    // signed with the same log key. The checkpoint an auditor saved exposes it.
    let forked = serve(&fork);
    let fsrv = Some(forked.server.as_str());
    for text in ["rewritten-1", "rewritten-2", "rewritten-3"] {
        ok(docket(
            &fork,
            fsrv,
            &["append", "--subject", "repo/x", "--text", text],
        ));
    }
    let (success, out, err) = docket(&data, fsrv, &["verify", "--since", saved.to_str().unwrap()]);
    assert!(!success, "{out}");
    assert!(err.contains("INCONSISTENT"), "{err}");
    drop(forked);

    // Offline verification and rebuild of the original log.
    let v = ok(docket(&data, None, &["verify"]));
    assert!(v.starts_with("OK: 5 entries"), "{v}");
    let rb = ok(docket(&data, None, &["rebuild"]));
    assert!(rb.contains("identical"), "{rb}");
}

/// `init --co-admin` names a second administrator at genesis, so from the
/// first registration on, an identity change one of them signs waits for the
/// other; malformed or repeated co-admins are refused before anything is
/// written.
#[test]
fn init_with_a_co_admin_makes_identity_changes_need_both() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = |name: &str| dir.path().join(format!("{name}.key"));
    for name in ["root2", "alice"] {
        ok(docket(
            &data,
            None,
            &["keygen", "--out", key(name).to_str().unwrap()],
        ));
    }
    let pub_of = |name: &str| format!("{}.pub", key(name).display());
    for (arg, says) in [
        ("root2".to_owned(), "expected ID=PUBLIC_KEY_FILE"),
        (
            format!("admin={}", pub_of("root2")),
            "administrator admin is named twice",
        ),
        (format!("Root2={}", pub_of("root2")), "--co-admin"),
    ] {
        let bad = docket(&data, None, &["init", "--co-admin", &arg]);
        assert!(!bad.0 && bad.2.contains(says), "{arg}: {}", bad.2);
        assert!(
            !data.exists(),
            "{arg}: a refused init wrote {}",
            data.display()
        );
    }
    // What only the log would refuse of the genesis event (a policy file
    // with CRLF line endings) and a host no certificate can name are
    // refused before the first file is written too.
    let crlf = dir.path().join("crlf.toml");
    std::fs::write(&crlf, "version = 1\r\n").unwrap();
    for (args, says) in [
        (
            vec!["init", "--policy", crlf.to_str().unwrap()],
            "--policy: contains the control character U+000D at byte 11 (a carriage return: use LF line endings)",
        ),
        (
            vec!["init", "--host", "d\u{f6}cket.example"],
            "--host: \"d\u{f6}cket.example\" is not a DNS name or IP address",
        ),
    ] {
        let bad = docket(&data, None, &args);
        assert!(!bad.0 && bad.2.contains(says), "{args:?}: {}", bad.2);
        assert!(!data.exists(), "{args:?}: a refused init wrote files");
    }
    let co = format!("root2={}", pub_of("root2"));
    ok(docket(
        &data,
        None,
        &["init", "--listen", "127.0.0.1:0", "--co-admin", &co],
    ));
    let s = serve(&data);
    let srv = Some(s.server.as_str());
    let (added, receipt, note) = docket(
        &data,
        srv,
        &[
            "principal",
            "add",
            "--id",
            "alice",
            "--role",
            "dev",
            "--key-file",
            &pub_of("alice"),
        ],
    );
    assert!(added, "{note}");
    let entry = serde_json::from_str::<serde_json::Value>(&receipt).unwrap()["index"]
        .as_u64()
        .unwrap();
    assert_eq!(entry, 1);
    assert!(note.contains("not yet in effect"), "{note}");
    let show = ["principal", "show", "--id", "alice"];
    let missing = docket(&data, srv, &show);
    assert!(
        !missing.0 && missing.2.contains("no principal \"alice\""),
        "{}",
        missing.2
    );
    let root2_key = key("root2");
    ok(docket(
        &data,
        srv,
        &[
            "principal",
            "approve",
            "1",
            "--signer",
            "root2",
            "--key",
            root2_key.to_str().unwrap(),
        ],
    ));
    let shown: serde_json::Value = serde_json::from_str(&ok(docket(&data, srv, &show))).unwrap();
    assert_eq!(shown["registered_at_index"], 2, "{shown}");
}

/// The CI runner's certificate revoked (a leaked key), the server told by
/// SIGHUP, the runner refused; then renewed with --replace and accepted.
fn cert_lifecycle(data: &Path, s: &Served) {
    // A read, so the log the rest of the walkthrough checks stays as it is.
    let call = ["checkpoint"];
    let code = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .env("DOCKET_DATA", data)
            .env("DOCKET_SERVER", &s.server)
            .env("DOCKET_CERT", data.join("tls/clients/ci-runner.pem"))
            .env("DOCKET_CERT_KEY", data.join("tls/clients/ci-runner.key"))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let listed = ok(docket(data, None, &["cert", "list"]));
    assert!(
        listed.contains("CN=ci-runner") && listed.contains(" valid "),
        "{listed}"
    );
    let pem = data.join("tls/clients/ci-runner.pem");
    let bad_reason = docket(
        data,
        None,
        &[
            "cert",
            "revoke",
            "--cert",
            pem.to_str().unwrap(),
            "--reason",
            "lost",
        ],
    );
    assert!(
        !bad_reason.0
            && bad_reason
                .2
                .contains("\"lost\" is not one of unspecified, key-compromise"),
        "{}",
        bad_reason.2
    );
    let revoked = ok(docket(
        data,
        None,
        &[
            "cert",
            "revoke",
            "--cert",
            pem.to_str().unwrap(),
            "--reason",
            "key-compromise",
        ],
    ));
    assert!(
        revoked.contains("revoked CN=ci-runner (serial ")
            && revoked.contains("reason key-compromise"),
        "{revoked}"
    );
    let again = ok(docket(
        data,
        None,
        &["cert", "revoke", "--cert", pem.to_str().unwrap()],
    ));
    assert!(
        again.contains("already revoked; nothing changed"),
        "{again}"
    );
    // Until the server reloads, the revocation is only on disk.
    let (c, err) = code(&call);
    assert_eq!(c, Some(0), "{err}");
    let reloaded = s.reload();
    assert!(
        reloaded.contains("1 client certificates revoked"),
        "{reloaded}"
    );
    // A new connection is refused at the handshake (the CRL); the CLI
    // says so with exit 77, not 69 ("retry").
    let (c, err) = code(&call);
    assert_eq!(c, Some(77), "{err}");
    assert!(
        err.contains("the server refused the client certificate")
            && err.contains("CertificateRevoked"),
        "{err}"
    );
    let listed = ok(docket(data, None, &["cert", "list"]));
    assert!(
        listed.contains("REVOKED") && listed.contains("(key-compromise)"),
        "{listed}"
    );

    // Renewal: refused without --replace, then a fresh certificate.
    let exists = docket(data, None, &["cert", "issue", "--cn", "ci-runner"]);
    assert!(
        !exists.0
            && exists
                .2
                .contains("already exists; give --replace to renew it"),
        "{}",
        exists.2
    );
    let bad_days = docket(
        data,
        None,
        &[
            "cert",
            "issue",
            "--cn",
            "ci-runner",
            "--replace",
            "--days",
            "0",
        ],
    );
    assert!(
        !bad_days.0 && bad_days.2.contains("--days: 0 must be between 1 and 3650"),
        "{}",
        bad_days.2
    );
    let renewed = ok(docket(
        data,
        None,
        &[
            "cert",
            "issue",
            "--cn",
            "ci-runner",
            "--replace",
            "--days",
            "7",
        ],
    ));
    // The one it replaces was revoked above already, and the identity keeps
    // its grant.
    assert!(
        renewed.contains("the certificate it replaces (serial ")
            && renewed.contains("was revoked already")
            && !renewed.contains("may call nothing"),
        "{renewed}"
    );
    s.reload();
    let (c, err) = code(&call);
    assert_eq!(c, Some(0), "{err}");
}

/// An offline command killed part-way leaves its scratch copy of the store
/// behind (a whole store). The next offline command removes such copies,
/// next to the data and in the temporary directory, but not one another
/// command still holds, nor a directory that is not a scratch copy.
/// (Directories of other users, in a shared temporary directory, are not
/// looked at; a test cannot make one without root.)
#[test]
fn scratch_copies_left_by_a_killed_command_are_removed_by_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    ok(docket(&data, None, &["init", "--origin", "cli.test/log"]));
    let scratch = |place: &Path, name: &str, lock: bool| {
        let d = place.join(name);
        std::fs::create_dir_all(d.join("db")).unwrap();
        std::fs::write(d.join("db/conf"), b"copied").unwrap();
        if lock {
            std::fs::write(d.join("in-use"), b"").unwrap();
        }
        d
    };
    // Left by killed commands: their lock files are held by no one.
    let left_here = scratch(&data, ".docket-scratch-killed", true);
    let left_tmp = scratch(&tmp, "docket-scratch-killed", true);
    // Held by a command still running (this process stands in for it).
    let held = scratch(&data, ".docket-scratch-running", true);
    let holder = std::fs::File::open(held.join("in-use")).unwrap();
    holder.lock().unwrap();
    // Not a scratch copy (no lock file), or not Docket's name.
    let bare = scratch(&data, ".docket-scratch-bare", false);
    let other = scratch(&tmp, "other-killed", true);
    // An `in-use` that is not a regular file (opening a FIFO would block
    // the command for ever) is not a scratch copy either.
    let fifo = scratch(&tmp, "docket-scratch-fifo", false);
    let made = Command::new("mkfifo")
        .arg(fifo.join("in-use"))
        .status()
        .unwrap();
    assert!(made.success());
    let out = Command::new(BIN)
        .arg("verify")
        .env("DOCKET_DATA", &data)
        .env("DOCKET_LOG", "warn")
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    for gone in [&left_here, &left_tmp] {
        assert!(!gone.exists(), "{} was left: {err}", gone.display());
        assert!(
            err.contains(&gone.display().to_string())
                && err.contains("removed a scratch copy of a store left behind"),
            "{err}"
        );
    }
    for kept in [&held, &bare, &other, &fifo] {
        assert!(
            kept.join("db/conf").exists(),
            "{} was removed",
            kept.display()
        );
    }
    // The command's own copy is gone when it ends; only the three remain.
    let mut names: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .chain(std::fs::read_dir(&tmp).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("scratch") || n.starts_with("other"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ".docket-scratch-bare",
            ".docket-scratch-running",
            "docket-scratch-fifo",
            "other-killed"
        ]
    );
    drop(holder);
}
