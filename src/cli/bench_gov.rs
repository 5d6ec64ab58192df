//! `docket bench-authorize`: fills a throwaway log with governance facts
//! (changes, commits, CI runs, reviews, staging deployments) through the
//! real append path, then measures `Authorize` decisions in process and over
//! mTLS gRPC at 1 and N concurrent callers. Bounded by counts; loopback only.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use ed25519_dalek::SigningKey;
use tokio::sync::mpsc;

use super::bench::{Stats, TempDir, join, now_nanos};
use super::client::Conn;
use super::h2client::H2Client;
use super::{CliError, CliResult};
use crate::api::convert::sign_event;
use crate::api::pb;
use crate::datadir::{DataDir, InitOptions};
use crate::event::{
    Body, ChangeOpening, ChangeReview, ChangedPaths, CiRun, CiStatus, CommitObservation,
    CommitSignature, DeployRequest, Event, PrincipalId, PrincipalKind, PrincipalSpec, RecordId,
};
use crate::ledger::Envelope;
use crate::server::{Server, Transport};
use crate::service::{Config, Service};

#[derive(Args, Debug)]
pub struct BenchAuthorizeArgs {
    /// Changes in state.
    #[arg(long, default_value_t = 10_000)]
    changes: usize,
    /// Reviews per change.
    #[arg(long, default_value_t = 10)]
    reviews: usize,
    /// Decisions per measured phase at the high concurrency (a quarter at 1).
    #[arg(long, default_value_t = 40_000)]
    ops: usize,
    /// Concurrency levels measured (callers in flight at once).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// Offered rates (decisions/s, summed over 64 clients) of the open-loop
    /// phases, which measure latency at a given load rather than at
    /// saturation.
    #[arg(long, value_delimiter = ',', default_value = "10000,20000")]
    open_rates: Vec<u32>,
    /// Also measure each concurrency level above 1 with every client on a
    /// connection of its own (as separate pipelines are), besides all of
    /// them multiplexed over one HTTP/2 connection.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    per_client_connections: bool,
}

/// The policy the bench decides under: a realistic production rule.
pub const BENCH_POLICY: &str = r#"version = 1
[permissions]
open_change = ["dev"]
approve = ["dev", "security"]
report = ["ci"]
break_glass = ["sre"]

[[rule]]
name = "prod"
match.environments = ["prod"]
approvals = 2
approver_roles = ["dev", "security"]
require_roles = [{ role = "security", count = 1 }]
ci_passed = true
promoted_from = "staging"
max_approval_age = "30d"

[[rule]]
name = "staging"
match.environments = ["staging"]
ci_passed = true
"#;

const DEVS: usize = 20;
const SECS: usize = 5;

fn key_of(name: &str) -> SigningKey {
    SigningKey::from_bytes(&crate::crypto::blake3_256(name.as_bytes()))
}

/// The subjects of change `i`: its commit and its artifact digest.
pub fn subjects_of(i: usize) -> (String, String, String) {
    let raw = format!(
        "tree {}\nauthor Dev {a} <dev{a}@bench.example> 1700000000 +0000\ncommitter Dev {a} <dev{a}@bench.example> 1700000000 +0000\n\nchange {i}\n",
        "4b825dc642cb6eb9a060e54bf8d69288fbee4904",
        a = i % DEVS
    );
    let sha = crate::event::git::object_id(raw.as_bytes(), 40).expect("sha-1 length");
    let digest = format!(
        "sha256:{}",
        hex::encode(crate::crypto::blake3_256(format!("image-{i}").as_bytes()))
    );
    (raw, sha, digest)
}

