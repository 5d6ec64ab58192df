//! Byte codec of persisted state records. Integers big-endian.
//!
//! Principal record:
//! ```text
//! u8 version = 2 (version 1 records, without e-mails, still decode)
//! u16 len, id | u8 kind code | u16 len, display name
//! u16 role count, then per role: u16 len, role (sorted)
//! u16 key count, then per key: [32] key, u64 added_at, u8 revoked (0/1), u64 revoked_at
//! u64 registered_at
//! u16 e-mail count, then per e-mail: u16 len, e-mail (sorted)   (version 2 only)
//! ```

use std::collections::BTreeSet;

use crate::crypto;
use crate::event::{PrincipalId, PrincipalKind};

use super::{GenesisInfo, KeyRecord, PrincipalRecord};

/// Why persisted state could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum StateCodecError {
    #[error("state record truncated at {0}")]
    Truncated(&'static str),
    #[error("state record has an invalid {0}")]
    Invalid(&'static str),
    #[error("unknown key {0:?} in the state tree")]
    UnknownKey(String),
}

/// Encodes a principal record. Its counts fit the u16s: the fold keeps
/// each at most [`super::MAX_PER_PRINCIPAL`].
pub fn encode_principal(p: &PrincipalRecord) -> Vec<u8> {
    let mut o = vec![2u8];
    put_str(&mut o, p.id.as_str());
    o.push(p.kind.code());
    put_str(&mut o, &p.display_name);
    o.extend_from_slice(&(p.roles.len() as u16).to_be_bytes());
    for r in &p.roles {
        put_str(&mut o, r);
    }
    o.extend_from_slice(&(p.keys.len() as u16).to_be_bytes());
    for k in &p.keys {
        o.extend_from_slice(k.key.as_bytes());
        o.extend_from_slice(&k.added_at.to_be_bytes());
        o.push(u8::from(k.revoked_at.is_some()));
        o.extend_from_slice(&k.revoked_at.unwrap_or(0).to_be_bytes());
    }
    o.extend_from_slice(&p.registered_at.to_be_bytes());
    o.extend_from_slice(&(p.emails.len() as u16).to_be_bytes());
    for e in &p.emails {
        put_str(&mut o, e);
    }
    o
}

/// Decodes a principal record.
pub fn decode_principal(b: &[u8]) -> Result<PrincipalRecord, StateCodecError> {
    let mut r = R { b, pos: 0 };
    let version = r.u8("version")?;
    if version != 1 && version != 2 {
        return Err(StateCodecError::Invalid("version"));
    }
    let id = PrincipalId::parse(&r.str("id")?).map_err(|_| StateCodecError::Invalid("id"))?;
    let kind = PrincipalKind::from_code(r.u8("kind")?).ok_or(StateCodecError::Invalid("kind"))?;
    let display_name = r.str("display_name")?;
    let mut roles = BTreeSet::new();
    for _ in 0..r.u16("roles")? {
        roles.insert(r.str("role")?);
    }
    let mut keys = Vec::new();
    for _ in 0..r.u16("keys")? {
        let raw = r.take(32, "key")?;
        let key = crypto::parse_public_key(raw).map_err(|_| StateCodecError::Invalid("key"))?;
        let added_at = r.u64("added_at")?;
        let revoked = r.u8("revoked")?;
        let at = r.u64("revoked_at")?;
        let revoked_at = match revoked {
            0 => None,
            1 => Some(at),
            _ => return Err(StateCodecError::Invalid("revoked flag")),
        };
        keys.push(KeyRecord {
            key,
            added_at,
            revoked_at,
        });
    }
    let registered_at = r.u64("registered_at")?;
    let mut emails = BTreeSet::new();
    if version == 2 {
        for _ in 0..r.u16("emails")? {
            emails.insert(r.str("email")?);
        }
    }
    if r.pos != b.len() {
        return Err(StateCodecError::Invalid("length"));
    }
    Ok(PrincipalRecord {
        id,
        kind,
        display_name,
        roles,
        keys,
        registered_at,
        emails,
    })
}

pub(super) fn encode_genesis(g: &GenesisInfo) -> Vec<u8> {
    let mut o = Vec::new();
    put_str(&mut o, &g.origin);
    o.extend_from_slice(g.log_key.as_bytes());
    o
}

pub(super) fn decode_genesis(b: &[u8]) -> Result<GenesisInfo, StateCodecError> {
    let mut r = R { b, pos: 0 };
    let origin = r.str("origin")?;
    let log_key = crypto::parse_public_key(r.take(32, "log_key")?)
        .map_err(|_| StateCodecError::Invalid("log_key"))?;
    if r.pos != b.len() {
        return Err(StateCodecError::Invalid("length"));
    }
    Ok(GenesisInfo { origin, log_key })
}

fn put_str(o: &mut Vec<u8>, s: &str) {
    // Event validation bounds every string well below 64 KiB.
    o.extend_from_slice(&(s.len() as u16).to_be_bytes());
    o.extend_from_slice(s.as_bytes());
}

struct R<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> R<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], StateCodecError> {
        let end = self.pos + n;
        if end > self.b.len() {
            return Err(StateCodecError::Truncated(what));
        }
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, StateCodecError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, StateCodecError> {
        let s = self.take(2, what)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, StateCodecError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_be_bytes(a))
    }
    fn str(&mut self, what: &'static str) -> Result<String, StateCodecError> {
        let n = self.u16(what)? as usize;
        String::from_utf8(self.take(n, what)?.to_vec()).map_err(|_| StateCodecError::Invalid(what))
    }
}
