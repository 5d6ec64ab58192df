//! Wire ⇄ domain conversions. Every refusal names the field and the reason.

use std::collections::BTreeSet;

use prost::Message as _;

use super::pb;
use crate::crypto;
use crate::event::{Body, Event};
use crate::event::{
    BreakGlassReview, ChangeAmendment, ChangeOpening, ChangeReview, ChangedPaths, CiRun, CiStatus,
    CommitObservation, CommitSignature, DeployRequest, Genesis, PolicyProposal, PrincipalId,
    PrincipalKind, PrincipalSpec, PrincipalUpdate, RecordId, SignatureFormat, SignatureVerdict,
};
use crate::ledger::{Envelope, EnvelopeSignature};

/// An event payload that is not a well-formed `docket.v1.Event`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {reason}")]
pub struct InvalidEvent {
    pub field: String,
    pub reason: String,
}

fn bad(field: &str, reason: impl Into<String>) -> InvalidEvent {
    InvalidEvent {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

fn text(field: &str, s: String, max: usize, allow_empty: bool) -> Result<String, InvalidEvent> {
    if !allow_empty && s.is_empty() {
        return Err(bad(field, "must not be empty"));
    }
    if s.len() > max {
        return Err(bad(
            field,
            format!("is {} bytes; at most {max} allowed", s.len()),
        ));
    }
    if let Some((at, c)) = s
        .char_indices()
        .find(|(_, c)| c.is_control() && *c != '\n' && *c != '\t')
    {
        let what = match c {
            '\r' => " (a carriage return: use LF line endings)".to_owned(),
            _ => String::new(),
        };
        return Err(bad(
            field,
            format!(
                "contains the control character U+{:04X} at byte {at}{what}; only newline and tab are allowed",
                u32::from(c)
            ),
        ));
    }
    Ok(s)
}

fn key(field: &str, raw: &[u8]) -> Result<ed25519_dalek::VerifyingKey, InvalidEvent> {
    crypto::parse_public_key(raw).map_err(|e| bad(field, e.to_string()))
}

fn principal_id(field: &str, s: &str) -> Result<PrincipalId, InvalidEvent> {
    PrincipalId::parse(s).map_err(|e| bad(field, e.to_string()))
}

fn record_id(field: &str, s: &str) -> Result<RecordId, InvalidEvent> {
    RecordId::parse(s).map_err(|e| bad(field, e))
}

/// Largest raw commit object.
pub const MAX_COMMIT_BYTES: usize = 256 << 10;

fn policy_text(field: &str, text: String) -> Result<String, InvalidEvent> {
    let text = self::text(field, text, crate::policy::MAX_POLICY_BYTES, false)?;
    crate::policy::Policy::parse(&text).map_err(|e| bad(field, e.to_string()))?;
    Ok(text)
}

fn subjects<'a>(
    field: &str,
    items: impl IntoIterator<Item = &'a String>,
    max: usize,
) -> Result<BTreeSet<String>, InvalidEvent> {
    let mut out = BTreeSet::new();
    for (i, s) in items.into_iter().enumerate() {
        if i >= max {
            return Err(bad(field, format!("at most {max} entries")));
        }
        crate::event::check_subject(s).map_err(|e| bad(&format!("{field}[{i}]"), e))?;
        out.insert(s.clone());
    }
    Ok(out)
}

fn commit_shas(field: &str, items: &[String]) -> Result<BTreeSet<String>, InvalidEvent> {
    for (i, s) in items.iter().enumerate() {
        if !crate::event::git::is_object_id(s) {
            return Err(bad(
                &format!("{field}[{i}]"),
                format!("{s:?} is not a commit SHA (40 or 64 lowercase hex digits)"),
            ));
        }
    }
    subjects(field, items, 256)
}

fn digests(field: &str, items: &[String]) -> Result<BTreeSet<String>, InvalidEvent> {
    for (i, s) in items.iter().enumerate() {
        if !crate::event::is_digest(s) {
            return Err(bad(
                &format!("{field}[{i}]"),
                format!("{s:?} is not an artifact digest (sha256: and 64 lowercase hex digits)"),
            ));
        }
    }
    subjects(field, items, 256)
}

/// An environment, repository, kind or namespace name: 1..=256 bytes with
/// no whitespace or control characters.
fn name(field: &str, s: String) -> Result<String, InvalidEvent> {
    let s = text(field, s, 256, false)?;
    if s.chars().any(char::is_whitespace) {
        return Err(bad(field, format!("{s:?} contains whitespace")));
    }
    Ok(s)
}

fn optional_name(field: &str, s: String) -> Result<Option<String>, InvalidEvent> {
    if s.is_empty() {
        Ok(None)
    } else {
        name(field, s).map(Some)
    }
}

fn environments(
    field: &str,
    items: Vec<String>,
    allow_empty: bool,
) -> Result<BTreeSet<String>, InvalidEvent> {
    if items.is_empty() && !allow_empty {
        return Err(bad(field, "name at least one environment"));
    }
    if items.len() > 32 {
        return Err(bad(field, "at most 32 environments"));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, e)| name(&format!("{field}[{i}]"), e))
        .collect()
}

