//! The two-person rule for identity changes (ledger-format §8.2).
//!
//! An identity change that one principal signs about another (a
//! registration, another principal's key rotated or revoked, any role or
//! e-mail update) takes effect at once only while no other human identity
//! administrator exists. Otherwise the entry records the change, checked
//! but without effect, and it waits for an `IdentityChangeApproved` from
//! such an administrator other than its signer; the approval entry applies
//! it, re-checked against the state of that moment. So no single principal
//! can mint sock-puppet approvers, add its key to someone else, or move an
//! e-mail to make its own approval count, once a second identity
//! administrator exists. While it waits, its proposer may withdraw it
//! (`IdentityChangeWithdrawn`); then no approval can apply it. No one else
//! may: with three administrators, a third one withdrawing would veto what
//! the other two agree on (say, revoking that third one's stolen key).
//!
//! Persisted under `i/<u64 entry index>` → [`StoredPending`] (postcard).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use ed25519_dalek::VerifyingKey;

use super::{ApplyError, State, StateCodecError, expiry_of};
use crate::crypto::{self, KeyId};
use crate::event::{Body, PrincipalId, PrincipalKind, PrincipalSpec, PrincipalUpdate};
use crate::policy::Permission;

/// An identity change waiting for (or given) a second identity
/// administrator's approval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingIdentity {
    /// The entry that recorded it.
    pub entry: u64,
    /// That entry's integrated time: an expiry runs from it.
    pub at_nanos: i64,
    /// Who signed it.
    pub proposer: PrincipalId,
    /// The principal it is about.
    pub subject: PrincipalId,
    /// The identity body itself.
    pub body: Body,
    /// The approval entry that applied it, and who signed that approval.
    pub applied: Option<(u64, PrincipalId)>,
    /// The entry that withdrew it instead, and who signed that.
    pub withdrawn: Option<(u64, PrincipalId)>,
    /// Set when a policy change took effect after the change had expired
    /// under the policy it replaced: the expiry instant and the limit in
    /// seconds. Expiry is final: a later policy with a longer limit, or
    /// none, does not revive it.
    pub expired: Option<(i64, i64)>,
}

impl PendingIdentity {
    /// The refusal for acting on it when it no longer waits.
    fn closed(&self) -> Option<ApplyError> {
        if let Some((at, by)) = &self.applied {
            return Some(ApplyError::IdentityChangeApplied {
                entry: self.entry,
                at: *at,
                by: by.to_string(),
            });
        }
        self.withdrawn
            .as_ref()
            .map(|(at, by)| ApplyError::IdentityChangeWithdrawn {
                entry: self.entry,
                at: *at,
                by: by.to_string(),
            })
    }

    /// One line saying what the change does, with key ids, for the
    /// administrator asked to approve it.
    pub fn describe(&self) -> String {
        let list = |v: &BTreeSet<String>| v.iter().cloned().collect::<Vec<_>>().join(", ");
        let kid = |k: &VerifyingKey| KeyId::of(k).to_string();
        match &self.body {
            Body::PrincipalRegistered(s) => {
                let mut out = format!("register {} ({})", s.id, s.kind.name());
                if !s.roles.is_empty() {
                    out += &format!(" with roles {}", list(&s.roles));
                }
                let keys: Vec<String> = s.keys.iter().map(kid).collect();
                out += &format!(", key {}", keys.join(", "));
                if !s.emails.is_empty() {
                    out += &format!(", e-mail {}", list(&s.emails));
                }
                out
            }
            Body::KeyRotated {
                principal,
                new_key,
                old_key: None,
            } => format!("add key {} to {principal}", kid(new_key)),
            Body::KeyRotated {
                principal,
                new_key,
                old_key: Some(old),
            } => format!(
                "replace {principal}'s key {} with key {}",
                kid(old),
                kid(new_key)
            ),
            Body::KeyRevoked { principal, key, .. } => {
                format!("revoke {principal}'s key {}", kid(key))
            }
            Body::PrincipalUpdated(u) => {
                let mut parts = Vec::new();
                if !u.grant_roles.is_empty() {
                    parts.push(format!("grant {}", list(&u.grant_roles)));
                }
                if !u.revoke_roles.is_empty() {
                    parts.push(format!("revoke {}", list(&u.revoke_roles)));
                }
                if !u.add_emails.is_empty() {
                    parts.push(format!("add e-mail {}", list(&u.add_emails)));
                }
                if !u.remove_emails.is_empty() {
                    parts.push(format!("remove e-mail {}", list(&u.remove_emails)));
                }
                format!("update {}: {}", u.principal, parts.join("; "))
            }
            other => other.kind_name().to_owned(),
        }
    }
}

