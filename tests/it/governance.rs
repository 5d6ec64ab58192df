//! The governance scenario of issue 3, against a real server over mTLS with
//! the `docket` binary as the client, real git commits signed with
//! `ssh-keygen` keys, and a manual clock for deadlines (no sleeps).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use docket::service::{Clock, ManualClock};
use serde_json::Value;

use crate::common::{TestServer, digest, now_nanos, server};

/// Runs git in `dir` with a clean configuration; returns stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("HOME", dir)
        .output()
        .expect("git is installed");
    assert!(
        out.status.success(),
        "git {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A new, empty repository under `dir`.
pub fn repo(dir: &Path) -> PathBuf {
    let r = dir.join("repo");
    std::fs::create_dir_all(&r).unwrap();
    git(&r, &["init", "-q", "-b", "main"]);
    r
}

/// Writes `key` (a Docket Ed25519 key) as an OpenSSH private key at `path`
/// (mode 0600) and its public key at `path.pub`, so git can sign with it.
pub fn write_openssh_key(path: &Path, key: &ed25519_dalek::SigningKey) {
    use std::os::unix::fs::PermissionsExt as _;
    let private =
        ssh_key::PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(&key.to_bytes()));
    std::fs::write(
        path,
        private
            .to_openssh(ssh_key::LineEnding::LF)
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    std::fs::write(
        format!("{}.pub", path.display()),
        private.public_key().to_openssh().unwrap(),
    )
    .unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Creates an ed25519 SSH key with ssh-keygen; returns the private key path.
pub fn ssh_key(dir: &Path, name: &str) -> PathBuf {
    ssh_key_of(dir, name, "ed25519", None)
}

/// Creates an SSH key of type `t` (with `-b bits` when given) with ssh-keygen.
pub fn ssh_key_of(dir: &Path, name: &str, t: &str, bits: Option<&str>) -> PathBuf {
    let p = dir.join(name);
    let mut cmd = std::process::Command::new("ssh-keygen");
    cmd.args(["-q", "-t", t, "-N", "", "-C", name]);
    if let Some(b) = bits {
        cmd.args(["-b", b]);
    }
    let out = cmd
        .arg("-f")
        .arg(&p)
        .output()
        .expect("ssh-keygen is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    p
}

/// Commits a change to `file` as `name <email>`, SSH-signed with `key` when given.
pub fn commit(
    repo: &Path,
    name: &str,
    email: &str,
    key: Option<&Path>,
    file: &str,
    msg: &str,
) -> String {
    std::fs::write(repo.join(file), format!("{msg}\n")).unwrap();
    git(repo, &["add", file]);
    let ident = [format!("user.name={name}"), format!("user.email={email}")];
    let mut args: Vec<String> = Vec::new();
    for i in &ident {
        args.push("-c".into());
        args.push(i.clone());
    }
    if let Some(k) = key {
        for c in [
            "gpg.format=ssh".to_owned(),
            format!("user.signingkey={}.pub", k.display()),
            "commit.gpgsign=true".to_owned(),
        ] {
            args.push("-c".into());
            args.push(c);
        }
    }
    args.extend(["commit".into(), "-q".into(), "-m".into(), msg.into()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    git(repo, &refs);
    git(repo, &["rev-parse", "HEAD"])
}

/// Civil UTC time "YYYY-MM-DDTHH:MM" of `nanos`, for policy freeze windows.
fn civil_utc(nanos: i64) -> String {
    let t = jiff::Timestamp::from_nanosecond(i128::from(nanos)).unwrap();
    t.strftime("%Y-%m-%dT%H:%M").to_string()
}

fn scenario_policy(freeze_start: i64, freeze_end: i64) -> String {
    format!(
        r#"version = 1

[permissions]
register_principals = ["admin"]
change_roles = ["admin"]
propose_policy = ["admin"]
approve_policy = ["policy-admin"]
open_change = ["dev", "ci"]
approve = ["dev", "security"]
break_glass = ["sre"]
report = ["ci", "admin"]

[[rule]]
name = "prod"
description = "one approval from someone other than the authors, CI passed, staged first"
match.environments = ["prod"]
approvals = 1
approver_roles = ["dev", "security"]
ci_passed = true
promoted_from = "staging"

[[rule]]
name = "staging"
match.environments = ["staging"]
ci_passed = true

[[freeze]]
name = "change-freeze"
start = "{}"
end = "{}"
zone = "UTC"
environments = ["prod"]
"#,
        civil_utc(freeze_start),
        civil_utc(freeze_end)
    )
}

/// `docket authorize --json` as `actor`: exit code and decision.
async fn authorize(s: &TestServer, env: &str, subject: &str, actor: &str) -> (i32, Value) {
    let out = s
        .cli(&[
            "authorize",
            "--env",
            env,
            "--digest",
            subject,
            "--actor",
            actor,
            "--json",
        ])
        .await;
    (out.code, out.json())
}

fn reasons(d: &Value) -> String {
    d["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join(" | ")
}

fn not_counted(d: &Value, who: &str) -> String {
    d["not_counted"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["approver"] == who)
        .map(|n| n["reason"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| panic!("{who} is not among the uncounted: {d:#}"))
}

struct People {
    dir: PathBuf,
}

impl People {
    fn key(&self, who: &str) -> String {
        self.dir.join(format!("{who}.key")).display().to_string()
    }
}

/// Registers a principal through the CLI, with a fresh Docket key.
async fn add_principal(
    s: &TestServer,
    p: &People,
    id: &str,
    kind: &str,
    role: &str,
    email: Option<&str>,
) {
    s.add_principal(Path::new(&p.key(id)), id, kind, role, email)
        .await;
}

/// alice and bob (dev) and carol (security), each with an e-mail and a
/// fresh key under `people/`.
async fn developers(s: &TestServer) -> People {
    let p = People {
        dir: s.path().join("people"),
    };
    std::fs::create_dir_all(&p.dir).unwrap();
    add_principal(s, &p, "alice", "human", "dev", Some("alice@example.com")).await;
    add_principal(s, &p, "bob", "human", "dev", Some("bob@example.com")).await;
    add_principal(
        s,
        &p,
        "carol",
        "human",
        "security",
        Some("carol@example.com"),
    )
    .await;
    p
}

fn as_(p: &People, who: &str) -> [String; 4] {
    ["--key".into(), p.key(who), "--signer".into(), who.into()]
}

async fn run_as(s: &TestServer, p: &People, who: &str, args: &[&str]) -> crate::common::CliOut {
    let signer = as_(p, who);
    let mut all: Vec<&str> = args.to_vec();
    all.extend(signer.iter().map(String::as_str));
    s.cli(&all).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_approval_promotion_freeze_and_break_glass() {
    let t0 = now_nanos();
    let hour = 3_600_000_000_000i64;
    let clock = Arc::new(ManualClock::new(t0));
    let s = server()
        .with_clock(clock.clone())
        .with_policy(&scenario_policy(t0 + 2 * hour, t0 + 3 * hour))
        .run()
        .await;
    let p = developers(&s).await;
    add_principal(&s, &p, "dave", "human", "sre", None).await;
    add_principal(&s, &p, "ci", "ci", "ci", None).await;

    // Alice commits, signing with her SSH key; CI records the commit.
    let repo = repo(&s.path());
    let alice_ssh = ssh_key(&s.path(), "alice_ssh");
    let allowed = s.path().join("allowed_signers");
    std::fs::write(
        &allowed,
        format!(
            "alice@example.com {}",
            std::fs::read_to_string(format!("{}.pub", alice_ssh.display())).unwrap()
        ),
    )
    .unwrap();
    let c1 = commit(
        &repo,
        "Alice",
        "alice@example.com",
        Some(&alice_ssh),
        "app.txt",
        "feature",
    );
    let repo_s = repo.display().to_string();
    let allowed_s = allowed.display().to_string();
    let out = run_as(
        &s,
        &p,
        "ci",
        &[
            "git",
            "ingest",
            "--repo",
            &repo_s,
            "--ref",
            "main",
            "--repository",
            "github.com/acme/payments",
            "--allowed-signers",
            &allowed_s,
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("verified"), "{}", out.stdout);

    // CI builds digest D from it and opens the change.
    let d = digest("image-1");
    let ok = run_as(
        &s,
        &p,
        "ci",
        &[
            "ci",
            "report",
            "--status",
            "passed",
            "--commit",
            &c1,
            "--digest",
            &d,
            "--repository",
            "github.com/acme/payments",
            "--run-id",
            "101",
        ],
    )
    .await;
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    let ok = run_as(
        &s,
        &p,
        "ci",
        &[
            "change",
            "open",
            "--id",
            "CHG-1",
            "--commit",
            &c1,
            "--digest",
            &d,
            "--env",
            "staging",
            "--env",
            "prod",
            "--title",
            "payments feature",
            "--ticket",
            "OPS-1",
        ],
    )
    .await;
    assert_eq!(ok.code, 0, "{}", ok.stderr);

    // Alice approves (not counted: she wrote the commit); bob approves.
    assert_eq!(run_as(&s, &p, "alice", &["approve", "CHG-1"]).await.code, 0);
    assert_eq!(run_as(&s, &p, "bob", &["approve", "CHG-1"]).await.code, 0);

    // Prod is denied until staging has D.
    let (code, dec) = authorize(&s, "prod", &d, "ci").await;
    assert_eq!(code, 1, "{dec:#}");
    assert_eq!(dec["verdict"], "deny");
    assert_eq!(dec["rule"], "prod");
    assert!(
        reasons(&dec).contains(&format!("{d} has not been deployed to staging yet")),
        "{dec:#}"
    );
    assert_eq!(
        not_counted(&dec, "alice"),
        format!(
            "alice is the author, committer and signer of commit {}",
            &c1[..12]
        )
    );
    assert_eq!(dec["counted"][0]["approver"], "bob");

    let out = run_as(
        &s,
        &p,
        "ci",
        &["deploy", "--env", "staging", "--digest", &d, "--json"],
    )
    .await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let staged = out.json();
    assert_eq!(staged["verdict"], "allow");
    assert_eq!(staged["recorded"], true);

    let (code, dec) = authorize(&s, "prod", &d, "ci").await;
    assert_eq!(code, 0, "{dec:#}");
    assert_eq!(dec["verdict"], "allow");
    assert_eq!(dec["change_id"], "CHG-1");
    assert_eq!(dec["policy_version"], 1);
    let allowed_before = s.svc.with_state(|st| {
        st.decide(
            &prod_request(&d, clock.now_nanos().max(st.last_time())),
            None,
        )
    });
    assert!(allowed_before.allow, "{allowed_before:#?}");

    // An amend with a new commit makes bob's approval stale.
    let c2 = commit(
        &repo,
        "Alice",
        "alice@example.com",
        Some(&alice_ssh),
        "app.txt",
        "fix",
    );
    assert_eq!(
        run_as(
            &s,
            &p,
            "ci",
            &[
                "git",
                "ingest",
                "--repo",
                &repo_s,
                "--range",
                &format!("{c1}..{c2}"),
                "--repository",
                "github.com/acme/payments",
                "--allowed-signers",
                &allowed_s
            ]
        )
        .await
        .code,
        0
    );
    let d2 = digest("image-2");
    assert_eq!(
        run_as(
            &s,
            &p,
            "ci",
            &[
                "ci",
                "report",
                "--status",
                "passed",
                "--commit",
                &c2,
                "--digest",
                &d2,
                "--repository",
                "github.com/acme/payments"
            ]
        )
        .await
        .code,
        0
    );
    assert_eq!(
        run_as(
            &s,
            &p,
            "ci",
            &[
                "change",
                "amend",
                "--id",
                "CHG-1",
                "--commit",
                &c2,
                "--digest",
                &d2,
                "--reason",
                "review feedback"
            ]
        )
        .await
        .code,
        0
    );
    assert_eq!(
        run_as(
            &s,
            &p,
            "ci",
            &["deploy", "--env", "staging", "--digest", &d2]
        )
        .await
        .code,
        0
    );
    let (code, dec) = authorize(&s, "prod", &d2, "ci").await;
    assert_eq!(code, 1, "{dec:#}");
    assert_eq!(dec["change_revision"], 2);
    assert_eq!(
        not_counted(&dec, "bob"),
        "stale: approved an earlier revision of the change"
    );
    assert!(
        reasons(&dec).contains("needs 1 approvals from distinct people; 0 counted"),
        "{dec:#}"
    );
    // Carol read revision 1 before the amend: approving what she read is
    // refused and records nothing. She approves revision 2, which she has
    // now read; prod is allowed again.
    let late = run_as(&s, &p, "carol", &["approve", "CHG-1", "--revision", "1"]).await;
    assert_eq!(late.code, 1, "{}", late.stderr);
    assert!(
        late.stderr
            .contains("change CHG-1 is at revision 2, not the revision 1 you reviewed"),
        "{}",
        late.stderr
    );
    let (code, _) = authorize(&s, "prod", &d2, "ci").await;
    assert_eq!(code, 1);
    assert_eq!(
        run_as(&s, &p, "carol", &["approve", "CHG-1", "--revision", "2"])
            .await
            .code,
        0
    );
    let (code, dec) = authorize(&s, "prod", &d2, "ci").await;
    assert_eq!(code, 0, "{dec:#}");

    // The freeze window denies prod, naming the window and its end.
    clock.advance(Duration::from_secs(2 * 3600 + 1800));
    let (code, dec) = authorize(&s, "prod", &d2, "ci").await;
    assert_eq!(code, 1);
    assert!(
        reasons(&dec).contains(&format!(
            "freeze window \"change-freeze\" is in force until {} UTC",
            civil_utc(t0 + 3 * hour)
        )),
        "{dec:#}"
    );

    // Asked of the read-only Authorize gate, break-glass is never an allow:
    // nothing would be recorded and no review would be owed. The answer
    // says what recording it would give.
    let before = s.svc.with_state(|st| st.next_index());
    let out = s
        .cli(&[
            "authorize",
            "--env",
            "prod",
            "--digest",
            &d2,
            "--actor",
            "dave",
            "--break-glass",
            "--json",
        ])
        .await;
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    let asked = out.json();
    let r = reasons(&asked);
    assert!(
        r.contains("Authorize records nothing, so it never allows break-glass"),
        "{r}"
    );
    assert!(
        r.contains("recorded now, it would be allowed: break-glass by dave"),
        "{r}"
    );
    assert_eq!(asked["obligations"], serde_json::json!([]));
    assert_eq!(s.svc.with_state(|st| st.next_index()), before);

    // Break-glass by dave: allowed, recorded, obligation due 24 h later.
    let out = run_as(
        &s,
        &p,
        "dave",
        &[
            "deploy",
            "--env",
            "prod",
            "--digest",
            &d2,
            "--break-glass",
            "--justification",
            "payments outage INC-7",
            "--json",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let bg = out.json();
    assert_eq!(bg["rule"], "break-glass");
    let bg_index = bg["index"].as_u64().unwrap();
    assert_eq!(bg["obligations"][0]["not_by"], "dave");
    // Bob, without the role, may not break glass.
    let out = run_as(
        &s,
        &p,
        "bob",
        &[
            "deploy",
            "--env",
            "prod",
            "--digest",
            &d2,
            "--break-glass",
            "--justification",
            "me too",
            "--json",
        ],
    )
    .await;
    assert_eq!(out.code, 1);
    let denied = out.json();
    assert!(
        reasons(&denied)
            .contains("bob invoked break-glass but holds none of the roles allowed to: sre")
    );
    // Denied, it opened nothing to review; the refusal says so.
    let denied_s = denied["index"].as_u64().unwrap().to_string();
    let out = run_as(
        &s,
        &p,
        "carol",
        &["review-break-glass", &denied_s, "--comment", "n/a"],
    )
    .await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains(&format!(
            "entry {denied_s} is a break-glass deployment that was denied, so it has no review obligation"
        )),
        "{}",
        out.stderr
    );

    let open = s.cli_ok(&["obligations", "--json"]).await;
    let open: Value = serde_json::from_str(&open).unwrap();
    assert_eq!(open["obligations"][0]["status"], "open");
    assert!(open["obligations"][0]["review"].is_null(), "{open}");

    // A day and an hour later (clock moved, nothing slept) it is overdue.
    clock.advance(Duration::from_secs(25 * 3600));
    let list: Value = serde_json::from_str(
        &s.cli_ok(&["obligations", "--status", "overdue", "--json"])
            .await,
    )
    .unwrap();
    assert_eq!(list["obligations"].as_array().unwrap().len(), 1);
    assert_eq!(list["obligations"][0]["deployment_index"], bg_index);
    let v: Value = serde_json::from_str(&s.cli_ok(&["violations", "--json"]).await).unwrap();
    assert_eq!(v["violations"][0]["kind"], "overdue-review");

    // Dave may not review himself; carol closes it (late).
    let bg_s = bg_index.to_string();
    let out = run_as(
        &s,
        &p,
        "dave",
        &["review-break-glass", &bg_s, "--comment", "fine"],
    )
    .await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("someone other than \"dave\""),
        "{}",
        out.stderr
    );
    // Nor may alice, who wrote the commit the glass deployed: the review
    // stands in for the approvals it skipped, and hers would not count.
    let out = run_as(
        &s,
        &p,
        "alice",
        &["review-break-glass", &bg_s, "--comment", "my fix, fine"],
    )
    .await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains(&format!(
            "must be reviewed by someone who took no part in it, as an approval would be: alice is the author of commit {}, which it deployed",
            &c2[..12]
        )),
        "{}",
        out.stderr
    );
    let out = run_as(
        &s,
        &p,
        "carol",
        &[
            "review-break-glass",
            &bg_s,
            "--comment",
            "outage fix was right",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let list: Value = serde_json::from_str(&s.cli_ok(&["obligations", "--json"]).await).unwrap();
    assert_eq!(list["obligations"][0]["status"], "closed-late");
    let review = &list["obligations"][0]["review"];
    assert_eq!(review["reviewer"], "carol");
    assert_eq!(review["justified"], true);
    assert_eq!(review["comment"], "outage fix was right");
    assert!(review["index"].as_u64().unwrap() > bg_index, "{review}");
    let v: Value = serde_json::from_str(&s.cli_ok(&["violations", "--json"]).await).unwrap();
    let kinds: Vec<&str> = v["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["late-review"]);
    // The server's clock steps back to before carol's review (NTP, a VM
    // restored): the review is still on record, so the obligation stays
    // closed and no overdue violation appears.
    let later = clock.now_nanos();
    clock.set(later - 2 * 3600 * 1_000_000_000);
    let list: Value = serde_json::from_str(&s.cli_ok(&["obligations", "--json"]).await).unwrap();
    assert_eq!(list["obligations"][0]["status"], "closed-late");
    let v: Value = serde_json::from_str(&s.cli_ok(&["violations", "--json"]).await).unwrap();
    assert_eq!(v["violations"][0]["kind"], "late-review");
    clock.set(later);

    // Same answers after replaying the log from genesis into empty state:
    // for allowed, denied and break-glass questions, and for every
    // deployment the log recorded (the replay decides each again).
    let at = s.svc.with_state(|st| clock.now_nanos().max(st.last_time()));
    let questions = || {
        let mut staging = prod_request(&d2, at);
        staging.environment = "staging".into();
        let mut glass = prod_request(&d, at);
        glass.actor = "dave".into();
        glass.break_glass = true;
        [prod_request(&d2, at), prod_request(&d, at), staging, glass]
    };
    let answers = |st: &docket::state::State| {
        let asked: Vec<_> = questions().iter().map(|q| st.decide(q, None)).collect();
        let recorded: Vec<_> = st
            .gov()
            .deployments()
            .map(|d| (d.index, d.decision.clone()))
            .collect();
        (asked, recorded)
    };
    let before = s.svc.with_state(answers);
    assert_eq!(
        before.0.iter().map(|d| d.allow).collect::<Vec<_>>(),
        [true, false, true, true],
        "prod D2 allowed, prod D denied (stale), staging D2 and break-glass allowed: {:?}",
        before.0
    );
    assert!(before.1.len() >= 4, "{:?}", before.1);
    let (_dir, data) = s.stop().await;
    {
        use docket::ledger::Store as _;
        let store = docket::ledger::SledStore::open(&data.db()).unwrap();
        store.replace_state(Vec::new()).unwrap();
    }
    let svc = data
        .open_service(docket::service::Config {
            clock: clock.clone(),
            ..Default::default()
        })
        .unwrap();
    let after = svc.with_state(answers);
    assert_eq!(before, after);
    drop(svc);
    let out = std::process::Command::new(crate::common::BIN)
        .args(["rebuild", "--data"])
        .arg(&data.root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("identical"));
}

fn prod_request(subject: &str, at: i64) -> docket::policy::Request {
    docket::policy::Request {
        action: "deploy".into(),
        environment: "prod".into(),
        repository: None,
        kind: None,
        namespace: None,
        subjects: [subject.to_owned()].into(),
        actor: "ci".into(),
        break_glass: false,
        at: jiff::Timestamp::from_nanosecond(i128::from(at)).unwrap(),
    }
}

/// Bad governance input gets an error naming the field and the reason, and
/// leaves the log as it was.
#[tokio::test]
async fn governance_input_is_checked_field_by_field() {
    use crate::common::signed;
    use crate::e2e::expect_refused;
    use docket::api::pb;
    use docket::event::{
        Body, ChangeReview, DeployRequest, Event, PolicyProposal, PrincipalId, RecordId,
    };
    use tonic::Code;

    let s = server().run().await;
    let admin = s.admin_key();
    let ev = |id: &str, body: Body| Event {
        event_id: id.into(),
        claimed_time_nanos: now_nanos(),
        signer: PrincipalId::parse("admin").unwrap(),
        body,
    };
    // A policy that does not parse: refused with its line.
    expect_refused(
        &s,
        signed(
            &ev(
                "p1",
                Body::PolicyProposed(PolicyProposal {
                    proposal_id: RecordId::parse("P1").unwrap(),
                    text: "version = 1\ncolour = \"red\"\n".into(),
                    base_version: 1,
                    description: String::new(),
                }),
            ),
            &admin,
        ),
        Code::InvalidArgument,
        "policy_proposed.text: policy line 2: unknown field `colour`",
    )
    .await;
    // A document that reads but contradicts itself, from a signer the log
    // does not know: refused on the signature before the contradictions
    // are looked for (that check is quadratic in the document; a signature
    // check is one Ed25519 verification).
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[0x5a; 32]);
    expect_refused(
        &s,
        signed(
            &Event {
                signer: PrincipalId::parse("nobody").unwrap(),
                ..ev(
                    "p2-stranger",
                    Body::PolicyProposed(PolicyProposal {
                        proposal_id: RecordId::parse("P2").unwrap(),
                        text: "version = 1\n[[rule]]\nname = \"all\"\n\n[[rule]]\nname = \"prod\"\nmatch.environments = [\"prod\"]\n".into(),
                        base_version: 1,
                        description: String::new(),
                    }),
                )
            },
            &stranger,
        ),
        Code::Unauthenticated,
        "nobody",
    )
    .await;
    // From a registered principal who may not propose policy: refused on
    // the permission, before the contradictions are looked for.
    let dev_key = s.path().join("dev.key");
    s.add_principal(&dev_key, "dev1", "human", "dev", None)
        .await;
    let dev = docket::crypto::read_signing_key(&dev_key).unwrap();
    expect_refused(
        &s,
        signed(
            &Event {
                signer: PrincipalId::parse("dev1").unwrap(),
                ..ev(
                    "p2-dev",
                    Body::PolicyProposed(PolicyProposal {
                        proposal_id: RecordId::parse("P2").unwrap(),
                        text: "version = 1\n[[rule]]\nname = \"all\"\n\n[[rule]]\nname = \"prod\"\nmatch.environments = [\"prod\"]\n".into(),
                        base_version: 1,
                        description: String::new(),
                    }),
                )
            },
            &dev,
        ),
        Code::FailedPrecondition,
        "\"dev1\" may not propose policy",
    )
    .await;
    // A contradiction only a new document is checked for: a rule that the
    // catch-all before it always matches first.
    expect_refused(
        &s,
        signed(
            &ev(
                "p2",
                Body::PolicyProposed(PolicyProposal {
                    proposal_id: RecordId::parse("P2").unwrap(),
                    text: "version = 1\n[[rule]]\nname = \"all\"\n\n[[rule]]\nname = \"prod\"\nmatch.environments = [\"prod\"]\n".into(),
                    base_version: 1,
                    description: String::new(),
                }),
            ),
            &admin,
        ),
        Code::InvalidArgument,
        "policy_proposed.text: policy line 5: rule \"prod\" can never apply: rule \"all\" (line 2) comes first",
    )
    .await;
    // Break-glass without a justification.
    expect_refused(
        &s,
        signed(
            &ev(
                "d1",
                Body::DeployRequested(DeployRequest {
                    action: "deploy".into(),
                    environment: "prod".into(),
                    repository: None,
                    kind: None,
                    namespace: None,
                    subjects: [format!("sha256:{}", "a".repeat(64))].into(),
                    change_id: None,
                    break_glass: true,
                    justification: " ".into(),
                }),
            ),
            &admin,
        ),
        Code::InvalidArgument,
        "deploy_requested.justification: break-glass needs a justification",
    )
    .await;
    // One that only looks like text: zero-width spaces and a byte-order mark.
    expect_refused(
        &s,
        signed(
            &ev(
                "d1-invisible",
                Body::DeployRequested(DeployRequest {
                    action: "deploy".into(),
                    environment: "prod".into(),
                    repository: None,
                    kind: None,
                    namespace: None,
                    subjects: [format!("sha256:{}", "a".repeat(64))].into(),
                    change_id: None,
                    break_glass: true,
                    justification: "\u{200b}\u{feff} \u{200b}".into(),
                }),
            ),
            &admin,
        ),
        Code::InvalidArgument,
        "deploy_requested.justification: shows nothing but whitespace or invisible characters",
    )
    .await;
    // A break-glass to an environment that only looks like prod.
    expect_refused(
        &s,
        signed(
            &ev(
                "d1-lookalike",
                Body::DeployRequested(DeployRequest {
                    action: "deploy".into(),
                    environment: "prod\u{fe00}".into(),
                    repository: None,
                    kind: None,
                    namespace: None,
                    subjects: [format!("sha256:{}", "a".repeat(64))].into(),
                    change_id: None,
                    break_glass: true,
                    justification: "outage".into(),
                }),
            ),
            &admin,
        ),
        Code::InvalidArgument,
        "deploy_requested.environment: \"prod[U+FE00]\" contains U+FE00",
    )
    .await;
    // Under the built-in default policy (this server's), a break-glass is
    // refused outright, unrecorded: nothing is authorized there.
    expect_refused(
        &s,
        signed(
            &ev(
                "d1-builtin",
                Body::DeployRequested(DeployRequest {
                    action: "deploy".into(),
                    environment: "prod".into(),
                    repository: None,
                    kind: None,
                    namespace: None,
                    subjects: [format!("sha256:{}", "a".repeat(64))].into(),
                    change_id: None,
                    break_glass: true,
                    justification: "outage".into(),
                }),
            ),
            &admin,
        ),
        Code::FailedPrecondition,
        "the built-in default policy (the genesis named none and none has been adopted) authorizes nothing, break-glass included",
    )
    .await;
    // A review that finds a break-glass unjustified must say why (checked
    // before the state's rules, so no deployment is needed here).
    expect_refused(
        &s,
        signed(
            &ev(
                "bgr-silent",
                Body::BreakGlassReviewed(docket::event::BreakGlassReview {
                    deployment_index: 1,
                    justified: false,
                    comment: " ".into(),
                }),
            ),
            &admin,
        ),
        Code::InvalidArgument,
        "break_glass_reviewed.comment: a review that finds a break-glass unjustified must say why",
    )
    .await;
    // A review of a change that does not exist: a state rule.
    expect_refused(
        &s,
        signed(
            &ev(
                "r1",
                Body::ChangeReviewed(ChangeReview {
                    change_id: RecordId::parse("CHG-404").unwrap(),
                    seen_subjects: [format!("sha256:{}", "a".repeat(64))].into(),
                    approve: true,
                    comment: String::new(),
                    revision: None,
                }),
            ),
            &admin,
        ),
        Code::FailedPrecondition,
        "change \"CHG-404\" does not exist",
    )
    .await;
    // A wire-level subject that is not a digest.
    let mut bad = pb::Event {
        event_id: "c1".into(),
        claimed_time_unix_nanos: now_nanos(),
        signer: "admin".into(),
        body: Some(pb::event::Body::ChangeOpened(pb::ChangeOpened {
            change_id: "CHG-1".into(),
            artifact_digests: vec!["sha256:XYZ".into()],
            environments: vec!["prod".into()],
            ..Default::default()
        })),
    };
    let wire = |e: &pb::Event| {
        use prost::Message as _;
        crate::common::signed_bytes(e.encode_to_vec(), &admin)
    };
    expect_refused(
        &s,
        wire(&bad),
        Code::InvalidArgument,
        "change_opened.artifact_digests[0]",
    )
    .await;
    bad.body = Some(pb::event::Body::ChangeOpened(pb::ChangeOpened {
        change_id: "CHG 1".into(),
        commits: vec!["0123456789abcdef0123456789abcdef01234567".into()],
        environments: vec!["prod".into()],
        ..Default::default()
    }));
    expect_refused(
        &s,
        wire(&bad),
        Code::InvalidArgument,
        "change_opened.change_id",
    )
    .await;
    // A name that shows as another: U+034F (combining grapheme joiner)
    // inside "prod" looks like prod on every page and never matches it.
    bad.body = Some(pb::event::Body::ChangeOpened(pb::ChangeOpened {
        change_id: "CHG-1".into(),
        commits: vec!["0123456789abcdef0123456789abcdef01234567".into()],
        environments: vec!["staging".into(), "pr\u{34f}od".into()],
        ..Default::default()
    }));
    expect_refused(
        &s,
        wire(&bad),
        Code::InvalidArgument,
        "change_opened.environments: \"pr[U+034F]od\" contains U+034F, a character that shows as nothing",
    )
    .await;
    // A repository with whitespace could never agree with the names that
    // commits, CI runs and rules carry.
    bad.body = Some(pb::event::Body::ChangeOpened(pb::ChangeOpened {
        change_id: "CHG-1".into(),
        repository: "github.com/acme/payments ".into(),
        commits: vec!["0123456789abcdef0123456789abcdef01234567".into()],
        environments: vec!["prod".into()],
        ..Default::default()
    }));
    expect_refused(
        &s,
        wire(&bad),
        Code::InvalidArgument,
        "change_opened.repository: \"github.com/acme/payments \" contains whitespace",
    )
    .await;

    // Authorize: every refusal names the field.
    let mut g = s.conn().governance().await.unwrap();
    let ok = pb::AuthorizeRequest {
        environment: "prod".into(),
        subjects: vec![format!("sha256:{}", "a".repeat(64))],
        actor: "admin".into(),
        ..Default::default()
    };
    for (req, needle) in [
        (
            pb::AuthorizeRequest {
                subjects: vec![],
                ..ok.clone()
            },
            "subjects: name the artifact",
        ),
        (
            pb::AuthorizeRequest {
                subjects: vec!["sha256:1".into()],
                ..ok.clone()
            },
            "subjects[0]",
        ),
        (
            pb::AuthorizeRequest {
                actor: "Not An Id".into(),
                ..ok.clone()
            },
            "actor",
        ),
        (
            pb::AuthorizeRequest {
                environment: String::new(),
                ..ok.clone()
            },
            "environment: must not be empty",
        ),
        (
            pb::AuthorizeRequest {
                change_id: "a/b".into(),
                ..ok.clone()
            },
            "change_id",
        ),
    ] {
        let e = g.authorize(req).await.expect_err(needle);
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        assert!(
            e.message().contains(needle),
            "{} lacks {needle}",
            e.message()
        );
    }
    // A well-formed question under the built-in default policy: denied, and why.
    let d = g.authorize(ok).await.unwrap().into_inner();
    assert_eq!(d.verdict, pb::Verdict::Deny as i32);
    assert_eq!(d.policy_version, 1);
    assert_eq!(
        d.reasons,
        ["no rule matches this request; unmatched requests are denied"]
    );
    let e = g
        .get_change(pb::GetChangeRequest {
            change_id: "CHG-404".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = g
        .list_obligations(pb::ListObligationsRequest {
            status: "late".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

/// The author line of a commit is free text: alice can commit as "Bob" and
/// approve her own change, since only bob is then excluded. A rule with
/// `signed_commits = true` holds every commit to a key: her unsigned commit
/// is denied, and once she signs with her own key she is excluded as its
/// signer, whatever the author line says. Real git commits, a real server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_commits_hold_the_author_to_a_key() {
    let policy = r#"version = 1

[permissions]
register_principals = ["admin"]
change_roles = ["admin"]
propose_policy = ["admin"]
approve_policy = ["policy-admin"]
open_change = ["dev", "ci"]
approve = ["dev", "security"]
report = ["ci", "admin"]

[[rule]]
name = "prod"
match.environments = ["prod"]
approvals = 1
signed_commits = true
"#;
    let s = server().with_policy(policy).run().await;
    let p = developers(&s).await;
    add_principal(&s, &p, "ci", "ci", "ci", None).await;
    let repo = repo(&s.path());
    let repo_s = repo.display().to_string();
    let ingest = async || {
        let out = run_as(
            &s,
            &p,
            "ci",
            &[
                "git",
                "ingest",
                "--repo",
                &repo_s,
                "--ref",
                "main",
                "--repository",
                "github.com/acme/app",
            ],
        )
        .await;
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        out.stdout
    };
    let build_and_open = async |id: &str, sha: &str, d: &str| {
        for args in [
            &[
                "ci",
                "report",
                "--status",
                "passed",
                "--commit",
                sha,
                "--digest",
                d,
                "--repository",
                "github.com/acme/app",
            ][..],
            &[
                "change", "open", "--id", id, "--commit", sha, "--digest", d, "--env", "prod",
                "--title", "feature", "--ticket", "OPS-7",
            ][..],
        ] {
            let out = run_as(&s, &p, "ci", args).await;
            assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        }
    };

    // Alice commits unsigned, as "Bob", and approves her own change.
    let c1 = commit(&repo, "Bob", "bob@example.com", None, "a.txt", "one");
    assert!(ingest().await.contains(" unsigned "));
    let d1 = digest("signed-commits-1");
    build_and_open("CHG-1", &c1, &d1).await;
    assert_eq!(run_as(&s, &p, "alice", &["approve", "CHG-1"]).await.code, 0);
    let (code, dec) = authorize(&s, "prod", &d1, "ci").await;
    assert_eq!(code, 1, "{dec:#}");
    // Her approval counts (the author line names bob, not her): the
    // signature requirement alone stands in the way.
    assert_eq!(dec["counted"][0]["approver"], "alice", "{dec:#}");
    assert_eq!(
        reasons(&dec),
        format!(
            "commit {} is unsigned; rule \"prod\" requires every commit of the change's code to be signed by a principal (signed_commits)",
            &c1[..12]
        )
    );

    // She signs the next one with her own key, still as "Bob": the
    // signature names her, so her approval does not count, and bob, named
    // by the author line, is excluded too. Carol's does.
    let key = docket::crypto::read_signing_key(Path::new(&p.key("alice"))).unwrap();
    let ssh = s.path().join("alice_ssh");
    write_openssh_key(&ssh, &key);
    let c2 = commit(&repo, "Bob", "bob@example.com", Some(&ssh), "a.txt", "two");
    let seen = ingest().await;
    let line = seen.lines().find(|l| l.starts_with(&c2[..12])).unwrap();
    assert!(line.contains(" verified "), "{line}");
    let signer = s.svc.with_state(|st| {
        let c = st.gov().commit(&c2).unwrap();
        (c.signature.clone(), c.signer_identity.clone())
    });
    assert_eq!(signer, ("verified".to_owned(), "alice".to_owned()));
    let d2 = digest("signed-commits-2");
    build_and_open("CHG-2", &c2, &d2).await;
    for who in ["alice", "bob"] {
        assert_eq!(run_as(&s, &p, who, &["approve", "CHG-2"]).await.code, 0);
    }
    let (code, dec) = authorize(&s, "prod", &d2, "ci").await;
    assert_eq!(code, 1, "{dec:#}");
    assert_eq!(
        reasons(&dec),
        "needs 1 approvals from distinct people; 0 counted"
    );
    // The reason says what each was of the commit.
    for (who, what) in [("alice", "signer"), ("bob", "author and committer")] {
        assert_eq!(
            not_counted(&dec, who),
            format!("{who} is the {what} of commit {}", &c2[..12])
        );
    }
    assert_eq!(run_as(&s, &p, "carol", &["approve", "CHG-2"]).await.code, 0);
    let (code, dec) = authorize(&s, "prod", &d2, "ci").await;
    assert_eq!(code, 0, "{dec:#}");
    assert_eq!(dec["counted"][0]["approver"], "carol", "{dec:#}");
    assert_eq!(dec["change_id"], "CHG-2");
}
