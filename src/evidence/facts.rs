//! The fold of a bundle's entries and the derived files rendered from it.
//! Exporter and verifier run exactly this code, so a verifier regenerates
//! every derived file from the entries and compares it byte for byte.
//!
//! JSON files are pretty-printed with object keys in sorted order and a final
//! newline. Arrays of entries, decisions, reviews and deployments are in
//! entry-index order; changes are in change-id order and principals in
//! principal-id order.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::{Control, FORMAT, Scope};
use crate::api::convert::decode_event;
use crate::event::{Body, Event};
use crate::ledger::{Entry, Hash, merkle};
use crate::policy::glob_match;
use crate::state::State;
use crate::state::gov::{ChangeRec, DeployRec, ObligationRec, Violation, fmt_nanos, violations};
use crate::verify::{Failure, SigJob, with_signature_threads};

/// Whether the fold checks signatures (the verifier) or trusts the log's
/// append-time checks (the exporter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Signatures {
    Trust,
    Check,
}

/// What the fold learned of one entry.
pub(super) struct Info {
    pub(super) time: i64,
    pub(super) event: Event,
    pub(super) leaf: Hash,
    pub(super) prev: Hash,
    pub(super) identity: String,
}

/// A bundle's entries folded in index order.
pub(super) struct Folded {
    pub(super) state: State,
    pub(super) info: BTreeMap<u64, Info>,
    /// The last carried version-2 entry: every identity and policy entry
    /// up to it is carried (ledger-format §4.3). `None` when the bundle
    /// carries only version-1 entries, which prove nothing of the kind.
    pub(super) history_proven_to: Option<u64>,
    /// Carried deployments whose entries record a decision basis (format
    /// version 3), each found complete in the bundle (ledger-format §4.4).
    pub(super) decisions_based: usize,
}

fn at(index: u64, reason: impl Into<String>) -> Failure {
    Failure {
        index: Some(index),
        reason: reason.into(),
    }
}

/// Why a carried deployment's decision basis differs from the one the
/// bundle's facts give it (evidence-format §9, step 4): the first key that
/// differs, with its count in the entry and in the bundle.
fn basis_gap(key: &str, recorded: Option<u64>, carried: Option<u64>) -> String {
    match (recorded, carried) {
        (Some(r), Some(c)) if r > c => format!(
            "decision basis: the deployment was decided on {r} entries concerning {key} before \
             it, the bundle carries {c}: it leaves out {} entr{} the decision rests on",
            r - c,
            if r - c == 1 { "y" } else { "ies" }
        ),
        (Some(r), Some(c)) => format!(
            "decision basis: the deployment was decided on {r} entries concerning {key} before \
             it, fewer than the {c} the bundle carries"
        ),
        (Some(r), None) => format!(
            "decision basis: the deployment was decided on {r} entries concerning {key}, which \
             on the bundle's facts its decision does not read: entries it rests on were left out"
        ),
        (None, c) => format!(
            "decision basis: on the bundle's facts the decision reads {key} ({} entries), which \
             the deployment's recorded basis does not name",
            c.unwrap_or(0)
        ),
    }
}

/// Why a carried entry's history count differs from the identity and policy
/// entries the bundle carries up to it (evidence-format §9, step 4).
/// `proven_to` is the last carried version-2 entry, up to which the history
/// is known to be complete.
fn history_gap(recorded: u64, carried: u64, proven_to: Option<u64>) -> String {
    if recorded > carried {
        let missing = recorded - carried;
        let where_ = match proven_to {
            Some(p) => format!("between entry {p} and this one"),
            None => "before this one".to_owned(),
        };
        format!(
            "history: the entry counts {recorded} identity and policy entries up to it, the \
             bundle carries {carried}: it leaves out {missing} key, role, principal or policy \
             change{} {where_}",
            if missing == 1 { "" } else { "s" }
        )
    } else {
        format!(
            "history: the entry counts {recorded} identity and policy entries up to it, fewer \
             than the {carried} the bundle carries"
        )
    }
}

