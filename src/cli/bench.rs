//! `docket bench`: a bounded loopback load generator. Starts a server in this
//! process on 127.0.0.1:0 over mTLS, measures empty RPCs (the ceiling), unary
//! and streaming appends at 1 and N concurrent clients, offline verification
//! and restart time, and PostgreSQL doing the same hash-chained insert with
//! synchronous commit (a throwaway cluster the bench starts and stops itself).
//! Every loop is bounded by a count; nothing leaves the loopback interface.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use ed25519_dalek::SigningKey;
use tokio::sync::mpsc;

use super::client::Conn;
use super::{CliError, CliResult};
use crate::api::convert::{envelope_to_pb, sign_event};
use crate::api::pb;
use crate::datadir::{DataDir, InitOptions};
use crate::event::{Body, Event, PrincipalId};
use crate::server::{Server, Transport};
use crate::service::Config;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Operations per measured phase.
    #[arg(long, default_value_t = 20_000)]
    ops: usize,
    /// The high concurrency level (the low one is always 1).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Entries in the log built for the restart measurement (0 skips it).
    #[arg(long, default_value_t = 1_000_000)]
    restart_entries: u64,
    /// Which network phases to run: any of ping, unary, stream.
    #[arg(long, value_delimiter = ',', default_value = "ping,unary,stream")]
    phases: Vec<String>,
    /// Skip the PostgreSQL comparison.
    #[arg(long)]
    no_postgres: bool,
    /// Directory of PostgreSQL binaries (initdb, pg_ctl).
    #[arg(long, default_value = "/usr/lib/postgresql/15/bin")]
    pg_bin: String,
}

pub(crate) struct Stats {
    pub(crate) name: String,
    pub(crate) ops: usize,
    pub(crate) secs: f64,
    pub(crate) lat_us: Vec<u64>,
}

impl Stats {
    pub(crate) fn print(&mut self) {
        self.lat_us.sort_unstable();
        let pct = |p: f64| {
            if self.lat_us.is_empty() {
                return 0.0;
            }
            let i = ((self.lat_us.len() as f64 - 1.0) * p).round() as usize;
            self.lat_us[i] as f64 / 1000.0
        };
        outln!(
            "| {} | {} | {:.0} | {:.2} | {:.2} |",
            self.name,
            self.ops,
            self.ops as f64 / self.secs,
            pct(0.50),
            pct(0.99)
        );
    }
}

pub(crate) fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(1)
}

/// Pre-signed append requests, so the measurement is the server's work.
fn envelopes(key: &SigningKey, prefix: &str, n: usize) -> Vec<pb::AppendRequest> {
    let signer = PrincipalId::parse("admin").expect("valid id");
    (0..n)
        .map(|i| {
            let ev = Event {
                event_id: format!("{prefix}-{i}"),
                claimed_time_nanos: now_nanos(),
                signer: signer.clone(),
                body: Body::Annotation {
                    subject: "bench/repo".into(),
                    kind: "deploy".into(),
                    text: "x".repeat(300),
                    attributes: Default::default(),
                },
            };
            pb::AppendRequest {
                envelope: Some(envelope_to_pb(&sign_event(&ev, key))),
            }
        })
        .collect()
}

