//! Evidence bundles (issue 4): export for each scope kind, online and
//! offline, byte-identical; offline verification; every kind of tampering
//! caught and named; the OSCAL file validated by compliance-trestle; the
//! HTML report rendered by headless Chromium.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use docket::api::convert::sign_event;
use docket::api::pb;
use docket::event::{
    Body, ChangeOpening, ChangeReview, ChangedPaths, CiRun, CiStatus, CommitObservation,
    CommitSignature, DeployRequest, Event, PrincipalId, PrincipalKind, PrincipalSpec, RecordId,
};
use docket::evidence::{self, BundleFailure, Control, Scope, Trust};
use docket::service::{Clock, ManualClock};
use ed25519_dalek::SigningKey;

use crate::common::{TestServer, now_nanos, server};

const DAY: i64 = 86_400_000_000_000;

pub const POLICY: &str = r#"version = 1
[permissions]
open_change = ["ci", "dev"]
approve = ["dev", "security"]
break_glass = ["sre"]
report = ["ci"]

[[rule]]
name = "prod"
match.environments = ["prod"]
approvals = 2
approver_roles = ["dev", "security"]
require_roles = [{ role = "security", count = 1 }]
ci_passed = true
promoted_from = "staging"

[[rule]]
name = "staging"
match.environments = ["staging"]
ci_passed = true
"#;

fn key(name: &str) -> SigningKey {
    SigningKey::from_bytes(&docket::crypto::blake3_256(name.as_bytes()))
}

/// A log with two changes over several days of (manual) time: CHG-1 passes
/// staging then prod on day 1; CHG-2 is denied prod on day 2, broken
/// through by dave on day 3 and reviewed late by carol on day 5.
pub struct Fixture {
    pub server: TestServer,
    pub clock: Arc<ManualClock>,
    pub t0: i64,
    /// Entry indices by name.
    pub at: BTreeMap<&'static str, u64>,
    n: u64,
}

impl Fixture {
    async fn append(&mut self, name: &'static str, signer: &str, body: Body) -> u64 {
        let signing = if signer == "admin" {
            self.server.admin_key()
        } else {
            key(signer)
        };
        self.append_with(name, signer, &signing, body).await
    }

    /// Appends `body` signed by `signer` with the key `signing`.
    async fn append_with(
        &mut self,
        name: &'static str,
        signer: &str,
        signing: &SigningKey,
        body: Body,
    ) -> u64 {
        self.n += 1;
        let ev = Event {
            event_id: format!("fx-{}-{name}", self.n),
            claimed_time_nanos: self.clock.now_nanos(),
            signer: PrincipalId::parse(signer).unwrap(),
            body,
        };
        let r = self
            .server
            .svc
            .append(sign_event(&ev, signing), "CN=test".into())
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        self.at.insert(name, r.index);
        r.index
    }

    async fn register(
        &mut self,
        id: &'static str,
        kind: PrincipalKind,
        role: &str,
        email: Option<&str>,
    ) -> u64 {
        self.append(
            id,
            "admin",
            Body::PrincipalRegistered(PrincipalSpec {
                id: PrincipalId::parse(id).unwrap(),
                kind,
                display_name: String::new(),
                roles: [role.to_owned()].into(),
                keys: vec![key(id).verifying_key()],
                emails: email.map(|e| e.to_owned()).into_iter().collect(),
            }),
        )
        .await
    }

    async fn build(&mut self, name: &'static str, author: &str, image: &str) -> (String, String) {
        let raw = format!(
            "tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\nauthor A <{author}> 1700000000 +0000\ncommitter A <{author}> 1700000000 +0000\n\n{name}\n"
        );
        let sha = docket::event::git::object_id(raw.as_bytes(), 40).unwrap();
        let commit = docket::event::git::parse_commit(raw.as_bytes()).unwrap();
        self.append(
            name,
            "ci",
            Body::CommitObserved(Box::new(CommitObservation {
                repository: "github.com/acme/payments".into(),
                sha: sha.clone(),
                raw: raw.into_bytes(),
                commit,
                changed: ChangedPaths::default(),
                signature: CommitSignature::unsigned(),
            })),
        )
        .await;
        let digest = format!(
            "sha256:{}",
            hex::encode(docket::crypto::blake3_256(image.as_bytes()))
        );
        self.append(
            "ci-run",
            "ci",
            Body::CiRunReported(CiRun {
                repository: "github.com/acme/payments".into(),
                commit: sha.clone(),
                artifact_digests: [digest.clone()].into(),
                status: CiStatus::Passed,
                provider: "github-actions".into(),
                pipeline: "build".into(),
                run_id: name.into(),
                url: "https://github.com/acme/payments/actions/runs/1".into(),
                git_ref: "refs/heads/main".into(),
            }),
        )
        .await;
        (sha, digest)
    }

    async fn open(&mut self, name: &'static str, id: &str, sha: &str, digest: &str) {
        self.append(
            name,
            "ci",
            Body::ChangeOpened(ChangeOpening {
                change_id: RecordId::parse(id).unwrap(),
                title: format!("{id} title"),
                repository: "github.com/acme/payments".into(),
                commits: [sha.to_owned()].into(),
                artifact_digests: [digest.to_owned()].into(),
                environments: ["staging".to_owned(), "prod".to_owned()].into(),
                ticket: format!("OPS-{id}"),
                description: String::new(),
            }),
        )
        .await;
    }

    async fn approve(&mut self, name: &'static str, who: &str, id: &str, seen: &[&String]) {
        self.append(
            name,
            who,
            Body::ChangeReviewed(ChangeReview {
                change_id: RecordId::parse(id).unwrap(),
                seen_subjects: seen.iter().map(|s| s.to_string()).collect(),
                approve: true,
                comment: "looks right".into(),
                revision: None,
            }),
        )
        .await;
    }

    async fn deploy(
        &mut self,
        name: &'static str,
        who: &str,
        env: &str,
        digest: &str,
        glass: bool,
    ) -> u64 {
        self.append(
            name,
            who,
            Body::DeployRequested(DeployRequest {
                action: "deploy".into(),
                environment: env.into(),
                repository: Some("github.com/acme/payments".into()),
                kind: Some("Deployment".into()),
                namespace: Some("payments".into()),
                subjects: [digest.to_owned()].into(),
                change_id: None,
                break_glass: glass,
                justification: if glass {
                    "payments outage INC-7".into()
                } else {
                    String::new()
                },
            }),
        )
        .await
    }

    /// The one commit the current revision of change `id` binds.
    fn commit_of(&self, id: &str) -> String {
        self.server.svc.with_state(|st| {
            let cur = st.gov().change(id).unwrap().current();
            assert_eq!(cur.commits.len(), 1, "{id}");
            cur.commits.first().unwrap().clone()
        })
    }

    fn day(&self, d: i64) -> i64 {
        self.t0 + d * DAY
    }
}

impl Fixture {
    /// A server under `policy` on a manual clock, with no entries of ours.
    async fn start(policy: &str) -> Fixture {
        let t0 = now_nanos();
        let clock = Arc::new(ManualClock::new(t0));
        let server = server()
            .with_clock(clock.clone())
            .with_policy(policy)
            .run()
            .await;
        Fixture {
            server,
            clock,
            t0,
            at: BTreeMap::new(),
            n: 0,
        }
    }
}

pub async fn fixture() -> Fixture {
    let mut f = Fixture::start(POLICY).await;
    f.register(
        "alice",
        PrincipalKind::Human,
        "dev",
        Some("alice@example.com"),
    )
    .await;
    f.register("bob", PrincipalKind::Human, "dev", Some("bob@example.com"))
        .await;
    f.register(
        "carol",
        PrincipalKind::Human,
        "security",
        Some("carol@example.com"),
    )
    .await;
    f.register("dave", PrincipalKind::Human, "sre", None).await;
    f.register("ci", PrincipalKind::Ci, "ci", None).await;

    f.clock.set(f.day(1));
    let (c1, d1) = f.build("commit-1", "alice@example.com", "image-1").await;
    f.open("open-1", "CHG-1", &c1, &d1).await;
    f.approve("alice-1", "alice", "CHG-1", &[&c1, &d1]).await;
    f.approve("bob-1", "bob", "CHG-1", &[&c1, &d1]).await;
    f.approve("carol-1", "carol", "CHG-1", &[&c1, &d1]).await;
    f.deploy("staging-1", "ci", "staging", &d1, false).await;
    f.deploy("prod-1", "ci", "prod", &d1, false).await;

    f.clock.set(f.day(2));
    let (c2, d2) = f.build("commit-2", "bob@example.com", "image-2").await;
    f.open("open-2", "CHG-2", &c2, &d2).await;
    f.approve("alice-2", "alice", "CHG-2", &[&c2, &d2]).await;
    // An entry no CHG-2 bundle needs, right before its deployment, so a
    // bundle's fold has a gap there (decisions must not depend on it).
    f.append(
        "unrelated",
        "admin",
        Body::Annotation {
            subject: "repo/other".into(),
            kind: "note".into(),
            text: "unrelated".into(),
            attributes: Default::default(),
        },
    )
    .await;
    f.deploy("prod-2-denied", "ci", "prod", &d2, false).await;

    f.clock.set(f.day(3));
    f.deploy("glass", "dave", "prod", &d2, true).await;
    f.clock.set(f.day(5));
    let glass = f.at["glass"];
    f.append(
        "late-review",
        "carol",
        Body::BreakGlassReviewed(docket::event::BreakGlassReview {
            deployment_index: glass,
            justified: true,
            comment: "outage fix was right".into(),
        }),
    )
    .await;
    f.append(
        "note",
        "admin",
        Body::Annotation {
            subject: "repo/payments".into(),
            kind: "note".into(),
            text: "quarter closed".into(),
            attributes: Default::default(),
        },
    )
    .await;
    // The log ends with a redeployment of CHG-1's digest: every change
    // bundle carries the last entry to prove its time, so CHG-2's bundle
    // must bring the facts this decision rests on too.
    f.deploy("last", "ci", "staging", &d1, false).await;
    f
}

/// An unfiltered period scope of an `ExportEvidence` request.
fn period_pb(from: i64, to: i64) -> pb::export_evidence_request::Scope {
    pb::export_evidence_request::Scope::Period(pb::PeriodScope {
        from_unix_nanos: from,
        to_unix_nanos: to,
        ..Default::default()
    })
}

async fn export_online(s: &TestServer, scope: pb::export_evidence_request::Scope) -> Vec<u8> {
    export_request(
        s,
        pb::ExportEvidenceRequest {
            scope: Some(scope),
            progress: false,
            complete: false,
            since_checkpoint: String::new(),
        },
    )
    .await
}

/// A complete change bundle, over gRPC.
async fn export_complete(s: &TestServer, change: &str) -> Vec<u8> {
    export_request(
        s,
        pb::ExportEvidenceRequest {
            scope: Some(pb::export_evidence_request::Scope::ChangeId(change.into())),
            progress: false,
            complete: true,
            since_checkpoint: String::new(),
        },
    )
    .await
}

async fn export_request(s: &TestServer, request: pb::ExportEvidenceRequest) -> Vec<u8> {
    let mut g = s.conn().governance().await.unwrap();
    let mut stream = g.export_evidence(request).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(c) = stream.message().await.unwrap() {
        assert_eq!(c.offset, out.len() as u64);
        out.extend_from_slice(&c.data);
        assert!(out.len() as u64 <= c.total_bytes);
    }
    out
}

fn trust(s: &TestServer) -> Trust {
    Trust::Key(s.verifier())
}

fn json(files: &BTreeMap<String, Vec<u8>>, path: &str) -> serde_json::Value {
    serde_json::from_slice(&files[path]).unwrap()
}

/// Re-seals edited files: new manifest digests, signed with the log key an
/// insider would hold. Only the checks after the manifest can then notice.
fn reseal(data: &docket::datadir::DataDir, mut files: BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let mut manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let list = manifest["files"].as_array_mut().unwrap();
    for f in list.iter_mut() {
        let p = f["path"].as_str().unwrap().to_owned();
        let b = &files[&p];
        f["size"] = b.len().into();
        f["blake3"] = hex::encode(docket::crypto::blake3_256(b)).into();
    }
    let mut bytes = serde_json::to_vec_pretty(&manifest).unwrap();
    bytes.push(b'\n');
    let cfg = data.config().unwrap();
    let signer = data.note_signer(&cfg).unwrap();
    files.insert(
        "manifest.sig".into(),
        docket::ledger::sign_manifest(&signer, &cfg.origin, &docket::crypto::blake3_256(&bytes))
            .into_bytes(),
    );
    files.insert("manifest.json".into(), bytes);
    evidence::pack(&files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_verify_each_scope_online_and_offline() {
    use pb::export_evidence_request::Scope as S;
    let f = fixture().await;
    let s = &f.server;
    let change = export_online(s, S::ChangeId("CHG-1".into())).await;
    let period = pb::PeriodScope {
        from_unix_nanos: f.day(1),
        to_unix_nanos: f.day(2),
        environments: vec![],
        repositories: vec![],
    };
    let period_b = export_online(s, S::Period(period.clone())).await;
    let control = pb::ControlScope {
        control: "soc2-cc8.1".into(),
        from_unix_nanos: f.day(0),
        to_unix_nanos: f.day(6),
    };
    let control_b = export_online(s, S::Control(control.clone())).await;

    // Deterministic: the same scope over the same log, byte for byte.
    assert_eq!(change, export_online(s, S::ChangeId("CHG-1".into())).await);

    for b in [&change, &period_b, &control_b] {
        let r = evidence::verify(b, &trust(s)).unwrap();
        assert_eq!(r.origin, "docket.test/log");
        assert!(r.signatures >= 10 && r.decisions >= 1, "{r:?}");
    }

    // The change bundle: CHG-1's decisions, with who counted and why not.
    let files = evidence::unpack(&change).unwrap();
    let changes = json(&files, "facts/changes.json");
    assert_eq!(changes.as_array().unwrap().len(), 1);
    let c = &changes[0];
    assert_eq!(c["change"], "CHG-1");
    assert_eq!(c["authors"], serde_json::json!(["alice"]));
    assert_eq!(c["segregation_of_duties"]["outcome"], "satisfied");
    let decisions = json(&files, "facts/decisions.json");
    let prod = decisions
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["index"] == f.at["prod-1"])
        .unwrap();
    assert_eq!(prod["verdict"], "allow");
    assert_eq!(prod["in_scope"], true);
    let not_counted: Vec<_> = prod["not_counted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        not_counted,
        [format!(
            "alice is the author and committer of commit {}",
            &f.commit_of("CHG-1")[..12]
        )]
    );
    assert!(files.contains_key("policies/v1.toml"));
    // Identity history back to genesis travels with it; CHG-2's facts do not.
    let indices: BTreeSet<u64> = json(&files, "facts/entries.json")
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["index"].as_u64().unwrap())
        .collect();
    assert!(
        indices.contains(&0) && indices.contains(&f.at["alice"]) && indices.contains(&f.at["ci"])
    );
    assert!(!indices.contains(&f.at["open-2"]) && !indices.contains(&f.at["alice-2"]));

    // The period of day 1 holds exactly day 1's entries in scope. Its range
    // reaches back a lead-in of 24 h (the policy's break_glass_review), to
    // day 0, so it starts at genesis; it ends with the right boundary.
    let files = evidence::unpack(&period_b).unwrap();
    let entries = json(&files, "facts/entries.json");
    let in_scope: Vec<u64> = entries
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["in_scope"] == true)
        .map(|e| e["index"].as_u64().unwrap())
        .collect();
    let day1: Vec<u64> = (f.at["commit-1"]..=f.at["prod-1"]).collect();
    assert_eq!(in_scope, day1);
    let manifest = json(&files, "manifest.json");
    assert_eq!(manifest["range"]["start"], 0);
    assert_eq!(manifest["range"]["end"], f.at["prod-1"] + 2);

    // The control bundle sees the late review as a violation: CC8.1 not satisfied.
    let files = evidence::unpack(&control_b).unwrap();
    let ob = json(&files, "facts/obligations.json");
    assert_eq!(ob["violations"][0]["kind"], "late-review");
    let oscal = json(&files, "oscal/assessment-results.json");
    let finding = &oscal["assessment-results"]["results"][0]["findings"][0];
    assert_eq!(finding["target"]["target-id"], Control::Soc2Cc81.oscal_id());
    assert_eq!(finding["target"]["status"]["state"], "not-satisfied");

    // Offline, from the stopped server's data directory: the same bytes.
    let (_dir, data) = f.server.stop().await;
    let store = Arc::new(docket::ledger::SledStore::open(&data.db()).unwrap());
    let reader = docket::ledger::LedgerReader::new(store);
    let state = docket::service::current_state(&reader).unwrap();
    let signer = data.note_signer(&data.config().unwrap()).unwrap();
    let offline = |scope: Scope| {
        evidence::export_offline(&state, &reader, &signer, &scope, None, &Default::default())
            .unwrap()
    };
    assert_eq!(offline(Scope::change("CHG-1")), change);
    assert_eq!(
        offline(Scope::Period {
            from: period.from_unix_nanos,
            to: period.to_unix_nanos,
            environments: vec![],
            repositories: vec![]
        }),
        period_b
    );
    assert_eq!(
        offline(Scope::Control {
            control: Control::Soc2Cc81,
            from: control.from_unix_nanos,
            to: control.to_unix_nanos
        }),
        control_b
    );
    // Unknown scopes are refused, not exported empty.
    let e = evidence::export_offline(
        &state,
        &reader,
        &signer,
        &Scope::change("CHG-404"),
        None,
        &Default::default(),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("CHG-404 does not exist")
            || e.to_string().contains("\"CHG-404\" does not exist"),
        "{e}"
    );
}