fn emails(field: &str, items: Vec<String>) -> Result<BTreeSet<String>, InvalidEvent> {
    if items.len() > 16 {
        return Err(bad(field, "at most 16 e-mail addresses"));
    }
    let mut out = BTreeSet::new();
    for (i, e) in items.into_iter().enumerate() {
        let f = format!("{field}[{i}]");
        let e = text(&f, e, 254, false)?;
        let ok = e
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty())
            && !e.chars().any(|c| c.is_whitespace() || c == '<' || c == '>');
        if !ok {
            return Err(bad(&f, format!("{e:?} is not an e-mail address")));
        }
        if e.chars().any(|c| c.is_uppercase()) {
            return Err(bad(&f, format!("{e:?} must be lowercase")));
        }
        out.insert(e);
    }
    Ok(out)
}

fn roles(field: &str, items: Vec<String>) -> Result<BTreeSet<String>, InvalidEvent> {
    if items.len() > 64 {
        return Err(bad(field, "at most 64 roles"));
    }
    let mut out = BTreeSet::new();
    for r in items {
        if !crate::event::valid_role(&r) {
            return Err(bad(
                field,
                format!("role {r:?} must be 1..=64 of a-z 0-9 - _"),
            ));
        }
        out.insert(r);
    }
    Ok(out)
}

fn commit_observed(c: pb::CommitObserved) -> Result<CommitObservation, InvalidEvent> {
    let f = "commit_observed";
    let repository = name(&format!("{f}.repository"), c.repository)?;
    if !crate::event::git::is_object_id(&c.sha) {
        return Err(bad(
            &format!("{f}.sha"),
            format!(
                "{:?} is not a commit SHA (40 or 64 lowercase hex digits)",
                c.sha
            ),
        ));
    }
    if c.raw_commit.len() > MAX_COMMIT_BYTES {
        return Err(bad(
            &format!("{f}.raw_commit"),
            format!(
                "is {} bytes; at most {MAX_COMMIT_BYTES}",
                c.raw_commit.len()
            ),
        ));
    }
    let id = crate::event::git::object_id(&c.raw_commit, c.sha.len());
    if id.as_deref() != Some(c.sha.as_str()) {
        return Err(bad(
            &format!("{f}.raw_commit"),
            format!("hashes to commit {}, not {}", id.unwrap_or_default(), c.sha),
        ));
    }
    let commit = crate::event::git::parse_commit(&c.raw_commit)
        .map_err(|e| bad(&format!("{f}.raw_commit"), e.to_string()))?;
    let cp = c.changed_paths.unwrap_or_default();
    if cp.paths.len() > 100 {
        return Err(bad(
            &format!("{f}.changed_paths.paths"),
            "at most 100 paths",
        ));
    }
    let paths = cp
        .paths
        .into_iter()
        .enumerate()
        .map(|(i, p)| text(&format!("{f}.changed_paths.paths[{i}]"), p, 4096, false))
        .collect::<Result<Vec<_>, _>>()?;
    let sig = c.signature.ok_or_else(|| {
        bad(
            &format!("{f}.signature"),
            "must be set (the verdict on the commit's signature)",
        )
    })?;
    let format = match pb::SignatureFormat::try_from(sig.format) {
        Ok(pb::SignatureFormat::None) => SignatureFormat::None,
        Ok(pb::SignatureFormat::Ssh) => SignatureFormat::Ssh,
        Ok(pb::SignatureFormat::Openpgp) => SignatureFormat::OpenPgp,
        Ok(pb::SignatureFormat::X509) => SignatureFormat::X509,
        Ok(pb::SignatureFormat::Unknown) => SignatureFormat::Unknown,
        _ => return Err(bad(&format!("{f}.signature.format"), "must be set")),
    };
    let verdict = match pb::SignatureVerdict::try_from(sig.verdict) {
        Ok(pb::SignatureVerdict::Unsigned) => SignatureVerdict::Unsigned,
        Ok(pb::SignatureVerdict::Verified) => SignatureVerdict::Verified,
        Ok(pb::SignatureVerdict::Bad) => SignatureVerdict::Bad,
        Ok(pb::SignatureVerdict::UntrustedKey) => SignatureVerdict::UntrustedKey,
        Ok(pb::SignatureVerdict::Unverifiable) => SignatureVerdict::Unverifiable,
        _ => return Err(bad(&format!("{f}.signature.verdict"), "must be set")),
    };
    // The verdict must agree with what the object shows.
    let signed = commit.signature.is_some();
    if signed == (verdict == SignatureVerdict::Unsigned)
        || signed == (format == SignatureFormat::None)
    {
        return Err(bad(
            &format!("{f}.signature"),
            if signed {
                "the commit object carries a signature, but the verdict says unsigned"
            } else {
                "the commit object carries no signature, but the verdict says it is signed"
            },
        ));
    }
    let signer_key = sig.signer_key;
    if !signer_key.is_empty() {
        let field = format!("{f}.signature.signer_key");
        if format != SignatureFormat::OpenPgp
            || !matches!(verdict, SignatureVerdict::Verified | SignatureVerdict::Bad)
        {
            return Err(bad(
                &field,
                "only a verified or bad OpenPGP verdict carries the signer's certificate",
            ));
        }
        if signer_key.len() > crate::ingest::openpgp::MAX_CERT_BYTES {
            return Err(bad(
                &field,
                format!(
                    "{} bytes; at most {} are allowed",
                    signer_key.len(),
                    crate::ingest::openpgp::MAX_CERT_BYTES
                ),
            ));
        }
    }
    Ok(CommitObservation {
        repository,
        sha: c.sha,
        raw: c.raw_commit,
        commit,
        changed: ChangedPaths {
            added: cp.added,
            modified: cp.modified,
            deleted: cp.deleted,
            paths,
            truncated: cp.truncated,
        },
        signature: CommitSignature {
            format,
            verdict,
            signer_identity: text(
                &format!("{f}.signature.signer_identity"),
                sig.signer_identity,
                256,
                true,
            )?,
            key_fingerprint: text(
                &format!("{f}.signature.key_fingerprint"),
                sig.key_fingerprint,
                256,
                true,
            )?,
            detail: text(&format!("{f}.signature.detail"), sig.detail, 1024, true)?,
            signer_key,
        },
    })
}