pub(crate) async fn run(a: BenchArgs) -> CliResult {
    let failed = |e: &dyn std::fmt::Display| CliError::failed(e.to_string());
    let guard = TempDir::new().map_err(|e| failed(&e))?;
    let tmp = guard.0.clone();
    let dd = DataDir::new(tmp.join("data"));
    dd.init(&InitOptions {
        listen: "127.0.0.1:0".into(),
        origin: "bench/log".into(),
        ..InitOptions::default()
    })
    .map_err(|e| failed(&e))?;
    let svc = dd.open_service(Config::default()).map_err(|e| failed(&e))?;
    let tls = dd.tls();
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
    let conn = Conn {
        url: format!("https://127.0.0.1:{port}"),
        ca: tls.ca_cert.clone(),
        cert: tls.client_cert.clone(),
        key: tls.client_key.clone(),
        plaintext: false,
    };
    let admin = crate::crypto::read_signing_key(&dd.admin_key()).map_err(|e| failed(&e))?;
    let client = conn.ledger_with(None).await?;
    let hi = a.concurrency.max(1);
    outln!(
        "docket bench: {} ops per phase, concurrency 1 and {hi}, mTLS on loopback, one HTTP/2 connection",
        a.ops
    );
    outln!();
    outln!("| phase | ops | ops/s | p50 ms | p99 ms |");
    outln!("|---|---|---|---|---|");

    let phase = |name: &str| a.phases.iter().any(|p| p == name);
    for &conc in &[1usize, hi] {
        let n = if conc == 1 { a.ops / 4 } else { a.ops };
        if phase("ping") {
            ping(&client, conc, n).await?.print();
        }
    }
    for &conc in &[1usize, hi] {
        let n = if conc == 1 { a.ops / 4 } else { a.ops };
        if phase("unary") {
            let reqs = envelopes(&admin, &format!("unary{conc}"), n);
            unary(&client, conc, reqs).await?.print();
        }
    }
    for &conc in &[1usize, hi] {
        if phase("stream") {
            let reqs = envelopes(&admin, &format!("stream{conc}"), a.ops * 2);
            streaming(&client, conc, reqs).await?.print();
        }
    }
    drop(client);
    let _ = stop_tx.send(());
    handle
        .await
        .map_err(|e| failed(&e))?
        .map_err(|e| failed(&e))?;
    drop(svc);

    // Offline verification of the log just written.
    let store = crate::ledger::SledStore::open(&dd.db()).map_err(|e| failed(&e))?;
    let t = Instant::now();
    let rep = crate::verify::verify_store(&store, None).map_err(|e| failed(&e))?;
    let secs = t.elapsed().as_secs_f64();
    outln!();
    outln!(
        "verify: {} entries in {:.2} s = {:.0} entries/s",
        rep.entries,
        secs,
        rep.entries as f64 / secs
    );
    drop(store);

    if a.restart_entries > 0 {
        restart(&dd, &admin, a.restart_entries).await?;
    }
    if !a.no_postgres
        && let Err(e) = postgres(&a.pg_bin, &tmp, hi, a.ops / 4).await
    {
        outln!("postgres: skipped: {}", e.message);
    }
    Ok(())
}

/// The bench's scratch directory, removed however the bench ends.
pub(crate) struct TempDir(pub(crate) std::path::PathBuf);

impl TempDir {
    pub(crate) fn new() -> std::io::Result<Self> {
        let mut r = [0u8; 6];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut r);
        let p = std::env::temp_dir().join(format!("docket-bench-{}", hex::encode(r)));
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) type Client = pb::ledger_client::LedgerClient<tonic::transport::Channel>;

pub(crate) async fn ping(client: &Client, conc: usize, n: usize) -> Result<Stats, CliError> {
    let per = n / conc;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for _ in 0..per {
                let s = Instant::now();
                c.ping(pb::PingRequest {})
                    .await
                    .map_err(|e| e.to_string())?;
                lat.push(s.elapsed().as_micros() as u64);
            }
            Ok::<_, String>(lat)
        }));
    }
    let lat_us = join(tasks).await?;
    Ok(Stats {
        name: format!("empty RPC, {conc} client(s)"),
        ops: per * conc,
        secs: t.elapsed().as_secs_f64(),
        lat_us,
    })
}

pub(crate) async fn join(
    tasks: Vec<tokio::task::JoinHandle<Result<Vec<u64>, String>>>,
) -> Result<Vec<u64>, CliError> {
    let mut all = Vec::new();
    for t in tasks {
        all.extend(
            t.await
                .map_err(|e| CliError::failed(e.to_string()))?
                .map_err(CliError::failed)?,
        );
    }
    Ok(all)
}

/// Splits requests into `parts` nearly equal runs, one per client.
fn split(reqs: Vec<pb::AppendRequest>, parts: usize) -> Vec<Vec<pb::AppendRequest>> {
    let per = reqs.len().div_ceil(parts);
    let mut it = reqs.into_iter();
    (0..parts)
        .map(|_| it.by_ref().take(per).collect())
        .collect()
}

async fn unary(
    client: &Client,
    conc: usize,
    reqs: Vec<pb::AppendRequest>,
) -> Result<Stats, CliError> {
    let n = reqs.len();
    let chunks = split(reqs, conc);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for chunk in chunks {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(chunk.len());
            for r in chunk {
                let s = Instant::now();
                c.append(r).await.map_err(|e| e.to_string())?;
                lat.push(s.elapsed().as_micros() as u64);
            }
            Ok::<_, String>(lat)
        }));
    }
    let lat_us = join(tasks).await?;
    Ok(Stats {
        name: format!("durable append, unary, {conc} client(s)"),
        ops: n,
        secs: t.elapsed().as_secs_f64(),
        lat_us,
    })
}

