//! The event-sourced state: principals, their roles and key history
//! (identity), and the governance projection ([`gov`]). A deterministic fold
//! over the log; the only writer of the state tree.
//!
//! Persisted layout (sled tree `state`), all integers big-endian:
//! - `m/format` → u32: [`STATE_FORMAT`]; any other value (or none) makes
//!   `Service::open` rebuild the state from the log
//! - `m/next` → u64: index of the next entry to apply (entries below it are folded in)
//! - `m/time` → i64: integrated time of the last entry folded in
//! - `m/genesis` → u16 len, origin, [32] log key
//! - `p/<principal id>` → a principal record (see [`encode_principal`])
//! - `i/<entry index>` → an identity change waiting for a second identity
//!   administrator, or applied by one (see [`identity`])
//! - governance records under `v/ q/ c/ g/ r/ x/ o/ h/` (see [`gov`])

mod codec;
pub mod gov;
pub mod heads;
mod identity;

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::VerifyingKey;
use foldhash::HashMap;

use crate::crypto::{self, KeyId};
use crate::event::{
    ADMIN_ROLE, Body, Event, PrincipalId, PrincipalKind, PrincipalSpec, PrincipalUpdate,
};
use crate::ledger::Envelope;
use crate::policy::{Permission, PrincipalFacts};

pub use codec::{StateCodecError, decode_principal, encode_principal};
pub use gov::{DecisionRecord, Gov, ObligationStatus, Violation};
pub use identity::PendingIdentity;

/// Version of the persisted state layout. Bump it whenever the fold or the
/// record encodings change: a state tree of another format is rebuilt from
/// the log at start-up. 4: every amend makes the reviews before it stale, so
/// recorded decisions are recomputed. 5: rule selection follows the
/// repositories the code was observed in and stops at unknown fields, a
/// stale review no longer displaces a fresh one, approvers must still hold
/// `approve`, and approval age is compared to the nanosecond. 6: the
/// request's own subjects' repositories count without a change, and a later
/// stale rejection withdraws a person's approval. 7: an identity change about
/// another principal waits for a second identity administrator when one
/// exists (`i/` records). 8: its proposer may withdraw it while it waits.
/// 9: waiting identity changes and policy proposals keep their integrated
/// time, and may expire (`expire_after`). 10: promotion counts only earlier
/// `deploy`s or requests of the same action, and a person fills one
/// `require_roles` requirement only. 11: a CI run counts only while its
/// reporter may report, a digest built from a commit its change does not
/// bind is denied, and a verified commit signer is excluded like an author.
/// 12: freeze windows read their zone from the database compiled into
/// the binary, not the machine's zoneinfo.
/// 13: a repository only the request names, with nothing recorded
/// confirming it, counts as unknown in rule selection.
/// 14: a verified signer identity that is one principal's id and another's
/// e-mail excludes both.
/// 15: a commit's author and committer times are read after the last '>'
/// of their lines, as git reads them; a break-glass reason names the
/// saturated due time.
/// 16: a repository only the change names counts as unknown in rule
/// selection, and so does that of a request subject nothing records; a
/// deny decided on a found change names the other changes binding them.
/// 17: reviews and policy approvals keep the key that signed them, and
/// stop counting once it is revoked or rotated away.
/// 18: CI runs keep theirs too; a run whose key has gone, or whose
/// reporter may no longer report, neither passes CI nor names a
/// repository or a source commit for a decision.
/// 19: each change revision keeps the key of its subjects (`c/` records),
/// as reviews keep that of what they saw; no decision changes.
/// 20: each change keeps its number and its change head (ledger-format
/// §6.5), which checkpoints sign; no decision changes.
/// 21: each subject keeps its number and its subject head (`s/` records,
/// ledger-format §6.6), which checkpoints sign; no decision changes.
/// 22: a break-glass review extends the subject heads of the deployment it
/// reviews; no decision changes.
/// 23: re-decides deployments now that the reason an author, committer or
/// signer's approval is not counted names their part and the commit.
pub const STATE_FORMAT: u32 = 23;

/// The most keys (every one ever added, revoked ones included), roles and
/// e-mails one principal's record holds; a change past it is refused
/// (ledger-format §8.2). It keeps a record's counts within the u16 of its
/// stored encoding, whatever a principal does to itself.
pub const MAX_PER_PRINCIPAL: usize = 1024;

/// What one signature attempt costs beyond hashing the payload, in bytes
/// of hashing of about the same time (the curve arithmetic of a strict
/// Ed25519 verification, ~40 µs): [`SignerKeys::authenticate_within`].
pub const VERIFY_FIXED_COST: u64 = 32 << 10;

/// The verification work a new entry may cost before its signatures are
/// refused ([`SignerKeys::authenticate_within`]): 16 MiB, 16 attempts at
/// the largest payload, 512 at small ones.
pub const NEW_ENTRY_VERIFY_BUDGET: u64 = 16 << 20;

/// One key of a principal and when it was valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    pub key: VerifyingKey,
    pub added_at: u64,
    pub revoked_at: Option<u64>,
}

/// A principal as the fold currently sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrincipalRecord {
    pub id: PrincipalId,
    pub kind: PrincipalKind,
    pub display_name: String,
    pub roles: BTreeSet<String>,
    pub keys: Vec<KeyRecord>,
    pub registered_at: u64,
    /// Git author/committer e-mails that identify the principal.
    pub emails: BTreeSet<String>,
}