/// Folds `entries` (increasing indices, starting with genesis) into a sparse
/// state, applying every rule the log applied when they were appended, then
/// runs `then` on the result while the other cores finish checking
/// signatures (so rendering overlaps verification). Counts folded entries
/// into `progress`.
///
/// With `boundary` (a period bundle's last range entry and the period's
/// end), when that entry is integrated at or after the end, `then` sees the
/// state folded from the entries before it, with the [`Info`] of every
/// entry: the boundary proves where the period ends, and is checked like
/// any other, but its facts come after the period and do not speak for it.
pub(super) fn fold_then<B: AsRef<[u8]>, R>(
    entries: &[(u64, B)],
    sigs: Signatures,
    boundary: Option<(u64, i64)>,
    progress: &super::Progress,
    then: impl FnOnce(&Folded) -> R,
) -> Result<(Folded, R), Failure> {
    let scan = |sink: &mut dyn FnMut(SigJob)| -> Result<(Folded, R), Failure> {
        let mut then = Some(then);
        let mut rendered: Option<R> = None;
        let mut state = State::sparse();
        let mut info = BTreeMap::new();
        let mut event_ids: std::collections::HashMap<String, u64> = Default::default();
        let mut proven_to: Option<u64> = None;
        let mut last_based: Option<u64> = None;
        let mut decisions_based = 0;
        if entries.first().map(|e| e.0) != Some(0) {
            return Err(Failure {
                index: None,
                reason: "the bundle does not carry entry 0 (genesis), the trust root".into(),
            });
        }
        for (n, (i, bytes)) in entries.iter().enumerate() {
            progress.set(n as u64);
            if progress.is_cancelled() {
                return Err(Failure {
                    index: None,
                    reason: "cancelled".into(),
                });
            }
            let (i, bytes) = (*i, bytes.as_ref());
            let e = Entry::decode(bytes).map_err(|e| at(i, format!("entry bytes: {e}")))?;
            if boundary.is_some_and(|(b, to)| i == b && e.integrated_time_nanos >= to)
                && let Some(then) = then.take()
            {
                // The rest is rendered from its bytes alone; an entry that
                // does not decode is left to the fold below to name, as is
                // a history count that does not hold (the view claims the
                // reach the counts give if they all hold; else it fails).
                let mut reach = proven_to;
                for (j, b) in &entries[n..] {
                    if let Some((x, counted)) = info_of(b.as_ref()) {
                        info.insert(*j, x);
                        if counted {
                            reach = Some(*j);
                        }
                    }
                }
                let view = Folded {
                    state,
                    info,
                    history_proven_to: reach,
                    decisions_based,
                };
                rendered = Some(then(&view));
                (state, info) = (view.state, view.info);
            }
            if e.index != i {
                return Err(at(i, format!("entry records index {}", e.index)));
            }
            if i == 0 && e.prev_leaf_hash != [0u8; 32] {
                return Err(at(0, "chain link: entry 0 must link to 32 zero bytes"));
            }
            if e.envelope.payload_type != crate::crypto::PAYLOAD_TYPE {
                return Err(at(i, format!("payload type {:?}", e.envelope.payload_type)));
            }
            let event =
                decode_event(&e.envelope.payload).map_err(|e| at(i, format!("payload: {e}")))?;
            if let Some(first) = event_ids.insert(event.event_id.clone(), i) {
                return Err(at(
                    i,
                    format!(
                        "event_id {:?} was already used by entry {first}",
                        event.event_id
                    ),
                ));
            }
            // Before the signer's keys: a missing key or role change would
            // otherwise surface as a puzzling signature or rule failure.
            let carried = state.history_count() + u64::from(event.body.is_identity_or_policy());
            let below = proven_to;
            crate::verify::check_history_count(i, e.history_count, carried, &mut proven_to, |n| {
                history_gap(n, carried, below)
            })
            .map_err(|why| at(i, why))?;
            let basis = state.basis_for(&event);
            crate::verify::check_basis(i, e.basis.as_deref(), &basis, &mut last_based, basis_gap)
                .map_err(|why| at(i, why))?;
            if e.basis.is_some() && matches!(event.body, Body::DeployRequested(_)) {
                decisions_based += 1;
            }
            let keys = state
                .signer_keys(&event)
                .map_err(|e| at(i, format!("signature: {e}")))?;
            let key = match keys.key_for_fold(&e.envelope, &event.body) {
                Ok(key) => key,
                Err(err) => match (&sigs, keys.preferred(&e.envelope)) {
                    // The exporter relies on the log's checks at append
                    // time: an entry whose signature fails here is left for
                    // the verifier to name.
                    (Signatures::Trust, Some(key)) => key,
                    _ => return Err(at(i, format!("signature: {err}"))),
                },
            };
            // Queued before the fold's rules run, so that a bad signature
            // is what this entry's failure names.
            if sigs == Signatures::Check {
                sink(SigJob {
                    index: i,
                    keys,
                    envelope: e.envelope,
                });
            }
            state
                .apply(i, e.integrated_time_nanos, &event, &key)
                .map_err(|err| at(i, format!("state rules: {err}")))?;
            info.insert(
                i,
                Info {
                    time: e.integrated_time_nanos,
                    leaf: merkle::leaf_hash(bytes),
                    prev: e.prev_leaf_hash,
                    identity: e.transport_identity,
                    event,
                },
            );
        }
        let folded = Folded {
            state,
            info,
            history_proven_to: proven_to,
            decisions_based,
        };
        let r = match (rendered, then) {
            (Some(r), _) => r,
            (None, Some(then)) => then(&folded),
            (None, None) => unreachable!("`then` runs once, and only when it renders"),
        };
        Ok((folded, r))
    };
    let (folded, bad) = with_signature_threads(scan);
    match (folded, bad) {
        // At the same index the signature is the cause.
        (Err(f), Some((i, why))) if f.index.is_none_or(|fi| i <= fi) => {
            Err(at(i, format!("signature: {why}")))
        }
        (Err(f), _) => Err(f),
        (Ok(_), Some((i, why))) => Err(at(i, format!("signature: {why}"))),
        (Ok(f), None) => Ok(f),
    }
}

