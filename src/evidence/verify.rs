//! Offline verification of a bundle: no network, no database, nothing but
//! the bundle and the trusted key (or a pinned checkpoint). Checks, in this
//! order, stopping at the first failure:
//!
//! 1. the archive is well formed and in canonical form (so no byte outside
//!    the files can change unnoticed);
//! 2. `manifest.sig` is the log key's signature over `manifest.json`;
//! 3. every file is listed in the manifest with its size and BLAKE3, and
//!    nothing else is present;
//! 4. `checkpoint.txt` is signed by the log key, and equals a pinned one or
//!    is proven consistent with it (`since/`, an earlier checkpoint and the
//!    consistency proof from it, checked whenever the bundle carries them);
//! 5. every entry is proven in that checkpoint: an inclusion proof each, or
//!    the one range proof of a period; consecutive entries are chain-linked;
//! 6. folding the entries from genesis applies every rule of the log and
//!    every signature verifies against the key history;
//! 7. a period is complete: its boundary entries lie outside it;
//! 8. every decision re-evaluated from the bundle's facts equals the one
//!    recorded, and every derived file regenerates byte for byte.

use std::collections::BTreeMap;

use serde_json::Value;

use super::bundle::{
    decode_consistency, decode_entries, decode_head, decode_proofs, decode_range,
    decode_subject_heads, is_canonical_tar, read_tar,
};
use super::facts::{Meta, Signatures, decisions_file, fold_then, render};
use super::{Control, FORMAT, SINCE_CHECKPOINT, SINCE_CONSISTENCY, Scope};
use crate::crypto::NoteVerifier;
use crate::ledger::{Checkpoint, merkle, verify_manifest};

/// What the verifier trusts.
#[derive(Clone, Debug)]
pub enum Trust {
    /// The log's verifier key (`log.vkey`).
    Key(NoteVerifier),
    /// A checkpoint the auditor already holds and trusts (its origin, size
    /// and root); the bundle must be for exactly that tree, or for a later
    /// one and carry the consistency proof from it (`since/`). With the key,
    /// the pinned note's signature is checked too. Without it, the log key
    /// is the one the bundle's genesis names: genesis is proven at index 0
    /// of the pinned tree like every other entry, so a forged genesis fails.
    Pinned {
        note: String,
        key: Option<NoteVerifier>,
    },
}

/// The first thing that failed, named for a person.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{what}: {reason}")]
pub struct BundleFailure {
    /// The file (or check) that failed, e.g. `entries.bin`, `entry 17`.
    pub what: String,
    pub reason: String,
}

/// A heads member, `name` (`heads.bin`, `subjects.bin`): decoded and
/// checked against the heads the checkpoint signs (`signed`) when `wanted`
/// (the signed heads, for a change bundle without `--complete`), refused
/// when present otherwise, and required when wanted.
fn heads_member<T>(
    name: &str,
    what: &str,
    signed: Option<crate::ledger::HeadsRoot>,
    wanted: Option<crate::ledger::HeadsRoot>,
    files: &BTreeMap<String, &[u8]>,
    decode: impl FnOnce(&[u8], crate::ledger::HeadsRoot) -> Result<T, String>,
) -> Result<Option<T>, BundleFailure> {
    match (wanted, files.get(name)) {
        (Some(h), Some(b)) => decode(b, h).map(Some).map_err(|e| fail(name, e)),
        (Some(_), None) => Err(fail(
            name,
            format!("missing, but the checkpoint commits to {what} heads"),
        )),
        (None, Some(_)) if signed.is_none() => Err(fail(
            name,
            format!("present, but the checkpoint has no {what} heads"),
        )),
        (None, Some(_)) => Err(fail(
            name,
            "present, but only a change bundle without --complete carries it",
        )),
        (None, None) => Ok(None),
    }
}

fn fail(what: impl Into<String>, reason: impl Into<String>) -> BundleFailure {
    BundleFailure {
        what: what.into(),
        reason: reason.into(),
    }
}