impl PrincipalRecord {
    /// Keys that may sign now.
    pub fn active_keys(&self) -> impl Iterator<Item = &VerifyingKey> {
        self.keys
            .iter()
            .filter(|k| k.revoked_at.is_none())
            .map(|k| &k.key)
    }
}

/// Facts fixed by genesis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenesisInfo {
    pub origin: String,
    pub log_key: VerifyingKey,
}

/// Why an event could not be authenticated against the current state.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthError {
    #[error("signer {0:?} is not a registered principal")]
    UnknownSigner(String),
    #[error("signer {0:?} has no active key")]
    NoActiveKey(String),
    #[error("the key that signed this envelope (keyid {keyid}) was revoked at entry {revoked_at}")]
    RevokedKey { keyid: String, revoked_at: u64 },
    #[error("no signature verifies (strict Ed25519 over DSSE PAE) with an active key of {0:?}")]
    BadSignature(String),
    #[error(
        "signatures: none verified within the {tries} attempts a new entry may cost \
         ({signatures} signature(s) × {keys} key(s) of {signer:?} over a {payload}-byte payload); \
         set each signature's keyid to its key's id (ledger-format §2.2), so that key is tried first"
    )]
    TooCostly {
        signer: String,
        signatures: usize,
        keys: usize,
        payload: usize,
        tries: u64,
    },
}

/// Why an authenticated event may not be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApplyError {
    #[error("entry {got} applied out of order; expected entry {expected}")]
    OutOfOrder { expected: u64, got: u64 },
    #[error("entry 0 must be a genesis event, got {0}")]
    FirstNotGenesis(&'static str),
    #[error("a genesis event is only valid as entry 0")]
    GenesisNotFirst,
    #[error("genesis must be signed by one of the administrators it names, with a key it declares")]
    GenesisNotSelfSigned,
    #[error("genesis names no administrator")]
    NoAdministrators,
    #[error("{signer:?} may not {action}: {why}")]
    Forbidden {
        signer: String,
        action: &'static str,
        why: String,
    },
    #[error("principal {0:?} is already registered")]
    PrincipalExists(String),
    #[error("principal {0:?} is not registered")]
    UnknownPrincipal(String),
    #[error("key {0} is already registered")]
    KeyInUse(String),
    #[error("key {keyid} is not an active key of {principal:?}")]
    KeyNotActive { principal: String, keyid: String },
    #[error("principal {0:?} must have at least one key")]
    NoKeys(String),
    #[error("{0}")]
    WouldLockOut(String),
    #[error("e-mail {email:?} already identifies principal {owner:?}")]
    EmailTaken { email: String, owner: String },
    #[error(
        "principal {principal:?} already has {have} {what}; at most {MAX_PER_PRINCIPAL} are kept per principal"
    )]
    TooMany {
        principal: String,
        what: &'static str,
        have: usize,
    },
    #[error(
        "change {change:?} is at revision {current}; this review is of revision {named}: review the current revision"
    )]
    NotCurrentRevision {
        change: String,
        named: u32,
        current: u64,
    },
    #[error("principals may not change their own roles")]
    OwnRoles,
    #[error("principal_updated changes nothing for {0:?}: {1}")]
    NothingChanged(String, String),
    #[error("policy: {0}")]
    BadPolicy(String),
    #[error("change {0:?} already exists")]
    ChangeExists(String),
    #[error("change {0:?} does not exist")]
    UnknownChange(String),
    #[error(
        "the amendment of change {0:?} binds the same subjects and environments as its current revision"
    )]
    AmendChangesNothing(String),
    #[error(
        "seen_subjects match no revision of change {change:?}; its current revision binds {current}"
    )]
    NotARevision { change: String, current: String },
    #[error(
        "seen_subjects are not those of revision {revision} of change {change:?}, which the review names; it binds {current}"
    )]
    NotTheNamedRevision {
        change: String,
        revision: u32,
        current: String,
    },
    #[error("commit {sha} was already observed at entry {index}")]
    CommitKnown { sha: String, index: u64 },
    #[error("entry {0} {1}, so it has no review obligation")]
    NotBreakGlass(u64, &'static str),
    /// Raised for new entries only (`Service::append`): a log that recorded
    /// such a break-glass before this check keeps it, allowed, with its
    /// obligation and review.
    #[error(
        "the built-in default policy (the genesis named none and none has been adopted) authorizes nothing, break-glass included; adopt a policy that says who may break glass (`break_glass`) and who reviews it"
    )]
    BuiltinBreakGlass,
    #[error(
        "the break-glass deployment at entry {deployment} was already reviewed at entry {review}"
    )]
    AlreadyReviewed { deployment: u64, review: u64 },
    #[error("the review must come from someone other than {0:?}, who broke the glass")]
    OwnBreakGlass(String),
    /// Raised for new entries only (`Service::append`).
    #[error(
        "the break-glass deployment at entry {deployment} must be reviewed by someone who took no part in it, as an approval would be: {why}"
    )]
    InvolvedReviewer { deployment: u64, why: String },
    /// Raised for new entries only (`Service::append`).
    #[error(
        "this approval would activate policy proposal {id:?} only by counting approvals that no longer stand: {why}; they must approve again with a current key first"
    )]
    WithdrawnPolicyApproval { id: String, why: String },
    #[error("policy proposal {0:?} already exists")]
    ProposalExists(String),
    #[error("policy proposal {0:?} does not exist")]
    UnknownProposal(String),
    #[error(
        "base_version is {base} but policy version {active} is in force; propose against version {active}"
    )]
    StaleBase { base: u64, active: u64 },
    #[error("policy proposal {id:?} can no longer be approved: {why}")]
    ProposalClosed { id: String, why: String },
    #[error("the proposer may not approve their own policy proposal {0:?}")]
    OwnProposal(String),
    #[error("{signer:?} already approved policy proposal {id:?}")]
    AlreadyApproved { id: String, signer: String },
    #[error("entry {0} did not record an identity change that waits for approval")]
    NoPendingIdentity(u64),
    #[error(
        "the identity change at entry {entry} already took effect at entry {at}, approved by {by:?}"
    )]
    IdentityChangeApplied { entry: u64, at: u64, by: String },
    #[error(
        "the identity change at entry {0} needs the approval of an identity administrator other than the one who signed it"
    )]
    OwnIdentityChange(u64),
    #[error("the identity change at entry {entry} can no longer take effect: {why}")]
    IdentityChangeStale { entry: u64, why: String },
    #[error("the identity change at entry {entry} was withdrawn at entry {at} by {by:?}")]
    IdentityChangeWithdrawn { entry: u64, at: u64, by: String },
    #[error(
        "the identity change at entry {entry} expired at {at}, {after} after it was recorded ([identity_changes] expire_after); propose it again"
    )]
    IdentityChangeExpired {
        entry: u64,
        at: String,
        after: String,
    },
}

