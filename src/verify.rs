//! Offline verification of a log in a data directory: every entry's chain
//! link and leaf hash, every signature against the key history folded from
//! genesis, and the Merkle root of every stored checkpoint. Uses nothing the
//! server computed except the bytes it stored.

use crate::api::convert::decode_event;
use crate::crypto::{self, NoteVerifier};
use crate::ledger::Envelope;
use crate::ledger::merkle::{self, CompactRange};
use crate::ledger::{Checkpoint, Entry, Store};
use crate::state::{SignerKeys, State};

/// What a clean verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub entries: u64,
    pub checkpoints: usize,
    pub root: merkle::Hash,
    pub origin: String,
    /// Entries whose payload carries a protobuf field this build does not
    /// define (recorded before appends refused them, `api::known`), and the
    /// first of them with what it carries. Not a failure: they read as they
    /// always did, until a version gives the field a meaning.
    pub unknown_fields: u64,
    pub first_unknown: Option<(u64, String)>,
}

/// The first problem found.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{}: {reason}", match .index { Some(i) => format!("entry {i}"), None => "log".to_owned() })]
pub struct Failure {
    /// The first bad entry, when the problem is tied to one.
    pub index: Option<u64>,
    pub reason: String,
}

/// Checks the history count of entry `index` (ledger-format §4.3,
/// invariant 14) against `folded`, the identity and policy entries read up to
/// and including it; `mismatch(recorded)` words a difference. A version-1
/// entry records none, but may not follow a version-2 one: the writer never
/// goes back. `last_counted` is the last version-2 entry read so far, which
/// this updates.
pub(crate) fn check_history_count(
    index: u64,
    recorded: Option<u64>,
    folded: u64,
    last_counted: &mut Option<u64>,
    mismatch: impl FnOnce(u64) -> String,
) -> Result<(), String> {
    match (recorded, *last_counted) {
        (Some(n), _) if n != folded => Err(mismatch(n)),
        (Some(_), _) => {
            *last_counted = Some(index);
            Ok(())
        }
        (None, Some(last)) => Err(format!(
            "entry format version 1 after version-2 entry {last}"
        )),
        (None, None) => Ok(()),
    }
}

/// The first key where a recorded decision basis and a folded one differ
/// (ledger-format §4.4), with its count in each (`None`: not there).
pub(crate) fn basis_difference<'a>(
    recorded: &'a [(String, u64)],
    folded: &'a [(String, u64)],
) -> Option<(&'a str, Option<u64>, Option<u64>)> {
    let (mut r, mut f) = (recorded.iter().peekable(), folded.iter().peekable());
    loop {
        match (r.peek(), f.peek()) {
            (None, None) => return None,
            (Some((k, n)), None) => return Some((k, Some(*n), None)),
            (None, Some((k, n))) => return Some((k, None, Some(*n))),
            (Some((kr, nr)), Some((kf, nf))) => match kr.as_bytes().cmp(kf.as_bytes()) {
                std::cmp::Ordering::Less => return Some((kr, Some(*nr), None)),
                std::cmp::Ordering::Greater => return Some((kf, None, Some(*nf))),
                std::cmp::Ordering::Equal if nr != nf => return Some((kr, Some(*nr), Some(*nf))),
                std::cmp::Ordering::Equal => {
                    r.next();
                    f.next();
                }
            },
        }
    }
}

/// Checks the decision basis of entry `index` (ledger-format §4.4,
/// invariant 15) against `folded`, the basis the fold gives it from the
/// entries read before it; `mismatch` words the first difference. An entry
/// of version 1 or 2 records none, but may not follow a version-3 one: the
/// writer never goes back. `last_based` is the last version-3 entry read so
/// far, which this updates.
pub(crate) fn check_basis(
    index: u64,
    recorded: Option<&[(String, u64)]>,
    folded: &[(String, u64)],
    last_based: &mut Option<u64>,
    mismatch: impl FnOnce(&str, Option<u64>, Option<u64>) -> String,
) -> Result<(), String> {
    match (recorded, *last_based) {
        (Some(b), _) => {
            if let Some((key, r, f)) = basis_difference(b, folded) {
                return Err(mismatch(key, r, f));
            }
            *last_based = Some(index);
            Ok(())
        }
        (None, Some(last)) => Err(format!(
            "entry format version 1 or 2 after version-3 entry {last}"
        )),
        (None, None) => Ok(()),
    }
}

