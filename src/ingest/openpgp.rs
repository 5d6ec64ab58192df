//! OpenPGP commit signatures (`gpg.format=openpgp`, git's default): trusted
//! certificates from a keyring file, and the one check that both the
//! ingester and the log's re-check run.
//!
//! A certificate is trusted as its owner published it, nothing more: only the
//! primary key's own signatures on it count (third-party certifications and
//! photo IDs are dropped), a subkey counts only with a valid binding and
//! back-signature, and a key that is revoked, expired when it signed, or not
//! marked for signing does not vouch for a commit. What Docket records of a
//! verified or bad signature is that reduced certificate, so anyone can
//! repeat the check without the ingester's keyring.

use std::path::Path;

use pgp::composed::{Deserializable, DetachedSignature, SignedKeyDetails, SignedPublicKey};
use pgp::packet::{Signature, SignatureType};
use pgp::ser::Serialize as _;
use pgp::types::{KeyDetails, Tag, Timestamp};

/// Most bytes of a recorded certificate; larger ones are refused.
pub const MAX_CERT_BYTES: usize = 64 * 1024;

/// A certificate trusted to sign commits, reduced to what its owner signed.
#[derive(Clone, Debug)]
pub struct OpenPgpCert {
    /// The e-mail of its first user ID (or the whole ID, or the primary
    /// key's fingerprint when it has none).
    pub identity: String,
    cert: SignedPublicKey,
    /// `cert` serialized: the transferable public key recorded with a verdict.
    bytes: Vec<u8>,
}

impl OpenPgpCert {
    /// Reduces and checks a certificate; fails when nothing of it is bound
    /// by the primary key's own signature.
    pub fn new(cert: &SignedPublicKey) -> Result<Self, String> {
        let cert = reduce(cert)?;
        let bytes = cert
            .to_bytes()
            .map_err(|e| format!("cannot serialize the certificate: {e}"))?;
        if bytes.len() > MAX_CERT_BYTES {
            return Err(format!(
                "the certificate is {} bytes without third-party signatures; at most {MAX_CERT_BYTES} are recorded",
                bytes.len()
            ));
        }
        let identity = cert
            .details
            .users
            .first()
            .map(|u| {
                let id = String::from_utf8_lossy(u.id.id()).into_owned();
                match (id.rfind('<'), id.rfind('>')) {
                    (Some(a), Some(b)) if a < b => id[a + 1..b].to_owned(),
                    _ => id,
                }
            })
            .unwrap_or_else(|| hex(cert.primary_key.fingerprint().as_bytes()));
        Ok(OpenPgpCert {
            identity,
            cert,
            bytes,
        })
    }

    /// Parses the certificate recorded with a verdict: exactly one, already
    /// reduced (it must come back unchanged from reduction).
    pub fn from_recorded(bytes: &[u8]) -> Result<Self, String> {
        guarded(|| Self::from_recorded_unguarded(bytes))?
    }

    fn from_recorded_unguarded(bytes: &[u8]) -> Result<Self, String> {
        let mut certs = SignedPublicKey::from_bytes_many(bytes)
            .map_err(|e| format!("not an OpenPGP certificate: {e}"))?;
        let cert = certs
            .next()
            .ok_or("no OpenPGP certificate")?
            .map_err(|e| format!("not an OpenPGP certificate: {e}"))?;
        if certs.next().is_some() {
            return Err("more than one OpenPGP certificate".into());
        }
        let out = OpenPgpCert::new(&cert)?;
        if out.bytes != bytes {
            return Err(
                "the certificate carries parts its primary key did not sign (or trailing bytes)"
                    .into(),
            );
        }
        Ok(out)
    }

    /// The serialized certificate, as recorded with a verdict.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether one of this certificate's keys is the signature's issuer.
    pub fn issued(&self, sig: &DetachedSignature) -> bool {
        self.keys().any(|k| issued_by(&sig.signature, k))
    }

    fn keys(&self) -> impl Iterator<Item = &dyn KeyDetails> {
        std::iter::once(&self.cert.primary_key as &dyn KeyDetails).chain(
            self.cert
                .public_subkeys
                .iter()
                .map(|s| &s.key as &dyn KeyDetails),
        )
    }