/// The instant `secs` after `at_nanos` (saturating): when something
/// recorded at `at_nanos` expires under an `expire_after` of `secs`.
pub(crate) fn expiry_of(at_nanos: i64, secs: i64) -> i64 {
    at_nanos.saturating_add(secs.saturating_mul(1_000_000_000))
}

/// A signer's keys as of one point in the log.
#[derive(Clone, Debug)]
pub struct SignerKeys {
    signer: String,
    active: Vec<VerifyingKey>,
    /// Revoked keys and the index of the entry that revoked each.
    revoked: Vec<(VerifyingKey, u64)>,
}

impl SignerKeys {
    /// A signer without keys, for tests of what carries these around.
    #[cfg(test)]
    pub(crate) fn none(signer: &str) -> SignerKeys {
        SignerKeys {
            signer: signer.to_owned(),
            active: Vec::new(),
            revoked: Vec::new(),
        }
    }

    /// The active key the keyid hint names, else the first active key: the
    /// key to try first. `None` when the signer has no active key.
    pub fn preferred(&self, env: &Envelope) -> Option<VerifyingKey> {
        env.signatures
            .iter()
            .find_map(|s| {
                self.active
                    .iter()
                    .find(|k| KeyId::of(k).to_string() == s.keyid)
            })
            .or_else(|| self.active.first())
            .copied()
    }

    /// The key a fold that checks signatures apart (on other threads:
    /// `docket verify`, evidence bundles) hands [`State::apply`] with
    /// `body`. For a change review, a policy approval or a CI run, which
    /// keep the key that signed them (ledger-format §8.3), it is that key, as
    /// [`SignerKeys::authenticate`] found it in the live fold, whatever the
    /// keyid hint says. With one active key that is the key, without a
    /// signature check here: a signature by any other key (a revoked one)
    /// is refused, and the other threads check it with these same keys.
    /// With several, this finds it by checking the signature, as the live
    /// fold did. The other bodies do not read it: the preferred key.
    pub fn key_for_fold(&self, env: &Envelope, body: &Body) -> Result<VerifyingKey, AuthError> {
        match (body, self.active.as_slice()) {
            (_, [only]) => Ok(*only),
            (Body::ChangeReviewed(_) | Body::PolicyApproved { .. } | Body::CiRunReported(_), _) => {
                self.authenticate(env)
            }
            _ => self
                .preferred(env)
                .ok_or_else(|| AuthError::NoActiveKey(self.signer.clone())),
        }
    }

    /// How many keys these are, active and revoked.
    pub fn count(&self) -> usize {
        self.active.len() + self.revoked.len()
    }

    /// Finds the active key that signed the envelope (strict Ed25519 over
    /// the DSSE PAE). The keyid hint only orders the attempts.
    pub fn authenticate(&self, env: &Envelope) -> Result<VerifyingKey, AuthError> {
        self.authenticate_within(env, u64::MAX)
    }