/// An entry's [`Info`] from its bytes alone, if they decode, and whether it
/// records a history count (format version 2 and later).
fn info_of(bytes: &[u8]) -> Option<(Info, bool)> {
    let e = Entry::decode(bytes).ok()?;
    let event = decode_event(&e.envelope.payload).ok()?;
    let counted = e.history_count.is_some();
    Some((
        Info {
            time: e.integrated_time_nanos,
            leaf: merkle::leaf_hash(bytes),
            prev: e.prev_leaf_hash,
            identity: e.transport_identity,
            event,
        },
        counted,
    ))
}

/// What the manifest says about the bundle, which the files depend on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Meta {
    pub(super) origin: String,
    pub(super) scope: Scope,
    pub(super) checkpoint_size: u64,
    pub(super) checkpoint_root: Hash,
    pub(super) range: Option<(u64, u64)>,
    pub(super) as_of: i64,
    /// The change heads the checkpoint signs, for a change bundle without
    /// `--complete` (whose `heads.bin` proves its change's entries
    /// complete); `None` otherwise.
    pub(super) heads: Option<crate::ledger::HeadsRoot>,
    /// The subject heads the checkpoint signs, for such a bundle (whose
    /// `subjects.bin` proves its change's subjects' entries complete);
    /// `None` otherwise.
    pub(super) subjects: Option<crate::ledger::HeadsRoot>,
}

impl Meta {
    /// The end of a period (or control) scope the log had not reached at
    /// the checkpoint: the bundle then proves the period only up to `as_of`.
    pub(super) fn unfinished_period(&self) -> Option<i64> {
        match self.scope {
            Scope::Period { to, .. } | Scope::Control { to, .. } if self.as_of < to => Some(to),
            _ => None,
        }
    }
}

/// Pretty JSON (of a `Value` or of typed rows), with the trailing newline
/// every file has.
fn pretty<T: serde::Serialize + ?Sized>(v: &T) -> Vec<u8> {
    let mut s = serde_json::to_vec_pretty(v).expect("JSON values and rows serialise");
    s.push(b'\n');
    s
}

pub(super) fn scope_json(scope: &Scope) -> Value {
    match scope {
        Scope::Change {
            id,
            complete: false,
        } => json!({"kind": "change", "change": id}),
        Scope::Change { id, complete: true } => {
            json!({"kind": "change", "change": id, "complete": true})
        }
        Scope::Period {
            from,
            to,
            environments,
            repositories,
        } => json!({
            "kind": "period",
            "from": fmt_nanos(*from), "from_unix_nanos": from,
            "to": fmt_nanos(*to), "to_unix_nanos": to,
            "environments": environments, "repositories": repositories,
        }),
        Scope::Control { control, from, to } => json!({
            "kind": "control", "control": control.key(),
            "from": fmt_nanos(*from), "from_unix_nanos": from,
            "to": fmt_nanos(*to), "to_unix_nanos": to,
        }),
    }
}

/// `manifest.json`: everything above, and the digest of every other file.
pub(super) fn manifest<D: AsRef<[u8]>>(
    meta: &Meta,
    entries: u64,
    files: &BTreeMap<String, D>,
) -> Vec<u8> {
    manifest_of(
        meta,
        entries,
        files.iter().map(|(p, b)| {
            let b = b.as_ref();
            (
                p.as_str(),
                b.len() as u64,
                hex::encode(crate::crypto::blake3_256(b)),
            )
        }),
    )
}

/// [`manifest`] of files already hashed: (path, size, lowercase hex
/// BLAKE3), in path order.
pub(super) fn manifest_of<'a>(
    meta: &Meta,
    entries: u64,
    files: impl Iterator<Item = (&'a str, u64, String)>,
) -> Vec<u8> {
    let list: Vec<Value> = files
        .filter(|(p, _, _)| *p != "manifest.json" && *p != "manifest.sig")
        .map(|(p, size, digest)| json!({"path": p, "size": size, "blake3": digest}))
        .collect();
    pretty(&json!({
        "format": FORMAT,
        "origin": meta.origin,
        "scope": scope_json(&meta.scope),
        "checkpoint": {"size": meta.checkpoint_size, "root": hex::encode(meta.checkpoint_root)},
        "as_of": fmt_nanos(meta.as_of),
        "as_of_unix_nanos": meta.as_of,
        "range": meta.range.map(|(s, e)| json!({"start": s, "end": e})),
        "entries": entries,
        "files": list,
    }))
}

/// Which entries, changes and decisions the scope is about.
pub(super) struct View<'a> {
    pub(super) meta: &'a Meta,
    pub(super) folded: &'a Folded,
    /// Entries of the scope itself (not context).
    pub(super) in_scope: BTreeSet<u64>,
    pub(super) changes: Vec<&'a ChangeRec>,
    pub(super) decisions: Vec<&'a DeployRec>,
    pub(super) obligations: Vec<&'a ObligationRec>,
    pub(super) violations: Vec<Violation>,
}