    /// Checks `sig` over `payload` with the key of this certificate that
    /// issued it.
    pub fn check(&self, sig: &DetachedSignature, payload: &[u8]) -> Check {
        guarded(|| self.check_unguarded(sig, payload)).unwrap_or_else(Check::Unusable)
    }

    fn check_unguarded(&self, sig: &DetachedSignature, payload: &[u8]) -> Check {
        let cert = &self.cert;
        let primary = &cert.primary_key;
        let made = sig.signature.created();
        let expired = |created: Timestamp, self_sig: Option<&Signature>| {
            let d = self_sig.and_then(Signature::key_expiration_time)?;
            let ends = u64::from(created.as_secs()) + u64::from(d.as_secs());
            (d.as_secs() > 0 && made.is_some_and(|m| u64::from(m.as_secs()) > ends)).then_some(ends)
        };
        if let Some(r) = cert
            .details
            .revocation_signatures
            .iter()
            .find(|r| r.verify_key(primary).is_ok())
        {
            return Check::Unusable(format!("the certificate is revoked{}", reason(r)));
        }
        let primary_self = latest(
            cert.details
                .users
                .iter()
                .flat_map(|u| &u.signatures)
                .chain(&cert.details.direct_signatures)
                .filter(|s| !is_revocation(s)),
        );
        if let Some(ends) = expired(primary.created_at(), primary_self) {
            return Check::Unusable(format!(
                "the certificate expired at Unix time {ends}, before the signature was made"
            ));
        }
        let fingerprint = |k: &dyn KeyDetails| hex(k.fingerprint().as_bytes());
        let verdict = |k: &dyn KeyDetails, r: pgp::errors::Result<()>| match r {
            Ok(()) => Check::Verified {
                fingerprint: fingerprint(k),
            },
            Err(e) => Check::Bad {
                fingerprint: fingerprint(k),
                error: e.to_string(),
            },
        };
        if issued_by(&sig.signature, primary) {
            if let Some(s) = primary_self
                && has_key_flags(s)
                && !s.key_flags().sign()
            {
                return Check::Unusable("the primary key is not marked for signing".into());
            }
            return verdict(primary, sig.verify(primary, payload));
        }
        let Some(sub) = cert
            .public_subkeys
            .iter()
            .find(|s| issued_by(&sig.signature, &s.key))
        else {
            return Check::Unusable("no key of the certificate made the signature".into());
        };
        if let Some(r) = sub.signatures.iter().find(|s| is_revocation(s)) {
            return Check::Unusable(format!("the signing subkey is revoked{}", reason(r)));
        }
        let binding = latest(sub.signatures.iter());
        if !binding.is_some_and(|b| b.key_flags().sign()) {
            return Check::Unusable("the subkey is not bound for signing".into());
        }
        if let Some(ends) = expired(sub.key.created_at(), binding) {
            return Check::Unusable(format!(
                "the signing subkey expired at Unix time {ends}, before the signature was made"
            ));
        }
        verdict(&sub.key, sig.verify(&sub.key, payload))
    }
}

/// What [`OpenPgpCert::check`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// The issuing key is usable and the signature verifies.
    Verified { fingerprint: String },
    /// The issuing key is usable and the signature does not verify.
    Bad { fingerprint: String, error: String },
    /// The issuing key may not vouch for anything (revoked, expired, not
    /// for signing), so whether the signature verifies does not matter.
    Unusable(String),
}

/// Parses a commit's armored signature.
pub fn parse_signature(armored: &str) -> Result<DetachedSignature, String> {
    guarded(|| {
        DetachedSignature::from_string(armored)
            .map(|(s, _)| s)
            .map_err(|e| e.to_string())
    })?
}

/// Runs rpgp on bytes from outside (a commit's signature, a recorded
/// certificate), turning a panic inside the library into an error, so that
/// hostile input costs its sender a refusal and never the server a task.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|_| "the OpenPGP library failed on this input".to_owned())
}

