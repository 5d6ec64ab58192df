//! Storage failures stop the writer: nothing after the failure is
//! acknowledged, and the log reopens consistent and verifiable.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use docket::api::convert::sign_event;
use docket::cli::commands::{RebuildOutcome, rebuild_compare};
use docket::crypto::NoteSigner;
use docket::ledger::{Hash, KeyValue, Scan, SledStore, Store, StoreError, WriteBatch};
use docket::service::{AppendError, Config, Service};
use ed25519_dalek::SigningKey;
use futures::FutureExt as _;

use crate::common::note;

/// A sled store whose writes or flushes can be made to fail.
struct FailingStore {
    inner: Arc<SledStore>,
    fail_write: AtomicBool,
    fail_flush: AtomicBool,
    /// Panics in `write`, as a bug in the writer's path would.
    panic_write: AtomicBool,
}

fn injected() -> StoreError {
    StoreError::Corrupt {
        what: "injected failure",
        key: String::new(),
    }
}

impl Store for FailingStore {
    fn entry(&self, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.entry(index)
    }
    fn node(&self, level: u32, index: u64) -> Result<Option<Hash>, StoreError> {
        self.inner.node(level, index)
    }
    fn event(&self, event_id: &str) -> Result<Option<(u64, Hash)>, StoreError> {
        self.inner.event(event_id)
    }
    fn checkpoint(&self, size: u64) -> Result<Option<String>, StoreError> {
        self.inner.checkpoint(size)
    }
    fn checkpoint_at_or_after(&self, size: u64) -> Result<Option<(u64, String)>, StoreError> {
        self.inner.checkpoint_at_or_after(size)
    }
    fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError> {
        self.inner.latest_checkpoint()
    }
    fn checkpoint_sizes(&self) -> Result<Vec<u64>, StoreError> {
        self.inner.checkpoint_sizes()
    }
    fn size(&self) -> Result<u64, StoreError> {
        self.inner.size()
    }
    fn event_index_len(&self) -> Result<u64, StoreError> {
        self.inner.event_index_len()
    }
    fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        if self.panic_write.load(Ordering::SeqCst) {
            panic!("injected panic in the writer");
        }
        if self.fail_write.load(Ordering::SeqCst) {
            return Err(injected());
        }
        self.inner.write(batch)
    }
    fn flush(&self) -> Result<(), StoreError> {
        if self.fail_flush.load(Ordering::SeqCst) {
            return Err(injected());
        }
        self.inner.flush()
    }
    fn scan_entries(&self, start: u64) -> Scan<'_, Vec<u8>> {
        self.inner.scan_entries(start)
    }
    fn scan_nodes(&self, level: u32, start: u64) -> Scan<'_, Hash> {
        self.inner.scan_nodes(level, start)
    }
    fn state_pairs(&self) -> Result<Vec<KeyValue>, StoreError> {
        self.inner.state_pairs()
    }
    fn replace_state(&self, pairs: Vec<KeyValue>) -> Result<(), StoreError> {
        self.inner.replace_state(pairs)
    }
}

fn log() -> (Arc<SledStore>, SigningKey, SigningKey) {
    let admin = SigningKey::from_bytes(&[11; 32]);
    let log_key = SigningKey::from_bytes(&[12; 32]);
    let inner = crate::common::memory_log("failstop/log", &admin, &log_key);
    (inner, admin, log_key)
}

/// `inner` behind a store that fails only when told to.
fn failing(inner: &Arc<SledStore>) -> Arc<FailingStore> {
    Arc::new(FailingStore {
        inner: inner.clone(),
        fail_write: AtomicBool::new(false),
        fail_flush: AtomicBool::new(false),
        panic_write: AtomicBool::new(false),
    })
}

/// The service over `store`, its checkpoints signed by `log_key`.
fn open<S: Store>(store: Arc<S>, log_key: &SigningKey) -> Service {
    Service::open(
        store,
        NoteSigner::new("failstop/log", log_key.clone()),
        Config::default(),
    )
    .unwrap()
}

