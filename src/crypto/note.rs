//! C2SP signed notes with Ed25519 signatures (signature type 0x01).
//!
//! A note is `text || "\n" || signature lines`, where `text` ends in a newline
//! and each signature line is `"— " name " " base64(keyid[4] || sig[64]) "\n"`.
//! The key id is the first 4 bytes of SHA-256(name || 0x0A || 0x01 || pubkey).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

const ED25519_SIG_TYPE: u8 = 0x01;
const SIG_PREFIX: &str = "\u{2014} ";

/// Why a note was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum NoteError {
    #[error("note has no blank line separating text from signatures")]
    NoSignatures,
    #[error("note text must be non-empty and end with a newline")]
    BadText,
    #[error("malformed signature line {0:?}")]
    BadSignatureLine(String),
    #[error("no signature by {0:?} with the expected key id")]
    NoMatchingSignature(String),
    #[error("signature by {0:?} does not verify")]
    InvalidSignature(String),
    #[error("bad verifier key: {0}")]
    BadVerifierKey(String),
}

/// Signs notes under a key name; holds the log's private key.
pub struct NoteSigner {
    name: String,
    key: SigningKey,
    key_id: [u8; 4],
}

impl NoteSigner {
    /// A signer for `name`; callers check it with [`check_key_name`] first.
    pub fn new(name: &str, key: SigningKey) -> Self {
        let key_id = key_id(name, &key.verifying_key());
        NoteSigner {
            name: name.to_owned(),
            key,
            key_id,
        }
    }

    /// The matching verifier.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            key: self.key.verifying_key(),
            key_id: self.key_id,
        }
    }

    /// Returns `text` followed by a blank line and this signer's signature line.
    pub fn sign(&self, text: &str) -> String {
        debug_assert!(text.ends_with('\n'));
        let sig = self.key.sign(text.as_bytes());
        let mut blob = Vec::with_capacity(68);
        blob.extend_from_slice(&self.key_id);
        blob.extend_from_slice(&sig.to_bytes());
        format!("{text}\n{SIG_PREFIX}{} {}\n", self.name, B64.encode(blob))
    }
}

/// Verifies notes signed by one (name, key).
#[derive(Clone, Debug)]
pub struct NoteVerifier {
    name: String,
    key: VerifyingKey,
    key_id: [u8; 4],
}

impl NoteVerifier {
    /// A verifier for `name` and `key`.
    pub fn new(name: &str, key: VerifyingKey) -> Self {
        NoteVerifier {
            name: name.to_owned(),
            key_id: key_id(name, &key),
            key,
        }
    }

    /// Parses a verifier key `name+hexkeyid+base64(0x01 || pubkey)`.
    pub fn from_vkey(vkey: &str) -> Result<Self, NoteError> {
        let bad = |r: &str| NoteError::BadVerifierKey(r.to_owned());
        let mut parts = vkey.trim().splitn(3, '+');
        let (Some(name), Some(id_hex), Some(b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected name+keyid+key"));
        };
        let raw = B64.decode(b64).map_err(|_| bad("key is not base64"))?;
        if raw.len() != 33 || raw[0] != ED25519_SIG_TYPE {
            return Err(bad("not an Ed25519 (type 0x01) key"));
        }
        let key = super::parse_public_key(&raw[1..]).map_err(|e| bad(&e.to_string()))?;
        let v = NoteVerifier::new(name, key);
        if hex::encode(v.key_id) != id_hex {
            return Err(bad("key id does not match name and key"));
        }
        Ok(v)
    }

    /// This verifier as a `vkey` string.
    pub fn vkey(&self) -> String {
        let mut raw = vec![ED25519_SIG_TYPE];
        raw.extend_from_slice(self.key.as_bytes());
        format!(
            "{}+{}+{}",
            self.name,
            hex::encode(self.key_id),
            B64.encode(raw)
        )
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The public key.
    pub fn key(&self) -> &VerifyingKey {
        &self.key
    }

    /// Checks `note` carries a valid signature from this verifier and returns
    /// its text. Signature lines from other keys are ignored, as the spec says.
    pub fn verify<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        let split = note.rfind("\n\n").ok_or(NoteError::NoSignatures)?;
        let text = &note[..split + 1];
        let sigs = &note[split + 2..];
        if text.len() < 2 || !sigs.ends_with('\n') {
            return Err(NoteError::BadText);
        }
        for line in sigs[..sigs.len() - 1].split('\n') {
            let rest = line
                .strip_prefix(SIG_PREFIX)
                .ok_or_else(|| NoteError::BadSignatureLine(line.to_owned()))?;
            let (name, b64) = rest
                .rsplit_once(' ')
                .ok_or_else(|| NoteError::BadSignatureLine(line.to_owned()))?;
            let blob = B64
                .decode(b64)
                .map_err(|_| NoteError::BadSignatureLine(line.to_owned()))?;
            if name != self.name || blob.len() < 4 || blob[..4] != self.key_id {
                continue;
            }
            if blob.len() != 68 {
                return Err(NoteError::InvalidSignature(name.to_owned()));
            }
            return super::verify_strict(&self.key, text.as_bytes(), &blob[4..])
                .map(|()| text)
                .map_err(|_| NoteError::InvalidSignature(name.to_owned()));
        }
        Err(NoteError::NoMatchingSignature(self.name.clone()))
    }
}

/// Why a string cannot name a note signer (and so cannot be a log origin).
pub fn check_key_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 256 {
        return Err("must be 1..=256 bytes");
    }
    if name
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '+')
    {
        return Err("must not contain whitespace, control characters or '+'");
    }
    Ok(())
}

fn key_id(name: &str, key: &VerifyingKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0x0A, ED25519_SIG_TYPE]);
    h.update(key.as_bytes());
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_published_golang_note_example() {
        // The example key and note from golang.org/x/mod/sumdb/note's documentation.
        let vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        let note = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n\
                    \n\
                    \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
        let v = NoteVerifier::from_vkey(vkey).unwrap();
        assert_eq!(v.vkey(), vkey);
        let text = v.verify(note).unwrap();
        assert!(text.starts_with("If you think"));
        let tampered = note.replace("answer", "Answer");
        assert_eq!(
            v.verify(&tampered),
            Err(NoteError::InvalidSignature("PeterNeumann".into()))
        );
    }

    #[test]
    fn sign_verify_and_ignore_unknown_signers() {
        let a = NoteSigner::new("log.example", SigningKey::from_bytes(&[1; 32]));
        let b = NoteSigner::new("witness.example", SigningKey::from_bytes(&[2; 32]));
        let note = a.sign("log.example\n5\nAAAA\n");
        assert_eq!(
            a.verifier().verify(&note).unwrap(),
            "log.example\n5\nAAAA\n"
        );
        // A cosignature from another key is appended and ignored by a's verifier.
        let extra = b.sign("log.example\n5\nAAAA\n");
        let line = extra.rsplit_once("\n\n").unwrap().1;
        let cosigned = format!("{note}{line}");
        assert!(a.verifier().verify(&cosigned).is_ok());
        assert!(b.verifier().verify(&cosigned).is_ok());
        assert_eq!(
            NoteVerifier::new(
                "log.example",
                SigningKey::from_bytes(&[9; 32]).verifying_key()
            )
            .verify(&note),
            Err(NoteError::NoMatchingSignature("log.example".into()))
        );
        assert_eq!(
            a.verifier().verify("no sigs\n"),
            Err(NoteError::NoSignatures)
        );
    }
}