/// What a successful verification covered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    pub origin: String,
    /// The scope as JSON text (as the manifest has it).
    pub scope: String,
    /// The scope in words.
    pub scope_words: String,
    /// When obligation statuses and violations are computed for.
    pub as_of: i64,
    /// For a period or control whose end the log had not reached at the
    /// checkpoint: the bundle holds the period only up to `as_of`.
    pub period_unfinished: bool,
    pub checkpoint_size: u64,
    pub entries: usize,
    pub inclusion_proofs: usize,
    /// Entries proven by the range proof.
    pub range: Option<(u64, u64)>,
    pub signatures: usize,
    pub decisions: usize,
    pub files: usize,
    pub violations: usize,
    /// The last carried version-2 entry: every identity and policy entry up
    /// to it is carried (ledger-format §4.3). `None` if the bundle carries
    /// only version-1 entries.
    pub history_proven_to: Option<u64>,
    /// Decisions whose entries record a decision basis the bundle was found
    /// to carry in full (ledger-format §4.4); the rest of `decisions` were
    /// recorded before format version 3.
    pub decisions_based: usize,
    /// The earlier checkpoint (tree size, root) the bundle's checkpoint was
    /// proven consistent with, if it carries one.
    pub since: Option<(u64, crate::ledger::Hash)>,
    /// For a change bundle whose `heads.bin` proved it: how many entries
    /// concern the change, every one of them carried (ledger-format §6.5).
    pub change_entries_proven: Option<u64>,
    /// For a change bundle whose `subjects.bin` proved every entry
    /// concerning its proven subjects carried: how many subjects.
    pub subjects_proven: Option<u64>,
}

