//! Domain events: what a signed payload means once parsed. Built from wire
//! bytes only by `api::convert`, so an `Event` that exists is well formed.

pub mod git;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ed25519_dalek::VerifyingKey;

pub use git::{GitCommit, GitPerson};

/// A principal id: 1..=128 bytes of `[a-z0-9._@-]`, starting with a letter or digit.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct PrincipalId(String);

/// Why a principal id was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "principal id {0:?} must be 1..=128 characters of a-z 0-9 . _ @ -, starting with a letter or digit"
)]
pub struct InvalidPrincipalId(pub String);

impl PrincipalId {
    /// Parses and validates a principal id.
    pub fn parse(s: &str) -> Result<Self, InvalidPrincipalId> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && s.bytes().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'.' | b'_' | b'@' | b'-')
            });
        if ok {
            Ok(PrincipalId(s.to_owned()))
        } else {
            Err(InvalidPrincipalId(s.to_owned()))
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PrincipalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What kind of actor a principal is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PrincipalKind {
    Human,
    Service,
    Ci,
    Cluster,
}

impl PrincipalKind {
    /// Stable one-byte code used in persisted state.
    pub fn code(self) -> u8 {
        match self {
            PrincipalKind::Human => 1,
            PrincipalKind::Service => 2,
            PrincipalKind::Ci => 3,
            PrincipalKind::Cluster => 4,
        }
    }

    /// Inverse of [`PrincipalKind::code`].
    pub fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => PrincipalKind::Human,
            2 => PrincipalKind::Service,
            3 => PrincipalKind::Ci,
            4 => PrincipalKind::Cluster,
            _ => return None,
        })
    }

    /// Lowercase name, as the CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            PrincipalKind::Human => "human",
            PrincipalKind::Service => "service",
            PrincipalKind::Ci => "ci",
            PrincipalKind::Cluster => "cluster",
        }
    }

    /// Parses a CLI name.
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "human" => PrincipalKind::Human,
            "service" => PrincipalKind::Service,
            "ci" => PrincipalKind::Ci,
            "cluster" => PrincipalKind::Cluster,
            _ => return None,
        })
    }
}

/// A principal as declared by genesis or a registration.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PrincipalSpec {
    pub id: PrincipalId,
    pub kind: PrincipalKind,
    pub display_name: String,
    pub roles: BTreeSet<String>,
    pub keys: Vec<VerifyingKey>,
    /// Lowercase e-mails that identify the principal as a git author or committer.
    pub emails: BTreeSet<String>,
}

/// The first entry of a log.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Genesis {
    pub origin: String,
    pub log_key: VerifyingKey,
    pub administrators: Vec<PrincipalSpec>,
    /// The policy text in force from entry 0; `None` means the built-in
    /// default (`policy::DEFAULT_POLICY`).
    pub policy: Option<String>,
}

/// An id naming a change or a policy proposal: 1..=128 of `A-Z a-z 0-9 . _ -`,
/// starting with a letter or digit.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct RecordId(String);

impl RecordId {
    /// Parses and validates a change or proposal id.
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(RecordId(s.to_owned()))
        } else {
            Err(format!(
                "{s:?} must be 1..=128 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit"
            ))
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a subject: a git object id (40 or 64 lowercase hex digits) or an
/// artifact digest `sha256:` + 64 lowercase hex digits.
pub fn check_subject(s: &str) -> Result<(), String> {
    if git::is_object_id(s) || is_digest(s) {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is neither a commit SHA (40 or 64 lowercase hex digits) nor an artifact digest (sha256: and 64 lowercase hex digits)"
        ))
    }
}

/// True for `sha256:` followed by 64 lowercase hex digits.
pub fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// Changes to a principal's roles and e-mails.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PrincipalUpdate {
    pub principal: PrincipalId,
    pub grant_roles: BTreeSet<String>,
    pub revoke_roles: BTreeSet<String>,
    pub add_emails: BTreeSet<String>,
    pub remove_emails: BTreeSet<String>,
    pub reason: String,
}

/// How a commit was signed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SignatureFormat {
    None,
    Ssh,
    OpenPgp,
    X509,
    Unknown,
}

/// The ingester's verdict on a commit signature.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SignatureVerdict {
    Unsigned,
    Verified,
    Bad,
    UntrustedKey,
    Unverifiable,
}

impl SignatureVerdict {
    /// Lowercase name for reports.
    pub fn name(self) -> &'static str {
        match self {
            SignatureVerdict::Unsigned => "unsigned",
            SignatureVerdict::Verified => "verified",
            SignatureVerdict::Bad => "bad",
            SignatureVerdict::UntrustedKey => "untrusted-key",
            SignatureVerdict::Unverifiable => "unverifiable",
        }
    }
}

/// A commit signature verdict with its evidence.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CommitSignature {
    pub format: SignatureFormat,
    pub verdict: SignatureVerdict,
    pub signer_identity: String,
    pub key_fingerprint: String,
    pub detail: String,
    /// For OpenPGP `Verified`/`Bad` verdicts: the signer's reduced
    /// certificate, so the verdict can be re-checked; empty otherwise.
    pub signer_key: Vec<u8>,
}

