//! A policy change is a governed change, end to end: the `docket` binary
//! (`policy propose`, `policy approve`, `policy show`, `authorize`) against a
//! real mTLS server. The proposer may not approve their own proposal; one of
//! the two approvals `[policy_changes]` demands leaves version 1 in force; the
//! second activates version 2, and from then on every decision names version
//! 2 and its digest and follows its rules. A document that does not parse
//! strictly is refused by the CLI with its line, and nothing is appended.

use std::path::Path;

use serde_json::{Value, json};

use crate::common::{CliOut, TestServer, server};

const GENESIS: &str = r#"version = 1

[permissions]
register_principals = ["admin"]
change_roles = ["admin"]
propose_policy = ["policy-admin"]
approve_policy = ["policy-admin"]
open_change = ["dev"]
approve = ["dev"]

[policy_changes]
approvals = 2
roles = ["policy-admin"]

[[rule]]
name = "prod"
description = "one approval"
match.environments = ["prod"]
approvals = 1
approver_roles = ["dev"]
"#;

/// Version 2: prod needs two approvals, and staging gets a rule of its own
/// (under version 1 no rule matches staging, so it is denied).
const V2: &str = r#"version = 1

[permissions]
register_principals = ["admin"]
change_roles = ["admin"]
propose_policy = ["policy-admin"]
approve_policy = ["policy-admin"]
open_change = ["dev"]
approve = ["dev"]

[policy_changes]
approvals = 2
roles = ["policy-admin"]

[[rule]]
name = "prod"
description = "two approvals"
match.environments = ["prod"]
approvals = 2
approver_roles = ["dev"]

[[rule]]
name = "staging"
match.environments = ["staging"]
"#;

/// Rule "prod" (line 5) is shadowed by the catch-all "all" (line 2).
const SHADOWED: &str = "version = 1\n[[rule]]\nname = \"all\"\n\n[[rule]]\nname = \"prod\"\nmatch.environments = [\"prod\"]\n";

fn blake3_hex(text: &str) -> String {
    hex::encode(docket::crypto::blake3_256(text.as_bytes()))
}

/// Writes a key pair for `id`, registers it as a human with `role` (signed
/// by the data dir's admin) and returns its private key file.
async fn principal(s: &TestServer, dir: &Path, id: &str, role: &str) -> String {
    let key = dir.join(format!("{id}.key"));
    s.add_principal(&key, id, "human", role, None).await;
    key.display().to_string()
}

/// Runs the binary signing as `id` with its own key.
async fn as_(s: &TestServer, id: &str, key: &str, args: &[&str]) -> CliOut {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--key", key, "--signer", id]);
    s.cli(&all).await
}

/// `docket authorize --json` for a deploy by dev1: exit code and decision.
async fn authorize(s: &TestServer, env: &str, digest: &str) -> (i32, Value) {
    let out = s
        .cli(&[
            "authorize",
            "--env",
            env,
            "--digest",
            digest,
            "--actor",
            "dev1",
            "--json",
        ])
        .await;
    (out.code, out.json())
}