impl<'a> View<'a> {
    pub(super) fn new(folded: &'a Folded, meta: &'a Meta) -> View<'a> {
        let gov = folded.state.gov();
        let (envs, repos): (&[String], &[String]) = match &meta.scope {
            Scope::Period {
                environments,
                repositories,
                ..
            } => (environments, repositories),
            _ => (&[], &[]),
        };
        let env_ok = |e: &str| envs.is_empty() || envs.iter().any(|p| glob_match(p, e));
        let repo_ok = |r: &str| repos.is_empty() || repos.iter().any(|p| glob_match(p, r));
        let in_scope: BTreeSet<u64> = match &meta.scope {
            Scope::Change { id, .. } => match gov.change(id) {
                Some(c) => {
                    let mut s: BTreeSet<u64> = c.revisions.iter().map(|r| r.index).collect();
                    s.extend(c.reviews.iter().map(|r| r.index));
                    s.extend(c.deployments.iter().copied());
                    for d in &c.deployments {
                        if let Some(r) = gov.obligation(*d).and_then(|o| o.review.as_ref()) {
                            s.insert(r.index);
                        }
                    }
                    s
                }
                None => BTreeSet::new(),
            },
            Scope::Period { from, to, .. } | Scope::Control { from, to, .. } => folded
                .info
                .iter()
                .filter(|(_, i)| *from <= i.time && i.time < *to)
                .map(|(k, _)| *k)
                .collect(),
        };
        // The repository patterns keep what one of its repositories matches:
        // those people named (on the request, on the change) and those the
        // log records for its subjects (the ingested commits' and the CI
        // runs'), much as rule selection reads them (docs/policy.md). What names or
        // records none is kept: nothing shows it lies outside the patterns.
        let repos_keep = |named: &[&str], subjects: &mut dyn Iterator<Item = &String>| {
            if repos.is_empty() {
                return true;
            }
            let mut known = false;
            for r in named.iter().copied().filter(|r| !r.is_empty()) {
                if repo_ok(r) {
                    return true;
                }
                known = true;
            }
            for s in subjects {
                let commit = gov.commit(s).map(|c| c.repository.as_str());
                let runs = gov.ci_runs_for(s).map(|r| r.repository.as_str());
                for r in commit.into_iter().chain(runs).filter(|r| !r.is_empty()) {
                    if repo_ok(r) {
                        return true;
                    }
                    known = true;
                }
            }
            !known
        };
        // A deployment the scope's filters keep.
        let filtered = |d: &DeployRec| {
            // The change its decision considered, at the revision it did.
            let considered = d.decision.change.as_ref().and_then(|(id, rev)| {
                let c = gov.change(id)?;
                Some((c, c.revisions.get((*rev as usize).checked_sub(1)?)?))
            });
            let named = considered.map_or("", |(c, _)| c.repository.as_str());
            let revision = considered
                .into_iter()
                .flat_map(|(_, r)| r.commits.iter().chain(&r.digests));
            env_ok(&d.environment)
                && repos_keep(
                    &[d.repository.as_deref().unwrap_or(""), named],
                    &mut d.subjects.iter().chain(revision),
                )
        };
        let decisions: Vec<&DeployRec> = gov
            .deployments()
            .filter(|d| in_scope.contains(&d.index))
            .filter(|d| filtered(d))
            .collect();
        // The changes the decisions in scope considered are in scope too,
        // whatever their current revision targets: a change amended after a
        // deployment in scope, so that it no longer targets a filtered
        // environment, still explains that deployment.
        let considered: BTreeSet<&str> = decisions
            .iter()
            .filter_map(|d| d.decision.change.as_ref().map(|(id, _)| id.as_str()))
            .collect();
        let changes: Vec<&ChangeRec> = gov
            .changes()
            .filter(|c| {
                let touched = c.revisions.iter().any(|r| in_scope.contains(&r.index))
                    || c.reviews.iter().any(|r| in_scope.contains(&r.index))
                    || c.deployments.iter().any(|d| in_scope.contains(d));
                let cur = c.current();
                considered.contains(c.id.as_str())
                    || (touched
                        && repos_keep(
                            &[c.repository.as_str()],
                            &mut cur.commits.iter().chain(&cur.digests),
                        )
                        && (envs.is_empty() || cur.environments.iter().any(|e| env_ok(e))))
            })
            .collect();
        let decided: BTreeSet<u64> = decisions.iter().map(|d| d.index).collect();
        // A period also answers for the break-glass deployments made before
        // it that were still unreviewed when it began and came due in it or
        // later; the range's lead-in carries every one of them (§8.5).
        let came_due = |o: &ObligationRec| match meta.scope {
            Scope::Change { .. } => false,
            Scope::Period { from, .. } | Scope::Control { from, .. } => {
                o.opened_nanos < from
                    && o.due_nanos >= from
                    && o.review.as_ref().is_none_or(|r| r.at_nanos >= from)
                    && gov.deployment(o.deployment_index).is_some_and(filtered)
            }
        };
        let obligations: Vec<&ObligationRec> = gov
            .obligations()
            .filter(|o| {
                decided.contains(&o.deployment_index)
                    || (o
                        .review
                        .as_ref()
                        .is_some_and(|r| in_scope.contains(&r.index))
                        && gov.deployment(o.deployment_index).is_some_and(filtered))
                    || came_due(o)
            })
            .collect();
        let violations = violations(obligations.iter().copied(), meta.as_of);
        View {
            meta,
            folded,
            in_scope,
            changes,
            decisions,
            obligations,
            violations,
        }
    }

    /// The latest decision recorded for a change (any environment); for a
    /// period or control, the latest made before the period's end (the
    /// entry just after the period is carried as its boundary, and must not
    /// speak for it).
    pub(super) fn latest_decision(&self, c: &ChangeRec) -> Option<&'a DeployRec> {
        let end = match self.meta.scope {
            Scope::Period { to, .. } | Scope::Control { to, .. } => to,
            Scope::Change { .. } => i64::MAX,
        };
        c.deployments
            .iter()
            .rev()
            .filter_map(|d| self.folded.state.gov().deployment(*d))
            .find(|d| d.decision.at_nanos < end)
    }

    /// The commits the change's digests were built from that it does not
    /// bind (`State::built_from`).
    pub(super) fn built_from(&self, c: &'a ChangeRec) -> Vec<&'a str> {
        let built = self.folded.state.built_from(c.current());
        built.into_iter().map(|(f, _)| f).collect()
    }

    /// The change's code: the current revision's commits, then
    /// [`View::built_from`].
    pub(super) fn code_commits(&self, c: &'a ChangeRec) -> Vec<&'a str> {
        let cur = c.current();
        let bound = cur.commits.iter().map(String::as_str);
        bound.chain(self.built_from(c)).collect()
    }

    /// Principals who authored, committed or (with a verified signature)
    /// signed an observed commit of the change's code, which are the people
    /// its decisions exclude; and the e-mails and signer identities no
    /// principal claims.
    pub(super) fn authors(&self, c: &'a ChangeRec) -> (BTreeSet<String>, BTreeSet<String>) {
        let state = &self.folded.state;
        let (mut known, mut unknown) = (BTreeSet::new(), BTreeSet::new());
        for sha in self.code_commits(c) {
            let Some(rec) = state.gov().commit(sha) else {
                continue;
            };
            for p in state.commit_people(rec) {
                match p.principal {
                    Some(id) => known.insert(id.to_owned()),
                    None => unknown.insert(p.identity.to_owned()),
                };
            }
        }
        (known, unknown)
    }

    /// Whether the control is met, and in words why.
    pub(super) fn control_outcome(&self, control: Control) -> (bool, String) {
        match control {
            Control::Soc2Cc81 | Control::Iso27001A832 => {
                let open = self
                    .obligations
                    .iter()
                    .filter(|o| {
                        matches!(
                            o.status(self.meta.as_of),
                            crate::state::ObligationStatus::Open
                        )
                    })
                    .count();
                let allowed = self.decisions.iter().filter(|d| d.decision.allow).count();
                let denied = self.decisions.len() - allowed;
                let ok = self.violations.is_empty();
                (
                    ok,
                    format!(
                        "{} change(s) in scope; {allowed} deployment(s) allowed under the policy in force, {denied} denied; {} violation(s); {open} break-glass review(s) still open and not yet due",
                        self.changes.len(),
                        self.violations.len()
                    ),
                )
            }
            Control::Hipaa164312b => (
                true,
                format!(
                    "{} entries, each proven in the hash-chained, Merkle-verifiable log at checkpoint {}{}{}; every signature checked against the key history the bundle carries, folded from genesis",
                    self.folded.info.len(),
                    self.meta.checkpoint_size,
                    match (&self.meta.scope, self.meta.range) {
                        (Scope::Change { .. }, None) if self.meta.heads.is_some() => format!(
                            "; every entry concerning the change is proven carried by the change head the checkpoint signs{}",
                            match self.meta.subjects {
                                Some(_) => ", and every entry concerning its subjects by the subject heads",
                                None => "",
                            }
                        ),
                        (_, None) => String::new(),
                        (Scope::Change { .. }, Some(_)) => {
                            "; every entry from the change's opening to the checkpoint is proven carried by one range proof".to_owned()
                        }
                        _ => match self.meta.unfinished_period() {
                            Some(to) => format!(
                                "; the period is proven complete only up to {}, the log's last entry at the checkpoint (the period runs to {}), by its boundary entry and one range proof",
                                fmt_nanos(self.meta.as_of),
                                fmt_nanos(to)
                            ),
                            None => "; the period is proven complete by its boundary entries and one range proof".to_owned(),
                        },
                    },
                    match self.folded.history_proven_to {
                        Some(i) => format!(
                            "; every identity and policy entry up to entry {i} is carried, as the entries' history counts show"
                        ),
                        None => String::new(),
                    }
                ),
            ),
        }
    }
}

// The rows below serialise to what the `json!` objects they replaced gave
// (serde_json sorts object keys): fields are declared in sorted order, and
// `None` serialises as `null`. Typed rows spare the verifier building and
// freeing a `Value` tree for every change and decision of a bundle.

/// An approval that counted, in `facts/decisions.json`.
#[derive(serde::Serialize)]
struct CountedRow<'a> {
    approver: &'a str,
    index: u64,
    roles: &'a str,
}