/// The events of a governance log, signed, in waves that may each be
/// appended in any order once the waves before are in: principals; then per
/// change its commit, CI run and opening; then the reviews; then a staging
/// deployment of every other change.
pub fn governance_events(changes: usize, reviews: usize) -> Vec<Vec<Envelope>> {
    let admin = PrincipalId::parse("admin").expect("valid id");
    let id = |s: &str| PrincipalId::parse(s).expect("valid id");
    let mut out = Vec::new();
    let mut opened = Vec::new();
    let mut reviewed = Vec::new();
    let mut deployed = Vec::new();
    let mut n = 0usize;
    let mut push = |signer: &PrincipalId, key: &SigningKey, body: Body, out: &mut Vec<Envelope>| {
        n += 1;
        let ev = Event {
            event_id: format!("bench-{n}"),
            claimed_time_nanos: now_nanos(),
            signer: signer.clone(),
            body,
        };
        out.push(sign_event(&ev, key));
    };
    let register = |name: &str, kind, role: &str, email: Option<String>| {
        Body::PrincipalRegistered(PrincipalSpec {
            id: id(name),
            kind,
            display_name: String::new(),
            roles: [role.to_owned()].into(),
            keys: vec![key_of(name).verifying_key()],
            emails: email.into_iter().collect(),
        })
    };
    let admin_key = key_of("admin");
    for d in 0..DEVS {
        let name = format!("dev{d}");
        let body = register(
            &name,
            PrincipalKind::Human,
            "dev",
            Some(format!("dev{d}@bench.example")),
        );
        push(&admin, &admin_key, body, &mut out);
    }
    for s in 0..SECS {
        let body = register(&format!("sec{s}"), PrincipalKind::Human, "security", None);
        push(&admin, &admin_key, body, &mut out);
    }
    push(
        &admin,
        &admin_key,
        register("ci", PrincipalKind::Ci, "ci", None),
        &mut out,
    );
    let principals = std::mem::take(&mut out);
    let ci = id("ci");
    let ci_key = key_of("ci");
    for i in 0..changes {
        let (raw, sha, digest) = subjects_of(i);
        let commit = crate::event::git::parse_commit(raw.as_bytes()).expect("well-formed commit");
        push(
            &ci,
            &ci_key,
            Body::CommitObserved(Box::new(CommitObservation {
                repository: "bench.example/app".into(),
                sha: sha.clone(),
                raw: raw.into_bytes(),
                commit,
                changed: ChangedPaths::default(),
                signature: CommitSignature::unsigned(),
            })),
            &mut opened,
        );
        push(
            &ci,
            &ci_key,
            Body::CiRunReported(CiRun {
                repository: "bench.example/app".into(),
                commit: sha.clone(),
                artifact_digests: [digest.clone()].into(),
                status: CiStatus::Passed,
                provider: "bench".into(),
                pipeline: "build".into(),
                run_id: i.to_string(),
                url: String::new(),
                git_ref: String::new(),
            }),
            &mut opened,
        );
        let requester = format!("dev{}", (i + 1) % DEVS);
        let change_id = RecordId::parse(&format!("CHG-{i}")).expect("valid id");
        push(
            &id(&requester),
            &key_of(&requester),
            Body::ChangeOpened(ChangeOpening {
                change_id: change_id.clone(),
                title: format!("change {i}"),
                repository: "bench.example/app".into(),
                commits: [sha.clone()].into(),
                artifact_digests: [digest.clone()].into(),
                environments: ["staging".to_owned(), "prod".to_owned()].into(),
                ticket: String::new(),
                description: String::new(),
            }),
            &mut opened,
        );
        let seen: BTreeSet<String> = [sha, digest.clone()].into();
        for k in 0..reviews {
            // Mostly devs (the author among them), one security reviewer.
            let reviewer = if k + 1 == reviews {
                format!("sec{}", i % SECS)
            } else {
                format!("dev{}", (i + k) % DEVS)
            };
            push(
                &id(&reviewer),
                &key_of(&reviewer),
                Body::ChangeReviewed(ChangeReview {
                    change_id: change_id.clone(),
                    seen_subjects: seen.clone(),
                    approve: true,
                    comment: String::new(),
                    revision: Some(1),
                }),
                &mut reviewed,
            );
        }
        if i % 2 == 0 {
            push(
                &ci,
                &ci_key,
                Body::DeployRequested(DeployRequest {
                    action: "deploy".into(),
                    environment: "staging".into(),
                    repository: None,
                    kind: None,
                    namespace: None,
                    subjects: [digest].into(),
                    change_id: None,
                    break_glass: false,
                    justification: String::new(),
                }),
                &mut deployed,
            );
        }
    }
    vec![principals, opened, reviewed, deployed]
}