    /// [`SignerKeys::authenticate`] for a new entry, giving up with
    /// [`AuthError::TooCostly`] before attempting more than `budget` bytes
    /// of verification work: each attempt hashes the whole payload, and up
    /// to 16 signatures meet up to [`MAX_PER_PRINCIPAL`] keys. The attempts
    /// come in the same order, so a key found within the budget is the one
    /// replay (unbounded) finds. A signature whose keyid names its key
    /// costs one attempt.
    pub fn authenticate_within(
        &self,
        env: &Envelope,
        budget: u64,
    ) -> Result<VerifyingKey, AuthError> {
        let pae = crypto::pae(&env.payload_type, &env.payload);
        let per_try = pae.len() as u64 + VERIFY_FIXED_COST;
        let max_tries = budget / per_try;
        let mut tries = 0u64;
        let mut attempt = |key: &VerifyingKey, sig: &[u8]| {
            if tries >= max_tries {
                return None;
            }
            tries += 1;
            Some(crypto::verify_strict(key, &pae, sig).is_ok())
        };
        for sig in &env.signatures {
            let mut ordered: Vec<&VerifyingKey> = self.active.iter().collect();
            ordered.sort_by_key(|k| KeyId::of(k).to_string() != sig.keyid);
            for key in ordered {
                match attempt(key, &sig.sig) {
                    Some(true) => return Ok(*key),
                    Some(false) => {}
                    None => {
                        return Err(AuthError::TooCostly {
                            signer: self.signer.clone(),
                            signatures: env.signatures.len(),
                            keys: self.active.len(),
                            payload: env.payload.len(),
                            tries,
                        });
                    }
                }
            }
        }
        // Only to say why: a signature by a revoked key gets its own error
        // (within what is left of the budget).
        for sig in &env.signatures {
            for (key, at) in &self.revoked {
                if attempt(key, &sig.sig) == Some(true) {
                    return Err(AuthError::RevokedKey {
                        keyid: KeyId::of(key).to_string(),
                        revoked_at: *at,
                    });
                }
            }
        }
        if self.active.is_empty() {
            return Err(AuthError::NoActiveKey(self.signer.clone()));
        }
        Err(AuthError::BadSignature(self.signer.clone()))
    }
}

/// The state fold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    next: u64,
    /// Integrated time of the last entry folded in (Unix nanoseconds).
    last_time: i64,
    genesis: Option<GenesisInfo>,
    principals: BTreeMap<PrincipalId, PrincipalRecord>,
    /// Every key ever registered (revoked or not) → its owner; keys are never reused.
    key_owner: HashMap<[u8; 32], PrincipalId>,
    /// Every key revoked or rotated away → the entry that did it (derived
    /// from `principals`): what a key signed stops counting from there on.
    revoked_keys: HashMap<[u8; 32], u64>,
    /// E-mail → the principal it identifies (derived from `principals`).
    emails: HashMap<String, PrincipalId>,
    /// What policy evaluation knows of each principal (derived from `principals`).
    facts: crate::policy::Principals,
    gov: Gov,
    /// Identity changes that waited for a second identity administrator,
    /// by the index of the entry that recorded them.
    pending: BTreeMap<u64, PendingIdentity>,
    pending_dirty: BTreeSet<u64>,
    /// Accept entries with gaps in their indices: the fold of an evidence
    /// bundle, which holds only the entries its scope needs.
    sparse: bool,
    /// Principals changed since the last [`State::take_changes`].
    dirty: BTreeSet<PrincipalId>,
    genesis_dirty: bool,
    /// The facts of the changes decided on since the last fold step.
    facts_cache: gov::FactsCache,
}

impl State {
    /// The empty state, before genesis.
    pub fn new() -> Self {
        State::default()
    }

    /// An empty state that folds a subset of a log's entries in increasing
    /// index order (an evidence bundle). Every rule applies as in a full
    /// fold; only the indices may skip.
    pub fn sparse() -> Self {
        State {
            sparse: true,
            gov: Gov::sparse(),
            ..State::default()
        }
    }

    /// Principals in id order.
    pub fn principals(&self) -> impl Iterator<Item = &PrincipalRecord> {
        self.principals.values()
    }

    /// Index of the next entry to apply (= number of entries folded in).
    pub fn next_index(&self) -> u64 {
        self.next
    }

    /// Integrated time of the last entry folded in: no decision is made for
    /// an earlier time than the newest fact it could rest on.
    pub fn last_time(&self) -> i64 {
        self.last_time
    }

    /// The time a read at wall-clock `clock` speaks for: never before the
    /// last entry, which the fold never dates later than now, so a clock
    /// stepped back does not hide facts already recorded.
    pub fn now_from(&self, clock: i64) -> i64 {
        clock.max(self.last_time)
    }

    /// Origin and log key, once genesis is applied.
    pub fn genesis(&self) -> Option<&GenesisInfo> {
        self.genesis.as_ref()
    }

    /// A principal by id.
    /// The entry that revoked `key` or rotated it away, if one did.
    pub fn key_revoked_at(&self, key: &[u8; 32]) -> Option<u64> {
        if self.revoked_keys.is_empty() {
            return None;
        }
        self.revoked_keys.get(key).copied()
    }

    pub fn principal(&self, id: &str) -> Option<&PrincipalRecord> {
        PrincipalId::parse(id)
            .ok()
            .and_then(|id| self.principals.get(&id))
    }

    /// Number of principals.
    pub fn principal_count(&self) -> usize {
        self.principals.len()
    }

    /// Finds the active key of the event's signer that signed the envelope
    /// (strict Ed25519 over the DSSE PAE). For entry 0 the keys come from the
    /// genesis body itself.
    pub fn authenticate(&self, env: &Envelope, event: &Event) -> Result<VerifyingKey, AuthError> {
        self.signer_keys(event)?.authenticate(env)
    }

    /// The signer's active and revoked keys, copied out so the signature
    /// check can run without holding a lock on the state.
    pub fn signer_keys(&self, event: &Event) -> Result<SignerKeys, AuthError> {
        let signer = event.signer.to_string();
        match (&event.body, self.genesis.is_none()) {
            (Body::Genesis(g), true) => Ok(SignerKeys {
                active: g
                    .administrators
                    .iter()
                    .filter(|a| a.id == event.signer)
                    .flat_map(|a| a.keys.iter().copied())
                    .collect(),
                revoked: Vec::new(),
                signer,
            }),
            _ => {
                let p = self
                    .principals
                    .get(&event.signer)
                    .ok_or(AuthError::UnknownSigner(signer.clone()))?;
                Ok(SignerKeys {
                    active: p.active_keys().copied().collect(),
                    revoked: p
                        .keys
                        .iter()
                        .filter_map(|k| k.revoked_at.map(|r| (k.key, r)))
                        .collect(),
                    signer,
                })
            }
        }
    }