async fn show(s: &TestServer) -> Value {
    serde_json::from_str(&s.cli_ok(&["policy", "show"]).await).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_change_is_governed_and_later_decisions_name_the_new_version() {
    let s = server().with_policy(GENESIS).run().await;
    let dir = s.path().join("people");
    std::fs::create_dir_all(&dir).unwrap();
    let pa1 = principal(&s, &dir, "pa1", "policy-admin").await;
    let pa2 = principal(&s, &dir, "pa2", "policy-admin").await;
    let pa3 = principal(&s, &dir, "pa3", "policy-admin").await;
    principal(&s, &dir, "dev1", "dev").await;
    let d = format!("sha256:{}", "ab".repeat(32));

    // Version 1 decides: prod needs a change, staging matches no rule.
    let (code, v1) = authorize(&s, "prod", &d).await;
    assert_eq!(code, 1, "{v1:#}");
    assert_eq!(v1["verdict"], "deny", "{v1:#}");
    assert_eq!(v1["rule"], "prod", "{v1:#}");
    assert_eq!(v1["policy_version"], 1, "{v1:#}");
    assert_eq!(v1["policy_digest"], blake3_hex(GENESIS), "{v1:#}");
    let no_change = format!("no change binds {d} for prod; open a change for these subjects");
    assert_eq!(v1["reasons"][0], no_change.as_str(), "{v1:#}");
    let (code, st) = authorize(&s, "staging", &d).await;
    assert_eq!(code, 1, "{st:#}");
    assert_eq!(st["rule"], "", "{st:#}");
    assert_eq!(
        st["reasons"],
        json!(["no rule matches this request; unmatched requests are denied"]),
        "{st:#}"
    );

    // pa1 proposes version 2 from a file; the base is the version in force.
    let file = dir.join("policy-v2.toml");
    std::fs::write(&file, V2).unwrap();
    let file = file.display().to_string();
    let out = as_(
        &s,
        "pa1",
        &pa1,
        &[
            "policy",
            "propose",
            "--id",
            "policy-2",
            "--file",
            &file,
            "--description",
            "prod needs two",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .starts_with("proposed policy-2 (replacing version 1) at entry "),
        "{out:?}"
    );

    // The proposer may not approve their own proposal: refused, nothing recorded.
    let approve = ["policy", "approve", "policy-2"];
    let out = as_(&s, "pa1", &pa1, &approve).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("the proposer may not approve their own policy proposal \"policy-2\""),
        "{out:?}"
    );

    // One approval of the two needed: still pending, version 1 in force.
    let out = as_(&s, "pa2", &pa2, &approve).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .contains(": pending (approvals on record so far: pa2)"),
        "{out:?}"
    );
    let out = as_(&s, "pa2", &pa2, &approve).await;
    assert_eq!(out.code, 1, "a second approval by pa2: {out:?}");
    assert!(
        out.stderr
            .contains("\"pa2\" already approved policy proposal \"policy-2\""),
        "{out:?}"
    );
    let p = show(&s).await;
    assert_eq!(p["active"]["version"], 1, "{p:#}");
    assert_eq!(p["proposals"][0]["proposer"], "pa1", "{p:#}");
    assert_eq!(p["proposals"][0]["status"], "pending", "{p:#}");
    assert_eq!(p["proposals"][0]["approvers"], json!(["pa2"]), "{p:#}");
    assert_eq!(s.cli_ok(&["policy", "show", "--text"]).await, GENESIS);
    let (_, mid) = authorize(&s, "prod", &d).await;
    assert_eq!(mid["policy_version"], 1, "pending changes nothing: {mid:#}");

    // The second approval activates it as version 2.
    let out = as_(&s, "pa3", &pa3, &approve).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .contains(": it is now policy version 2 (approvals on record: pa2, pa3)"),
        "{out:?}"
    );
    let p = show(&s).await;
    assert_eq!(p["active"]["version"], 2, "{p:#}");
    assert_eq!(p["active"]["proposal_id"], "policy-2", "{p:#}");
    assert_eq!(p["active"]["approvers"], json!(["pa2", "pa3"]), "{p:#}");
    assert_eq!(p["active"]["digest"], blake3_hex(V2), "{p:#}");
    assert_eq!(p["history"].as_array().map(Vec::len), Some(2), "{p:#}");
    assert_eq!(p["proposals"][0]["status"], "active", "{p:#}");
    assert_eq!(s.cli_ok(&["policy", "show", "--text"]).await, V2);

    // Later decisions name version 2 and follow its rules.
    let (code, v2) = authorize(&s, "prod", &d).await;
    assert_eq!(code, 1, "{v2:#}");
    assert_eq!(v2["rule"], "prod", "{v2:#}");
    assert_eq!(v2["policy_version"], 2, "{v2:#}");
    assert_eq!(v2["policy_digest"], blake3_hex(V2), "{v2:#}");
    assert_ne!(v2["policy_digest"], v1["policy_digest"], "{v1:#} {v2:#}");
    assert_eq!(v2["reasons"][0], no_change.as_str(), "{v2:#}");
    let (code, st) = authorize(&s, "staging", &d).await;
    assert_eq!(code, 0, "{st:#}");
    assert_eq!(st["verdict"], "allow", "{st:#}");
    assert_eq!(st["rule"], "staging", "{st:#}");
    assert_eq!(st["policy_version"], 2, "{st:#}");
    assert_eq!(
        st["reasons"],
        json!(["rule \"staging\" is satisfied"]),
        "{st:#}"
    );

    // A document that does not parse strictly is refused with its line;
    // nothing is appended.
    let size = s.size().await;
    let bad = dir.join("shadowed.toml");
    std::fs::write(&bad, SHADOWED).unwrap();
    let bad = bad.display().to_string();
    let out = as_(
        &s,
        "pa1",
        &pa1,
        &["policy", "propose", "--id", "policy-3", "--file", &bad],
    )
    .await;
    assert_eq!(out.code, 64, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "--file {bad}: policy line 5: rule \"prod\" can never apply: rule \"all\" (line 2) comes first"
        )),
        "{out:?}"
    );
    assert_eq!(
        s.size().await,
        size,
        "the refused proposal appended something"
    );
    let p = show(&s).await;
    assert_eq!(p["active"]["version"], 2, "{p:#}");
    assert_eq!(p["proposals"].as_array().map(Vec::len), Some(1), "{p:#}");
}

