//! The governance projection: policies and proposals, changes and their
//! reviews, commits, CI runs, recorded deployments with their decisions, and
//! break-glass obligations. Folded from the log like the identity state, and
//! the source of every [`DecisionRecord`].
//!
//! Records are persisted with postcard under these keys of the `state` tree
//! (integers big-endian):
//! - `v/` u64 version → [`PolicyVersionRec`]
//! - `q/` proposal id → [`ProposalRec`]
//! - `c/` change id → [`ChangeRec`]
//! - `g/` commit sha → [`CommitRec`]
//! - `r/` u64 index → [`CiRec`]
//! - `x/` u64 index → [`DeployRec`] (with its decision)
//! - `o/` u64 index → [`ObligationRec`]
//! - `h/` u64 index → empty: an identity or policy entry (for evidence export)
//!
//! The indexes by subject and by e-mail, the parsed active policy and the
//! principals' facts are derived from those records when the state is loaded.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};

use ed25519_dalek::VerifyingKey;
use foldhash::HashMap;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{ApplyError, State, StateCodecError, heads};
use crate::event::{
    Body, BreakGlassReview, ChangeAmendment, ChangeOpening, ChangeReview, CiRun, CiStatus,
    CommitObservation, DeployRequest, Event, PolicyProposal, PrincipalId, PrincipalKind,
    SignatureVerdict,
};
use crate::policy::{self, Permission, Policy};

// === persisted records ===

/// A policy version that was in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyVersionRec {
    pub version: u64,
    pub text: String,
    /// BLAKE3 of the text, hex.
    pub digest: String,
    /// The entry that activated it (0 for the genesis policy).
    pub activated_at: u64,
    pub proposal_id: String,
    pub approvers: Vec<String>,
}

/// A policy proposal and who approved it so far.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalRec {
    pub id: String,
    pub proposer: String,
    pub text: String,
    pub digest: String,
    pub base_version: u64,
    pub description: String,
    pub index: u64,
    /// The proposal entry's integrated time: an expiry runs from it.
    pub at_nanos: i64,
    /// Approvers, the entries that recorded their approvals, and the keys
    /// that signed them. An approval whose key was revoked or rotated away
    /// since no longer stops its approver from approving again, and a new
    /// approval may not activate the proposal by counting it
    /// ([`State::check_policy_approval`]); the fold counts every one.
    pub approvals: Vec<(String, u64, [u8; 32])>,
    /// The version it became, once active.
    pub activated_as: Option<u64>,
}

/// One revision of a change: what it bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionRec {
    pub index: u64,
    pub at_nanos: i64,
    pub by: String,
    pub commits: BTreeSet<String>,
    pub digests: BTreeSet<String>,
    pub environments: BTreeSet<String>,
    pub reason: String,
    /// `SubjectsKey::of(&self.subjects())`, kept so that a decision does
    /// not hash the subjects again to tell which reviews saw them.
    pub subjects_key: policy::SubjectsKey,
}

impl RevisionRec {
    /// Commits and digests together.
    pub fn subjects(&self) -> BTreeSet<String> {
        self.commits.union(&self.digests).cloned().collect()
    }
}

/// The key of a revision binding `commits` and `digests`.
fn revision_key(commits: &BTreeSet<String>, digests: &BTreeSet<String>) -> policy::SubjectsKey {
    policy::SubjectsKey::of(&commits.union(digests).collect::<BTreeSet<&String>>())
}

/// An approval or rejection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewRec {
    pub index: u64,
    pub at_nanos: i64,
    pub reviewer: String,
    pub seen: BTreeSet<String>,
    /// `SubjectsKey::of(&seen)`, kept so decisions compare keys, not sets.
    pub seen_key: policy::SubjectsKey,
    pub approve: bool,
    pub comment: String,
    /// The key that signed it: once that key is revoked or rotated away,
    /// the review no longer speaks for its reviewer.
    pub key: [u8; 32],
}

/// A change with its revisions, reviews and deployments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRec {
    pub id: String,
    pub title: String,
    pub repository: String,
    pub ticket: String,
    pub description: String,
    /// The opener, then everyone who amended it (each once).
    pub requesters: Vec<String>,
    /// Never empty: revision n is `revisions[n-1]`.
    pub revisions: Vec<RevisionRec>,
    pub reviews: Vec<ReviewRec>,
    /// DeployRequested entries that named or resolved to it.
    pub deployments: Vec<u64>,
    /// Its change head (ledger-format §6.5).
    pub head: Head,
}

/// A change's number in the order of opening (ledger-format §6.5), or a
/// subject's in the order the fold met it (§6.6), and how many entries
/// concern it with the chain over their indices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub number: u64,
    pub count: u64,
    pub chain: [u8; 32],
}

impl ChangeRec {
    /// The current revision.
    pub fn current(&self) -> &RevisionRec {
        // Opening a change creates its first revision; none is ever removed.
        self.revisions.last().expect("a change has a revision")
    }
}

/// A git identity line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonRec {
    pub name: String,
    pub email: String,
    pub time: i64,
}

/// What the fold keeps of a commit (the raw object stays in the log).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRec {
    pub sha: String,
    pub index: u64,
    pub repository: String,
    pub parents: Vec<String>,
    pub author: PersonRec,
    pub committer: PersonRec,
    pub summary: String,
    /// `SignatureVerdict::name()`.
    pub signature: String,
    pub signer_identity: String,
    pub changed_files: u32,
}

/// One identity a commit speaks for (`State::commit_people`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitPerson<'a> {
    /// `author`, `committer` or `signer`.
    pub role: &'static str,
    /// The e-mail, or the verified signer identity.
    pub identity: &'a str,
    /// The principal it maps to, if any.
    pub principal: Option<&'a str>,
}

/// A CI run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CiRec {
    pub index: u64,
    pub at_nanos: i64,
    pub builder: String,
    pub passed: bool,
    pub status: String,
    pub repository: String,
    pub commit: String,
    pub digests: BTreeSet<String>,
    pub provider: String,
    pub pipeline: String,
    pub run_id: String,
    pub url: String,
    /// The key that signed it: once that key is revoked or rotated away,
    /// the run no longer speaks for its reporter (as a review does not).
    pub key: [u8; 32],
}

impl CiRec {
    fn describe(&self) -> String {
        let run = if self.run_id.is_empty() {
            "a run".to_owned()
        } else {
            format!("run {}", self.run_id)
        };
        let via = if self.pipeline.is_empty() && self.provider.is_empty() {
            String::new()
        } else {
            format!(" of {} {}", self.provider, self.pipeline)
                .trim_end()
                .to_owned()
        };
        format!("{run}{via} {} at entry {}", self.status, self.index)
    }
}

/// An approval that counted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountedRec {
    pub approver: String,
    pub roles: String,
    pub index: u64,
}

/// A review that did not count.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotCountedRec {
    pub approver: String,
    pub reason: String,
    pub index: u64,
}

/// An obligation a decision opened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObligationDue {
    pub description: String,
    pub due_nanos: i64,
    pub not_by: String,
}

/// A decision: the verdict with the policy version and facts it used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub allow: bool,
    pub rule: Option<String>,
    pub reasons: Vec<String>,
    pub counted: Vec<CountedRec>,
    pub not_counted: Vec<NotCountedRec>,
    pub obligations: Vec<ObligationDue>,
    pub policy_version: u64,
    pub policy_digest: String,
    /// The change considered and its revision.
    pub change: Option<(String, u32)>,
    /// Entries folded into the state that decided (for a recorded
    /// deployment: its own index).
    pub log_size: u64,
    pub at_nanos: i64,
}

/// A recorded deployment and its decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployRec {
    pub index: u64,
    pub actor: String,
    pub action: String,
    pub environment: String,
    pub repository: Option<String>,
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub subjects: BTreeSet<String>,
    pub break_glass: bool,
    pub justification: String,
    pub decision: DecisionRecord,
}

/// The review of a break-glass deployment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakGlassReviewRec {
    pub index: u64,
    pub at_nanos: i64,
    pub reviewer: String,
    pub justified: bool,
    pub comment: String,
}

/// A break-glass review obligation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObligationRec {
    pub deployment_index: u64,
    pub actor: String,
    pub environment: String,
    pub subjects: BTreeSet<String>,
    pub justification: String,
    pub opened_nanos: i64,
    pub due_nanos: i64,
    pub review: Option<BreakGlassReviewRec>,
}

/// Where an obligation stands at some time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObligationStatus {
    Open,
    Overdue,
    Closed,
    ClosedLate,
}

impl ObligationStatus {
    /// As the CLI and reports spell it.
    pub fn name(self) -> &'static str {
        match self {
            ObligationStatus::Open => "open",
            ObligationStatus::Overdue => "overdue",
            ObligationStatus::Closed => "closed",
            ObligationStatus::ClosedLate => "closed-late",
        }
    }
}

impl ObligationRec {
    /// Its status at `now` (Unix nanoseconds). A review after `now` is
    /// not yet known then.
    pub fn status(&self, now: i64) -> ObligationStatus {
        match &self.review {
            Some(r) if r.at_nanos <= now => {
                if r.at_nanos <= self.due_nanos {
                    ObligationStatus::Closed
                } else {
                    ObligationStatus::ClosedLate
                }
            }
            _ if now > self.due_nanos => ObligationStatus::Overdue,
            _ => ObligationStatus::Open,
        }
    }
}

/// A violation: something a policy demanded that did not happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// `overdue-review`, `late-review` or `unjustified-break-glass`.
    pub kind: &'static str,
    pub index: u64,
    pub description: String,
    pub at_nanos: i64,
}