/// Offsets of every member's content in a tar archive: (path, start, len).
fn members(bytes: &[u8]) -> Vec<(String, u64, u64)> {
    let mut a = tar::Archive::new(bytes);
    a.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path().unwrap().to_string_lossy().into_owned(),
                e.raw_file_position(),
                e.size(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_flipped_byte_is_caught_and_named() {
    use pb::export_evidence_request::Scope as S;
    let f = fixture().await;
    let s = &f.server;
    // From day 2, so that the range (with its 24 h lead-in) starts after
    // the registrations, which then travel with inclusion proofs.
    let period = export_online(s, period_pb(f.day(2), f.day(4))).await;
    let change = export_online(s, S::ChangeId("CHG-2".into())).await;
    let complete = export_complete(s, "CHG-2").await;
    let control = export_online(
        s,
        S::Control(pb::ControlScope {
            control: "soc2-cc8.1".into(),
            from_unix_nanos: f.day(2),
            to_unix_nanos: f.day(4),
        }),
    )
    .await;
    let t = trust(s);
    for bundle in [&change, &complete, &period, &control] {
        flip_every_member(bundle, &t);
    }
    // A bundle verified against another log's key fails at the manifest.
    let other =
        docket::crypto::NoteVerifier::new("docket.test/log", key("someone else").verifying_key());
    let e = evidence::verify(&period, &Trust::Key(other)).unwrap_err();
    assert_eq!(e.what, "manifest.sig");
    // A manifest too large to be one is refused before it is parsed (its
    // signature is not checked yet, so parsing it would cost memory for
    // anyone's bytes).
    let mut files = evidence::unpack(&period).unwrap();
    let mut huge = vec![b' '; 2 << 20];
    huge.extend_from_slice(&files["manifest.json"]);
    files.insert("manifest.json".into(), huge);
    let e = evidence::verify(&evidence::pack(&files), &t).unwrap_err();
    assert_eq!(e.what, "manifest.json", "{e}");
    assert!(e.reason.contains("a manifest is at most 1048576"), "{e}");
    // A signed manifest whose period is empty is refused, not reported as
    // a period with nothing in it.
    let mut files = evidence::unpack(&period).unwrap();
    let mut m: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    m["scope"]["to_unix_nanos"] = m["scope"]["from_unix_nanos"].clone();
    files.insert("manifest.json".into(), serde_json::to_vec(&m).unwrap());
    let e = evidence::verify(&reseal(&s.data, files), &t).unwrap_err();
    assert_eq!(
        (e.what.as_str(), e.reason.as_str()),
        (
            "manifest.json",
            "the scope's period is empty: from must be before to"
        )
    );
}

/// Flips bytes inside every member of `bundle` (first, last and five spread
/// offsets) and in 40 places of its headers and padding; each must fail
/// verification, naming the member (or the archive for a header).
fn flip_every_member(bundle: &[u8], t: &Trust) {
    assert!(evidence::verify(bundle, t).is_ok());
    let mut checked = 0;
    // Inside every file, at its first, last and five spread offsets.
    for (path, start, len) in members(bundle) {
        assert!(len > 0, "{path} is empty");
        let mut offsets: BTreeSet<u64> = [0, len - 1].into();
        for k in 1..=5 {
            offsets.insert(len * k / 6);
        }
        for off in offsets {
            let mut b = bundle.to_vec();
            b[(start + off) as usize] ^= 0x01;
            let e: BundleFailure = evidence::verify(&b, t).expect_err(&format!("{path}+{off}"));
            let named = e.what == path
                || (path == "manifest.sig" && e.what == "manifest.sig")
                || (path == "manifest.json" && e.what.starts_with("manifest"));
            assert!(named, "flipping {path} at {off} was reported as {e}");
            checked += 1;
        }
    }
    // In headers and padding: the archive is no longer canonical, or unreadable.
    let content: Vec<(u64, u64)> = members(bundle).iter().map(|(_, s, l)| (*s, *l)).collect();
    let outside: Vec<u64> = (0..bundle.len() as u64)
        .filter(|o| !content.iter().any(|(s, l)| s <= o && *o < s + l))
        .collect();
    for k in 0..40u64 {
        let off = outside[(k * 7919 % outside.len() as u64) as usize];
        let mut b = bundle.to_vec();
        b[off as usize] ^= 0x20;
        let e = evidence::verify(&b, t).expect_err(&format!("header byte {off}"));
        assert_eq!(e.what, "archive", "header byte {off}: {e}");
        checked += 1;
    }
    assert!(checked > 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_entries_fail_completeness_and_altered_decisions_fail_re_evaluation() {
    let f = fixture().await;
    let s = &f.server;
    let bundle = export_online(s, period_pb(f.day(1), f.day(3))).await;
    let t = trust(s);
    let files = evidence::unpack(&bundle).unwrap();

    // 1. One entry of the period dropped from entries.bin (manifest re-signed).
    let entries = decode_entries(&files["entries.bin"]);
    let victim = f.at["bob-1"];
    let mut fewer = files.clone();
    fewer.insert(
        "entries.bin".into(),
        encode_entries(
            &entries
                .iter()
                .filter(|(i, _)| *i != victim)
                .cloned()
                .collect::<Vec<_>>(),
        ),
    );
    let mut m: serde_json::Value = serde_json::from_slice(&fewer["manifest.json"]).unwrap();
    m["entries"] = (entries.len() - 1).into();
    fewer.insert(
        "manifest.json".into(),
        serde_json::to_vec_pretty(&m).unwrap(),
    );
    let e = evidence::verify(&reseal(&s.data, fewer), &t).unwrap_err();
    assert_eq!(e.what, "completeness", "{e}");
    assert!(
        e.reason
            .contains("entries.bin must hold every entry of the range"),
        "{e}"
    );

    // 2. A shorter range, honestly proven, that stops before the period ends
    //    (the last day-2 entries and the right boundary left out).
    let data = s.data.clone();
    let state_size = s.size().await;
    let reader = s.svc.reader().clone();
    let cp_note = reader.checkpoint_note(state_size).unwrap().unwrap();
    let cp =
        docket::ledger::Checkpoint::verify(&cp_note, &s.verifier(), "docket.test/log").unwrap();
    let scope = Scope::Period {
        from: f.day(1),
        to: f.day(3),
        environments: vec![],
        repositories: vec![],
    };
    let mut sel = s
        .svc
        .with_state(|st| evidence::select(st, &reader, &scope))
        .unwrap();
    let (start, end) = sel.range.unwrap();
    let cut = f.at["prod-2-denied"];
    assert!(cut < end);
    sel.range = Some((start, cut));
    sel.indices.retain(|i| *i < cut || *i >= end);
    let unsigned = evidence::export(&reader, &cp, &sel, &scope, None, &Default::default()).unwrap();
    let signer = data.note_signer(&data.config().unwrap()).unwrap();
    let note = docket::ledger::sign_manifest(&signer, "docket.test/log", &unsigned.digest());
    let e = evidence::verify(&unsigned.finish(note), &t).unwrap_err();
    assert_eq!(e.what, "completeness", "{e}");
    assert!(
        e.reason
            .contains("later entries of the period may have been left out"),
        "{e}"
    );

    //    And one that starts inside the period: its left boundary (the
    //    entry before the period) left out of the range, so entries at
    //    the period's start could be missing unnoticed.
    let mut sel = s
        .svc
        .with_state(|st| evidence::select(st, &reader, &scope))
        .unwrap();
    let (start, end) = sel.range.unwrap();
    sel.range = Some((start + 1, end));
    let unsigned = evidence::export(&reader, &cp, &sel, &scope, None, &Default::default()).unwrap();
    let note = docket::ledger::sign_manifest(&signer, "docket.test/log", &unsigned.digest());
    let e = evidence::verify(&unsigned.finish(note), &t).unwrap_err();
    assert_eq!(e.what, "completeness", "{e}");
    assert!(
        e.reason.contains(&format!(
            "entry {} is the first of the range but lies inside the period or its lead-in",
            start + 1
        )) && e.reason.contains("earlier entries may have been left out"),
        "{e}"
    );

    //    A proof for an entry the range already proves, and one longer
    //    than any tree of 2^64 leaves needs.
    let in_range = sel_range_start(&files) + 1;
    for (k, want) in [
        (
            0u8,
            format!("holds a proof for entry {in_range}, which the range proves"),
        ),
        (65, "at most 64 are possible".to_owned()),
    ] {
        // After the last record, so only what is wrong with it is named.
        let mut extra = files.clone();
        let mut proofs = extra["proofs.bin"].clone();
        proofs.extend_from_slice(&in_range.to_be_bytes());
        proofs.push(k);
        proofs.extend(std::iter::repeat_n(0u8, 32 * k as usize));
        extra.insert("proofs.bin".into(), proofs);
        let e = evidence::verify(&reseal(&s.data, extra), &t).unwrap_err();
        assert_eq!(e.what, "proofs.bin", "{e}");
        assert!(e.reason.contains(&want), "{e}");
    }

    //    A range is exactly the scope's: one that runs past the first entry
    //    at or after the period's end, one that starts earlier than the
    //    lead-in needs, and a later entry carried with its own proof (each
    //    would show later or other facts under the same scope) are refused.
    let e = evidence::verify(
        &forge_selection(s, &scope, |sel| {
            let (start, end) = sel.range.unwrap();
            sel.range = Some((start, end + 1));
            sel.indices.insert(end);
        }),
        &t,
    )
    .unwrap_err();
    assert_eq!(e.what, "range.bin", "{e}");
    assert!(
        e.reason.starts_with("the range runs past the period"),
        "{e}"
    );
    let note = f.at["note"];
    let e = evidence::verify(
        &forge_selection(s, &scope, |sel| {
            assert!(sel.range.unwrap().1 <= note);
            sel.indices.insert(note);
        }),
        &t,
    )
    .unwrap_err();
    assert_eq!(e.what, format!("entry {note}"), "{e}");
    assert!(e.reason.starts_with("lies after the range"), "{e}");
    let day2 = Scope::Period {
        from: f.day(2),
        to: f.day(3),
        environments: vec![],
        repositories: vec![],
    };
    let e = evidence::verify(
        &forge_selection(s, &day2, |sel| {
            let (start, end) = sel.range.unwrap();
            assert!(start > 0);
            sel.range = Some((start - 1, end));
            sel.indices.insert(start - 1);
        }),
        &t,
    )
    .unwrap_err();
    assert_eq!(e.what, "range.bin", "{e}");
    assert!(
        e.reason
            .starts_with("the range starts earlier than the period and its lead-in need"),
        "{e}"
    );

    // 3. A decision rewritten (deny → allow), manifest re-signed: only the
    //    re-evaluation from the bundle's facts can notice, and it does.
    let denied = f.at["prod-2-denied"];
    let forged = with_decisions(&files, |x| {
        if x["index"] == denied {
            assert_eq!(x["verdict"], "deny");
            x["verdict"] = "allow".into();
            x["reasons"] = serde_json::json!(["rule \"prod\" is satisfied"]);
        }
    });
    let e = evidence::verify(&reseal(&s.data, forged), &t).unwrap_err();
    assert_eq!(e.what, "facts/decisions.json");
    assert!(
        e.reason
            .contains(&format!("entry {denied} differs from re-evaluating it"))
            && e.reason.contains("the bundle says allow")
            && e.reason.contains("re-evaluation gives deny"),
        "{e}"
    );

    //    Two decisions rewritten: both are listed, not only the first.
    let allowed = f.at["prod-1"];
    let forged = with_decisions(&files, |x| {
        if x["index"] == denied {
            x["verdict"] = "allow".into();
        }
        if x["index"] == allowed {
            x["verdict"] = "deny".into();
        }
    });
    let e = evidence::verify(&reseal(&s.data, forged), &t).unwrap_err();
    assert_eq!(e.what, "facts/decisions.json");
    assert!(
        e.reason
            .starts_with("2 recorded decisions differ from re-evaluating them")
            && e.reason
                .contains(&format!("entry {allowed}: the bundle says deny"))
            && e.reason
                .contains(&format!("entry {denied}: the bundle says allow")),
        "{e}"
    );

    //    Only who was counted changed (verdict, rule and reasons the
    //    same): the field that differs is named with both values.
    let forged = with_decisions(&files, |x| {
        if x["index"] == allowed {
            let counted = x["counted"].as_array_mut().unwrap();
            assert!(!counted.is_empty(), "{x}");
            counted[0]["approver"] = "mallory".into();
        }
    });
    let e = evidence::verify(&reseal(&s.data, forged), &t).unwrap_err();
    assert!(
        e.reason.contains(&format!(
            "entry {allowed} differs from re-evaluating it from the bundle's facts: counted: the bundle says ["
        )) && e.reason.contains("mallory")
            && !e.reason.contains("reasons:"),
        "{e}"
    );
    //    A decision listed twice is named as such.
    let mut twice = files.clone();
    let mut d: serde_json::Value = serde_json::from_slice(&files["facts/decisions.json"]).unwrap();
    let first = d[0].clone();
    d.as_array_mut().unwrap().push(first.clone());
    twice.insert(
        "facts/decisions.json".into(),
        serde_json::to_vec_pretty(&d).unwrap(),
    );
    let e = evidence::verify(&reseal(&s.data, twice), &t).unwrap_err();
    assert_eq!(
        e.reason,
        format!("holds two decisions for entry {}", first["index"])
    );

    // 4. An approval added to a derived file only (not in the log).
    let mut forged = files.clone();
    let mut c: serde_json::Value = serde_json::from_slice(&forged["facts/changes.json"]).unwrap();
    c[0]["reviews"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"reviewer": "mallory"}));
    forged.insert(
        "facts/changes.json".into(),
        serde_json::to_vec_pretty(&c).unwrap(),
    );
    let e = evidence::verify(&reseal(&s.data, forged), &t).unwrap_err();
    assert_eq!(e.what, "facts/changes.json");
}

/// The bundle's files with every decision of `facts/decisions.json` passed
/// through `edit` (the manifest is not touched; `reseal` re-signs it).
fn with_decisions(
    files: &BTreeMap<String, Vec<u8>>,
    edit: impl Fn(&mut serde_json::Value),
) -> BTreeMap<String, Vec<u8>> {
    let mut d: serde_json::Value = serde_json::from_slice(&files["facts/decisions.json"]).unwrap();
    d.as_array_mut().unwrap().iter_mut().for_each(edit);
    let mut bytes = serde_json::to_vec_pretty(&d).unwrap();
    bytes.push(b'\n');
    let mut forged = files.clone();
    forged.insert("facts/decisions.json".into(), bytes);
    forged
}

fn decode_entries(b: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut p = 0;
    while p < b.len() {
        let i = u64::from_be_bytes(b[p..p + 8].try_into().unwrap());
        let n = u32::from_be_bytes(b[p + 8..p + 12].try_into().unwrap()) as usize;
        out.push((i, b[p + 12..p + 12 + n].to_vec()));
        p += 12 + n;
    }
    out
}

/// How many entries concern a plain change bundle's change, as its
/// verification reports.
fn plain_result_entries(bundle: &[u8], t: &evidence::Trust) -> u64 {
    evidence::verify(bundle, t)
        .unwrap()
        .change_entries_proven
        .expect("the checkpoint signs change heads")
}

fn encode_entries(e: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut o = Vec::new();
    for (i, b) in e {
        o.extend_from_slice(&i.to_be_bytes());
        o.extend_from_slice(&(b.len() as u32).to_be_bytes());
        o.extend_from_slice(b);
    }
    o
}

/// Writes the bundle's members under `dir`.
fn unpack_to(bundle: &[u8], dir: &Path) {
    for (p, b) in evidence::unpack(bundle).unwrap() {
        let path = dir.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oscal_validates_with_compliance_trestle() {
    use pb::export_evidence_request::Scope as S;
    let f = fixture().await;
    let dir = tempfile::tempdir().unwrap();
    for (name, scope) in [
        ("change", S::ChangeId("CHG-2".into())),
        (
            "control",
            S::Control(pb::ControlScope {
                control: "hipaa-164.312b".into(),
                from_unix_nanos: f.day(0),
                to_unix_nanos: f.day(9),
            }),
        ),
    ] {
        let b = export_online(&f.server, scope).await;
        let d = dir.path().join(name);
        unpack_to(&b, &d);
        let file = d.join("oscal/assessment-results.json");
        let out = trestle(&file);
        assert!(
            out.status.success(),
            "trestle refused the {name} bundle's OSCAL (install it with `python3 -m pip install compliance-trestle==5.2.0`):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // The validator is not a rubber stamp: a broken copy fails.
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        v["assessment-results"]["results"][0]["findings"][0]["target"]["status"]["state"] =
            "fine".into();
        std::fs::write(&file, serde_json::to_vec(&v).unwrap()).unwrap();
        assert!(
            !trestle(&file).status.success(),
            "a broken OSCAL file validated"
        );
    }
}

/// Runs compliance-trestle (`tests/oscal/validate_oscal.py`) over an OSCAL
/// assessment-results file.
fn trestle(file: &Path) -> std::process::Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oscal/validate_oscal.py");
    std::process::Command::new("python3")
        .arg(&script)
        .arg(file)
        .output()
        .expect("python3")
}

/// Runs trestle over a bundle's OSCAL file; panics with its output if it
/// refuses it.
fn trestle_accepts(bundle: &[u8], what: &str) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    unpack_to(bundle, dir.path());
    let file = dir.path().join("oscal/assessment-results.json");
    let out = trestle(&file);
    assert!(
        out.status.success(),
        "trestle refused the {what} bundle's OSCAL:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap()
}

/// Break-glass obligations travel with period bundles in each state they
/// can be in at the bundle's time: open before the deadline, overdue after
/// it with no review, closed late, and closed on time but found
/// unjustified. A deployment made before a period, still unreviewed when
/// the period begins, is in the period that its deadline falls in (or
/// after), so an unreviewed break-glass near a period's end cannot fall
/// between two bundles. Each status and violation is in
/// `facts/obligations.json` and the report, a violation makes the CC8.1 and
/// A.8.32 findings not satisfied (not §164.312(b)'s), every bundle verifies
/// (with Docket's verifier and the independent one), and trestle accepts
/// every OSCAL file, for each control too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obligations_open_overdue_late_and_unjustified_travel_with_bundles() {
    use pb::export_evidence_request::Scope as S;
    let mut f = fixture().await;
    // A second break-glass (day 6), reviewed in time but found unjustified.
    f.clock.set(f.day(6));
    let (_, d3) = f.build("commit-3", "alice@example.com", "image-3").await;
    let glass2 = f.deploy("glass-2", "dave", "prod", &d3, true).await;
    f.clock.set(f.day(6) + DAY / 2);
    f.append(
        "unjustified",
        "carol",
        Body::BreakGlassReviewed(docket::event::BreakGlassReview {
            deployment_index: glass2,
            justified: false,
            comment: "no incident was open".into(),
        }),
    )
    .await;
    f.clock.set(f.day(7));
    f.append(
        "after",
        "admin",
        Body::Annotation {
            subject: "repo/payments".into(),
            kind: "note".into(),
            text: "after".into(),
            attributes: Default::default(),
        },
    )
    .await;
    let glass = f.at["glass"];
    let period = period_pb;
    let vkey = f.server.data.log_vkey();
    let cases = [
        // (from, to, glass's status, glass-2's status or none, violation kinds)
        (f.day(3), f.day(3) + DAY / 2, "open", None, vec![]),
        (
            f.day(3),
            f.day(4) + DAY / 2,
            "overdue",
            None,
            vec!["overdue-review"],
        ),
        (
            f.day(3),
            f.day(8),
            "closed-late",
            Some("closed"),
            vec!["late-review", "unjustified-break-glass"],
        ),
        // Deployed (day 3) before the period, unreviewed when it began,
        // due (day 4) inside it: the period's lead-in carries it.
        (
            f.day(3) + DAY / 2,
            f.day(4) + DAY / 2,
            "overdue",
            None,
            vec!["overdue-review"],
        ),
        // Due after the period ends: open throughout it, and listed.
        (f.day(3) + DAY / 4, f.day(3) + DAY / 2, "open", None, vec![]),
    ];
    for (from, to, status, status2, kinds) in cases {
        let what = format!(
            "period from day {:.2} to day {:.2}",
            (from - f.t0) as f64 / DAY as f64,
            (to - f.t0) as f64 / DAY as f64
        );
        let bundle = export_online(&f.server, period(from, to)).await;
        evidence::verify(&bundle, &trust(&f.server)).unwrap_or_else(|e| panic!("{what}: {e}"));
        let (code, out) = independent_verify(&bundle, &vkey);
        assert_eq!(code, Some(0), "{what}: independent verifier: {out}");
        let files = evidence::unpack(&bundle).unwrap();
        let ob = json(&files, "facts/obligations.json");
        let obligations = ob["obligations"].as_array().unwrap();
        let status_of = |i: u64| {
            obligations
                .iter()
                .find(|o| o["deployment_index"] == i)
                .map(|o| o["status"].as_str().unwrap().to_owned())
        };
        assert_eq!(status_of(glass).as_deref(), Some(status), "{what}: {ob}");
        assert_eq!(status_of(glass2).as_deref(), status2, "{what}: {ob}");
        let got: Vec<&str> = ob["violations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["kind"].as_str().unwrap())
            .collect();
        assert_eq!(got, kinds, "{what}: {ob}");
        let html = String::from_utf8(files["report.html"].clone()).unwrap();
        assert!(html.contains(&format!("review {status}")), "{what}: report");
        for v in ob["violations"].as_array().unwrap() {
            let d = v["description"].as_str().unwrap();
            assert!(
                d.starts_with("break-glass deployment to prod by dave (entry "),
                "{d}"
            );
            assert!(
                html.contains(v["kind"].as_str().unwrap()),
                "{what}: report lacks {v}"
            );
        }
        if status == "overdue" {
            let d = ob["violations"][0]["description"].as_str().unwrap();
            assert!(d.contains("no review by someone else; it was due "), "{d}");
        }
        if status2.is_some() {
            let d = ob["violations"][1]["description"].as_str().unwrap();
            assert!(
                d.ends_with(
                    "carol found it unjustified (entry {}): no incident was open"
                        .replace("{}", &f.at["unjustified"].to_string())
                        .as_str()
                ),
                "{d}"
            );
        }
        let oscal = trestle_accepts(&bundle, &what);
        let states: Vec<&str> = oscal["assessment-results"]["results"][0]["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["target"]["status"]["state"].as_str().unwrap())
            .collect();
        assert_eq!(states.len(), 3, "{what}: a finding per control");
        // CC8.1 and A.8.32 fail on any violation; §164.312(b) (audit
        // controls) holds for every bundle that verifies.
        let failing = states.iter().filter(|s| **s == "not-satisfied").count();
        assert_eq!(
            failing,
            if kinds.is_empty() { 0 } else { 2 },
            "{what}: {states:?}"
        );
    }
    // Each control over the whole period: its bundle verifies, trestle
    // accepts its OSCAL, and it names that one control.
    for control in ["soc2-cc8.1", "iso27001-a8.32", "hipaa-164.312b"] {
        let bundle = export_online(
            &f.server,
            S::Control(pb::ControlScope {
                control: control.into(),
                from_unix_nanos: f.day(0),
                to_unix_nanos: f.day(9),
            }),
        )
        .await;
        evidence::verify(&bundle, &trust(&f.server)).unwrap_or_else(|e| panic!("{control}: {e}"));
        let oscal = trestle_accepts(&bundle, control);
        let findings = oscal["assessment-results"]["results"][0]["findings"]
            .as_array()
            .unwrap();
        assert_eq!(findings.len(), 1, "{control}: {findings:?}");
        let want = if control == "hipaa-164.312b" {
            "satisfied"
        } else {
            "not-satisfied" // the period holds violations
        };
        assert_eq!(findings[0]["target"]["status"]["state"], want, "{control}");
    }
}

/// Runs `tests/evidence/independent_verify.py` on `bundle`: its exit code
/// and everything it printed.
fn independent_verify(bundle: &[u8], vkey: &Path) -> (Option<i32>, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/evidence/independent_verify.py");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle.tar");
    std::fs::write(&path, bundle).unwrap();
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(&path)
        .arg("--log-key")
        .arg(vkey)
        .output()
        .expect("python3 with blake3 and cryptography (see .ci/run)");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A period bundle speaks for its period: the entry it carries as its
/// boundary (the first at or after the period's end) proves where the
/// period ends, but its facts come after it. An amendment there does not
/// make the period's approvals look stale, nor is a deployment there shown
/// as one of its change's; `facts/decisions.json` still lists it, out of
/// scope, as every carried deployment. Both verifiers agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_period_bundle_shows_its_changes_as_of_the_period_end() {
    let mut f = fixture().await;
    f.clock.set(f.day(6));
    let (c5, d5) = f.build("commit-5", "bob@example.com", "image-5").await;
    f.clock.set(f.day(7));
    f.append(
        "amend-1",
        "ci",
        Body::ChangeAmended(docket::event::ChangeAmendment {
            change_id: RecordId::parse("CHG-1").unwrap(),
            commits: [c5.clone()].into(),
            artifact_digests: [d5.clone()].into(),
            environments: BTreeSet::new(),
            reason: "after the period".into(),
        }),
    )
    .await;
    let s = &f.server;
    let vkey = s.data.log_vkey();
    let row = |files: &BTreeMap<String, Vec<u8>>, id: &str| {
        json(files, "facts/changes.json")
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["change"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} is not in changes.json"))
    };
    let in_scope = |files: &BTreeMap<String, Vec<u8>>, file: &str, index: u64| {
        json(files, file)
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["index"] == index)
            .map(|e| e["in_scope"].clone())
    };

    // [day 5, day 7): CHG-1 is redeployed in it ("last"); its amendment at
    // day 7 is the boundary.
    let bundle = export_online(s, period_pb(f.day(5), f.day(7))).await;
    let files = evidence::unpack(&bundle).unwrap();
    let amend = f.at["amend-1"];
    assert_eq!(
        sel_range_end(&files),
        amend + 1,
        "the amendment is the boundary"
    );
    let chg1 = row(&files, "CHG-1");
    assert_eq!(chg1["revision"], 1, "{chg1}");
    assert_eq!(chg1["revisions"].as_array().unwrap().len(), 1, "{chg1}");
    let reviews = chg1["reviews"].as_array().unwrap();
    assert!(
        !reviews.is_empty() && reviews.iter().all(|r| r["current_revision"] == true),
        "{chg1}"
    );
    assert_eq!(
        in_scope(&files, "facts/entries.json", amend),
        Some(false.into())
    );
    let (code, out) = independent_verify(&bundle, &vkey);
    assert_eq!(code, Some(0), "{out}");

    // [day 1, day 3): the break-glass deployment at day 3 is the boundary.
    let bundle = export_online(s, period_pb(f.day(1), f.day(3))).await;
    let files = evidence::unpack(&bundle).unwrap();
    let glass = f.at["glass"];
    assert_eq!(
        sel_range_end(&files),
        glass + 1,
        "the deployment is the boundary"
    );
    let chg2 = row(&files, "CHG-2");
    let deployed: Vec<u64> = chg2["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["index"].as_u64().unwrap())
        .collect();
    assert_eq!(deployed, vec![f.at["prod-2-denied"]], "{chg2}");
    assert_eq!(
        in_scope(&files, "facts/decisions.json", glass),
        Some(false.into()),
        "every carried deployment is listed"
    );
    assert!(
        json(&files, "facts/obligations.json")["obligations"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["deployment_index"] != glass),
        "the boundary's obligation comes after the period"
    );
    let (code, out) = independent_verify(&bundle, &vkey);
    assert_eq!(code, Some(0), "{out}");
}

/// An auditor who saved a checkpoint at the last audit pins it: a bundle
/// exported later with that note carries it and the consistency proof from
/// it, and verifies against it (with or without the key); a bundle without
/// the proof, a proof from another tree or an altered proof does not. The
/// export refuses a note the log key did not sign, and one the log no
/// longer matches (a rewritten or cut-back history), naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_proves_its_checkpoint_consistent_with_an_earlier_one() {
    let f = fixture().await;
    let s = &f.server;
    let dir = s.path().join("since");
    std::fs::create_dir_all(&dir).unwrap();
    let path = |n: &str| dir.join(n).display().to_string();
    let vkey = s.data.log_vkey().display().to_string();
    let earlier = path("earlier.txt");
    s.cli_ok(&["checkpoint", "--out", &earlier]).await;
    let note = std::fs::read_to_string(&earlier).unwrap();
    let m: u64 = note.lines().nth(1).unwrap().parse().unwrap();
    s.cli_ok(&["append", "--subject", "repo/x", "--text", "after the audit"])
        .await;
    s.cli_ok(&["append", "--subject", "repo/x", "--text", "and more"])
        .await;

    let export = |out: String, since: Option<String>| async move {
        let mut args = vec!["evidence", "export", "--change", "CHG-2", "--out", &out];
        if let Some(n) = &since {
            args.extend(["--since-checkpoint", n]);
        }
        s.cli(&args).await
    };
    let r = export(path("since.tar"), Some(earlier.clone())).await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(&format!("--checkpoint {earlier}")),
        "{}",
        r.stdout
    );
    let bytes = std::fs::read(path("since.tar")).unwrap();
    let files = evidence::unpack(&bytes).unwrap();
    assert_eq!(files["since/checkpoint.txt"], note.as_bytes());
    // Deterministic, the earlier checkpoint included.
    let r = export(path("since-again.tar"), Some(earlier.clone())).await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(std::fs::read(path("since-again.tar")).unwrap(), bytes);

    let verify = |file: String, extra: Vec<String>| async move {
        let mut args = vec!["evidence".to_owned(), "verify".to_owned(), file];
        args.extend(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        s.cli(&args).await
    };
    let pin = |n: &str| vec!["--checkpoint".to_owned(), n.to_owned()];
    let r = verify(path("since.tar"), pin(&earlier)).await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(&format!(
            "\nconsistency: the checkpoint extends the log's earlier checkpoint for tree size {m} (root "
        )),
        "{}",
        r.stdout
    );
    let mut with_key = pin(&earlier);
    with_key.extend(["--log-key".to_owned(), vkey.clone(), "--json".to_owned()]);
    let r = verify(path("since.tar"), with_key).await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v = r.json();
    assert_eq!(v["since"]["size"], m);
    assert!(v["checkpoint_size"].as_u64().unwrap() > m + 1);
    let r = verify(path("since.tar"), vec!["--log-key".into(), vkey.clone()]).await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("\nconsistency: "), "{}", r.stdout);
    let (code, said) = independent_verify(&bytes, Path::new(&vkey));
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains(&format!(
            "consistent with the earlier checkpoint of size {m}"
        )),
        "{said}"
    );

    // The note is carried verbatim, other signature lines too (here one with
    // an empty key name, which ledger-format §6.4 skips); both verifiers agree.
    let cosigned = path("cosigned.txt");
    std::fs::write(
        &cosigned,
        format!("{note}\u{2014}  {}\n", "QUJD".repeat(23)),
    )
    .unwrap();
    let r = export(path("cosigned.tar"), Some(cosigned.clone())).await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let r = verify(path("cosigned.tar"), pin(&cosigned)).await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let (code, said) = independent_verify(
        &std::fs::read(path("cosigned.tar")).unwrap(),
        Path::new(&vkey),
    );
    assert_eq!(code, Some(0), "{said}");

    // Without the proof, a later bundle does not verify against the pin.
    let r = export(path("plain.tar"), None).await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let r = verify(path("plain.tar"), pin(&earlier)).await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains(&format!(
            ", later than the pinned checkpoint's {m}, and the bundle carries no consistency proof from it"
        )),
        "{}",
        r.stderr
    );
    // A proof from the earlier tree is no proof from another pinned tree.
    let cfg = s.data.config().unwrap();
    let signer = s.data.note_signer(&cfg).unwrap();
    let other = path("other.txt");
    let older = docket::ledger::Checkpoint::sign(&signer, &cfg.origin, m - 1, &[7; 32]);
    std::fs::write(&other, &older.note).unwrap();
    let r = verify(path("since.tar"), pin(&other)).await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains(&format!(
            "FAILED: since/checkpoint.txt: is for tree size {m} (root "
        )) && r
            .stderr
            .contains(&format!("not the pinned checkpoint's size {}", m - 1)),
        "{}",
        r.stderr
    );
    // An altered proof fails, even re-sealed by an insider with the key.
    let mut bad = files.clone();
    let proof = bad.get_mut("since/consistency.bin").unwrap();
    assert!(proof.len() > 1, "a proof of at least one hash");
    proof[1] ^= 1;
    let forged = reseal(&s.data, bad);
    std::fs::write(path("forged.tar"), &forged).unwrap();
    let r = verify(path("forged.tar"), pin(&earlier)).await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains(&format!(
            "FAILED: since/consistency.bin: consistency proof from tree size {m} to "
        )),
        "{}",
        r.stderr
    );
    let (code, said) = independent_verify(&forged, Path::new(&vkey));
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("since/consistency.bin"), "{said}");
    // Half of the pair is not enough.
    let mut half = files.clone();
    half.remove("since/consistency.bin");
    let mut m_json: serde_json::Value = serde_json::from_slice(&half["manifest.json"]).unwrap();
    m_json["files"]
        .as_array_mut()
        .unwrap()
        .retain(|f| f["path"] != "since/consistency.bin");
    half.insert(
        "manifest.json".into(),
        serde_json::to_vec_pretty(&m_json).unwrap(),
    );
    let r = verify(
        {
            std::fs::write(path("half.tar"), reseal(&s.data, half)).unwrap();
            path("half.tar")
        },
        vec!["--log-key".into(), vkey.clone()],
    )
    .await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains(
            "FAILED: since/consistency.bin: missing, but the bundle carries since/checkpoint.txt"
        ),
        "{}",
        r.stderr
    );

    // The export refuses a note the log key did not sign...
    let unsigned = path("unsigned.txt");
    std::fs::write(
        &unsigned,
        note.replace(
            note.lines().nth(2).unwrap(),
            &format!("{}=", "B".repeat(43)),
        ),
    )
    .unwrap();
    let r = export(path("x.tar"), Some(unsigned)).await;
    assert_eq!(r.code, 65, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains("since_checkpoint: not a checkpoint signed by this log's key"),
        "{}",
        r.stderr
    );
    // ...and one the log no longer matches: another root at that size, or
    // a tree larger than the log's (both signed with the log's own key).
    let forked = path("forked.txt");
    std::fs::write(&forked, &older.note).unwrap();
    let r = export(path("x.tar"), Some(forked)).await;
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "since_checkpoint: this log's root at tree size {} is ",
            m - 1
        )) && r
            .stderr
            .contains("the log's history differs from the one that checkpoint was signed for"),
        "{}",
        r.stderr
    );
    let ahead = path("ahead.txt");
    let beyond = docket::ledger::Checkpoint::sign(&signer, &cfg.origin, 1 << 40, &[7; 32]);
    std::fs::write(&ahead, &beyond.note).unwrap();
    let r = export(path("x.tar"), Some(ahead)).await;
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains("the log holds fewer entries than when that checkpoint was signed"),
        "{}",
        r.stderr
    );
    assert!(!dir.join("x.tar").exists(), "nothing written on refusal");
}