fn parse_time(v: &Value, key: &str) -> Result<i64, BundleFailure> {
    v.get(key).and_then(Value::as_i64).ok_or_else(|| {
        fail(
            "manifest.json",
            format!("scope.{key} is missing or not an integer"),
        )
    })
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn parse_scope(v: &Value) -> Result<Scope, BundleFailure> {
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or_default();
    let scope = match kind {
        "change" => Scope::Change {
            id: v
                .get("change")
                .and_then(Value::as_str)
                .ok_or_else(|| fail("manifest.json", "scope.change is missing"))?
                .to_owned(),
            // Only `true` may appear; anything else fails when the manifest
            // is regenerated (step 8.5).
            complete: v.get("complete") == Some(&Value::Bool(true)),
        },
        "period" => Scope::Period {
            from: parse_time(v, "from_unix_nanos")?,
            to: parse_time(v, "to_unix_nanos")?,
            environments: strings(v, "environments"),
            repositories: strings(v, "repositories"),
        },
        "control" => Scope::Control {
            control: v
                .get("control")
                .and_then(Value::as_str)
                .and_then(Control::parse)
                .ok_or_else(|| fail("manifest.json", "scope.control is not a known control"))?,
            from: parse_time(v, "from_unix_nanos")?,
            to: parse_time(v, "to_unix_nanos")?,
        },
        other => {
            return Err(fail(
                "manifest.json",
                format!("unknown scope kind {other:?}"),
            ));
        }
    };
    if let Some((from, to)) = scope.period()
        && from >= to
    {
        return Err(fail(
            "manifest.json",
            "the scope's period is empty: from must be before to",
        ));
    }
    Ok(scope)
}

/// The log key named by the bundle's entry 0, if it is a genesis (not yet
/// proven: the rest of verification proves it against the pinned root).
fn genesis_key(files: &BTreeMap<String, &[u8]>) -> Result<NoteVerifier, BundleFailure> {
    let entries = files
        .get("entries.bin")
        .ok_or_else(|| fail("entries.bin", "missing from the bundle"))?;
    let first = decode_entries(entries).map_err(|e| fail("entries.bin", e))?;
    let (index, bytes) = first
        .first()
        .ok_or_else(|| fail("entries.bin", "holds no entries"))?;
    if *index != 0 {
        return Err(fail(
            "entries.bin",
            "does not carry entry 0 (genesis), the trust root",
        ));
    }
    let e = crate::ledger::Entry::decode(bytes).map_err(|e| fail("entry 0", e.to_string()))?;
    let ev = crate::api::convert::decode_event(&e.envelope.payload)
        .map_err(|e| fail("entry 0", e.to_string()))?;
    match ev.body {
        crate::event::Body::Genesis(g) => Ok(NoteVerifier::new(&g.origin, g.log_key)),
        _ => Err(fail("entry 0", "not a genesis entry")),
    }
}

/// The largest `manifest.json` the verifier parses (1 MiB).
const MAX_MANIFEST_BYTES: usize = 1 << 20;

/// Verifies a bundle.
pub fn verify(bytes: &[u8], trust: &Trust) -> Result<VerifyReport, BundleFailure> {
    verify_with(bytes, trust, &super::Progress::default())
}

/// Verifies a bundle, counting the entries folded into `progress` (whose
/// stage the caller starts), and stopping with a failure of `export`
/// ("cancelled") once `progress` is cancelled.
pub fn verify_with(
    bytes: &[u8],
    trust: &Trust,
    progress: &super::Progress,
) -> Result<VerifyReport, BundleFailure> {
    // 1. The archive.
    let files = read_tar(bytes).map_err(|e| fail("archive", e))?;
    if !is_canonical_tar(&files, bytes) {
        return Err(fail(
            "archive",
            "not in canonical form: bytes outside the files (headers, order or padding) were changed",
        ));
    }
    match trust {
        Trust::Key(k) => verify_files(&files, k, None, progress),
        Trust::Pinned { note, key } => {
            let pinned = match key {
                Some(k) => Checkpoint::verify(note, k, k.name()),
                None => Checkpoint::parse_pinned(note),
            }
            .map_err(|e| fail("pinned checkpoint", e.to_string()))?;
            let key = match key {
                Some(k) => k.clone(),
                None => {
                    let k = genesis_key(&files)?;
                    if k.name() != pinned.origin {
                        return Err(fail(
                            "entry 0",
                            format!(
                                "genesis names log {:?} but the pinned checkpoint is of {:?}",
                                k.name(),
                                pinned.origin
                            ),
                        ));
                    }
                    k
                }
            };
            verify_files(&files, &key, Some(&pinned), progress)
        }
    }
}

/// Steps 2 onwards, on the files of a canonical archive.
fn verify_files<'a>(
    files: &BTreeMap<String, &'a [u8]>,
    key: &NoteVerifier,
    pinned: Option<&Checkpoint>,
    progress: &super::Progress,
) -> Result<VerifyReport, BundleFailure> {
    let get = |p: &str| -> Result<&'a [u8], BundleFailure> {
        files
            .get(p)
            .copied()
            .ok_or_else(|| fail(p, "missing from the bundle"))
    };

    // 2. The manifest and its signature. A manifest lists a dozen files in
    // a few KiB; a larger one is refused before it is parsed, since it is
    // not yet known to be signed and parsing JSON costs memory.
    let manifest_bytes = get("manifest.json")?;
    if manifest_bytes.len() > MAX_MANIFEST_BYTES {
        return Err(fail(
            "manifest.json",
            format!(
                "{} bytes; a manifest is at most {MAX_MANIFEST_BYTES}",
                manifest_bytes.len()
            ),
        ));
    }
    let manifest: Value = serde_json::from_slice(manifest_bytes)
        .map_err(|e| fail("manifest.json", format!("not JSON: {e}")))?;
    if manifest.get("format").and_then(Value::as_str) != Some(FORMAT) {
        return Err(fail(
            "manifest.json",
            format!("format is not {FORMAT:?}; this verifier reads only that format"),
        ));
    }
    let origin = manifest
        .get("origin")
        .and_then(Value::as_str)
        .ok_or_else(|| fail("manifest.json", "origin is missing"))?
        .to_owned();
    if key.name() != origin {
        return Err(fail(
            "manifest.json",
            format!(
                "the bundle is from log {origin:?} but the trusted key is for {:?}",
                key.name()
            ),
        ));
    }
    let sig =
        std::str::from_utf8(get("manifest.sig")?).map_err(|_| fail("manifest.sig", "not UTF-8"))?;
    let signed =
        verify_manifest(sig, key, &origin).map_err(|e| fail("manifest.sig", e.to_string()))?;
    if signed != crate::crypto::blake3_256(manifest_bytes) {
        return Err(fail(
            "manifest.json",
            "its BLAKE3 differs from the digest manifest.sig signs (the manifest was altered)",
        ));
    }

    // 3. Every file, as listed.
    let listed = manifest
        .get("files")
        .and_then(Value::as_array)
        .ok_or_else(|| fail("manifest.json", "files is missing"))?;
    let mut expected = BTreeMap::new();
    for (i, f) in listed.iter().enumerate() {
        let path = f.get("path").and_then(Value::as_str);
        let size = f.get("size").and_then(Value::as_u64);
        let digest = f.get("blake3").and_then(Value::as_str);
        let (Some(path), Some(size), Some(digest)) = (path, size, digest) else {
            return Err(fail(
                "manifest.json",
                format!(
                    "files[{i}] is not an object with a string path, a size and a string blake3"
                ),
            ));
        };
        if expected
            .insert(path.to_owned(), (size, digest.to_owned()))
            .is_some()
        {
            return Err(fail(
                "manifest.json",
                format!("files[{i}]: {path:?} is listed twice"),
            ));
        }
    }
    for (path, data) in files {
        if path == "manifest.json" || path == "manifest.sig" {
            continue;
        }
        let Some((size, digest)) = expected.get(path) else {
            return Err(fail(path, "not listed in the manifest"));
        };
        if *size != data.len() as u64 {
            return Err(fail(path, "its size differs from the manifest"));
        }
        if hex::encode(crate::crypto::blake3_256(data)) != *digest {
            return Err(fail(
                path,
                "its BLAKE3 differs from the manifest (the file was altered)",
            ));
        }
    }
    if let Some(missing) = expected.keys().find(|p| !files.contains_key(*p)) {
        return Err(fail(
            missing,
            "listed in the manifest but missing from the bundle",
        ));
    }

    // 4. The checkpoint.
    let note = std::str::from_utf8(get("checkpoint.txt")?)
        .map_err(|_| fail("checkpoint.txt", "not UTF-8"))?;
    let cp = Checkpoint::verify(note, key, &origin)
        .map_err(|e| fail("checkpoint.txt", e.to_string()))?;
    let m_cp = manifest.get("checkpoint").cloned().unwrap_or_default();
    if m_cp.get("size").and_then(Value::as_u64) != Some(cp.size)
        || m_cp.get("root").and_then(Value::as_str) != Some(hex::encode(cp.root).as_str())
    {
        return Err(fail(
            "manifest.json",
            "checkpoint differs from checkpoint.txt",
        ));
    }

    let since = match (files.get(SINCE_CHECKPOINT), files.get(SINCE_CONSISTENCY)) {
        (None, None) => None,
        (Some(note), Some(proof)) => Some(check_since(note, proof, key, &origin, &cp)?),
        (Some(_), None) => {
            return Err(fail(
                SINCE_CONSISTENCY,
                format!("missing, but the bundle carries {SINCE_CHECKPOINT}"),
            ));
        }
        (None, Some(_)) => {
            return Err(fail(
                SINCE_CHECKPOINT,
                format!("missing, but the bundle carries {SINCE_CONSISTENCY}"),
            ));
        }
    };
    if let Some(p) = pinned {
        if p.size > cp.size {
            return Err(fail(
                "checkpoint.txt",
                format!(
                    "is for tree size {}, older than the pinned checkpoint's {}; ask for a bundle exported now",
                    cp.size, p.size
                ),
            ));
        }
        if p.size == cp.size && p.root != cp.root {
            return Err(fail(
                "checkpoint.txt",
                format!(
                    "is for tree size {} like the pinned checkpoint, but with another root: the log has forked, or the bundle is of another log",
                    cp.size
                ),
            ));
        }
        if p.size < cp.size {
            match &since {
                Some(s) if (s.size, s.root) == (p.size, p.root) => {}
                Some(s) => {
                    return Err(fail(
                        SINCE_CHECKPOINT,
                        format!(
                            "is for tree size {} (root {}), not the pinned checkpoint's size {} (root {}); export again with --since-checkpoint and the pinned note",
                            s.size,
                            hex::encode(s.root),
                            p.size,
                            hex::encode(p.root)
                        ),
                    ));
                }
                None => {
                    return Err(fail(
                        "checkpoint.txt",
                        format!(
                            "is for tree size {}, later than the pinned checkpoint's {}, and the bundle carries no consistency proof from it; export with --since-checkpoint and the pinned note",
                            cp.size, p.size
                        ),
                    ));
                }
            }
        }
    }
    // 5. Entries and their proofs.
    let entries = decode_entries(get("entries.bin")?).map_err(|e| fail("entries.bin", e))?;
    if let Some((i, _)) = entries.iter().find(|(i, _)| *i >= cp.size) {
        return Err(fail(
            "entries.bin",
            format!("entry {i} is beyond the checkpoint's {} entries", cp.size),
        ));
    }
    if manifest.get("entries").and_then(Value::as_u64) != Some(entries.len() as u64) {
        return Err(fail(
            "manifest.json",
            "entries count differs from entries.bin",
        ));
    }
    let range_m = manifest.get("range").filter(|r| !r.is_null());
    let range = match (range_m, files.get("range.bin")) {
        (None, None) => None,
        (Some(_), Some(b)) => Some(decode_range(b).map_err(|e| fail("range.bin", e))?),
        (Some(_), None) => {
            return Err(fail("range.bin", "missing, but the manifest names a range"));
        }
        (None, Some(_)) => {
            return Err(fail(
                "range.bin",
                "present, but the manifest names no range",
            ));
        }
    };
    if let (Some(r), Some(m)) = (&range, range_m)
        && (m.get("start").and_then(Value::as_u64) != Some(r.start)
            || m.get("end").and_then(Value::as_u64) != Some(r.end))
    {
        return Err(fail("manifest.json", "range differs from range.bin"));
    }
    let proofs = decode_proofs(get("proofs.bin")?).map_err(|e| fail("proofs.bin", e))?;
    let in_range = |i: u64| range.as_ref().is_some_and(|r| r.start <= i && i < r.end);
    let mut used = 0usize;
    for (i, bytes) in &entries {
        if in_range(*i) {
            continue;
        }
        if progress.is_cancelled() {
            return Err(fail("export", "cancelled"));
        }
        let proof = proofs
            .get(i)
            .ok_or_else(|| fail(format!("entry {i}"), "has no inclusion proof in proofs.bin"))?;
        merkle::verify_inclusion(&merkle::leaf_hash(bytes), *i, cp.size, proof, &cp.root)
            .map_err(|e| fail(format!("entry {i}"), format!("inclusion proof: {e}")))?;
        used += 1;
    }
    if used != proofs.len() {
        let carried: std::collections::BTreeSet<u64> = entries.iter().map(|(i, _)| *i).collect();
        let extra = proofs
            .keys()
            .find(|i| !carried.contains(i) || in_range(**i))
            .copied()
            .unwrap_or_default();
        return Err(fail(
            "proofs.bin",
            if carried.contains(&extra) {
                format!("holds a proof for entry {extra}, which the range proves")
            } else {
                format!("holds a proof for entry {extra}, which the bundle does not carry")
            },
        ));
    }
    if let Some(r) = &range {
        let run: Vec<_> = entries
            .iter()
            .filter(|(i, _)| in_range(*i))
            .map(|(_, b)| merkle::leaf_hash(b))
            .collect();
        if run.len() as u64 != r.end - r.start {
            return Err(fail(
                "completeness",
                format!(
                    "entries.bin must hold every entry of the range {}..{} the bundle proves; {} of {} are present",
                    r.start,
                    r.end,
                    run.len(),
                    r.end - r.start
                ),
            ));
        }
        merkle::verify_range(r.start, &run, cp.size, &r.left, &r.right, &cp.root)
            .map_err(|e| fail("range.bin", format!("range proof: {e}")))?;
    }

    // 6. The fold, with every signature; the derived files are rendered
    //    from it while the signature checks finish.
    let scope = parse_scope(manifest.get("scope").unwrap_or(&Value::Null))?;
    match (&scope, &range) {
        (
            Scope::Change {
                complete: false, ..
            },
            Some(_),
        ) => {
            return Err(fail(
                "range.bin",
                "a change bundle carries no range unless its scope says it is complete",
            ));
        }
        (Scope::Change { complete: true, .. }, None) => {
            return Err(fail(
                "range.bin",
                "a complete change bundle needs its range proof",
            ));
        }
        _ => {}
    }
    // `heads.bin` and `subjects.bin` exactly when a change bundle without
    // `--complete` has a checkpoint that signs change and subject heads
    // (evidence-format §6.6, §6.7).
    let heads = cp.changes.filter(|_| scope.is_sparse_change());
    let head = heads_member(super::HEADS, "change", cp.changes, heads, files, |b, h| {
        let p = decode_head(b)?;
        if p.index >= h.size {
            return Err(format!(
                "leaf {} is not below the checkpoint's {} changes",
                p.index, h.size
            ));
        }
        Ok(p)
    })?;
    let subjects = cp.subjects.filter(|_| scope.is_sparse_change());
    let subject_proofs = heads_member(
        super::SUBJECTS,
        "subject",
        cp.subjects,
        subjects,
        files,
        |b, h| {
            let proofs = decode_subject_heads(b)?;
            if let Some((s, p)) = proofs.iter().find(|(_, p)| p.index >= h.size) {
                return Err(format!(
                    "the leaf {} of subject {s} is not below the checkpoint's {} subjects",
                    p.index, h.size
                ));
            }
            Ok(proofs)
        },
    )?;
    let as_of = manifest
        .get("as_of_unix_nanos")
        .and_then(Value::as_i64)
        .ok_or_else(|| fail("manifest.json", "as_of_unix_nanos is missing"))?;
    let meta = Meta {
        origin: origin.clone(),
        scope: scope.clone(),
        checkpoint_size: cp.size,
        checkpoint_root: cp.root,
        range: range.as_ref().map(|r| (r.start, r.end)),
        as_of,
        heads,
        subjects,
    };
    let (folded, mut rendered) = fold_then(
        &entries,
        Signatures::Check,
        scope
            .period()
            .zip(range.as_ref())
            .map(|((_, to), r)| (r.end - 1, to)),
        progress,
        |f| render(f, &meta),
    )
    .map_err(|f| {
        fail(
            f.index
                .map(|i| format!("entry {i}"))
                .unwrap_or_else(|| "entries.bin".into()),
            f.reason,
        )
    })?;
    rendered.files.insert(
        "facts/decisions.json".into(),
        decisions_file(&folded.state, &rendered.decided),
    );
    let genesis = folded
        .state
        .genesis()
        .ok_or_else(|| fail("entry 0", "not a genesis entry"))?;
    if genesis.log_key != *key.key() || genesis.origin != origin {
        return Err(fail(
            "entry 0",
            "genesis names a log key or origin other than the trusted one",
        ));
    }
    let mut prev: Option<(u64, crate::ledger::Hash)> = None;
    for (i, info) in &folded.info {
        if let Some((pi, leaf)) = prev
            && pi + 1 == *i
            && info.prev != leaf
        {
            return Err(fail(
                format!("entry {i}"),
                format!("chain link: its previous leaf hash is not the hash of entry {pi}"),
            ));
        }
        prev = Some((*i, info.leaf));
    }

    // 7. Scope, completeness and the time statuses are computed for.
    let time = |i: u64| folded.info.get(&i).map(|x| x.time);
    let last = cp.size - 1;
    let mut change_entries_proven = None;
    let mut subjects_proven = None;
    match &scope {
        Scope::Change { id, .. } => {
            let Some(change) = folded.state.gov().change(id) else {
                return Err(fail("entries.bin", format!("no entry opens change {id}")));
            };
            if time(last) != Some(as_of) {
                return Err(fail(
                    "manifest.json",
                    "as_of must be the time of the checkpoint's last entry, which the bundle must carry",
                ));
            }
            // Every entry concerning the change is carried: their chain is
            // the change's leaf in the heads the checkpoint signs.
            if let (Some(h), Some(p)) = (&heads, &head) {
                change_entries_proven = Some(
                    super::check_head(&folded.state, id, p, h)
                        .map_err(|e| fail("completeness", e))?,
                );
            }
            // And every entry concerning each of its proven subjects.
            if let (Some(h), Some(p)) = (&subjects, &subject_proofs) {
                subjects_proven = Some(
                    super::check_subject_heads(&folded.state, id, p, h)
                        .map_err(|(what, e)| fail(what, e))?,
                );
            }
            // A complete change bundle holds every entry from the one that
            // opened the change to the checkpoint: everything that concerns
            // the change comes after its opening (§8.2).
            if let Some(r) = &range {
                let opened = change.revisions[0].index;
                if r.start != opened {
                    return Err(fail(
                        "completeness",
                        format!(
                            "the range starts at entry {} but change {id} was opened by entry {opened}; a complete change bundle's range starts there",
                            r.start
                        ),
                    ));
                }
                if r.end != cp.size {
                    return Err(fail(
                        "completeness",
                        format!(
                            "the range ends before entry {} but the checkpoint has {} entries; later entries concerning change {id} may have been left out",
                            r.end, cp.size
                        ),
                    ));
                }
            }
        }
        Scope::Period { from, to, .. } | Scope::Control { from, to, .. } => {
            let r = range
                .as_ref()
                .ok_or_else(|| fail("range.bin", "a period bundle needs its range proof"))?;
            let (t_start, t_end) = (
                time(r.start).unwrap_or(i64::MIN),
                time(r.end - 1).unwrap_or(i64::MIN),
            );
            let mut t_prev = i64::MIN;
            for i in r.start..r.end {
                let t = time(i).unwrap_or(i64::MIN);
                if t < t_prev {
                    return Err(fail(format!("entry {i}"), "integrated time goes backwards"));
                }
                t_prev = t;
            }
            // The range must start before the period's lead-in: the
            // longest break-glass review deadline of a policy activated
            // before the period's first entry (§8.5).
            let a = (r.start..r.end)
                .find(|i| time(*i).is_some_and(|t| t >= *from))
                .unwrap_or(r.end);
            let lead_in = super::Deadlines::of(&folded.state)
                .map_err(|e| fail("entries.bin", e.to_string()))?
                .lead_in(a);
            let lead_from = from.saturating_sub(lead_in);
            if r.start != 0 && t_start >= lead_from {
                return Err(fail(
                    "completeness",
                    format!(
                        "entry {} is the first of the range but lies inside the period or its lead-in (the {} s before it in which a break-glass deployment can come due in it); the entry before it is missing, so earlier entries may have been left out",
                        r.start,
                        lead_in / 1_000_000_000
                    ),
                ));
            }
            // Nor may it start earlier than that: the exporter's range is
            // the one the scope gives (§8.5), so a bundle of a scope is one
            // bundle.
            if r.start + 1 < r.end && time(r.start + 1).is_some_and(|t| t < lead_from) {
                return Err(fail(
                    "range.bin",
                    format!(
                        "the range starts earlier than the period and its lead-in need: entry {} is already before them, so the range should start there",
                        r.start + 1
                    ),
                ));
            }
            if t_end >= *to {
                if as_of != *to {
                    return Err(fail("manifest.json", "as_of must be the period's end"));
                }
                // The range ends with the first entry at or after `to`, and
                // nothing later is carried: later facts would change what
                // the bundle says about the period.
                if r.end - 1 > r.start && time(r.end - 2).is_some_and(|t| t >= *to) {
                    return Err(fail(
                        "range.bin",
                        format!(
                            "the range runs past the period: entry {} is already at or after its end, so the range should end after it",
                            r.end - 2
                        ),
                    ));
                }
                if let Some(&i) = folded.info.keys().next_back().filter(|i| **i >= r.end) {
                    return Err(fail(
                        format!("entry {i}"),
                        "lies after the range, which ends with the first entry at or after the period's end; a period bundle carries nothing later",
                    ));
                }
            } else if r.end != cp.size {
                return Err(fail(
                    "completeness",
                    format!(
                        "entry {} is the last of the range but lies inside the period, and the log continues; later entries of the period may have been left out",
                        r.end - 1
                    ),
                ));
            } else if time(last) != Some(as_of) {
                return Err(fail(
                    "manifest.json",
                    "as_of must be the time of the log's last entry",
                ));
            }
        }
    }

    // 8. Decisions re-evaluated, derived files regenerated, the manifest
    //    itself regenerated (so it holds nothing but what it must).
    let derived = &rendered.files;
    let got_decisions = get("facts/decisions.json")?;
    if *got_decisions != derived["facts/decisions.json"] {
        compare_decisions(got_decisions, &derived["facts/decisions.json"])?;
    }
    for (path, want) in derived {
        let got = get(path)?;
        if got != want {
            return Err(fail(
                path,
                "differs from what the bundle's entries imply (regenerated from them)",
            ));
        }
    }
    let primary = [
        "entries.bin",
        "proofs.bin",
        "range.bin",
        "checkpoint.txt",
        "manifest.json",
        "manifest.sig",
        SINCE_CHECKPOINT,
        SINCE_CONSISTENCY,
        super::HEADS,
        super::SUBJECTS,
    ];
    if let Some(extra) = files
        .keys()
        .find(|p| !derived.contains_key(*p) && !primary.contains(&p.as_str()))
    {
        return Err(fail(extra, "is not a file of this bundle format"));
    }
    // `manifest()` lists every file but the manifest and its signature.
    // Step 3 found each one's size and BLAKE3 as `expected` lists them, so
    // they are not hashed again.
    let hashed = expected
        .iter()
        .map(|(p, (size, digest))| (p.as_str(), *size, digest.clone()));
    if super::facts::manifest_of(&meta, entries.len() as u64, hashed) != *manifest_bytes {
        return Err(fail(
            "manifest.json",
            "is not the manifest of these files (extra, missing or inconsistent fields)",
        ));
    }
    let violations = rendered.violations;
    let period_unfinished = scope.period().is_some_and(|(_, to)| as_of < to);
    let report = VerifyReport {
        origin,
        scope: super::facts::scope_json(&scope).to_string(),
        scope_words: scope.describe(),
        as_of,
        period_unfinished,
        checkpoint_size: cp.size,
        entries: entries.len(),
        inclusion_proofs: used,
        range: meta.range,
        signatures: folded.info.len(),
        decisions: folded.state.gov().deployments().count(),
        files: files.len(),
        violations,
        history_proven_to: folded.history_proven_to,
        decisions_based: folded.decisions_based,
        since: since.map(|s| (s.size, s.root)),
        change_entries_proven,
        subjects_proven,
    };
    // Freeing the fold (a state and an index of every entry: ~0.25 s for
    // 100,000 entries) is left to another thread; the verdict does not wait.
    let spare = (folded, rendered);
    if let Err(e) = std::thread::Builder::new()
        .name("bundle-free".into())
        .spawn(move || drop(spare))
    {
        tracing::debug!("freeing on this thread: {e}");
    }
    Ok(report)
}