    /// Folds entry `index`, integrated at `at` (Unix nanoseconds), into the
    /// state. On error the state is unchanged.
    pub fn apply(
        &mut self,
        index: u64,
        at: i64,
        event: &Event,
        key: &VerifyingKey,
    ) -> Result<(), ApplyError> {
        // Every change to the state goes through here: the facts kept for
        // decisions are of the state before it, so they go, before (a
        // decision while folding reads the state as it is then) and after
        // (one made while folding is of a state this step goes on to change).
        self.facts_cache.clear();
        let r = self.apply_entry(index, at, event, key);
        self.facts_cache.clear();
        r
    }

    fn apply_entry(
        &mut self,
        index: u64,
        at: i64,
        event: &Event,
        key: &VerifyingKey,
    ) -> Result<(), ApplyError> {
        let in_order = if self.sparse {
            index >= self.next && (index == 0) == (self.next == 0)
        } else {
            index == self.next
        };
        if !in_order {
            return Err(ApplyError::OutOfOrder {
                expected: self.next,
                got: index,
            });
        }
        let signer = &event.signer;
        if index == 0 {
            let Body::Genesis(g) = &event.body else {
                return Err(ApplyError::FirstNotGenesis(event.body.kind_name()));
            };
            if g.administrators.is_empty() {
                return Err(ApplyError::NoAdministrators);
            }
            if !g
                .administrators
                .iter()
                .any(|a| &a.id == signer && a.keys.contains(key))
            {
                return Err(ApplyError::GenesisNotSelfSigned);
            }
            let mut next = State {
                genesis: Some(GenesisInfo {
                    origin: g.origin.clone(),
                    log_key: g.log_key,
                }),
                genesis_dirty: true,
                sparse: self.sparse,
                gov: if self.sparse {
                    Gov::sparse()
                } else {
                    Gov::default()
                },
                ..State::default()
            };
            for a in &g.administrators {
                let mut spec = a.clone();
                spec.roles.insert(ADMIN_ROLE.to_owned());
                next.register(&spec, 0)?;
            }
            next.apply_genesis_policy(g.policy.as_deref())?;
            next.next = 1;
            next.last_time = at;
            *self = next;
            return Ok(());
        }
        // Bodies that change who may sign or decide are the history an
        // auditor needs; note them once the body applied.
        let history = event.body.is_identity_or_policy();
        match &event.body {
            Body::Genesis(_) => return Err(ApplyError::GenesisNotFirst),
            Body::PrincipalRegistered(_)
            | Body::KeyRotated { .. }
            | Body::KeyRevoked { .. }
            | Body::PrincipalUpdated(_) => {
                self.apply_identity_event(index, at, signer, &event.body)?
            }
            Body::IdentityChangeApproved { entry } => {
                self.approve_identity_change(index, at, signer, *entry)?
            }
            Body::IdentityChangeWithdrawn { entry, .. } => {
                self.withdraw_identity_change(index, signer, *entry)?
            }
            Body::Annotation { .. } => {}
            Body::CommitObserved(c) => self.apply_commit_observed(index, signer, c)?,
            Body::CiRunReported(r) => self.apply_ci_run(key, index, at, signer, r)?,
            Body::ChangeOpened(c) => self.apply_change_opened(index, at, signer, c)?,
            Body::ChangeAmended(a) => self.apply_change_amended(index, at, signer, a)?,
            Body::ChangeReviewed(r) => self.apply_change_reviewed(index, at, signer, key, r)?,
            Body::DeployRequested(d) => self.apply_deploy(index, at, signer, d)?,
            Body::BreakGlassReviewed(r) => self.apply_break_glass_review(index, at, signer, r)?,
            Body::PolicyProposed(p) => self.apply_policy_proposed(index, at, signer, p)?,
            Body::PolicyApproved { proposal_id } => {
                self.apply_policy_approved(index, at, signer, key, proposal_id.as_str())?
            }
        }
        if history {
            self.note_history(index);
        }
        self.gov.touch_subjects(&event.body, index);
        self.next = index + 1;
        self.last_time = at;
        Ok(())
    }

