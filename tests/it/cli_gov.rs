//! Governance through the `docket` binary against a real mTLS server:
//! `authorize` in words (no --json), `authorize --commit` for a change that
//! binds a commit, `reject` and what it does to later decisions and to
//! `change show`, and a principal without `change_roles` trying to grant a
//! role, and a second identity administrator approving an identity change.
//! Commits are real git commits; segregation of duties needs them ingested.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::common::{CliOut, TestServer, digest, server};
use crate::governance::{commit, repo, write_openssh_key};

/// Two approvals from dev/security for prod; staging needs nothing. Passes
/// `parse_new`: both approver roles hold `approve`, "staging" is not
/// shadowed by "prod", and `[policy_changes]` is left to its default.
const POLICY: &str = r#"version = 1

[permissions]
register_principals = ["admin"]
change_roles = ["admin"]
open_change = ["dev", "ci"]
approve = ["dev", "security"]
report = ["ci"]

[[rule]]
name = "prod"
description = "two approvals from people who did not write or request it"
match.environments = ["prod"]
approvals = 2
approver_roles = ["dev", "security"]

[[rule]]
name = "staging"
match.environments = ["staging"]
"#;

/// Principals' key files, under the server's temporary directory.
struct Team {
    dir: PathBuf,
}

impl Team {
    fn new(s: &TestServer) -> Team {
        let dir = s.path().join("team");
        std::fs::create_dir_all(&dir).unwrap();
        Team { dir }
    }

    fn key(&self, id: &str) -> String {
        self.dir.join(format!("{id}.key")).display().to_string()
    }

    /// `docket keygen` then `docket principal add` (signed by the admin).
    async fn add(&self, s: &TestServer, id: &str, kind: &str, role: &str, email: Option<&str>) {
        s.add_principal(Path::new(&self.key(id)), id, kind, role, email)
            .await;
    }

    /// Runs the binary signing as `id` with its own key.
    async fn run_as(&self, s: &TestServer, id: &str, args: &[&str]) -> CliOut {
        let key = self.key(id);
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--key", key.as_str(), "--signer", id]);
        s.cli(&all).await
    }

    /// Like [`Team::run_as`]; the command must succeed. Returns stdout.
    async fn ok_as(&self, s: &TestServer, id: &str, args: &[&str]) -> String {
        let out = self.run_as(s, id, args).await;
        assert_eq!(
            out.code,
            0,
            "docket {} as {id}: {}{}",
            args.join(" "),
            out.stdout,
            out.stderr
        );
        out.stdout
    }

    /// `docket approve CHANGE` / `docket reject CHANGE` as `id`; returns the
    /// entry index the review was recorded at.
    async fn review(
        &self,
        s: &TestServer,
        id: &str,
        verb: &str,
        change: &str,
        comment: &str,
    ) -> u64 {
        let mut args = vec![verb, change];
        if !comment.is_empty() {
            args.extend(["--comment", comment]);
        }
        let out = self.ok_as(s, id, &args).await;
        let past = if verb == "approve" {
            "approved"
        } else {
            "rejected"
        };
        let prefix = format!("{id} {past} change {change} at entry ");
        let rest = out
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("{verb} by {id} printed {out:?}; expected {prefix:?}..."));
        rest.split(' ').next().unwrap().parse().unwrap()
    }
}

/// The standard team: alice and bob (dev), carol (security), each with the
/// e-mail their commits carry, and a CI identity that opens changes and
/// records commits.
async fn team(s: &TestServer) -> Team {
    let t = Team::new(s);
    t.add(s, "alice", "human", "dev", Some("alice@example.com"))
        .await;
    t.add(s, "bob", "human", "dev", Some("bob@example.com"))
        .await;
    t.add(s, "carol", "human", "security", Some("carol@example.com"))
        .await;
    t.add(s, "ci", "ci", "ci", None).await;
    t
}

/// The roles in `docket principal show` output.
fn roles(out: &str) -> Value {
    let p: Value = serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"));
    p["roles"].clone()
}

