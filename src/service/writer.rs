//! The single writer thread. It drains queued appends into one batch, checks
//! each against the event-id index and the state, stages entries, signs one
//! checkpoint, writes the batch and flushes once (group commit); only then
//! does it publish the checkpoint and reply. While it flushes, new requests
//! queue up and form the next batch.
//!
//! Any storage error stops the writer (fail-stop): once a write or flush has
//! failed, the store may hold writes the appender no longer accounts for, so
//! acknowledging nothing more is the only safe answer. A panic while a batch
//! is processed stops it the same way. Restart recovers the durable prefix;
//! `docket serve` exits when the writer stops (see [`super::Service::stopped`]).
//!
//! (A variant that flushed on a second thread while the next batch was
//! written measured no faster here: sled's writes and flushes contend.)

use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, oneshot, watch};

use crate::ledger::{Appender, Checkpoint, FoldCounts, Staged, Store};
use crate::state::{AuthError, State};

use super::{AppendError, Committed, Job, WriteRequest};

pub(super) struct Writer {
    pub(super) appender: Appender<dyn Store>,
    pub(super) state: Arc<RwLock<State>>,
    pub(super) max_batch: usize,
    pub(super) clock: Arc<dyn super::Clock>,
}

/// Flushes written batches and replies.
pub(super) struct Flusher {
    pub(super) store: Arc<dyn Store>,
    pub(super) latest: Arc<RwLock<Arc<Checkpoint>>>,
    pub(super) size: watch::Sender<u64>,
}

type Reply = oneshot::Sender<Result<Committed, AppendError>>;

enum Outcome {
    New(Staged),
    /// Identical envelope already staged or committed at this index.
    Duplicate(u64),
}

/// One written, not yet durable batch.
pub(super) struct Written {
    checkpoint: Option<Arc<Checkpoint>>,
    replies: Vec<(Reply, Outcome)>,
}