    /// Checks an identity body signed by `signer` and, when `commit`, applies
    /// it as entry `index`. Without `commit` nothing changes: the check of a
    /// change that waits for a second identity administrator.
    fn apply_identity(
        &mut self,
        index: u64,
        signer: &PrincipalId,
        body: &Body,
        commit: bool,
    ) -> Result<(), ApplyError> {
        match body {
            Body::PrincipalRegistered(spec) => {
                self.require(
                    signer,
                    Permission::RegisterPrincipals,
                    "register principals",
                )?;
                // Roles are granted only by those who may change roles, so
                // registration is not a second way to hand out roles.
                if !spec.roles.is_empty() {
                    self.require(
                        signer,
                        Permission::ChangeRoles,
                        "register principals with roles",
                    )?;
                }
                self.check_register(spec)?;
                if commit {
                    self.register(spec, index)?;
                }
            }
            Body::KeyRotated {
                principal,
                new_key,
                old_key,
            } => {
                if signer != principal {
                    self.require(
                        signer,
                        Permission::RegisterPrincipals,
                        "rotate another principal's key",
                    )?;
                }
                let p = self
                    .principals
                    .get(principal)
                    .ok_or_else(|| ApplyError::UnknownPrincipal(principal.to_string()))?;
                if self.key_owner.contains_key(new_key.as_bytes()) {
                    return Err(ApplyError::KeyInUse(KeyId::of(new_key).to_string()));
                }
                // Every key ever added stays in the record (its history
                // proves old signatures), so the record is bounded here.
                if p.keys.len() >= MAX_PER_PRINCIPAL {
                    return Err(ApplyError::TooMany {
                        principal: principal.to_string(),
                        what: "keys (revoked ones included)",
                        have: p.keys.len(),
                    });
                }
                if let Some(old) = old_key
                    && !p.active_keys().any(|k| k == old)
                {
                    return Err(ApplyError::KeyNotActive {
                        principal: principal.to_string(),
                        keyid: KeyId::of(old).to_string(),
                    });
                }
                if !commit {
                    return Ok(());
                }
                let p = self
                    .principals
                    .get_mut(principal)
                    .expect("looked up just above");
                if let Some(old) = old_key {
                    for k in p.keys.iter_mut().filter(|k| &k.key == old) {
                        k.revoked_at = Some(index);
                    }
                    self.revoked_keys.insert(old.to_bytes(), index);
                }
                p.keys.push(KeyRecord {
                    key: *new_key,
                    added_at: index,
                    revoked_at: None,
                });
                self.key_owner.insert(new_key.to_bytes(), principal.clone());
                self.dirty.insert(principal.clone());
            }
            Body::KeyRevoked { principal, key, .. } => {
                if signer != principal {
                    self.require(
                        signer,
                        Permission::RegisterPrincipals,
                        "revoke another principal's key",
                    )?;
                }
                let p = self
                    .principals
                    .get(principal)
                    .ok_or_else(|| ApplyError::UnknownPrincipal(principal.to_string()))?;
                if !p.active_keys().any(|k| k == key) {
                    return Err(ApplyError::KeyNotActive {
                        principal: principal.to_string(),
                        keyid: KeyId::of(key).to_string(),
                    });
                }
                self.check_not_locked_out(
                    self.gov.policy(),
                    |q| q.roles.clone(),
                    |q, k| !(q.id == *principal && k == key),
                    "revoking this key",
                )?;
                if !commit {
                    return Ok(());
                }
                let p = self
                    .principals
                    .get_mut(principal)
                    .expect("looked up just above");
                for k in p.keys.iter_mut().filter(|k| &k.key == key) {
                    k.revoked_at = Some(index);
                }
                self.revoked_keys.insert(key.to_bytes(), index);
                self.dirty.insert(principal.clone());
            }
            Body::PrincipalUpdated(u) => self.update_principal(signer, u, commit)?,
            _ => unreachable!("apply_identity is called with identity bodies only"),
        }
        Ok(())
    }

    fn update_principal(
        &mut self,
        signer: &PrincipalId,
        u: &PrincipalUpdate,
        commit: bool,
    ) -> Result<(), ApplyError> {
        let touches_roles = !u.grant_roles.is_empty() || !u.revoke_roles.is_empty();
        let touches_emails = !u.add_emails.is_empty() || !u.remove_emails.is_empty();
        if touches_roles {
            self.require(signer, Permission::ChangeRoles, "change roles")?;
            if signer == &u.principal {
                return Err(ApplyError::OwnRoles);
            }
        }
        if touches_emails {
            self.require(signer, Permission::RegisterPrincipals, "change e-mails")?;
        }
        let p = self
            .principals
            .get(&u.principal)
            .ok_or_else(|| ApplyError::UnknownPrincipal(u.principal.to_string()))?;
        let id = u.principal.to_string();
        if let Some(r) = u.grant_roles.iter().find(|r| p.roles.contains(*r)) {
            return Err(ApplyError::NothingChanged(
                id,
                format!("it already holds role {r:?}"),
            ));
        }
        if let Some(r) = u.revoke_roles.iter().find(|r| !p.roles.contains(*r)) {
            return Err(ApplyError::NothingChanged(
                id,
                format!("it does not hold role {r:?}"),
            ));
        }
        if let Some(e) = u.remove_emails.iter().find(|e| !p.emails.contains(*e)) {
            return Err(ApplyError::NothingChanged(
                id,
                format!("{e:?} is not one of its e-mails"),
            ));
        }
        for e in &u.add_emails {
            if let Some(owner) = self.emails.get(e) {
                return Err(ApplyError::EmailTaken {
                    email: e.clone(),
                    owner: owner.to_string(),
                });
            }
        }
        let new_roles: BTreeSet<String> = p
            .roles
            .union(&u.grant_roles)
            .filter(|r| !u.revoke_roles.contains(*r))
            .cloned()
            .collect();
        let new_emails = p.emails.len() + u.add_emails.len() - u.remove_emails.len();
        for (what, have, after) in [
            ("roles", p.roles.len(), new_roles.len()),
            ("e-mails", p.emails.len(), new_emails),
        ] {
            if after > MAX_PER_PRINCIPAL {
                return Err(ApplyError::TooMany {
                    principal: id,
                    what,
                    have,
                });
            }
        }
        if touches_roles {
            self.check_not_locked_out(
                self.gov.policy(),
                |q| {
                    if q.id == u.principal {
                        new_roles.clone()
                    } else {
                        q.roles.clone()
                    }
                },
                |_, _| true,
                "this role change",
            )?;
        }
        if !commit {
            return Ok(());
        }
        let p = self
            .principals
            .get_mut(&u.principal)
            .expect("looked up just above");
        p.roles = new_roles;
        for e in &u.remove_emails {
            p.emails.remove(e);
            self.emails.remove(e);
        }
        for e in &u.add_emails {
            p.emails.insert(e.clone());
            self.emails.insert(e.clone(), u.principal.clone());
        }
        self.refresh_facts(&u.principal);
        self.dirty.insert(u.principal.clone());
        Ok(())
    }

