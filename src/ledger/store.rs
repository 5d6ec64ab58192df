//! Durable storage behind a small trait. sled is the embedded default.
//!
//! sled layout: tree `log`, keys by one-byte prefix, integers big-endian:
//! - `e` u64 index → entry bytes
//! - `n` u8 level, u64 index → 32-byte perfect-subtree hash (level 0 = leaf hash)
//! - `x` event id bytes → u64 index, [32] BLAKE3 of the envelope bytes
//! - `c` u64 tree size → signed checkpoint note
//!
//! and tree `state`: the identity projection (see `state`).

use super::merkle::Hash;

/// One group of writes: staged entries, nodes, event ids and a checkpoint
/// (applied atomically), then the state changes folded from them.
#[derive(Default, Debug)]
pub struct WriteBatch {
    pub log: Vec<(Vec<u8>, Vec<u8>)>,
    pub state: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A storage error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    #[error("storage holds a corrupt {what} at {key}")]
    Corrupt { what: &'static str, key: String },
    #[error("storage: the published mark {0}")]
    Mark(String),
}

/// A key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// An iterator over stored items in index order.
pub type Scan<'a, T> = Box<dyn Iterator<Item = Result<(u64, T), StoreError>> + 'a>;

/// What the ledger needs from storage.
pub trait Store: Send + Sync + 'static {
    /// Entry bytes at `index`.
    fn entry(&self, index: u64) -> Result<Option<Vec<u8>>, StoreError>;
    /// A perfect subtree hash.
    fn node(&self, level: u32, index: u64) -> Result<Option<Hash>, StoreError>;
    /// The index and envelope digest stored for an event id.
    fn event(&self, event_id: &str) -> Result<Option<(u64, Hash)>, StoreError>;
    /// The checkpoint note signed for `size`, if one was.
    fn checkpoint(&self, size: u64) -> Result<Option<String>, StoreError>;
    /// The stored checkpoint with the smallest size >= `size`.
    fn checkpoint_at_or_after(&self, size: u64) -> Result<Option<(u64, String)>, StoreError>;
    /// The checkpoint with the largest size.
    fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError>;
    /// Every stored checkpoint size, ascending.
    fn checkpoint_sizes(&self) -> Result<Vec<u64>, StoreError>;
    /// Number of entries.
    fn size(&self) -> Result<u64, StoreError>;
    /// Number of event ids in the event-id index (one per entry).
    fn event_index_len(&self) -> Result<u64, StoreError>;
    /// Applies `batch` atomically (not yet durable).
    fn write(&self, batch: WriteBatch) -> Result<(), StoreError>;
    /// Makes every earlier write durable.
    fn flush(&self) -> Result<(), StoreError>;
    /// Entries from `start` in index order, as (index, bytes).
    fn scan_entries(&self, start: u64) -> Scan<'_, Vec<u8>>;
    /// Stored perfect-subtree hashes of one level from `start` in index
    /// order, as (index, hash); level 0 are the leaf hashes.
    fn scan_nodes(&self, level: u32, start: u64) -> Scan<'_, Hash>;
    /// All state pairs in key order.
    fn state_pairs(&self) -> Result<Vec<KeyValue>, StoreError>;
    /// Replaces the state tree's contents with `pairs` and flushes (start-up
    /// rebuild and `rebuild --replace`). Not atomic: a crash part-way leaves
    /// a state tree that start-up detects and rebuilds again.
    fn replace_state(&self, pairs: Vec<KeyValue>) -> Result<(), StoreError>;
    /// Records `note`, the signed checkpoint of tree size `size`, as
    /// published: called only after the flush that made that tree durable.
    /// Kept apart from the store's own files, so that a store that recovers
    /// a shorter log (a damaged or truncated file) cannot take it along.
    /// Stores without such a mark do nothing.
    fn mark_published(&self, _size: u64, _note: &str) -> Result<(), StoreError> {
        Ok(())
    }
    /// The newest checkpoint [`Store::mark_published`] recorded and that
    /// reads back whole, as (size, note): the log must hold at least that
    /// tree, with that root.
    fn published_mark(&self) -> Result<Option<(u64, String)>, StoreError> {
        Ok(None)
    }
}

/// The file, in the store's directory, that keeps the published mark.
pub const PUBLISHED_MARK_FILE: &str = "docket-published";

/// The published mark: two slots written in turn, so that a write torn by a
/// crash leaves the other one whole. A slot: the magic, the tree size (u64
/// big-endian), the note's length (u32 big-endian), the note, then the
/// BLAKE3 digest of everything before it; what follows is never read. Not
/// synced on its own: written after the flush of the tree it names (and
/// after the replies), it can lag what was handed out but never lead what
/// is durable.
struct PublishedMark {
    file: std::fs::File,
    path: std::path::PathBuf,
    next_slot: std::sync::atomic::AtomicU64,
}

