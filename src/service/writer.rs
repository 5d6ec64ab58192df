//! The single writer: drains queued appends into one batch, checks each against
//! the state and the event-id index, stages entries, and commits the batch with
//! one flush and one signed checkpoint (group commit). Replies only after the
//! flush returns.

use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, oneshot, watch};

use crate::ledger::{Appender, Checkpoint, SledStore, Staged, Store};
use crate::state::{AuthError, State};

use super::{AppendError, Committed, WriteRequest, now_nanos};

pub(super) struct Writer {
    pub(super) appender: Appender<SledStore>,
    pub(super) store: Arc<SledStore>,
    pub(super) state: Arc<RwLock<State>>,
    pub(super) latest: Arc<RwLock<Arc<Checkpoint>>>,
    pub(super) size: watch::Sender<u64>,
    pub(super) max_batch: usize,
}

type Reply = oneshot::Sender<Result<Committed, AppendError>>;

enum Outcome {
    New(Staged),
    /// Identical envelope already staged or committed at this index.
    Duplicate(u64),
}

impl Writer {
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<WriteRequest>) {
        let mut reqs = Vec::with_capacity(self.max_batch);
        while let Some(first) = rx.blocking_recv() {
            reqs.push(first);
            while reqs.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(r) => reqs.push(r),
                    Err(_) => break,
                }
            }
            self.process(&mut reqs);
        }
        tracing::info!("writer stopped: every sender is gone");
    }

    fn process(&mut self, reqs: &mut Vec<WriteRequest>) {
        let mut batch = self.appender.begin();
        let mut done: Vec<(Reply, Outcome)> = Vec::with_capacity(reqs.len());
        let changes = {
            let mut st = self.state.write().expect("state lock poisoned");
            let now = now_nanos();
            for req in reqs.drain(..) {
                let WriteRequest {
                    envelope,
                    event,
                    key,
                    identity,
                    reply,
                } = req;
                match self.appender.lookup_event(&batch, &event.event_id) {
                    Err(e) => {
                        let _ = reply.send(Err(AppendError::Commit(e.into())));
                        continue;
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
                // The key was checked before queuing; an earlier entry may
                // have revoked it since.
                let still_active = st
                    .principal(event.signer.as_str())
                    .is_some_and(|p| p.active_keys().any(|k| *k == key));
                if !still_active {
                    let _ = reply.send(Err(AppendError::Auth(AuthError::RevokedKey {
                        keyid: crate::crypto::KeyId::of(&key).to_string(),
                        revoked_at: self.appender.next_index().saturating_sub(1),
                    })));
                    continue;
                }
                let index = self.appender.next_index();
                if let Err(e) = st.apply(index, &event, &key) {
                    let _ = reply.send(Err(e.into()));
                    continue;
                }
                match self
                    .appender
                    .stage(&mut batch, &identity, envelope, &event.event_id, now)
                {
                    Ok(staged) => done.push((reply, Outcome::New(staged))),
                    Err(e) => {
                        // Sizes were checked before queuing, so this is not
                        // expected; the state already folded the event, so
                        // abandon the whole batch and reload.
                        tracing::error!(cause = %e, "entry failed to encode; abandoning batch");
                        let _ = reply.send(Err(e.into()));
                        drop(st);
                        self.abandon(batch, done, "an entry in the same batch failed to encode");
                        return;
                    }
                }
            }
            st.take_changes()
        };
        if batch.is_empty() && done.is_empty() {
            return;
        }
        match self.appender.commit(batch, changes) {
            Ok(cp) => {
                let cp = match cp {
                    Some(cp) => {
                        let cp = Arc::new(cp);
                        *self.latest.write().expect("checkpoint lock poisoned") = cp.clone();
                        self.size.send_replace(cp.size);
                        cp
                    }
                    None => self
                        .latest
                        .read()
                        .expect("checkpoint lock poisoned")
                        .clone(),
                };
                for (reply, outcome) in done {
                    let committed = match outcome {
                        Outcome::New(staged) => Ok(Committed {
                            staged,
                            checkpoint: cp.clone(),
                            duplicate: false,
                        }),
                        Outcome::Duplicate(index) => self.duplicate(index, cp.clone()),
                    };
                    let _ = reply.send(committed);
                }
            }
            Err(e) => {
                tracing::error!(cause = %e, "group commit failed; nothing in the batch was acknowledged");
                let msg = e.to_string();
                for (reply, _) in done {
                    let _ = reply.send(Err(AppendError::Stopped));
                }
                self.reload(&msg);
            }
        }
    }

    fn duplicate(&self, index: u64, checkpoint: Arc<Checkpoint>) -> Result<Committed, AppendError> {
        let entry = self
            .store
            .entry(index)
            .map_err(|e| AppendError::Commit(e.into()))?
            .ok_or(AppendError::Stopped)?;
        let leaf = crate::ledger::merkle::leaf_hash(&entry);
        Ok(Committed {
            staged: Staged {
                index,
                entry: Arc::new(entry),
                leaf,
            },
            checkpoint,
            duplicate: true,
        })
    }

    fn abandon(
        &mut self,
        batch: crate::ledger::PendingBatch,
        done: Vec<(Reply, Outcome)>,
        why: &str,
    ) {
        self.appender.rollback(batch);
        for (reply, _) in done {
            let _ = reply.send(Err(AppendError::Stopped));
        }
        self.reload(why);
    }

    /// After a failed batch the in-memory state may hold events that were
    /// never written: reload it from the store.
    fn reload(&mut self, why: &str) {
        let loaded = self
            .store
            .state_pairs()
            .map_err(|e| e.to_string())
            .and_then(|p| State::load(p).map_err(|e| e.to_string()));
        match loaded {
            Ok(s) => *self.state.write().expect("state lock poisoned") = s,
            Err(e) => {
                // Without a trustworthy state the writer must not go on.
                tracing::error!(cause = %e, why, "cannot reload state; the writer stops");
                panic!("state reload failed after a failed commit: {e}");
            }
        }
    }
}