/// A data directory whose genesis policy is [`BENCH_POLICY`] and whose
/// admin key is the bench's deterministic one.
pub fn bench_datadir(root: &std::path::Path) -> Result<DataDir, CliError> {
    let dd = DataDir::new(root);
    dd.init(&InitOptions {
        listen: "127.0.0.1:0".into(),
        origin: "bench/log".into(),
        policy: Some(BENCH_POLICY.into()),
        ..InitOptions::default()
    })
    .map_err(CliError::failed)?;
    Ok(dd)
}

/// Appends `envs` in process with 256 concurrent tasks; returns appends/s.
pub async fn fill(svc: &Arc<Service>, envs: Vec<Envelope>) -> Result<f64, CliError> {
    let n = envs.len();
    let t = Instant::now();
    let (tx, rx) = mpsc::channel::<Envelope>(4096);
    let feed = async move {
        for env in envs {
            tx.send(env)
                .await
                .map_err(|_| CliError::failed("bench workers stopped"))?;
        }
        Ok::<(), CliError>(())
    };
    let (fed, drained) = tokio::join!(feed, append_all(svc, rx));
    fed?;
    drained?;
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Appends every envelope received, in process, with 256 concurrent tasks,
/// until the sender is dropped.
pub async fn append_all(svc: &Arc<Service>, rx: mpsc::Receiver<Envelope>) -> CliResult {
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut workers = Vec::new();
    for _ in 0..256 {
        let svc = svc.clone();
        let rx = rx.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let next = rx.lock().await.recv().await;
                let Some(env) = next else { break };
                svc.append(env, "CN=bench".into())
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok::<(), String>(())
        }));
    }
    for w in workers {
        w.await
            .map_err(|e| CliError::failed(e.to_string()))?
            .map_err(CliError::failed)?;
    }
    Ok(())
}

fn request(i: usize) -> pb::AuthorizeRequest {
    let (_, _, digest) = subjects_of(i);
    pb::AuthorizeRequest {
        action: "deploy".into(),
        environment: "prod".into(),
        subjects: vec![digest],
        actor: "ci".into(),
        ..Default::default()
    }
}

