//! Offline verification of a log in a data directory: every entry's chain
//! link and leaf hash, every signature against the key history folded from
//! genesis, and the Merkle root of every stored checkpoint. Uses nothing the
//! server computed except the bytes it stored.

use ed25519_dalek::VerifyingKey;

use crate::api::convert::decode_event;
use crate::crypto::{self, KeyId, NoteVerifier};
use crate::ledger::merkle::{self, CompactRange};
use crate::ledger::{Checkpoint, Entry, Store};
use crate::state::State;

/// What a clean verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub entries: u64,
    pub checkpoints: usize,
    pub root: merkle::Hash,
    pub origin: String,
}

/// The first problem found.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{}: {reason}", match .index { Some(i) => format!("entry {i}"), None => "log".to_owned() })]
pub struct Failure {
    /// The first bad entry, when the problem is tied to one.
    pub index: Option<u64>,
    pub reason: String,
}

fn at(index: u64, reason: impl Into<String>) -> Failure {
    Failure {
        index: Some(index),
        reason: reason.into(),
    }
}

struct SigJob {
    index: u64,
    key: VerifyingKey,
    msg: Vec<u8>,
    sigs: Vec<Vec<u8>>,
}

/// Jobs per message to the signature threads.
const CHUNK: usize = 1024;

/// Verifies the whole log in `store`. With `trusted`, the genesis log key must
/// be that key; without, the key genesis declares is used (self-consistency only).
///
/// One thread scans entries in order (decoding, chain links, leaf hashes, the
/// state fold, checkpoint roots) while the other cores check signatures; the
/// first failure by index is reported, whichever kind it is.
pub fn verify_store<S: Store>(
    store: &S,
    trusted: Option<&NoteVerifier>,
) -> Result<Report, Failure> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    let first_bad_sig: std::sync::Mutex<Option<(u64, KeyId)>> = std::sync::Mutex::new(None);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<SigJob>>(threads * 4);
    let rx = std::sync::Mutex::new(rx);
    let scanned = std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    // The lock is only held to take the next chunk.
                    let next = rx.lock().expect("job queue lock").recv();
                    let Ok(jobs) = next else { break };
                    let bad = jobs.iter().find(|j| {
                        !j.sigs
                            .iter()
                            .any(|sig| crypto::verify_strict(&j.key, &j.msg, sig).is_ok())
                    });
                    if let Some(j) = bad {
                        let mut first = first_bad_sig.lock().expect("result lock");
                        if first.is_none_or(|(i, _)| j.index < i) {
                            *first = Some((j.index, KeyId::of(&j.key)));
                        }
                    }
                }
            });
        }
        let r = scan(store, trusted, &tx);
        drop(tx);
        r
    });
    let sig_failure = first_bad_sig
        .into_inner()
        .expect("result lock")
        .map(|(i, k)| {
            at(
                i,
                format!("signature does not verify with the signer's active key {k}"),
            )
        });
    match (scanned, sig_failure) {
        (Ok(report), None) => Ok(report),
        (Ok(_), Some(f)) => Err(f),
        (Err(f), None) => Err(f),
        (Err(f), Some(g)) => Err(if g.index < f.index || f.index.is_none() {
            g
        } else {
            f
        }),
    }
}