/// `tests/evidence/independent_verify.py`, a verifier written in Python from
/// `docs/evidence-format.md` and `docs/ledger-format.md` alone (without the
/// Rust code), accepts the bundles of every scope kind (a period whose range
/// has proven hashes on both sides, with break-glass, obligations, a denied
/// deployment, a late review, a role granted, a key revoked and an amended
/// change) and names what broke in altered ones. It
/// does not re-evaluate decisions or regenerate report.html: the format
/// leaves those to the reference implementation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_verifier_written_from_the_docs_agrees() {
    use docket::event::{ChangeAmendment, PrincipalUpdate};
    use pb::export_evidence_request::Scope as S;
    let mut f = fixture().await;
    // Identity and change events the fixture lacks: a role granted, a key
    // added and the old one revoked, an amend and a review of it.
    f.clock.set(f.day(6));
    f.append(
        "grant",
        "admin",
        Body::PrincipalUpdated(PrincipalUpdate {
            principal: PrincipalId::parse("bob").unwrap(),
            grant_roles: ["security".to_owned()].into(),
            revoke_roles: BTreeSet::new(),
            add_emails: BTreeSet::new(),
            remove_emails: BTreeSet::new(),
            reason: "on call".into(),
        }),
    )
    .await;
    let dave2 = key("dave-2");
    f.append(
        "dave-key",
        "dave",
        Body::KeyRotated {
            principal: PrincipalId::parse("dave").unwrap(),
            new_key: dave2.verifying_key(),
            old_key: None,
        },
    )
    .await;
    f.append_with(
        "dave-revoke",
        "dave",
        &dave2,
        Body::KeyRevoked {
            principal: PrincipalId::parse("dave").unwrap(),
            key: key("dave").verifying_key(),
            reason: "laptop lost".into(),
        },
    )
    .await;
    let (c4, d4) = f.build("commit-4", "alice@example.com", "image-4").await;
    f.append(
        "amend-2",
        "ci",
        Body::ChangeAmended(ChangeAmendment {
            change_id: RecordId::parse("CHG-2").unwrap(),
            commits: [c4.clone()].into(),
            artifact_digests: [d4.clone()].into(),
            environments: BTreeSet::new(),
            reason: "second attempt".into(),
        }),
    )
    .await;
    f.approve("carol-4", "carol", "CHG-2", &[&c4, &d4]).await;
    f.deploy("staging-4", "ci", "staging", &d4, false).await;
    let s = &f.server;
    let vkey = s.data.log_vkey();
    let verify = |_name: &str, bytes: &[u8]| independent_verify(bytes, &vkey);
    let scopes = [
        ("change-1", S::ChangeId("CHG-1".into())),
        ("change-2", S::ChangeId("CHG-2".into())),
        ("period", period_pb(f.day(2), f.day(4) + DAY / 2)),
        ("whole", period_pb(f.day(0), f.day(9))),
        (
            "control",
            S::Control(pb::ControlScope {
                control: "soc2-cc8.1".into(),
                from_unix_nanos: f.day(1),
                to_unix_nanos: f.day(6),
            }),
        ),
    ];
    for (name, scope) in scopes {
        let bundle = export_online(s, scope).await;
        let (code, out) = verify(name, &bundle);
        assert_eq!(code, Some(0), "{name}: {out}");
        assert!(out.starts_with("OK: "), "{name}: {out}");
        // One byte of an entry changed: the manifest digest no longer
        // matches, and both verifiers name entries.bin.
        let (_, start, len) = members(&bundle)
            .into_iter()
            .find(|m| m.0 == "entries.bin")
            .unwrap();
        let mut bad = bundle.clone();
        bad[(start + len / 2) as usize] ^= 0x01;
        let reference = evidence::verify(&bad, &trust(s)).unwrap_err();
        let (code, out) = verify(&format!("{name}-bad"), &bad);
        assert_eq!(code, Some(1), "{name}: {out}");
        assert!(
            out.contains("FAILED") && out.contains(&reference.what),
            "{name}: {out} vs {reference}"
        );
    }
    // A complete change bundle: its range from the change's opening to the
    // checkpoint is checked; one that stops short is refused by both.
    let complete = export_complete(s, "CHG-2").await;
    let (code, out) = verify("change-2-complete", &complete);
    assert_eq!(code, Some(0), "{out}");
    // manifest.sig, the one member the manifest cannot list, with a second
    // signature line that a signed-note verifier would skip (another
    // signer's): refused by both, so no byte of a bundle changes unnoticed.
    let mut files = evidence::unpack(&complete).unwrap();
    let witness = docket::crypto::NoteSigner::new("witness.example/w", key("witness"));
    let cosigned = witness.sign("docket evidence manifest v1\n");
    let line = cosigned.rsplit_once("\n\n").unwrap().1.to_owned();
    files
        .get_mut("manifest.sig")
        .unwrap()
        .extend(line.as_bytes());
    let cosigned = evidence::pack(&files);
    let reference = evidence::verify(&cosigned, &trust(s)).unwrap_err();
    assert_eq!(reference.what, "manifest.sig", "{reference}");
    assert!(
        reference.reason.contains("exactly one signature line"),
        "{reference}"
    );
    let (code, out) = verify("change-2-cosigned", &cosigned);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("manifest.sig") && out.contains("exactly one signature line"),
        "{out}"
    );
    // The signature's base64 with the spare bits of its last character
    // set: lenient decoders read the same signature from other bytes, and
    // both verifiers refuse it.
    let mut files = evidence::unpack(&complete).unwrap();
    let sig = files.get_mut("manifest.sig").unwrap();
    let pad = sig.iter().rposition(|&b| b == b'=').unwrap();
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let at = B64.iter().position(|&c| c == sig[pad - 1]).unwrap();
    assert_eq!(at % 4, 0, "a 68-byte blob leaves two spare bits");
    sig[pad - 1] = B64[at + 1];
    let spare = evidence::pack(&files);
    let reference = evidence::verify(&spare, &trust(s)).unwrap_err();
    assert_eq!(reference.what, "manifest.sig", "{reference}");
    let (code, out) = verify("change-2-spare-bits", &spare);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("manifest.sig"), "{out}");
    let size = s.size().await;
    let short = forge_selection(s, &complete_scope("CHG-2"), |sel| {
        let (start, _) = sel.range.unwrap();
        sel.range = Some((start, size - 1));
    });
    let reference = evidence::verify(&short, &trust(s)).unwrap_err();
    assert_eq!(reference.what, "completeness", "{reference}");
    let (code, out) = verify("change-2-short", &short);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("FAILED") && out.contains("completeness") && out.contains("ends before"),
        "{out}"
    );
    // A period whose range runs past its end is refused by both.
    let period = Scope::Period {
        from: f.day(1),
        to: f.day(3),
        environments: vec![],
        repositories: vec![],
    };
    let long = forge_selection(s, &period, |sel| {
        let (start, end) = sel.range.unwrap();
        sel.range = Some((start, end + 1));
        sel.indices.insert(end);
    });
    assert_eq!(
        evidence::verify(&long, &trust(s)).unwrap_err().what,
        "range.bin"
    );
    let (code, out) = verify("period-long", &long);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("FAILED") && out.contains("range.bin") && out.contains("runs past"),
        "{out}"
    );
    // A range that claims 2^40 entries is refused by both on the count,
    // without listing its indices.
    let mut files = evidence::unpack(&long).unwrap();
    let huge = 1u64 << 40;
    files.get_mut("range.bin").unwrap()[8..16].copy_from_slice(&huge.to_be_bytes());
    let mut m: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    m["range"]["end"] = huge.into();
    let mut m = serde_json::to_vec_pretty(&m).unwrap();
    m.push(b'\n');
    files.insert("manifest.json".into(), m);
    let huge_range = reseal(&s.data, files);
    assert_eq!(
        evidence::verify(&huge_range, &trust(s)).unwrap_err().what,
        "completeness"
    );
    let (code, out) = verify("period-huge", &huge_range);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("FAILED") && out.contains("completeness"),
        "{out}"
    );
}

/// The end (exclusive) of a bundle's range, from its manifest.
fn sel_range_end(files: &BTreeMap<String, Vec<u8>>) -> u64 {
    json(files, "manifest.json")["range"]["end"]
        .as_u64()
        .unwrap()
}

/// The first index of a bundle's range, from its manifest.
fn sel_range_start(files: &BTreeMap<String, Vec<u8>>) -> u64 {
    json(files, "manifest.json")["range"]["start"]
        .as_u64()
        .unwrap()
}

fn complete_scope(id: &str) -> Scope {
    Scope::Change {
        id: id.into(),
        complete: true,
    }
}

/// A bundle for `scope` whose selection `edit` changed before export, with
/// the manifest signed by the log key: what an insider holding the key can
/// hand out.
fn forge_selection(
    s: &TestServer,
    scope: &Scope,
    edit: impl FnOnce(&mut evidence::Selection),
) -> Vec<u8> {
    let reader = s.svc.reader().clone();
    let mut sel = s
        .svc
        .with_state(|st| evidence::select(st, &reader, scope))
        .unwrap();
    let note = reader.checkpoint_note(sel.size).unwrap().unwrap();
    let cp = docket::ledger::Checkpoint::verify(&note, &s.verifier(), "docket.test/log").unwrap();
    edit(&mut sel);
    let unsigned = evidence::export(&reader, &cp, &sel, scope, None, &Default::default()).unwrap();
    let signer = s.data.note_signer(&s.data.config().unwrap()).unwrap();
    let note = docket::ledger::sign_manifest(&signer, "docket.test/log", &unsigned.digest());
    unsigned.finish(note)
}