pub(crate) async fn run(a: BenchAuthorizeArgs) -> CliResult {
    let failed = |e: &dyn std::fmt::Display| CliError::failed(e.to_string());
    let guard = TempDir::new().map_err(|e| failed(&e))?;
    let dd = bench_datadir(&guard.0.join("data"))?;
    let svc = dd.open_service(Config::default()).map_err(|e| failed(&e))?;
    // The generated events are signed by deterministic keys; register the
    // bench's admin key with the real admin first.
    register_bench_admin(&dd, &svc).await?;
    let t = Instant::now();
    let waves = governance_events(a.changes, a.reviews);
    let sign_secs = t.elapsed().as_secs_f64();
    let n_events: usize = waves.iter().map(Vec::len).sum();
    let t = Instant::now();
    for wave in waves {
        fill(&svc, wave).await?;
    }
    let rate = n_events as f64 / t.elapsed().as_secs_f64();
    let (changes, reviews) = svc.with_state(|s| {
        (
            s.gov().change_count(),
            s.gov().changes().map(|c| c.reviews.len()).sum::<usize>(),
        )
    });
    outln!(
        "docket bench-authorize: {n_events} events signed in {sign_secs:.1} s, appended at {rate:.0}/s in process; state holds {changes} changes and {reviews} reviews"
    );
    let allowed = (0..a.changes.min(1000))
        .filter(|&i| {
            let (_, _, d) = subjects_of(i);
            svc.with_state(|s| s.decide(&prod(&d, s.last_time()), None).allow)
        })
        .count();
    outln!(
        "decisions on the first {} changes: {allowed} allow, {} deny (promotion order)",
        a.changes.min(1000),
        a.changes.min(1000) - allowed
    );
    outln!();
    outln!("| phase | ops | ops/s | p50 ms | p99 ms |");
    outln!("|---|---|---|---|---|");
    let levels: Vec<usize> = a.concurrency.iter().map(|c| (*c).max(1)).collect();
    let ops_at = |conc: usize| if conc == 1 { a.ops / 4 } else { a.ops };
    for &conc in &levels {
        in_process(&svc, conc, ops_at(conc), a.changes)
            .await?
            .print();
    }
    let server = Server::bind(
        "127.0.0.1:0",
        svc.clone(),
        Transport::dev_mtls(&dd).map_err(|e| failed(&e))?,
    )
    .await
    .map_err(|e| failed(&e))?;
    let port = server.local_addr().map_err(|e| failed(&e))?.port();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(server.run(async {
        let _ = stop_rx.await;
    }));
    let tls = dd.tls();
    let conn = Conn {
        url: format!("https://127.0.0.1:{port}"),
        ca: tls.ca_cert,
        cert: tls.client_cert,
        key: tls.client_key,
        plaintext: false,
    };
    let client = Caller::Tonic(conn.governance_with(None).await?);
    let ledger = conn.ledger_with(None).await?;
    let one = std::slice::from_ref(&client);
    // One connection (a TLS handshake) per client, made before timing: with
    // tonic's client (the CLI's), and with the lean one, which has no task
    // of its own per call.
    let most = levels.iter().copied().max().unwrap_or(1);
    let (mut own, mut lean) = (Vec::new(), Vec::new());
    if a.per_client_connections && most > 1 {
        for _ in 0..most {
            own.push(Caller::Tonic(conn.governance_with(None).await?));
            lean.push(Caller::Lean(H2Client::connect(&conn).await?));
        }
    }
    for &conc in &levels {
        // The empty RPC on the same kind of connection: the transport's ceiling.
        let mut ping = super::bench::ping(&ledger, conc, ops_at(conc)).await?;
        ping.name = format!("empty RPC (Ping) over mTLS gRPC, {conc} client(s)");
        ping.print();
        over_grpc(one, conc, ops_at(conc), a.changes, None)
            .await?
            .print();
        if conc > 1 && !own.is_empty() {
            for clients in [&own, &lean] {
                over_grpc(&clients[..conc], conc, ops_at(conc), a.changes, None)
                    .await?
                    .print();
            }
        }
    }
    for &rate in &a.open_rates {
        over_grpc(one, 64, a.ops, a.changes, Some(rate))
            .await?
            .print();
        for clients in [&own, &lean] {
            if !clients.is_empty() {
                let n = 64.min(clients.len());
                over_grpc(&clients[..n], 64, a.ops, a.changes, Some(rate))
                    .await?
                    .print();
            }
        }
    }
    drop(lean);
    drop(own);
    drop(client);
    drop(ledger);
    let _ = stop_tx.send(());
    handle
        .await
        .map_err(|e| failed(&e))?
        .map_err(|e| failed(&e))?;
    Ok(())
}

/// Registers the bench's deterministic admin key as a second key of the
/// data directory's admin, signed with the real admin key.
async fn register_bench_admin(dd: &DataDir, svc: &Arc<Service>) -> CliResult {
    let admin = crate::crypto::read_signing_key(&dd.admin_key()).map_err(CliError::failed)?;
    let ev = Event {
        event_id: "bench-admin-key".into(),
        claimed_time_nanos: now_nanos(),
        signer: PrincipalId::parse("admin").expect("valid id"),
        body: Body::KeyRotated {
            principal: PrincipalId::parse("admin").expect("valid id"),
            new_key: key_of("admin").verifying_key(),
            old_key: None,
        },
    };
    svc.append(sign_event(&ev, &admin), "CN=bench".into())
        .await
        .map_err(CliError::failed)?;
    Ok(())
}

fn prod(digest: &str, at: i64) -> crate::policy::Request {
    crate::policy::Request {
        action: "deploy".into(),
        environment: "prod".into(),
        repository: None,
        kind: None,
        namespace: None,
        subjects: [digest.to_owned()].into(),
        actor: "ci".into(),
        break_glass: false,
        at: jiff::Timestamp::from_nanosecond(i128::from(at.max(now_nanos())))
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH),
    }
}