/// Under `[policy_changes] expire_after = "2h"` a proposal shows when it
/// expires; approved exactly at that time it still counts, and a nanosecond
/// later it shows as expired, can no longer be approved, and version 1 stays
/// in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_waits_only_as_long_as_the_policy_in_force_allows() {
    use docket::service::ManualClock;
    use docket::state::gov::fmt_nanos;
    let limited = GENESIS.replace(
        "roles = [\"policy-admin\"]\n",
        "roles = [\"policy-admin\"]\nexpire_after = \"2h\"\n",
    );
    assert_ne!(limited, GENESIS);
    // A minute ahead of the genesis, which the real clock times: every
    // entry below is integrated at exactly t0 until the clock moves.
    let t0 = crate::common::now_nanos() + 60_000_000_000;
    let clock = std::sync::Arc::new(ManualClock::new(t0));
    let s = server()
        .with_policy(&limited)
        .with_clock(clock.clone())
        .run()
        .await;
    let dir = s.path().join("people");
    std::fs::create_dir_all(&dir).unwrap();
    let pa1 = principal(&s, &dir, "pa1", "policy-admin").await;
    let pa2 = principal(&s, &dir, "pa2", "policy-admin").await;
    let pa3 = principal(&s, &dir, "pa3", "policy-admin").await;
    let file = dir.join("policy-v2.toml");
    std::fs::write(&file, V2).unwrap();
    let file = file.display().to_string();
    let propose = ["policy", "propose", "--id", "policy-2", "--file", &file];
    let out = as_(&s, "pa1", &pa1, &propose).await;
    assert_eq!(out.code, 0, "{out:?}");
    let expires = t0 + 2 * 3_600_000_000_000;
    let p = show(&s).await;
    assert_eq!(
        (
            &p["proposals"][0]["status"],
            &p["proposals"][0]["expires_at"]
        ),
        (&json!("pending"), &json!(fmt_nanos(expires))),
        "{p:#}"
    );

    // At the expiry itself an approval still counts.
    clock.set(expires);
    let approve = ["policy", "approve", "policy-2"];
    let out = as_(&s, "pa2", &pa2, &approve).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(show(&s).await["proposals"][0]["status"], "pending");

    // A nanosecond later it is expired, and the second approval is refused.
    clock.set(expires + 1);
    let p = show(&s).await;
    assert_eq!(
        (
            &p["proposals"][0]["status"],
            &p["proposals"][0]["expires_at"]
        ),
        (&json!("expired"), &json!(fmt_nanos(expires))),
        "{p:#}"
    );
    let size = s.size().await;
    let out = as_(&s, "pa3", &pa3, &approve).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "policy proposal \"policy-2\" can no longer be approved: it expired at {}: the policy \
             in force lets a proposal wait 2h for its approvals ([policy_changes] expire_after); \
             propose it again",
            fmt_nanos(expires)
        )),
        "{out:?}"
    );
    assert_eq!(s.size().await, size, "nothing appended");
    let p = show(&s).await;
    assert_eq!(p["active"]["version"], 1, "{p:#}");
    assert_eq!(p["proposals"][0]["approvers"], json!(["pa2"]), "{p:#}");
}
