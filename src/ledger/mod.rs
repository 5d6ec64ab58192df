//! The append-only log: entries, Merkle tree, checkpoints and proofs over a
//! [`Store`]. Knows nothing of gRPC, events' meaning or policy. A committed
//! entry is never rewritten.

mod checkpoint;
mod entry;
pub mod merkle;
mod store;

use std::collections::HashMap;
use std::sync::Arc;

pub use checkpoint::{
    Checkpoint, CheckpointError, Heads, HeadsRoot, MANIFEST_HEADER, sign_manifest, verify_manifest,
};
pub use entry::{
    DecodeError, EncodeError, Entry, Envelope, EnvelopeSignature, FORMAT_VERSION, MAX_SIGNATURES,
};
pub use merkle::{CompactRange, Hash, ProofError};
pub use store::{KeyValue, PUBLISHED_MARK_FILE, Scan, SledStore, Store, StoreError, WriteBatch};

use crate::crypto::NoteSigner;
use merkle::NodeSource;

/// Read access to a log; cheap to clone and safe to share between tasks.
pub struct LedgerReader<S: Store + ?Sized> {
    store: Arc<S>,
}

impl<S: Store + ?Sized> Clone for LedgerReader<S> {
    fn clone(&self) -> Self {
        LedgerReader {
            store: self.store.clone(),
        }
    }
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("index {index} is beyond the tree size {size}")]
    OutOfRange { index: u64, size: u64 },
    #[error("the log holds no node ({level}, {index}); the store is damaged")]
    MissingNode { level: u32, index: u64 },
}

struct Nodes<'a, S: ?Sized>(&'a S);

impl<S: Store + ?Sized> NodeSource for Nodes<'_, S> {
    type Error = ReadError;
    fn perfect(&self, level: u32, index: u64) -> Result<Hash, ReadError> {
        self.0
            .node(level, index)?
            .ok_or(ReadError::MissingNode { level, index })
    }
}

impl<S: Store + ?Sized> LedgerReader<S> {
    /// Reads through `store`.
    pub fn new(store: Arc<S>) -> Self {
        LedgerReader { store }
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// Number of durable entries.
    pub fn size(&self) -> Result<u64, ReadError> {
        Ok(self.store.size()?)
    }

    /// Entry bytes and leaf hash at `index`, if present.
    pub fn entry(&self, index: u64) -> Result<Option<(Vec<u8>, Hash)>, ReadError> {
        let Some(bytes) = self.store.entry(index)? else {
            return Ok(None);
        };
        let leaf = Nodes(&*self.store).perfect(0, index)?;
        Ok(Some((bytes, leaf)))
    }

    /// Inclusion proof of `index` in the tree of `size` leaves.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, ReadError> {
        if index >= size {
            return Err(ReadError::OutOfRange { index, size });
        }
        merkle::inclusion_proof(&Nodes(&*self.store), index, size)
    }

    /// Consistency proof from `old` to `new` leaves (`0 < old <= new`).
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, ReadError> {
        if old == 0 || old > new {
            return Err(ReadError::OutOfRange {
                index: old,
                size: new,
            });
        }
        merkle::consistency_proof(&Nodes(&*self.store), old, new)
    }

    /// Root of the tree of `size` leaves.
    pub fn root(&self, size: u64) -> Result<Hash, ReadError> {
        merkle::root(&Nodes(&*self.store), size)
    }

    /// The signed checkpoint note for `size`, if one was signed.
    pub fn checkpoint_note(&self, size: u64) -> Result<Option<String>, ReadError> {
        Ok(self.store.checkpoint(size)?)
    }

    /// The first checkpoint signed after entry `index` was written: the one
    /// its original receipt carried.
    pub fn checkpoint_covering(&self, index: u64) -> Result<Option<(u64, String)>, ReadError> {
        Ok(self.store.checkpoint_at_or_after(index + 1)?)
    }

    /// The latest signed checkpoint note and its size.
    pub fn latest_checkpoint_note(&self) -> Result<Option<(u64, String)>, ReadError> {
        Ok(self.store.latest_checkpoint()?)
    }

    /// Index and envelope digest recorded for an event id.
    pub fn event(&self, event_id: &str) -> Result<Option<(u64, Hash)>, ReadError> {
        Ok(self.store.event(event_id)?)
    }

    /// What is wrong with the log against the store's published mark
    /// (ledger-format §9.3), as (the mark's size, why): the mark does not
    /// verify under `verifier`, or the log holds fewer entries than it
    /// names, or another root at its size. `None` when the log holds the
    /// marked tree, or when no mark reads back whole.
    pub fn published_mark_problem(
        &self,
        verifier: &crate::crypto::NoteVerifier,
    ) -> Result<Option<(u64, String)>, ReadError> {
        let Some((marked, note)) = self.store.published_mark()? else {
            return Ok(None);
        };
        let size = self.size()?;
        let problem = mark_problem(marked, &note, verifier, size, || self.root(marked))?;
        Ok(problem.map(|p| (marked, p)))
    }
}