async fn in_process(
    svc: &Arc<Service>,
    conc: usize,
    n: usize,
    changes: usize,
) -> Result<Stats, CliError> {
    let per = n / conc;
    // Requests built before timing, like the pre-signed envelopes elsewhere.
    let reqs: Arc<Vec<crate::policy::Request>> = Arc::new(
        (0..changes)
            .map(|i| prod(&subjects_of(i).2, now_nanos()))
            .collect(),
    );
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..conc {
        let svc = svc.clone();
        let reqs = reqs.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for k in 0..per {
                let req = &reqs[(w * 7919 + k * 31) % reqs.len()];
                let s = Instant::now();
                let (d, _) = svc
                    .read_durable(|st| st.decide(req, None))
                    .await
                    .map_err(|e| e.to_string())?;
                std::hint::black_box(d);
                lat.push(s.elapsed().as_micros() as u64);
            }
            Ok::<_, String>(lat)
        }));
    }
    let lat_us = join(tasks).await?;
    Ok(Stats {
        name: format!("Authorize in process, {conc} task(s)"),
        ops: per * conc,
        secs: t.elapsed().as_secs_f64(),
        lat_us,
    })
}

/// A load client: tonic's (the CLI's), or the lean one of
/// [`super::h2client`], which sends each call without tasks of its own, as
/// grpcio does.
#[derive(Clone, Debug)]
enum Caller {
    Tonic(pb::governance_client::GovernanceClient<tonic::transport::Channel>),
    Lean(H2Client),
}

impl Caller {
    async fn authorize(&mut self, req: pb::AuthorizeRequest) -> Result<pb::Decision, String> {
        match self {
            Caller::Tonic(c) => c
                .authorize(req)
                .await
                .map(tonic::Response::into_inner)
                .map_err(|e| e.to_string()),
            Caller::Lean(c) => c
                .unary("/docket.v1.Governance/Authorize", &req)
                .await
                .map_err(|e| e.to_string()),
        }
    }
}

/// `conc` clients sending `n` requests in all, client `w` over `clients[w % len]`
/// (one shared HTTP/2 connection, or one each). Closed loop (`rate` `None`):
/// each client sends its next request when the previous reply arrives.
/// Open loop (`rate` per second summed): client `w` sends its `k`-th request
/// at `(k * conc + w) / rate` seconds ([`pace`]), and latency runs from that
/// scheduled time, also when the client is behind it (its previous reply
/// came late), so a stall is charged to every request it delayed (no
/// coordinated omission); a schedule the server cannot keep shows as an
/// achieved rate below the offered one.
async fn over_grpc(
    clients: &[Caller],
    conc: usize,
    n: usize,
    changes: usize,
    rate: Option<u32>,
) -> Result<Stats, CliError> {
    let per = n / conc;
    let reqs: Arc<Vec<pb::AuthorizeRequest>> = Arc::new((0..changes).map(request).collect());
    let start = Instant::now() + std::time::Duration::from_millis(20 * u64::from(rate.is_some()));
    // Open loop: the pacer thread hands each client its due times.
    let (mut dues, mut pacer) = (Vec::new(), None);
    if let Some(r) = rate {
        let mut txs = Vec::new();
        for _ in 0..conc {
            let (tx, rx) = mpsc::unbounded_channel();
            txs.push(tx);
            dues.push(Some(rx));
        }
        let gap = std::time::Duration::from_secs_f64(1.0 / f64::from(r.max(1)));
        pacer = Some(std::thread::spawn(move || pace(start, gap, per, &txs)));
    }
    let mut tasks = Vec::new();
    for w in 0..conc {
        let mut c = clients[w % clients.len()].clone();
        let reqs = reqs.clone();
        let mut due = dues.get_mut(w).and_then(Option::take);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for k in 0..per {
                let req = reqs[(w * 7919 + k * 31) % reqs.len()].clone();
                // Timed from the due time, also when the client is behind
                // it (its previous reply came late): a stall is charged to
                // every request it delayed.
                let timed_from = match &mut due {
                    None => Instant::now(),
                    Some(rx) => rx.recv().await.ok_or("the pacer stopped early")?,
                };
                c.authorize(req).await?;
                lat.push(timed_from.elapsed().as_micros() as u64);
            }
            Ok::<_, String>(lat)
        }));
    }
    let lat_us = join(tasks).await?;
    let late = match pacer {
        Some(p) => {
            let mut late = p
                .join()
                .map_err(|_| CliError::failed("the pacer thread panicked"))?;
            late.sort_unstable();
            let p99 = late.get(late.len() * 99 / 100).copied().unwrap_or(0);
            format!(" (pacer's p99 lateness {:.2} ms)", p99 as f64 / 1000.0)
        }
        None => String::new(),
    };
    Ok(Stats {
        name: {
            let mut over = match clients.len() {
                1 => "one connection".to_owned(),
                n => format!("{n} connections"),
            };
            if matches!(clients.first(), Some(Caller::Lean(_))) {
                over.push_str(" (lean h2 client)");
            }
            match rate {
                None => format!("Authorize over mTLS gRPC, {conc} client(s), {over}"),
                Some(r) => format!(
                    "Authorize over mTLS gRPC, {conc} clients, {over}, open loop at {r}/s offered{late}"
                ),
            }
        },
        ops: per * conc,
        secs: start.elapsed().as_secs_f64(),
        lat_us,
    })
}