/// A change bundle exported with `complete` carries every entry from the
/// change's opening to the checkpoint under one range proof, so an insider
/// holding the log key can no longer leave out what came after the
/// change's last deployment: here, the break-glass review that closed its
/// obligation. A plain change bundle shows it with the change head its
/// checkpoint signs (ledger-format §6.5), for the change's own entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complete_change_bundle_shows_nothing_concerning_the_change_was_left_out() {
    use pb::export_evidence_request::Scope as S;
    let f = fixture().await;
    let s = &f.server;
    let t = trust(s);
    let size = s.size().await;
    let (opened, late) = (f.at["open-2"], f.at["late-review"]);

    let complete = export_complete(s, "CHG-2").await;
    let r = evidence::verify(&complete, &t).unwrap();
    assert_eq!(r.range, Some((opened, size)));
    assert_eq!(
        r.scope_words,
        "change CHG-2, with every entry from its opening to the checkpoint"
    );
    let files = evidence::unpack(&complete).unwrap();
    assert_eq!(json(&files, "manifest.json")["scope"]["complete"], true);
    let carried: BTreeSet<u64> = decode_entries(&files["entries.bin"])
        .iter()
        .map(|(i, _)| *i)
        .collect();
    assert!((opened..size).all(|i| carried.contains(&i)));
    // The range's other entries are context: the change, its decisions and
    // its obligations read as in the plain bundle.
    let plain = export_online(s, S::ChangeId("CHG-2".into())).await;
    let plain_files = evidence::unpack(&plain).unwrap();
    assert!(
        json(&plain_files, "manifest.json")["scope"]
            .get("complete")
            .is_none()
    );
    for p in [
        "facts/changes.json",
        "facts/decisions.json",
        "facts/obligations.json",
    ] {
        assert_eq!(files[p], plain_files[p], "{p}");
    }
    let oscal = String::from_utf8_lossy(&files["oscal/assessment-results.json"]).into_owned();
    assert!(
        oscal.contains("every entry from the change's opening to the checkpoint is proven carried"),
        "{oscal}"
    );
    let report = String::from_utf8_lossy(&files["report.html"]).into_owned();
    assert!(
        report.contains(&format!(
            "consecutive entries from the one that opened change CHG-2 (entry {opened}) to the checkpoint"
        )),
        "{report}"
    );

    // The plain bundle's change head proves the change's own entries, and
    // its OSCAL finding and report say so.
    assert!(plain_files.contains_key("heads.bin"));
    let oscal = String::from_utf8_lossy(&plain_files["oscal/assessment-results.json"]).into_owned();
    assert!(
        oscal.contains(
            "every entry concerning the change is proven carried by the change head the checkpoint signs"
        ),
        "{oscal}"
    );
    let report = String::from_utf8_lossy(&plain_files["report.html"]).into_owned();
    assert!(
        report.contains(
            "The change head the checkpoint signs proves that every entry concerning the change"
        ),
        "{report}"
    );

    // The late review left out of a plain bundle: the exporter refuses to
    // make it, and a bundle edited to leave it out (entry and proof gone,
    // manifest signed again with the log key) fails on the change head
    // before anything else.
    let why = self_check_without(s, "CHG-2", late);
    assert!(why.contains("entries concerning change CHG-2"), "{why}");
    let lying = without_entry(&s.data, &plain, late);
    let e = evidence::verify(&lying, &t).unwrap_err();
    assert_eq!(e.what, "completeness", "{e}");
    let concerning = plain_result_entries(&plain, &t);
    assert!(
        e.reason.starts_with(&format!(
            "the bundle carries {} entries concerning change CHG-2, which do not make the change head the checkpoint signs",
            concerning - 1
        )),
        "{e}"
    );
    let (code, out) = independent_verify(&lying, &s.data.log_vkey());
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("completeness"), "{out}");
    // So does a bundle whose heads.bin names another leaf.
    let mut other_leaf = plain_files.clone();
    let mut hb = other_leaf["heads.bin"].clone();
    hb[7] ^= 1;
    other_leaf.insert("heads.bin".into(), hb);
    let e = evidence::verify(&reseal(&s.data, other_leaf), &t).unwrap_err();
    assert!(
        (e.what == "completeness" && e.reason.contains("leaf"))
            || (e.what == "heads.bin" && e.reason.contains("is not below")),
        "{e}"
    );
    // Left out of a complete bundle, it is missed from the range.
    let e = evidence::verify(
        &forge_selection(s, &complete_scope("CHG-2"), |sel| {
            assert!(sel.indices.remove(&late));
        }),
        &t,
    )
    .unwrap_err();
    assert_eq!(e.what, "completeness", "{e}");
    assert!(
        e.reason
            .contains("entries.bin must hold every entry of the range"),
        "{e}"
    );
    // Or the range cut just before it, and everything after it dropped but
    // the checkpoint's last entry (proven on its own).
    let e = evidence::verify(
        &forge_selection(s, &complete_scope("CHG-2"), |sel| {
            sel.range = Some((opened, late));
            sel.indices.retain(|i| *i < late || *i == size - 1);
        }),
        &t,
    )
    .unwrap_err();
    assert_eq!(e.what, "completeness", "{e}");
    assert_eq!(
        e.reason,
        format!(
            "the range ends before entry {late} but the checkpoint has {size} entries; later entries concerning change CHG-2 may have been left out"
        )
    );
    // A range that starts after the opening proves nothing of what lies
    // between.
    let e = evidence::verify(
        &forge_selection(s, &complete_scope("CHG-2"), |sel| {
            sel.range = Some((opened + 1, size));
        }),
        &t,
    )
    .unwrap_err();
    assert_eq!(e.what, "completeness", "{e}");
    assert_eq!(
        e.reason,
        format!(
            "the range starts at entry {} but change CHG-2 was opened by entry {opened}; a complete change bundle's range starts there",
            opened + 1
        )
    );
    // The scope and the range must agree: a range without `complete`, and
    // `complete` without a range, are refused; `false` is never written.
    let mut no_claim = files.clone();
    let mut m = json(&no_claim, "manifest.json");
    m["scope"].as_object_mut().unwrap().remove("complete");
    no_claim.insert(
        "manifest.json".into(),
        serde_json::to_vec_pretty(&m).unwrap(),
    );
    let e = evidence::verify(&reseal(&s.data, no_claim), &t).unwrap_err();
    assert_eq!(e.what, "range.bin", "{e}");
    assert!(
        e.reason.contains("unless its scope says it is complete"),
        "{e}"
    );
    let mut claim = plain_files.clone();
    let mut m = json(&claim, "manifest.json");
    m["scope"]["complete"] = true.into();
    claim.insert(
        "manifest.json".into(),
        serde_json::to_vec_pretty(&m).unwrap(),
    );
    let e = evidence::verify(&reseal(&s.data, claim), &t).unwrap_err();
    assert_eq!(e.what, "range.bin", "{e}");
    assert!(e.reason.contains("needs its range proof"), "{e}");
    let mut claim = plain_files.clone();
    let mut m = json(&claim, "manifest.json");
    m["scope"]["complete"] = false.into();
    claim.insert(
        "manifest.json".into(),
        serde_json::to_vec_pretty(&m).unwrap(),
    );
    let e = evidence::verify(&reseal(&s.data, claim), &t).unwrap_err();
    assert_eq!(e.what, "manifest.json", "{e}");

    // `complete` is for a change scope only.
    let mut g = s.conn().governance().await.unwrap();
    let e = g
        .export_evidence(pb::ExportEvidenceRequest {
            scope: Some(period_pb(f.day(1), f.day(3))),
            progress: false,
            complete: true,
            since_checkpoint: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("complete: "), "{e:?}");
}

/// A plain change bundle also proves every entry concerning the change's
/// subjects carried, with the subject heads its checkpoint signs
/// (ledger-format §6.6): a failed CI rerun of CHG-2's artifact, reported
/// after every decision about it, so that no decision basis counts it, can
/// no longer be left out, nor the review of a break-glass deployment of the
/// artifact decided on no change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_bundle_proves_every_entry_concerning_its_subjects() {
    use pb::export_evidence_request::Scope as S;
    let mut f = fixture().await;
    let (commit, digest) = f.server.svc.with_state(|st| {
        let r = st.gov().change("CHG-2").unwrap().current().clone();
        (
            r.commits.first().unwrap().clone(),
            r.digests.first().unwrap().clone(),
        )
    });
    // A break-glass deployment of CHG-2's image together with another one
    // that no change binds, so that it is decided on no change, and its
    // review: the review concerns the image's subject head only.
    let other = format!("sha256:{}", "ef".repeat(32));
    let glass = f
        .append(
            "glass-2",
            "dave",
            Body::DeployRequested(DeployRequest {
                action: "deploy".into(),
                environment: "prod".into(),
                repository: Some("github.com/acme/payments".into()),
                kind: None,
                namespace: None,
                subjects: [digest.clone(), other].into(),
                change_id: None,
                break_glass: true,
                justification: "payments outage INC-8".into(),
            }),
        )
        .await;
    let glass_review = f
        .append(
            "glass-2-review",
            "carol",
            Body::BreakGlassReviewed(docket::event::BreakGlassReview {
                deployment_index: glass,
                justified: false,
                comment: "should have waited".into(),
            }),
        )
        .await;
    let decided_on = f.server.svc.with_state(|st| {
        let d = st.gov().deployment(glass).unwrap();
        (d.decision.allow, d.decision.change.clone())
    });
    assert_eq!(decided_on, (true, None));
    // The rerun comes after every decision, so that no basis counts it.
    let rerun = f
        .append(
            "rerun",
            "ci",
            Body::CiRunReported(CiRun {
                repository: "github.com/acme/payments".into(),
                commit: commit.clone(),
                artifact_digests: [digest.clone()].into(),
                status: CiStatus::Failed,
                provider: "github-actions".into(),
                pipeline: "build".into(),
                run_id: "rerun".into(),
                url: "https://github.com/acme/payments/actions/runs/2".into(),
                git_ref: "refs/heads/main".into(),
            }),
        )
        .await;
    // Not the last entry, which every change bundle carries for its time.
    f.append(
        "after-rerun",
        "admin",
        Body::Annotation {
            subject: "repo/other".into(),
            kind: "note".into(),
            text: "later".into(),
            attributes: Default::default(),
        },
    )
    .await;
    let s = &f.server;
    let t = trust(s);
    let plain = export_online(s, S::ChangeId("CHG-2".into())).await;
    let files = evidence::unpack(&plain).unwrap();
    assert!(files.contains_key("subjects.bin"));
    let r = evidence::verify(&plain, &t).unwrap();
    // The commit and the image: the runs naming the image built it from the
    // same commit.
    assert_eq!(r.subjects_proven, Some(2));
    let oscal = String::from_utf8_lossy(&files["oscal/assessment-results.json"]).into_owned();
    assert!(
        oscal.contains(
            "by the change head the checkpoint signs, and every entry concerning its subjects by the subject heads"
        ),
        "{oscal}"
    );
    let report = String::from_utf8_lossy(&files["report.html"]).into_owned();
    assert!(
        report.contains("its subject heads prove the same of every entry concerning the change's commits and artifacts"),
        "{report}"
    );

    // Leaving `index` out: the exporter refuses the selection, and a bundle
    // edited to leave it out fails on `subject`'s head, in both verifiers.
    let left_out = |index: u64, subject: &str| {
        let why = self_check_without(s, "CHG-2", index);
        assert!(
            why.contains(&format!("concerning subject {subject}")),
            "{why}"
        );
        let lying = without_entry(&s.data, &plain, index);
        let e = evidence::verify(&lying, &t).unwrap_err();
        assert_eq!(e.what, "completeness", "{e}");
        assert!(
            e.reason.contains(&format!(
                "entries concerning subject {subject}, which do not make the subject head the checkpoint signs"
            )),
            "{e}"
        );
        let (code, out) = independent_verify(&lying, &s.data.log_vkey());
        assert_eq!(code, Some(1), "{out}");
        assert!(
            out.contains("completeness") && out.contains(subject),
            "{out}"
        );
    };
    // The rerun, on the commit's head (the first proven subject), though
    // the change head still holds: the rerun does not concern the change.
    left_out(rerun, &commit);
    // The review of the break-glass deployment decided on no change, which
    // no change head covers, on the image's.
    left_out(glass_review, &digest);

    // A subjects.bin that proves one subject fewer is refused for what it
    // names, before any leaf is checked.
    let mut fewer = files.clone();
    let sb = &files["subjects.bin"];
    let first = 2 + u16::from_be_bytes([sb[0], sb[1]]) as usize + 8;
    let first = first + 1 + 32 * sb[first] as usize;
    fewer.insert("subjects.bin".into(), sb[first..].to_vec());
    let e = evidence::verify(&reseal(&s.data, fewer), &t).unwrap_err();
    assert_eq!(e.what, "subjects.bin", "{e}");
    assert!(
        e.reason.starts_with(&format!(
            "it proves subjects [{digest}] but the proven subjects of change CHG-2 are [{commit}, {digest}]"
        )),
        "{e}"
    );
}

/// The fixture's whole period (days 0–9) exported and unpacked into a
/// temporary directory.
async fn whole_period_unpacked() -> tempfile::TempDir {
    let f = fixture().await;
    let b = export_online(&f.server, period_pb(f.day(0), f.day(9))).await;
    let dir = tempfile::tempdir().unwrap();
    unpack_to(&b, dir.path());
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_renders_in_headless_chromium() {
    let f = fixture().await;
    let b = export_online(&f.server, period_pb(f.day(0), f.day(9))).await;
    let dir = tempfile::tempdir().unwrap();
    unpack_to(&b, dir.path());
    let html = dir.path().join("report.html");
    let profile = dir.path().join("chromium-profile");
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--virtual-time-budget=2000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("--dump-dom")
            .arg(format!("file://{}", html.display()))
            .output(),
    )
    .await
    .expect("chromium finished")
    .expect("chromium is installed (Debian package `chromium`; .ci/run installs it)");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The change table with both changes, and the script ran (it fills the counter).
    assert!(dom.contains("id=\"change-table\""), "{dom}");
    assert!(
        dom.contains("<b>CHG-1</b>") && dom.contains("<b>CHG-2</b>"),
        "{dom}"
    );
    assert!(
        dom.contains("2 of 2 shown"),
        "the page's script did not run:\n{dom}"
    );
    // Verification status and how to re-check.
    assert!(dom.contains("id=\"verification-status\""));
    assert!(dom.contains("Verified when exported."));
    assert!(dom.contains("docket evidence verify BUNDLE.tar --log-key log.vkey"));
    // Segregation of duties and exceptions are shown.
    assert!(
        dom.contains("satisfied</span>: counted bob, carol"),
        "{dom}"
    );
    assert!(dom.contains("late-review"));
    assert!(dom.contains("Denied deployment"));
    // Deployed where and when, per change, each with its verdict.
    let row = |id: &str| {
        let start = dom
            .find(&format!("<tr><td data-sort=\"{id}\">"))
            .unwrap_or_else(|| panic!("no row for {id}:\n{dom}"));
        dom[start..start + dom[start..].find("</tr>").unwrap()].to_owned()
    };
    let when = |d: i64| docket::state::gov::fmt_nanos(d);
    let chg1 = row("CHG-1");
    for cell in [
        format!(
            "<span class=\"ok\">allowed</span> staging {}",
            when(f.day(1))
        ),
        format!("<span class=\"ok\">allowed</span> prod {}", when(f.day(1))),
        format!(
            "<span class=\"ok\">allowed</span> staging {}",
            when(f.day(5))
        ),
    ] {
        assert!(chg1.contains(&cell), "{cell} not in {chg1}");
    }
    let chg2 = row("CHG-2");
    for cell in [
        format!("<span class=\"bad\">denied</span> prod {}", when(f.day(2))),
        format!(
            "<span class=\"ok\">allowed</span> prod {} (break-glass)",
            when(f.day(3))
        ),
    ] {
        assert!(chg2.contains(&cell), "{cell} not in {chg2}");
    }
    // The control mapping: the late break-glass review is a violation, so
    // the change-management controls are not met; audit controls are.
    let controls = &dom[dom
        .find("<section id=\"controls\">")
        .expect("controls section")..];
    let controls = &controls[..controls.find("</section>").unwrap()];
    let change_mgmt = "<td class=\"bad\">not satisfied</td><td>2 change(s) in scope; 4 deployment(s) allowed under the policy in force, 1 denied; 1 violation(s); 0 break-glass review(s) still open and not yet due</td>";
    for title in [
        "SOC 2 CC8.1 — change management",
        "ISO/IEC 27001:2022 A.8.32 — change management",
    ] {
        assert!(
            controls.contains(&format!("<td>{title}</td>{change_mgmt}")),
            "{title}: {controls}"
        );
    }
    assert!(
        controls
            .contains("<td>HIPAA §164.312(b) — audit controls</td><td class=\"ok\">satisfied</td>"),
        "{controls}"
    );
    // Self-contained: no attribute, style or element that fetches anything.
    let raw = std::fs::read_to_string(&html).unwrap();
    for fetches in [
        "src=", "href=", "srcset=", "url(", "@import", "<link", "<iframe", "<object", "<embed",
        "<img", "<base",
    ] {
        assert!(!raw.contains(fetches), "report.html holds {fetches:?}");
    }
}