    /// Recomputes what evaluation knows of one principal.
    fn refresh_facts(&mut self, id: &PrincipalId) {
        if let Some(p) = self.principals.get(id) {
            self.facts.insert(
                id.to_string(),
                PrincipalFacts {
                    human: p.kind == PrincipalKind::Human,
                    roles: p.roles.clone(),
                },
            );
        }
    }

    /// For a new entry only (replay accepts what older logs hold): refuses
    /// a principal id that is already someone's e-mail, and an e-mail that
    /// is another principal's id. A commit's verified signer identity may
    /// be either, so such a pair would make one identity name two people
    /// (both are then excluded, see [`State::commit_people`]). The field
    /// and the reason, when refused.
    pub fn check_new_identity(&self, body: &Body) -> Result<(), (String, String)> {
        // An approval applies a waiting change now: checked as if the
        // change were appended now, against the state it would apply to.
        if let Body::IdentityChangeApproved { entry } = body {
            return match self.pending.get(entry) {
                Some(p) if p.applied.is_none() => self
                    .check_new_identity(&p.body)
                    .map_err(|(field, why)| {
                        (
                            "identity_change_approved.entry_index".to_owned(),
                            format!(
                                "the identity change at entry {entry} can no longer take effect: {field}: {why}"
                            ),
                        )
                    }),
                // Unknown or applied: the fold's own refusal names it.
                _ => Ok(()),
            };
        }
        self.check_no_keyless_identity_admin(body)?;
        let (target, emails, emails_field) = match body {
            Body::PrincipalRegistered(p) => {
                if let Some(owner) = self.emails.get(p.id.as_str()) {
                    return Err((
                        "principal_registered.principal.id".into(),
                        format!(
                            "{:?} is an e-mail of principal {owner}; a principal id may not be another principal's e-mail",
                            p.id.as_str()
                        ),
                    ));
                }
                (&p.id, &p.emails, "principal_registered.principal.emails")
            }
            Body::PrincipalUpdated(u) => {
                (&u.principal, &u.add_emails, "principal_updated.add_emails")
            }
            _ => return Ok(()),
        };
        match emails
            .iter()
            .find(|e| e.as_str() != target.as_str() && self.principal(e).is_some())
        {
            Some(e) => Err((
                emails_field.into(),
                format!(
                    "{e:?} is the id of another principal; an e-mail may not be another principal's id"
                ),
            )),
            None => Ok(()),
        }
    }