/// The open loop's clock: sends client `w` the due time of its `k`-th
/// request, `start + (k * clients + w) * gap`, when that time comes. A
/// thread of its own sleeping to each due time, since tokio's timer wakes on
/// 1 ms ticks and would release all the requests due within one (20 at
/// 20,000/s) at once, a burst that independent callers do not make. Its own
/// lateness (the kernel's timer slack, 50 µs by default, and waiting for a
/// core) counts as latency; it returns that lateness of each send, in µs.
fn pace(
    start: Instant,
    gap: std::time::Duration,
    per: usize,
    txs: &[mpsc::UnboundedSender<Instant>],
) -> Vec<u64> {
    let mut late = Vec::with_capacity(per * txs.len());
    for i in 0..per * txs.len() {
        let due = start + gap * u32::try_from(i).unwrap_or(u32::MAX);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        late.push(due.elapsed().as_micros() as u64);
        if txs[i % txs.len()].send(due).is_err() {
            // That client failed; its error is reported by the join.
            break;
        }
    }
    late
}

#[derive(Args, Debug)]
pub struct BenchEvidenceArgs {
    /// Changes in the log (about 13.5 entries each: commit, CI run, opening,
    /// ten reviews, and a staging deployment for every other change).
    #[arg(long, default_value_t = 7_400)]
    changes: usize,
    /// Exports (and verifications) of one-change bundles to time.
    #[arg(long, default_value_t = 21)]
    runs: usize,
    /// Exports (and verifications) of the whole-log period bundle, and of
    /// the latest change's complete bundle, to time.
    #[arg(long, default_value_t = 3)]
    period_runs: usize,
    /// Also write the period bundle and the log's verifier key here, and
    /// keep the data directory as `data/` in it (for profiling `docket
    /// evidence verify` on its own, or exporting from a large log by hand).
    #[arg(long)]
    keep: Option<std::path::PathBuf>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Export and verify times of a run of bundles.
struct Timed {
    runs: usize,
    export_s: f64,
    verify_s: f64,
    entries: usize,
    /// The last bundle.
    bundle: Vec<u8>,
}

impl Timed {
    /// Prints its row of the results table, times with `decimals` places.
    fn row(&self, what: &str, decimals: usize) {
        outln!(
            "| {what} (median of {}) | {} | {} | {:.decimals$} | {:.decimals$} | {:.0} |",
            self.runs,
            self.entries,
            self.bundle.len(),
            self.export_s * 1000.0,
            self.verify_s * 1000.0,
            self.entries as f64 / self.verify_s
        );
    }
}

/// Exports each scope from `svc` and verifies the bundle with `key`.
async fn time_bundles(
    svc: &Arc<crate::service::Service>,
    key: &crate::evidence::Trust,
    scopes: impl Iterator<Item = crate::evidence::Scope>,
) -> Result<Timed, CliError> {
    let failed = |e: &dyn std::fmt::Display| CliError::failed(e.to_string());
    let (mut export_s, mut verify_s) = (Vec::new(), Vec::new());
    let (mut entries, mut bundle) = (0, Vec::new());
    for scope in scopes {
        let t = Instant::now();
        bundle = svc.export_evidence(scope).await.map_err(|e| failed(&e))?;
        export_s.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        entries = crate::evidence::verify(&bundle, key)
            .map_err(|e| failed(&e))?
            .entries;
        verify_s.push(t.elapsed().as_secs_f64());
    }
    Ok(Timed {
        runs: export_s.len(),
        export_s: median(export_s),
        verify_s: median(verify_s),
        entries,
        bundle,
    })
}

/// `docket bench-evidence`: export and verify times for one-change bundles
/// and for a period covering the whole log.
pub(crate) async fn run_evidence(a: BenchEvidenceArgs) -> CliResult {
    use crate::evidence::{Scope, Trust};
    let failed = |e: &dyn std::fmt::Display| CliError::failed(e.to_string());
    let guard = TempDir::new().map_err(|e| failed(&e))?;
    // With --keep, the data directory is made where it is to stay.
    let root = match &a.keep {
        Some(dir) if dir.join("data").exists() => {
            return Err(CliError::usage(format!(
                "--keep {}: {} already exists",
                dir.display(),
                dir.join("data").display()
            )));
        }
        Some(dir) => dir.join("data"),
        None => guard.0.join("data"),
    };
    let dd = bench_datadir(&root)?;
    let svc = dd.open_service(Config::default()).map_err(|e| failed(&e))?;
    register_bench_admin(&dd, &svc).await?;
    let waves = governance_events(a.changes, 10);
    let t = Instant::now();
    for wave in waves {
        fill(&svc, wave).await?;
    }
    let size = svc.latest_checkpoint().size;
    outln!(
        "docket bench-evidence: log of {size} entries ({} changes) built in {:.1} s",
        a.changes,
        t.elapsed().as_secs_f64()
    );
    let key = Trust::Key(svc.verifier().clone());

    // One change (a different one each run, so nothing is cached).
    let one = time_bundles(
        &svc,
        &key,
        (0..a.runs.max(1)).map(|r| Scope::change(format!("CHG-{}", (r * 7919) % a.changes))),
    )
    .await?;
    outln!();
    outln!("| bundle | entries | bytes | export median ms | verify median ms | verify entries/s |");
    outln!("|---|---|---|---|---|---|");
    one.row("one change", 1);

    // The latest change, complete: every entry from its opening to the
    // checkpoint under one range proof. The log opens every change before
    // any review, so this range holds most of the log.
    let runs = a.period_runs.max(1);
    let complete = Scope::Change {
        id: format!("CHG-{}", a.changes.saturating_sub(1)),
        complete: true,
    };
    time_bundles(&svc, &key, std::iter::repeat_n(complete, runs))
        .await?
        .row("latest change, `--complete`", 0);

    // A period covering the whole log.
    let (first, last) = {
        let r = svc.reader();
        let t = |i| {
            r.entry(i)
                .ok()
                .flatten()
                .and_then(|(b, _)| crate::ledger::Entry::decode(&b).ok())
                .map(|e| e.integrated_time_nanos)
                .unwrap_or(0)
        };
        (t(0), t(size - 1))
    };
    let scope = Scope::Period {
        from: first,
        to: last + 1,
        environments: Vec::new(),
        repositories: Vec::new(),
    };
    let period = time_bundles(&svc, &key, std::iter::repeat_n(scope, runs)).await?;
    if let Some(dir) = &a.keep {
        std::fs::create_dir_all(dir).map_err(|e| failed(&e))?;
        std::fs::write(dir.join("period.tar"), &period.bundle).map_err(|e| failed(&e))?;
        std::fs::write(dir.join("log.vkey"), format!("{}\n", svc.verifier().vkey()))
            .map_err(|e| failed(&e))?;
    }
    period.row("period, whole log", 0);
    // The same log checked by `docket verify` (chain, nodes, fold and every
    // signature, no bundle): the floor set by strict Ed25519 on this machine.
    let t = Instant::now();
    let rep = crate::verify::verify_store(&**svc.reader().store(), None).map_err(|e| failed(&e))?;
    let secs = t.elapsed().as_secs_f64();
    outln!(
        "| (comparison) `docket verify` of the same log | {} | — | — | {:.0} | {:.0} |",
        rep.entries,
        secs * 1000.0,
        rep.entries as f64 / secs
    );
    outln!();
    outln!(
        "export includes selection, reading, the fold, rendering, the manifest signature and a full self-check verification of the bundle"
    );
    if let Some(dir) = &a.keep {
        outln!(
            "kept {} and the data directory {}",
            dir.join("period.tar").display(),
            root.display()
        );
    }
    Ok(())
}
