//! Which transport identities (client certificate subjects) may call which
//! RPC of `docket.v1.Ledger` and `docket.v1.Governance`. Loaded from
//! `<data>/access.json`; checked in [`Guard::check`], which every handler of
//! both services calls first.
//!
//! ```json
//! { "identities": { "CN=docket-admin": ["*"], "CN=siem": ["Tail", "GetCheckpoint"] } }
//! ```
//! An identity not listed may call nothing; `"*"` means every method.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every method of `docket.v1.Ledger` and `docket.v1.Governance`, as named
/// in `access.json` (method names are unique across the two services).
pub const METHODS: &[&str] = &[
    "Append",
    "AppendStream",
    "GetEntry",
    "GetCheckpoint",
    "GetInclusionProof",
    "GetConsistencyProof",
    "Tail",
    "GetPrincipal",
    "ListPrincipals",
    "Ping",
    "Authorize",
    "GetDecision",
    "GetChange",
    "GetPolicy",
    "ListObligations",
    "ListViolations",
    "ExportEvidence",
];

/// The one place where transport identities are checked.
#[derive(Clone, Debug)]
pub struct Guard {
    /// `None` only for a dangerous plaintext server, where there is no
    /// transport identity to check.
    access: Option<std::sync::Arc<AccessPolicy>>,
}

impl Guard {
    /// Checks client certificates against `access`.
    pub fn new(access: AccessPolicy) -> Self {
        Guard {
            access: Some(std::sync::Arc::new(access)),
        }
    }

    /// No TLS: every call is allowed and the identity is `dangerous-plaintext`.
    pub fn dangerous_plaintext() -> Self {
        Guard { access: None }
    }

    /// The caller's transport identity, if it may call `method`; every
    /// handler calls this first.
    pub fn check<T>(
        &self,
        req: &tonic::Request<T>,
        method: &'static str,
    ) -> Result<String, tonic::Status> {
        use tonic::Status;
        let Some(access) = &self.access else {
            return Ok("dangerous-plaintext".into());
        };
        // Read once per connection, when its handshake completed.
        let peer = req
            .extensions()
            .get::<crate::tls::Peer>()
            .ok_or_else(|| Status::unauthenticated("no client certificate on this connection"))?;
        let identity: &str = peer.identity.as_deref().ok_or_else(|| {
            Status::unauthenticated("client certificate subject could not be read")
        })?;
        if !access.permits(identity, method) {
            tracing::warn!(%identity, method, "call refused by access.json");
            return Err(Status::permission_denied(format!(
                "transport identity {identity:?} may not call {method} \
                 (see access.json in the server's data directory)"
            )));
        }
        Ok(identity.to_owned())
    }
}

/// The access rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessPolicy {
    allowed: BTreeMap<String, BTreeSet<&'static str>>,
}

/// Why `access.json` was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    identities: BTreeMap<String, Vec<String>>,
}

impl AccessPolicy {
    /// Allows `identity` every method.
    pub fn allow_all(identity: &str) -> Self {
        let mut p = AccessPolicy::default();
        p.allowed
            .insert(identity.to_owned(), METHODS.iter().copied().collect());
        p
    }

    /// Adds methods (names from [`METHODS`] or `"*"`) for `identity`.
    pub fn grant(&mut self, identity: &str, methods: &[String]) -> Result<(), AccessError> {
        let text = serde_json::json!({ "identities": { identity: methods } }).to_string();
        let extra = Self::parse(&text, "--allow")?;
        for (id, m) in extra.allowed {
            self.allowed.entry(id).or_default().extend(m);
        }
        Ok(())
    }

    /// Parses the JSON form; `origin` names the source in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, AccessError> {
        let invalid = |reason: String| AccessError::Invalid {
            path: origin.to_owned(),
            reason,
        };
        let f: File = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let mut allowed = BTreeMap::new();
        for (identity, methods) in f.identities {
            if identity.is_empty() {
                return Err(invalid("an identity is empty".into()));
            }
            let mut set = BTreeSet::new();
            for m in methods {
                if m == "*" {
                    set.extend(METHODS.iter().copied());
                } else if let Some(known) = METHODS.iter().find(|k| **k == m) {
                    set.insert(*known);
                } else {
                    return Err(invalid(format!(
                        "identities[{identity:?}]: unknown method {m:?}; known: {}",
                        METHODS.join(", ")
                    )));
                }
            }
            allowed.insert(identity, set);
        }
        Ok(AccessPolicy { allowed })
    }

    /// Reads `access.json`.
    pub fn load(path: &Path) -> Result<Self, AccessError> {
        let text = std::fs::read_to_string(path).map_err(|source| AccessError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The JSON form, for `init` to write.
    pub fn to_json(&self) -> String {
        let map: BTreeMap<&str, Vec<&str>> = self
            .allowed
            .iter()
            .map(|(id, m)| {
                let all = m.len() == METHODS.len();
                (
                    id.as_str(),
                    if all {
                        vec!["*"]
                    } else {
                        m.iter().copied().collect()
                    },
                )
            })
            .collect();
        let v = serde_json::json!({ "identities": map });
        serde_json::to_string_pretty(&v).expect("a map of strings serialises") + "\n"
    }

    /// True when `identity` may call `method`.
    pub fn permits(&self, identity: &str, method: &str) -> bool {
        self.allowed
            .get(identity)
            .is_some_and(|m| m.contains(method))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_permits_and_refusals() {
        let p = AccessPolicy::parse(
            r#"{"identities": {"CN=a": ["*"], "CN=siem": ["Tail", "GetCheckpoint"]}}"#,
            "t",
        )
        .unwrap();
        assert!(p.permits("CN=a", "Append"));
        assert!(p.permits("CN=siem", "Tail"));
        assert!(!p.permits("CN=siem", "Append"));
        assert!(!p.permits("CN=other", "Ping"));
        let e = AccessPolicy::parse(r#"{"identities": {"CN=a": ["Apend"]}}"#, "access.json")
            .unwrap_err();
        assert!(e.to_string().contains("unknown method \"Apend\""), "{e}");
        let e = AccessPolicy::parse(r#"{"identites": {}}"#, "access.json").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let round = AccessPolicy::parse(&p.to_json(), "t").unwrap();
        assert_eq!(round, p);
    }
}