/// `docket authorize` (plain text unless `json`) for a deploy to prod of
/// `subject` (`--digest` or `--commit`), asked for the CI identity.
async fn authorize(s: &TestServer, flag: &str, subject: &str, json: bool) -> CliOut {
    let mut args = vec!["authorize", "--env", "prod", flag, subject, "--actor", "ci"];
    if json {
        args.push("--json");
    }
    s.cli(&args).await
}

fn has_line(out: &CliOut, line: &str) {
    assert!(
        out.stdout.lines().any(|l| l == line),
        "no line {line:?} in stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
}

/// `docket authorize` without --json prints the verdict, the rule, the
/// policy version, the change, each reason and each counted and uncounted
/// approval; it exits 1 on deny (repeating the first reason on stderr) and
/// 0 on allow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_prints_the_decision_in_words() {
    let s = server().with_policy(POLICY).run().await;
    let t = team(&s).await;

    // Alice writes the code; CI records the commit and opens the change.
    let r = repo(&s.path());
    let c1 = commit(&r, "Alice", "alice@example.com", None, "app.txt", "feature");
    let repo_s = r.display().to_string();
    t.ok_as(
        &s,
        "ci",
        &["git", "ingest", "--repo", &repo_s, "--ref", "HEAD"],
    )
    .await;
    let d = digest("image-text");
    t.ok_as(
        &s,
        "ci",
        &[
            "change", "open", "--id", "CHG-1", "--commit", &c1, "--digest", &d, "--env", "prod",
        ],
    )
    .await;

    // Alice (the author) and bob approve: one of two counts.
    let a = t.review(&s, "alice", "approve", "CHG-1", "").await;
    let b = t.review(&s, "bob", "approve", "CHG-1", "lgtm").await;
    let out = authorize(&s, "--digest", &d, false).await;
    assert_eq!(out.code, 1, "{out:?}");
    has_line(
        &out,
        &format!("DENY deploy {d} to prod: rule \"prod\", policy version 1"),
    );
    assert!(
        out.stdout.starts_with("DENY deploy "),
        "the verdict comes first: {out:?}"
    );
    has_line(&out, "  change CHG-1 (revision 1)");
    has_line(
        &out,
        "  - needs 2 approvals from distinct people; 1 counted",
    );
    has_line(&out, &format!("  counted:     bob (dev) [entry {b}]"));
    has_line(
        &out,
        &format!(
            "  not counted: alice — alice is the author and committer of commit {} [entry {a}]",
            &c1[..12]
        ),
    );
    assert_eq!(out.stdout.lines().count(), 5, "{out:?}");
    assert!(
        out.stderr
            .contains("error: denied: needs 2 approvals from distinct people; 1 counted"),
        "{out:?}"
    );

    // Carol (security) approves: allowed, both counted approvers listed.
    let c = t.review(&s, "carol", "approve", "CHG-1", "").await;
    let out = authorize(&s, "--digest", &d, false).await;
    assert_eq!(out.code, 0, "{out:?}");
    has_line(
        &out,
        &format!("ALLOW deploy {d} to prod: rule \"prod\", policy version 1"),
    );
    has_line(&out, "  change CHG-1 (revision 1)");
    has_line(&out, "  - rule \"prod\" is satisfied");
    has_line(&out, &format!("  counted:     bob (dev) [entry {b}]"));
    has_line(
        &out,
        &format!("  counted:     carol (security) [entry {c}]"),
    );
    has_line(
        &out,
        &format!(
            "  not counted: alice — alice is the author and committer of commit {} [entry {a}]",
            &c1[..12]
        ),
    );
    // Authorize only asks: nothing is recorded.
    assert!(!out.stdout.contains("recorded at entry"), "{out:?}");
    assert!(!out.stderr.contains("denied"), "{out:?}");
}