/// Words a difference [`check_basis`] found in `docket verify`.
fn basis_mismatch(key: &str, recorded: Option<u64>, folded: Option<u64>) -> String {
    match (recorded, folded) {
        (Some(r), Some(f)) => format!(
            "decision basis: the entry records {r} entries concerning {key} before it, {f} were read"
        ),
        (Some(r), None) => format!(
            "decision basis: the entry records {key} ({r} entries), which its decision does not read"
        ),
        (_, f) => format!(
            "decision basis: the entry does not record {key} ({} entries), which its decision reads",
            f.unwrap_or(0)
        ),
    }
}

fn at(index: u64, reason: impl Into<String>) -> Failure {
    Failure {
        index: Some(index),
        reason: reason.into(),
    }
}

/// One signature check: the envelope of entry `index` against the keys its
/// signer had just before it.
pub(crate) struct SigJob {
    pub(crate) index: u64,
    pub(crate) keys: SignerKeys,
    pub(crate) envelope: Envelope,
}

/// Jobs per message to the signature threads, and the payload bytes at
/// which a message goes out with fewer: the queue holds a few messages per
/// thread, so large payloads do not let the scan run gigabytes ahead.
const CHUNK: usize = 1024;
const CHUNK_BYTES: usize = 4 << 20;

/// Runs `scan` on this thread while the other cores check the signatures it
/// hands to its sink (chunked). Returns the scan's result and the failed
/// signature check with the lowest index, if any.
pub(crate) fn with_signature_threads<R>(
    scan: impl FnOnce(&mut dyn FnMut(SigJob)) -> R,
) -> (R, Option<(u64, String)>) {
    checking_with(
        |j: &SigJob| {
            j.keys
                .authenticate(&j.envelope)
                .map(drop)
                .map_err(|e| e.to_string())
        },
        scan,
    )
}

/// [`with_signature_threads`] with the check given. A check that panics
/// fails its job ("the signature check panicked: ...") and the thread goes on:
/// were the threads to die, the scan would wait forever for room in their
/// queue.
fn checking_with<R>(
    check: impl Fn(&SigJob) -> Result<(), String> + Sync,
    scan: impl FnOnce(&mut dyn FnMut(SigJob)) -> R,
) -> (R, Option<(u64, String)>) {
    use std::sync::{Mutex, PoisonError};
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    let first_bad: Mutex<Option<(u64, String)>> = Mutex::new(None);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<SigJob>>(threads * 4);
    let rx = Mutex::new(rx);
    let check = &check;
    let result = std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    // The lock is only held to take the next chunk.
                    let next = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                    let Ok(jobs) = next else { break };
                    let bad = jobs.iter().find_map(|j| {
                        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(j))) {
                            Ok(Ok(())) => None,
                            Ok(Err(why)) => Some((j.index, why)),
                            Err(panic) => Some((j.index, panicked(panic.as_ref()))),
                        }
                    });
                    if let Some((index, why)) = bad {
                        let mut first = first_bad.lock().unwrap_or_else(PoisonError::into_inner);
                        if first.as_ref().is_none_or(|(i, _)| index < *i) {
                            *first = Some((index, why));
                        }
                    }
                }
            });
        }
        let mut pending = Vec::with_capacity(CHUNK);
        let mut pending_bytes = 0usize;
        let mut sink = |job: SigJob| {
            pending_bytes += job.envelope.payload.len();
            pending.push(job);
            if pending.len() >= CHUNK || pending_bytes >= CHUNK_BYTES {
                pending_bytes = 0;
                // The receivers only stop when this sender is dropped.
                let _ = tx.send(std::mem::replace(&mut pending, Vec::with_capacity(CHUNK)));
            }
        };
        let r = scan(&mut sink);
        // Jobs handed over before a scan failure still get checked, so an
        // earlier bad signature is the one reported.
        let _ = tx.send(pending);
        drop(tx);
        r
    });
    let first = first_bad
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    (result, first)
}