impl Writer {
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Job>, flusher: Flusher) {
        let mut reqs = Vec::with_capacity(self.max_batch);
        while let Some(first) = rx.blocking_recv() {
            self.take(first, &mut reqs);
            while reqs.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(job) => self.take(job, &mut reqs),
                    Err(_) => break,
                }
            }
            if reqs.is_empty() {
                continue;
            }
            // A panic while folding or staging is a bug, and the state may
            // hold half an event: stop as after a storage failure. The
            // unwind poisons the state lock (readers then answer `Stopped`)
            // and drops every reply of the batch (their callers get
            // `Stopped`); nothing of the batch was flushed.
            let processed =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.process(&mut reqs)));
            let Ok(processed) = processed else {
                tracing::error!(
                    "the writer panicked (a bug; see the message above); nothing in the batch was \
                     acknowledged; stopping"
                );
                reqs.clear();
                break;
            };
            match processed {
                Ok(Some(w)) => {
                    if !flusher.flush_and_reply(w) {
                        break;
                    }
                }
                Ok(None) => {}
                Err(replies) => {
                    fail(replies);
                    break;
                }
            }
        }
        // Refuse new jobs, then drop every job already queued or being
        // queued: each awaiting append gets `Stopped` when its reply is
        // dropped. Merely dropping `rx` is not enough: a sender that took
        // its channel slot just before the drop would leave its job (and
        // its caller) waiting in the channel for as long as the service
        // lives. `blocking_recv` returns `None` only once no slot is held.
        rx.close();
        while rx.blocking_recv().is_some() {}
        tracing::info!("writer stopped");
    }

    /// Queues an append, or answers a manifest signature at once (it needs
    /// nothing from the batch: the key signs a digest, not log contents).
    fn take(&self, job: Job, reqs: &mut Vec<WriteRequest>) {
        match job {
            Job::Append(r) => reqs.push(r),
            Job::SignManifest { digest, reply } => {
                let _ = reply.send(self.appender.sign_manifest(&digest));
            }
        }
    }

    fn process(
        &mut self,
        reqs: &mut Vec<WriteRequest>,
    ) -> Result<Option<Written>, Vec<(Reply, Outcome)>> {
        let mut batch = self.appender.begin();
        let mut done: Vec<(Reply, Outcome)> = Vec::with_capacity(reqs.len());
        let mut st = self.state.write().expect("state lock poisoned");
        let now = self.clock.now_nanos();
        for req in reqs.drain(..) {
            let WriteRequest {
                envelope,
                event,
                mut key,
                keys_seen,
                identity,
                reply,
            } = req;
            match self.appender.lookup_event(&batch, &event.event_id) {
                Err(e) => {
                    tracing::error!(cause = %e, "reading the event index failed; stopping");
                    let _ = reply.send(Err(AppendError::Commit(e.into())));
                    return Err(done);
                }
                Ok(Some((index, digest))) => {
                    if digest == envelope.digest() {
                        done.push((reply, Outcome::Duplicate(index)));
                    } else {
                        let _ = reply.send(Err(AppendError::Duplicate {
                            event_id: event.event_id,
                            index,
                        }));
                    }
                    continue;
                }
                Ok(None) => {}
            }
            // The key was found before queuing. A key added since (an
            // earlier entry of this batch, or one written meanwhile) may be
            // one that replay will find first: authenticate again, as
            // replay will, since a review keeps the key that signed it.
            let now_held = st
                .principal(event.signer.as_str())
                .map_or(keys_seen, |p| p.keys.len());
            if now_held != keys_seen {
                match st
                    .signer_keys(&event)
                    .and_then(|k| k.authenticate(&envelope))
                {
                    Ok(k) => key = k,
                    Err(e) => {
                        let _ = reply.send(Err(AppendError::Auth(e)));
                        continue;
                    }
                }
            }
            // An earlier entry may also have revoked it since.
            let record = st
                .principal(event.signer.as_str())
                .and_then(|p| p.keys.iter().find(|k| k.key == key));
            if let Some(revoked_at) = record.and_then(|k| k.revoked_at) {
                let _ = reply.send(Err(AppendError::Auth(AuthError::RevokedKey {
                    keyid: crate::crypto::KeyId::of(&key).to_string(),
                    revoked_at,
                })));
                continue;
            }
            if let Err(e) = super::check_against_state(&st, &event) {
                let _ = reply.send(Err(e));
                continue;
            }
            let index = self.appender.next_index();
            // Read before the entry folds in: it counts the entries before it.
            let basis = st.basis_for(&event);
            if let Err(e) = st.apply(index, self.appender.time_for(now), &event, &key) {
                let _ = reply.send(Err(e.into()));
                continue;
            }
            let counts = FoldCounts {
                history_count: st.history_count(),
                basis,
            };
            match self.appender.stage(
                &mut batch,
                &identity,
                envelope,
                &event.event_id,
                now,
                counts,
            ) {
                Ok(staged) => done.push((reply, Outcome::New(staged))),
                Err(e) => {
                    // Sizes are checked before queuing, so this is a bug; the
                    // state already folded the event, so stop rather than
                    // guess.
                    tracing::error!(cause = %e, "entry failed to encode; stopping");
                    let _ = reply.send(Err(e.into()));
                    return Err(done);
                }
            }
        }
        let changes = st.take_changes();
        let heads = st.gov().heads();
        drop(st);
        if batch.is_empty() && done.is_empty() {
            return Ok(None);
        }
        match self.appender.write(batch, changes, heads) {
            Ok(cp) => Ok(Some(Written {
                checkpoint: cp.map(Arc::new),
                replies: done,
            })),
            Err(e) => {
                tracing::error!(cause = %e, "writing a batch failed; nothing in it was acknowledged; stopping");
                Err(done)
            }
        }
    }
}

fn fail(replies: Vec<(Reply, Outcome)>) {
    for (reply, _) in replies {
        let _ = reply.send(Err(AppendError::Stopped));
    }
}

impl Flusher {
    /// Flushes, then publishes the batch's checkpoint, replies, and records
    /// the checkpoint in the store's published mark. Returns false after a
    /// failed flush or mark: the caller must stop.
    pub(super) fn flush_and_reply(&self, job: Written) -> bool {
        if let Err(e) = self.store.flush() {
            tracing::error!(cause = %e, "flush failed; nothing in the batch was acknowledged; stopping");
            fail(job.replies);
            return false;
        }
        // The batch is durable now; publish its checkpoint.
        if let Some(cp) = &job.checkpoint {
            *self.latest.write().expect("checkpoint lock poisoned") = cp.clone();
            self.size.send_replace(cp.size);
        }
        let latest = self
            .latest
            .read()
            .expect("checkpoint lock poisoned")
            .clone();
        for (reply, outcome) in job.replies {
            let committed = match outcome {
                Outcome::New(staged) => Committed::New {
                    staged,
                    checkpoint: latest.clone(),
                },
                Outcome::Duplicate(index) => Committed::Duplicate(index),
            };
            let _ = reply.send(Ok(committed));
        }
        // Then where a store that later recovers a shorter log cannot take
        // it along. After the replies, so callers do not wait for it; the
        // mark may lag what was handed out (as after a power loss), never
        // lead what is durable. A failure stops the writer: from then on
        // the mark could no longer say what was handed out.
        if let Some(cp) = &job.checkpoint
            && let Err(e) = self.store.mark_published(cp.size, &cp.note)
        {
            tracing::error!(cause = %e, "recording the published checkpoint failed; stopping");
            return false;
        }
        true
    }
}