/// A change that binds a commit (no digest) is found by `authorize --commit`
/// and decided by the same rules: the commit must have been observed, its
/// author does not count, two others must approve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_by_commit_follows_the_same_rules() {
    let s = server().with_policy(POLICY).run().await;
    let t = team(&s).await;
    let r = repo(&s.path());
    let c = commit(
        &r,
        "Alice",
        "alice@example.com",
        None,
        "svc.txt",
        "retry once",
    );
    t.ok_as(
        &s,
        "ci",
        &[
            "change", "open", "--id", "CHG-2", "--commit", &c, "--env", "prod", "--title", "retry",
        ],
    )
    .await;
    let a = t.review(&s, "alice", "approve", "CHG-2", "").await;
    let b = t.review(&s, "bob", "approve", "CHG-2", "").await;

    // Not yet observed: the authors are unknown, so two approvals are not
    // enough (alice still counts, as nobody knows she wrote it).
    let out = authorize(&s, "--commit", &c, true).await;
    assert_eq!(out.code, 1, "{out:?}");
    let dec = out.json();
    assert_eq!(dec["verdict"], "deny", "{dec:#}");
    assert_eq!(dec["rule"], "prod", "{dec:#}");
    assert_eq!(dec["change_id"], "CHG-2", "{dec:#}");
    assert_eq!(dec["change_revision"], 1, "{dec:#}");
    assert_eq!(
        dec["reasons"],
        json!([format!(
            "commit {} has not been observed (run `docket git ingest`), so its author is unknown",
            &c[..12]
        )]),
        "{dec:#}"
    );
    assert_eq!(dec["counted"][0]["approver"], "alice", "{dec:#}");
    assert_eq!(dec["counted"][1]["approver"], "bob", "{dec:#}");

    // Observed: alice is its author and no longer counts.
    let repo_s = r.display().to_string();
    t.ok_as(
        &s,
        "ci",
        &["git", "ingest", "--repo", &repo_s, "--ref", "HEAD"],
    )
    .await;
    let out = authorize(&s, "--commit", &c, true).await;
    assert_eq!(out.code, 1, "{out:?}");
    let dec = out.json();
    assert_eq!(dec["change_id"], "CHG-2", "{dec:#}");
    assert_eq!(
        dec["reasons"],
        json!(["needs 2 approvals from distinct people; 1 counted"]),
        "{dec:#}"
    );
    assert_eq!(
        dec["not_counted"],
        json!([{
            "approver": "alice",
            "reason": format!("alice is the author and committer of commit {}", &c[..12]),
            "index": a,
        }]),
        "{dec:#}"
    );
    assert_eq!(
        dec["counted"],
        json!([{"approver": "bob", "roles": "dev", "index": b}]),
        "{dec:#}"
    );

    // A second person who did not write it: allowed, naming the change.
    t.review(&s, "carol", "approve", "CHG-2", "").await;
    let out = authorize(&s, "--commit", &c, true).await;
    assert_eq!(out.code, 0, "{out:?}");
    let dec = out.json();
    assert_eq!(dec["verdict"], "allow", "{dec:#}");
    assert_eq!(dec["rule"], "prod", "{dec:#}");
    assert_eq!(dec["policy_version"], 1, "{dec:#}");
    assert_eq!(dec["change_id"], "CHG-2", "{dec:#}");
    assert_eq!(dec["change_revision"], 1, "{dec:#}");
    assert_eq!(
        dec["reasons"],
        json!(["rule \"prod\" is satisfied"]),
        "{dec:#}"
    );
    assert_eq!(dec["counted"][0]["approver"], "bob", "{dec:#}");
    assert_eq!(dec["counted"][1]["approver"], "carol", "{dec:#}");
    assert_eq!(dec["recorded"], false, "{dec:#}");

    // A commit no change binds: denied, and told to open one.
    let other = "0123456789abcdef0123456789abcdef01234567";
    let out = authorize(&s, "--commit", other, true).await;
    assert_eq!(out.code, 1, "{out:?}");
    let dec = out.json();
    assert_eq!(dec["change_id"], "", "{dec:#}");
    assert_eq!(
        dec["reasons"],
        json!([format!(
            "no change binds {other} for prod; open a change for these subjects"
        )]),
        "{dec:#}"
    );
}