/// The failure of a check that panicked, with the panic's message.
fn panicked(payload: &(dyn std::any::Any + Send)) -> String {
    let msg = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str));
    match msg {
        Some(m) => format!("the signature check panicked: {m}"),
        None => "the signature check panicked".to_owned(),
    }
}

/// Verifies the whole log in `store`. With `trusted`, the genesis log key must
/// be that key; without, the key genesis declares is used (self-consistency only).
///
/// One thread scans entries in order (decoding, chain links, leaf hashes, the
/// state fold, checkpoint roots) while the other cores check signatures; the
/// first failure by index is reported, whichever kind it is.
pub fn verify_store<S: Store + ?Sized>(
    store: &S,
    trusted: Option<&NoteVerifier>,
) -> Result<Report, Failure> {
    let (scanned, bad_sig) = with_signature_threads(|sink| scan(store, trusted, sink));
    let sig_failure = bad_sig.map(|(i, why)| at(i, format!("signature: {why}")));
    match (scanned, sig_failure) {
        (Ok(report), None) => Ok(report),
        (Ok(_), Some(f)) => Err(f),
        (Err(f), None) => Err(f),
        // At the same index the signature is the cause.
        (Err(f), Some(g)) => Err(if g.index <= f.index || f.index.is_none() {
            g
        } else {
            f
        }),
    }
}