async fn streaming(
    client: &Client,
    conc: usize,
    reqs: Vec<pb::AppendRequest>,
) -> Result<Stats, CliError> {
    let chunks = split(reqs, conc);
    // At most `WINDOW` appends in flight across all streams, so latency is
    // measured at a steady state rather than as the depth of a queue.
    const WINDOW: usize = 512;
    let per_stream = (WINDOW / conc).max(4);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for chunk in chunks {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            let count = chunk.len();
            let window = Arc::new(tokio::sync::Semaphore::new(per_stream));
            let (tx, rx) = mpsc::channel::<pb::AppendRequest>(per_stream);
            let (sent_tx, mut sent_rx) = mpsc::unbounded_channel::<Instant>();
            let feeder_window = window.clone();
            let feeder = tokio::spawn(async move {
                for r in chunk {
                    // The semaphore is never closed, so acquiring cannot fail.
                    feeder_window
                        .acquire()
                        .await
                        .expect("open semaphore")
                        .forget();
                    let _ = sent_tx.send(Instant::now());
                    if tx.send(r).await.is_err() {
                        break;
                    }
                }
            });
            let mut out = c
                .append_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            let mut lat = Vec::with_capacity(count);
            while let Some(r) = out.message().await.map_err(|e| e.to_string())? {
                if let Some(pb::append_stream_response::Result::Error(e)) = r.result {
                    return Err(format!("item {}: {}", r.sequence, e.message));
                }
                let s = sent_rx.recv().await.ok_or("sender gone")?;
                lat.push(s.elapsed().as_micros() as u64);
                window.add_permits(1);
                if lat.len() == count {
                    break;
                }
            }
            feeder.await.map_err(|e| e.to_string())?;
            Ok::<_, String>(lat)
        }));
    }
    let lat_us = join(tasks).await?;
    Ok(Stats {
        name: format!(
            "durable append, streaming, {conc} stream(s), {} in flight",
            per_stream * conc
        ),
        ops: lat_us.len(),
        secs: t.elapsed().as_secs_f64(),
        lat_us,
    })
}

/// Grows the log to `target` entries in process (no network), then measures
/// how long opening it takes: what a restart costs.
async fn restart(dd: &DataDir, admin: &SigningKey, target: u64) -> CliResult {
    let svc = dd
        .open_service(Config::default())
        .map_err(CliError::failed)?;
    let have = svc.latest_checkpoint().size;
    let t = Instant::now();
    let missing = target.saturating_sub(have) as usize;
    let (tx, rx) = mpsc::channel::<crate::ledger::Envelope>(4096);
    let appending = {
        let svc = svc.clone();
        tokio::spawn(async move { super::bench_gov::append_all(&svc, rx).await })
    };
    let key = admin.clone();
    let producer = tokio::task::spawn_blocking(move || {
        let signer = PrincipalId::parse("admin").expect("valid id");
        for i in 0..missing {
            let ev = Event {
                event_id: format!("fill-{i}"),
                claimed_time_nanos: now_nanos(),
                signer: signer.clone(),
                body: Body::Annotation {
                    subject: "bench/fill".into(),
                    kind: String::new(),
                    text: String::new(),
                    attributes: Default::default(),
                },
            };
            if tx.blocking_send(sign_event(&ev, &key)).is_err() {
                break;
            }
        }
    });
    producer
        .await
        .map_err(|e| CliError::failed(e.to_string()))?;
    appending
        .await
        .map_err(|e| CliError::failed(e.to_string()))??;
    let fill = t.elapsed().as_secs_f64();
    outln!(
        "restart: filled the log to {target} entries in process in {fill:.1} s ({:.0} appends/s, no network)",
        missing as f64 / fill
    );
    drop(svc);
    let mut times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let svc = dd
            .open_service(Config::default())
            .map_err(CliError::failed)?;
        let size = svc.latest_checkpoint().size;
        times.push(t.elapsed());
        drop(svc);
        if size != target {
            return Err(CliError::failed(format!(
                "reopened log has {size} entries, expected {target}"
            )));
        }
    }
    times.sort();
    outln!(
        "restart: open a {target}-entry log (sled open, state load, writer ready): median {:.3} s of 3 ({:?})",
        times[1].as_secs_f64(),
        times
            .iter()
            .map(|d| format!("{:.3}", d.as_secs_f64()))
            .collect::<Vec<_>>()
    );
    let store = crate::ledger::SledStore::open(&dd.db()).map_err(CliError::failed)?;
    let t = Instant::now();
    let rep = crate::verify::verify_store(&store, None).map_err(CliError::failed)?;
    let secs = t.elapsed().as_secs_f64();
    outln!(
        "verify: {} entries in {:.2} s = {:.0} entries/s",
        rep.entries,
        secs,
        rep.entries as f64 / secs
    );
    Ok(())
}