/// The principal an identity body signed by `signer` is about, when it is
/// about someone other than the signer (or is any role or e-mail update,
/// which needs identity permissions even for oneself). `None` for a
/// principal rotating or revoking its own key, which proves itself.
fn subject_of(signer: &PrincipalId, body: &Body) -> Option<PrincipalId> {
    match body {
        Body::PrincipalRegistered(s) => Some(s.id.clone()),
        Body::KeyRotated { principal, .. } | Body::KeyRevoked { principal, .. } => {
            (principal != signer).then(|| principal.clone())
        }
        Body::PrincipalUpdated(u) => Some(u.principal.clone()),
        _ => None,
    }
}

impl State {
    /// Identity changes recorded to wait for a second identity
    /// administrator, in entry order, applied or not.
    pub fn pending_identity_changes(&self) -> impl Iterator<Item = &PendingIdentity> {
        self.pending.values()
    }

    /// Whether `who` is a human principal whose roles give
    /// `register_principals` or `change_roles`: one who may approve
    /// another's identity change. Keys do not matter: an administrator whose
    /// keys were all revoked still counts, so that revoking the other's keys
    /// (or their revoking their own) never leaves one administrator free to
    /// act alone; re-keying them then takes a policy change.
    pub(super) fn is_identity_admin(&self, who: &PrincipalId) -> bool {
        let policy = self.gov.policy();
        self.principals.get(who).is_some_and(|p| {
            p.kind == PrincipalKind::Human
                && (policy.permits(&p.roles, Permission::RegisterPrincipals)
                    || policy.permits(&p.roles, Permission::ChangeRoles))
        })
    }

    /// Whether an identity administrator other than `who` exists.
    fn another_identity_admin(&self, who: &PrincipalId) -> bool {
        self.principals
            .keys()
            .any(|id| id != who && self.is_identity_admin(id))
    }

    /// Applies a registration, key rotation or revocation, or principal
    /// update: at once, or, when it is about another principal and another
    /// identity administrator exists, checked and recorded to wait.
    pub(super) fn apply_identity_event(
        &mut self,
        index: u64,
        at: i64,
        signer: &PrincipalId,
        body: &Body,
    ) -> Result<(), ApplyError> {
        let subject = match subject_of(signer, body) {
            Some(s) if self.another_identity_admin(signer) => s,
            _ => return self.apply_identity(index, signer, body, true),
        };
        self.apply_identity(index, signer, body, false)?;
        self.pending.insert(
            index,
            PendingIdentity {
                entry: index,
                at_nanos: at,
                proposer: signer.clone(),
                subject,
                body: body.clone(),
                applied: None,
                withdrawn: None,
                expired: None,
            },
        );
        self.pending_dirty.insert(index);
        Ok(())
    }

    /// The identity change recorded at `entry`, if it still waits: neither
    /// applied nor withdrawn.
    fn still_waiting(&self, entry: u64) -> Result<&PendingIdentity, ApplyError> {
        let p = self
            .pending
            .get(&entry)
            .ok_or(ApplyError::NoPendingIdentity(entry))?;
        match p.closed() {
            Some(e) => Err(e),
            None => Ok(p),
        }
    }

    /// When the identity change `p` stops waiting, and the limit in seconds:
    /// the expiry a policy change fixed, or else the one under the policy
    /// in force (`[identity_changes] expire_after`), if it ever does.
    pub fn identity_change_expiry(&self, p: &PendingIdentity) -> Option<(i64, i64)> {
        p.expired.or_else(|| {
            self.gov
                .policy()
                .identity_change_expiry_secs
                .map(|secs| (expiry_of(p.at_nanos, secs), secs))
        })
    }

    /// Before a policy change takes effect at `at`: every identity change
    /// still waiting that has expired under the outgoing policy stays
    /// expired, whatever the new policy says.
    pub(super) fn fix_expired_identity_changes(&mut self, at: i64) {
        let Some(secs) = self.gov.policy().identity_change_expiry_secs else {
            return;
        };
        for p in self.pending.values_mut() {
            let end = expiry_of(p.at_nanos, secs);
            if p.applied.is_none() && p.withdrawn.is_none() && p.expired.is_none() && at > end {
                p.expired = Some((end, secs));
                self.pending_dirty.insert(p.entry);
            }
        }
    }