/// Why a log of `size` entries does not hold the tree the published mark
/// names (`marked`, `note`; ledger-format §9.3), or `None` when it does.
/// `root_at_mark` gives the log's root at `marked`, asked only when the log
/// holds that many entries.
pub fn mark_problem<E>(
    marked: u64,
    note: &str,
    verifier: &crate::crypto::NoteVerifier,
    size: u64,
    root_at_mark: impl FnOnce() -> Result<Hash, E>,
) -> Result<Option<String>, E> {
    let cp = match Checkpoint::verify(note, verifier, verifier.name()) {
        Ok(cp) => cp,
        Err(e) => return Ok(Some(format!("it does not verify with the log's key: {e}"))),
    };
    Ok(if cp.size != marked {
        Some(format!("its note is for tree size {}", cp.size))
    } else if marked > size {
        Some(format!(
            "the log holds only {size} entries: entries {size}..{} were lost",
            marked - 1
        ))
    } else if root_at_mark()? != cp.root {
        Some(format!(
            "the log's first {marked} entries have another Merkle root: the log was rewritten"
        ))
    } else {
        None
    })
}

/// What the fold records in an entry it stages (format version 3).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FoldCounts {
    /// Identity and policy entries at indices up to and including this one
    /// ([`Entry::history_count`]).
    pub history_count: u64,
    /// The decision basis ([`Entry::basis`]); empty but for deployments.
    pub basis: Vec<(String, u64)>,
}

/// An entry staged in a batch.
#[derive(Clone, Debug)]
pub struct Staged {
    pub index: u64,
    pub entry: Arc<Vec<u8>>,
    pub leaf: Hash,
}

/// Entries staged but not yet committed.
pub struct PendingBatch {
    log: Vec<KeyValue>,
    events: HashMap<String, (u64, Hash)>,
}

impl PendingBatch {
    /// Number of staged entries.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// True when nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// The single writer of a log. Stages entries in memory, then commits a batch
/// atomically with one flush and one signed checkpoint (group commit).
pub struct Appender<S: Store + ?Sized> {
    store: Arc<S>,
    signer: NoteSigner,
    origin: String,
    range: CompactRange,
    last_leaf: Hash,
    last_time: i64,
}

/// Why an append could not be committed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored entry {index} does not decode: {source}")]
    Corrupt { index: u64, source: DecodeError },
}

impl<S: Store + ?Sized> Appender<S> {
    /// Opens the writer at the end of the stored log.
    pub fn open(store: Arc<S>, signer: NoteSigner, origin: &str) -> Result<Self, CommitError> {
        let size = store.size()?;
        let range = CompactRange::from_source(&Nodes(&*store), size)?;
        let (last_leaf, last_time) = match size.checked_sub(1) {
            None => ([0u8; 32], i64::MIN),
            Some(i) => {
                let leaf = Nodes(&*store).perfect(0, i)?;
                let bytes = store
                    .entry(i)?
                    .ok_or(ReadError::MissingNode { level: 0, index: i })?;
                let e = Entry::decode(&bytes)
                    .map_err(|source| CommitError::Corrupt { index: i, source })?;
                (leaf, e.integrated_time_nanos)
            }
        };
        Ok(Appender {
            store,
            signer,
            origin: origin.to_owned(),
            range,
            last_leaf,
            last_time,
        })
    }

    /// Number of committed plus staged entries: the index the next staged entry gets.
    pub fn next_index(&self) -> u64 {
        self.range.size()
    }

    /// Starts a batch.
    pub fn begin(&self) -> PendingBatch {
        PendingBatch {
            log: Vec::new(),
            events: HashMap::new(),
        }
    }

    /// The (index, envelope digest) of an event id, staged or committed.
    pub fn lookup_event(
        &self,
        batch: &PendingBatch,
        event_id: &str,
    ) -> Result<Option<(u64, Hash)>, StoreError> {
        if let Some(v) = batch.events.get(event_id) {
            return Ok(Some(*v));
        }
        self.store.event(event_id)
    }

    /// The integrated time the next staged entry gets for `now_nanos`:
    /// raised if needed so integrated times never decrease along the log.
    pub fn time_for(&self, now_nanos: i64) -> i64 {
        now_nanos.max(self.last_time)
    }