/// Violations among `obligations` at `now`.
pub fn violations<'a>(
    obligations: impl IntoIterator<Item = &'a ObligationRec>,
    now: i64,
) -> Vec<Violation> {
    let mut out = Vec::new();
    for o in obligations {
        let what = format!(
            "break-glass {} to {} by {} (entry {})",
            if o.subjects.len() == 1 {
                "deployment"
            } else {
                "deployments"
            },
            o.environment,
            o.actor,
            o.deployment_index
        );
        match o.status(now) {
            ObligationStatus::Overdue => out.push(Violation {
                kind: "overdue-review",
                index: o.deployment_index,
                description: format!(
                    "{what}: no review by someone else; it was due {}",
                    fmt_nanos(o.due_nanos)
                ),
                at_nanos: o.due_nanos,
            }),
            ObligationStatus::ClosedLate => {
                let r = o.review.as_ref().expect("closed means reviewed");
                out.push(Violation {
                    kind: "late-review",
                    index: o.deployment_index,
                    description: format!(
                        "{what}: reviewed by {} at {}, after the deadline {}",
                        r.reviewer,
                        fmt_nanos(r.at_nanos),
                        fmt_nanos(o.due_nanos)
                    ),
                    at_nanos: r.at_nanos,
                });
            }
            ObligationStatus::Open | ObligationStatus::Closed => {}
        }
        if let Some(r) = o
            .review
            .as_ref()
            .filter(|r| r.at_nanos <= now && !r.justified)
        {
            out.push(Violation {
                kind: "unjustified-break-glass",
                index: o.deployment_index,
                description: format!(
                    "{what}: {} found it unjustified (entry {}): {}",
                    r.reviewer, r.index, r.comment
                ),
                at_nanos: r.at_nanos,
            });
        }
    }
    out
}

/// RFC 3339 text of a Unix-nanosecond time.
pub fn fmt_nanos(n: i64) -> String {
    Timestamp::from_nanosecond(i128::from(n))
        .map(|t| t.to_string())
        .unwrap_or_else(|_| n.to_string())
}

fn ts(nanos: i64) -> Timestamp {
    // Every i64 nanosecond count is within jiff's range. Split with i64
    // arithmetic (both parts take the sign of `nanos`, which `new` accepts):
    // `from_nanosecond`'s i128 division was a visible part of a decision.
    Timestamp::new(nanos / 1_000_000_000, (nanos % 1_000_000_000) as i32)
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

fn digest_hex(text: &str) -> String {
    hex::encode(crate::crypto::blake3_256(text.as_bytes()))
}

static DEFAULT: LazyLock<Arc<Policy>> = LazyLock::new(|| {
    // A unit test parses DEFAULT_POLICY, so this cannot fail in a build that passed its tests.
    Arc::new(Policy::parse(policy::DEFAULT_POLICY).expect("the built-in default policy parses"))
});

// === the projection ===

/// What changed since the last `take_changes`, by record key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Dirty {
    policies: BTreeSet<u64>,
    proposals: BTreeSet<String>,
    changes: BTreeSet<String>,
    commits: BTreeSet<String>,
    subjects: BTreeSet<String>,
    ci: BTreeSet<u64>,
    deploys: BTreeSet<u64>,
    obligations: BTreeSet<u64>,
    history: BTreeSet<u64>,
}

/// The facts of each change as decisions read them ([`State::decide`]),
/// kept from one decision to the next. They depend on the state alone, and
/// building them (the commits behind a change's artifacts, their authors,
/// each subject's CI runs) is much of a decision's work. [`State::apply`],
/// the only way the state changes, empties it before and after each step,
/// so what it holds is always of the state as it is. It is not part of the
/// state's value: a clone starts empty, and equality ignores it.
#[derive(Default)]
pub struct FactsCache(Mutex<HashMap<String, Arc<policy::ChangeFacts<'static>>>>);

type FactsMap = HashMap<String, Arc<policy::ChangeFacts<'static>>>;

impl FactsCache {
    /// At most this many changes are kept; a cache that is full starts over.
    const CAPACITY: usize = 16_384;

    fn map(&self) -> MutexGuard<'_, FactsMap> {
        // Nothing is left half-done under the lock: a panic while holding it
        // (there is none to expect) leaves a map that is still whole.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn clear(&mut self) {
        let map = self.0.get_mut().unwrap_or_else(PoisonError::into_inner);
        if !map.is_empty() {
            map.clear();
        }
    }

    /// The facts kept for change `id`, or `build`'s, then kept. Built
    /// outside the lock: two decisions about the same change may both
    /// build them, and the second's are kept, equal to the first's.
    fn get_or_build(
        &self,
        id: &str,
        build: impl FnOnce() -> policy::ChangeFacts<'static>,
    ) -> Arc<policy::ChangeFacts<'static>> {
        if let Some(f) = self.map().get(id) {
            return Arc::clone(f);
        }
        let f = Arc::new(build());
        let mut map = self.map();
        if map.len() >= Self::CAPACITY {
            map.clear();
        }
        map.insert(id.to_owned(), Arc::clone(&f));
        f
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map().len()
    }
}

impl Clone for FactsCache {
    fn clone(&self) -> Self {
        FactsCache::default()
    }
}

impl PartialEq for FactsCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for FactsCache {}

impl std::fmt::Debug for FactsCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FactsCache({} changes)", self.map().len())
    }
}

/// The governance part of [`State`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Gov {
    policies: Vec<PolicyVersionRec>,
    active: Option<Arc<Policy>>,
    proposals: BTreeMap<String, ProposalRec>,
    /// Hashed, not ordered: Authorize looks changes up by id on every call,
    /// and an ordered map of 10,000 ids costs a cache miss per comparison.
    changes: HashMap<String, ChangeRec>,
    commits: HashMap<String, CommitRec>,
    ci: BTreeMap<u64, CiRec>,
    deploys: BTreeMap<u64, DeployRec>,
    obligations: BTreeMap<u64, ObligationRec>,
    history: BTreeSet<u64>,
    // Derived from the records above (rebuilt by `load`).
    by_subject: HashMap<String, BTreeSet<String>>,
    /// Subject → every change any revision of which bound it.
    ever_bound: HashMap<String, BTreeSet<String>>,
    ci_by_subject: HashMap<String, Vec<u64>>,
    /// Subject → every deployment request naming it, allowed or denied.
    requested: HashMap<String, Vec<u64>>,
    /// The change-heads tree over `changes` (ledger-format §6.5).
    heads: super::heads::HeadTree,
    /// Every subject some entry concerns, with its head (ledger-format §6.6).
    subject_heads: HashMap<String, Head>,
    /// The subject-heads tree over `subject_heads`.
    subject_tree: super::heads::HeadTree,
    /// The fold of an evidence bundle: it keeps each change's and
    /// subject's chain, which the verifier checks, but no trees (its
    /// changes and subjects are not all the log's, so their numbers and
    /// roots mean nothing).
    sparse: bool,
    dirty: Dirty,
}

fn be(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

fn rec_key(prefix: &[u8], id: &[u8]) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(id);
    k
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialising plain structs of strings, integers and collections into a
    // Vec cannot fail.
    postcard::to_stdvec(v).expect("postcard encodes state records")
}

fn decode<'a, T: Deserialize<'a>>(b: &'a [u8], what: &'static str) -> Result<T, StateCodecError> {
    postcard::from_bytes(b).map_err(|_| StateCodecError::Invalid(what))
}

fn key_u64(k: &[u8], what: &'static str) -> Result<u64, StateCodecError> {
    let arr: [u8; 8] = k
        .get(2..)
        .and_then(|s| s.try_into().ok())
        .ok_or(StateCodecError::Invalid(what))?;
    Ok(u64::from_be_bytes(arr))
}

impl Gov {
    /// The governance part of a sparse fold (`State::sparse`).
    pub(super) fn sparse() -> Self {
        Gov {
            sparse: true,
            ..Gov::default()
        }
    }

    /// When proposal `p` stops waiting under the policy in force
    /// (`[policy_changes] expire_after`), if it ever does.
    pub fn proposal_expires_at(&self, p: &ProposalRec) -> Option<i64> {
        self.policy()
            .policy_changes
            .expire_after_secs
            .map(|secs| super::expiry_of(p.at_nanos, secs))
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        self.active.as_deref().unwrap_or(&DEFAULT)
    }

    /// The record of the policy in force (none before genesis).
    pub fn active_version(&self) -> Option<&PolicyVersionRec> {
        self.policies.last()
    }

    /// Every policy version, oldest first.
    pub fn policy_versions(&self) -> &[PolicyVersionRec] {
        &self.policies
    }

    pub fn proposals(&self) -> impl Iterator<Item = &ProposalRec> {
        self.proposals.values()
    }

    pub fn change(&self, id: &str) -> Option<&ChangeRec> {
        self.changes.get(id)
    }

    /// Every change, in id order.
    pub fn changes(&self) -> impl Iterator<Item = &ChangeRec> {
        let mut all: Vec<&ChangeRec> = self.changes.values().collect();
        all.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        all.into_iter()
    }

    pub fn change_count(&self) -> usize {
        self.changes.len()
    }

    pub fn commit(&self, sha: &str) -> Option<&CommitRec> {
        self.commits.get(sha)
    }

    pub fn ci_run(&self, index: u64) -> Option<&CiRec> {
        self.ci.get(&index)
    }

    /// CI runs that mention `subject`, oldest first.
    pub fn ci_runs_for(&self, subject: &str) -> impl Iterator<Item = &CiRec> {
        self.ci_by_subject
            .get(subject)
            .into_iter()
            .flatten()
            .filter_map(|i| self.ci.get(i))
    }

    pub fn deployment(&self, index: u64) -> Option<&DeployRec> {
        self.deploys.get(&index)
    }

    pub fn deployments(&self) -> impl Iterator<Item = &DeployRec> {
        self.deploys.values()
    }

    /// Every deployment request naming `subject`, allowed or denied, oldest
    /// first.
    pub fn requests_of(&self, subject: &str) -> impl Iterator<Item = &DeployRec> {
        self.requested
            .get(subject)
            .into_iter()
            .flatten()
            .filter_map(|i| self.deploys.get(i))
    }

    /// The allowed deployments of `subject`, oldest first.
    pub fn deployments_of(&self, subject: &str) -> impl Iterator<Item = &DeployRec> {
        self.requests_of(subject).filter(|d| d.decision.allow)
    }

    pub fn obligation(&self, index: u64) -> Option<&ObligationRec> {
        self.obligations.get(&index)
    }

    pub fn obligations(&self) -> impl Iterator<Item = &ObligationRec> {
        self.obligations.values()
    }