/// The commands an auditor and an operator run: export over gRPC, verify
/// with the log key, JSON results, exit codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_exports_and_verifies_with_clear_exit_codes() {
    let f = fixture().await;
    let s = &f.server;
    let dir = s.path().join("cli-evidence");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("chg2.tar");
    let (out_s, vkey) = (
        out.display().to_string(),
        s.data.log_vkey().display().to_string(),
    );
    let r = s
        .cli(&["evidence", "export", "--change", "CHG-2", "--out", &out_s])
        .await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let r = s
        .cli(&["evidence", "verify", &out_s, "--log-key", &vkey, "--json"])
        .await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v = r.json();
    assert_eq!(v["ok"], true);
    assert_eq!(v["scope"]["change"], "CHG-2");
    // CHG-2 was broken through and reviewed late: the bundle says so.
    assert_eq!(v["violations"], 1);
    let files = evidence::unpack(&std::fs::read(&out).unwrap()).unwrap();
    let changes = json(&files, "facts/changes.json");
    assert_eq!(
        changes[0]["segregation_of_duties"]["outcome"],
        "bypassed (break-glass)"
    );

    // A checkpoint the auditor saved earlier is enough on its own: the
    // bundle must be for exactly that tree, and genesis names the key.
    let pinned = dir.join("pinned.txt");
    s.cli_ok(&["checkpoint", "--out", pinned.to_str().unwrap()])
        .await;
    let r = s
        .cli(&[
            "evidence",
            "verify",
            &out_s,
            "--checkpoint",
            pinned.to_str().unwrap(),
        ])
        .await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    // The text names what the bundle is about and when it stops.
    assert!(
        r.stdout.contains("\nscope: change CHG-2; as of 20"),
        "{}",
        r.stdout
    );
    // A change bundle carries the log's last entry, so the whole history
    // is shown complete.
    let last = f.at["last"];
    assert!(
        r.stdout.contains(&format!(
            "\nhistory: every identity and policy entry up to entry {last} is carried\n"
        )),
        "{}",
        r.stdout
    );
    // A plain change bundle says what its change and subject heads show; a
    // complete one says what its range does.
    assert!(
        r.stdout.contains(
            "\ncompleteness: the 5 entries concerning change CHG-2 (its opening, amendments, reviews, \
             the deployments decided on it and their break-glass reviews) are all carried, as the \
             change head the checkpoint signs proves, and so is every entry concerning its 2 subjects \
             (their commit observations, CI runs, bindings and deployment requests), as the subject \
             heads prove\n"
        ),
        "{}",
        r.stdout
    );
    assert!(
        !r.stderr.contains("warning: this change bundle"),
        "{}",
        r.stderr
    );
    let complete = dir.join("chg2-complete.tar");
    let r = s
        .cli(&[
            "evidence",
            "export",
            "--change",
            "CHG-2",
            "--complete",
            "--out",
            complete.to_str().unwrap(),
        ])
        .await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let r = s
        .cli(&[
            "evidence",
            "verify",
            complete.to_str().unwrap(),
            "--log-key",
            &vkey,
        ])
        .await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let opened = f.at["open-2"];
    assert!(
        r.stdout.contains(&format!(
            "\ncompleteness: every entry from the one that opened change CHG-2 (entry {opened}) to the checkpoint is carried, so none concerning it from its opening on was left out; facts recorded before its opening (CI runs and commit observations of its subjects) are proven complete only as far as its recorded decisions read them\n"
        )) && r.stdout.contains(&format!(", range {opened}..")),
        "{}",
        r.stdout
    );
    assert!(!r.stderr.contains("warning"), "{}", r.stderr);
    // A period the log had not finished at the checkpoint verifies, says
    // the scope, and warns that the bundle stops before the period's end.
    let open_period = dir.join("open-period.tar");
    let (from, to) = (
        docket::state::gov::fmt_nanos(f.day(1)),
        docket::state::gov::fmt_nanos(f.day(400)),
    );
    let r = s
        .cli(&[
            "evidence",
            "export",
            "--from",
            &from,
            "--to",
            &to,
            "--env",
            "prod",
            "--out",
            open_period.to_str().unwrap(),
        ])
        .await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let r = s
        .cli(&[
            "evidence",
            "verify",
            open_period.to_str().unwrap(),
            "--log-key",
            &vkey,
        ])
        .await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(&format!(
            "scope: period {from} to {to}, environments prod; as of "
        )),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr
            .contains("warning: the log had not reached the end of the period at this checkpoint"),
        "{}",
        r.stderr
    );
    let r = s
        .cli(&[
            "evidence",
            "verify",
            open_period.to_str().unwrap(),
            "--log-key",
            &vkey,
            "--json",
        ])
        .await;
    assert_eq!(r.json()["period_unfinished"], true);
    // The report and the OSCAL file say so too, not only the CLI; the
    // independent verifier derives the same OSCAL words.
    let bytes = std::fs::read(&open_period).unwrap();
    let files = evidence::unpack(&bytes).unwrap();
    let report = String::from_utf8_lossy(&files["report.html"]).into_owned();
    assert!(
        report.contains("The log had not reached the end of the period (")
            && !report.contains("which proves that none of the period was left out"),
        "{report}"
    );
    // A period bundle is headed as one, and its warning closes the list of
    // checks rather than interrupting it.
    assert!(report.contains("<h1>Period evidence: "), "{report}");
    let status = report
        .split("id=\"verification-status\"")
        .nth(1)
        .and_then(|s| s.split("</p>").next())
        .unwrap();
    assert!(
        status
            .trim_end()
            .ends_with("Export it again after the period ends for all of it.</b>"),
        "{status}"
    );
    let oscal = String::from_utf8_lossy(&files["oscal/assessment-results.json"]).into_owned();
    assert!(
        oscal.contains("the period is proven complete only up to ")
            && !oscal.contains("proven complete by its boundary entries"),
        "{oscal}"
    );
    // Its findings name the period and the filter, read without the report.
    assert!(
        oscal.contains(&format!(
            "\"description\": \"Satisfied for the period {from} to {to}, environments prod: "
        )),
        "{oscal}"
    );
    let (code, said) = independent_verify(&bytes, std::path::Path::new(&vkey));
    assert_eq!(code, Some(0), "{said}");
    // ...and a pinned tree with another root is refused, key or no key.
    let note = std::fs::read_to_string(&pinned).unwrap();
    let root_line = note.lines().nth(2).unwrap().to_owned();
    let other = note.replace(&root_line, &format!("{}=", "A".repeat(43)));
    let forged = dir.join("other-root.txt");
    std::fs::write(&forged, other).unwrap();
    let r = s
        .cli(&[
            "evidence",
            "verify",
            &out_s,
            "--checkpoint",
            forged.to_str().unwrap(),
        ])
        .await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("FAILED: checkpoint.txt"), "{}", r.stderr);
    let r = s
        .cli(&[
            "evidence",
            "verify",
            &out_s,
            "--checkpoint",
            forged.to_str().unwrap(),
            "--log-key",
            &vkey,
        ])
        .await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("FAILED: pinned checkpoint"),
        "{}",
        r.stderr
    );
    // A later checkpoint is another tree: this bundle is not for it.
    s.cli_ok(&["append", "--subject", "repo/x", "--text", "later"])
        .await;
    s.cli_ok(&["checkpoint", "--out", pinned.to_str().unwrap()])
        .await;
    let r = s
        .cli(&[
            "evidence",
            "verify",
            &out_s,
            "--checkpoint",
            pinned.to_str().unwrap(),
        ])
        .await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("older than the pinned checkpoint's"),
        "{}",
        r.stderr
    );
    // Neither a key nor a checkpoint: usage.
    assert_eq!(s.cli(&["evidence", "verify", &out_s]).await.code, 64);
    // A device is not a bundle (/dev/zero would be read forever).
    let dev = s
        .cli(&["evidence", "verify", "/dev/zero", "--log-key", &vkey])
        .await;
    assert_eq!(dev.code, 64);
    assert!(
        dev.stderr.contains("/dev/zero: not a regular file"),
        "{}",
        dev.stderr
    );

    // One byte changed: exit 1, and the JSON names what broke.
    let mut b = std::fs::read(&out).unwrap();
    let (_, start, _) = members(&b)
        .into_iter()
        .find(|(p, _, _)| p == "facts/policies.json")
        .unwrap();
    b[start as usize + 3] ^= 1;
    let bad = dir.join("bad.tar");
    std::fs::write(&bad, &b).unwrap();
    let r = s
        .cli(&[
            "evidence",
            "verify",
            bad.to_str().unwrap(),
            "--log-key",
            &vkey,
            "--json",
        ])
        .await;
    assert_eq!(r.code, 1);
    let v = r.json();
    assert_eq!(
        (v["ok"].clone(), v["what"].clone()),
        (false.into(), "facts/policies.json".into())
    );
    assert!(
        r.stderr.contains("FAILED: facts/policies.json"),
        "{}",
        r.stderr
    );

    // Usage errors exit 64: filters that do not apply, unknown controls, bad dates.
    for args in [
        vec![
            "evidence", "export", "--change", "CHG-2", "--env", "prod", "--out", &out_s,
        ],
        vec![
            "evidence",
            "export",
            "--from",
            "2026-01-01",
            "--to",
            "2027-01-01",
            "--complete",
            "--out",
            &out_s,
        ],
        vec![
            "evidence",
            "export",
            "--from",
            "2026-01-01",
            "--to",
            "2027-01-01",
            "--control",
            "sox-404",
            "--out",
            &out_s,
        ],
        vec![
            "evidence",
            "export",
            "--from",
            "last tuesday",
            "--to",
            "2027-01-01",
            "--out",
            &out_s,
        ],
    ] {
        let r = s.cli(&args).await;
        assert_eq!(r.code, 64, "{args:?}: {}{}", r.stdout, r.stderr);
    }
    // An unknown change is the server's NOT_FOUND, reported as a failure;
    // with progress asked for, it ends the stream instead of the call.
    for progress in ["never", "always"] {
        let r = s
            .cli(&[
                "evidence",
                "export",
                "--change",
                "CHG-404",
                "--out",
                &out_s,
                "--progress",
                progress,
            ])
            .await;
        assert_eq!(r.code, 1, "{progress}: {}", r.stderr);
        assert!(
            r.stderr.contains("NotFound") && r.stderr.contains("CHG-404"),
            "{progress}: {}",
            r.stderr
        );
    }
    // A control over a period, and a period filtered by repository, from
    // the CLI: each verifies and says its scope; the control's report maps
    // that control only, and the filter leaves no decision of the fixture's
    // repository in scope.
    let (from, to) = (
        docket::state::gov::fmt_nanos(f.day(0)),
        docket::state::gov::fmt_nanos(f.day(9)),
    );
    let scoped = dir.join("scoped.tar");
    let scoped_s = scoped.to_str().unwrap();
    for (args, words) in [
        (
            ["--control", "soc2-cc8.1", "--from", &from, "--to", &to],
            format!("control soc2-cc8.1 over {from} to {to}"),
        ),
        (
            [
                "--from",
                &from,
                "--to",
                &to,
                "--repository",
                "github.com/other/*",
            ],
            format!("period {from} to {to}, repositories github.com/other/*"),
        ),
    ] {
        let mut export = vec!["evidence", "export", "--out", scoped_s];
        export.extend(args);
        let r = s.cli(&export).await;
        assert_eq!(r.code, 0, "{args:?}: {}{}", r.stdout, r.stderr);
        let r = s
            .cli(&["evidence", "verify", scoped_s, "--log-key", &vkey])
            .await;
        assert_eq!(r.code, 0, "{args:?}: {}{}", r.stdout, r.stderr);
        assert!(
            r.stdout.contains(&format!("\nscope: {words}; as of ")),
            "{args:?}: {}",
            r.stdout
        );
        let files = evidence::unpack(&std::fs::read(&scoped).unwrap()).unwrap();
        let in_scope = json(&files, "facts/decisions.json")
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["in_scope"] == true)
            .count();
        let report = String::from_utf8_lossy(&files["report.html"]).into_owned();
        if args[0] == "--control" {
            assert_eq!(in_scope, 5, "every deployment of the period");
            assert!(
                report.contains("<td>SOC 2 CC8.1 — change management</td>")
                    && !report.contains("<td>HIPAA §164.312(b) — audit controls</td>"),
                "{report}"
            );
        } else {
            assert_eq!(in_scope, 0, "no deployment of github.com/acme/payments");
        }
    }
}

/// The server reads a scope's entries without the state lock and completes
/// the selection with the state afterwards, by which time more entries may
/// be folded in: the selection must be the one for the size it started at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selection_ignores_entries_folded_after_its_size() {
    let mut f = fixture().await;
    let reader = f.server.svc.reader().clone();
    let scopes = [
        Scope::change("CHG-1"),
        Scope::Change {
            id: "CHG-1".into(),
            complete: true,
        },
        Scope::Period {
            from: f.day(1),
            to: f.day(9),
            environments: vec![],
            repositories: vec![],
        },
    ];
    let size = f.server.svc.with_state(|st| st.next_index());
    let before: Vec<_> = scopes
        .iter()
        .map(|sc| {
            f.server
                .svc
                .with_state(|st| evidence::select(st, &reader, sc))
                .unwrap()
        })
        .collect();
    let plans: Vec<_> = scopes
        .iter()
        .map(|sc| {
            f.server
                .svc
                .with_state(|st| evidence::Plan::of(st, sc))
                .unwrap()
        })
        .collect();
    let seeds: Vec<_> = scopes
        .iter()
        .zip(&plans)
        .map(|(sc, plan)| evidence::seeds(&reader, plan, sc, &Default::default()).unwrap())
        .collect();
    // Later facts about the same change and digest, and a new change binding it.
    f.clock.set(f.day(10));
    let d1 = format!(
        "sha256:{}",
        hex::encode(docket::crypto::blake3_256(b"image-1"))
    );
    f.deploy("later-staging", "ci", "staging", &d1, false).await;
    f.append(
        "CHG-3",
        "ci",
        Body::ChangeOpened(ChangeOpening {
            change_id: RecordId::parse("CHG-3").unwrap(),
            title: String::new(),
            repository: String::new(),
            commits: BTreeSet::new(),
            artifact_digests: [d1.clone()].into(),
            environments: ["prod".to_owned()].into(),
            ticket: String::new(),
            description: String::new(),
        }),
    )
    .await;
    // And an existing change amended to bind it: CHG-2 never bound image-1
    // below the size, so it stays out of CHG-1's selection.
    f.append(
        "amend-2-late",
        "ci",
        Body::ChangeAmended(docket::event::ChangeAmendment {
            change_id: RecordId::parse("CHG-2").unwrap(),
            commits: BTreeSet::new(),
            artifact_digests: [d1.clone()].into(),
            environments: BTreeSet::new(),
            reason: "ship image-1 instead".into(),
        }),
    )
    .await;
    assert!(
        f.server
            .svc
            .with_state(|st| st.gov().changes_ever_binding(&d1).any(|c| c.id == "CHG-2")),
        "the amendment binds image-1 to CHG-2"
    );
    for ((sc, seed), want) in scopes.iter().zip(seeds).zip(&before) {
        let got = f
            .server
            .svc
            .with_state(|st| evidence::select_with(st, seed, sc))
            .unwrap();
        assert_eq!(&got, want, "{sc:?}");
        assert!(got.indices.iter().all(|i| *i < size));
    }
    // A change opened after the size is unknown to a selection at that size.
    let seed = evidence::seeds(
        &reader,
        &plans[0],
        &Scope::change("CHG-3"),
        &Default::default(),
    )
    .unwrap();
    let e = f
        .server
        .svc
        .with_state(|st| evidence::select_with(st, seed, &Scope::change("CHG-3")))
        .unwrap_err();
    assert!(e.to_string().contains("CHG-3"), "{e}");
}

/// Period filters (environment and repository patterns) narrow the
/// decisions and changes a bundle reports, never the entries it carries, and
/// every filtered bundle verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn period_filters_narrow_decisions_and_changes_not_entries() {
    use pb::export_evidence_request::Scope as S;
    let f = fixture().await;
    let s = &f.server;
    let strs = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let export = |envs: &[&str], repos: &[&str]| {
        export_online(
            s,
            S::Period(pb::PeriodScope {
                from_unix_nanos: f.day(0),
                to_unix_nanos: f.day(9),
                environments: strs(envs),
                repositories: strs(repos),
            }),
        )
    };
    // (in-scope decisions by index with their environment, changes, carried entries)
    let summary = |b: &[u8]| {
        evidence::verify(b, &trust(s)).unwrap();
        let files = evidence::unpack(b).unwrap();
        let decisions: BTreeMap<u64, String> = json(&files, "facts/decisions.json")
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["in_scope"] == true)
            .map(|d| {
                (
                    d["index"].as_u64().unwrap(),
                    d["environment"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let changes: BTreeSet<String> = json(&files, "facts/changes.json")
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["change"].as_str().unwrap().to_owned())
            .collect();
        let carried: Vec<u64> = json(&files, "facts/entries.json")
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["index"].as_u64().unwrap())
            .collect();
        (decisions, changes, carried)
    };
    let all = summary(&export(&[], &[]).await);
    let envs: BTreeSet<&str> = all.0.values().map(String::as_str).collect();
    assert_eq!(envs, BTreeSet::from(["prod", "staging"]), "{all:?}");
    assert_eq!(all.1, BTreeSet::from(["CHG-1".into(), "CHG-2".into()]));
    assert!(all.0.contains_key(&f.at["prod-1"]) && all.0.contains_key(&f.at["prod-2-denied"]));

    let only = |env: &str| {
        all.0
            .iter()
            .filter(|(_, e)| e.as_str() == env)
            .map(|(i, e)| (*i, e.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    let prod = summary(&export(&["prod"], &[]).await);
    assert_eq!(prod.0, only("prod"));
    assert_eq!(prod.2, all.2, "filters never change the carried entries");
    let staging = summary(&export(&["stag*"], &[]).await);
    assert_eq!(staging.0, only("staging"));
    assert_eq!(staging.2, all.2);

    // Repository patterns: the change's repository (or the request's).
    let acme = summary(&export(&[], &["github.com/acme/*"]).await);
    assert!(acme.0.contains_key(&f.at["prod-1"]), "{acme:?}");
    assert!(acme.0.keys().all(|i| all.0.contains_key(i)));
    assert_eq!(acme.1, all.1);
    let other = summary(&export(&["prod"], &["github.com/other/*"]).await);
    assert!(other.0.is_empty() && other.1.is_empty(), "{other:?}");
    assert_eq!(other.2, all.2);

    // The prod break-glass of day 3 was reviewed (late) on day 5: a period
    // from day 4 holds that review, and reports the obligation only when
    // its filters keep prod.
    let obligations = |envs: &[&str]| {
        let scope = S::Period(pb::PeriodScope {
            from_unix_nanos: f.day(4) + 1,
            to_unix_nanos: f.day(9),
            environments: strs(envs),
            repositories: vec![],
        });
        async move {
            let b = export_online(s, scope).await;
            evidence::verify(&b, &trust(s)).unwrap();
            // The verifier written from the docs regenerates the same file.
            let (code, out) = independent_verify(&b, &s.data.log_vkey());
            assert_eq!(code, Some(0), "{out}");
            let files = evidence::unpack(&b).unwrap();
            let o = json(&files, "facts/obligations.json");
            let listed: Vec<u64> = o["obligations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["deployment_index"].as_u64().unwrap())
                .collect();
            (listed, o["violations"].as_array().unwrap().len())
        }
    };
    assert_eq!(obligations(&["prod"]).await, (vec![f.at["glass"]], 1));
    assert_eq!(obligations(&[]).await, (vec![f.at["glass"]], 1));
    assert_eq!(obligations(&["staging"]).await, (vec![], 0));
}

/// A change amended, after a deployment in a filtered period, so that it no
/// longer targets the filtered environment is still among the period's
/// changes: the decision in scope names it, and a report that lists the
/// decision must be able to show the change behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_period_lists_every_change_its_decisions_considered() {
    use pb::export_evidence_request::Scope as S;
    let mut f = fixture().await;
    let (commits, digests) = f.server.svc.with_state(|st| {
        let cur = st.gov().change("CHG-2").unwrap().current();
        (cur.commits.clone(), cur.digests.clone())
    });
    f.clock.set(f.day(6));
    f.append(
        "retarget-2",
        "ci",
        Body::ChangeAmended(docket::event::ChangeAmendment {
            change_id: RecordId::parse("CHG-2").unwrap(),
            commits,
            artifact_digests: digests,
            environments: ["staging".to_owned()].into(),
            reason: "staging only until the outage review".into(),
        }),
    )
    .await;
    let s = &f.server;
    let b = export_online(
        s,
        S::Period(pb::PeriodScope {
            from_unix_nanos: f.day(0),
            to_unix_nanos: f.day(9),
            environments: vec!["prod".into()],
            repositories: vec![],
        }),
    )
    .await;
    evidence::verify(&b, &trust(s)).unwrap();
    let (code, out) = independent_verify(&b, &s.data.log_vkey());
    assert_eq!(code, Some(0), "{out}");
    let files = evidence::unpack(&b).unwrap();
    let considered: BTreeSet<String> = json(&files, "facts/decisions.json")
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["in_scope"] == true)
        .filter_map(|d| d["change"].as_str().map(str::to_owned))
        .collect();
    assert!(considered.contains("CHG-2"), "{considered:?}");
    let changes = json(&files, "facts/changes.json");
    let listed: BTreeMap<&str, &serde_json::Value> = changes
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["change"].as_str().unwrap(), c))
        .collect();
    assert!(
        considered.iter().all(|c| listed.contains_key(c.as_str())),
        "every change a decision in scope names is listed: {considered:?} against {:?}",
        listed.keys()
    );
    // Listed as it stands at the period's end: staging only.
    let chg2 = serde_json::to_string(listed["CHG-2"]).unwrap();
    assert!(
        chg2.contains("staging only until the outage review"),
        "{chg2}"
    );
    let report = String::from_utf8(files["report.html"].clone()).unwrap();
    assert!(
        report.contains("<tr><td data-sort=\"CHG-2\"><b>CHG-2</b>"),
        "the report's change table has a row for it"
    );
}

/// An insider who holds the log key can re-sign checkpoints and manifests,
/// so a forged bundle can be consistent all the way up to its signatures.
/// What such an insider cannot forge is caught by the checks below the
/// manifest: principals' event signatures, chain links and the key history,
/// each named by its entry; and a proof edited after the manifest was made
/// is caught by the proof check that names its file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insider_with_the_log_key_cannot_forge_what_lies_below_it() {
    use docket::ledger::{Checkpoint, Entry, LedgerReader, SledStore, merkle};
    let f = fixture().await;
    let s = &f.server;
    let t = trust(s);
    let reader = s.svc.reader().clone();
    let size = s.svc.with_state(|st| st.next_index());
    let honest: Vec<Vec<u8>> = (0..size)
        .map(|i| reader.entry(i).unwrap().unwrap().0)
        .collect();
    // Its 24 h lead-in puts day 1 in the range; the registrations before
    // it travel with inclusion proofs.
    let scope = Scope::Period {
        from: f.day(2),
        to: f.day(3),
        environments: vec![],
        repositories: vec![],
    };
    let cfg = s.data.config().unwrap();
    let signer = s.data.note_signer(&cfg).unwrap();
    // The whole history rebuilt from `entries` (each later entry re-linked
    // to the one before it), a checkpoint over it signed with the log key,
    // and a period bundle exported from it with a manifest signed likewise.
    let forge = |mut entries: Vec<Vec<u8>>, relink_from: u64| -> Vec<u8> {
        for i in relink_from as usize..entries.len() {
            let mut e = Entry::decode(&entries[i]).unwrap();
            e.prev_leaf_hash = merkle::leaf_hash(&entries[i - 1]);
            entries[i] = e.encode().unwrap();
        }
        let leaves: Vec<[u8; 32]> = entries.iter().map(|b| merkle::leaf_hash(b)).collect();
        let cp = Checkpoint::sign(
            &signer,
            "docket.test/log",
            size,
            &crate::common::mth(&leaves),
        );
        let store = Arc::new(SledStore::temporary().unwrap());
        let list = entries
            .into_iter()
            .map(|b| {
                let id = docket::api::convert::decode_event(
                    &Entry::decode(&b).unwrap().envelope.payload,
                )
                .unwrap()
                .event_id;
                (b, id)
            })
            .collect();
        docket::ledger::import(&*store, list, &cp.note).unwrap();
        let forged = LedgerReader::new(store);
        let sel = s
            .svc
            .with_state(|st| evidence::select(st, &forged, &scope))
            .unwrap();
        let unsigned =
            evidence::export(&forged, &cp, &sel, &scope, None, &Default::default()).unwrap();
        let note = docket::ledger::sign_manifest(&signer, "docket.test/log", &unsigned.digest());
        unsigned.finish(note)
    };
    // Rebuilt without changes, the history verifies: the forger's tools work.
    let control = forge(honest.clone(), size);
    evidence::verify(&control, &t).unwrap();

    // bob's approval, inside the range (in the period's lead-in).
    let k = f.at["bob-1"];
    let with = |edit: &dyn Fn(&mut Entry)| {
        let mut entries = honest.clone();
        let mut e = Entry::decode(&entries[k as usize]).unwrap();
        edit(&mut e);
        entries[k as usize] = e.encode().unwrap();
        entries
    };
    let named = |bundle: Vec<u8>, needle: &str| {
        let e = evidence::verify(&bundle, &t).unwrap_err();
        assert_eq!(e.what, format!("entry {k}"), "{e}");
        assert!(e.reason.contains(needle), "{e}");
    };

    // 1. Its signature altered (one bit).
    named(
        forge(with(&|e| e.envelope.signatures[0].sig[7] ^= 1), k + 1),
        "no signature verifies (strict Ed25519 over DSSE PAE) with an active key of \"bob\"",
    );
    // 2. Re-signed by a key bob never held: a valid signature, wrong key.
    let mallory = SigningKey::from_bytes(&[7; 32]);
    named(
        forge(
            with(&|e| {
                let ev = docket::api::convert::decode_event(&e.envelope.payload).unwrap();
                e.envelope = sign_event(&ev, &mallory);
            }),
            k + 1,
        ),
        "no signature verifies (strict Ed25519 over DSSE PAE) with an active key of \"bob\"",
    );
    // 3. Its chain link broken (the entries after it still linked to it).
    named(
        forge(with(&|e| e.prev_leaf_hash[0] ^= 1), k + 1),
        "chain link",
    );

    // 4. A proof edited after the manifest was made and re-signed: the
    //    inclusion proofs and the range proof are checked against the
    //    checkpoint, not taken from the manifest.
    let files = evidence::unpack(&control).unwrap();
    for (member, what) in [("proofs.bin", "entry "), ("range.bin", "range.bin")] {
        let mut edited = files.clone();
        let b = edited.get_mut(member).unwrap();
        let at = b.len() - 5;
        b[at] ^= 1;
        let e = evidence::verify(&reseal(&s.data, edited), &t).unwrap_err();
        assert!(e.what.starts_with(what), "{member}: {e}");
        assert!(e.reason.contains("proof"), "{member}: {e}");
    }
}