impl CommitSignature {
    /// The verdict on a commit that carries no signature.
    pub fn unsigned() -> Self {
        CommitSignature {
            format: SignatureFormat::None,
            verdict: SignatureVerdict::Unsigned,
            signer_identity: String::new(),
            key_fingerprint: String::new(),
            detail: "the commit carries no signature".into(),
            signer_key: Vec::new(),
        }
    }
}

/// Paths a commit changed, as the ingester saw them.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct ChangedPaths {
    pub added: u32,
    pub modified: u32,
    pub deleted: u32,
    pub paths: Vec<String>,
    pub truncated: bool,
}

/// A git commit observed in a repository. `commit` was parsed from `raw`,
/// whose object id is `sha`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CommitObservation {
    pub repository: String,
    pub sha: String,
    pub raw: Vec<u8>,
    pub commit: GitCommit,
    pub changed: ChangedPaths,
    pub signature: CommitSignature,
}

/// Outcome of a CI run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CiStatus {
    Passed,
    Failed,
    Canceled,
}

impl CiStatus {
    /// Lowercase name, as the CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            CiStatus::Passed => "passed",
            CiStatus::Failed => "failed",
            CiStatus::Canceled => "canceled",
        }
    }
}

/// A finished CI run.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CiRun {
    pub repository: String,
    pub commit: String,
    pub artifact_digests: BTreeSet<String>,
    pub status: CiStatus,
    pub provider: String,
    pub pipeline: String,
    pub run_id: String,
    pub url: String,
    pub git_ref: String,
}

/// A change being opened.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ChangeOpening {
    pub change_id: RecordId,
    pub title: String,
    pub repository: String,
    pub commits: BTreeSet<String>,
    pub artifact_digests: BTreeSet<String>,
    pub environments: BTreeSet<String>,
    pub ticket: String,
    pub description: String,
}

/// A new revision of a change.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ChangeAmendment {
    pub change_id: RecordId,
    pub commits: BTreeSet<String>,
    pub artifact_digests: BTreeSet<String>,
    /// Empty keeps the current environments.
    pub environments: BTreeSet<String>,
    pub reason: String,
}

/// An approval (`approve`) or rejection of a change.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ChangeReview {
    pub change_id: RecordId,
    pub seen_subjects: BTreeSet<String>,
    pub approve: bool,
    pub comment: String,
    /// The revision reviewed (1 is the opening); `None` when the reviewer
    /// did not state it (ledger-format §8.2).
    pub revision: Option<u32>,
}

/// A deployment (or other governed action) about to happen.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DeployRequest {
    pub action: String,
    pub environment: String,
    pub repository: Option<String>,
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub subjects: BTreeSet<String>,
    pub change_id: Option<RecordId>,
    pub break_glass: bool,
    pub justification: String,
}

/// A review closing a break-glass obligation.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct BreakGlassReview {
    pub deployment_index: u64,
    pub justified: bool,
    pub comment: String,
}

/// A proposed policy document (already parsed once to be well formed).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PolicyProposal {
    pub proposal_id: RecordId,
    pub text: String,
    pub base_version: u64,
    pub description: String,
}

/// The typed body of an event.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Body {
    Genesis(Genesis),
    PrincipalRegistered(PrincipalSpec),
    KeyRotated {
        principal: PrincipalId,
        new_key: VerifyingKey,
        old_key: Option<VerifyingKey>,
    },
    KeyRevoked {
        principal: PrincipalId,
        key: VerifyingKey,
        reason: String,
    },
    Annotation {
        subject: String,
        kind: String,
        text: String,
        attributes: BTreeMap<String, String>,
    },
    PrincipalUpdated(PrincipalUpdate),
    CommitObserved(Box<CommitObservation>),
    CiRunReported(CiRun),
    ChangeOpened(ChangeOpening),
    ChangeAmended(ChangeAmendment),
    ChangeReviewed(ChangeReview),
    DeployRequested(DeployRequest),
    BreakGlassReviewed(BreakGlassReview),
    PolicyProposed(PolicyProposal),
    PolicyApproved {
        proposal_id: RecordId,
    },
    /// A second identity administrator's approval of the identity change
    /// recorded at `entry`, which waits for it (ledger-format §8.2).
    IdentityChangeApproved {
        entry: u64,
    },
    /// Its proposer withdraws the identity change recorded at `entry` while
    /// it still waits, so that no approval can apply it (ledger-format §8.2.1).
    IdentityChangeWithdrawn {
        entry: u64,
        reason: String,
    },
}