    /// Identity and policy entries, in index order.
    pub fn history(&self) -> &BTreeSet<u64> {
        &self.history
    }

    /// Changes any revision of which bound `subject`.
    pub fn changes_ever_binding(&self, subject: &str) -> impl Iterator<Item = &ChangeRec> {
        self.ever_bound
            .get(subject)
            .into_iter()
            .flatten()
            .filter_map(|id| self.changes.get(id))
    }

    /// How many entries concern the change `id` (ledger-format §4.4): the
    /// entries that opened, amended and reviewed it. In a sparse fold,
    /// those among the entries folded.
    pub fn change_entry_count(&self, id: &str) -> u64 {
        self.changes
            .get(id)
            .map_or(0, |c| (c.revisions.len() + c.reviews.len()) as u64)
    }

    /// How many entries concern the subject `s` (ledger-format §4.4): its
    /// commit observation, the CI runs that name it, the change openings
    /// and amendments whose revision binds it, and the deployment requests
    /// that name it, allowed or denied (so the count does not rest on
    /// verdicts a holder of some entries would have to re-derive). In a sparse fold, those among the entries folded.
    pub fn subject_entry_count(&self, s: &str) -> u64 {
        let commit = usize::from(self.commits.contains_key(s));
        // A run that names the subject twice is one entry; the list is in
        // index order.
        let ci = self.ci_by_subject.get(s).map_or(0, |runs| {
            runs.iter()
                .enumerate()
                .filter(|(n, i)| *n == 0 || runs[n - 1] != **i)
                .count()
        });
        let requested = self.requested.get(s).map_or(0, Vec::len);
        let bound: usize = self
            .changes_ever_binding(s)
            .map(|c| {
                c.revisions
                    .iter()
                    .filter(|r| r.commits.iter().chain(&r.digests).any(|x| x == s))
                    .count()
            })
            .sum();
        (commit + ci + requested + bound) as u64
    }

    /// Changes whose current revision binds `subject`.
    pub fn changes_binding(&self, subject: &str) -> impl Iterator<Item = &ChangeRec> {
        self.by_subject
            .get(subject)
            .into_iter()
            .flatten()
            .filter_map(|id| self.changes.get(id))
    }

    fn index_change(&mut self, id: &str, old: Option<BTreeSet<String>>) {
        if let Some(old) = old {
            for s in old {
                if let Some(set) = self.by_subject.get_mut(&s) {
                    set.remove(id);
                    if set.is_empty() {
                        self.by_subject.remove(&s);
                    }
                }
            }
        }
        if let Some(c) = self.changes.get(id) {
            for s in c.current().subjects() {
                self.by_subject
                    .entry(s.clone())
                    .or_default()
                    .insert(id.to_owned());
                self.ever_bound.entry(s).or_default().insert(id.to_owned());
            }
        }
    }

    /// Entry `index` concerns change `id`: the next link of its head's
    /// chain, and its leaf in the tree (ledger-format §6.5).
    fn touch(&mut self, id: &str, index: u64) {
        if let Some(c) = self.changes.get_mut(id) {
            c.head.count += 1;
            c.head.chain = heads::chain_step(&c.head.chain, index);
            if !self.sparse {
                let leaf = heads::leaf_hash(id, c.head.count, &c.head.chain);
                self.heads.set(c.head.number, leaf);
            }
            self.dirty.changes.insert(id.to_owned());
        }
    }

    /// Entry `index` concerns subject `s` (ledger-format §6.6): the next
    /// link of its head's chain, and its leaf in the tree, which a subject
    /// no entry concerned before joins at the end.
    fn touch_subject(&mut self, s: &str, index: u64) {
        if !self.subject_heads.contains_key(s) {
            let number = self.subject_heads.len() as u64;
            let head = Head {
                number,
                count: 0,
                chain: heads::EMPTY_CHAIN,
            };
            self.subject_heads.insert(s.to_owned(), head);
        }
        let Some(head) = self.subject_heads.get_mut(s) else {
            return;
        };
        head.count += 1;
        head.chain = heads::chain_step(&head.chain, index);
        if !self.sparse {
            let leaf = heads::leaf_hash(s, head.count, &head.chain);
            if head.number == self.subject_tree.len() {
                self.subject_tree.push(leaf);
            } else {
                self.subject_tree.set(head.number, leaf);
            }
        }
        self.dirty.subjects.insert(s.to_owned());
    }

    /// Entry `index`, just applied, concerns the subjects its payload names
    /// (ledger-format §4.4), and a break-glass review those of the
    /// deployment it reviews (§6.6): each once, in ascending order, so that
    /// subjects it is the first to concern are numbered in that order.
    pub(super) fn touch_subjects(&mut self, body: &Body, index: u64) {
        let mut named: BTreeSet<&str> = BTreeSet::new();
        let reviewed: Vec<String>;
        match body {
            Body::BreakGlassReviewed(r) => {
                // The fold applied it, so the deployment exists.
                reviewed = self
                    .deploys
                    .get(&r.deployment_index)
                    .map(|d| d.subjects.iter().cloned().collect())
                    .unwrap_or_default();
                named.extend(reviewed.iter().map(String::as_str));
            }
            Body::CommitObserved(c) => {
                named.insert(&c.sha);
            }
            Body::CiRunReported(r) => {
                named.insert(&r.commit);
                named.extend(r.artifact_digests.iter().map(String::as_str));
            }
            Body::ChangeOpened(c) => {
                named.extend(
                    c.commits
                        .iter()
                        .chain(&c.artifact_digests)
                        .map(String::as_str),
                );
            }
            Body::ChangeAmended(a) => {
                named.extend(
                    a.commits
                        .iter()
                        .chain(&a.artifact_digests)
                        .map(String::as_str),
                );
            }
            Body::DeployRequested(d) => named.extend(d.subjects.iter().map(String::as_str)),
            _ => {}
        }
        for s in named {
            self.touch_subject(s, index);
        }
    }

    /// The change and subject heads a checkpoint of this state signs
    /// (ledger-format §6.5, §6.6).
    pub fn heads(&self) -> crate::ledger::Heads {
        crate::ledger::Heads {
            changes: crate::ledger::HeadsRoot {
                size: self.heads.len(),
                root: self.heads.root(),
            },
            subjects: crate::ledger::HeadsRoot {
                size: self.subject_tree.len(),
                root: self.subject_tree.root(),
            },
        }
    }

    /// The head of subject `s`, if an entry concerns it.
    pub fn subject_head(&self, s: &str) -> Option<&Head> {
        self.subject_heads.get(s)
    }

    /// The subject head proof of `s`, if an entry concerns it (never in a
    /// sparse fold, which keeps no tree).
    pub fn subject_head_proof(&self, s: &str) -> Option<heads::HeadProof> {
        self.subject_tree.proof(self.subject_heads.get(s)?.number)
    }

    /// The change head proof of change `id`, if it exists (never in a
    /// sparse fold, which keeps no tree).
    pub fn change_head_proof(&self, id: &str) -> Option<heads::HeadProof> {
        self.heads.proof(self.changes.get(id)?.head.number)
    }

    fn index_ci(&mut self, r: &CiRec) {
        for s in std::iter::once(&r.commit).chain(&r.digests) {
            self.ci_by_subject
                .entry(s.clone())
                .or_default()
                .push(r.index);
        }
    }

    fn index_deploy(&mut self, d: &DeployRec) {
        for s in &d.subjects {
            self.requested.entry(s.clone()).or_default().push(d.index);
        }
    }

    fn set_active(&mut self) -> Result<(), StateCodecError> {
        self.active = match self.policies.last() {
            Some(v) => Some(Arc::new(
                Policy::parse(&v.text).map_err(|_| StateCodecError::Invalid("policy text"))?,
            )),
            None => None,
        };
        Ok(())
    }

    /// Key/value writes for every record changed since the last call.
    pub(super) fn take_changes(&mut self, out: &mut Vec<(Vec<u8>, Vec<u8>)>) {
        let d = std::mem::take(&mut self.dirty);
        for v in d.policies {
            let rec = &self.policies[(v - 1) as usize];
            out.push((rec_key(b"v/", &be(v)), encode(rec)));
        }
        for id in d.proposals {
            out.push((rec_key(b"q/", id.as_bytes()), encode(&self.proposals[&id])));
        }
        for id in d.changes {
            out.push((rec_key(b"c/", id.as_bytes()), encode(&self.changes[&id])));
        }
        for sha in d.commits {
            out.push((rec_key(b"g/", sha.as_bytes()), encode(&self.commits[&sha])));
        }
        for s in d.subjects {
            out.push((
                rec_key(b"s/", s.as_bytes()),
                encode(&self.subject_heads[&s]),
            ));
        }
        for i in d.ci {
            out.push((rec_key(b"r/", &be(i)), encode(&self.ci[&i])));
        }
        for i in d.deploys {
            out.push((rec_key(b"x/", &be(i)), encode(&self.deploys[&i])));
        }
        for i in d.obligations {
            out.push((rec_key(b"o/", &be(i)), encode(&self.obligations[&i])));
        }
        for i in d.history {
            out.push((rec_key(b"h/", &be(i)), Vec::new()));
        }
    }