/// Decodes and validates the DSSE payload of a Docket event.
pub fn decode_event(payload: &[u8]) -> Result<Event, InvalidEvent> {
    let ev = pb::Event::decode(payload)
        .map_err(|e| bad("payload", format!("not a docket.v1.Event protobuf: {e}")))?;
    let pb::Event {
        event_id,
        claimed_time_unix_nanos,
        signer,
        body,
    } = ev;
    let event_id = text("event_id", event_id, 256, false)?;
    if event_id.contains(['\n', '\t']) {
        return Err(bad("event_id", "contains control characters"));
    }
    if claimed_time_unix_nanos <= 0 {
        return Err(bad(
            "claimed_time_unix_nanos",
            "must be a positive Unix time in nanoseconds",
        ));
    }
    let signer = principal_id("signer", &signer)?;
    let body = match body.ok_or_else(|| bad("body", "exactly one event body must be set"))? {
        pb::event::Body::Genesis(g) => {
            let origin = text("genesis.origin", g.origin, 256, false)?;
            crypto::check_key_name(&origin).map_err(|r| bad("genesis.origin", r))?;
            let log_key = key("genesis.log_public_key", &g.log_public_key)?;
            let administrators = g
                .administrators
                .into_iter()
                .enumerate()
                .map(|(i, p)| principal(&format!("genesis.administrators[{i}]"), p))
                .collect::<Result<Vec<_>, _>>()?;
            if administrators.is_empty() {
                return Err(bad(
                    "genesis.administrators",
                    "must name at least one administrator",
                ));
            }
            let policy = if g.policy.is_empty() {
                None
            } else {
                Some(policy_text("genesis.policy", g.policy)?)
            };
            Body::Genesis(Genesis {
                origin,
                log_key,
                administrators,
                policy,
            })
        }
        pb::event::Body::PrincipalRegistered(r) => {
            let p = r
                .principal
                .ok_or_else(|| bad("principal_registered.principal", "must be set"))?;
            Body::PrincipalRegistered(principal("principal_registered.principal", p)?)
        }
        pb::event::Body::KeyRotated(r) => Body::KeyRotated {
            principal: principal_id("key_rotated.principal_id", &r.principal_id)?,
            new_key: key("key_rotated.new_public_key", &r.new_public_key)?,
            old_key: if r.old_public_key.is_empty() {
                None
            } else {
                Some(key("key_rotated.old_public_key", &r.old_public_key)?)
            },
        },
        pb::event::Body::KeyRevoked(r) => Body::KeyRevoked {
            principal: principal_id("key_revoked.principal_id", &r.principal_id)?,
            key: key("key_revoked.public_key", &r.public_key)?,
            reason: text("key_revoked.reason", r.reason, 1024, true)?,
        },
        pb::event::Body::Annotation(a) => {
            if a.attributes.len() > 64 {
                return Err(bad("annotation.attributes", "at most 64 attributes"));
            }
            let mut attributes = std::collections::BTreeMap::new();
            for (k, v) in a.attributes {
                let k = text("annotation.attributes key", k, 128, false)?;
                let v = text(&format!("annotation.attributes[{k}]"), v, 4096, true)?;
                attributes.insert(k, v);
            }
            Body::Annotation {
                subject: text("annotation.subject", a.subject, 1024, false)?,
                kind: text("annotation.kind", a.kind, 128, true)?,
                text: text("annotation.text", a.text, 16384, true)?,
                attributes,
            }
        }
        pb::event::Body::PrincipalUpdated(u) => {
            let f = "principal_updated";
            let update = PrincipalUpdate {
                principal: principal_id(&format!("{f}.principal_id"), &u.principal_id)?,
                grant_roles: roles(&format!("{f}.grant_roles"), u.grant_roles)?,
                revoke_roles: roles(&format!("{f}.revoke_roles"), u.revoke_roles)?,
                add_emails: emails(&format!("{f}.add_emails"), u.add_emails)?,
                remove_emails: emails(&format!("{f}.remove_emails"), u.remove_emails)?,
                reason: text(&format!("{f}.reason"), u.reason, 1024, true)?,
            };
            if update.grant_roles.is_empty()
                && update.revoke_roles.is_empty()
                && update.add_emails.is_empty()
                && update.remove_emails.is_empty()
            {
                return Err(bad(
                    f,
                    "changes nothing: grant or revoke a role, or add or remove an e-mail",
                ));
            }
            if let Some(r) = update.grant_roles.intersection(&update.revoke_roles).next() {
                return Err(bad(f, format!("role {r:?} is both granted and revoked")));
            }
            if let Some(e) = update.add_emails.intersection(&update.remove_emails).next() {
                return Err(bad(f, format!("e-mail {e:?} is both added and removed")));
            }
            Body::PrincipalUpdated(update)
        }
        pb::event::Body::CommitObserved(c) => Body::CommitObserved(Box::new(commit_observed(c)?)),
        pb::event::Body::CiRunReported(r) => {
            let f = "ci_run_reported";
            if !crate::event::git::is_object_id(&r.commit) {
                return Err(bad(
                    &format!("{f}.commit"),
                    format!(
                        "{:?} is not a commit SHA (40 or 64 lowercase hex digits)",
                        r.commit
                    ),
                ));
            }
            let status = match pb::CiStatus::try_from(r.status) {
                Ok(pb::CiStatus::Passed) => CiStatus::Passed,
                Ok(pb::CiStatus::Failed) => CiStatus::Failed,
                Ok(pb::CiStatus::Canceled) => CiStatus::Canceled,
                _ => {
                    return Err(bad(
                        &format!("{f}.status"),
                        "must be passed, failed or canceled",
                    ));
                }
            };
            Body::CiRunReported(CiRun {
                repository: name(&format!("{f}.repository"), r.repository)?,
                commit: r.commit,
                artifact_digests: digests(&format!("{f}.artifact_digests"), &r.artifact_digests)?,
                status,
                provider: text(&format!("{f}.provider"), r.provider, 64, true)?,
                pipeline: text(&format!("{f}.pipeline"), r.pipeline, 256, true)?,
                run_id: text(&format!("{f}.run_id"), r.run_id, 128, true)?,
                url: text(&format!("{f}.url"), r.url, 2048, true)?,
                git_ref: text(&format!("{f}.ref"), r.r#ref, 256, true)?,
            })
        }
        pb::event::Body::ChangeOpened(c) => {
            let f = "change_opened";
            let commits = commit_shas(&format!("{f}.commits"), &c.commits)?;
            let artifact_digests = digests(&format!("{f}.artifact_digests"), &c.artifact_digests)?;
            if commits.is_empty() && artifact_digests.is_empty() {
                return Err(bad(f, "bind at least one commit or artifact digest"));
            }
            Body::ChangeOpened(ChangeOpening {
                change_id: record_id(&format!("{f}.change_id"), &c.change_id)?,
                title: text(&format!("{f}.title"), c.title, 512, true)?,
                repository: text(&format!("{f}.repository"), c.repository, 256, true)?,
                commits,
                artifact_digests,
                environments: environments(&format!("{f}.environments"), c.environments, false)?,
                ticket: text(&format!("{f}.ticket"), c.ticket, 256, true)?,
                description: text(&format!("{f}.description"), c.description, 16384, true)?,
            })
        }
        pb::event::Body::ChangeAmended(c) => {
            let f = "change_amended";
            let commits = commit_shas(&format!("{f}.commits"), &c.commits)?;
            let artifact_digests = digests(&format!("{f}.artifact_digests"), &c.artifact_digests)?;
            if commits.is_empty() && artifact_digests.is_empty() {
                return Err(bad(f, "bind at least one commit or artifact digest"));
            }
            Body::ChangeAmended(ChangeAmendment {
                change_id: record_id(&format!("{f}.change_id"), &c.change_id)?,
                commits,
                artifact_digests,
                environments: environments(&format!("{f}.environments"), c.environments, true)?,
                reason: text(&format!("{f}.reason"), c.reason, 4096, true)?,
            })
        }
        pb::event::Body::ChangeReviewed(r) => {
            let f = "change_reviewed";
            let approve = match pb::ReviewVerdict::try_from(r.verdict) {
                Ok(pb::ReviewVerdict::Approve) => true,
                Ok(pb::ReviewVerdict::Reject) => false,
                _ => return Err(bad(&format!("{f}.verdict"), "must be approve or reject")),
            };
            let seen_subjects = subjects(&format!("{f}.seen_subjects"), &r.seen_subjects, 512)?;
            if seen_subjects.is_empty() {
                return Err(bad(
                    &format!("{f}.seen_subjects"),
                    "name every commit and digest of the revision reviewed",
                ));
            }
            Body::ChangeReviewed(ChangeReview {
                change_id: record_id(&format!("{f}.change_id"), &r.change_id)?,
                seen_subjects,
                approve,
                comment: text(&format!("{f}.comment"), r.comment, 4096, true)?,
                revision: (r.revision != 0).then_some(r.revision),
            })
        }
        pb::event::Body::DeployRequested(d) => {
            let f = "deploy_requested";
            let subjects = subjects(&format!("{f}.subjects"), &d.subjects, 64)?;
            if subjects.is_empty() {
                return Err(bad(
                    &format!("{f}.subjects"),
                    "name the artifact digests or commits being deployed",
                ));
            }
            let justification = text(&format!("{f}.justification"), d.justification, 4096, true)?;
            if d.break_glass && justification.trim().is_empty() {
                return Err(bad(
                    &format!("{f}.justification"),
                    "break-glass needs a justification",
                ));
            }
            Body::DeployRequested(DeployRequest {
                action: if d.action.is_empty() {
                    "deploy".into()
                } else {
                    name(&format!("{f}.action"), d.action)?
                },
                environment: name(&format!("{f}.environment"), d.environment)?,
                repository: optional_name(&format!("{f}.repository"), d.repository)?,
                kind: optional_name(&format!("{f}.kind"), d.kind)?,
                namespace: optional_name(&format!("{f}.namespace"), d.namespace)?,
                subjects,
                change_id: if d.change_id.is_empty() {
                    None
                } else {
                    Some(record_id(&format!("{f}.change_id"), &d.change_id)?)
                },
                break_glass: d.break_glass,
                justification,
            })
        }
        pb::event::Body::BreakGlassReviewed(r) => Body::BreakGlassReviewed(BreakGlassReview {
            deployment_index: r.deployment_index,
            justified: r.justified,
            comment: text("break_glass_reviewed.comment", r.comment, 4096, true)?,
        }),
        pb::event::Body::PolicyProposed(p) => {
            let f = "policy_proposed";
            Body::PolicyProposed(PolicyProposal {
                proposal_id: record_id(&format!("{f}.proposal_id"), &p.proposal_id)?,
                text: policy_text(&format!("{f}.text"), p.text)?,
                base_version: p.base_version,
                description: text(&format!("{f}.description"), p.description, 4096, true)?,
            })
        }
        pb::event::Body::PolicyApproved(p) => Body::PolicyApproved {
            proposal_id: record_id("policy_approved.proposal_id", &p.proposal_id)?,
        },
        pb::event::Body::IdentityChangeApproved(a) => {
            if a.entry_index == 0 {
                return Err(bad(
                    "identity_change_approved.entry_index",
                    "entry 0 is the genesis, which waits for no approval",
                ));
            }
            Body::IdentityChangeApproved {
                entry: a.entry_index,
            }
        }
        pb::event::Body::IdentityChangeWithdrawn(w) => {
            if w.entry_index == 0 {
                return Err(bad(
                    "identity_change_withdrawn.entry_index",
                    "entry 0 is the genesis, which waits for no approval",
                ));
            }
            Body::IdentityChangeWithdrawn {
                entry: w.entry_index,
                reason: text("identity_change_withdrawn.reason", w.reason, 1024, true)?,
            }
        }
    };
    Ok(Event {
        event_id,
        claimed_time_nanos: claimed_time_unix_nanos,
        signer,
        body,
    })
}

fn principal(field: &str, p: pb::Principal) -> Result<PrincipalSpec, InvalidEvent> {
    let kind = match pb::PrincipalKind::try_from(p.kind) {
        Ok(pb::PrincipalKind::Human) => PrincipalKind::Human,
        Ok(pb::PrincipalKind::Service) => PrincipalKind::Service,
        Ok(pb::PrincipalKind::Ci) => PrincipalKind::Ci,
        Ok(pb::PrincipalKind::Cluster) => PrincipalKind::Cluster,
        _ => {
            return Err(bad(
                &format!("{field}.kind"),
                "must be human, service, ci or cluster",
            ));
        }
    };
    let roles = roles(&format!("{field}.roles"), p.roles)?;
    let emails = emails(&format!("{field}.emails"), p.emails)?;
    if p.public_keys.len() > 16 {
        return Err(bad(&format!("{field}.public_keys"), "at most 16 keys"));
    }
    let keys = p
        .public_keys
        .iter()
        .enumerate()
        .map(|(i, k)| key(&format!("{field}.public_keys[{i}]"), k))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PrincipalSpec {
        id: principal_id(&format!("{field}.id"), &p.id)?,
        kind,
        display_name: text(&format!("{field}.display_name"), p.display_name, 256, true)?,
        roles,
        keys,
        emails,
    })
}