/// `since/`: an earlier checkpoint of the same log, and the consistency
/// proof that the bundle's tree `cp` extends it.
fn check_since(
    note: &[u8],
    proof: &[u8],
    key: &NoteVerifier,
    origin: &str,
    cp: &Checkpoint,
) -> Result<Checkpoint, BundleFailure> {
    let note = std::str::from_utf8(note).map_err(|_| fail(SINCE_CHECKPOINT, "not UTF-8"))?;
    let s =
        Checkpoint::verify(note, key, origin).map_err(|e| fail(SINCE_CHECKPOINT, e.to_string()))?;
    if s.size == 0 || s.size > cp.size {
        return Err(fail(
            SINCE_CHECKPOINT,
            format!(
                "is for tree size {}; an earlier checkpoint is for a size from 1 to the bundle's {}",
                s.size, cp.size
            ),
        ));
    }
    let proof = decode_consistency(proof).map_err(|e| fail(SINCE_CONSISTENCY, e))?;
    merkle::verify_consistency(s.size, cp.size, &proof, &s.root, &cp.root).map_err(|e| {
        fail(
            SINCE_CONSISTENCY,
            format!(
                "consistency proof from tree size {} to {}: {e}",
                s.size, cp.size
            ),
        )
    })?;
    Ok(s)
}

