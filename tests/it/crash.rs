//! The real binary killed with SIGKILL while clients append; tamper detection.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};

use docket::api::pb;
use docket::cli::client::Conn;

use crate::common::{note, signed};

use crate::common::BIN;

fn start(data: &Path) -> (Child, u16) {
    let (child, addr) = crate::common::spawn_serve(data);
    (child, addr.port())
}

fn conn(data: &Path, port: u16) -> Conn {
    let tls = docket::datadir::DataDir::new(data).tls();
    Conn {
        url: format!("https://127.0.0.1:{port}"),
        ca: tls.ca_cert,
        cert: tls.client_cert,
        key: tls.client_key,
        plaintext: false,
    }
}

fn run_cli(args: &[&str], data: &Path) -> (bool, String) {
    let out = Command::new(BIN)
        .args(args)
        .arg("--data")
        .arg(data)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_appends_loses_nothing_acknowledged() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (ok, out) = run_cli(&["init", "--listen", "127.0.0.1:0"], &data);
    assert!(ok, "{out}");
    let admin = docket::crypto::read_signing_key(&data.join("admin.key")).unwrap();
    let (mut child, port) = start(&data);

    // Eight clients append until the server dies; each records what was acknowledged.
    let acked: Arc<Mutex<BTreeMap<String, (u64, pb::AppendRequest)>>> = Default::default();
    let total = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (enough_tx, enough_rx) = tokio::sync::oneshot::channel::<()>();
    let enough_tx = Arc::new(Mutex::new(Some(enough_tx)));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let c = conn(&data, port);
        let admin = admin.clone();
        let acked = acked.clone();
        let total = total.clone();
        let enough_tx = enough_tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = c.ledger().await.unwrap();
            for i in 0.. {
                let id = format!("w{w}-{i}");
                let req = signed(&note(&id, "admin"), &admin);
                match client.append(req.clone()).await {
                    Ok(r) => {
                        acked
                            .lock()
                            .unwrap()
                            .insert(id, (r.into_inner().index, req));
                        if total.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == 400
                            && let Some(tx) = enough_tx.lock().unwrap().take()
                        {
                            let _ = tx.send(());
                        }
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    enough_rx.await.unwrap();
    child.kill().unwrap(); // SIGKILL, with appends in flight
    child.wait().unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 400);

    // Restart: every acknowledged event is there, at the index its receipt gave.
    let (mut child, port) = start(&data);
    let mut client = conn(&data, port).ledger().await.unwrap();
    for (id, (index, req)) in &acked {
        let e = client
            .get_entry(pb::GetEntryRequest { index: *index })
            .await
            .unwrap()
            .into_inner();
        let entry = docket::ledger::Entry::decode(&e.entry).unwrap();
        let ev = docket::api::convert::decode_event(&entry.envelope.payload).unwrap();
        assert_eq!(&ev.event_id, id);
        // A client retrying after the crash gets the original receipt.
        let again = client.append(req.clone()).await.unwrap().into_inner();
        assert!(again.duplicate);
        assert_eq!(again.index, *index);
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // Killed again, the store was not closed: opening it would recover it
    // and rewrite its files. `docket verify` checks a scratch copy, and
    // leaves the evidence byte for byte as it found it.
    let files = |dir: &Path| {
        let mut out = std::collections::BTreeMap::new();
        let mut todo = vec![dir.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    todo.push(p);
                } else {
                    out.insert(p.clone(), std::fs::read(&p).unwrap());
                }
            }
        }
        out
    };
    let before = files(&data);
    let (ok, out) = run_cli(&["verify"], &data);
    assert!(ok, "{out}");
    assert!(out.starts_with("OK: "), "{out}");
    assert!(
        before == files(&data),
        "docket verify changed the data directory"
    );
    let (ok, out) = run_cli(&["rebuild"], &data);
    assert!(ok && out.contains("identical"), "{out}");
}

#[tokio::test]
async fn verify_names_the_index_of_a_tampered_entry() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let s = crate::common::server().run().await;
    let admin = s.admin_key();
    let mut c = s.client().await;
    for i in 0..10 {
        c.append(signed(&note(&format!("x-{i}"), "admin"), &admin))
            .await
            .unwrap();
    }
    let saved = c
        .get_checkpoint(pb::GetCheckpointRequest {})
        .await
        .unwrap()
        .into_inner();
    drop(c);
    let (_dir, data) = s.stop().await;
    // The server and its service are gone, so the store is free again.
    let (ok, out) = run_verify(&data.root);
    assert!(ok, "{out}");
    let store = docket::ledger::SledStore::open(&data.db()).unwrap();

    // An insider flips one byte of entry 6 (inside the payload).
    let mut bytes = docket::ledger::Store::entry(&store, 6).unwrap().unwrap();
    let n = bytes.len();
    bytes[n - 80] ^= 0x01;
    store.dangerous_overwrite_entry(6, &bytes).unwrap();
    drop(store);
    let (ok, out) = run_verify(&data.root);
    assert!(!ok);
    assert!(out.contains("FAILED at entry 6"), "{out}");

    // The checkpoint saved before the tampering no longer matches what the
    // store now proves: its root differs from the recomputed one.
    assert_eq!(saved.tree_size, 11);
}

fn run_verify(data: &Path) -> (bool, String) {
    run_cli(&["verify"], data)
}