/// The wire form of a principal kind.
pub fn principal_kind_pb(k: PrincipalKind) -> pb::PrincipalKind {
    match k {
        PrincipalKind::Human => pb::PrincipalKind::Human,
        PrincipalKind::Service => pb::PrincipalKind::Service,
        PrincipalKind::Ci => pb::PrincipalKind::Ci,
        PrincipalKind::Cluster => pb::PrincipalKind::Cluster,
    }
}

/// The wire form of a decision; `index` names the recorded deployment.
pub fn decision_to_pb(d: crate::state::DecisionRecord, index: Option<u64>) -> pb::Decision {
    let (change_id, change_revision) = d.change.unwrap_or_default();
    pb::Decision {
        verdict: if d.allow {
            pb::Verdict::Allow
        } else {
            pb::Verdict::Deny
        } as i32,
        rule: d.rule.unwrap_or_default(),
        policy_version: d.policy_version,
        policy_digest: d.policy_digest,
        reasons: d.reasons,
        change_id,
        change_revision,
        counted: d
            .counted
            .into_iter()
            .map(|c| pb::CountedApproval {
                approver: c.approver,
                roles: c.roles,
                index: c.index,
            })
            .collect(),
        not_counted: d
            .not_counted
            .into_iter()
            .map(|c| pb::UncountedApproval {
                approver: c.approver,
                reason: c.reason,
                index: c.index,
            })
            .collect(),
        obligations: d
            .obligations
            .into_iter()
            .map(|o| pb::Obligation {
                description: o.description,
                due_unix_nanos: o.due_nanos,
                not_by: o.not_by,
            })
            .collect(),
        log_size: d.log_size,
        at_unix_nanos: d.at_nanos,
        index: index.unwrap_or(0),
        recorded: index.is_some(),
    }
}