/// `docket reject` records a rejection: later decisions deny naming who
/// rejected which revision at which entry and why, `change show` lists it
/// as a rejection, and the reviewer's later approval supersedes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_denies_until_superseded() {
    let s = server().with_policy(POLICY).run().await;
    let t = team(&s).await;
    let d = digest("image-reject");
    t.ok_as(
        &s,
        "ci",
        &[
            "change", "open", "--id", "CHG-3", "--digest", &d, "--env", "prod",
        ],
    )
    .await;
    let b = t.review(&s, "bob", "approve", "CHG-3", "").await;
    let out = t
        .ok_as(
            &s,
            "carol",
            &["reject", "CHG-3", "--comment", "needs a load test"],
        )
        .await;
    let prefix = "carol rejected change CHG-3 at entry ";
    assert!(out.starts_with(prefix), "{out:?}");
    let rejected: u64 = out[prefix.len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(out.contains(&format!("(seen: {d})")), "{out:?}");

    let out = authorize(&s, "--digest", &d, true).await;
    assert_eq!(out.code, 1, "{out:?}");
    let dec = out.json();
    assert_eq!(dec["change_id"], "CHG-3", "{dec:#}");
    assert_eq!(
        dec["reasons"],
        json!([
            format!(
                "carol rejected revision 1 of change CHG-3 (entry {rejected}): needs a load test"
            ),
            "needs 2 approvals from distinct people; 1 counted",
        ]),
        "{dec:#}"
    );
    assert_eq!(
        dec["not_counted"],
        json!([{"approver": "carol", "reason": "rejected this revision", "index": rejected}]),
        "{dec:#}"
    );
    assert_eq!(dec["counted"][0]["approver"], "bob", "{dec:#}");
    assert_eq!(dec["counted"][0]["index"], b, "{dec:#}");
    // In words, too.
    let out = authorize(&s, "--digest", &d, false).await;
    assert_eq!(out.code, 1, "{out:?}");
    has_line(
        &out,
        &format!(
            "  - carol rejected revision 1 of change CHG-3 (entry {rejected}): needs a load test"
        ),
    );
    has_line(
        &out,
        &format!("  not counted: carol — rejected this revision [entry {rejected}]"),
    );

    // `change show` lists the review as a rejection, with its comment.
    let shown = s.cli_ok(&["change", "show", "CHG-3"]).await;
    let c: Value = serde_json::from_str(&shown).unwrap_or_else(|e| panic!("{e}: {shown}"));
    assert_eq!(c["change_id"], "CHG-3", "{c:#}");
    assert_eq!(c["revision"], 1, "{c:#}");
    let reviews = c["reviews"].as_array().unwrap_or_else(|| panic!("{c:#}"));
    assert_eq!(reviews.len(), 2, "{c:#}");
    assert_eq!(reviews[0]["reviewer"], "bob", "{c:#}");
    assert_eq!(reviews[0]["verdict"], "approve", "{c:#}");
    assert_eq!(reviews[1]["reviewer"], "carol", "{c:#}");
    assert_eq!(reviews[1]["verdict"], "reject", "{c:#}");
    assert_eq!(reviews[1]["comment"], "needs a load test", "{c:#}");
    assert_eq!(reviews[1]["index"], rejected, "{c:#}");
    assert_eq!(reviews[1]["seen_subjects"], json!([d]), "{c:#}");

    // Carol's later approval speaks for her: allowed.
    let later = t
        .review(&s, "carol", "approve", "CHG-3", "load test passed")
        .await;
    let out = authorize(&s, "--digest", &d, true).await;
    assert_eq!(out.code, 0, "{out:?}");
    let dec = out.json();
    assert_eq!(dec["verdict"], "allow", "{dec:#}");
    assert_eq!(
        dec["not_counted"],
        json!([{
            "approver": "carol",
            "reason": format!("superseded by carol's later review (entry {later})"),
            "index": rejected,
        }]),
        "{dec:#}"
    );
    assert_eq!(dec["counted"][1]["approver"], "carol", "{dec:#}");
    assert_eq!(dec["counted"][1]["index"], later, "{dec:#}");
}

