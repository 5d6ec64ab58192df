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
use crate::event::Event;
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
}

fn at(index: u64, reason: impl Into<String>) -> Failure {
    Failure {
        index: Some(index),
        reason: reason.into(),
    }
}

/// Folds `entries` (increasing indices, starting with genesis) into a sparse
/// state, applying every rule the log applied when they were appended, then
/// runs `then` on the result while the other cores finish checking
/// signatures (so rendering overlaps verification).
pub(super) fn fold_then<R>(
    entries: &[(u64, Vec<u8>)],
    sigs: Signatures,
    then: impl FnOnce(&Folded) -> R,
) -> Result<(Folded, R), Failure> {
    let scan = |sink: &mut dyn FnMut(SigJob)| -> Result<(Folded, R), Failure> {
        let mut state = State::sparse();
        let mut info = BTreeMap::new();
        let mut event_ids: std::collections::HashMap<String, u64> = Default::default();
        if entries.first().map(|e| e.0) != Some(0) {
            return Err(Failure {
                index: None,
                reason: "the bundle does not carry entry 0 (genesis), the trust root".into(),
            });
        }
        for (i, bytes) in entries {
            let i = *i;
            let e = Entry::decode(bytes).map_err(|e| at(i, format!("entry bytes: {e}")))?;
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
            let keys = state
                .signer_keys(&event)
                .map_err(|e| at(i, format!("signature: {e}")))?;
            let key = keys.preferred(&e.envelope).ok_or_else(|| {
                at(
                    i,
                    format!("signer {:?} has no active key", event.signer.as_str()),
                )
            })?;
            state
                .apply(i, e.integrated_time_nanos, &event, &key)
                .map_err(|err| at(i, format!("state rules: {err}")))?;
            if sigs == Signatures::Check {
                sink(SigJob {
                    index: i,
                    keys,
                    envelope: e.envelope.clone(),
                });
            }
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
        let folded = Folded { state, info };
        let r = then(&folded);
        Ok((folded, r))
    };
    let (folded, bad) = with_signature_threads(scan);
    match (folded, bad) {
        (Err(f), Some((i, why))) if f.index.is_none_or(|fi| i < fi) => {
            Err(at(i, format!("signature: {why}")))
        }
        (Err(f), _) => Err(f),
        (Ok(_), Some((i, why))) => Err(at(i, format!("signature: {why}"))),
        (Ok(f), None) => Ok(f),
    }
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
}

fn pretty(v: &Value) -> Vec<u8> {
    let mut s = serde_json::to_vec_pretty(v).expect("JSON values serialise");
    s.push(b'\n');
    s
}

pub(super) fn scope_json(scope: &Scope) -> Value {
    match scope {
        Scope::Change(id) => json!({"kind": "change", "change": id}),
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
pub(super) fn manifest(meta: &Meta, entries: u64, files: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let list: Vec<Value> = files
        .iter()
        .filter(|(p, _)| p.as_str() != "manifest.json" && p.as_str() != "manifest.sig")
        .map(|(p, b)| {
            json!({"path": p, "size": b.len(), "blake3": hex::encode(crate::crypto::blake3_256(b))})
        })
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
            Scope::Change(id) => match gov.change(id) {
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
        let changes: Vec<&ChangeRec> = gov
            .changes()
            .filter(|c| {
                let touched = c.revisions.iter().any(|r| in_scope.contains(&r.index))
                    || c.reviews.iter().any(|r| in_scope.contains(&r.index))
                    || c.deployments.iter().any(|d| in_scope.contains(d));
                touched
                    && repo_ok(&c.repository)
                    && (envs.is_empty() || c.current().environments.iter().any(|e| env_ok(e)))
            })
            .collect();
        let decisions: Vec<&DeployRec> = gov
            .deployments()
            .filter(|d| in_scope.contains(&d.index))
            .filter(|d| env_ok(&d.environment))
            .filter(|d| {
                let repo = d.repository.clone().or_else(|| {
                    d.decision
                        .change
                        .as_ref()
                        .and_then(|(c, _)| gov.change(c))
                        .map(|c| c.repository.clone())
                });
                repos.is_empty() || repo.is_some_and(|r| repo_ok(&r))
            })
            .collect();
        let decided: BTreeSet<u64> = decisions.iter().map(|d| d.index).collect();
        let obligations: Vec<&ObligationRec> = gov
            .obligations()
            .filter(|o| {
                decided.contains(&o.deployment_index)
                    || o.review
                        .as_ref()
                        .is_some_and(|r| in_scope.contains(&r.index))
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

    /// The latest decision recorded for a change (any environment).
    pub(super) fn latest_decision(&self, c: &ChangeRec) -> Option<&'a DeployRec> {
        c.deployments
            .iter()
            .rev()
            .find_map(|d| self.folded.state.gov().deployment(*d))
    }

    /// Principals who authored or committed the change's current commits,
    /// and e-mails no principal claims.
    pub(super) fn authors(&self, c: &ChangeRec) -> (BTreeSet<String>, BTreeSet<String>) {
        let gov = self.folded.state.gov();
        let (mut known, mut unknown) = (BTreeSet::new(), BTreeSet::new());
        for sha in &c.current().commits {
            if let Some(rec) = gov.commit(sha) {
                for p in [&rec.author, &rec.committer] {
                    match self
                        .folded
                        .state
                        .principals()
                        .find(|q| q.emails.contains(&p.email))
                    {
                        Some(q) => known.insert(q.id.to_string()),
                        None => unknown.insert(p.email.clone()),
                    };
                }
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
            Control::Hipaa164312b => {
                let period = self.meta.range.is_some();
                (
                    true,
                    format!(
                        "{} entries, each proven in the hash-chained, Merkle-verifiable log at checkpoint {}{}; every signature checked against the key history from genesis",
                        self.folded.info.len(),
                        self.meta.checkpoint_size,
                        if period {
                            "; the period is proven complete by its boundary entries and one range proof"
                        } else {
                            ""
                        }
                    ),
                )
            }
        }
    }
}

fn decision_json(d: &DeployRec, in_scope: bool) -> Value {
    let dec = &d.decision;
    json!({
        "index": d.index,
        "in_scope": in_scope,
        "time": fmt_nanos(dec.at_nanos),
        "actor": d.actor,
        "action": d.action,
        "environment": d.environment,
        "repository": d.repository,
        "kind": d.kind,
        "namespace": d.namespace,
        "subjects": d.subjects,
        "break_glass": d.break_glass,
        "justification": d.justification,
        "verdict": if dec.allow { "allow" } else { "deny" },
        "rule": dec.rule,
        "policy_version": dec.policy_version,
        "policy_digest": dec.policy_digest,
        "change": dec.change.as_ref().map(|c| c.0.clone()),
        "change_revision": dec.change.as_ref().map(|c| c.1),
        "reasons": dec.reasons,
        "counted": dec.counted.iter().map(|c| json!({"approver": c.approver, "roles": c.roles, "index": c.index})).collect::<Vec<_>>(),
        "not_counted": dec.not_counted.iter().map(|c| json!({"approver": c.approver, "reason": c.reason, "index": c.index})).collect::<Vec<_>>(),
        "obligations": dec.obligations.iter().map(|o| json!({"description": o.description, "due": fmt_nanos(o.due_nanos), "not_by": o.not_by})).collect::<Vec<_>>(),
    })
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
}

/// Renders every derived file of a bundle.
pub(super) fn render(folded: &Folded, meta: &Meta) -> Rendered {
    let view = View::new(folded, meta);
    let st = &folded.state;
    let gov = st.gov();
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
    let mut entries_json = serde_json::to_vec_pretty(&rows).expect("rows serialise");
    entries_json.push(b'\n');
    files.insert("facts/entries.json".into(), entries_json);

    let decided: BTreeSet<u64> = view.decisions.iter().map(|d| d.index).collect();
    let decisions: Vec<Value> = gov
        .deployments()
        .map(|d| decision_json(d, decided.contains(&d.index)))
        .collect();
    files.insert("facts/decisions.json".into(), pretty(&json!(decisions)));

    let changes: Vec<Value> = view
        .changes
        .iter()
        .map(|c| {
            let (authors, unmapped) = view.authors(c);
            let cur = c.current();
            let latest = view.latest_decision(c);
            json!({
                "change": c.id, "title": c.title, "repository": c.repository, "ticket": c.ticket,
                "requesters": c.requesters, "revision": c.revisions.len(),
                "revisions": c.revisions.iter().map(|r| json!({
                    "index": r.index, "time": fmt_nanos(r.at_nanos), "by": r.by,
                    "commits": r.commits, "digests": r.digests, "environments": r.environments,
                    "reason": r.reason})).collect::<Vec<_>>(),
                "authors": authors, "unmapped_authors": unmapped,
                "commits": cur.commits.iter().filter_map(|s| gov.commit(s)).map(|k| json!({
                    "sha": k.sha, "index": k.index, "author": k.author.email,
                    "committer": k.committer.email, "signature": k.signature,
                    "signer": k.signer_identity, "summary": k.summary})).collect::<Vec<_>>(),
                "ci": cur.subjects().iter().flat_map(|s| gov.ci_runs_for(s)).map(|r| r.index)
                    .collect::<BTreeSet<_>>().into_iter().filter_map(|i| gov.ci_run(i)).map(|r| json!({
                    "index": r.index, "run_id": r.run_id, "status": r.status, "builder": r.builder,
                    "provider": r.provider, "pipeline": r.pipeline, "url": r.url,
                    "commit": r.commit, "digests": r.digests})).collect::<Vec<_>>(),
                "reviews": c.reviews.iter().map(|r| json!({
                    "index": r.index, "reviewer": r.reviewer, "time": fmt_nanos(r.at_nanos),
                    "verdict": if r.approve { "approve" } else { "reject" },
                    "current_revision": r.seen == cur.subjects(),
                    "comment": r.comment})).collect::<Vec<_>>(),
                "deployments": c.deployments.iter().filter_map(|d| gov.deployment(*d)).map(|d| json!({
                    "index": d.index, "environment": d.environment, "time": fmt_nanos(d.decision.at_nanos),
                    "verdict": if d.decision.allow { "allow" } else { "deny" },
                    "rule": d.decision.rule, "break_glass": d.break_glass})).collect::<Vec<_>>(),
                "segregation_of_duties": match latest {
                    Some(d) => json!({
                        "decided_at": d.index,
                        "outcome": if d.break_glass && d.decision.allow {
                            "bypassed (break-glass)"
                        } else if d.decision.allow {
                            "satisfied"
                        } else {
                            "not satisfied"
                        },
                        "counted": d.decision.counted.iter().map(|c| c.approver.clone()).collect::<Vec<_>>(),
                        "not_counted": d.decision.not_counted.iter().map(|c| json!({"approver": c.approver, "reason": c.reason})).collect::<Vec<_>>(),
                    }),
                    None => json!({"outcome": "no deployment decided"}),
                },
            })
        })
        .collect();
    files.insert("facts/changes.json".into(), pretty(&json!(changes)));

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
                    "approvals": proposal.map(|p| p.approvals.iter().map(|(who, i)| json!({"approver": who, "index": i})).collect::<Vec<_>>()),
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
        pretty(&super::oscal::assessment_results(&view)),
    );
    files.insert(
        "report.html".into(),
        super::report::html(&view).into_bytes(),
    );
    Rendered {
        files,
        violations: view.violations.len(),
    }
}