/// Key and policy history travel with a bundle: bob rotates his key, a
/// second policy version is proposed and approved by two administrators,
/// and a change is approved with bob's new key and deployed under version 2.
/// Its bundle carries the rotation, both policy texts and the approval
/// trail, verifies offline, and its decisions name version 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotations_and_policy_versions_travel_with_the_bundle() {
    use docket::event::PolicyProposal;
    use pb::export_evidence_request::Scope as S;
    let mut f = fixture().await;
    f.clock.set(f.day(6));
    let bob = PrincipalId::parse("bob").unwrap();
    let bob2 = key("bob-2");
    f.append(
        "bob-rotates",
        "bob",
        Body::KeyRotated {
            principal: bob.clone(),
            new_key: bob2.verifying_key(),
            old_key: Some(key("bob").verifying_key()),
        },
    )
    .await;
    f.register("pa1", PrincipalKind::Human, "admin", None).await;
    // pa1 is a second identity administrator now: pa2's registration waits
    // for pa1's approval, and both entries travel with the bundle.
    let pa2_registered = f.register("pa2", PrincipalKind::Human, "admin", None).await;
    let pa2_approved = f
        .append(
            "pa1-approves-pa2",
            "pa1",
            Body::IdentityChangeApproved {
                entry: pa2_registered,
            },
        )
        .await;
    // A registration the admin recorded by mistake and withdrew before anyone
    // approved it: both entries travel (the verifier written from the docs
    // must decode and count the withdrawal), and zed never exists.
    let zed = f.register("zed", PrincipalKind::Human, "dev", None).await;
    let zed_withdrawn = f
        .append(
            "admin-withdraws-zed",
            "admin",
            Body::IdentityChangeWithdrawn {
                entry: zed,
                reason: "typo".into(),
            },
        )
        .await;
    assert_eq!(POLICY.matches("approvals = 2\n").count(), 1);
    let v2 = POLICY.replace("approvals = 2\n", "approvals = 1\n")
        + "\n[identity_changes]\nexpire_after = \"1d\"\n";
    let pol = RecordId::parse("POL-2").unwrap();
    f.append(
        "propose-v2",
        "admin",
        Body::PolicyProposed(PolicyProposal {
            proposal_id: pol.clone(),
            text: v2.clone(),
            base_version: 1,
            description: "prod: one approval, from security".into(),
        }),
    )
    .await;
    for who in ["pa1", "pa2"] {
        let name = if who == "pa1" {
            "pa1-approves"
        } else {
            "pa2-approves"
        };
        f.append(
            name,
            who,
            Body::PolicyApproved {
                proposal_id: pol.clone(),
            },
        )
        .await;
    }
    f.clock.set(f.day(7));
    let (c3, d3) = f.build("commit-3", "alice@example.com", "image-3").await;
    f.open("open-3", "CHG-3", &c3, &d3).await;
    let review = Body::ChangeReviewed(ChangeReview {
        change_id: RecordId::parse("CHG-3").unwrap(),
        seen_subjects: [c3.clone(), d3.clone()].into(),
        approve: true,
        comment: "new key".into(),
        revision: Some(1),
    });
    f.append_with("bob-3", "bob", &bob2, review).await;
    f.approve("carol-3", "carol", "CHG-3", &[&c3, &d3]).await;
    f.deploy("staging-3", "ci", "staging", &d3, false).await;
    let prod = f.deploy("prod-3", "ci", "prod", &d3, false).await;
    // Under version 2 an identity change waits a day at most: yan's
    // registration, approved 23 hours later, takes effect (and the verifier
    // written from the docs agrees); zoe's, approved 25 hours later, is
    // refused and never enters the log.
    f.clock.set(f.day(8));
    let yan = f.register("yan", PrincipalKind::Human, "dev", None).await;
    f.clock.set(f.day(9) - DAY / 24);
    let yan_approved = f
        .append(
            "pa1-approves-yan",
            "pa1",
            Body::IdentityChangeApproved { entry: yan },
        )
        .await;
    let zoe = f.register("zoe", PrincipalKind::Human, "dev", None).await;
    f.clock.set(f.day(10));
    let late = Event {
        event_id: "late-approval".into(),
        claimed_time_nanos: f.clock.now_nanos(),
        signer: PrincipalId::parse("pa1").unwrap(),
        body: Body::IdentityChangeApproved { entry: zoe },
    };
    let e = f
        .server
        .svc
        .append(sign_event(&late, &key("pa1")), "CN=test".into())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("the identity change at entry {zoe} expired at "))
            && e.contains("1d after it was recorded"),
        "{e}"
    );
    let s = &f.server;

    let bundle = export_online(s, S::ChangeId("CHG-3".into())).await;
    let report = evidence::verify(&bundle, &trust(s)).unwrap();
    // The verifier written from the docs alone reads the rotation and the
    // policy proposal and approvals too.
    let (code, out) = independent_verify(&bundle, &s.data.log_vkey());
    assert_eq!(code, Some(0), "{out}");
    assert!(report.decisions >= 2, "{report:?}");
    let files = evidence::unpack(&bundle).unwrap();
    let carried: BTreeSet<u64> = json(&files, "facts/entries.json")
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["index"].as_u64().unwrap())
        .collect();
    for name in [
        "bob",
        "bob-rotates",
        "propose-v2",
        "pa1-approves",
        "pa2-approves",
        "bob-3",
    ] {
        assert!(carried.contains(&f.at[name]), "{name} is not carried");
    }
    // pa2's keys are valid from the approval, not from the registration.
    assert!(carried.contains(&pa2_registered) && carried.contains(&pa2_approved));
    assert!(carried.contains(&zed) && carried.contains(&zed_withdrawn));
    assert!(carried.contains(&yan) && carried.contains(&yan_approved) && carried.contains(&zoe));
    let principals = json(&files, "facts/principals.json");
    assert!(
        principals
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["id"] != "zed" && p["id"] != "zoe"),
        "{principals}"
    );
    assert!(
        principals
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == "yan"),
        "{principals}"
    );
    assert_eq!(files["policies/v2.toml"], v2.as_bytes());
    assert!(files.contains_key("policies/v1.toml"));
    let policies = json(&files, "facts/policies.json");
    let trail = &policies[1]["proposal"];
    assert_eq!(policies[1]["version"], 2, "{policies}");
    assert_eq!(trail["proposer"], "admin", "{policies}");
    let approvers: Vec<&str> = trail["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["approver"].as_str().unwrap())
        .collect();
    assert_eq!(approvers, ["pa1", "pa2"]);
    let decision = json(&files, "facts/decisions.json")
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["index"] == prod)
        .cloned()
        .unwrap();
    assert_eq!(decision["verdict"], "allow", "{decision}");
    assert_eq!(decision["policy_version"], 2, "{decision}");
    let counted: Vec<&str> = decision["counted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["approver"].as_str().unwrap())
        .collect();
    assert!(counted.contains(&"carol"), "{decision}");
}

/// A bundle larger than one message of the server stream (1 MiB) arrives
/// whole through `docket evidence export`, byte for byte what the offline
/// export (`--offline`, server stopped) writes for the same scope, and
/// verifies with `docket evidence verify`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_of_several_chunks_streams_whole_and_matches_the_offline_export() {
    let s = server().run().await;
    let admin = s.admin_key();
    let from = jiff::Timestamp::from_nanosecond(i128::from(now_nanos() - 60_000_000_000))
        .unwrap()
        .to_string();
    // 1,500 notes of ~1 KiB each, appended concurrently (group commits).
    let notes = (0..1500).map(|i| {
        let ev = Event {
            event_id: format!("note-{i}"),
            claimed_time_nanos: now_nanos(),
            signer: PrincipalId::parse("admin").unwrap(),
            body: Body::Annotation {
                subject: "repo/payments".into(),
                kind: "note".into(),
                text: format!("{i:04} {}", "x".repeat(1000)),
                attributes: Default::default(),
            },
        };
        s.svc.append(sign_event(&ev, &admin), "CN=test".into())
    });
    futures::future::try_join_all(notes).await.unwrap();
    let to = jiff::Timestamp::from_nanosecond(i128::from(now_nanos() + 60_000_000_000))
        .unwrap()
        .to_string();
    let dir = s.path().join("chunks");
    std::fs::create_dir_all(&dir).unwrap();
    let (online, offline) = (dir.join("online.tar"), dir.join("offline.tar"));
    let scope = ["--from", from.as_str(), "--to", to.as_str()];
    let export = |out: &Path, offline: bool| {
        let mut a: Vec<String> = ["evidence", "export"].map(String::from).to_vec();
        a.extend(scope.iter().map(|x| x.to_string()));
        a.extend(["--out".into(), out.display().to_string()]);
        a.extend(["--progress".into(), "always".into()]);
        if offline {
            a.push("--offline".into());
        }
        a
    };
    let args = export(&online, false);
    let run = s
        .cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    assert_eq!(run.code, 0, "online export: {}{}", run.stdout, run.stderr);
    let bytes = std::fs::read(&online).unwrap();
    assert!(
        bytes.len() > 2 << 20,
        "the bundle should span several 1 MiB messages: {} bytes",
        bytes.len()
    );
    let shown = progress_lines(&run.stderr);
    assert_stages_complete(&shown, "online");
    // Then the transfer, chunk by chunk, up to the whole bundle.
    let received: Vec<_> = shown.iter().filter(|l| l.0 == "receiving").collect();
    assert!(received.len() >= 3, "one line per 1 MiB chunk: {shown:?}");
    assert!(received.windows(2).all(|w| w[0].1 < w[1].1));
    let last = received.last().unwrap();
    assert_eq!((last.1, last.2), (bytes.len() as u64, bytes.len() as u64));
    let vkey = s.data.log_vkey().display().to_string();
    let (_dir, data) = s.stop().await;
    let out = std::process::Command::new(crate::common::BIN)
        .args(export(&offline, true))
        .env("DOCKET_DATA", &data.root)
        .env("DOCKET_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "offline export: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = progress_lines(&String::from_utf8_lossy(&out.stderr));
    assert_stages_complete(&shown, "offline");
    assert!(
        std::fs::read(&offline).unwrap() == bytes,
        "online and offline exports of one scope differ"
    );
    let out = std::process::Command::new(crate::common::BIN)
        .args(["evidence", "verify"])
        .arg(&online)
        .args(["--log-key", &vkey])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Periods at the ends of the time range, empty, reversed or beyond the
/// log, asked for over gRPC with and without progress: each is refused as
/// INVALID_ARGUMENT naming the period, or gives a bundle that verifies;
/// the server keeps serving and nothing stored changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_periods_are_refused_or_exported_never_crash() {
    let f = fixture().await;
    let s = &f.server;
    let before = s.svc.latest_checkpoint();
    let periods = [
        (i64::MIN, i64::MIN + 1),
        (i64::MIN, i64::MAX),
        (i64::MAX - 1, i64::MAX),
        (0, 0),
        (10, 0),
        (i64::MAX, i64::MIN),
        (now_nanos() + 365 * DAY, i64::MAX),
    ];
    for (from, to) in periods {
        for progress in [false, true] {
            let mut g = s.conn().governance().await.unwrap();
            let scopes = [
                pb::export_evidence_request::Scope::Period(pb::PeriodScope {
                    from_unix_nanos: from,
                    to_unix_nanos: to,
                    environments: vec!["[".into()],
                    repositories: Vec::new(),
                }),
                pb::export_evidence_request::Scope::Control(pb::ControlScope {
                    control: "soc2-cc8.1".into(),
                    from_unix_nanos: from,
                    to_unix_nanos: to,
                }),
            ];
            for scope in scopes {
                let what = format!("{from}..{to} progress={progress} {scope:?}");
                let got = async {
                    let mut stream = g
                        .export_evidence(pb::ExportEvidenceRequest {
                            scope: Some(scope),
                            progress,
                            complete: false,
                            since_checkpoint: String::new(),
                        })
                        .await?
                        .into_inner();
                    let mut out = Vec::new();
                    while let Some(c) = stream.message().await? {
                        out.extend_from_slice(&c.data);
                    }
                    Ok::<_, tonic::Status>(out)
                }
                .await;
                match got {
                    Ok(bundle) => {
                        assert!(from < to, "{what}: exported an empty period");
                        evidence::verify(&bundle, &trust(s))
                            .unwrap_or_else(|e| panic!("{what}: {e}"));
                    }
                    Err(st) => {
                        assert!(from >= to, "{what}: {st:?}");
                        assert_eq!(st.code(), tonic::Code::InvalidArgument, "{what}");
                        assert!(st.message().contains("period"), "{what}: {st:?}");
                    }
                }
            }
        }
    }
    assert_eq!(s.svc.latest_checkpoint(), before, "nothing was appended");
    s.cli_ok(&["checkpoint"]).await;
}

/// An export nobody waits for stops: asked to stop before it starts, it
/// reads nothing; stopped as any stage starts, it goes no further; its
/// future dropped mid-way (a client that went away), the threads it started
/// are told to stop; an export that finishes, or fails, leaves its progress
/// uncancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_export_stops_its_work() {
    use docket::evidence::{ExportError, Progress, Stage};
    let f = fixture().await;
    let svc = f.server.svc.clone();
    let scope = Scope::Period {
        from: 0,
        to: i64::MAX,
        environments: Vec::new(),
        repositories: Vec::new(),
    };
    let p = Arc::new(Progress::default());
    p.cancel();
    let e = svc
        .export_evidence_with(scope.clone(), p.clone())
        .await
        .unwrap_err();
    assert!(matches!(e, ExportError::Cancelled), "{e}");
    let steps = p.take();
    assert!(
        !steps.is_empty() && steps.iter().all(|s| s.done == 0),
        "the scan started and read nothing: {steps:?}"
    );

    for stage in [
        Stage::Scanning,
        Stage::Reading,
        Stage::Proving,
        Stage::Folding,
        Stage::Signing,
        Stage::Checking,
    ] {
        for scope in [scope.clone(), Scope::change("CHG-1")] {
            if stage == Stage::Scanning && matches!(scope, Scope::Change { .. }) {
                continue; // a change bundle scans no period
            }
            let p = Arc::new(Progress::default());
            p.cancel_at(stage);
            let e = svc
                .export_evidence_with(scope.clone(), p.clone())
                .await
                .unwrap_err();
            assert!(matches!(e, ExportError::Cancelled), "{stage:?}: {e}");
            let steps = p.take();
            let last = steps.last().unwrap();
            assert_eq!(
                (last.stage, last.done),
                (stage, 0),
                "{stage:?} {scope:?}: stopped where it was cancelled: {steps:?}"
            );
        }
    }

    let p = Arc::new(Progress::default());
    let mut export = Box::pin(svc.export_evidence_with(scope.clone(), p.clone()));
    tokio::select! {
        biased;
        () = p.changed() => {}
        _ = &mut export => unreachable!("an export reports its first stage before it ends"),
    }
    assert!(!p.is_cancelled());
    drop(export);
    assert!(p.is_cancelled(), "dropping the export cancels its work");

    let p = Arc::new(Progress::default());
    let bundle = svc.export_evidence_with(scope, p.clone()).await.unwrap();
    assert!(!p.is_cancelled(), "a finished export cancels nothing");
    let p = Arc::new(Progress::default());
    let e = svc
        .export_evidence_with(Scope::change("CHG-404"), p.clone())
        .await
        .unwrap_err();
    assert!(matches!(e, ExportError::UnknownChange(_)), "{e}");
    assert!(!p.is_cancelled(), "a failed export cancels nothing");
    evidence::verify(&bundle, &trust(&f.server)).unwrap();
}

/// Holds the server's first `n` exports as they start reading; returns the
/// progress of every export the server starts, in order.
fn hold_first_exports(
    s: &TestServer,
    n: usize,
) -> Arc<std::sync::Mutex<Vec<Arc<docket::evidence::Progress>>>> {
    let seen: Arc<std::sync::Mutex<Vec<Arc<docket::evidence::Progress>>>> = Arc::default();
    let record = seen.clone();
    s.svc.observe_exports(move |p| {
        let mut all = record.lock().unwrap();
        if all.len() < n {
            p.hold_at(docket::evidence::Stage::Reading);
        }
        all.push(p.clone());
    });
    seen
}

/// A gRPC client that goes away mid-export stops the server's work: the
/// export is held as it starts reading (so it is surely still running),
/// the client drops its stream after that stage's report, and the server
/// cancels the export. The next export, not held, completes and verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_client_that_goes_away_cancels_its_export() {
    let f = fixture().await;
    let s = &f.server;
    let seen = hold_first_exports(s, 1);
    let request = || pb::ExportEvidenceRequest {
        scope: Some(pb::export_evidence_request::Scope::Period(
            pb::PeriodScope {
                from_unix_nanos: 0,
                to_unix_nanos: i64::MAX,
                environments: Vec::new(),
                repositories: Vec::new(),
            },
        )),
        progress: true,
        complete: false,
        since_checkpoint: String::new(),
    };
    let mut g = s.conn().governance().await.unwrap();
    let mut stream = g.export_evidence(request()).await.unwrap().into_inner();
    let mut stages = Vec::new();
    while stages.last().map(String::as_str) != Some("reading") {
        let chunk = stream
            .message()
            .await
            .unwrap()
            .expect("the stream reports reading before it ends");
        assert!(
            chunk.data.is_empty(),
            "no bundle bytes before the export ends"
        );
        stages.push(chunk.progress.expect("a progress report").stage);
    }
    let held = seen.lock().unwrap()[0].clone();
    assert!(!held.is_cancelled(), "held, not cancelled: {stages:?}");
    drop(stream);
    drop(g);
    tokio::time::timeout(Duration::from_secs(60), async {
        while !held.is_cancelled() {
            held.changed().await;
        }
    })
    .await
    .expect("the server cancels the export of a client that went away");

    let mut g = s.conn().governance().await.unwrap();
    let mut stream = g.export_evidence(request()).await.unwrap().into_inner();
    let mut bundle = Vec::new();
    while let Some(c) = stream.message().await.unwrap() {
        bundle.extend_from_slice(&c.data);
    }
    evidence::verify(&bundle, &trust(s)).unwrap();
    let all = seen.lock().unwrap();
    assert_eq!(all.len(), 2);
    assert!(!all[1].is_cancelled(), "a finished export is not cancelled");
}

/// `(stage, done, total)` of each progress line `docket evidence export
/// --progress always` printed to a non-terminal standard error.
fn progress_lines(stderr: &str) -> Vec<(String, u64, u64)> {
    stderr
        .lines()
        .filter(|l| l.contains('[') && l.contains('%'))
        .map(|l| {
            let stage = l.split_whitespace().next().unwrap().to_string();
            let count = l
                .rsplit(']')
                .next()
                .unwrap()
                .split_whitespace()
                .nth(1)
                .unwrap();
            let (done, total) = count.split_once('/').unwrap();
            (stage, done.parse().unwrap(), total.parse().unwrap())
        })
        .collect()
}

/// Every stage of building a period bundle was shown, in order, from its
/// start to its end, with counts that never run backwards or past the
/// stage's size.
fn assert_stages_complete(shown: &[(String, u64, u64)], how: &str) {
    let stages = [
        "scanning", "reading", "proving", "folding", "signing", "checking",
    ];
    let building: Vec<_> = shown.iter().filter(|l| l.0 != "receiving").collect();
    let order: Vec<&str> = building
        .iter()
        .map(|l| l.0.as_str())
        .fold(vec![], |mut v, s| {
            if v.last() != Some(&s) {
                v.push(s);
            }
            v
        });
    assert_eq!(order, stages, "{how}: stages shown {shown:?}");
    for stage in stages {
        let lines: Vec<_> = building.iter().filter(|l| l.0 == stage).collect();
        let (first, last) = (lines[0], lines[lines.len() - 1]);
        assert_eq!(first.1, 0, "{how}: {stage} starts at 0: {lines:?}");
        assert_eq!(last.1, last.2, "{how}: {stage} ends complete: {lines:?}");
        assert!(
            lines.iter().all(|l| l.1 <= l.2 && l.2 == first.2),
            "{how}: {lines:?}"
        );
        assert!(
            lines.windows(2).all(|w| w[0].1 <= w[1].1),
            "{how}: {lines:?}"
        );
    }
    let total = |stage: &str| building.iter().find(|l| l.0 == stage).unwrap().2;
    // Every entry read is folded and checked; 1,500 notes are in the period.
    assert!(total("scanning") > 1500, "{how}: {shown:?}");
    assert_eq!(total("reading"), total("folding"));
    assert_eq!(total("reading"), total("checking"));
    assert_eq!(total("signing"), 1);
}