    /// Applies the identity change recorded at `entry` with `signer`'s
    /// approval, as entry `index` at integrated time `at`.
    pub(super) fn approve_identity_change(
        &mut self,
        index: u64,
        at: i64,
        signer: &PrincipalId,
        entry: u64,
    ) -> Result<(), ApplyError> {
        let p = self.still_waiting(entry)?;
        // An approval exactly at the expiry still counts, one a nanosecond
        // later does not.
        if let Some((end, secs)) = self.identity_change_expiry(p)
            && at > end
        {
            return Err(ApplyError::IdentityChangeExpired {
                entry,
                at: super::gov::fmt_nanos(end),
                after: crate::policy::human_secs(secs),
            });
        }
        if &p.proposer == signer {
            return Err(ApplyError::OwnIdentityChange(entry));
        }
        if !self.is_identity_admin(signer) {
            let policy = self.gov.policy();
            let roles = |perm: Permission| {
                policy
                    .permissions
                    .get(&perm)
                    .map(|r| r.iter().cloned().collect::<Vec<_>>().join(", "))
                    .unwrap_or_default()
            };
            return Err(ApplyError::Forbidden {
                signer: signer.to_string(),
                action: "approve identity changes",
                why: format!(
                    "only a human principal whose roles give `register_principals` ({}) or \
                     `change_roles` ({}) may",
                    roles(Permission::RegisterPrincipals),
                    roles(Permission::ChangeRoles)
                ),
            });
        }
        let (proposer, body) = (p.proposer.clone(), p.body.clone());
        // A key the signer held when it signed was revoked or rotated away
        // since (a compromised key, say): what was queued then is no longer
        // vouched for. Which of its keys signed is not asked: every fold
        // (live, rebuild, verify, evidence) must give the same answer.
        if let Some(k) = self.principals.get(&proposer).and_then(|q| {
            q.keys
                .iter()
                .find(|k| k.added_at < entry && k.revoked_at.is_some_and(|r| r >= entry))
        }) {
            return Err(ApplyError::IdentityChangeStale {
                entry,
                why: format!(
                    "{:?}'s key {}, active when it signed, was revoked at entry {}",
                    proposer.as_str(),
                    KeyId::of(&k.key),
                    k.revoked_at.unwrap_or_default()
                ),
            });
        }
        self.apply_identity(index, &proposer, &body, true)
            .map_err(|e| ApplyError::IdentityChangeStale {
                entry,
                why: e.to_string(),
            })?;
        let p = self.pending.get_mut(&entry).expect("looked up above");
        p.applied = Some((index, signer.clone()));
        self.pending_dirty.insert(entry);
        Ok(())
    }

    /// Withdraws the identity change recorded at `entry` as entry `index`,
    /// signed by `signer`, who must be its proposer. (A second administrator
    /// who disagrees simply does not approve; letting any administrator
    /// withdraw would let one of three veto the other two.)
    pub(super) fn withdraw_identity_change(
        &mut self,
        index: u64,
        signer: &PrincipalId,
        entry: u64,
    ) -> Result<(), ApplyError> {
        let p = self.still_waiting(entry)?;
        if &p.proposer != signer {
            return Err(ApplyError::Forbidden {
                signer: signer.to_string(),
                action: "withdraw this identity change",
                why: format!(
                    "only its proposer ({:?}) may withdraw the change recorded at entry {entry}",
                    p.proposer.as_str()
                ),
            });
        }
        let p = self.pending.get_mut(&entry).expect("looked up above");
        p.withdrawn = Some((index, signer.clone()));
        self.pending_dirty.insert(entry);
        Ok(())
    }

    /// Writes of waiting identity changes changed since the last call.
    pub(super) fn take_pending_changes(&mut self, out: &mut Vec<(Vec<u8>, Vec<u8>)>) {
        for entry in std::mem::take(&mut self.pending_dirty) {
            let p = &self.pending[&entry];
            out.push((pending_key(entry), encode_pending(p)));
        }
    }

    /// Loads one `i/` record; `false` if the key is not one.
    pub(super) fn load_pending(&mut self, k: &[u8], v: &[u8]) -> Result<bool, StateCodecError> {
        let Some(rest) = k.strip_prefix(b"i/") else {
            return Ok(false);
        };
        let entry = u64::from_be_bytes(
            rest.try_into()
                .map_err(|_| StateCodecError::Invalid("pending identity key"))?,
        );
        let p = decode_pending(entry, v)?;
        self.pending.insert(entry, p);
        Ok(true)
    }
}

fn pending_key(entry: u64) -> Vec<u8> {
    let mut k = b"i/".to_vec();
    k.extend_from_slice(&entry.to_be_bytes());
    k
}

/// A waiting identity change as persisted.
#[derive(Serialize, Deserialize)]
struct StoredPending {
    at_nanos: i64,
    proposer: String,
    subject: String,
    op: StoredOp,
    applied: Option<(u64, String)>,
    withdrawn: Option<(u64, String)>,
    expired: Option<(i64, i64)>,
}