    /// Stages one entry. Its integrated time is [`Appender::time_for`] `now_nanos`.
    /// `counts` come from the fold: the ledger does not decode events.
    pub fn stage(
        &mut self,
        batch: &mut PendingBatch,
        transport_identity: &str,
        envelope: Envelope,
        event_id: &str,
        now_nanos: i64,
        counts: FoldCounts,
    ) -> Result<Staged, EncodeError> {
        let index = self.range.size();
        let digest = envelope.digest();
        let entry = Entry {
            index,
            integrated_time_nanos: self.time_for(now_nanos),
            prev_leaf_hash: self.last_leaf,
            history_count: Some(counts.history_count),
            basis: Some(counts.basis),
            transport_identity: transport_identity.to_owned(),
            envelope,
        };
        let bytes = entry.encode()?;
        let leaf = merkle::leaf_hash(&bytes);
        for (level, idx, h) in self.range.push(leaf) {
            batch.log.push((store::node_key(level, idx), h.to_vec()));
        }
        let mut ev = index.to_be_bytes().to_vec();
        ev.extend_from_slice(&digest);
        batch.log.push((store::event_key(event_id), ev));
        batch.log.push((store::entry_key(index), bytes.clone()));
        batch.events.insert(event_id.to_owned(), (index, digest));
        self.last_leaf = leaf;
        self.last_time = entry.integrated_time_nanos;
        Ok(Staged {
            index,
            entry: Arc::new(bytes),
            leaf,
        })
    }

    /// Signs a checkpoint over everything staged, with `heads` (the change
    /// and subject heads of the state folded from the same entries), and writes the
    /// batch and the state changes to the store. Nothing is durable until the store is
    /// flushed; the caller acknowledges only after a flush that began after
    /// this returned. An error leaves the store in an unknown state relative to
    /// this appender, so the caller must stop appending (fail-stop).
    pub fn write(
        &mut self,
        batch: PendingBatch,
        state: Vec<KeyValue>,
        heads: Heads,
    ) -> Result<Option<Checkpoint>, CommitError> {
        if batch.is_empty() && state.is_empty() {
            return Ok(None);
        }
        let PendingBatch { mut log, .. } = batch;
        let cp = self.sign_current(heads);
        log.push((store::checkpoint_key(cp.size), cp.note.clone().into_bytes()));
        self.store.write(WriteBatch { log, state })?;
        Ok(Some(cp))
    }

    /// [`Appender::write`] followed by a flush: durable on return.
    pub fn commit(
        &mut self,
        batch: PendingBatch,
        state: Vec<KeyValue>,
        heads: Heads,
    ) -> Result<Option<Checkpoint>, CommitError> {
        let cp = self.write(batch, state, heads)?;
        self.store.flush()?;
        if let Some(cp) = &cp {
            self.store.mark_published(cp.size, &cp.note)?;
        }
        Ok(cp)
    }

    /// Signs an evidence manifest statement ([`sign_manifest`]): the only
    /// other thing the log key signs besides checkpoints.
    pub fn sign_manifest(&self, digest: &Hash) -> String {
        sign_manifest(&self.signer, &self.origin, digest)
    }

    /// Signs a checkpoint for the current size without writing it; `heads`
    /// must be those of the state folded to that size.
    pub fn sign_current(&self, heads: Heads) -> Checkpoint {
        Checkpoint::sign_with(
            &self.signer,
            &self.origin,
            self.range.size(),
            &self.range.root(),
            Some(heads),
        )
    }
}

/// Why an import was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    #[error("the store already holds {0} entries; import needs an empty one")]
    NotEmpty(u64),
    #[error("entry {position} of the input: {reason}")]
    Entry { position: usize, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Writes exported entries (for example from `Tail`), each with its event
/// id, and the checkpoint signed for their count into an empty store,
/// computing the Merkle nodes and the event-id index. It checks only what the
/// ledger knows (decoding and index order); run `verify::verify_store` on the
/// result before trusting it.
pub fn import<S: Store + ?Sized>(
    store: &S,
    entries: Vec<(Vec<u8>, String)>,
    checkpoint_note: &str,
) -> Result<(), ImportError> {
    let have = store.size()?;
    if have != 0 {
        return Err(ImportError::NotEmpty(have));
    }
    let mut range = CompactRange::default();
    let mut log = Vec::new();
    for (position, (bytes, event_id)) in entries.into_iter().enumerate() {
        let e = Entry::decode(&bytes).map_err(|e| ImportError::Entry {
            position,
            reason: e.to_string(),
        })?;
        if e.index != position as u64 {
            return Err(ImportError::Entry {
                position,
                reason: format!("records index {}", e.index),
            });
        }
        for (level, idx, h) in range.push(merkle::leaf_hash(&bytes)) {
            log.push((store::node_key(level, idx), h.to_vec()));
        }
        let mut ev = e.index.to_be_bytes().to_vec();
        ev.extend_from_slice(&e.envelope.digest());
        log.push((store::event_key(&event_id), ev));
        log.push((store::entry_key(e.index), bytes));
    }
    log.push((
        store::checkpoint_key(range.size()),
        checkpoint_note.as_bytes().to_vec(),
    ));
    store.write(WriteBatch {
        log,
        state: Vec::new(),
    })?;
    store.flush()?;
    Ok(())
}
