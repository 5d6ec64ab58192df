//! Wire ⇄ domain conversions. Every refusal names the field and the reason.

use std::collections::BTreeSet;

use prost::Message as _;

use super::pb;
use crate::crypto;
use crate::event::{Body, Event, Genesis, PrincipalId, PrincipalKind, PrincipalSpec};
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
    if s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(bad(field, "contains control characters"));
    }
    Ok(s)
}

fn key(field: &str, raw: &[u8]) -> Result<ed25519_dalek::VerifyingKey, InvalidEvent> {
    crypto::parse_public_key(raw).map_err(|e| bad(field, e.to_string()))
}

fn principal_id(field: &str, s: &str) -> Result<PrincipalId, InvalidEvent> {
    PrincipalId::parse(s).map_err(|e| bad(field, e.to_string()))
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
            Body::Genesis(Genesis {
                origin,
                log_key,
                administrators,
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
    if p.roles.len() > 64 {
        return Err(bad(&format!("{field}.roles"), "at most 64 roles"));
    }
    let mut roles = BTreeSet::new();
    for r in p.roles {
        let ok = !r.is_empty()
            && r.len() <= 64
            && r.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !ok {
            return Err(bad(
                &format!("{field}.roles"),
                format!("role {r:?} must be 1..=64 of a-z 0-9 - _"),
            ));
        }
        roles.insert(r);
    }
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
    })
}

/// The wire form of a principal spec.
pub fn principal_to_pb(p: &PrincipalSpec) -> pb::Principal {
    pb::Principal {
        id: p.id.to_string(),
        kind: match p.kind {
            PrincipalKind::Human => pb::PrincipalKind::Human,
            PrincipalKind::Service => pb::PrincipalKind::Service,
            PrincipalKind::Ci => pb::PrincipalKind::Ci,
            PrincipalKind::Cluster => pb::PrincipalKind::Cluster,
        } as i32,
        display_name: p.display_name.clone(),
        roles: p.roles.iter().cloned().collect(),
        public_keys: p.keys.iter().map(|k| k.to_bytes().to_vec()).collect(),
    }
}

/// Encodes a domain event as the protobuf payload a client signs.
pub fn encode_event(ev: &Event) -> Vec<u8> {
    let body = match &ev.body {
        Body::Genesis(g) => pb::event::Body::Genesis(pb::Genesis {
            origin: g.origin.clone(),
            log_public_key: g.log_key.to_bytes().to_vec(),
            administrators: g.administrators.iter().map(principal_to_pb).collect(),
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