/// PostgreSQL 15 doing the same work per event: append a hash-chained row
/// (prev leaf hash in the row, leaf = BLAKE3(0x00 || row bytes)) and commit
/// with synchronous_commit = on, at 1 and `hi` concurrent connections.
async fn postgres(bin: &str, tmp: &Path, hi: usize, n: usize) -> CliResult {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;
    let failed = |m: String| CliError::failed(m);
    let dir = tmp.join("pg");
    std::fs::create_dir_all(&dir).map_err(|e| failed(e.to_string()))?;
    let _ = std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o777));
    let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777));
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| failed(e.to_string()))?;
        l.local_addr().map_err(|e| failed(e.to_string()))?.port()
    };
    let as_root = std::env::var("USER").map(|u| u == "root").unwrap_or(false) || is_root();
    let run = |args: Vec<String>| -> Result<(), CliError> {
        let mut cmd = if as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]);
            c.args(&args);
            c
        } else {
            let mut c = Command::new(&args[0]);
            c.args(&args[1..]);
            c
        };
        let out = cmd
            .output()
            .map_err(|e| failed(format!("{}: {e}", args[0])))?;
        if !out.status.success() {
            return Err(failed(format!(
                "{}: {}",
                args[0],
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    };
    let data = dir.join("data");
    let data_s = data.display().to_string();
    run(vec![
        format!("{bin}/initdb"),
        "-D".into(),
        data_s.clone(),
        "-A".into(),
        "trust".into(),
        "-U".into(),
        "bench".into(),
        "--no-sync".into(),
    ])?;
    run(vec![
        format!("{bin}/pg_ctl"),
        "-D".into(),
        data_s.clone(),
        "-w".into(),
        "-l".into(),
        dir.join("log").display().to_string(),
        "-o".into(),
        format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c synchronous_commit=on -c fsync=on -c max_connections=200",
            dir.display()
        ),
        "start".into(),
    ])?;
    let result = pg_measure(port, hi, n).await;
    let _ = run(vec![
        format!("{bin}/pg_ctl"),
        "-D".into(),
        data_s,
        "-m".into(),
        "fast".into(),
        "stop".into(),
    ]);
    result
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

async fn pg_measure(port: u16, hi: usize, n: usize) -> CliResult {
    let connect = || async move {
        let (c, conn) = tokio_postgres::connect(
            &format!("host=127.0.0.1 port={port} user=bench dbname=postgres"),
            tokio_postgres::NoTls,
        )
        .await
        .map_err(|e| CliError::failed(format!("connect: {e}")))?;
        tokio::spawn(conn);
        Ok::<_, CliError>(c)
    };
    let c = connect().await?;
    c.batch_execute(
        "CREATE TABLE log (idx bigint PRIMARY KEY, prev bytea NOT NULL, leaf bytea NOT NULL, entry bytea NOT NULL);
         INSERT INTO log VALUES (0, '\\x00', '\\x00', '\\x00');",
    )
    .await
    .map_err(|e| CliError::failed(e.to_string()))?;
    let payload = vec![7u8; 450];
    for &conc in &[1usize, hi] {
        let per = if conc == 1 { n / 4 } else { n } / conc;
        let mut clients = Vec::new();
        for _ in 0..conc {
            clients.push(connect().await?);
        }
        let t = Instant::now();
        let mut tasks = Vec::new();
        for c in clients {
            let payload = payload.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per);
                let mut c = c;
                for _ in 0..per {
                    let s = Instant::now();
                    let tx = c.transaction().await.map_err(|e| e.to_string())?;
                    tx.execute("SELECT pg_advisory_xact_lock(1)", &[])
                        .await
                        .map_err(|e| e.to_string())?;
                    let row = tx
                        .query_one("SELECT idx, leaf FROM log ORDER BY idx DESC LIMIT 1", &[])
                        .await
                        .map_err(|e| e.to_string())?;
                    let idx: i64 = row.get(0);
                    let prev: Vec<u8> = row.get(1);
                    let mut entry = prev.clone();
                    entry.extend_from_slice(&payload);
                    let leaf = crate::ledger::merkle::leaf_hash(&entry).to_vec();
                    tx.execute(
                        "INSERT INTO log (idx, prev, leaf, entry) VALUES ($1, $2, $3, $4)",
                        &[&(idx + 1), &prev, &leaf, &entry],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                    tx.commit().await.map_err(|e| e.to_string())?;
                    lat.push(s.elapsed().as_micros() as u64);
                }
                Ok::<_, String>(lat)
            }));
        }
        let lat_us = join(tasks).await?;
        Stats {
            name: format!(
                "PostgreSQL 15 hash-chained insert, synchronous_commit=on, {conc} conn(s)"
            ),
            ops: lat_us.len(),
            secs: t.elapsed().as_secs_f64(),
            lat_us,
        }
        .print();
    }
    Ok(())
}