/// The report's change table filters and sorts in a real browser without a
/// server: `tests/report/interact.py` drives headless Chromium over the
/// DevTools protocol, types into the filter and clicks the first column's
/// header, and returns what the page then shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_filters_and_sorts_in_chromium() {
    let dir = whole_period_unpacked().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/report/interact.py");
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("python3")
            .arg(&script)
            .arg(dir.path().join("report.html"))
            .arg(dir.path().join("chromium-profile"))
            .output(),
    )
    .await
    .expect("the browser session finished")
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["loaded"], "2 of 2 shown", "{seen}");
    assert_eq!(
        seen["filtered"],
        serde_json::json!({"count": "1 of 2 shown", "visible": ["CHG-2"]}),
        "{seen}"
    );
    assert_eq!(seen["cleared"], "2 of 2 shown", "{seen}");
    assert_eq!(
        seen["sorted"],
        serde_json::json!([
            {"dir": "asc", "order": ["CHG-1", "CHG-2"]},
            {"dir": "desc", "order": ["CHG-2", "CHG-1"]},
        ]),
        "{seen}"
    );
}

/// Exports change `id`'s plain bundle from a selection without entry
/// `index`, which the exporter must refuse in its self-check against the
/// change and subject heads; the reason it gives.
fn self_check_without(s: &TestServer, id: &str, index: u64) -> String {
    let reader = s.svc.reader().clone();
    let mut sel = s
        .svc
        .with_state(|st| evidence::select(st, &reader, &Scope::change(id)))
        .unwrap();
    let cp = docket::ledger::Checkpoint::verify(
        &reader.checkpoint_note(sel.size).unwrap().unwrap(),
        &s.verifier(),
        "docket.test/log",
    )
    .unwrap();
    assert!(sel.heads.is_some() && cp.changes.is_some() && cp.subjects.is_some());
    assert!(sel.indices.remove(&index), "entry {index} was selected");
    match evidence::export(
        &reader,
        &cp,
        &sel,
        &Scope::change(id),
        None,
        &Default::default(),
    ) {
        Err(evidence::ExportError::SelfCheck(why)) => why,
        Err(e) => panic!("the export failed otherwise: {e}"),
        Ok(_) => panic!("the exporter made a bundle without entry {index}"),
    }
}

/// Removes entry `index` and its inclusion proof from a bundle, and re-seals
/// it with the log key: a bundle whose exporter chose to leave it out.
fn without_entry(data: &docket::datadir::DataDir, bundle: &[u8], index: u64) -> Vec<u8> {
    let mut files = evidence::unpack(bundle).unwrap();
    let mut entries = decode_entries(&files["entries.bin"]);
    let before = entries.len();
    entries.retain(|(i, _)| *i != index);
    assert_eq!(entries.len() + 1, before, "entry {index} was carried");
    files.insert("entries.bin".into(), encode_entries(&entries));
    // proofs.bin: u64 index | u8 count | count × 32-byte hashes.
    let (proofs, mut kept, mut p) = (files["proofs.bin"].clone(), Vec::new(), 0);
    let mut dropped = false;
    while p < proofs.len() {
        let i = u64::from_be_bytes(proofs[p..p + 8].try_into().unwrap());
        let end = p + 9 + 32 * proofs[p + 8] as usize;
        if i == index {
            dropped = true;
        } else {
            kept.extend_from_slice(&proofs[p..end]);
        }
        p = end;
    }
    assert!(dropped, "entry {index} had an inclusion proof");
    files.insert("proofs.bin".into(), kept);
    let mut manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    manifest["entries"] = entries.len().into();
    files.insert(
        "manifest.json".into(),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    );
    reseal(data, files)
}

/// Every bundle carries the whole identity and policy history below what it
/// proves, and can show it: each version-2 entry counts the identity and
/// policy entries up to it. An exporter holding the log key that leaves out
/// bob's key revocation (so that his stolen key would look active) is caught
/// by both verifiers, in a change bundle and in a period bundle where the
/// revocation lies before the proven range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_that_leaves_out_a_key_revocation_fails() {
    use pb::export_evidence_request::Scope as S;
    let mut f = fixture().await;
    f.clock.set(f.day(6));
    let revoked = f
        .append(
            "revoke-bob",
            "admin",
            Body::KeyRevoked {
                principal: PrincipalId::parse("bob").unwrap(),
                key: key("bob").verifying_key(),
                reason: "laptop stolen".into(),
            },
        )
        .await;
    let note = |text: &str| Body::Annotation {
        subject: "repo/payments".into(),
        kind: "note".into(),
        text: text.into(),
        attributes: Default::default(),
    };
    f.append("after-revocation", "admin", note("left-boundary"))
        .await;
    f.clock.set(f.day(8));
    let last = f.append("day-8", "admin", note("in the period")).await;
    let s = &f.server;
    let t = trust(s);

    let change = export_online(s, S::ChangeId("CHG-1".into())).await;
    let period = export_online(s, period_pb(f.day(8), f.day(9))).await;
    let files = evidence::unpack(&period).unwrap();
    let manifest = json(&files, "manifest.json");
    assert_eq!(
        manifest["range"]["start"], f.at["after-revocation"],
        "{manifest}"
    );
    for (name, bundle) in [("change", &change), ("period", &period)] {
        // Honest, the revocation travels and shows in principals.json.
        evidence::verify(bundle, &t).unwrap_or_else(|e| panic!("{name}: {e}"));
        let principals = json(&evidence::unpack(bundle).unwrap(), "facts/principals.json");
        let bob = principals
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == "bob")
            .unwrap();
        assert_eq!(bob["keys"][0]["revoked_at"], revoked, "{name}: {bob}");

        let forged = without_entry(&s.data, bundle, revoked);
        let e = evidence::verify(&forged, &t).unwrap_err();
        // The first carried entry after the gap names it.
        let next = decode_entries(&evidence::unpack(&forged).unwrap()["entries.bin"])
            .into_iter()
            .map(|(i, _)| i)
            .find(|&i| i > revoked)
            .unwrap();
        assert!(next <= last, "{name}");
        assert_eq!(e.what, format!("entry {next}"), "{name}: {e}");
        assert!(
            e.reason.contains(
                "the bundle carries 6: it leaves out 1 key, role, principal or policy change between entry"
            ),
            "{name}: {e}"
        );
        let (code, out) = independent_verify(&forged, &s.data.log_vkey());
        assert_eq!(code, Some(1), "{name}: {out}");
        assert!(
            out.contains(&format!(
                "entry {next} — it counts 7 identity and policy entries up to it; the bundle carries 6"
            )),
            "{name}: {out}"
        );
    }
}

/// Every deployment entry records its decision basis: each change and
/// subject its decision read, with how many entries before it concern each
/// (ledger-format §4.4). An exporter holding the log key that leaves out
/// bob's approval of CHG-1 (whose absence would turn an approved deployment
/// into a denied one, or hide who approved) is caught at the first
/// deployment that rests on it, by both verifiers, in a change bundle and in
/// a period bundle where the approval lies before the proven range; so is
/// one that leaves out a denied deployment a later decision read. An
/// insider who lowers a recorded count instead is caught by `docket verify`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_that_leaves_out_a_fact_a_decision_rests_on_fails() {
    use docket::ledger::{Checkpoint, Entry, SledStore, merkle};
    use pb::export_evidence_request::Scope as S;
    let f = fixture().await;
    let s = &f.server;
    let t = trust(s);
    let (bob, staging) = (f.at["bob-1"], f.at["staging-1"]);
    let reader = s.svc.reader().clone();
    let basis = |i: u64| {
        Entry::decode(&reader.entry(i).unwrap().unwrap().0)
            .unwrap()
            .basis
            .unwrap()
    };
    // CHG-1's opening and alice's, bob's and carol's reviews precede its
    // staging deployment; the redeployment at the end also counts both
    // earlier allowed deployments of the digest, its build and the change.
    let d1 = format!(
        "sha256:{}",
        hex::encode(docket::crypto::blake3_256(b"image-1"))
    );
    let first = basis(staging);
    assert!(first.contains(&("change:CHG-1".to_owned(), 4)), "{first:?}");
    assert!(first.contains(&(format!("subject:{d1}"), 2)), "{first:?}");
    let last = basis(f.at["last"]);
    assert!(last.contains(&(format!("subject:{d1}"), 4)), "{last:?}");
    assert!(basis(bob).is_empty());

    let change = export_online(s, S::ChangeId("CHG-1".into())).await;
    let period = export_online(s, period_pb(f.day(5), f.day(6))).await;
    let manifest = json(&evidence::unpack(&period).unwrap(), "manifest.json");
    assert!(
        manifest["range"]["start"].as_u64().unwrap() > bob,
        "{manifest}"
    );
    for (name, bundle) in [("change", &change), ("period", &period)] {
        evidence::verify(bundle, &t).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (code, out) = independent_verify(bundle, &s.data.log_vkey());
        assert_eq!(code, Some(0), "{name}: {out}");
        // Every carried deployment (CHG-1's two and its redeployment at
        // least) records a basis the bundle carries in full.
        let line = out
            .lines()
            .find_map(|l| l.strip_prefix("decision bases: "))
            .unwrap_or_else(|| panic!("{name}: {out}"));
        let words: Vec<&str> = line.split(' ').collect();
        assert_eq!(
            (words[1], &words[3..5]),
            ("of", &["carried", "deployments"][..])
        );
        assert_eq!(words[0], words[2], "{name}: {line}");
        assert!(words[0].parse::<u32>().unwrap() >= 3, "{name}: {line}");

        let forged = without_entry(&s.data, bundle, bob);
        let e = evidence::verify(&forged, &t).unwrap_err();
        assert_eq!(e.what, format!("entry {staging}"), "{name}: {e}");
        assert!(
            e.reason.contains(
                "decision basis: the deployment was decided on 4 entries concerning change:CHG-1 \
                 before it, the bundle carries 3: it leaves out 1 entry the decision rests on"
            ),
            "{name}: {e}"
        );
        let (code, out) = independent_verify(&forged, &s.data.log_vkey());
        assert_eq!(code, Some(1), "{name}: {out}");
        assert!(
            out.contains(&format!(
                "entry {staging} \u{2014} decision basis: the deployment was decided on 4 entries \
                 concerning change:CHG-1 before it; the bundle carries 3"
            )),
            "{name}: {out}"
        );
    }

    // A denied attempt counts too: CHG-2's break-glass deployment read the
    // denied prod deployment of the same digest, which cannot be dropped.
    let d2 = format!(
        "sha256:{}",
        hex::encode(docket::crypto::blake3_256(b"image-2"))
    );
    let change2 = export_online(s, S::ChangeId("CHG-2".into())).await;
    evidence::verify(&change2, &t).unwrap();
    let e =
        evidence::verify(&without_entry(&s.data, &change2, f.at["prod-2-denied"]), &t).unwrap_err();
    assert_eq!(e.what, format!("entry {}", f.at["glass"]), "{e}");
    assert!(
        e.reason.contains(&format!(
            "the deployment was decided on 3 entries concerning subject:{d2} before it, the \
             bundle carries 2"
        )),
        "{e}"
    );

    // The log itself: a count lowered and the history re-linked and
    // re-signed with the log key, as an insider holding both could.
    let size = s.svc.with_state(|st| st.next_index());
    let mut entries: Vec<Vec<u8>> = (0..size)
        .map(|i| reader.entry(i).unwrap().unwrap().0)
        .collect();
    let k = staging as usize;
    let mut e = Entry::decode(&entries[k]).unwrap();
    let b = e.basis.as_mut().unwrap();
    let at = b.iter().position(|(key, _)| key == "change:CHG-1").unwrap();
    b[at].1 = 3;
    entries[k] = e.encode().unwrap();
    for i in k + 1..entries.len() {
        let mut e = Entry::decode(&entries[i]).unwrap();
        e.prev_leaf_hash = merkle::leaf_hash(&entries[i - 1]);
        entries[i] = e.encode().unwrap();
    }
    let leaves: Vec<[u8; 32]> = entries.iter().map(|b| merkle::leaf_hash(b)).collect();
    let cfg = s.data.config().unwrap();
    let cp = Checkpoint::sign(
        &s.data.note_signer(&cfg).unwrap(),
        "docket.test/log",
        size,
        &crate::common::mth(&leaves),
    );
    let store = SledStore::temporary().unwrap();
    let list = entries
        .into_iter()
        .map(|b| {
            let id =
                docket::api::convert::decode_event(&Entry::decode(&b).unwrap().envelope.payload)
                    .unwrap()
                    .event_id;
            (b, id)
        })
        .collect();
    docket::ledger::import(&store, list, &cp.note).unwrap();
    let failure = docket::verify::verify_store(&store, None).unwrap_err();
    assert_eq!(failure.index, Some(staging), "{failure}");
    assert!(
        failure.reason.contains(
            "decision basis: the entry records 3 entries concerning change:CHG-1 before it, 4 were read"
        ),
        "{failure}"
    );
}

/// The report's change row follows the decision rules: a refused
/// break-glass bypassed nothing, and a review made before the current
/// revision is not listed as an approval of it, even when the amendment
/// kept the subjects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_rows_follow_the_decisions() {
    use pb::export_evidence_request::Scope as S;
    let mut f = fixture().await;
    f.clock.set(f.day(10));
    let d1 = format!(
        "sha256:{}",
        hex::encode(docket::crypto::blake3_256(b"image-1"))
    );
    let row = |bundle: &[u8]| {
        let files = evidence::unpack(bundle).unwrap();
        let html = String::from_utf8(files["report.html"].clone()).unwrap();
        let start = html
            .find("<tr><td data-sort=\"CHG-1\">")
            .expect("CHG-1 row");
        let end = start + html[start..].find("</tr>").unwrap();
        (html[start..end].to_owned(), html)
    };
    // A prod deployment that reads the reviews: alice, who wrote commit-1,
    // approved, and her approval is marked as not counted, with why.
    f.deploy("prod-again", "ci", "prod", &d1, false).await;
    {
        let bundle = export_online(&f.server, S::ChangeId("CHG-1".into())).await;
        let (r, _) = row(&bundle);
        assert!(
            r.contains(&format!(
                "alice (entry {}) <span class=\"warn\">not counted: alice is the author and committer of commit {}</span>",
                f.at["alice-1"],
                &f.commit_of("CHG-1")[..12]
            )),
            "{r}"
        );
        assert!(
            r.contains(&format!("bob (entry {})<br>", f.at["bob-1"])),
            "bob's counted approval is not marked: {r}"
        );
    }
    // A failed run that built another image from commit-1 does not speak
    // for CHG-1's CI: the column still shows the run that built its image.
    let c1 = f
        .server
        .svc
        .with_state(|st| st.gov().change("CHG-1").unwrap().current().commits.clone());
    let c1 = c1.into_iter().next().unwrap();
    f.append(
        "ci-other-image",
        "ci",
        Body::CiRunReported(CiRun {
            repository: "github.com/acme/payments".into(),
            commit: c1.clone(),
            artifact_digests: [crate::common::digest("another-image")].into(),
            status: CiStatus::Failed,
            provider: "gitlab-ci".into(),
            pipeline: "other".into(),
            run_id: "88".into(),
            url: String::new(),
            git_ref: String::new(),
        }),
    )
    .await;
    {
        let bundle = export_online(&f.server, S::ChangeId("CHG-1".into())).await;
        let (r, _) = row(&bundle);
        assert!(
            r.contains(&format!("passed</span> {} by ci", &c1[..12])) && !r.contains("failed"),
            "{r}"
        );
    }
    // bob holds no break-glass role: refused, and the latest decision of CHG-1.
    f.deploy("bob-glass", "bob", "prod", &d1, true).await;
    let bundle = export_online(&f.server, S::ChangeId("CHG-1".into())).await;
    let (r, html) = row(&bundle);
    assert!(
        r.contains("not satisfied") && !r.contains("bypassed"),
        "{r}"
    );
    // Why it was denied comes first: here, not the approvals.
    assert!(
        r.contains(&format!(
            "its latest deployment, entry {}, was denied: bob invoked break-glass but holds none of the roles allowed to",
            f.at["bob-glass"]
        )),
        "{r}"
    );
    assert!(
        r.contains("bob (entry ") && r.contains("carol (entry "),
        "{r}"
    );
    // The latest decision (bob's refused break-glass) read no reviews, so
    // no approval is marked as not counted.
    assert!(!r.contains("not counted:"), "{r}");
    assert!(
        html.contains("<b>0</b>break-glass"),
        "a refused break-glass is not counted as one"
    );
    // Amended to another environment set, same subjects: earlier approvals are stale.
    f.append(
        "amend-1-envs",
        "ci",
        Body::ChangeAmended(docket::event::ChangeAmendment {
            change_id: RecordId::parse("CHG-1").unwrap(),
            commits: f
                .server
                .svc
                .with_state(|st| st.gov().change("CHG-1").unwrap().current().commits.clone()),
            artifact_digests: [d1.clone()].into(),
            environments: ["staging".to_owned()].into(),
            reason: "staging only".into(),
        }),
    )
    .await;
    let bundle = export_online(&f.server, S::ChangeId("CHG-1".into())).await;
    evidence::verify(&bundle, &trust(&f.server)).unwrap();
    let (r, _) = row(&bundle);
    assert!(
        !r.contains("(entry "),
        "no review speaks for revision 2: {r}"
    );
}

/// A period bundle carries the entry just after the period as its boundary;
/// when that entry is a deployment of a change in the period, it must not
/// speak for the change's segregation of duties in the period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_period_reports_the_decisions_made_in_it() {
    let f = fixture().await;
    let bundle = export_online(&f.server, period_pb(f.day(2), f.day(3))).await;
    let files = evidence::unpack(&bundle).unwrap();
    let carried: Vec<u64> = json(&files, "facts/entries.json")
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["index"].as_u64().unwrap())
        .collect();
    assert!(
        carried.contains(&f.at["glass"]),
        "the break-glass on day 3 is the period's boundary entry"
    );
    let changes = json(&files, "facts/changes.json");
    let chg2 = changes
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["change"] == "CHG-2")
        .expect("CHG-2 was opened in the period");
    assert_eq!(chg2["segregation_of_duties"]["outcome"], "not satisfied");
    assert_eq!(
        chg2["segregation_of_duties"]["decided_at"],
        f.at["prod-2-denied"]
    );
    let (code, out) = independent_verify(&bundle, &f.server.data.log_vkey());
    assert_eq!(code, Some(0), "{out}");
}

/// A change that binds only an image digest ships the code its CI run built
/// the image from. The bundle names that commit, counts its author among the
/// change's authors (the people its decision excluded), lists the e-mail no
/// principal claims, and the independent verifier derives the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_only_change_names_the_authors_of_the_code_it_ships() {
    use pb::export_evidence_request::Scope as S;
    let mut f = fixture().await;
    f.clock.set(f.day(6));
    let raw = "tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\
               author B <bob@example.com> 1700000000 +0000\n\
               committer Bot <Build-Bot@Elsewhere.example> 1700000000 +0000\n\nimage three\n";
    let sha = docket::event::git::object_id(raw.as_bytes(), 40).unwrap();
    f.append(
        "commit-3",
        "ci",
        Body::CommitObserved(Box::new(CommitObservation {
            repository: "github.com/acme/payments".into(),
            sha: sha.clone(),
            raw: raw.as_bytes().to_vec(),
            commit: docket::event::git::parse_commit(raw.as_bytes()).unwrap(),
            changed: ChangedPaths::default(),
            signature: CommitSignature::unsigned(),
        })),
    )
    .await;
    let digest = format!(
        "sha256:{}",
        hex::encode(docket::crypto::blake3_256(b"image-3"))
    );
    f.append(
        "ci-run-3",
        "ci",
        Body::CiRunReported(CiRun {
            repository: "github.com/acme/payments".into(),
            commit: sha.clone(),
            artifact_digests: [digest.clone()].into(),
            status: CiStatus::Passed,
            provider: "github-actions".into(),
            pipeline: "build".into(),
            run_id: "3".into(),
            url: "https://github.com/acme/payments/actions/runs/3".into(),
            git_ref: "refs/heads/main".into(),
        }),
    )
    .await;
    f.append(
        "open-3",
        "ci",
        Body::ChangeOpened(ChangeOpening {
            change_id: RecordId::parse("CHG-3").unwrap(),
            title: "image only".into(),
            repository: "github.com/acme/payments".into(),
            commits: BTreeSet::new(),
            artifact_digests: [digest.clone()].into(),
            environments: ["staging".to_owned(), "prod".to_owned()].into(),
            ticket: "OPS-3".into(),
            description: String::new(),
        }),
    )
    .await;
    for (name, who) in [("bob-3", "bob"), ("alice-3", "alice"), ("carol-3", "carol")] {
        f.approve(name, who, "CHG-3", &[&digest]).await;
    }
    f.deploy("staging-3", "ci", "staging", &digest, false).await;
    let prod = f.deploy("prod-3", "ci", "prod", &digest, false).await;

    let bundle = export_online(&f.server, S::ChangeId("CHG-3".into())).await;
    evidence::verify(&bundle, &trust(&f.server)).unwrap();
    let files = evidence::unpack(&bundle).unwrap();
    let c = &json(&files, "facts/changes.json")[0];
    assert_eq!(c["change"], "CHG-3");
    assert_eq!(c["built_from"], serde_json::json!([sha]));
    assert_eq!(c["commits"][0]["sha"], sha.as_str(), "{c}");
    assert_eq!(c["authors"], serde_json::json!(["bob"]));
    assert_eq!(
        c["unmapped_authors"],
        serde_json::json!(["build-bot@elsewhere.example"])
    );
    // The decision excluded the same people the bundle names.
    let decisions = json(&files, "facts/decisions.json");
    let d = decisions
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["index"] == prod)
        .unwrap();
    assert_eq!(d["verdict"], "deny", "{d}");
    let bob = d["not_counted"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["approver"] == "bob")
        .expect("bob not counted");
    assert_eq!(
        bob["reason"],
        format!(
            "bob is the author of commit {} (built into {})",
            &sha[..12],
            &digest[..19]
        ),
        "{bob}"
    );
    assert!(
        d["reasons"]
            .to_string()
            .contains("committer build-bot@elsewhere.example is not the e-mail of any principal"),
        "{d}"
    );
    // The report's "Authored by" cell says so too.
    let html = String::from_utf8(files["report.html"].clone()).unwrap();
    let start = html
        .find("<tr><td data-sort=\"CHG-3\">")
        .expect("CHG-3 row");
    let row = &html[start..start + html[start..].find("</tr>").unwrap()];
    assert!(
        row.contains(&format!(
            "<td>bob, <span class=\"warn\">build-bot@elsewhere.example</span><br>\
             <span class=\"muted\">of {}, which its artifacts were built from</span></td>",
            &sha[..12]
        )),
        "{row}"
    );
    let (code, out) = independent_verify(&bundle, &f.server.data.log_vkey());
    assert_eq!(code, Some(0), "{out}");
}