/// A dev may not grant roles: refused with the permission it lacks and who
/// holds it, nothing appended, the target's roles unchanged; the admin may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dev_may_not_change_roles() {
    let s = server().with_policy(POLICY).run().await;
    let t = Team::new(&s);
    t.add(&s, "alice", "human", "dev", Some("alice@example.com"))
        .await;
    t.add(&s, "bob", "human", "dev", Some("bob@example.com"))
        .await;
    let show = ["principal", "show", "--id", "alice"];
    assert_eq!(roles(&s.cli_ok(&show).await), json!(["dev"]));

    let size = s.size().await;
    let out = t
        .run_as(
            &s,
            "bob",
            &[
                "principal",
                "update",
                "--id",
                "alice",
                "--grant-role",
                "admin",
                "--reason",
                "promote",
            ],
        )
        .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains(
            "event refused by state rules: \"bob\" may not change roles: policy version 1 gives `change_roles` to role(s) admin"
        ),
        "{out:?}"
    );
    assert!(out.stderr.contains("FailedPrecondition"), "{out:?}");
    assert_eq!(
        s.size().await,
        size,
        "the refused update appended something"
    );
    assert_eq!(roles(&s.cli_ok(&show).await), json!(["dev"]));

    // Revoking is changing roles too.
    let out = t
        .run_as(
            &s,
            "bob",
            &[
                "principal",
                "update",
                "--id",
                "alice",
                "--revoke-role",
                "dev",
            ],
        )
        .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("\"bob\" may not change roles: policy version 1 gives `change_roles`"),
        "{out:?}"
    );
    assert_eq!(roles(&s.cli_ok(&show).await), json!(["dev"]));

    // The admin (the data dir's default signer) holds change_roles.
    s.cli_ok(&[
        "principal",
        "update",
        "--id",
        "alice",
        "--grant-role",
        "security",
    ])
    .await;
    assert_eq!(roles(&s.cli_ok(&show).await), json!(["dev", "security"]));
}