const MARK_MAGIC: &[u8; 11] = b"DOCKET-PM1\n";
const MARK_SLOT: usize = 4096;
const MARK_HEAD: usize = MARK_MAGIC.len() + 8 + 4;

impl PublishedMark {
    fn open(dir: &std::path::Path) -> std::io::Result<Self> {
        let path = dir.join(PUBLISHED_MARK_FILE);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let mark = PublishedMark {
            file,
            path,
            next_slot: std::sync::atomic::AtomicU64::new(0),
        };
        // Write over the older (or an unreadable) slot first.
        let older = match mark.slots()? {
            [Some((a, _)), Some((b, _))] if b < a => 1,
            [Some(_), None] => 1,
            _ => 0,
        };
        mark.next_slot
            .store(older, std::sync::atomic::Ordering::Relaxed);
        Ok(mark)
    }

    /// Each slot that reads back whole, as (size, note).
    fn slots(&self) -> std::io::Result<[Option<(u64, String)>; 2]> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; 2 * MARK_SLOT];
        let mut got = 0;
        while got < buf.len() {
            match self.file.read_at(&mut buf[got..], got as u64)? {
                0 => break,
                n => got += n,
            }
        }
        let read = |slot: &[u8]| -> Option<(u64, String)> {
            if !slot.starts_with(MARK_MAGIC) {
                return None;
            }
            let size = u64::from_be_bytes(slot[11..19].try_into().ok()?);
            let len = u32::from_be_bytes(slot[19..23].try_into().ok()?) as usize;
            let end = MARK_HEAD.checked_add(len)?;
            let digest = slot.get(end..end.checked_add(32)?)?;
            if blake3::hash(&slot[..end]).as_bytes() != digest {
                return None;
            }
            let note = String::from_utf8(slot[MARK_HEAD..end].to_vec()).ok()?;
            Some((size, note))
        };
        Ok([read(&buf[..MARK_SLOT]), read(&buf[MARK_SLOT..])])
    }

    fn write(&self, size: u64, note: &str) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut slot = Vec::with_capacity(MARK_SLOT);
        slot.extend_from_slice(MARK_MAGIC);
        slot.extend_from_slice(&size.to_be_bytes());
        let len = u32::try_from(note.len())
            .ok()
            .filter(|&l| MARK_HEAD + l as usize + 32 <= MARK_SLOT)
            .ok_or_else(|| {
                std::io::Error::other(format!(
                    "a checkpoint note of {} bytes does not fit the published mark",
                    note.len()
                ))
            })?;
        slot.extend_from_slice(&len.to_be_bytes());
        slot.extend_from_slice(note.as_bytes());
        let digest = blake3::hash(&slot);
        slot.extend_from_slice(digest.as_bytes());
        // What follows the digest in the slot is never read.
        let n = self
            .next_slot
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % 2;
        self.file.write_all_at(&slot, n * MARK_SLOT as u64)
    }
}

fn mark_err(path: &std::path::Path, e: std::io::Error) -> StoreError {
    StoreError::Mark(format!("{}: {e}", path.display()))
}