/// An approval that did not count, in `facts/decisions.json`.
#[derive(serde::Serialize)]
struct NotCountedRow<'a> {
    approver: &'a str,
    index: u64,
    reason: &'a str,
}

/// An obligation a decision opened, in `facts/decisions.json`.
#[derive(serde::Serialize)]
struct DueRow<'a> {
    description: &'a str,
    due: String,
    not_by: &'a str,
}

/// One element of `facts/decisions.json`.
#[derive(serde::Serialize)]
struct DecisionRow<'a> {
    action: &'a str,
    actor: &'a str,
    break_glass: bool,
    change: Option<&'a str>,
    change_revision: Option<u32>,
    counted: Vec<CountedRow<'a>>,
    environment: &'a str,
    in_scope: bool,
    index: u64,
    justification: &'a str,
    kind: Option<&'a str>,
    namespace: Option<&'a str>,
    not_counted: Vec<NotCountedRow<'a>>,
    obligations: Vec<DueRow<'a>>,
    policy_digest: &'a str,
    policy_version: u64,
    reasons: &'a [String],
    repository: Option<&'a str>,
    rule: Option<&'a str>,
    subjects: &'a BTreeSet<String>,
    time: String,
    verdict: &'static str,
}

fn decision_row(d: &DeployRec, in_scope: bool) -> DecisionRow<'_> {
    let dec = &d.decision;
    DecisionRow {
        action: &d.action,
        actor: &d.actor,
        break_glass: d.break_glass,
        change: dec.change.as_ref().map(|c| c.0.as_str()),
        change_revision: dec.change.as_ref().map(|c| c.1),
        counted: dec
            .counted
            .iter()
            .map(|c| CountedRow {
                approver: &c.approver,
                index: c.index,
                roles: &c.roles,
            })
            .collect(),
        environment: &d.environment,
        in_scope,
        index: d.index,
        justification: &d.justification,
        kind: d.kind.as_deref(),
        namespace: d.namespace.as_deref(),
        not_counted: dec
            .not_counted
            .iter()
            .map(|c| NotCountedRow {
                approver: &c.approver,
                index: c.index,
                reason: &c.reason,
            })
            .collect(),
        obligations: dec
            .obligations
            .iter()
            .map(|o| DueRow {
                description: &o.description,
                due: fmt_nanos(o.due_nanos),
                not_by: &o.not_by,
            })
            .collect(),
        policy_digest: &dec.policy_digest,
        policy_version: dec.policy_version,
        reasons: &dec.reasons,
        repository: d.repository.as_deref(),
        rule: dec.rule.as_deref(),
        subjects: &d.subjects,
        time: fmt_nanos(dec.at_nanos),
        verdict: if dec.allow { "allow" } else { "deny" },
    }
}

