//! The event-sourced identity state: principals, their roles and key history.
//! A deterministic fold over the log; the only writer of the state tree.
//!
//! Persisted layout (sled tree `state`), all integers big-endian:
//! - `m/next` → u64: index of the next entry to apply (entries below it are folded in)
//! - `m/genesis` → u16 len, origin, [32] log key
//! - `p/<principal id>` → a principal record (see [`encode_principal`])

mod codec;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ed25519_dalek::VerifyingKey;

use crate::crypto::{self, KeyId};
use crate::event::{ADMIN_ROLE, Body, Event, PrincipalId, PrincipalKind, PrincipalSpec};
use crate::ledger::Envelope;

pub use codec::{StateCodecError, decode_principal, encode_principal};

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
    #[error("{signer:?} may not {action}: needs role {role:?}")]
    Forbidden {
        signer: String,
        action: &'static str,
        role: &'static str,
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
    #[error("revoking this key would leave no administrator with an active key")]
    WouldLockOut,
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

    /// Finds the active key that signed the envelope (strict Ed25519 over
    /// the DSSE PAE). The keyid hint only orders the attempts.
    pub fn authenticate(&self, env: &Envelope) -> Result<VerifyingKey, AuthError> {
        let pae = crypto::pae(&env.payload_type, &env.payload);
        for sig in &env.signatures {
            let mut ordered: Vec<&VerifyingKey> = self.active.iter().collect();
            ordered.sort_by_key(|k| KeyId::of(k).to_string() != sig.keyid);
            for key in ordered {
                if crypto::verify_strict(key, &pae, &sig.sig).is_ok() {
                    return Ok(*key);
                }
            }
        }
        // Only to say why: a signature by a revoked key gets its own error.
        for sig in &env.signatures {
            for (key, at) in &self.revoked {
                if crypto::verify_strict(key, &pae, &sig.sig).is_ok() {
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
    genesis: Option<GenesisInfo>,
    principals: BTreeMap<PrincipalId, PrincipalRecord>,
    /// Every key ever registered (revoked or not) → its owner; keys are never reused.
    key_owner: HashMap<[u8; 32], PrincipalId>,
    /// Principals changed since the last [`State::take_changes`].
    dirty: BTreeSet<PrincipalId>,
    genesis_dirty: bool,
}

impl State {
    /// The empty state, before genesis.
    pub fn new() -> Self {
        State::default()
    }

    /// Index of the next entry to apply (= number of entries folded in).
    pub fn next_index(&self) -> u64 {
        self.next
    }

    /// Origin and log key, once genesis is applied.
    pub fn genesis(&self) -> Option<&GenesisInfo> {
        self.genesis.as_ref()
    }

    /// A principal by id.
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

    /// Folds entry `index` into the state. On error the state is unchanged.
    pub fn apply(
        &mut self,
        index: u64,
        event: &Event,
        key: &VerifyingKey,
    ) -> Result<(), ApplyError> {
        if index != self.next {
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
                ..State::default()
            };
            for a in &g.administrators {
                let mut spec = a.clone();
                spec.roles.insert(ADMIN_ROLE.to_owned());
                next.register(&spec, 0)?;
            }
            next.next = 1;
            *self = next;
            return Ok(());
        }
        let is_admin = self
            .principals
            .get(signer)
            .is_some_and(|p| p.roles.contains(ADMIN_ROLE));
        match &event.body {
            Body::Genesis(_) => return Err(ApplyError::GenesisNotFirst),
            Body::PrincipalRegistered(spec) => {
                if !is_admin {
                    return Err(forbidden(signer, "register principals"));
                }
                self.check_register(spec)?;
                self.register(spec, index)?;
            }
            Body::KeyRotated {
                principal,
                new_key,
                old_key,
            } => {
                if !is_admin && signer != principal {
                    return Err(forbidden(signer, "rotate another principal's key"));
                }
                let p = self
                    .principals
                    .get(principal)
                    .ok_or_else(|| ApplyError::UnknownPrincipal(principal.to_string()))?;
                if self.key_owner.contains_key(new_key.as_bytes()) {
                    return Err(ApplyError::KeyInUse(KeyId::of(new_key).to_string()));
                }
                if let Some(old) = old_key
                    && !p.active_keys().any(|k| k == old)
                {
                    return Err(ApplyError::KeyNotActive {
                        principal: principal.to_string(),
                        keyid: KeyId::of(old).to_string(),
                    });
                }
                let p = self
                    .principals
                    .get_mut(principal)
                    .expect("looked up just above");
                if let Some(old) = old_key {
                    for k in p.keys.iter_mut().filter(|k| &k.key == old) {
                        k.revoked_at = Some(index);
                    }
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
                if !is_admin && signer != principal {
                    return Err(forbidden(signer, "revoke another principal's key"));
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
                let admins_left = self
                    .principals
                    .values()
                    .filter(|q| q.roles.contains(ADMIN_ROLE))
                    .filter(|q| q.active_keys().any(|k| !(q.id == *principal && k == key)))
                    .count();
                if admins_left == 0 {
                    return Err(ApplyError::WouldLockOut);
                }
                let p = self
                    .principals
                    .get_mut(principal)
                    .expect("looked up just above");
                for k in p.keys.iter_mut().filter(|k| &k.key == key) {
                    k.revoked_at = Some(index);
                }
                self.dirty.insert(principal.clone());
            }
            Body::Annotation { .. } => {}
        }
        self.next = index + 1;
        Ok(())
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
            },
        );
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
        }
        out.push((b"m/next".to_vec(), self.next.to_be_bytes().to_vec()));
        out
    }

    /// Rebuilds the in-memory state from persisted key/value pairs.
    pub fn load<I>(pairs: I) -> Result<State, StateCodecError>
    where
        I: IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    {
        let mut s = State::new();
        for (k, v) in pairs {
            if k == b"m/next" {
                let arr: [u8; 8] = v
                    .as_slice()
                    .try_into()
                    .map_err(|_| StateCodecError::Truncated("m/next"))?;
                s.next = u64::from_be_bytes(arr);
            } else if k == b"m/genesis" {
                s.genesis = Some(codec::decode_genesis(&v)?);
            } else if k.starts_with(b"p/") {
                let rec = decode_principal(&v)?;
                for kr in &rec.keys {
                    s.key_owner.insert(kr.key.to_bytes(), rec.id.clone());
                }
                s.principals.insert(rec.id.clone(), rec);
            } else {
                return Err(StateCodecError::UnknownKey(
                    String::from_utf8_lossy(&k).into_owned(),
                ));
            }
        }
        Ok(s)
    }
}

fn principal_key(id: &PrincipalId) -> Vec<u8> {
    let mut k = b"p/".to_vec();
    k.extend_from_slice(id.as_str().as_bytes());
    k
}

fn forbidden(signer: &PrincipalId, action: &'static str) -> ApplyError {
    ApplyError::Forbidden {
        signer: signer.to_string(),
        action,
        role: ADMIN_ROLE,
    }
}

#[cfg(test)]
mod tests;