/// An `Authorize` request as a policy request at `at_nanos`, and the change
/// it names. Every refusal names the field.
pub fn authorize_request(
    r: pb::AuthorizeRequest,
    at_nanos: i64,
) -> Result<(crate::policy::Request, Option<String>), InvalidEvent> {
    let subjects = subjects("subjects", &r.subjects, 64)?;
    if subjects.is_empty() {
        return Err(bad(
            "subjects",
            "name the artifact digests or commits being deployed",
        ));
    }
    let change = if r.change_id.is_empty() {
        None
    } else {
        Some(record_id("change_id", &r.change_id)?.to_string())
    };
    let req = crate::policy::Request {
        action: if r.action.is_empty() {
            "deploy".into()
        } else {
            name("action", r.action)?
        },
        environment: name("environment", r.environment)?,
        repository: optional_name("repository", r.repository)?,
        kind: optional_name("kind", r.kind)?,
        namespace: optional_name("namespace", r.namespace)?,
        subjects,
        actor: principal_id("actor", &r.actor)?.to_string(),
        break_glass: r.break_glass,
        at: jiff::Timestamp::from_nanosecond(i128::from(at_nanos))
            .map_err(|e| bad("at", e.to_string()))?,
    };
    Ok((req, change))
}

/// The wire form of a principal spec.
pub fn principal_to_pb(p: &PrincipalSpec) -> pb::Principal {
    pb::Principal {
        id: p.id.to_string(),
        kind: principal_kind_pb(p.kind) as i32,
        display_name: p.display_name.clone(),
        roles: p.roles.iter().cloned().collect(),
        public_keys: p.keys.iter().map(|k| k.to_bytes().to_vec()).collect(),
        emails: p.emails.iter().cloned().collect(),
    }
}