fn scan<S: Store>(
    store: &S,
    trusted: Option<&NoteVerifier>,
    sigs: &std::sync::mpsc::SyncSender<Vec<SigJob>>,
) -> Result<Report, Failure> {
    let store_err = |e: crate::ledger::StoreError| Failure {
        index: None,
        reason: e.to_string(),
    };
    let size = store.size().map_err(store_err)?;
    if size == 0 {
        return Err(Failure {
            index: None,
            reason: "the log is empty".into(),
        });
    }
    let cp_sizes = store.checkpoint_sizes().map_err(store_err)?;
    if let Some(&s) = cp_sizes.iter().find(|&&s| s > size) {
        return Err(Failure {
            index: None,
            reason: format!(
                "a checkpoint for tree size {s} exists but the log holds {size} entries (entries deleted?)"
            ),
        });
    }
    let mut cps = cp_sizes.iter().copied().peekable();
    let mut state = State::new();
    let mut range = CompactRange::default();
    let mut prev = [0u8; 32];
    let mut verifier: Option<NoteVerifier> = None;
    let mut jobs: Vec<SigJob> = Vec::with_capacity(CHUNK);
    let mut checkpoints = 0usize;
    let mut entries = store.scan_entries(0);
    let mut leaves = store.scan_leaves(0);

    for index in 0..size {
        let bytes = match entries.next().transpose().map_err(store_err)? {
            Some((i, b)) if i == index => b,
            _ => return Err(at(index, "missing from the store")),
        };
        let stored_leaf = match leaves.next().transpose().map_err(store_err)? {
            Some((i, h)) if i == index => h,
            _ => return Err(at(index, "its leaf hash is missing from the store")),
        };
        let entry = Entry::decode(&bytes).map_err(|e| at(index, format!("entry bytes: {e}")))?;
        if entry.index != index {
            return Err(at(index, format!("entry records index {}", entry.index)));
        }
        if entry.prev_leaf_hash != prev {
            return Err(at(
                index,
                "chain link: previous leaf hash does not match entry index-1",
            ));
        }
        let leaf = merkle::leaf_hash(&bytes);
        if stored_leaf != leaf {
            return Err(at(
                index,
                "stored leaf hash differs from the hash of the stored entry bytes",
            ));
        }
        let env = entry.envelope;
        if env.payload_type != crypto::PAYLOAD_TYPE {
            return Err(at(index, format!("payload type {:?}", env.payload_type)));
        }
        let event = decode_event(&env.payload).map_err(|e| at(index, format!("payload: {e}")))?;
        // Pick the key the fold says is active and matches the keyid hint;
        // the signature itself is checked on the other threads.
        let key = candidate_key(&state, &event, &env).map_err(|r| at(index, r))?;
        state
            .apply(index, &event, &key)
            .map_err(|e| at(index, format!("state rules: {e}")))?;
        if index == 0 {
            let g = state.genesis().expect("genesis applied at index 0");
            let declared = NoteVerifier::new(&g.origin, g.log_key);
            if let Some(t) = trusted
                && (t.key() != declared.key() || t.name() != declared.name())
            {
                return Err(at(
                    0,
                    "genesis names a log key or origin other than the trusted one",
                ));
            }
            verifier = Some(declared);
        }
        jobs.push(SigJob {
            index,
            key,
            msg: crypto::pae(&env.payload_type, &env.payload),
            sigs: env.signatures.into_iter().map(|s| s.sig).collect(),
        });
        range.push(leaf);
        prev = leaf;
        while let Some(&s) = cps.peek() {
            if s > range.size() {
                break;
            }
            cps.next();
            if s < range.size() {
                // Only size 0 can be skipped here; it has no root to check.
                continue;
            }
            let v = verifier.as_ref().expect("set at index 0");
            let note = store.checkpoint(s).map_err(store_err)?.unwrap_or_default();
            let cp = Checkpoint::verify(&note, v, v.name())
                .map_err(|e| at(index, format!("checkpoint for size {s}: {e}")))?;
            if cp.size != s || cp.root != range.root() {
                return Err(at(
                    index,
                    format!(
                        "checkpoint for size {s} does not match the Merkle root of the entries"
                    ),
                ));
            }
            checkpoints += 1;
        }
        if jobs.len() >= CHUNK {
            // The receivers only stop when this sender is dropped.
            let _ = sigs.send(std::mem::replace(&mut jobs, Vec::with_capacity(CHUNK)));
        }
    }
    let _ = sigs.send(jobs);
    Ok(Report {
        entries: size,
        checkpoints,
        root: range.root(),
        origin: verifier.map(|v| v.name().to_owned()).unwrap_or_default(),
    })
}

fn candidate_key(
    state: &State,
    event: &crate::event::Event,
    env: &crate::ledger::Envelope,
) -> Result<VerifyingKey, String> {
    let keys: Vec<VerifyingKey> = match (&event.body, state.genesis()) {
        (crate::event::Body::Genesis(g), None) => g
            .administrators
            .iter()
            .filter(|a| a.id == event.signer)
            .flat_map(|a| a.keys.iter().copied())
            .collect(),
        _ => state
            .principal(event.signer.as_str())
            .ok_or_else(|| {
                format!(
                    "signer {:?} is not a registered principal at this point",
                    event.signer.as_str()
                )
            })?
            .active_keys()
            .copied()
            .collect(),
    };
    // With several active keys, the one that verifies is wanted; the hint
    // usually names it. Fall back to a full check when the hint misleads.
    let hinted = env
        .signatures
        .iter()
        .find_map(|s| keys.iter().find(|k| KeyId::of(k).to_string() == s.keyid));
    match (hinted, keys.len()) {
        (Some(k), _) => Ok(*k),
        (None, 1) => Ok(keys[0]),
        (None, 0) => Err(format!(
            "signer {:?} has no active key",
            event.signer.as_str()
        )),
        (None, _) => state.authenticate(env, event).map_err(|e| e.to_string()),
    }
}

/// Checks a receipt offline: the entry bytes hash to the leaf, the entry is
/// at `index`, the checkpoint is signed by `verifier`, and the inclusion proof
/// leads from the leaf to the checkpoint's root.
pub fn verify_receipt(
    entry: &[u8],
    index: u64,
    leaf: &merkle::Hash,
    proof: &[merkle::Hash],
    checkpoint_note: &str,
    verifier: &NoteVerifier,
) -> Result<Checkpoint, String> {
    if merkle::leaf_hash(entry) != *leaf {
        return Err("leaf hash is not the hash of the entry bytes".into());
    }
    let e = Entry::decode(entry).map_err(|e| format!("entry bytes: {e}"))?;
    if e.index != index {
        return Err(format!(
            "entry records index {}, receipt says {index}",
            e.index
        ));
    }
    let cp = Checkpoint::verify(checkpoint_note, verifier, verifier.name())
        .map_err(|e| e.to_string())?;
    merkle::verify_inclusion(leaf, index, cp.size, proof, &cp.root)
        .map_err(|e| format!("inclusion proof: {e}"))?;
    Ok(cp)
}