/// Key of entry `index`.
pub(crate) fn entry_key(index: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(b'e');
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// Key of a perfect node.
pub(crate) fn node_key(level: u32, index: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(10);
    k.push(b'n');
    // Levels are < 64: a tree has fewer than 2^64 leaves.
    k.push(level as u8);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// Key of an event id.
pub(crate) fn event_key(event_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + event_id.len());
    k.push(b'x');
    k.extend_from_slice(event_id.as_bytes());
    k
}

/// Key of the checkpoint for `size`.
pub(crate) fn checkpoint_key(size: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(b'c');
    k.extend_from_slice(&size.to_be_bytes());
    k
}

/// How long [`SledStore::open`] waits for a lock a closed handle still holds.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(10);

/// The sled backend.
#[derive(Clone)]
pub struct SledStore {
    db: sled::Db,
    /// `None` for a temporary store.
    mark: Option<std::sync::Arc<PublishedMark>>,
    log: sled::Tree,
    state: sled::Tree,
}

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &std::path::Path) -> Result<Self, StoreError> {
        // sled releases its directory lock when the last internal handle of a
        // closed database goes away, which its I/O threads can delay by a few
        // milliseconds after the owner dropped it. Opening again in the same
        // process right after closing (init then serve; stop then verify) can
        // therefore see the lock still held: retry that one error briefly.
        // Another process holding the database still fails after the wait.
        let mut waited = std::time::Duration::ZERO;
        loop {
            let opened = sled::Config::new()
                .path(dir)
                .cache_capacity(256 << 20)
                // No background flusher: durability comes from explicit
                // flushes (one per group commit).
                .flush_every_ms(None)
                .open();
            match opened {
                Ok(db) => {
                    let mark = PublishedMark::open(dir)
                        .map_err(|e| mark_err(&dir.join(PUBLISHED_MARK_FILE), e))?;
                    return Self::from_db(db, Some(std::sync::Arc::new(mark)));
                }
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock") && waited < LOCK_WAIT =>
                {
                    std::thread::sleep(LOCK_RETRY);
                    waited += LOCK_RETRY;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// A store that lives only in memory (tests).
    pub fn temporary() -> Result<Self, StoreError> {
        Self::from_db(sled::Config::new().temporary(true).open()?, None)
    }

    fn from_db(
        db: sled::Db,
        mark: Option<std::sync::Arc<PublishedMark>>,
    ) -> Result<Self, StoreError> {
        let log = db.open_tree("log")?;
        let state = db.open_tree("state")?;
        Ok(SledStore {
            db,
            mark,
            log,
            state,
        })
    }

    /// Overwrites one stored entry's bytes. Only for tamper tests and tools
    /// that simulate an insider; the ledger itself never rewrites an entry.
    pub fn dangerous_overwrite_entry(&self, index: u64, bytes: &[u8]) -> Result<(), StoreError> {
        tracing::warn!(
            index,
            "dangerous_overwrite_entry: rewriting a stored log entry"
        );
        self.log.insert(entry_key(index), bytes)?;
        self.db.flush()?;
        Ok(())
    }
}

fn hash_of(v: &[u8], what: &'static str, key: &[u8]) -> Result<Hash, StoreError> {
    v.try_into().map_err(|_| StoreError::Corrupt {
        what,
        key: hex::encode(key),
    })
}

impl Store for SledStore {
    fn entry(&self, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.log.get(entry_key(index))?.map(|v| v.to_vec()))
    }

    fn node(&self, level: u32, index: u64) -> Result<Option<Hash>, StoreError> {
        let k = node_key(level, index);
        match self.log.get(&k)? {
            Some(v) => Ok(Some(hash_of(&v, "node", &k)?)),
            None => Ok(None),
        }
    }

    fn event(&self, event_id: &str) -> Result<Option<(u64, Hash)>, StoreError> {
        let k = event_key(event_id);
        let Some(v) = self.log.get(&k)? else {
            return Ok(None);
        };
        if v.len() != 40 {
            return Err(StoreError::Corrupt {
                what: "event index",
                key: hex::encode(&k),
            });
        }
        let mut idx = [0u8; 8];
        idx.copy_from_slice(&v[..8]);
        Ok(Some((
            u64::from_be_bytes(idx),
            hash_of(&v[8..], "event digest", &k)?,
        )))
    }

    fn checkpoint(&self, size: u64) -> Result<Option<String>, StoreError> {
        let k = checkpoint_key(size);
        match self.log.get(&k)? {
            Some(v) => Ok(Some(String::from_utf8(v.to_vec()).map_err(|_| {
                StoreError::Corrupt {
                    what: "checkpoint",
                    key: hex::encode(&k),
                }
            })?)),
            None => Ok(None),
        }
    }

    fn checkpoint_at_or_after(&self, size: u64) -> Result<Option<(u64, String)>, StoreError> {
        let Some((k, _)) = self
            .log
            .range(checkpoint_key(size)..vec![b'c' + 1])
            .next()
            .transpose()?
        else {
            return Ok(None);
        };
        let size = key_u64(&k, "checkpoint")?;
        Ok(self.checkpoint(size)?.map(|n| (size, n)))
    }

    fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError> {
        let Some((k, _)) = self.log.scan_prefix([b'c']).next_back().transpose()? else {
            return Ok(None);
        };
        let size = key_u64(&k, "checkpoint")?;
        Ok(self.checkpoint(size)?.map(|n| (size, n)))
    }

    fn checkpoint_sizes(&self) -> Result<Vec<u64>, StoreError> {
        self.log
            .scan_prefix([b'c'])
            .keys()
            .map(|k| key_u64(&k?, "checkpoint"))
            .collect()
    }

    fn event_index_len(&self) -> Result<u64, StoreError> {
        self.log
            .scan_prefix([b'x'])
            .keys()
            .try_fold(0u64, |n, k| k.map(|_| n + 1))
            .map_err(StoreError::from)
    }

    fn size(&self) -> Result<u64, StoreError> {
        match self
            .log
            .scan_prefix([b'e'])
            .keys()
            .next_back()
            .transpose()?
        {
            Some(k) => Ok(key_u64(&k, "entry")? + 1),
            None => Ok(0),
        }
    }

    fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        // Log first, then state. Each apply_batch is atomic; if a crash falls
        // between them, the state's `m/next` is behind the log and start-up
        // folds the missing entries in (see docs/ledger-format.md).
        let WriteBatch { log, state } = batch;
        let mut b = sled::Batch::default();
        for (k, v) in log {
            b.insert(k, v);
        }
        self.log.apply_batch(b)?;
        if !state.is_empty() {
            let mut b = sled::Batch::default();
            for (k, v) in state {
                b.insert(k, v);
            }
            self.state.apply_batch(b)?;
        }
        Ok(())
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn scan_entries(&self, start: u64) -> Scan<'_, Vec<u8>> {
        Box::new(self.log.range(entry_key(start)..vec![b'e' + 1]).map(|r| {
            let (k, v) = r?;
            Ok((key_u64(&k, "entry")?, v.to_vec()))
        }))
    }

    fn scan_nodes(&self, level: u32, start: u64) -> Scan<'_, Hash> {
        Box::new(
            self.log
                .range(node_key(level, start)..node_key(level + 1, 0))
                .map(|r| {
                    let (k, v) = r?;
                    let index = k
                        .get(2..10)
                        .and_then(|s| s.try_into().ok())
                        .map(u64::from_be_bytes)
                        .ok_or_else(|| StoreError::Corrupt {
                            what: "node",
                            key: hex::encode(&k),
                        })?;
                    Ok((index, hash_of(&v, "node", &k)?))
                }),
        )
    }

    fn mark_published(&self, size: u64, note: &str) -> Result<(), StoreError> {
        match &self.mark {
            Some(m) => m.write(size, note).map_err(|e| mark_err(&m.path, e)),
            None => Ok(()),
        }
    }

    fn published_mark(&self) -> Result<Option<(u64, String)>, StoreError> {
        let Some(m) = &self.mark else {
            return Ok(None);
        };
        let [a, b] = m.slots().map_err(|e| mark_err(&m.path, e))?;
        Ok(match (a, b) {
            (Some(a), Some(b)) => Some(if b.0 > a.0 { b } else { a }),
            (a, b) => a.or(b),
        })
    }

    fn replace_state(&self, pairs: Vec<KeyValue>) -> Result<(), StoreError> {
        // Clearing first, so a crash before the batch leaves an empty state
        // tree (no `m/format`), which start-up rebuilds from the log.
        self.state.clear()?;
        let mut b = sled::Batch::default();
        for (k, v) in pairs {
            b.insert(k, v);
        }
        self.state.apply_batch(b)?;
        self.db.flush()?;
        Ok(())
    }

    fn state_pairs(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.state
            .iter()
            .map(|r| {
                r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(StoreError::from)
            })
            .collect()
    }
}