/// Encodes a domain event as the protobuf payload a client signs.
pub fn encode_event(ev: &Event) -> Vec<u8> {
    let body = match &ev.body {
        Body::Genesis(g) => pb::event::Body::Genesis(pb::Genesis {
            origin: g.origin.clone(),
            log_public_key: g.log_key.to_bytes().to_vec(),
            administrators: g.administrators.iter().map(principal_to_pb).collect(),
            policy: g.policy.clone().unwrap_or_default(),
        }),
        Body::PrincipalRegistered(p) => {
            pb::event::Body::PrincipalRegistered(pb::PrincipalRegistered {
                principal: Some(principal_to_pb(p)),
            })
        }
        Body::KeyRotated {
            principal,
            new_key,
            old_key,
        } => pb::event::Body::KeyRotated(pb::KeyRotated {
            principal_id: principal.to_string(),
            new_public_key: new_key.to_bytes().to_vec(),
            old_public_key: old_key.map(|k| k.to_bytes().to_vec()).unwrap_or_default(),
        }),
        Body::KeyRevoked {
            principal,
            key,
            reason,
        } => pb::event::Body::KeyRevoked(pb::KeyRevoked {
            principal_id: principal.to_string(),
            public_key: key.to_bytes().to_vec(),
            reason: reason.clone(),
        }),
        Body::Annotation {
            subject,
            kind,
            text,
            attributes,
        } => pb::event::Body::Annotation(pb::Annotation {
            subject: subject.clone(),
            kind: kind.clone(),
            text: text.clone(),
            attributes: attributes.clone().into_iter().collect(),
        }),
        Body::PrincipalUpdated(u) => pb::event::Body::PrincipalUpdated(pb::PrincipalUpdated {
            principal_id: u.principal.to_string(),
            grant_roles: u.grant_roles.iter().cloned().collect(),
            revoke_roles: u.revoke_roles.iter().cloned().collect(),
            add_emails: u.add_emails.iter().cloned().collect(),
            remove_emails: u.remove_emails.iter().cloned().collect(),
            reason: u.reason.clone(),
        }),
        Body::CommitObserved(c) => pb::event::Body::CommitObserved(pb::CommitObserved {
            repository: c.repository.clone(),
            sha: c.sha.clone(),
            raw_commit: c.raw.clone(),
            changed_paths: Some(pb::ChangedPaths {
                added: c.changed.added,
                modified: c.changed.modified,
                deleted: c.changed.deleted,
                paths: c.changed.paths.clone(),
                truncated: c.changed.truncated,
            }),
            signature: Some(pb::CommitSignature {
                format: match c.signature.format {
                    SignatureFormat::None => pb::SignatureFormat::None,
                    SignatureFormat::Ssh => pb::SignatureFormat::Ssh,
                    SignatureFormat::OpenPgp => pb::SignatureFormat::Openpgp,
                    SignatureFormat::X509 => pb::SignatureFormat::X509,
                    SignatureFormat::Unknown => pb::SignatureFormat::Unknown,
                } as i32,
                verdict: match c.signature.verdict {
                    SignatureVerdict::Unsigned => pb::SignatureVerdict::Unsigned,
                    SignatureVerdict::Verified => pb::SignatureVerdict::Verified,
                    SignatureVerdict::Bad => pb::SignatureVerdict::Bad,
                    SignatureVerdict::UntrustedKey => pb::SignatureVerdict::UntrustedKey,
                    SignatureVerdict::Unverifiable => pb::SignatureVerdict::Unverifiable,
                } as i32,
                signer_identity: c.signature.signer_identity.clone(),
                key_fingerprint: c.signature.key_fingerprint.clone(),
                detail: c.signature.detail.clone(),
                signer_key: c.signature.signer_key.clone(),
            }),
        }),
        Body::CiRunReported(r) => pb::event::Body::CiRunReported(pb::CiRunReported {
            repository: r.repository.clone(),
            commit: r.commit.clone(),
            artifact_digests: r.artifact_digests.iter().cloned().collect(),
            status: match r.status {
                CiStatus::Passed => pb::CiStatus::Passed,
                CiStatus::Failed => pb::CiStatus::Failed,
                CiStatus::Canceled => pb::CiStatus::Canceled,
            } as i32,
            provider: r.provider.clone(),
            pipeline: r.pipeline.clone(),
            run_id: r.run_id.clone(),
            url: r.url.clone(),
            r#ref: r.git_ref.clone(),
        }),
        Body::ChangeOpened(c) => pb::event::Body::ChangeOpened(pb::ChangeOpened {
            change_id: c.change_id.to_string(),
            title: c.title.clone(),
            repository: c.repository.clone(),
            commits: c.commits.iter().cloned().collect(),
            artifact_digests: c.artifact_digests.iter().cloned().collect(),
            environments: c.environments.iter().cloned().collect(),
            ticket: c.ticket.clone(),
            description: c.description.clone(),
        }),
        Body::ChangeAmended(c) => pb::event::Body::ChangeAmended(pb::ChangeAmended {
            change_id: c.change_id.to_string(),
            commits: c.commits.iter().cloned().collect(),
            artifact_digests: c.artifact_digests.iter().cloned().collect(),
            environments: c.environments.iter().cloned().collect(),
            reason: c.reason.clone(),
        }),
        Body::ChangeReviewed(r) => pb::event::Body::ChangeReviewed(pb::ChangeReviewed {
            change_id: r.change_id.to_string(),
            seen_subjects: r.seen_subjects.iter().cloned().collect(),
            verdict: if r.approve {
                pb::ReviewVerdict::Approve
            } else {
                pb::ReviewVerdict::Reject
            } as i32,
            comment: r.comment.clone(),
            revision: r.revision.unwrap_or(0),
        }),
        Body::DeployRequested(d) => pb::event::Body::DeployRequested(pb::DeployRequested {
            action: d.action.clone(),
            environment: d.environment.clone(),
            repository: d.repository.clone().unwrap_or_default(),
            kind: d.kind.clone().unwrap_or_default(),
            namespace: d.namespace.clone().unwrap_or_default(),
            subjects: d.subjects.iter().cloned().collect(),
            change_id: d
                .change_id
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_default(),
            break_glass: d.break_glass,
            justification: d.justification.clone(),
        }),
        Body::BreakGlassReviewed(r) => {
            pb::event::Body::BreakGlassReviewed(pb::BreakGlassReviewed {
                deployment_index: r.deployment_index,
                justified: r.justified,
                comment: r.comment.clone(),
            })
        }
        Body::PolicyProposed(p) => pb::event::Body::PolicyProposed(pb::PolicyProposed {
            proposal_id: p.proposal_id.to_string(),
            text: p.text.clone(),
            base_version: p.base_version,
            description: p.description.clone(),
        }),
        Body::PolicyApproved { proposal_id } => {
            pb::event::Body::PolicyApproved(pb::PolicyApproved {
                proposal_id: proposal_id.to_string(),
            })
        }
        Body::IdentityChangeApproved { entry } => {
            pb::event::Body::IdentityChangeApproved(pb::IdentityChangeApproved {
                entry_index: *entry,
            })
        }
        Body::IdentityChangeWithdrawn { entry, reason } => {
            pb::event::Body::IdentityChangeWithdrawn(pb::IdentityChangeWithdrawn {
                entry_index: *entry,
                reason: reason.clone(),
            })
        }
    };
    pb::Event {
        event_id: ev.event_id.clone(),
        claimed_time_unix_nanos: ev.claimed_time_nanos,
        signer: ev.signer.to_string(),
        body: Some(body),
    }
    .encode_to_vec()
}

