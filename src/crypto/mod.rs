//! DSSE pre-authentication encoding, Ed25519 keys and key ids, and C2SP signed
//! notes (checkpoints). The log's private key is only ever held by a
//! [`NoteSigner`] built here.

mod keys;
mod note;

pub use keys::{
    KeyError, KeyId, generate_signing_key, parse_public_key, read_public_key, read_signing_key,
    write_public_key, write_signing_key,
};
pub use note::{NoteError, NoteSigner, NoteVerifier, check_key_name};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

/// The DSSE payload type of every Docket event.
pub const PAYLOAD_TYPE: &str = "application/vnd.docket.event.v1+protobuf";

/// `PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, with
/// lengths as ASCII decimal, as the DSSE v1 protocol defines it.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload_type.len() + payload.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

/// Signs a DSSE payload; returns the 64-byte signature.
pub fn sign_dsse(key: &SigningKey, payload_type: &str, payload: &[u8]) -> [u8; 64] {
    key.sign(&pae(payload_type, payload)).to_bytes()
}

/// Why a signature was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignatureError {
    #[error("signature is {0} bytes; Ed25519 signatures are 64 bytes")]
    BadLength(usize),
    #[error("signature does not verify (strict Ed25519)")]
    Invalid,
}

/// Strict Ed25519 verification (rejects non-canonical `s`, small-order `R`
/// and weak public keys), as DESIGN.md demands.
pub fn verify_strict(key: &VerifyingKey, msg: &[u8], sig: &[u8]) -> Result<(), SignatureError> {
    let bytes: [u8; 64] = sig
        .try_into()
        .map_err(|_| SignatureError::BadLength(sig.len()))?;
    let sig = Signature::from_bytes(&bytes);
    key.verify_strict(msg, &sig)
        .map_err(|_| SignatureError::Invalid)
}

/// Strict verification of a DSSE signature over `PAE(payload_type, payload)`.
pub fn verify_dsse(
    key: &VerifyingKey,
    payload_type: &str,
    payload: &[u8],
    sig: &[u8],
) -> Result<(), SignatureError> {
    verify_strict(key, &pae(payload_type, payload), sig)
}

/// BLAKE3-256 of `data`.
pub fn blake3_256(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_dsse_spec_example() {
        // The example from the DSSE protocol description.
        let got = pae("http://example.com/HelloWorld", b"hello world");
        assert_eq!(
            got,
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn dsse_sign_then_verify_and_tamper() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let sig = sign_dsse(&key, PAYLOAD_TYPE, b"payload");
        let vk = key.verifying_key();
        assert_eq!(verify_dsse(&vk, PAYLOAD_TYPE, b"payload", &sig), Ok(()));
        assert_eq!(
            verify_dsse(&vk, PAYLOAD_TYPE, b"payloae", &sig),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            verify_dsse(&vk, "text/plain", b"payload", &sig),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            verify_dsse(&vk, PAYLOAD_TYPE, b"payload", &sig[..63]),
            Err(SignatureError::BadLength(63))
        );
    }
}