/// Once a second identity administrator exists, the admin's role grant is
/// recorded but waits: `principal update` says so and how to approve it,
/// `principal pending` lists it, the admin cannot approve it, and the
/// second administrator's `principal approve` makes it take effect. Under
/// `[identity_changes] expire_after = "1h"` each waiting change shows when
/// it expires, and one left an hour and a nanosecond is no longer listed as
/// waiting and can no longer be approved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_identity_admin_approves_identity_changes() {
    use docket::service::ManualClock;
    use docket::state::gov::fmt_nanos;
    // A minute ahead of the genesis, which the real clock times: every
    // entry below is then integrated at exactly t0 until the clock moves.
    let t0 = crate::common::now_nanos() + 60_000_000_000;
    let clock = std::sync::Arc::new(ManualClock::new(t0));
    let hour = 3_600_000_000_000_i64;
    let policy = format!("{POLICY}\n[identity_changes]\nexpire_after = \"1h\"\n");
    let s = server()
        .with_policy(&policy)
        .with_clock(clock.clone())
        .run()
        .await;
    let t = Team::new(&s);
    t.add(&s, "alice", "human", "dev", None).await;
    // While the admin is the only identity administrator, this applies at once.
    t.add(&s, "root2", "human", "admin", None).await;
    let show = ["principal", "show", "--id", "alice"];
    let grant = s
        .cli(&[
            "principal",
            "update",
            "--id",
            "alice",
            "--grant-role",
            "security",
        ])
        .await;
    assert_eq!(grant.code, 0, "{grant:?}");
    let receipt: Value = serde_json::from_str(&grant.stdout).unwrap();
    let entry = receipt["index"].as_u64().unwrap();
    assert!(
        grant.stderr.contains(&format!(
            "recorded at entry {entry}, not yet in effect: another identity administrator must \
             approve it with `docket principal approve {entry}`"
        )),
        "{grant:?}"
    );
    assert_eq!(roles(&s.cli_ok(&show).await), json!(["dev"]));
    let pending: Value =
        serde_json::from_str(&s.cli_ok(&["principal", "pending", "--json"]).await).unwrap();
    assert_eq!(
        pending,
        json!([{
            "entry_index": entry,
            "proposer": "admin",
            "subject": "alice",
            "description": "update alice: grant security",
            "applied": false,
            "applied_at_index": null,
            "approved_by": null,
            "withdrawn": false,
            "withdrawn_at_index": null,
            "withdrawn_by": null,
            "expires_at": fmt_nanos(t0 + hour),
            "expired": false,
        }])
    );
    assert_eq!(
        s.cli_ok(&["principal", "pending"]).await.trim(),
        format!(
            "entry {entry}  update alice: grant security  (signed by admin)  waiting until {}: \
             docket principal approve {entry}",
            fmt_nanos(t0 + hour)
        )
    );
    let entry_arg = entry.to_string();
    let own = s.cli(&["principal", "approve", &entry_arg]).await;
    assert_eq!(own.code, 1, "{own:?}");
    assert!(
        own.stderr.contains(&format!(
            "the identity change at entry {entry} needs the approval of an identity administrator \
             other than the one who signed it"
        )),
        "{own:?}"
    );
    let ok = t
        .run_as(&s, "root2", &["principal", "approve", &entry_arg])
        .await;
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(ok.stderr.contains("has taken effect"), "{ok:?}");
    let at: Value = serde_json::from_str(&ok.stdout).unwrap();
    assert_eq!(roles(&s.cli_ok(&show).await), json!(["dev", "security"]));
    assert_eq!(
        s.cli_ok(&["principal", "pending"]).await.trim(),
        "no identity change waits for approval"
    );
    let all: Value =
        serde_json::from_str(&s.cli_ok(&["principal", "pending", "--all", "--json"]).await)
            .unwrap();
    assert_eq!(all[0]["applied_at_index"], at["index"], "{all}");
    assert_eq!(all[0]["approved_by"], "root2", "{all}");

    // A change recorded by mistake is withdrawn by its proposer; then the
    // second administrator can no longer apply it.
    let wrong = s
        .cli(&[
            "principal",
            "update",
            "--id",
            "alice",
            "--revoke-role",
            "dev",
        ])
        .await;
    assert_eq!(wrong.code, 0, "{wrong:?}");
    let wrong_at = serde_json::from_str::<Value>(&wrong.stdout).unwrap()["index"]
        .as_u64()
        .unwrap()
        .to_string();
    let w = s
        .cli(&[
            "principal",
            "withdraw",
            &wrong_at,
            "--reason",
            "wrong principal",
        ])
        .await;
    assert_eq!(w.code, 0, "{w:?}");
    assert!(w.stderr.contains("is withdrawn"), "{w:?}");
    let w_at = serde_json::from_str::<Value>(&w.stdout).unwrap()["index"].clone();
    let late = t
        .run_as(&s, "root2", &["principal", "approve", &wrong_at])
        .await;
    assert_eq!(late.code, 1, "{late:?}");
    assert!(
        late.stderr.contains(&format!(
            "the identity change at entry {wrong_at} was withdrawn at entry {w_at} by \"admin\""
        )),
        "{late:?}"
    );
    assert_eq!(roles(&s.cli_ok(&show).await), json!(["dev", "security"]));
    assert_eq!(
        s.cli_ok(&["principal", "pending"]).await.trim(),
        "no identity change waits for approval"
    );
    let all: Value =
        serde_json::from_str(&s.cli_ok(&["principal", "pending", "--all", "--json"]).await)
            .unwrap();
    assert_eq!(
        (
            &all[1]["withdrawn"],
            &all[1]["withdrawn_at_index"],
            &all[1]["withdrawn_by"]
        ),
        (&json!(true), &w_at, &json!("admin")),
        "{all}"
    );

    // Left waiting an hour and a nanosecond, a change has expired.
    let stale = s
        .cli(&["principal", "update", "--id", "alice", "--grant-role", "ci"])
        .await;
    assert_eq!(stale.code, 0, "{stale:?}");
    let stale_at = serde_json::from_str::<Value>(&stale.stdout).unwrap()["index"]
        .as_u64()
        .unwrap()
        .to_string();
    clock.set(t0 + hour + 1);
    assert_eq!(
        s.cli_ok(&["principal", "pending"]).await.trim(),
        "no identity change waits for approval"
    );
    let all: Value =
        serde_json::from_str(&s.cli_ok(&["principal", "pending", "--all", "--json"]).await)
            .unwrap();
    assert_eq!(
        (&all[2]["expired"], &all[2]["expires_at"]),
        (&json!(true), &json!(fmt_nanos(t0 + hour))),
        "{all}"
    );
    let text = s.cli_ok(&["principal", "pending", "--all"]).await;
    assert!(
        text.lines().last().unwrap().ends_with(&format!(
            "update alice: grant ci  (signed by admin)  expired at {}",
            fmt_nanos(t0 + hour)
        )),
        "{text}"
    );
    let late = t
        .run_as(&s, "root2", &["principal", "approve", &stale_at])
        .await;
    assert_eq!(late.code, 1, "{late:?}");
    assert!(
        late.stderr.contains(&format!(
            "the identity change at entry {stale_at} expired at {}",
            fmt_nanos(t0 + hour)
        )),
        "{late:?}"
    );
    assert_eq!(roles(&s.cli_ok(&show).await), json!(["dev", "security"]));
}