/// Each export builds its bundle in memory, so the server runs at most
/// `MAX_EXPORTS` at once: one more is refused with a reason (not queued
/// behind them), and a slot comes back when an export ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_exports_are_capped() {
    use docket::api::MAX_EXPORTS;
    let f = fixture().await;
    let s = &f.server;
    hold_first_exports(s, MAX_EXPORTS);
    let request = pb::ExportEvidenceRequest {
        scope: Some(pb::export_evidence_request::Scope::ChangeId("CHG-1".into())),
        progress: true,
        complete: false,
        since_checkpoint: String::new(),
    };
    let mut g = s.conn().governance().await.unwrap();
    let mut held = Vec::new();
    for _ in 0..MAX_EXPORTS {
        let mut stream = g
            .export_evidence(request.clone())
            .await
            .unwrap()
            .into_inner();
        // Wait until it is held mid-way.
        while stream
            .message()
            .await
            .unwrap()
            .expect("progress before the hold")
            .progress
            .is_none_or(|p| p.stage != "reading")
        {}
        held.push(stream);
    }
    let refused = g.export_evidence(request.clone()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused
            .message()
            .contains(&format!("{MAX_EXPORTS} evidence exports are under way")),
        "{}",
        refused.message()
    );
    // One client goes away: its export is cancelled and its slot comes back
    // (each try is a round trip, no timer).
    drop(held.pop());
    let mut tries = 0;
    let mut stream = loop {
        tries += 1;
        match g.export_evidence(request.clone()).await {
            Ok(s) => break s.into_inner(),
            Err(e) if e.code() == tonic::Code::ResourceExhausted && tries < 10_000 => {
                tokio::task::yield_now().await
            }
            Err(e) => panic!("after {tries} tries: {e}"),
        }
    };
    let mut bundle = Vec::new();
    while let Some(c) = stream.message().await.unwrap() {
        bundle.extend_from_slice(&c.data);
    }
    evidence::verify(&bundle, &trust(s)).unwrap();
}

/// Repository patterns read the repositories the log records for the code
/// (commit observations, CI runs), as rule selection does, not only the
/// one a person typed: a deployment that names no repository and belongs to
/// no change, of an artifact CI recorded in github.com/acme/app, is in a
/// bundle filtered to that repository and out of one filtered to another.
/// A deployment whose repository nothing names or records is kept by every
/// filter: nothing shows it lies outside, and a filter must not hide it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_patterns_read_the_repositories_the_log_records() {
    use pb::export_evidence_request::Scope as S;
    let mut f = fixture().await;
    f.clock.set(f.day(10));
    let app = crate::common::digest("image-app");
    f.append(
        "ci-app",
        "ci",
        Body::CiRunReported(CiRun {
            repository: "github.com/acme/app".into(),
            commit: "ab".repeat(20),
            artifact_digests: [app.clone()].into(),
            status: CiStatus::Passed,
            provider: "github-actions".into(),
            pipeline: "build".into(),
            run_id: "77".into(),
            url: String::new(),
            git_ref: String::new(),
        }),
    )
    .await;
    let unknown = crate::common::digest("image-nobody-recorded");
    let mut deployed = BTreeMap::new();
    for (name, subject) in [("deploy-app", &app), ("deploy-unknown", &unknown)] {
        let i = f
            .append(
                name,
                "ci",
                Body::DeployRequested(DeployRequest {
                    action: "deploy".into(),
                    environment: "prod".into(),
                    repository: None,
                    kind: None,
                    namespace: None,
                    subjects: [subject.clone()].into(),
                    change_id: None,
                    break_glass: false,
                    justification: String::new(),
                }),
            )
            .await;
        deployed.insert(name, i);
    }
    let s = &f.server;
    let (from, to) = (f.day(10), f.day(11));
    let in_scope = |repos: &'static [&'static str]| async move {
        let b = export_online(
            s,
            S::Period(pb::PeriodScope {
                from_unix_nanos: from,
                to_unix_nanos: to,
                environments: vec![],
                repositories: repos.iter().map(|r| r.to_string()).collect(),
            }),
        )
        .await;
        evidence::verify(&b, &trust(s)).unwrap();
        let (code, out) = independent_verify(&b, &s.data.log_vkey());
        assert_eq!(code, Some(0), "{out}");
        let files = evidence::unpack(&b).unwrap();
        json(&files, "facts/decisions.json")
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["in_scope"] == true)
            .map(|d| d["index"].as_u64().unwrap())
            .collect::<BTreeSet<u64>>()
    };
    let both = BTreeSet::from([deployed["deploy-app"], deployed["deploy-unknown"]]);
    assert_eq!(in_scope(&[]).await, both);
    assert_eq!(in_scope(&["github.com/acme/app"]).await, both);
    assert_eq!(in_scope(&["github.com/acme/*"]).await, both);
    assert_eq!(
        in_scope(&["github.com/other/*"]).await,
        BTreeSet::from([deployed["deploy-unknown"]])
    );
}

/// A decision under `signed_commits` rests on the commit entries a change's
/// code has: a change bundle carries the commit its image was built from,
/// re-evaluates the denial for its being unsigned, and one without that
/// commit's entry does not verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_re_evaluates_signed_commits_from_the_commits_it_carries() {
    use pb::export_evidence_request::Scope as S;
    let policy = r#"version = 1
[permissions]
open_change = ["ci", "dev"]
approve = ["dev"]
report = ["ci"]

[[rule]]
name = "prod"
match.environments = ["prod"]
approvals = 1
signed_commits = true
"#;
    let mut f = Fixture::start(policy).await;
    f.register(
        "alice",
        PrincipalKind::Human,
        "dev",
        Some("alice@example.com"),
    )
    .await;
    f.register("bob", PrincipalKind::Human, "dev", Some("bob@example.com"))
        .await;
    f.register("ci", PrincipalKind::Ci, "ci", None).await;
    let (sha, digest) = f.build("commit-s", "alice@example.com", "image-s").await;
    // The change binds the image only: its code is the commit CI built it from.
    f.append(
        "open-s",
        "ci",
        Body::ChangeOpened(ChangeOpening {
            change_id: RecordId::parse("CHG-S").unwrap(),
            title: "image only".into(),
            repository: "github.com/acme/payments".into(),
            commits: BTreeSet::new(),
            artifact_digests: [digest.clone()].into(),
            environments: ["prod".to_owned()].into(),
            ticket: "OPS-S".into(),
            description: String::new(),
        }),
    )
    .await;
    f.approve("bob-s", "bob", "CHG-S", &[&digest]).await;
    let prod = f.deploy("prod-s", "ci", "prod", &digest, false).await;
    let expected = format!(
        "commit {} (built into {}) is unsigned; rule \"prod\" requires every commit of the change's code to be signed by a principal (signed_commits)",
        &sha[..12],
        &digest[..19]
    );

    let bundle = export_online(&f.server, S::ChangeId("CHG-S".into())).await;
    let t = trust(&f.server);
    evidence::verify(&bundle, &t).unwrap();
    let files = evidence::unpack(&bundle).unwrap();
    let decisions = json(&files, "facts/decisions.json");
    let d = decisions
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["index"] == prod)
        .unwrap();
    assert_eq!(d["verdict"], "deny", "{d}");
    // Bob's approval counted: the signature is all that is missing.
    assert_eq!(d["reasons"], serde_json::json!([expected]), "{d}");
    let (code, out) = independent_verify(&bundle, &f.server.data.log_vkey());
    assert_eq!(code, Some(0), "{out}");

    let commit = f.at["commit-s"];
    let without = without_entry(&f.server.data, &bundle, commit);
    let e = evidence::verify(&without, &t).expect_err("a bundle without the commit");
    let e = e.to_string();
    assert!(
        e.starts_with(&format!("entry {prod}: decision basis:"))
            && e.contains(&format!("concerning subject:{sha} before it"))
            && e.ends_with("it leaves out 1 entry the decision rests on"),
        "{e}"
    );
}

/// The first `size` entries of a log with their event ids, as
/// `docket::ledger::import` takes them.
fn stored_entries(
    reader: &docket::ledger::LedgerReader<dyn docket::ledger::Store>,
    size: u64,
) -> Vec<(Vec<u8>, String)> {
    (0..size)
        .map(|i| {
            let b = reader.entry(i).unwrap().unwrap().0;
            let id = docket::api::convert::decode_event(
                &docket::ledger::Entry::decode(&b).unwrap().envelope.payload,
            )
            .unwrap()
            .event_id;
            (b, id)
        })
        .collect()
}

/// A checkpoint note for the first `n` entries of `reader`'s log that signs
/// the change heads `c` and no subject heads, as logs written between the
/// two have.
fn changes_only_note(
    signer: &docket::crypto::NoteSigner,
    reader: &docket::ledger::LedgerReader<dyn docket::ledger::Store>,
    n: u64,
    c: docket::ledger::HeadsRoot,
) -> String {
    use base64::Engine as _;
    let b64 = |h: &[u8; 32]| base64::engine::general_purpose::STANDARD.encode(h);
    signer.sign(&format!(
        "docket.test/log\n{n}\n{}\nchanges {} {}\n",
        b64(&reader.root(n).unwrap()),
        c.size,
        b64(&c.root)
    ))
}

/// Verifies a bundle's `files` with member `path` added (listed in the
/// manifest and re-sealed with the log key); the failure it must give.
fn verify_with_member(
    data: &docket::datadir::DataDir,
    files: &BTreeMap<String, Vec<u8>>,
    path: &str,
    bytes: Vec<u8>,
    t: &evidence::Trust,
) -> BundleFailure {
    let mut with = files.clone();
    with.insert(path.into(), bytes);
    let mut m = json(&with, "manifest.json");
    m["files"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"path": path, "size": 0, "blake3": ""}));
    with.insert(
        "manifest.json".into(),
        serde_json::to_vec_pretty(&m).unwrap(),
    );
    evidence::verify(&reseal(data, with), t).unwrap_err()
}

/// `docket verify` recomputes the change and subject heads each checkpoint
/// signs (ledger-format §6.5, §6.6). The server's log passes, and so does
/// the same log with a checkpoint that signs none, or only change heads (as
/// logs written before them have). A checkpoint the log key signed over the
/// right entries but with other heads is refused, and so is one without
/// heads after one with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docket_verify_recomputes_the_change_and_subject_heads_of_every_checkpoint() {
    use docket::ledger::{Checkpoint, Heads, HeadsRoot, SledStore, Store as _, WriteBatch};
    let f = fixture().await;
    let s = &f.server;
    let reader = s.svc.reader().clone();
    let size = s.size().await;
    let cp = Checkpoint::verify(
        &reader.checkpoint_note(size).unwrap().unwrap(),
        &s.verifier(),
        "docket.test/log",
    )
    .unwrap();
    let heads = Heads {
        changes: cp
            .changes
            .expect("the server's checkpoints sign change heads"),
        subjects: cp.subjects.expect("and subject heads"),
    };
    let opened = s.svc.with_state(|st| st.gov().changes().count()) as u64;
    assert!(opened >= 2);
    assert_eq!(heads.changes.size, opened);
    // commit-1, image-1, commit-2 and image-2: built, bound and deployed.
    assert_eq!(heads.subjects.size, 4);
    docket::verify::verify_store(&**reader.store(), Some(&s.verifier())).unwrap();

    let entries = stored_entries(&reader, size);
    let signer = s.data.note_signer(&s.data.config().unwrap()).unwrap();
    let import_note = |n: u64, note: &str| {
        let store = SledStore::temporary().unwrap();
        docket::ledger::import(&store, entries[..n as usize].to_vec(), note).unwrap();
        store
    };
    let import = |n: u64, heads: Option<Heads>| {
        let root = reader.root(n).unwrap();
        let cp = Checkpoint::sign_with(&signer, "docket.test/log", n, &root, heads);
        import_note(n, &cp.note)
    };
    let changes_only = |n: u64, c: HeadsRoot| changes_only_note(&signer, &reader, n, c);
    let verify = |store: &SledStore| docket::verify::verify_store(store, Some(&s.verifier()));
    verify(&import(size, Some(heads))).unwrap();
    verify(&import(size, None)).unwrap();
    verify(&import_note(size, &changes_only(size, heads.changes))).unwrap();
    let wrong = |h: HeadsRoot| {
        [
            HeadsRoot {
                size: h.size,
                root: [0; 32],
            },
            HeadsRoot {
                size: h.size - 1,
                root: h.root,
            },
        ]
    };
    let others = wrong(heads.changes)
        .map(|c| {
            (
                Heads {
                    changes: c,
                    ..heads
                },
                "change",
                "changes",
                c,
            )
        })
        .into_iter()
        .chain(wrong(heads.subjects).map(|c| {
            (
                Heads {
                    subjects: c,
                    ..heads
                },
                "subject",
                "subjects",
                c,
            )
        }));
    for (other, what, counted, line) in others {
        let e = verify(&import(size, Some(other))).unwrap_err();
        assert_eq!(e.index, Some(size - 1), "{e}");
        assert!(
            e.reason.starts_with(&format!(
                "checkpoint for size {size} signs {what} heads ({} {counted}, root {})",
                line.size,
                hex::encode(line.root)
            )),
            "{e}"
        );
    }

    // Heads at size - 1 (the fold's), then fewer at size.
    let mut before = docket::state::State::new();
    docket::service::fold_entries(
        &docket::ledger::LedgerReader::new(Arc::new(import(size - 1, None))),
        &mut before,
        size - 1,
    )
    .unwrap();
    let earlier = Checkpoint::sign_with(
        &signer,
        "docket.test/log",
        size - 1,
        &reader.root(size - 1).unwrap(),
        Some(before.gov().heads()),
    );
    for (store, what) in [
        (import(size, None), "change"),
        (
            import_note(size, &changes_only(size, heads.changes)),
            "subject",
        ),
    ] {
        let mut key = vec![b'c'];
        key.extend_from_slice(&(size - 1).to_be_bytes());
        store
            .write(WriteBatch {
                log: vec![(key, earlier.note.clone().into_bytes())],
                state: Vec::new(),
            })
            .unwrap();
        let e = verify(&store).unwrap_err();
        assert_eq!(e.index, Some(size - 1), "{e}");
        assert_eq!(
            e.reason,
            format!(
                "checkpoint for size {size} has no {what} heads, but the one for size {} already had them",
                size - 1
            )
        );
    }
}

/// A log whose checkpoint signs no change heads (written before them): a
/// change bundle from it carries no `heads.bin`, verifies, and says what it
/// cannot show; the report says so too. One whose checkpoint signs change
/// heads but no subject heads proves the change's entries only. The
/// server's next checkpoint on that log signs both, and bundles from then
/// on prove the change's and its subjects' entries complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_bundle_from_a_log_without_change_heads_says_what_it_cannot_show() {
    use docket::ledger::{Checkpoint, LedgerReader, SledStore};
    use docket::service::{Config, Service};
    let f = fixture().await;
    let s = &f.server;
    let t = trust(s);
    let reader = s.svc.reader().clone();
    let size = s.size().await;
    let entries = stored_entries(&reader, size);
    let signer = s.data.note_signer(&s.data.config().unwrap()).unwrap();
    let old = Checkpoint::sign(
        &signer,
        "docket.test/log",
        size,
        &reader.root(size).unwrap(),
    );
    let store = Arc::new(SledStore::temporary().unwrap());
    docket::ledger::import(&*store, entries, &old.note).unwrap();
    let old_reader = LedgerReader::new(store.clone());
    let export = |state: &docket::state::State| {
        evidence::export_offline(
            state,
            &old_reader,
            &signer,
            &Scope::change("CHG-2"),
            None,
            &Default::default(),
        )
        .unwrap()
    };
    let bundle = export(&docket::service::current_state(&old_reader).unwrap());
    let files = evidence::unpack(&bundle).unwrap();
    assert!(!files.contains_key("heads.bin") && !files.contains_key("subjects.bin"));
    let r = evidence::verify(&bundle, &t).unwrap();
    assert_eq!((r.change_entries_proven, r.subjects_proven), (None, None));
    let report = String::from_utf8_lossy(&files["report.html"]).into_owned();
    assert!(
        report.contains("It does not prove that it carries every entry concerning the change (its checkpoint signs no change heads)"),
        "{report}"
    );
    let (code, out) = independent_verify(&bundle, &s.data.log_vkey());
    assert_eq!(code, Some(0), "{out}");
    // heads.bin put into it is refused.
    let e = verify_with_member(&s.data, &files, "heads.bin", vec![0; 9], &t);
    assert_eq!(
        (e.what.as_str(), e.reason.as_str()),
        (
            "heads.bin",
            "present, but the checkpoint has no change heads"
        )
    );

    // A log written between change heads and subject heads: its checkpoint
    // has the `changes` line only. Its change bundle proves the change's
    // entries, and says the subjects' facts are proven only as far as
    // decisions read them.
    {
        let state = docket::service::current_state(&old_reader).unwrap();
        let note = changes_only_note(&signer, &reader, size, state.gov().heads().changes);
        let between = SledStore::temporary().unwrap();
        docket::ledger::import(&between, stored_entries(&reader, size), &note).unwrap();
        let bundle = evidence::export_offline(
            &state,
            &LedgerReader::new(Arc::new(between)),
            &signer,
            &Scope::change("CHG-2"),
            None,
            &Default::default(),
        )
        .unwrap();
        let files = evidence::unpack(&bundle).unwrap();
        assert!(files.contains_key("heads.bin") && !files.contains_key("subjects.bin"));
        let r = evidence::verify(&bundle, &t).unwrap();
        assert_eq!(
            (r.change_entries_proven, r.subjects_proven),
            (Some(5), None)
        );
        let report = String::from_utf8_lossy(&files["report.html"]).into_owned();
        assert!(
            report.contains("Facts of its subjects (CI runs, commit observations, other deployment requests) are proven complete only as far as"),
            "{report}"
        );
        let (code, out) = independent_verify(&bundle, &s.data.log_vkey());
        assert_eq!(code, Some(0), "{out}");
        // subjects.bin put into it is refused.
        let e = verify_with_member(&s.data, &files, "subjects.bin", Vec::new(), &t);
        assert_eq!(
            (e.what.as_str(), e.reason.as_str()),
            (
                "subjects.bin",
                "present, but the checkpoint has no subject heads"
            )
        );
    }

    // The server goes on on that log: its next checkpoint signs heads.
    let again = s.data.note_signer(&s.data.config().unwrap()).unwrap();
    let svc = Service::open(store.clone(), again, Config::default()).unwrap();
    svc.append(
        sign_event(
            &crate::common::note("after-upgrade", "admin"),
            &s.admin_key(),
        ),
        "CN=t".into(),
    )
    .await
    .unwrap();
    let state = svc.with_state(|st| st.clone());
    drop(svc);
    docket::verify::verify_store(&*store, Some(&s.verifier())).unwrap();
    let bundle = export(&state);
    assert!(evidence::unpack(&bundle).unwrap().contains_key("heads.bin"));
    let r = evidence::verify(&bundle, &t).unwrap();
    assert_eq!(
        (r.change_entries_proven, r.subjects_proven),
        (Some(5), Some(2))
    );
}