async fn check_failure(fail_flush: bool) {
    let (inner, admin, log_key) = log();
    let store = failing(&inner);
    let svc = open(store.clone(), &log_key);
    let a = svc
        .append(sign_event(&note("a", "admin"), &admin), "CN=t".into())
        .await
        .unwrap();
    assert_eq!(a.index, 1);
    // A healthy writer has not stopped (and never does while the service lives).
    assert!(svc.stopped().now_or_never().is_none());

    if fail_flush {
        store.fail_flush.store(true, Ordering::SeqCst);
    } else {
        store.fail_write.store(true, Ordering::SeqCst);
    }
    let b = sign_event(&note("b", "admin"), &admin);
    let err = svc.append(b.clone(), "CN=t".into()).await.unwrap_err();
    assert!(matches!(err, AppendError::Stopped), "{err}");
    // The failure is sticky even though the store would now work again.
    store.fail_flush.store(false, Ordering::SeqCst);
    store.fail_write.store(false, Ordering::SeqCst);
    let err = svc
        .append(sign_event(&note("c", "admin"), &admin), "CN=t".into())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not accepting appends"), "{err}");
    // The writer's end is announced, so `docket serve` can exit.
    tokio::time::timeout(std::time::Duration::from_secs(60), svc.stopped())
        .await
        .expect("stopped() resolves once the writer has stopped");
    // Nothing after the failure was published as durable.
    assert_eq!(svc.latest_checkpoint().size, 2);
    assert!(svc.durable_entry(2).unwrap().is_none());
    drop(svc);

    // Restart on the same store: consistent, verifiable, nothing doubled.
    let svc = open(inner.clone(), &log_key);
    let size = svc.latest_checkpoint().size;
    // A flush failure may leave the written batch in place (as a crash might);
    // a write failure leaves nothing.
    assert_eq!(size, if fail_flush { 3 } else { 2 });
    docket::verify::verify_store(&*inner, Some(svc.verifier())).unwrap();
    assert!(matches!(
        rebuild_compare(&inner).unwrap(),
        RebuildOutcome::Equal { .. }
    ));
    // Retrying b yields exactly one entry for it.
    let retried = svc.append(b, "CN=t".into()).await.unwrap();
    assert_eq!(retried.index, 2);
    assert_eq!(retried.duplicate, fail_flush);
    assert_eq!(svc.latest_checkpoint().size, 3);
}

#[tokio::test]
async fn a_failed_flush_stops_the_writer() {
    check_failure(true).await;
}

#[tokio::test]
async fn a_failed_write_stops_the_writer() {
    check_failure(false).await;
}

/// Appends racing with a writer that stops on a failed flush all get an
/// answer: none is left waiting in the channel. (Dropping the channel's
/// receiver alone could strand an append that took its slot at that
/// moment, and its caller waited for ever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_racing_a_stopping_writer_all_get_an_answer() {
    for round in 0..40 {
        let (inner, admin, log_key) = log();
        let store = failing(&inner);
        store.fail_flush.store(true, Ordering::SeqCst);
        let svc = Arc::new(open(store, &log_key));
        let appends = (0..32).map(|i| {
            let (svc, admin) = (svc.clone(), admin.clone());
            tokio::spawn(async move {
                let ev = sign_event(&note(&format!("r{round}-{i}"), "admin"), &admin);
                svc.append(ev, "CN=t".into()).await
            })
        });
        let answers = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            futures::future::join_all(appends),
        )
        .await
        .unwrap_or_else(|_| panic!("round {round}: an append never got an answer"));
        for a in answers {
            let err = a.unwrap().unwrap_err();
            assert!(matches!(err, AppendError::Stopped), "round {round}: {err}");
        }
    }
}

/// A panic on the writer's path (a bug) stops it like a storage failure:
/// the append gets `Stopped`, durable reads answer `Stopped` instead of
/// reading a state that may hold half an event, `stopped()` resolves, and a
/// restart recovers the durable prefix.
#[tokio::test]
async fn a_panic_in_the_writer_stops_it_cleanly() {
    let (inner, admin, log_key) = log();
    let store = failing(&inner);
    let svc = open(store.clone(), &log_key);
    svc.append(sign_event(&note("a", "admin"), &admin), "CN=t".into())
        .await
        .unwrap();
    let before = svc.read_durable(|s| s.next_index()).await.unwrap();
    assert_eq!(before, (2, 2));

    store.panic_write.store(true, Ordering::SeqCst);
    let b = sign_event(&note("b", "admin"), &admin);
    let err = svc.append(b.clone(), "CN=t".into()).await.unwrap_err();
    assert!(matches!(err, AppendError::Stopped), "{err}");
    tokio::time::timeout(std::time::Duration::from_secs(60), svc.stopped())
        .await
        .expect("stopped() resolves once the writer has panicked");
    store.panic_write.store(false, Ordering::SeqCst);
    // The state folded b before the panic; no answer may rest on it.
    assert!(svc.read_durable(|s| s.next_index()).await.is_err());
    let err = svc
        .append(sign_event(&note("c", "admin"), &admin), "CN=t".into())
        .await
        .unwrap_err();
    assert!(matches!(err, AppendError::Stopped), "{err}");
    assert_eq!(svc.latest_checkpoint().size, 2);
    drop(svc);

    let svc = open(inner.clone(), &log_key);
    assert_eq!(svc.latest_checkpoint().size, 2);
    docket::verify::verify_store(&*inner, Some(svc.verifier())).unwrap();
    let retried = svc.append(b, "CN=t".into()).await.unwrap();
    assert_eq!((retried.index, retried.duplicate), (2, false));
}