    /// Loads one persisted pair; `Ok(false)` when the key is not governance's.
    pub(super) fn load_pair(&mut self, k: &[u8], v: &[u8]) -> Result<bool, StateCodecError> {
        match k.get(..2) {
            Some(b"v/") => {
                let rec: PolicyVersionRec = decode(v, "policy version")?;
                if rec.version != self.policies.len() as u64 + 1 {
                    return Err(StateCodecError::Invalid("policy version order"));
                }
                self.policies.push(rec);
            }
            Some(b"q/") => {
                let rec: ProposalRec = decode(v, "proposal")?;
                self.proposals.insert(rec.id.clone(), rec);
            }
            Some(b"c/") => {
                let rec: ChangeRec = decode(v, "change")?;
                if rec.revisions.is_empty() {
                    return Err(StateCodecError::Invalid("change without a revision"));
                }
                self.changes.insert(rec.id.clone(), rec);
            }
            Some(b"g/") => {
                let rec: CommitRec = decode(v, "commit")?;
                self.commits.insert(rec.sha.clone(), rec);
            }
            Some(b"s/") => {
                let head: Head = decode(v, "subject head")?;
                let s = std::str::from_utf8(&k[2..])
                    .map_err(|_| StateCodecError::Invalid("subject head key"))?;
                self.subject_heads.insert(s.to_owned(), head);
            }
            Some(b"r/") => {
                let rec: CiRec = decode(v, "ci run")?;
                self.ci.insert(key_u64(k, "ci run key")?, rec);
            }
            Some(b"x/") => {
                let rec: DeployRec = decode(v, "deployment")?;
                self.deploys.insert(key_u64(k, "deployment key")?, rec);
            }
            Some(b"o/") => {
                let rec: ObligationRec = decode(v, "obligation")?;
                self.obligations.insert(key_u64(k, "obligation key")?, rec);
            }
            Some(b"h/") => {
                self.history.insert(key_u64(k, "history key")?);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Rebuilds the derived indexes after loading.
    pub(super) fn finish_load(&mut self) -> Result<(), StateCodecError> {
        self.set_active()?;
        self.heads = head_tree(
            self.changes.iter().map(|(id, c)| (id.as_str(), &c.head)),
            "change numbers",
        )?;
        self.subject_tree = head_tree(
            self.subject_heads.iter().map(|(s, h)| (s.as_str(), h)),
            "subject numbers",
        )?;
        let ids: Vec<String> = self.changes.keys().cloned().collect();
        for id in ids {
            self.index_change(&id, None);
            for r in &self.changes[&id].revisions {
                for s in r.subjects() {
                    self.ever_bound.entry(s).or_default().insert(id.clone());
                }
            }
        }
        let runs: Vec<CiRec> = self.ci.values().cloned().collect();
        for r in &runs {
            self.index_ci(r);
        }
        let deploys: Vec<DeployRec> = self.deploys.values().cloned().collect();
        for d in &deploys {
            self.index_deploy(d);
        }
        Ok(())
    }
}

/// The heads tree over `heads`, whose numbers must be 0, 1, 2, … once each.
fn head_tree<'a>(
    heads: impl Iterator<Item = (&'a str, &'a Head)>,
    what: &'static str,
) -> Result<heads::HeadTree, StateCodecError> {
    let mut leaves: Vec<(u64, [u8; 32])> = heads
        .map(|(key, h)| (h.number, heads::leaf_hash(key, h.count, &h.chain)))
        .collect();
    leaves.sort_unstable_by_key(|(n, _)| *n);
    let mut tree = heads::HeadTree::default();
    for (expected, (n, leaf)) in leaves.into_iter().enumerate() {
        if n != expected as u64 {
            return Err(StateCodecError::Invalid(what));
        }
        tree.push(leaf);
    }
    Ok(tree)
}

// === rules and decisions ===

impl State {
    /// The governance projection.
    pub fn gov(&self) -> &Gov {
        &self.gov
    }

    /// How many identity and policy entries the fold has applied: the
    /// history count a version-2 entry records (ledger-format §4.3). In a
    /// sparse fold, those among the entries folded.
    pub fn history_count(&self) -> u64 {
        self.gov.history.len() as u64
    }

    /// The decision basis `event` gets if it is the next entry
    /// (ledger-format §4.4): for a deployment request, every change and
    /// subject its decision can read, with how many entries before it
    /// concern each; empty for any other event. Keys ascend: `change:` sorts
    /// before `subject:`.
    pub fn basis_for(&self, event: &Event) -> Vec<(String, u64)> {
        let Body::DeployRequested(d) = &event.body else {
            return Vec::new();
        };
        let mut changes: BTreeSet<&str> = BTreeSet::new();
        let mut subjects: BTreeSet<&str> = BTreeSet::new();
        for s in &d.subjects {
            subjects.insert(s);
            // Any change that ever bound a requested subject could be the
            // one `resolve_change` picks, or have stopped binding it.
            changes.extend(self.gov.changes_ever_binding(s).map(|c| c.id.as_str()));
        }
        let considered = match &d.change_id {
            Some(id) => {
                changes.insert(id.as_str());
                self.gov.changes.get(id.as_str())
            }
            None => self.resolve_change(&d.subjects, &d.environment),
        };
        if let Some(c) = considered {
            changes.insert(&c.id);
            let cur = c.current();
            subjects.extend(cur.commits.iter().chain(&cur.digests).map(String::as_str));
            // The commits the change's artifacts were built from, whose
            // authors segregation of duties excludes.
            for digest in &cur.digests {
                for r in self.gov.ci_runs_for(digest) {
                    if !r.commit.is_empty() {
                        subjects.insert(&r.commit);
                    }
                }
            }
        }
        let changes = changes
            .into_iter()
            .map(|id| (format!("change:{id}"), self.gov.change_entry_count(id)));
        let subjects = subjects
            .into_iter()
            .map(|s| (format!("subject:{s}"), self.gov.subject_entry_count(s)));
        changes.chain(subjects).collect()
    }

    /// What evaluation knows of each principal.
    pub fn principal_facts(&self) -> &policy::Principals {
        &self.facts
    }

    fn permits(&self, who: &PrincipalId, perm: Permission) -> bool {
        self.principals
            .get(who)
            .is_some_and(|p| self.gov.policy().permits(&p.roles, perm))
    }

    /// [`State::require`] for a check before the fold: `Service::append`
    /// asks it before a policy proposal's costly parse.
    pub fn check_permission(
        &self,
        who: &PrincipalId,
        perm: Permission,
        action: &'static str,
    ) -> Result<(), ApplyError> {
        self.require(who, perm, action)
    }

    pub(super) fn require(
        &self,
        who: &PrincipalId,
        perm: Permission,
        action: &'static str,
    ) -> Result<(), ApplyError> {
        if self.permits(who, perm) {
            return Ok(());
        }
        let policy = self.gov.policy();
        let roles = policy.permissions.get(&perm).cloned().unwrap_or_default();
        Err(ApplyError::Forbidden {
            signer: who.to_string(),
            action,
            why: format!(
                "policy version {} gives `{}` to {}",
                self.gov.active_version().map(|v| v.version).unwrap_or(1),
                perm.key(),
                if roles.is_empty() {
                    "no role".to_owned()
                } else {
                    format!(
                        "role(s) {}",
                        roles.into_iter().collect::<Vec<_>>().join(", ")
                    )
                }
            ),
        })
    }

    fn require_human(&self, who: &PrincipalId, action: &'static str) -> Result<(), ApplyError> {
        match self.principals.get(who) {
            Some(p) if p.kind == PrincipalKind::Human => Ok(()),
            _ => Err(ApplyError::Forbidden {
                signer: who.to_string(),
                action,
                why: "only human principals may".into(),
            }),
        }
    }

    /// Checks that under `policy` someone with an active key can still
    /// register principals and change roles; otherwise nobody ever could.
    pub(super) fn check_not_locked_out(
        &self,
        policy: &Policy,
        roles_of: impl Fn(&super::PrincipalRecord) -> BTreeSet<String>,
        key_active: impl Fn(&super::PrincipalRecord, &ed25519_dalek::VerifyingKey) -> bool,
        what: &str,
    ) -> Result<(), ApplyError> {
        for perm in [Permission::RegisterPrincipals, Permission::ChangeRoles] {
            let someone = self.principals.values().any(|p| {
                policy.permits(&roles_of(p), perm) && p.active_keys().any(|k| key_active(p, k))
            });
            if !someone {
                return Err(ApplyError::WouldLockOut(format!(
                    "{what} would leave no principal with an active key holding `{}`",
                    perm.key()
                )));
            }
        }
        Ok(())
    }

    /// Applies the genesis policy (entry 0).
    pub(super) fn apply_genesis_policy(&mut self, text: Option<&str>) -> Result<(), ApplyError> {
        let text = text.unwrap_or(policy::DEFAULT_POLICY);
        let policy = Policy::parse(text).map_err(|e| ApplyError::BadPolicy(e.to_string()))?;
        self.check_not_locked_out(
            &policy,
            |p| p.roles.clone(),
            |_, _| true,
            "the genesis policy",
        )?;
        self.gov.policies.push(PolicyVersionRec {
            version: 1,
            digest: digest_hex(text),
            text: text.to_owned(),
            activated_at: 0,
            proposal_id: String::new(),
            approvers: Vec::new(),
        });
        self.gov.active = Some(Arc::new(policy));
        self.gov.dirty.policies.insert(1);
        self.gov.history.insert(0);
        self.gov.dirty.history.insert(0);
        Ok(())
    }

    /// Marks an identity or policy entry for the evidence history.
    pub(super) fn note_history(&mut self, index: u64) {
        self.gov.history.insert(index);
        self.gov.dirty.history.insert(index);
    }

    /// Opens a change.
    pub(super) fn apply_change_opened(
        &mut self,
        index: u64,
        at: i64,
        signer: &PrincipalId,
        c: &ChangeOpening,
    ) -> Result<(), ApplyError> {
        self.require(signer, Permission::OpenChange, "open changes")?;
        let id = c.change_id.as_str();
        if self.gov.changes.contains_key(id) {
            return Err(ApplyError::ChangeExists(id.to_owned()));
        }
        let chain = heads::chain_step(&heads::EMPTY_CHAIN, index);
        let number = if self.gov.sparse {
            self.gov.changes.len() as u64
        } else {
            self.gov.heads.push(heads::leaf_hash(id, 1, &chain))
        };
        self.gov.changes.insert(
            id.to_owned(),
            ChangeRec {
                id: id.to_owned(),
                title: c.title.clone(),
                repository: c.repository.clone(),
                ticket: c.ticket.clone(),
                description: c.description.clone(),
                requesters: vec![signer.to_string()],
                revisions: vec![RevisionRec {
                    index,
                    at_nanos: at,
                    by: signer.to_string(),
                    commits: c.commits.clone(),
                    digests: c.artifact_digests.clone(),
                    environments: c.environments.clone(),
                    reason: String::new(),
                    subjects_key: revision_key(&c.commits, &c.artifact_digests),
                }],
                reviews: Vec::new(),
                deployments: Vec::new(),
                head: Head {
                    number,
                    count: 1,
                    chain,
                },
            },
        );
        self.gov.index_change(id, None);
        self.gov.dirty.changes.insert(id.to_owned());
        Ok(())
    }

    /// Amends a change: a new revision.
    pub(super) fn apply_change_amended(
        &mut self,
        index: u64,
        at: i64,
        signer: &PrincipalId,
        a: &ChangeAmendment,
    ) -> Result<(), ApplyError> {
        let id = a.change_id.as_str();
        let c = self
            .gov
            .changes
            .get(id)
            .ok_or_else(|| ApplyError::UnknownChange(id.to_owned()))?;
        if !c.requesters.iter().any(|r| r == signer.as_str()) {
            self.require(signer, Permission::OpenChange, "amend changes")?;
        }
        let cur = c.current();
        let environments = if a.environments.is_empty() {
            cur.environments.clone()
        } else {
            a.environments.clone()
        };
        if cur.commits == a.commits
            && cur.digests == a.artifact_digests
            && cur.environments == environments
        {
            return Err(ApplyError::AmendChangesNothing(id.to_owned()));
        }
        let old = cur.subjects();
        let c = self.gov.changes.get_mut(id).expect("looked up just above");
        if !c.requesters.iter().any(|r| r == signer.as_str()) {
            c.requesters.push(signer.to_string());
        }
        c.revisions.push(RevisionRec {
            index,
            at_nanos: at,
            by: signer.to_string(),
            commits: a.commits.clone(),
            digests: a.artifact_digests.clone(),
            environments,
            reason: a.reason.clone(),
            subjects_key: revision_key(&a.commits, &a.artifact_digests),
        });
        self.gov.index_change(id, Some(old));
        self.gov.touch(id, index);
        Ok(())
    }

    /// Records an approval or rejection.
    pub(super) fn apply_change_reviewed(
        &mut self,
        index: u64,
        at: i64,
        signer: &PrincipalId,
        key: &VerifyingKey,
        r: &ChangeReview,
    ) -> Result<(), ApplyError> {
        self.require(signer, Permission::Approve, "review changes")?;
        let id = r.change_id.as_str();
        let c = self
            .gov
            .changes
            .get(id)
            .ok_or_else(|| ApplyError::UnknownChange(id.to_owned()))?;
        // A review that names its revision is for that revision only: it
        // must be the current one, so one signed before an amendment (and
        // handed in after it) can never count for the amended change.
        if let Some(named) = r.revision {
            let current = c.revisions.len() as u64;
            if u64::from(named) != current {
                return Err(ApplyError::NotCurrentRevision {
                    change: id.to_owned(),
                    named,
                    current,
                });
            }
        }
        // Only a refusal spells out what the current revision binds.
        let binds = || {
            c.current()
                .subjects()
                .into_iter()
                .collect::<Vec<_>>()
                .join(", ")
        };
        if let Some(revision) = r.revision
            && c.current().subjects() != r.seen_subjects
        {
            return Err(ApplyError::NotTheNamedRevision {
                change: id.to_owned(),
                revision,
                current: binds(),
            });
        }
        if !c
            .revisions
            .iter()
            .any(|rev| rev.subjects() == r.seen_subjects)
        {
            return Err(ApplyError::NotARevision {
                change: id.to_owned(),
                current: binds(),
            });
        }
        let c = self.gov.changes.get_mut(id).expect("looked up just above");
        c.reviews.push(ReviewRec {
            index,
            at_nanos: at,
            reviewer: signer.to_string(),
            seen: r.seen_subjects.clone(),
            seen_key: policy::SubjectsKey::of(&r.seen_subjects),
            approve: r.approve,
            comment: r.comment.clone(),
            key: key.to_bytes(),
        });
        self.gov.touch(id, index);
        Ok(())
    }

    /// Records a commit.
    pub(super) fn apply_commit_observed(
        &mut self,
        index: u64,
        signer: &PrincipalId,
        c: &CommitObservation,
    ) -> Result<(), ApplyError> {
        self.require(signer, Permission::Report, "report commits")?;
        if let Some(prev) = self.gov.commits.get(&c.sha) {
            return Err(ApplyError::CommitKnown {
                sha: c.sha.clone(),
                index: prev.index,
            });
        }
        let person = |p: &crate::event::GitPerson| PersonRec {
            name: p.name.clone(),
            email: p.email.clone(),
            time: p.time,
        };
        self.gov.commits.insert(
            c.sha.clone(),
            CommitRec {
                sha: c.sha.clone(),
                index,
                repository: c.repository.clone(),
                parents: c.commit.parents.clone(),
                author: person(&c.commit.author),
                committer: person(&c.commit.committer),
                summary: c.commit.summary.clone(),
                signature: c.signature.verdict.name().to_owned(),
                signer_identity: c.signature.signer_identity.clone(),
                // Counts come from the reporter: saturate rather than overflow.
                changed_files: c
                    .changed
                    .added
                    .saturating_add(c.changed.modified)
                    .saturating_add(c.changed.deleted),
            },
        );
        self.gov.dirty.commits.insert(c.sha.clone());
        Ok(())
    }

    /// Records a CI run.
    pub(super) fn apply_ci_run(
        &mut self,
        key: &VerifyingKey,
        index: u64,
        at: i64,
        signer: &PrincipalId,
        r: &CiRun,
    ) -> Result<(), ApplyError> {
        self.require(signer, Permission::Report, "report CI runs")?;
        let rec = CiRec {
            index,
            at_nanos: at,
            builder: signer.to_string(),
            passed: r.status == CiStatus::Passed,
            status: r.status.name().to_owned(),
            repository: r.repository.clone(),
            commit: r.commit.clone(),
            digests: r.artifact_digests.clone(),
            provider: r.provider.clone(),
            pipeline: r.pipeline.clone(),
            run_id: r.run_id.clone(),
            url: r.url.clone(),
            key: key.to_bytes(),
        };
        self.gov.index_ci(&rec);
        self.gov.ci.insert(index, rec);
        self.gov.dirty.ci.insert(index);
        Ok(())
    }

    /// Decides and records a deployment.
    pub(super) fn apply_deploy(
        &mut self,
        index: u64,
        at: i64,
        signer: &PrincipalId,
        d: &DeployRequest,
    ) -> Result<(), ApplyError> {
        let decision = self.decide_fresh(
            &policy::Request {
                action: d.action.clone(),
                environment: d.environment.clone(),
                repository: d.repository.clone(),
                kind: d.kind.clone(),
                namespace: d.namespace.clone(),
                subjects: d.subjects.clone(),
                actor: signer.to_string(),
                break_glass: d.break_glass,
                at: ts(at),
            },
            d.change_id.as_ref().map(|c| c.as_str()),
        );
        // Decided on the entries before this one: in a sparse fold (an
        // evidence bundle) `next` may lag behind the entry's index.
        let decision = DecisionRecord {
            log_size: index,
            ..decision
        };
        if decision.allow
            && d.break_glass
            && let Some(ob) = decision.obligations.first()
        {
            self.gov.obligations.insert(
                index,
                ObligationRec {
                    deployment_index: index,
                    actor: signer.to_string(),
                    environment: d.environment.clone(),
                    subjects: d.subjects.clone(),
                    justification: d.justification.clone(),
                    opened_nanos: at,
                    due_nanos: ob.due_nanos,
                    review: None,
                },
            );
            self.gov.dirty.obligations.insert(index);
        }
        if let Some((id, _)) = &decision.change
            && let Some(c) = self.gov.changes.get_mut(id)
        {
            c.deployments.push(index);
            self.gov.touch(id, index);
        }
        let rec = DeployRec {
            index,
            actor: signer.to_string(),
            action: d.action.clone(),
            environment: d.environment.clone(),
            repository: d.repository.clone(),
            kind: d.kind.clone(),
            namespace: d.namespace.clone(),
            subjects: d.subjects.clone(),
            break_glass: d.break_glass,
            justification: d.justification.clone(),
            decision,
        };
        self.gov.index_deploy(&rec);
        self.gov.deploys.insert(index, rec);
        self.gov.dirty.deploys.insert(index);
        Ok(())
    }

    /// Closes a break-glass obligation.
    pub(super) fn apply_break_glass_review(
        &mut self,
        index: u64,
        at: i64,
        signer: &PrincipalId,
        r: &BreakGlassReview,
    ) -> Result<(), ApplyError> {
        let Some(o) = self.gov.obligations.get(&r.deployment_index) else {
            let what = match self.gov.deploys.get(&r.deployment_index) {
                None => "is not a deployment",
                Some(d) if !d.break_glass => "is a deployment without break-glass",
                Some(_) => "is a break-glass deployment that was denied",
            };
            return Err(ApplyError::NotBreakGlass(r.deployment_index, what));
        };
        if let Some(prev) = &o.review {
            return Err(ApplyError::AlreadyReviewed {
                deployment: r.deployment_index,
                review: prev.index,
            });
        }
        if o.actor == signer.as_str() {
            return Err(ApplyError::OwnBreakGlass(o.actor.clone()));
        }
        self.require(
            signer,
            Permission::Approve,
            "review break-glass deployments",
        )?;
        self.require_human(signer, "review break-glass deployments")?;
        let o = self
            .gov
            .obligations
            .get_mut(&r.deployment_index)
            .expect("looked up just above");
        o.review = Some(BreakGlassReviewRec {
            index,
            at_nanos: at,
            reviewer: signer.to_string(),
            justified: r.justified,
            comment: r.comment.clone(),
        });
        self.gov.dirty.obligations.insert(r.deployment_index);
        // The review concerns the change the deployment was decided on.
        if let Some((id, _)) = self
            .gov
            .deploys
            .get(&r.deployment_index)
            .and_then(|d| d.decision.change.clone())
        {
            self.gov.touch(&id, index);
        }
        Ok(())
    }

    /// For a new entry only: refuses a policy approval that would activate
    /// its proposal only by counting an approval signed with a key revoked
    /// or rotated away since (a stolen key's word). The fold counts every
    /// approval on record, as older logs were folded; this keeps such an
    /// approval from being what activates a policy from now on. Its
    /// approver may approve again with a current key first.
    pub fn check_policy_approval(&self, signer: &PrincipalId, id: &str) -> Result<(), ApplyError> {
        // What the fold refuses anyway, it names itself.
        let Some(p) = self
            .gov
            .proposals
            .get(id)
            .filter(|p| p.activated_as.is_none())
        else {
            return Ok(());
        };
        let mut all: Vec<String> = p.approvals.iter().map(|(a, _, _)| a.clone()).collect();
        let mut standing: Vec<String> = p
            .approvals
            .iter()
            .filter(|(_, _, k)| self.key_revoked_at(k).is_none())
            .map(|(a, _, _)| a.clone())
            .collect();
        all.push(signer.to_string());
        standing.push(signer.to_string());
        let policy = self.gov.policy();
        if !policy::policy_change_activates(policy, &p.proposer, &all, &self.facts)
            || policy::policy_change_activates(policy, &p.proposer, &standing, &self.facts)
        {
            return Ok(());
        }
        let withdrawn: Vec<String> = p
            .approvals
            .iter()
            .filter(|(a, _, k)| !standing.contains(a) && self.key_revoked_at(k).is_some())
            .map(|(a, i, k)| {
                format!(
                    "{a}'s (entry {i}) was signed with a key revoked or rotated away at entry {}",
                    self.key_revoked_at(k).unwrap_or_default()
                )
            })
            .collect();
        Err(ApplyError::WithdrawnPolicyApproval {
            id: id.to_owned(),
            why: withdrawn.join("; "),
        })
    }

    /// Records a policy proposal.
    pub(super) fn apply_policy_proposed(
        &mut self,
        index: u64,
        at: i64,
        signer: &PrincipalId,
        p: &PolicyProposal,
    ) -> Result<(), ApplyError> {
        self.require(signer, Permission::ProposePolicy, "propose policy")?;
        let id = p.proposal_id.as_str();
        if self.gov.proposals.contains_key(id) {
            return Err(ApplyError::ProposalExists(id.to_owned()));
        }
        let active = self.gov.active_version().map(|v| v.version).unwrap_or(1);
        if p.base_version != active {
            return Err(ApplyError::StaleBase {
                base: p.base_version,
                active,
            });
        }
        self.gov.proposals.insert(
            id.to_owned(),
            ProposalRec {
                id: id.to_owned(),
                proposer: signer.to_string(),
                digest: digest_hex(&p.text),
                text: p.text.clone(),
                base_version: p.base_version,
                description: p.description.clone(),
                index,
                at_nanos: at,
                approvals: Vec::new(),
                activated_as: None,
            },
        );
        self.gov.dirty.proposals.insert(id.to_owned());
        self.note_history(index);
        Ok(())
    }

    /// Records a policy approval; activates the proposal when the policy in
    /// force is satisfied.
    pub(super) fn apply_policy_approved(
        &mut self,
        index: u64,
        at: i64,
        signer: &PrincipalId,
        key: &VerifyingKey,
        id: &str,
    ) -> Result<(), ApplyError> {
        self.require(signer, Permission::ApprovePolicy, "approve policy")?;
        let p = self
            .gov
            .proposals
            .get(id)
            .ok_or_else(|| ApplyError::UnknownProposal(id.to_owned()))?;
        let active = self.gov.active_version().map(|v| v.version).unwrap_or(1);
        if let Some(v) = p.activated_as {
            return Err(ApplyError::ProposalClosed {
                id: id.to_owned(),
                why: format!("it is already active as version {v}"),
            });
        }
        if p.base_version != active {
            return Err(ApplyError::ProposalClosed {
                id: id.to_owned(),
                why: format!(
                    "it replaces version {} but version {active} is in force now; propose it again",
                    p.base_version
                ),
            });
        }
        // Under the policy in force at the approval: an approval exactly at
        // the expiry still counts, one a nanosecond later does not.
        if let Some(end) = self.gov.proposal_expires_at(p)
            && at > end
        {
            let secs = self.gov.policy().policy_changes.expire_after_secs;
            return Err(ApplyError::ProposalClosed {
                id: id.to_owned(),
                why: format!(
                    "it expired at {}: the policy in force lets a proposal wait {} for its approvals ([policy_changes] expire_after); propose it again",
                    fmt_nanos(end),
                    policy::human_secs(secs.unwrap_or(0))
                ),
            });
        }
        if p.proposer == signer.as_str() {
            return Err(ApplyError::OwnProposal(id.to_owned()));
        }
        // An approval signed with a key revoked or rotated away since does
        // not stop its approver from approving again with a current key.
        // (Logs written before keys were kept never hold a second approval:
        // it was refused, so this changes nothing they replay.)
        if p.approvals
            .iter()
            .any(|(a, _, k)| a == signer.as_str() && self.key_revoked_at(k).is_none())
        {
            return Err(ApplyError::AlreadyApproved {
                id: id.to_owned(),
                signer: signer.to_string(),
            });
        }
        // Every approval on record counts here, as it always has, so that
        // older logs activate what they activated; that a withdrawn one is
        // not what activates a proposal is checked for new entries
        // (`State::check_policy_approval`).
        let mut approvers: Vec<String> = Vec::new();
        for (a, _, _) in &p.approvals {
            if !approvers.contains(a) {
                approvers.push(a.clone());
            }
        }
        if !approvers.iter().any(|a| a == signer.as_str()) {
            approvers.push(signer.to_string());
        }
        let activates = policy::policy_change_activates(
            self.gov.policy(),
            &p.proposer,
            &approvers,
            &self.facts,
        );
        let mut new_policy = None;
        if activates {
            let policy =
                Policy::parse(&p.text).map_err(|e| ApplyError::BadPolicy(e.to_string()))?;
            self.check_not_locked_out(
                &policy,
                |q| q.roles.clone(),
                |_, _| true,
                &format!("activating proposal {id}"),
            )?;
            new_policy = Some(policy);
            // Expiry is final: what the outgoing policy let expire stays so.
            self.fix_expired_identity_changes(at);
        }
        let p = self
            .gov
            .proposals
            .get_mut(id)
            .expect("looked up just above");
        p.approvals
            .push((signer.to_string(), index, key.to_bytes()));
        if let Some(policy) = new_policy {
            let version = active + 1;
            p.activated_as = Some(version);
            let rec = PolicyVersionRec {
                version,
                text: p.text.clone(),
                digest: p.digest.clone(),
                activated_at: index,
                proposal_id: id.to_owned(),
                approvers,
            };
            self.gov.policies.push(rec);
            self.gov.active = Some(Arc::new(policy));
            self.gov.dirty.policies.insert(version);
        }
        self.gov.dirty.proposals.insert(id.to_owned());
        self.note_history(index);
        Ok(())
    }

    /// What `Authorize` answers: [`State::decide`], except that a
    /// break-glass request is never allowed. Break-glass is allowed only
    /// because it is recorded and opens a review obligation; `Authorize`
    /// records nothing, so an allow here would let a pipeline deploy with
    /// neither. The answer says whether the recorded deployment would be
    /// allowed.
    pub fn authorize(&self, req: &policy::Request, change_id: Option<&str>) -> DecisionRecord {
        let mut d = self.decide(req, change_id);
        if req.break_glass && d.allow && self.builtin_policy_in_force() {
            // Recording it would be refused (Service::append).
            d.allow = false;
            d.rule = None;
            d.reasons = vec![ApplyError::BuiltinBreakGlass.to_string()];
            d.obligations.clear();
        }
        if req.break_glass && d.allow {
            d.allow = false;
            let would = d.reasons.join("; ");
            d.reasons = vec![
                "Authorize records nothing, so it never allows break-glass; record the deployment \
                 with `docket deploy --break-glass --justification ...` (a DeployRequested event), \
                 which opens the review obligation"
                    .to_owned(),
                format!("recorded now, it would be allowed: {would}"),
            ];
            d.obligations.clear();
        }
        d
    }

    /// Whether the built-in default policy is in force: the genesis named
    /// none and none was adopted since (or one equal to it byte for byte).
    pub fn builtin_policy_in_force(&self) -> bool {
        self.gov
            .active_version()
            .is_none_or(|v| v.text == policy::DEFAULT_POLICY)
    }

    /// Decides `req` (about the change `change_id`, or else the change
    /// that binds its subjects) against the current state.
    ///
    /// Keeps the change's facts for the decisions after it, until the next
    /// fold step ([`FactsCache`]); the fold itself decides with
    /// [`State::decide_fresh`], since it changes the state at every step.
    pub fn decide(&self, req: &policy::Request, change_id: Option<&str>) -> DecisionRecord {
        self.decide_with(req, change_id, true)
    }

    /// [`State::decide`] with the change's facts built for this decision
    /// alone, neither read from nor left in the cache.
    pub fn decide_fresh(&self, req: &policy::Request, change_id: Option<&str>) -> DecisionRecord {
        self.decide_with(req, change_id, false)
    }

    fn decide_with(
        &self,
        req: &policy::Request,
        change_id: Option<&str>,
        keep: bool,
    ) -> DecisionRecord {
        let policy = self.gov.policy();
        let (version, digest) = self
            .gov
            .active_version()
            .map(|v| (v.version, v.digest.clone()))
            .unwrap_or_else(|| (1, digest_hex(policy::DEFAULT_POLICY)));
        let at_nanos = i64::try_from(req.at.as_nanosecond()).unwrap_or(i64::MAX);
        let change = match change_id {
            Some(id) => match self.gov.changes.get(id) {
                Some(c) => Some(c),
                None => {
                    return DecisionRecord {
                        allow: false,
                        rule: None,
                        reasons: vec![format!("change {id} does not exist")],
                        counted: Vec::new(),
                        not_counted: Vec::new(),
                        obligations: Vec::new(),
                        policy_version: version,
                        policy_digest: digest,
                        change: None,
                        log_size: self.next,
                        at_nanos,
                    };
                }
            },
            None => self.resolve_change(&req.subjects, &req.environment),
        };
        let kept;
        let built;
        let facts_change: Option<&policy::ChangeFacts<'_>> = match change {
            None => None,
            Some(c) if keep => {
                kept = self
                    .facts_cache
                    .get_or_build(&c.id, || self.change_facts(c).into_owned());
                Some(&*kept)
            }
            Some(c) => {
                built = self.change_facts(c);
                Some(&built)
            }
        };
        let mut deployments = Vec::new();
        for s in &req.subjects {
            for d in self.gov.deployments_of(s) {
                deployments.push(policy::Deployment {
                    action: Cow::Borrowed(&d.action),
                    environment: Cow::Borrowed(&d.environment),
                    subject: Cow::Borrowed(s),
                    at: ts(d.decision.at_nanos),
                });
            }
        }
        // Where the subjects themselves were seen, change or no change, so
        // a request without a change cannot pick a rule by naming another
        // repository than its code's. The change's own subjects are in its
        // facts already.
        let mut subject_repositories = BTreeSet::new();
        let bound = |s: &str| facts_change.is_some_and(|c| c.subjects.contains(s));
        // And which subjects nothing records a repository for: a change's
        // repository, or the request's, is their opener's word alone.
        let mut unrecorded_subjects: Vec<&str> = Vec::new();
        for s in &req.subjects {
            let mut recorded = false;
            if let Some(c) = self.gov.commits.get(s.as_str())
                && !c.repository.is_empty()
            {
                recorded = true;
                if !bound(s) {
                    subject_repositories.insert(c.repository.as_str());
                }
            }
            for r in self.gov.ci_runs_for(s).filter(|r| self.run_counts(r)) {
                if !r.repository.is_empty() {
                    recorded = true;
                    if !bound(s) {
                        subject_repositories.insert(r.repository.as_str());
                    }
                }
            }
            if !recorded {
                unrecorded_subjects.push(s);
            }
        }
        let mut v = policy::evaluate(
            policy,
            req,
            &policy::Facts {
                principals: &self.facts,
                change: facts_change,
                subject_repositories: &subject_repositories,
                unrecorded_subjects: &unrecorded_subjects,
                deployments: &deployments,
            },
        );
        // The change was found, not named: when others bind the same
        // subjects for this environment (a later one, opened by anyone with
        // open_change, is the one found), say so, since naming the change
        // the deployment is for is the way past a denial from another.
        if let (policy::Decision::Deny, None, Some(found)) = (v.decision, change_id, change) {
            // Bounded: anyone may open many; the reason names ten.
            const NAMED: usize = 10;
            let mut others: Vec<&str> = self
                .candidate_changes(&req.subjects, &req.environment)
                .filter(|c| c.id != found.id)
                .map(|c| c.id.as_str())
                .collect();
            if !others.is_empty() {
                let more = others.len().saturating_sub(NAMED);
                others.truncate(NAMED);
                let and_more = if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                };
                v.reasons.push(format!(
                    "change {} was considered as the most recently revised of those binding these subjects for {}; {}{and_more} bind(s) them too: if the deployment is for one of those, name it (--change)",
                    found.id,
                    req.environment,
                    others.join(", ")
                ));
            }
        }
        DecisionRecord {
            allow: v.decision == policy::Decision::Allow,
            rule: v.rule,
            reasons: v.reasons,
            counted: v
                .counted
                .into_iter()
                .map(|c| CountedRec {
                    approver: c.approver,
                    roles: c.roles,
                    index: c.index,
                })
                .collect(),
            not_counted: v
                .not_counted
                .into_iter()
                .map(|c| NotCountedRec {
                    approver: c.approver,
                    reason: c.reason,
                    index: c.index,
                })
                .collect(),
            obligations: v
                .obligations
                .into_iter()
                .map(|o| ObligationDue {
                    description: o.description,
                    due_nanos: i64::try_from(o.due.as_nanosecond()).unwrap_or(i64::MAX),
                    not_by: o.not_by,
                })
                .collect(),
            policy_version: version,
            policy_digest: digest,
            change: change.map(|c| (c.id.clone(), c.revisions.len() as u32)),
            log_size: self.next,
            at_nanos,
        }
    }

