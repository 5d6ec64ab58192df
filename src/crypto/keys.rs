//! Ed25519 key files (PKCS#8 / SPKI PEM, readable by OpenSSL) and key ids.

use std::fmt;
use std::path::Path;

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};

/// A key id: the first 8 bytes of BLAKE3(public key), shown as 16 hex digits.
/// Used as the DSSE `keyid` hint; never trusted for authorization.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; 8]);

impl KeyId {
    /// The key id of an Ed25519 public key.
    pub fn of(key: &VerifyingKey) -> Self {
        let h = blake3::hash(key.as_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&h.as_bytes()[..8]);
        KeyId(id)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// Why a key could not be read or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not an Ed25519 PKCS#8 private key in PEM: {reason}")]
    BadPrivateKey { path: String, reason: String },
    #[error("{path}: not an Ed25519 public key (SPKI PEM or 64 hex digits): {reason}")]
    BadPublicKey { path: String, reason: String },
    #[error("public key is {0} bytes; Ed25519 public keys are 32 bytes")]
    BadLength(usize),
    #[error("public key is not a valid Ed25519 point")]
    NotAPoint,
    #[error("public key has small order and would accept forged signatures")]
    Weak,
    #[error("public key is not the canonical encoding of its point (RFC 8032 section 5.1.3)")]
    NotCanonical,
}

/// A fresh signing key from the operating system's RNG.
pub fn generate_signing_key() -> SigningKey {
    // An Ed25519 secret key is 32 uniformly random bytes (RFC 8032 §5.1.5).
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, seed.as_mut());
    SigningKey::from_bytes(&seed)
}

/// Parses a raw 32-byte Ed25519 public key, refusing invalid and weak points.
pub fn parse_public_key(bytes: &[u8]) -> Result<VerifyingKey, KeyError> {
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| KeyError::BadLength(bytes.len()))?;
    let key = VerifyingKey::from_bytes(&arr).map_err(|_| KeyError::NotAPoint)?;
    if key.is_weak() {
        return Err(KeyError::Weak);
    }
    Ok(key)
}

/// Refuses a key whose bytes are not the canonical encoding of its point.
/// RFC 8032 §5.1.3: decoding fails for y >= p (and for x = 0 with the
/// sign bit set); dalek reduces such encodings instead. Applied to keys
/// being declared (key files, events the server receives), not in
/// [`parse_public_key`], so a log or bundle that already holds such a key
/// still reads.
pub fn check_canonical(key: &VerifyingKey) -> Result<(), KeyError> {
    if key.to_edwards().compress().to_bytes() != key.to_bytes() {
        return Err(KeyError::NotCanonical);
    }
    Ok(())
}

/// Writes a private key as PKCS#8 v1 PEM (RFC 8410, without the optional
/// public key: OpenSSL and Python's `cryptography` refuse the v2 form
/// ed25519-dalek writes by default) with mode 0600.
pub fn write_signing_key(path: &Path, key: &SigningKey) -> Result<(), KeyError> {
    let v1 = ed25519_dalek::pkcs8::KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    };
    let pem = v1
        .to_pkcs8_pem(Default::default())
        .map_err(|e| KeyError::BadPrivateKey {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    write_private(path, pem.as_bytes())
}

/// Writes a public key as SPKI PEM.
pub fn write_public_key(path: &Path, key: &VerifyingKey) -> Result<(), KeyError> {
    let pem = key
        .to_public_key_pem(Default::default())
        .map_err(|e| KeyError::BadPublicKey {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    std::fs::write(path, pem).map_err(|source| KeyError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Largest key file read: an Ed25519 key in PEM is under 200 bytes.
const MAX_KEY_FILE: u64 = 64 << 10;

/// Reads a PKCS#8 PEM Ed25519 private key.
pub fn read_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    let text =
        crate::files::read_bounded_text(path, MAX_KEY_FILE).map_err(|source| KeyError::Io {
            path: path.display().to_string(),
            source,
        })?;
    SigningKey::from_pkcs8_pem(&text).map_err(|e| KeyError::BadPrivateKey {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Reads an Ed25519 public key: SPKI PEM, or the raw key as 64 hex digits.
pub fn read_public_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    let text =
        crate::files::read_bounded_text(path, MAX_KEY_FILE).map_err(|source| KeyError::Io {
            path: path.display().to_string(),
            source,
        })?;
    let bad = |reason: String| KeyError::BadPublicKey {
        path: path.display().to_string(),
        reason,
    };
    let trimmed = text.trim();
    let key = if trimmed.starts_with("-----BEGIN") {
        let key = VerifyingKey::from_public_key_pem(trimmed).map_err(|e| bad(e.to_string()))?;
        parse_public_key(key.as_bytes())?
    } else {
        let raw = hex::decode(trimmed).map_err(|e| bad(e.to_string()))?;
        parse_public_key(&raw)?
    };
    check_canonical(&key)?;
    Ok(key)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip_and_refuse_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let sk = dir.path().join("k.pem");
        let pk = dir.path().join("k.pub");
        write_signing_key(&sk, &key).unwrap();
        write_public_key(&pk, &key.verifying_key()).unwrap();
        assert_eq!(read_signing_key(&sk).unwrap().to_bytes(), key.to_bytes());
        // RFC 8410 v1 form: SEQUENCE { INTEGER 0, AlgorithmIdentifier, OCTET STRING },
        // 48 bytes of DER, which OpenSSL and other tools read.
        let pem = std::fs::read_to_string(&sk).unwrap();
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        use base64::Engine as _;
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(&der[..5], &[0x30, 0x2e, 0x02, 0x01, 0x00]);
        assert_eq!(read_public_key(&pk).unwrap(), key.verifying_key());
        // An existing key file is never overwritten.
        assert!(matches!(
            write_signing_key(&sk, &key),
            Err(KeyError::Io { .. })
        ));
        std::fs::write(&pk, "not a key").unwrap();
        assert!(matches!(
            read_public_key(&pk),
            Err(KeyError::BadPublicKey { .. })
        ));
        // The identity point is a weak key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(matches!(parse_public_key(&identity), Err(KeyError::Weak)));
        assert!(matches!(
            parse_public_key(&[1, 2]),
            Err(KeyError::BadLength(2))
        ));
    }

    /// y + p for small y: the same point as y, which dalek decodes, but not
    /// an encoding RFC 8032 accepts.
    #[test]
    fn non_canonical_encodings_are_refused() {
        let mut refused = 0;
        for small in 2u8..19 {
            // p + small = 2^255 - 19 + small, little-endian.
            let mut enc = [0xffu8; 32];
            enc[31] = 0x7f;
            enc[0] = 0xed + small;
            let Ok(key) = VerifyingKey::from_bytes(&enc) else {
                continue;
            };
            if key.is_weak() {
                continue;
            }
            // It still reads (a log may hold one), but is refused when declared.
            let read = parse_public_key(&enc).unwrap();
            assert!(
                matches!(check_canonical(&read), Err(KeyError::NotCanonical)),
                "{enc:02x?}"
            );
            // The canonical encoding of the same point is fine.
            let mut canonical = [0u8; 32];
            canonical[0] = small;
            let k = parse_public_key(&canonical).unwrap();
            check_canonical(&k).unwrap();
            refused += 1;
        }
        assert!(refused > 0, "no y + p in range decoded to a point");
    }
}
