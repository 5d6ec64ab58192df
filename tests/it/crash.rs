//! The real binary killed with SIGKILL while clients append; tamper detection.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};

use docket::api::pb;
use docket::cli::client::Conn;

use crate::common::{copy_dir, note, signed};

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

/// A store whose files come back holding less than was published (sled
/// recovers the longest intact prefix of a damaged or truncated file, and
/// says nothing) is refused by `serve` and by `verify`, which name the
/// published size, instead of handing the lost indices out again; a log
/// rewritten under the published size is refused the same way. Simulated
/// here by putting back an earlier copy of the store's files under the
/// published mark of the later log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_lost_published_entries_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (ok, out) = run_cli(&["init", "--listen", "127.0.0.1:0"], &data);
    assert!(ok, "{out}");
    let dd = docket::datadir::DataDir::new(&data);
    let admin = docket::crypto::read_signing_key(&dd.admin_key()).unwrap();
    let mark = dd.db().join(docket::ledger::PUBLISHED_MARK_FILE);
    let append = |ids: &[&str]| {
        let svc = dd.open_service(docket::service::Config::default()).unwrap();
        let rt = tokio::runtime::Handle::current();
        for id in ids {
            let env = docket::api::convert::sign_event(&note(id, "admin"), &admin);
            tokio::task::block_in_place(|| rt.block_on(svc.append(env, "CN=test".into()))).unwrap();
        }
        svc.latest_checkpoint().size
    };
    assert_eq!(append(&["a", "b"]), 3);
    let early = dir.path().join("early");
    copy_dir(&dd.db(), &early);
    assert_eq!(append(&["c", "d", "e"]), 6);
    let published = std::fs::read(&mark).unwrap();

    // The store's files as they were at 3 entries, the mark of 6.
    std::fs::remove_dir_all(dd.db()).unwrap();
    copy_dir(&early, &dd.db());
    std::fs::write(&mark, &published).unwrap();
    let refused = dd
        .open_service(docket::service::Config::default())
        .err()
        .expect("a store shorter than its published checkpoint is refused")
        .to_string();
    assert!(
        refused.contains("checkpoint of tree size 6")
            && refused.contains("the log holds only 3 entries: entries 3..5 were lost"),
        "{refused}"
    );
    let (ok, out) = run_verify(&data);
    assert!(!ok, "{out}");
    assert!(
        out.contains("tree size 6") && out.contains("the log holds only 3 entries"),
        "{out}"
    );
    // Nor is a bundle exported from it: it would prove a shortened log.
    let bundle = dir.path().join("b.tar");
    let b = bundle.to_str().unwrap();
    let (ok, out) = run_cli(
        &[
            "evidence",
            "export",
            "--offline",
            "--change",
            "CHG-1",
            "--out",
            b,
        ],
        &data,
    );
    assert!(!ok && out.contains("the log holds only 3 entries"), "{out}");
    assert!(!bundle.exists());

    // The same copy with its own mark is a sound backup: it opens, and it
    // takes new entries, which make another log of 6 than the one published.
    std::fs::remove_dir_all(dd.db()).unwrap();
    copy_dir(&early, &dd.db());
    assert_eq!(append(&["x", "y", "z"]), 6);
    let (ok, out) = run_verify(&data);
    assert!(ok, "{out}");
    std::fs::write(&mark, &published).unwrap();
    let refused = dd
        .open_service(docket::service::Config::default())
        .err()
        .expect("a log rewritten under its published checkpoint is refused")
        .to_string();
    assert!(
        refused.contains("the log's first 6 entries have another Merkle root"),
        "{refused}"
    );
    let (ok, out) = run_verify(&data);
    assert!(!ok && out.contains("another Merkle root"), "{out}");
}