    /// For a new entry only: refuses to leave an identity administrator
    /// without an active key while another has one (by revoking its last
    /// key, or by granting the roles of one to a principal whose keys were
    /// all revoked). Such an administrator still counts for the two-person
    /// rule (ledger-format §8.2.1) but can sign nothing, so the other's
    /// identity changes would wait for it for ever; under a policy that
    /// needs it to approve policy changes too, the log could never be
    /// repaired.
    fn check_no_keyless_identity_admin(&self, body: &Body) -> Result<(), (String, String)> {
        let others_can_act = |who: &PrincipalId| {
            self.principals.values().any(|q| {
                q.id != *who && self.is_identity_admin(&q.id) && q.active_keys().next().is_some()
            })
        };
        match body {
            Body::KeyRevoked { principal, key, .. } => {
                let Some(p) = self.principals.get(principal) else {
                    return Ok(());
                };
                let last = p.active_keys().all(|k| k == key);
                if last && self.is_identity_admin(principal) && others_can_act(principal) {
                    return Err((
                        "key_revoked.public_key".into(),
                        format!(
                            "this is the last active key of {principal}, an identity administrator: without a key it could never approve the other identity administrators' changes, which would wait for it for ever (ledger-format §8.2.1); rotate to a new key instead (docket principal rotate-key), or first take away the roles that make {principal} an identity administrator"
                        ),
                    ));
                }
                Ok(())
            }
            Body::PrincipalUpdated(u) if !u.grant_roles.is_empty() => {
                let Some(p) = self.principals.get(&u.principal) else {
                    return Ok(());
                };
                let roles: BTreeSet<String> = p
                    .roles
                    .union(&u.grant_roles)
                    .filter(|r| !u.revoke_roles.contains(*r))
                    .cloned()
                    .collect();
                let policy = self.gov.policy();
                let admin_after = p.kind == PrincipalKind::Human
                    && (policy.permits(&roles, Permission::RegisterPrincipals)
                        || policy.permits(&roles, Permission::ChangeRoles));
                if admin_after
                    && p.active_keys().next().is_none()
                    && !self.is_identity_admin(&u.principal)
                    && others_can_act(&u.principal)
                {
                    return Err((
                        "principal_updated.grant_roles".into(),
                        format!(
                            "{} has no active key: granted these roles it would become an identity administrator that could never approve the others' identity changes, which would wait for it for ever (ledger-format §8.2.1); give it a key first",
                            u.principal
                        ),
                    ));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn check_register(&self, spec: &PrincipalSpec) -> Result<(), ApplyError> {
        if self.principals.contains_key(&spec.id) {
            return Err(ApplyError::PrincipalExists(spec.id.to_string()));
        }
        if spec.keys.is_empty() {
            return Err(ApplyError::NoKeys(spec.id.to_string()));
        }
        let mut seen = BTreeSet::new();
        for k in &spec.keys {
            if self.key_owner.contains_key(k.as_bytes()) || !seen.insert(k.to_bytes()) {
                return Err(ApplyError::KeyInUse(KeyId::of(k).to_string()));
            }
        }
        for e in &spec.emails {
            if let Some(owner) = self.emails.get(e) {
                return Err(ApplyError::EmailTaken {
                    email: e.clone(),
                    owner: owner.to_string(),
                });
            }
        }
        Ok(())
    }

    fn register(&mut self, spec: &PrincipalSpec, index: u64) -> Result<(), ApplyError> {
        self.check_register(spec)?;
        for k in &spec.keys {
            self.key_owner.insert(k.to_bytes(), spec.id.clone());
        }
        self.principals.insert(
            spec.id.clone(),
            PrincipalRecord {
                id: spec.id.clone(),
                kind: spec.kind,
                display_name: spec.display_name.clone(),
                roles: spec.roles.clone(),
                keys: spec
                    .keys
                    .iter()
                    .map(|k| KeyRecord {
                        key: *k,
                        added_at: index,
                        revoked_at: None,
                    })
                    .collect(),
                registered_at: index,
                emails: spec.emails.clone(),
            },
        );
        for e in &spec.emails {
            self.emails.insert(e.clone(), spec.id.clone());
        }
        self.refresh_facts(&spec.id);
        self.dirty.insert(spec.id.clone());
        Ok(())
    }

    /// The key/value writes that persist everything changed since the last
    /// call, including the applied index. Keys and values are deterministic.
    pub fn take_changes(&mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::with_capacity(self.dirty.len() + 2);
        for id in std::mem::take(&mut self.dirty) {
            let rec = &self.principals[&id];
            out.push((principal_key(&id), encode_principal(rec)));
        }
        if std::mem::take(&mut self.genesis_dirty)
            && let Some(g) = &self.genesis
        {
            out.push((b"m/genesis".to_vec(), codec::encode_genesis(g)));
            out.push((b"m/format".to_vec(), STATE_FORMAT.to_be_bytes().to_vec()));
        }
        self.gov.take_changes(&mut out);
        self.take_pending_changes(&mut out);
        out.push((b"m/next".to_vec(), self.next.to_be_bytes().to_vec()));
        out.push((b"m/time".to_vec(), self.last_time.to_be_bytes().to_vec()));
        out
    }

    /// The format a persisted state tree declares (`None` before format 2).
    pub fn stored_format(pairs: &[(Vec<u8>, Vec<u8>)]) -> Option<u32> {
        pairs
            .iter()
            .find(|(k, _)| k == b"m/format")
            .and_then(|(_, v)| v.as_slice().try_into().ok().map(u32::from_be_bytes))
    }

    /// Rebuilds the in-memory state from persisted key/value pairs.
    pub fn load<I>(pairs: I) -> Result<State, StateCodecError>
    where
        I: IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    {
        let mut s = State::new();
        let mut has_time = false;
        for (k, v) in pairs {
            if k == b"m/next" {
                let arr: [u8; 8] = v
                    .as_slice()
                    .try_into()
                    .map_err(|_| StateCodecError::Truncated("m/next"))?;
                s.next = u64::from_be_bytes(arr);
            } else if k == b"m/time" {
                has_time = true;
                let arr: [u8; 8] = v
                    .as_slice()
                    .try_into()
                    .map_err(|_| StateCodecError::Truncated("m/time"))?;
                s.last_time = i64::from_be_bytes(arr);
            } else if k == b"m/genesis" {
                s.genesis = Some(codec::decode_genesis(&v)?);
            } else if k == b"m/format" {
                if v.as_slice() != STATE_FORMAT.to_be_bytes() {
                    return Err(StateCodecError::Invalid("format"));
                }
            } else if k.starts_with(b"p/") {
                let rec = decode_principal(&v)?;
                for kr in &rec.keys {
                    s.key_owner.insert(kr.key.to_bytes(), rec.id.clone());
                    if let Some(at) = kr.revoked_at {
                        s.revoked_keys.insert(kr.key.to_bytes(), at);
                    }
                }
                for e in &rec.emails {
                    s.emails.insert(e.clone(), rec.id.clone());
                }
                let id = rec.id.clone();
                s.principals.insert(id.clone(), rec);
                s.refresh_facts(&id);
            } else if !s.load_pending(&k, &v)? && !s.gov.load_pair(&k, &v)? {
                return Err(StateCodecError::UnknownKey(
                    String::from_utf8_lossy(&k).into_owned(),
                ));
            }
        }
        if s.next > 0 && !has_time {
            return Err(StateCodecError::Truncated("m/time"));
        }
        s.gov.finish_load()?;
        Ok(s)
    }
}

fn principal_key(id: &PrincipalId) -> Vec<u8> {
    let mut k = b"p/".to_vec();
    k.extend_from_slice(id.as_str().as_bytes());
    k
}

#[cfg(test)]
mod tests;