/// Names the first decision whose recorded form differs from re-evaluation.
fn compare_decisions(got: &[u8], want: &[u8]) -> Result<(), BundleFailure> {
    let f = "facts/decisions.json";
    let got: Value = serde_json::from_slice(got).map_err(|e| fail(f, format!("not JSON: {e}")))?;
    let want: Value = serde_json::from_slice(want).expect("rendered JSON parses");
    let empty = Vec::new();
    let (g, w) = (
        got.as_array().unwrap_or(&empty),
        want.as_array().unwrap_or(&empty),
    );
    // Every difference is reported, not only the first: an auditor wants
    // the whole list of decisions the bundle misstates.
    let words = |d: &Value| {
        format!(
            "{} by rule {} ({})",
            d["verdict"].as_str().unwrap_or("?"),
            d["rule"].as_str().unwrap_or("(none)"),
            d["reasons"]
                .as_array()
                .map(|r| r
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("; "))
                .unwrap_or_default()
        )
    };
    // By index, the first of each (the bundle's list is untrusted and may
    // be long: a scan per decision would be quadratic).
    let mut by_index: std::collections::HashMap<u64, &Value> = Default::default();
    for d in g {
        if let Some(i) = d["index"].as_u64() {
            by_index.entry(i).or_insert(d);
        }
    }
    let mut differ = Vec::new();
    for wd in w {
        let idx = wd["index"].as_u64().unwrap_or_default();
        match by_index.get(&idx).copied() {
            None => differ.push((idx, "the bundle has no decision for it".to_owned())),
            Some(gd) if gd != wd && words(gd) != words(wd) => differ.push((
                idx,
                format!(
                    "the bundle says {}, re-evaluation gives {}",
                    words(gd),
                    words(wd)
                ),
            )),
            // Same verdict, rule and reasons: name the fields that differ.
            Some(gd) if gd != wd => differ.push((idx, fields_differ(gd, wd))),
            Some(_) => {}
        }
    }
    match differ.as_slice() {
        [] => {}
        [(idx, how)] => {
            return Err(fail(
                f,
                format!(
                    "the decision recorded for entry {idx} differs from re-evaluating it from the bundle's facts: {how}"
                ),
            ));
        }
        many => {
            let list: Vec<String> = many
                .iter()
                .map(|(idx, how)| format!("entry {idx}: {how}"))
                .collect();
            return Err(fail(
                f,
                format!(
                    "{} recorded decisions differ from re-evaluating them from the bundle's facts. {}",
                    many.len(),
                    list.join(". ")
                ),
            ));
        }
    }
    if g.len() != w.len() {
        let mut seen = std::collections::BTreeSet::new();
        if let Some(twice) = g
            .iter()
            .filter_map(|d| d["index"].as_u64())
            .find(|i| !seen.insert(*i))
        {
            return Err(fail(f, format!("holds two decisions for entry {twice}")));
        }
        return Err(fail(
            f,
            "holds decisions for entries that are not recorded deployments",
        ));
    }
    Ok(())
}

/// "counted: the bundle says [...], re-evaluation gives [...]" for each
/// field of two decisions that differs, each value cut to 200 bytes.
fn fields_differ(got: &Value, want: &Value) -> String {
    let cut = |v: Option<&Value>| {
        let mut s = v.map_or_else(|| "nothing".to_owned(), Value::to_string);
        if s.len() > 200 {
            let mut end = 200;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
            s.push_str("...");
        }
        s
    };
    let (g, w) = (got.as_object(), want.as_object());
    let keys: std::collections::BTreeSet<&String> =
        g.iter().chain(w.iter()).flat_map(|o| o.keys()).collect();
    let diffs: Vec<String> = keys
        .into_iter()
        .filter(|k| got.get(k.as_str()) != want.get(k.as_str()))
        .map(|k| {
            format!(
                "{k}: the bundle says {}, re-evaluation gives {}",
                cut(got.get(k.as_str())),
                cut(want.get(k.as_str()))
            )
        })
        .collect();
    if diffs.is_empty() {
        "the bundle's decision is not a JSON object".to_owned()
    } else {
        diffs.join("; ")
    }
}