fn key_u64(k: &[u8], what: &'static str) -> Result<u64, StoreError> {
    k.get(1..9)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt {
            what,
            key: hex::encode(k),
        })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;

    fn damage(dir: &std::path::Path, slot: u64) {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join(PUBLISHED_MARK_FILE))
            .unwrap();
        // Inside the note: the slot's digest no longer matches.
        f.write_all_at(b"torn", slot * MARK_SLOT as u64 + 40)
            .unwrap();
    }

    /// The mark alternates between two slots, so a write torn by a crash
    /// leaves the previous mark readable; a slot that does not read back
    /// whole is never taken for a mark.
    #[test]
    fn a_torn_published_mark_falls_back_to_the_other_slot() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.published_mark().unwrap(), None);
        store.mark_published(5, "note of 5\n").unwrap();
        store.mark_published(7, "note of 7\n").unwrap();
        assert_eq!(
            store.published_mark().unwrap(),
            Some((7, "note of 7\n".to_owned()))
        );
        drop(store);

        // Reopened, it writes over the older slot (slot 0, size 5) first.
        // Slots are used in turn from slot 0.
        let store = SledStore::open(dir.path()).unwrap();
        store.mark_published(9, "note of 9\n").unwrap();
        damage(dir.path(), 0);
        assert_eq!(
            store.published_mark().unwrap(),
            Some((7, "note of 7\n".to_owned()))
        );
        damage(dir.path(), 1);
        assert_eq!(store.published_mark().unwrap(), None);
        let long = "n".repeat(MARK_SLOT);
        assert!(store.mark_published(11, &long).is_err());
    }
}