    /// The most recently revised change whose current revision binds every
    /// subject and targets `environment`.
    fn resolve_change(&self, subjects: &BTreeSet<String>, environment: &str) -> Option<&ChangeRec> {
        self.candidate_changes(subjects, environment)
            .max_by_key(|c| c.current().index)
    }

    /// The changes whose current revision binds every subject and targets
    /// `environment`.
    fn candidate_changes<'a, 'b>(
        &'a self,
        subjects: &'b BTreeSet<String>,
        environment: &'b str,
    ) -> impl Iterator<Item = &'a ChangeRec> + use<'a, 'b> {
        subjects.iter().next().into_iter().flat_map(move |first| {
            self.gov.changes_binding(first).filter(move |c| {
                let cur = c.current();
                cur.environments.contains(environment)
                    && subjects
                        .iter()
                        .all(|s| cur.commits.contains(s) || cur.digests.contains(s))
            })
        })
    }

    /// For a new entry only (replay keeps what older logs recorded): why
    /// `reviewer` may not review the break-glass deployment at entry
    /// `deployment`, when they took part in what it deployed. The review
    /// stands in for the approvals the break-glass skipped, so it excludes
    /// whom an approval would: the requesters of the change the decision
    /// named, whoever authored, committed or signed the commits of that
    /// revision or of the deployment's own subjects (and the commits their
    /// artifacts were built from), and the CI identities that built them.
    /// `None` when nothing the log records ties them to it (an author no
    /// principal's e-mail names, a commit never ingested, is not known to
    /// be them), and when the fold refuses the review anyway and says why:
    /// no open obligation there, already reviewed, or the reviewer broke
    /// the glass themselves.
    pub fn break_glass_reviewer_conflict(&self, reviewer: &str, deployment: u64) -> Option<String> {
        let o = self.gov.obligations.get(&deployment)?;
        if o.review.is_some() || o.actor == reviewer {
            return None;
        }
        let d = self.gov.deploys.get(&deployment)?;
        let mut subjects: BTreeSet<&str> = d.subjects.iter().map(String::as_str).collect();
        if let Some((id, revision)) = &d.decision.change
            && let Some(c) = self.gov.changes.get(id)
        {
            if c.requesters.iter().any(|r| r == reviewer) {
                return Some(format!(
                    "{reviewer} opened or amended change {id}, which it deployed"
                ));
            }
            if let Some(rev) = (*revision as usize)
                .checked_sub(1)
                .and_then(|i| c.revisions.get(i))
            {
                subjects.extend(rev.commits.iter().chain(&rev.digests).map(String::as_str));
            }
        }
        // The commits themselves, then those CI built the subjects from.
        let mut commits: Vec<(&str, Option<&str>)> = subjects.iter().map(|s| (*s, None)).collect();
        for s in &subjects {
            for r in self.gov.ci_runs_for(s) {
                if r.builder == reviewer {
                    return Some(format!(
                        "{reviewer} reported the CI run at entry {} that built {s}",
                        r.index
                    ));
                }
                if !r.commit.is_empty() && !subjects.contains(r.commit.as_str()) {
                    commits.push((r.commit.as_str(), Some(*s)));
                }
            }
        }
        for (sha, built_into) in commits {
            let Some(rec) = self.gov.commits.get(sha) else {
                continue;
            };
            if let Some(p) = self
                .commit_people(rec)
                .into_iter()
                .find(|p| p.principal == Some(reviewer))
            {
                let short = &sha[..12.min(sha.len())];
                return Some(match built_into {
                    None => format!(
                        "{reviewer} is the {} of commit {short}, which it deployed",
                        p.role
                    ),
                    Some(into) => format!(
                        "{reviewer} is the {} of commit {short}, which {into} was built from",
                        p.role
                    ),
                });
            }
        }
        None
    }

    /// Who a commit speaks for: its author and committer e-mails and, when
    /// its signature verified, the signer identity, each with the principal
    /// it maps to (`None` when no principal claims it). Whoever signed a
    /// commit vouched for it as theirs: the author line is free text, the
    /// verified key is not.
    pub fn commit_people<'a>(&'a self, rec: &'a CommitRec) -> Vec<CommitPerson<'a>> {
        let mut people: Vec<CommitPerson<'a>> =
            [("author", &rec.author), ("committer", &rec.committer)]
                .into_iter()
                .map(|(role, p)| CommitPerson {
                    role,
                    identity: &p.email,
                    principal: self.emails.get(&p.email).map(|id| id.as_str()),
                })
                .collect();
        let signer = rec.signer_identity.as_str();
        if rec.signature == SignatureVerdict::Verified.name() && !signer.is_empty() {
            // A principal id, or an e-mail (kept lowercase; an
            // allowed-signers identity or OpenPGP user id may not be). The
            // verdict does not say which: when the identity is one
            // principal's id and another's e-mail, it speaks for both, so
            // that neither can approve what the key signed.
            let by_id = self.facts.get_key_value(signer).map(|(id, _)| id.as_str());
            let by_email = self
                .emails
                .get(&signer.to_ascii_lowercase())
                .map(|id| id.as_str());
            let mut principals = vec![by_id.or(by_email)];
            if let (Some(a), Some(b)) = (by_id, by_email)
                && a != b
            {
                principals.push(Some(b));
            }
            people.extend(principals.into_iter().map(|principal| CommitPerson {
                role: "signer",
                identity: signer,
                principal,
            }));
        }
        people
    }

    /// Checks, on receipt, the verdict given for a commit whose SSH signature
    /// verifies with the Ed25519 key `key`. When that is an active key of a
    /// principal, the principal signed it, whatever the ingester trusts: the
    /// verdict must be verified and name them (by id or one of their
    /// e-mails). Otherwise a reporter could keep the signer out of the
    /// exclusions (`untrusted-key`), or name someone else in their place.
    pub fn check_commit_signer(
        &self,
        key: &[u8; 32],
        claimed: &crate::event::CommitSignature,
    ) -> Result<(), String> {
        let holders: Vec<&super::PrincipalRecord> = self
            .principals()
            .filter(|p| p.active_keys().any(|k| k.as_bytes() == key))
            .collect();
        let Some(first) = holders.first() else {
            return Ok(());
        };
        let named = |p: &&super::PrincipalRecord| {
            claimed.signer_identity == p.id.as_str()
                || p.emails
                    .contains(&claimed.signer_identity.to_ascii_lowercase())
        };
        if claimed.verdict == SignatureVerdict::Verified && holders.iter().any(named) {
            return Ok(());
        }
        Err(format!(
            "the commit is signed with an active key of principal {id}, and the signature verifies: \
             the verdict must be verified with signer {id}, not {} with signer {:?} (ingest with \
             the principals' keys, without --no-principal-keys)",
            claimed.verdict.name(),
            claimed.signer_identity,
            id = first.id
        ))
    }

    /// The commits a revision's artifacts were built from that it does not
    /// bind itself: for each of its digests in order, the commit each CI run
    /// reporting it names, oldest run first, each once, with the first
    /// digest built from it. A change that binds only an image digest is
    /// still the code in that image.
    pub fn built_from<'a>(&'a self, rev: &'a RevisionRec) -> Vec<(&'a str, &'a str)> {
        self.built_from_runs(rev, |_| true)
    }

    /// Whether a CI run still speaks for its reporter: the reporter may
    /// report under the policy in force, and the key that signed the run
    /// has not been revoked or rotated away since. The evaluator applies
    /// the same test to the runs it reads for `ci_passed` and provenance
    /// (`policy::CiFact`); here it keeps a run that no longer counts from
    /// choosing the rule, or adding a commit whose code must be accounted
    /// for, as it would a stolen key's or a demoted runner's word.
    fn run_counts(&self, r: &CiRec) -> bool {
        self.key_revoked_at(&r.key).is_none()
            && policy::reporter_may_report(self.gov.policy(), &self.facts, &r.builder)
    }

    /// [`State::built_from`] over the runs `keep` admits.
    fn built_from_runs<'a>(
        &'a self,
        rev: &'a RevisionRec,
        keep: impl Fn(&CiRec) -> bool,
    ) -> Vec<(&'a str, &'a str)> {
        let mut out: Vec<(&str, &str)> = Vec::new();
        for d in &rev.digests {
            for r in self.gov.ci_runs_for(d).filter(|r| keep(r)) {
                let from = r.commit.as_str();
                if !from.is_empty()
                    && !rev.commits.contains(from)
                    && !out.iter().any(|(f, _)| *f == from)
                {
                    out.push((from, d.as_str()));
                }
            }
        }
        out
    }

    /// Adds the principals who authored, committed or signed `sha` to
    /// `authors` (with how, unless an earlier commit already put them
    /// there), or says in `gaps` why they are unknown. `built_into`: the
    /// digest a CI run built from it, when the change does not bind it itself.
    ///
    /// Also adds to `commits` what the log records of its signature.
    fn authors_of<'a>(
        &'a self,
        sha: &'a str,
        built_into: Option<&'a str>,
        authors: &mut BTreeMap<Cow<'a, str>, policy::Authorship>,
        gaps: &mut Vec<String>,
        commits: &mut Vec<policy::CommitFact<'a>>,
    ) {
        let label = || {
            let short = &sha[..12.min(sha.len())];
            match built_into {
                None => short.to_owned(),
                Some(d) => format!("{short} (built into {})", &d[..19.min(d.len())]),
            }
        };
        let mut fact = policy::CommitFact {
            sha: Cow::Borrowed(sha),
            built_into: built_into.map(Cow::Borrowed),
            verdict: None,
            signer_identity: Cow::Borrowed(""),
            signer: None,
        };
        let Some(rec) = self.gov.commits.get(sha) else {
            gaps.push(format!(
                "commit {} has not been observed (run `docket git ingest`), so its author is unknown",
                label()
            ));
            commits.push(fact);
            return;
        };
        fact.verdict = Some(Cow::Borrowed(rec.signature.as_str()));
        fact.signer_identity = Cow::Borrowed(rec.signer_identity.as_str());
        for p in self.commit_people(rec) {
            if p.role == "signer" && fact.signer.is_none() {
                fact.signer = p.principal.map(Cow::Borrowed);
            }
            match p.principal {
                Some(id) => {
                    // How they took part in the first of the change's
                    // commits they did: every role they had in it.
                    // `fact` goes into `commits` at this index below.
                    let here = commits.len();
                    let how = authors
                        .entry(Cow::Borrowed(id))
                        .or_insert(policy::Authorship {
                            roles: 0,
                            commit: here,
                        });
                    if how.commit == here {
                        how.roles |= policy::Authorship::role_bit(p.role);
                    }
                }
                None if p.role == "signer" => gaps.push(format!(
                    "commit {}: signer {} is neither a principal nor the e-mail of one, so segregation of duties cannot be checked",
                    label(),
                    p.identity
                )),
                None => gaps.push(format!(
                    "commit {}: {} {} is not the e-mail of any principal, so segregation of duties cannot be checked",
                    label(),
                    p.role,
                    p.identity
                )),
            }
        }
        commits.push(fact);
    }

    /// Everything evaluation needs about a change, borrowed from the state.
    fn change_facts<'a>(&'a self, c: &'a ChangeRec) -> policy::ChangeFacts<'a> {
        let cur = c.current();
        let subjects: BTreeSet<Cow<'_, str>> = cur
            .commits
            .iter()
            .chain(&cur.digests)
            .map(|s| Cow::Borrowed(s.as_str()))
            .collect();
        let mut authors = BTreeMap::new();
        let mut sod_gaps = Vec::new();
        let mut commits = Vec::new();
        for sha in &cur.commits {
            self.authors_of(sha, None, &mut authors, &mut sod_gaps, &mut commits);
        }
        // The change's code is also what its artifacts were built from: the
        // commit each CI run reporting one of its digests names. A change
        // that binds only an image digest still excludes the people who
        // wrote what is in the image.
        // Only from runs that still count: a stolen key's or a demoted
        // runner's claim adds no commit to account for (and no author gap
        // that no ingestion could close).
        let built_from = self.built_from_runs(cur, |r| self.run_counts(r));
        for (from, digest) in &built_from {
            self.authors_of(
                from,
                Some(digest),
                &mut authors,
                &mut sod_gaps,
                &mut commits,
            );
        }
        let mut builders = BTreeSet::new();
        let mut code_repositories = BTreeSet::new();
        let mut ci = BTreeMap::new();
        let tagged = cur.commits.iter().map(|c| (c, false));
        for (s, is_digest) in tagged.chain(cur.digests.iter().map(|d| (d, true))) {
            let mut runs = Vec::new();
            for r in self.gov.ci_runs_for(s) {
                // Whoever built it is excluded, counted run or not.
                builders.insert(Cow::Borrowed(r.builder.as_str()));
                if !r.repository.is_empty() && self.run_counts(r) {
                    code_repositories.insert(Cow::Borrowed(r.repository.as_str()));
                }
                let from = r.commit.as_str();
                runs.push(policy::CiFact {
                    reporter: Cow::Borrowed(r.builder.as_str()),
                    key_revoked_at: self.key_revoked_at(&r.key),
                    passed: r.passed,
                    description: if r.passed {
                        String::new()
                    } else {
                        r.describe()
                    },
                    built_from_unbound: Some(from)
                        .filter(|f| {
                            is_digest
                                && !f.is_empty()
                                && !cur.commits.is_empty()
                                && !cur.commits.contains(*f)
                        })
                        .map(Cow::Borrowed),
                });
            }
            if !runs.is_empty() {
                ci.insert(Cow::Borrowed(s.as_str()), runs);
            }
        }
        for sha in cur
            .commits
            .iter()
            .map(String::as_str)
            .chain(built_from.iter().map(|(f, _)| *f))
        {
            if let Some(rec) = self.gov.commits.get(sha)
                && !rec.repository.is_empty()
            {
                code_repositories.insert(Cow::Borrowed(rec.repository.as_str()));
            }
        }
        policy::ChangeFacts {
            id: Cow::Borrowed(&c.id),
            revision: c.revisions.len() as u32,
            revised_at: cur.index,
            repository: Some(c.repository.as_str())
                .filter(|r| !r.is_empty())
                .map(Cow::Borrowed),
            code_repositories,
            requesters: c
                .requesters
                .iter()
                .map(|s| Cow::Borrowed(s.as_str()))
                .collect(),
            subjects,
            subjects_key: Some(cur.subjects_key),
            environments: cur
                .environments
                .iter()
                .map(|s| Cow::Borrowed(s.as_str()))
                .collect(),
            authors,
            sod_gaps,
            builders,
            ci,
            approvals: c
                .reviews
                .iter()
                .map(|r| policy::Approval {
                    key_revoked_at: self.key_revoked_at(&r.key),
                    approver: Cow::Borrowed(&r.reviewer),
                    seen: r.seen_key,
                    at_nanos: r.at_nanos,
                    approve: r.approve,
                    comment: Cow::Borrowed(&r.comment),
                    index: r.index,
                })
                .collect(),
            commits,
            unsourced_digests: cur
                .digests
                .iter()
                .filter(|d| {
                    self.gov
                        .ci_runs_for(d)
                        .filter(|r| self.run_counts(r))
                        .all(|r| r.commit.is_empty())
                })
                .map(|s| Cow::Borrowed(s.as_str()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod time_tests {
    use proptest::prelude::*;

    use super::*;

    fn reference(n: i64) -> Timestamp {
        Timestamp::from_nanosecond(i128::from(n)).expect("i64 nanoseconds are in range")
    }

    #[test]
    fn ts_agrees_with_from_nanosecond_at_the_edges() {
        for n in [
            i64::MIN,
            i64::MIN + 1,
            -1_000_000_001,
            -1_000_000_000,
            -999_999_999,
            -1,
            0,
            1,
            999_999_999,
            1_000_000_000,
            1_700_000_000_123_456_789,
            i64::MAX,
        ] {
            assert_eq!(ts(n), reference(n), "{n} ns");
        }
    }

    proptest! {
        #[test]
        fn ts_agrees_with_from_nanosecond(n in any::<i64>()) {
            prop_assert_eq!(ts(n), reference(n));
        }
    }
}