/// The issuer a signature names: a fingerprint in upper-case hex, or a key
/// id when it names no fingerprint.
pub fn issuer(sig: &DetachedSignature) -> String {
    let s = &sig.signature;
    if let Some(f) = s.issuer_fingerprint().first() {
        return hex(f.as_bytes());
    }
    s.issuer_key_id()
        .first()
        .map(|k| format!("key id {}", hex(k.as_ref())))
        .unwrap_or_else(|| "no issuer".into())
}

/// Reads a keyring of OpenPGP certificates, ASCII-armored (as
/// `gpg --export --armor` writes) or binary.
pub fn read_keyring(path: &Path) -> Result<Vec<OpenPgpCert>, String> {
    let data = std::fs::read(path).map_err(|e| e.to_string())?;
    guarded(|| keyring(&data))?
}

fn keyring(data: &[u8]) -> Result<Vec<OpenPgpCert>, String> {
    let (certs, _) = SignedPublicKey::from_reader_many(data).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (i, c) in certs.enumerate() {
        let c = c.map_err(|e| format!("certificate {}: {e}", i + 1))?;
        let fp = hex(c.primary_key.fingerprint().as_bytes());
        out.push(OpenPgpCert::new(&c).map_err(|e| format!("certificate {fp}: {e}"))?);
    }
    if out.is_empty() {
        return Err("holds no OpenPGP certificate".into());
    }
    Ok(out)
}

/// Keeps what the primary key itself signed: its revocations and direct
/// signatures, user IDs with their self-signatures, and subkeys whose
/// bindings (and back-signatures) verify.
fn reduce(cert: &SignedPublicKey) -> Result<SignedPublicKey, String> {
    let primary = &cert.primary_key;
    let own = |s: &&Signature| issued_by(s, primary);
    let revocations = cert
        .details
        .revocation_signatures
        .iter()
        .filter(own)
        .filter(|s| s.verify_key(primary).is_ok())
        .cloned()
        .collect();
    let direct: Vec<Signature> = cert
        .details
        .direct_signatures
        .iter()
        .filter(own)
        .filter(|s| s.verify_key(primary).is_ok())
        .cloned()
        .collect();
    let users: Vec<_> = cert
        .details
        .users
        .iter()
        .filter_map(|u| {
            let sigs: Vec<Signature> = u
                .signatures
                .iter()
                .filter(own)
                .filter(|s| s.verify_certification(primary, Tag::UserId, &u.id).is_ok())
                .cloned()
                .collect();
            (!sigs.is_empty()).then(|| pgp::types::SignedUser::new(u.id.clone(), sigs))
        })
        .collect();
    if users.is_empty() && direct.is_empty() {
        return Err("no user ID or direct-key signature is signed by the primary key".into());
    }
    let subkeys = cert
        .public_subkeys
        .iter()
        .filter(|s| s.verify_bindings(primary).is_ok())
        .cloned()
        .collect();
    Ok(SignedPublicKey::new(
        primary.clone(),
        SignedKeyDetails::new(revocations, direct, users, Vec::new()),
        subkeys,
    ))
}

fn issued_by(s: &Signature, k: &(impl KeyDetails + ?Sized)) -> bool {
    let fps = s.issuer_fingerprint();
    if !fps.is_empty() {
        return fps.iter().any(|f| **f == k.fingerprint());
    }
    let id = k.legacy_key_id();
    s.issuer_key_id().iter().any(|i| **i == id)
}

fn latest<'a>(sigs: impl Iterator<Item = &'a Signature>) -> Option<&'a Signature> {
    sigs.max_by_key(|s| s.created().map(Timestamp::as_secs))
}

fn is_revocation(s: &Signature) -> bool {
    matches!(
        s.typ(),
        Some(
            SignatureType::KeyRevocation
                | SignatureType::SubkeyRevocation
                | SignatureType::CertRevocation
        )
    )
}

fn has_key_flags(s: &Signature) -> bool {
    s.config().is_some_and(|c| {
        c.hashed_subpackets()
            .any(|p| matches!(p.data, pgp::packet::SubpacketData::KeyFlags(_)))
    })
}

fn reason(r: &Signature) -> String {
    match r.revocation_reason_string() {
        Some(s) if !s.is_empty() => format!(" ({})", String::from_utf8_lossy(s)),
        _ => String::new(),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}