/// A malformed commit or digest is a usage error (64), found before anything
/// is signed or sent: the server named here does not exist, so a check made
/// only after connecting would exit 69 instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_subjects_are_usage_errors_before_any_call() {
    let s = server().with_policy(POLICY).run().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://127.0.0.1:{}", closed.local_addr().unwrap().port());
    drop(closed);
    let upper = "0123456789ABCDEF0123456789ABCDEF01234567";
    let bad_digest = format!("sha256:{}", "A".repeat(64));
    let cases: [(Vec<&str>, &str); 6] = [
        (
            vec![
                "authorize",
                "--env",
                "prod",
                "--digest",
                &bad_digest,
                "--actor",
                "ci",
            ],
            "--digest",
        ),
        (
            vec!["deploy", "--env", "prod", "--commit", upper],
            "--commit",
        ),
        (
            vec![
                "change", "open", "--id", "CHG-9", "--commit", "abc123", "--env", "prod",
            ],
            "not a commit SHA",
        ),
        (
            vec![
                "ci",
                "report",
                "--status",
                "passed",
                "--commit",
                upper,
                "--repository",
                "r",
            ],
            "not a commit SHA",
        ),
        (vec!["approve", "CHG-9", "--seen", "main"], "--seen"),
        (
            vec!["change", "amend", "--id", "CHG-9", "--digest", "sha256:00"],
            "not an artifact digest",
        ),
    ];
    for (args, needle) in cases {
        let out = s.cli_env(&args, &[("DOCKET_SERVER", &url)]).await;
        assert_eq!(out.code, 64, "{args:?}: {}{}", out.stdout, out.stderr);
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
    }
    // From the CI's variables, the message says where the commit came from.
    let out = s
        .cli_env(
            &["ci", "report", "--status", "passed"],
            &[
                ("DOCKET_SERVER", &url),
                ("GITHUB_ACTIONS", "true"),
                ("GITHUB_SHA", upper),
                ("GITHUB_REPOSITORY", "acme/app"),
            ],
        )
        .await;
    assert_eq!(out.code, 64, "{}", out.stderr);
    assert!(out.stderr.contains("GITHUB_SHA"), "{}", out.stderr);
    // Inside Actions, a missing commit or repository names its variable;
    // one that is set but not UTF-8 is refused by name, not taken for
    // absent (which recorded the run without its id), and nothing is sent.
    use std::os::unix::ffi::OsStrExt as _;
    let os = |v: &'static str| std::ffi::OsStr::new(v);
    let sha = "0123456789abcdef0123456789abcdef01234567";
    for (env, needle) in [
        (
            vec![("GITHUB_REPOSITORY", os("acme/app"))],
            "GITHUB_SHA is not set or empty, so the commit this github-actions run built is unknown: pass --commit",
        ),
        (
            vec![("GITHUB_SHA", os(sha))],
            "GITHUB_REPOSITORY is not set or empty",
        ),
        (
            vec![
                ("GITHUB_SHA", os(sha)),
                ("GITHUB_REPOSITORY", os("acme/app")),
                ("GITHUB_RUN_ID", std::ffi::OsStr::from_bytes(b"77\xff")),
            ],
            "GITHUB_RUN_ID is set but not UTF-8",
        ),
    ] {
        let mut env = env;
        env.push(("DOCKET_SERVER", os("https://127.0.0.1:1")));
        env.push(("GITHUB_ACTIONS", os("true")));
        let out = s
            .cli_env_os(&["ci", "report", "--status", "passed"], &env)
            .await;
        assert_eq!(out.code, 64, "{env:?}: {}", out.stderr);
        assert!(out.stderr.contains(needle), "{env:?}: {}", out.stderr);
    }
}