/// A revision of a change, in `facts/changes.json`.
#[derive(serde::Serialize)]
struct RevisionRow<'a> {
    by: &'a str,
    commits: &'a BTreeSet<String>,
    digests: &'a BTreeSet<String>,
    environments: &'a BTreeSet<String>,
    index: u64,
    reason: &'a str,
    time: String,
}

/// A commit of a change's current revision, in `facts/changes.json`.
#[derive(serde::Serialize)]
struct CommitRow<'a> {
    author: &'a str,
    committer: &'a str,
    index: u64,
    sha: &'a str,
    signature: &'a str,
    signer: &'a str,
    summary: &'a str,
}

/// A CI run of a change's current subjects, in `facts/changes.json`.
#[derive(serde::Serialize)]
struct CiRow<'a> {
    builder: &'a str,
    commit: &'a str,
    digests: &'a BTreeSet<String>,
    index: u64,
    pipeline: &'a str,
    provider: &'a str,
    run_id: &'a str,
    status: &'a str,
    url: &'a str,
}

/// A review of a change, in `facts/changes.json`.
#[derive(serde::Serialize)]
struct ReviewRow<'a> {
    comment: &'a str,
    current_revision: bool,
    index: u64,
    reviewer: &'a str,
    time: String,
    verdict: &'static str,
}

/// A deployment decision for a change, in `facts/changes.json`.
#[derive(serde::Serialize)]
struct DeploymentRow<'a> {
    break_glass: bool,
    environment: &'a str,
    index: u64,
    rule: Option<&'a str>,
    time: String,
    verdict: &'static str,
}

/// An uncounted approver and why, in a change's segregation-of-duties outcome.
#[derive(serde::Serialize)]
struct WhyNotRow<'a> {
    approver: &'a str,
    reason: &'a str,
}

/// A change's segregation-of-duties outcome; only `outcome` when no
/// deployment was decided.
#[derive(serde::Serialize)]
struct SodRow<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    counted: Option<Vec<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    decided_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    not_counted: Option<Vec<WhyNotRow<'a>>>,
    outcome: &'static str,
}