fn scan<S: Store + ?Sized>(
    store: &S,
    trusted: Option<&NoteVerifier>,
    sigs: &mut dyn FnMut(SigJob),
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
    // The newest checkpoint handed out, kept apart from the store's files:
    // a store that recovered a shorter log must hold at least that tree.
    let mark = store.published_mark().map_err(store_err)?;
    let mut mark_root = None;
    let mut cps = cp_sizes.iter().copied().peekable();
    let mut state = State::new();
    let mut range = CompactRange::default();
    let mut prev = [0u8; 32];
    let mut verifier: Option<NoteVerifier> = None;
    let mut checkpoints = 0usize;
    // The first checkpoint with change heads, and with subject heads.
    let mut heads_since: [Option<u64>; 2] = [None, None];
    let mut entries = store.scan_entries(0);
    // One cursor per tree level, so every stored node (not only the leaves)
    // is compared with the node recomputed from the entries.
    let mut levels: Vec<crate::ledger::Scan<'_, merkle::Hash>> = Vec::new();
    let mut event_ids: std::collections::HashMap<[u8; 16], u64> = std::collections::HashMap::new();
    let mut last_time = i64::MIN;
    let mut last_counted: Option<u64> = None;
    let mut last_based: Option<u64> = None;
    let mut unknown_fields = 0u64;
    let mut first_unknown = None;

    for index in 0..size {
        let bytes = match entries.next().transpose().map_err(store_err)? {
            Some((i, b)) if i == index => b,
            _ => return Err(at(index, "missing from the store")),
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
        if entry.integrated_time_nanos < last_time {
            return Err(at(
                index,
                "integrated time is earlier than that of entry index-1",
            ));
        }
        last_time = entry.integrated_time_nanos;
        let leaf = merkle::leaf_hash(&bytes);
        let env = entry.envelope;
        if env.payload_type != crypto::PAYLOAD_TYPE {
            return Err(at(index, format!("payload type {:?}", env.payload_type)));
        }
        let event = decode_event(&env.payload).map_err(|e| at(index, format!("payload: {e}")))?;
        if let Err(e) = crate::api::known::check_known_fields(&env.payload) {
            unknown_fields += 1;
            first_unknown.get_or_insert((index, e.to_string()));
        }
        let id_key: [u8; 16] = blake3::hash(event.event_id.as_bytes()).as_bytes()[..16]
            .try_into()
            .expect("16 bytes");
        if let Some(first) = event_ids.insert(id_key, index) {
            return Err(at(
                index,
                format!(
                    "event_id {:?} was already used by entry {first}",
                    event.event_id
                ),
            ));
        }
        // The event-id index the server answers retries and duplicates
        // from must point at this entry, with this envelope's digest.
        match store.event(&event.event_id).map_err(store_err)? {
            Some((i, digest)) if i == index && digest == env.digest() => {}
            Some((i, _)) if i != index => {
                return Err(at(
                    index,
                    format!(
                        "event-id index: {:?} is indexed to entry {i}",
                        event.event_id
                    ),
                ));
            }
            Some(_) => {
                return Err(at(
                    index,
                    format!(
                        "event-id index: the envelope digest stored for {:?} is not this entry's",
                        event.event_id
                    ),
                ));
            }
            None => {
                return Err(at(
                    index,
                    format!("event-id index: {:?} is missing", event.event_id),
                ));
            }
        }
        let folded = state.history_count() + u64::from(event.body.is_identity_or_policy());
        check_history_count(index, entry.history_count, folded, &mut last_counted, |n| {
            format!(
                "history count: the entry says the log holds {n} identity and policy \
                     entries up to it, {folded} were read"
            )
        })
        .map_err(|why| at(index, why))?;
        let basis = state.basis_for(&event);
        check_basis(
            index,
            entry.basis.as_deref(),
            &basis,
            &mut last_based,
            basis_mismatch,
        )
        .map_err(|why| at(index, why))?;
        // The signer's keys as the fold has them before this entry; the
        // signature itself is checked against them on the other threads.
        let keys = state
            .signer_keys(&event)
            .map_err(|e| at(index, format!("signature: {e}")))?;
        let key = keys
            .key_for_fold(&env, &event.body)
            .map_err(|e| at(index, format!("signature: {e}")))?;
        // Queued before the fold's rules run, so that a bad signature is
        // what this entry's failure names, not what the rules made of it.
        sigs(SigJob {
            index,
            keys,
            envelope: env,
        });
        state
            .apply(index, entry.integrated_time_nanos, &event, &key)
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
        for (level, idx, hash) in range.push(leaf) {
            let level_us = level as usize;
            while levels.len() <= level_us {
                let l = levels.len() as u32;
                levels.push(store.scan_nodes(l, 0));
            }
            match levels[level_us].next().transpose().map_err(store_err)? {
                Some((i, h)) if i == idx && h == hash => {}
                Some((i, _)) if i == idx => {
                    return Err(at(
                        index,
                        if level == 0 {
                            "stored leaf hash differs from the hash of the stored entry bytes"
                                .to_owned()
                        } else {
                            format!(
                                "stored tree node (level {level}, index {idx}) differs from the one recomputed from the entries"
                            )
                        },
                    ));
                }
                _ => {
                    return Err(at(
                        index,
                        format!("tree node (level {level}, index {idx}) is missing from the store"),
                    ));
                }
            }
        }
        prev = leaf;
        if mark.as_ref().is_some_and(|(m, _)| *m == range.size()) {
            mark_root = Some(range.root());
        }
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
            // The change and subject heads it signs must be those of the
            // fold (ledger-format §6.5, §6.6), and once checkpoints carry
            // either line, they all do.
            let folded = state.gov().heads();
            let lines = [
                ("change", "changes", cp.changes, folded.changes),
                ("subject", "subjects", cp.subjects, folded.subjects),
            ];
            for ((what, counted, signed, folded), since) in lines.into_iter().zip(&mut heads_since)
            {
                match signed {
                    Some(c) => {
                        if c != folded {
                            return Err(at(
                                index,
                                format!(
                                    "checkpoint for size {s} signs {what} heads ({} {counted}, root {}) \
                                     that differ from those folded from the entries ({} {counted}, root {})",
                                    c.size,
                                    hex::encode(c.root),
                                    folded.size,
                                    hex::encode(folded.root)
                                ),
                            ));
                        }
                        since.get_or_insert(s);
                    }
                    None => {
                        if let Some(first) = since {
                            return Err(at(
                                index,
                                format!(
                                    "checkpoint for size {s} has no {what} heads, but the one for size \
                                     {first} already had them"
                                ),
                            ));
                        }
                    }
                }
            }
            checkpoints += 1;
        }
    }
    if let Some((marked, note)) = &mark {
        let v = verifier.as_ref().expect("set at index 0");
        let failed = |reason: String| Failure {
            index: None,
            reason: format!(
                "the published mark ({} in the store's directory) records a checkpoint of tree size {marked} that was handed out, but {reason}",
                crate::ledger::PUBLISHED_MARK_FILE
            ),
        };
        // The root was recorded when the scan reached the marked size (a
        // mark of size 0 names no tree the scan reaches).
        let problem = crate::ledger::mark_problem(*marked, note, v, size, || mark_root.ok_or(()))
            .unwrap_or_else(|()| Some("it names a tree of no entries".into()));
        if let Some(reason) = problem {
            return Err(failed(reason));
        }
    }
    if cp_sizes.last() != Some(&size) {
        return Err(Failure {
            index: None,
            reason: format!(
                "the newest checkpoint covers {} entries but the log holds {size}",
                cp_sizes.last().copied().unwrap_or(0)
            ),
        });
    }
    // Every entry's id is indexed to it (checked above); an id more would
    // make the server refuse a future event as a duplicate of nothing.
    let indexed = store.event_index_len().map_err(store_err)?;
    if indexed != size {
        return Err(Failure {
            index: None,
            reason: format!(
                "the event-id index holds {indexed} ids but the log holds {size} entries"
            ),
        });
    }
    Ok(Report {
        entries: size,
        checkpoints,
        root: range.root(),
        origin: verifier.map(|v| v.name().to_owned()).unwrap_or_default(),
        unknown_fields,
        first_unknown,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn job(index: u64) -> SigJob {
        SigJob {
            index,
            keys: SignerKeys::none("tester"),
            envelope: Envelope {
                payload_type: String::new(),
                payload: Vec::new(),
                signatures: Vec::new(),
            },
        }
    }

    /// Hands 64 chunks of jobs to `check`'s threads, on a thread of its own
    /// so that a stalled scan fails the test instead of hanging it.
    fn sixty_four_chunks(
        check: impl Fn(&SigJob) -> Result<(), String> + Send + Sync + 'static,
    ) -> (u64, Option<(u64, String)>) {
        let (done, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(checking_with(check, |sink| {
                let n = CHUNK as u64 * 64;
                (0..n).for_each(|i| sink(job(i)));
                n
            }));
        });
        result
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("the scan stalled: its signature threads stopped taking jobs")
    }

    /// Every chunk has a job whose check panics: more panics than threads.
    fn panics_in_every_chunk(j: &SigJob) -> bool {
        j.index % CHUNK as u64 == 7
    }

    /// The same from the second chunk on.
    fn panics_after_the_first_chunk(j: &SigJob) -> bool {
        j.index >= CHUNK as u64 && panics_in_every_chunk(j)
    }

    #[test]
    fn a_check_that_panics_fails_its_entry_and_the_threads_go_on() {
        let (scanned, bad) = sixty_four_chunks(|j| {
            assert!(!panics_in_every_chunk(j), "injected panic at {}", j.index);
            Ok(())
        });
        assert_eq!(scanned, CHUNK as u64 * 64);
        assert_eq!(
            bad,
            Some((
                7,
                "the signature check panicked: injected panic at 7".to_owned()
            ))
        );
    }

    #[test]
    fn a_failed_check_before_the_panics_is_the_one_reported() {
        // The failure is in the first chunk, the panics in every later one.
        let (_, bad) = sixty_four_chunks(|j| {
            assert!(
                !panics_after_the_first_chunk(j),
                "injected panic at {}",
                j.index
            );
            if j.index == 3 {
                return Err("no signature verifies".to_owned());
            }
            Ok(())
        });
        assert_eq!(bad, Some((3, "no signature verifies".to_owned())));
    }
}