/// A wire envelope as a domain envelope (payload kept verbatim).
pub fn envelope_from_pb(e: pb::Envelope) -> Envelope {
    Envelope {
        payload_type: e.payload_type,
        payload: e.payload,
        signatures: e
            .signatures
            .into_iter()
            .map(|s| EnvelopeSignature {
                keyid: s.keyid,
                sig: s.sig,
            })
            .collect(),
    }
}

/// A domain envelope on the wire.
pub fn envelope_to_pb(e: &Envelope) -> pb::Envelope {
    pb::Envelope {
        payload_type: e.payload_type.clone(),
        payload: e.payload.clone(),
        signatures: e
            .signatures
            .iter()
            .map(|s| pb::Signature {
                keyid: s.keyid.clone(),
                sig: s.sig.clone(),
            })
            .collect(),
    }
}

/// Signs an event payload into an envelope with one signature.
pub fn sign_event(ev: &Event, key: &ed25519_dalek::SigningKey) -> Envelope {
    let payload = encode_event(ev);
    let sig = crypto::sign_dsse(key, crypto::PAYLOAD_TYPE, &payload);
    Envelope {
        payload_type: crypto::PAYLOAD_TYPE.to_owned(),
        payload,
        signatures: vec![EnvelopeSignature {
            keyid: crypto::KeyId::of(&key.verifying_key()).to_string(),
            sig: sig.to_vec(),
        }],
    }
}
