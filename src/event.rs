//! Domain events: what a signed payload means once parsed. Built from wire
//! bytes only by `api::convert`, so an `Event` that exists is well formed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ed25519_dalek::VerifyingKey;

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
}

/// The first entry of a log.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Genesis {
    pub origin: String,
    pub log_key: VerifyingKey,
    pub administrators: Vec<PrincipalSpec>,
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
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principal_ids() {
        for ok in ["alice", "ci.github", "svc_1", "bob@corp", "9a"] {
            assert!(PrincipalId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Alice", "-x", "a b", "a/b", &"a".repeat(129)] {
            assert!(PrincipalId::parse(bad).is_err(), "{bad}");
        }
    }
}