/// One element of `facts/changes.json`.
#[derive(serde::Serialize)]
struct ChangeRow<'a> {
    authors: BTreeSet<String>,
    built_from: BTreeSet<&'a str>,
    change: &'a str,
    ci: Vec<CiRow<'a>>,
    commits: Vec<CommitRow<'a>>,
    deployments: Vec<DeploymentRow<'a>>,
    repository: &'a str,
    requesters: &'a [String],
    reviews: Vec<ReviewRow<'a>>,
    revision: usize,
    revisions: Vec<RevisionRow<'a>>,
    segregation_of_duties: SodRow<'a>,
    ticket: &'a str,
    title: &'a str,
    unmapped_authors: BTreeSet<String>,
}

fn change_row<'a>(view: &View<'a>, c: &'a ChangeRec) -> ChangeRow<'a> {
    let gov = view.folded.state.gov();
    let (authors, unmapped_authors) = view.authors(c);
    let cur = c.current();
    let current = cur.subjects();
    let code: BTreeSet<&str> = view.code_commits(c).into_iter().collect();
    ChangeRow {
        authors,
        built_from: view.built_from(c).into_iter().collect(),
        change: &c.id,
        ci: current
            .iter()
            .flat_map(|s| gov.ci_runs_for(s))
            .map(|r| r.index)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter_map(|i| gov.ci_run(i))
            .map(|r| CiRow {
                builder: &r.builder,
                commit: &r.commit,
                digests: &r.digests,
                index: r.index,
                pipeline: &r.pipeline,
                provider: &r.provider,
                run_id: &r.run_id,
                status: &r.status,
                url: &r.url,
            })
            .collect(),
        commits: code
            .iter()
            .filter_map(|s| gov.commit(s))
            .map(|k| CommitRow {
                author: &k.author.email,
                committer: &k.committer.email,
                index: k.index,
                sha: &k.sha,
                signature: &k.signature,
                signer: &k.signer_identity,
                summary: &k.summary,
            })
            .collect(),
        deployments: c
            .deployments
            .iter()
            .filter_map(|d| gov.deployment(*d))
            .map(|d| DeploymentRow {
                break_glass: d.break_glass,
                environment: &d.environment,
                index: d.index,
                rule: d.decision.rule.as_deref(),
                time: fmt_nanos(d.decision.at_nanos),
                verdict: if d.decision.allow { "allow" } else { "deny" },
            })
            .collect(),
        repository: &c.repository,
        requesters: &c.requesters,
        reviews: c
            .reviews
            .iter()
            .map(|r| ReviewRow {
                comment: &r.comment,
                current_revision: r.index > cur.index && r.seen == current,
                index: r.index,
                reviewer: &r.reviewer,
                time: fmt_nanos(r.at_nanos),
                verdict: if r.approve { "approve" } else { "reject" },
            })
            .collect(),
        revision: c.revisions.len(),
        revisions: c
            .revisions
            .iter()
            .map(|r| RevisionRow {
                by: &r.by,
                commits: &r.commits,
                digests: &r.digests,
                environments: &r.environments,
                index: r.index,
                reason: &r.reason,
                time: fmt_nanos(r.at_nanos),
            })
            .collect(),
        segregation_of_duties: match view.latest_decision(c) {
            Some(d) => SodRow {
                counted: Some(
                    d.decision
                        .counted
                        .iter()
                        .map(|c| c.approver.as_str())
                        .collect(),
                ),
                decided_at: Some(d.index),
                not_counted: Some(
                    d.decision
                        .not_counted
                        .iter()
                        .map(|c| WhyNotRow {
                            approver: &c.approver,
                            reason: &c.reason,
                        })
                        .collect(),
                ),
                outcome: if d.break_glass && d.decision.allow {
                    "bypassed (break-glass)"
                } else if d.decision.allow {
                    "satisfied"
                } else {
                    "not satisfied"
                },
            },
            None => SodRow {
                counted: None,
                decided_at: None,
                not_counted: None,
                outcome: "no deployment decided",
            },
        },
        ticket: &c.ticket,
        title: &c.title,
        unmapped_authors,
    }
}

fn obligation_json(o: &ObligationRec, as_of: i64) -> Value {
    let r = o.review.as_ref().filter(|r| r.at_nanos <= as_of);
    json!({
        "deployment_index": o.deployment_index,
        "actor": o.actor,
        "environment": o.environment,
        "subjects": o.subjects,
        "justification": o.justification,
        "opened": fmt_nanos(o.opened_nanos),
        "due": fmt_nanos(o.due_nanos),
        "status": o.status(as_of).name(),
        "review": r.map(|r| json!({"index": r.index, "reviewer": r.reviewer, "time": fmt_nanos(r.at_nanos), "justified": r.justified, "comment": r.comment})),
    })
}

/// The derived files of a bundle, and how many violations are in scope.
pub(super) struct Rendered {
    pub(super) files: BTreeMap<String, Vec<u8>>,
    pub(super) violations: usize,
    /// The deployments in scope, for [`decisions_file`].
    pub(super) decided: BTreeSet<u64>,
}