/// A gate that cannot reach the server exits 69 (EX_UNAVAILABLE), not 1:
/// a pipeline can tell "denied" from "could not ask" and retry the latter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_not_a_denial() {
    let s = server().with_policy(POLICY).run().await;
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = format!("https://127.0.0.1:{port}");
    let d = digest("unreachable");
    for args in [
        vec![
            "authorize",
            "--env",
            "prod",
            "--digest",
            &d,
            "--actor",
            "ci",
        ],
        vec!["checkpoint"],
    ] {
        let out = s.cli_env(&args, &[("DOCKET_SERVER", &url)]).await;
        assert_eq!(out.code, 69, "{args:?}: {}{}", out.stdout, out.stderr);
        assert!(
            out.stderr.contains(&format!("connecting to {url}")),
            "{args:?}: {}",
            out.stderr
        );
    }
    // The same request to the live server is an ordinary denial.
    let out = s
        .cli(&[
            "authorize",
            "--env",
            "prod",
            "--digest",
            &d,
            "--actor",
            "ci",
        ])
        .await;
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
}

/// A dry run of `git ingest` reads the principals' keys from the server
/// too, so it shows the verdict the real run records: a commit signed with
/// alice's Docket key is verified, signer alice (it used to show
/// untrusted-key, which the log then refused), and a principal's key is
/// recorded under the principal's id even when an allowed-signers file
/// names it otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_ingest_dry_run_shows_the_verdicts_the_run_records() {
    let s = server().with_policy(POLICY).run().await;
    let t = team(&s).await;
    let r = repo(&s.path());
    // Alice's Docket key, written as an OpenSSH key git can sign with.
    let key = docket::crypto::read_signing_key(Path::new(&t.key("alice"))).unwrap();
    let ssh = s.path().join("alice_ssh");
    write_openssh_key(&ssh, &key);
    let c = commit(
        &r,
        "Alice",
        "alice@example.com",
        Some(&ssh),
        "a.txt",
        "signed",
    );
    let repo_s = r.display().to_string();
    let dry = s
        .cli(&[
            "git",
            "ingest",
            "--repo",
            &repo_s,
            "--ref",
            "HEAD",
            "--dry-run",
        ])
        .await;
    assert_eq!(dry.code, 0, "{dry:?}");
    let line = dry
        .stdout
        .lines()
        .find(|l| l.starts_with(&c[..12]))
        .unwrap_or_else(|| panic!("{dry:?}"));
    assert!(line.contains(" verified "), "{line}");
    assert!(!dry.stderr.contains("could not be read"), "{}", dry.stderr);
    // An allowed-signers file that gives alice's key another identity: the
    // key is a principal's, so the verdict names the principal (which the
    // server requires), not the file's identity.
    let allowed = s.path().join("allowed_signers");
    let public = std::fs::read_to_string(format!("{}.pub", ssh.display())).unwrap();
    std::fs::write(&allowed, format!("alice@corp.example {public}")).unwrap();
    let allowed_s = allowed.display().to_string();
    let out = t
        .ok_as(
            &s,
            "ci",
            &[
                "git",
                "ingest",
                "--repo",
                &repo_s,
                "--ref",
                "HEAD",
                "--allowed-signers",
                &allowed_s,
            ],
        )
        .await;
    let line = out
        .lines()
        .find(|l| l.starts_with(&c[..12]))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains(" verified ") && line.contains("alice"),
        "{line}"
    );
    assert!(!line.contains("alice@corp.example"), "{line}");
}