impl Body {
    /// Short name for logs and errors.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Body::Genesis(_) => "genesis",
            Body::PrincipalRegistered(_) => "principal_registered",
            Body::KeyRotated { .. } => "key_rotated",
            Body::KeyRevoked { .. } => "key_revoked",
            Body::Annotation { .. } => "annotation",
            Body::PrincipalUpdated(_) => "principal_updated",
            Body::CommitObserved(_) => "commit_observed",
            Body::CiRunReported(_) => "ci_run_reported",
            Body::ChangeOpened(_) => "change_opened",
            Body::ChangeAmended(_) => "change_amended",
            Body::ChangeReviewed(_) => "change_reviewed",
            Body::DeployRequested(_) => "deploy_requested",
            Body::BreakGlassReviewed(_) => "break_glass_reviewed",
            Body::PolicyProposed(_) => "policy_proposed",
            Body::PolicyApproved { .. } => "policy_approved",
            Body::IdentityChangeApproved { .. } => "identity_change_approved",
            Body::IdentityChangeWithdrawn { .. } => "identity_change_withdrawn",
        }
    }

    /// True for bodies that change who may sign what or which policy is in
    /// force: the history an auditor needs to check every signature and
    /// decision back to genesis.
    pub fn is_identity_or_policy(&self) -> bool {
        matches!(
            self,
            Body::Genesis(_)
                | Body::PrincipalRegistered(_)
                | Body::KeyRotated { .. }
                | Body::KeyRevoked { .. }
                | Body::PrincipalUpdated(_)
                | Body::PolicyProposed(_)
                | Body::PolicyApproved { .. }
                | Body::IdentityChangeApproved { .. }
                | Body::IdentityChangeWithdrawn { .. }
        )
    }
}

/// A parsed, well-formed event (its signature is checked elsewhere).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Event {
    pub event_id: String,
    pub claimed_time_nanos: i64,
    pub signer: PrincipalId,
    pub body: Body,
}

/// The role that may register principals and manage any key.
pub const ADMIN_ROLE: &str = "admin";

/// Whether `role` can be held by a principal: 1..=64 of a-z 0-9 - _.
pub fn valid_role(role: &str) -> bool {
    !role.is_empty()
        && role.len() <= 64
        && role
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Characters that text from others must not show raw, wherever Docket
/// displays it (the CLI, the evidence report): control characters (C0, DEL,
/// C1), line and paragraph separators, interlinear annotations, and every
/// Unicode Default_Ignorable_Code_Point (Unicode 16: soft hyphen, the
/// combining grapheme joiner, the Arabic letter mark, Hangul fillers,
/// Khmer inherent vowels, Mongolian free variation selectors and vowel
/// separator, zero-width characters, bidirectional embeddings, overrides
/// and isolates, invisible operators, variation selectors, the byte-order
/// mark, shorthand format controls, musical formatting and tags), which a
/// page renders as nothing, so that "pr\u{34F}od" would pass for "prod".
/// Events may carry them; displays escape them.
pub fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{AD}'
                | '\u{34F}'
                | '\u{61C}'
                | '\u{115F}'..='\u{1160}'
                | '\u{17B4}'..='\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF0}'..='\u{FFFB}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E0FFF}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every default-ignorable code point is hidden (a sample from each
    /// range), and ordinary text, combining accents included, is not.
    #[test]
    fn default_ignorable_characters_are_hidden() {
        for c in [
            '\u{AD}',
            '\u{34F}',
            '\u{61C}',
            '\u{115F}',
            '\u{1160}',
            '\u{17B4}',
            '\u{180B}',
            '\u{180F}',
            '\u{200B}',
            '\u{202E}',
            '\u{2064}',
            '\u{3164}',
            '\u{FE00}',
            '\u{FE0F}',
            '\u{FEFF}',
            '\u{FFA0}',
            '\u{FFF0}',
            '\u{1BCA0}',
            '\u{1D173}',
            '\u{E0001}',
            '\u{E01EF}',
            '\u{E0FFF}',
            '\u{7}',
            '\u{85}',
        ] {
            assert!(hidden(c), "U+{:04X}", c as u32);
        }
        for c in [
            'a',
            'é',
            '\u{301}',
            '\u{3000}',
            'ß',
            '\u{1F600}',
            '\u{FFFD}',
        ] {
            assert!(!hidden(c), "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn principal_ids() {
        for ok in ["alice", "ci.github", "svc_1", "bob@corp", "9a"] {
            assert!(PrincipalId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Alice", "-x", "a b", "a/b", &"a".repeat(129)] {
            assert!(PrincipalId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn record_ids_and_subjects() {
        for ok in ["CHG-1", "policy.v2", "a_b"] {
            assert!(RecordId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", "a b", "a/b", &"a".repeat(129)] {
            assert!(RecordId::parse(bad).is_err(), "{bad}");
        }
        let d = format!("sha256:{}", "ab".repeat(32));
        let sha = "0123456789abcdef0123456789abcdef01234567";
        assert!(check_subject(&d).is_ok() && check_subject(sha).is_ok());
        for bad in ["sha256:AB", "0123", &d.to_uppercase(), "sha512:00"] {
            assert!(check_subject(bad).is_err(), "{bad}");
        }
    }
}