/// `facts/decisions.json`: every deployment `state` holds (the whole fold's,
/// a period's boundary included) with its decision, `in_scope` for those in
/// `decided`.
pub(super) fn decisions_file(state: &State, decided: &BTreeSet<u64>) -> Vec<u8> {
    let decisions: Vec<DecisionRow<'_>> = state
        .gov()
        .deployments()
        .map(|d| decision_row(d, decided.contains(&d.index)))
        .collect();
    pretty(&decisions)
}

/// Renders every derived file of a bundle.
pub(super) fn render(folded: &Folded, meta: &Meta) -> Rendered {
    let view = View::new(folded, meta);
    let mut files = BTreeMap::new();

    /// One row of `facts/entries.json`; fields in sorted order, so the
    /// output is what a sorted JSON object gives.
    #[derive(serde::Serialize)]
    struct EntryRow<'a> {
        event_id: &'a str,
        in_scope: bool,
        index: u64,
        kind: &'static str,
        leaf_hash: String,
        signer: &'a str,
        time: String,
        transport_identity: &'a str,
    }
    let entries_json = || {
        let rows: Vec<EntryRow<'_>> = folded
            .info
            .iter()
            .map(|(i, inf)| EntryRow {
                event_id: &inf.event.event_id,
                in_scope: view.in_scope.contains(i),
                index: *i,
                kind: inf.event.body.kind_name(),
                leaf_hash: hex::encode(inf.leaf),
                signer: inf.event.signer.as_str(),
                time: fmt_nanos(inf.time),
                transport_identity: &inf.identity,
            })
            .collect();
        let mut out = serde_json::to_vec_pretty(&rows).expect("rows serialise");
        out.push(b'\n');
        out
    };
    // One row per carried entry: as much work as the other files together
    // in a large bundle, done on another core (the signature checks that
    // kept it busy are over by now).
    std::thread::scope(|scope| {
        let entries = scope.spawn(entries_json);
        render_rest(&view, meta, &mut files);
        let entries = entries
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e));
        files.insert("facts/entries.json".into(), entries);
    });
    Rendered {
        files,
        violations: view.violations.len(),
        decided: view.decisions.iter().map(|d| d.index).collect(),
    }
}

/// Every derived file but `facts/entries.json` and `facts/decisions.json`.
fn render_rest(view: &View<'_>, meta: &Meta, files: &mut BTreeMap<String, Vec<u8>>) {
    let folded = view.folded;
    let st = &folded.state;
    let gov = st.gov();
    // `facts/decisions.json` lists every carried deployment, a period's
    // boundary too, so it is written from the whole fold ([`decisions_file`]).
    let changes: Vec<ChangeRow<'_>> = view.changes.iter().map(|c| change_row(view, c)).collect();
    files.insert("facts/changes.json".into(), pretty(&changes));

    files.insert(
        "facts/obligations.json".into(),
        pretty(&json!({
            "as_of": fmt_nanos(meta.as_of),
            "obligations": view.obligations.iter().map(|o| obligation_json(o, meta.as_of)).collect::<Vec<_>>(),
            "violations": view.violations.iter().map(|v| json!({
                "kind": v.kind, "index": v.index, "description": v.description,
                "time": fmt_nanos(v.at_nanos)})).collect::<Vec<_>>(),
        })),
    );

    let versions: Vec<Value> = gov
        .policy_versions()
        .iter()
        .map(|v| {
            let proposal = gov.proposals().find(|p| p.id == v.proposal_id);
            json!({
                "version": v.version, "digest": v.digest, "activated_at": v.activated_at,
                "file": format!("policies/v{}.toml", v.version),
                "proposal": if v.proposal_id.is_empty() { Value::Null } else { json!({
                    "id": v.proposal_id,
                    "proposer": proposal.map(|p| p.proposer.clone()),
                    "proposed_at": proposal.map(|p| p.index),
                    "approvals": proposal.map(|p| p.approvals.iter().map(|(who, i, _)| json!({"approver": who, "index": i})).collect::<Vec<_>>()),
                })},
            })
        })
        .collect();
    for v in gov.policy_versions() {
        files.insert(
            format!("policies/v{}.toml", v.version),
            v.text.clone().into_bytes(),
        );
    }
    files.insert("facts/policies.json".into(), pretty(&json!(versions)));

    let principals: Vec<Value> = st
        .principals()
        .map(|p| {
            json!({
                "id": p.id.as_str(), "kind": p.kind.name(), "display_name": p.display_name,
                "roles": p.roles, "emails": p.emails, "registered_at": p.registered_at,
                "keys": p.keys.iter().map(|k| json!({
                    "keyid": crate::crypto::KeyId::of(&k.key).to_string(),
                    "public_key": hex::encode(k.key.as_bytes()),
                    "added_at": k.added_at, "revoked_at": k.revoked_at})).collect::<Vec<_>>(),
            })
        })
        .collect();
    files.insert("facts/principals.json".into(), pretty(&json!(principals)));

    files.insert(
        "oscal/assessment-results.json".into(),
        pretty(&super::oscal::assessment_results(view)),
    );
    files.insert("report.html".into(), super::report::html(view).into_bytes());
}