#[derive(Serialize, Deserialize)]
enum StoredOp {
    Register {
        id: String,
        kind: u8,
        display_name: String,
        roles: BTreeSet<String>,
        keys: Vec<[u8; 32]>,
        emails: BTreeSet<String>,
    },
    Rotate {
        principal: String,
        new_key: [u8; 32],
        old_key: Option<[u8; 32]>,
    },
    Revoke {
        principal: String,
        key: [u8; 32],
        reason: String,
    },
    Update {
        principal: String,
        grant_roles: BTreeSet<String>,
        revoke_roles: BTreeSet<String>,
        add_emails: BTreeSet<String>,
        remove_emails: BTreeSet<String>,
        reason: String,
    },
}

fn encode_pending(p: &PendingIdentity) -> Vec<u8> {
    let op = match &p.body {
        Body::PrincipalRegistered(s) => StoredOp::Register {
            id: s.id.to_string(),
            kind: s.kind.code(),
            display_name: s.display_name.clone(),
            roles: s.roles.clone(),
            keys: s.keys.iter().map(|k| k.to_bytes()).collect(),
            emails: s.emails.clone(),
        },
        Body::KeyRotated {
            principal,
            new_key,
            old_key,
        } => StoredOp::Rotate {
            principal: principal.to_string(),
            new_key: new_key.to_bytes(),
            old_key: old_key.map(|k| k.to_bytes()),
        },
        Body::KeyRevoked {
            principal,
            key,
            reason,
        } => StoredOp::Revoke {
            principal: principal.to_string(),
            key: key.to_bytes(),
            reason: reason.clone(),
        },
        Body::PrincipalUpdated(u) => StoredOp::Update {
            principal: u.principal.to_string(),
            grant_roles: u.grant_roles.clone(),
            revoke_roles: u.revoke_roles.clone(),
            add_emails: u.add_emails.clone(),
            remove_emails: u.remove_emails.clone(),
            reason: u.reason.clone(),
        },
        other => unreachable!("only identity bodies wait: {}", other.kind_name()),
    };
    let stored = StoredPending {
        at_nanos: p.at_nanos,
        proposer: p.proposer.to_string(),
        subject: p.subject.to_string(),
        op,
        applied: p.applied.as_ref().map(|(i, by)| (*i, by.to_string())),
        withdrawn: p.withdrawn.as_ref().map(|(i, by)| (*i, by.to_string())),
        expired: p.expired,
    };
    // Plain strings, integers and collections: encoding into a Vec cannot fail.
    postcard::to_stdvec(&stored).expect("postcard encodes state records")
}

fn decode_pending(entry: u64, v: &[u8]) -> Result<PendingIdentity, StateCodecError> {
    let bad = |what| StateCodecError::Invalid(what);
    let s: StoredPending = postcard::from_bytes(v).map_err(|_| bad("pending identity change"))?;
    let id = |t: &str| PrincipalId::parse(t).map_err(|_| bad("pending identity principal id"));
    let key = |b: &[u8; 32]| crypto::parse_public_key(b).map_err(|_| bad("pending identity key"));
    let body = match s.op {
        StoredOp::Register {
            id: pid,
            kind,
            display_name,
            roles,
            keys,
            emails,
        } => Body::PrincipalRegistered(PrincipalSpec {
            id: id(&pid)?,
            kind: PrincipalKind::from_code(kind).ok_or(bad("pending identity kind"))?,
            display_name,
            roles,
            keys: keys.iter().map(key).collect::<Result<_, _>>()?,
            emails,
        }),
        StoredOp::Rotate {
            principal,
            new_key,
            old_key,
        } => Body::KeyRotated {
            principal: id(&principal)?,
            new_key: key(&new_key)?,
            old_key: old_key.as_ref().map(key).transpose()?,
        },
        StoredOp::Revoke {
            principal,
            key: k,
            reason,
        } => Body::KeyRevoked {
            principal: id(&principal)?,
            key: key(&k)?,
            reason,
        },
        StoredOp::Update {
            principal,
            grant_roles,
            revoke_roles,
            add_emails,
            remove_emails,
            reason,
        } => Body::PrincipalUpdated(PrincipalUpdate {
            principal: id(&principal)?,
            grant_roles,
            revoke_roles,
            add_emails,
            remove_emails,
            reason,
        }),
    };
    Ok(PendingIdentity {
        entry,
        at_nanos: s.at_nanos,
        proposer: id(&s.proposer)?,
        subject: id(&s.subject)?,
        body,
        applied: s
            .applied
            .map(|(i, by)| id(&by).map(|by| (i, by)))
            .transpose()?,
        withdrawn: s
            .withdrawn
            .map(|(i, by)| id(&by).map(|by| (i, by)))
            .transpose()?,
        expired: s.expired,
    })
}
