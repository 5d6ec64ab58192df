//! OpenPGP commit signatures (`gpg.format=openpgp`, git's default): trusted
//! certificates from a keyring file, and the one check that both the
//! ingester and the log's re-check run.
//!
//! A certificate is trusted as its owner published it, nothing more: only the
//! primary key's own signatures on it count (third-party certifications and
//! photo IDs are dropped), a subkey counts only with a valid binding and
//! back-signature, and a key that is revoked, expired when it signed, or not
//! marked for signing does not vouch for a commit. Only binary-document
//! signatures (v4/v6, with a creation time, not MD5/SHA-1/RIPEMD-160) are
//! checked, and an issuer named outside the signed area is only a hint that
//! cannot make a good signature "bad". What Docket records of a
//! verified or bad signature is that reduced certificate, so anyone can
//! repeat the check without the ingester's keyring.

use std::path::Path;

use pgp::composed::{
    Deserializable, DetachedSignature, SignedKeyDetails, SignedPublicKey, SignedPublicSubKey,
};
use pgp::crypto::hash::HashAlgorithm;
use pgp::packet::{Signature, SignatureType, SignatureVersion, Subpacket, SubpacketData};
use pgp::ser::Serialize as _;
use pgp::types::{Fingerprint, KeyDetails, KeyId, KeyVersion, Tag, Timestamp, VerifyingKey};

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
        // The first user ID its owner has not revoked.
        let identity = cert
            .details
            .users
            .iter()
            .find(|u| latest(u.signatures.iter()).is_some_and(|l| !is_revocation(l)))
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
        guarded(|| {
            issued_by(&sig.signature, &self.cert.primary_key)
                || self
                    .cert
                    .public_subkeys
                    .iter()
                    .any(|s| issued_by(&sig.signature, &s.key))
        })
        .unwrap_or(false)
    }

    /// Checks `sig` over `payload` with every key of this certificate that
    /// the signature names as its issuer: verified if a usable one verifies
    /// it; bad if none does and the signature names its issuer inside the
    /// signed area (otherwise anyone could name a key of their choosing
    /// and turn a good signature "bad"); unusable otherwise.
    pub fn check(&self, sig: &DetachedSignature, payload: &[u8]) -> Check {
        guarded(|| self.check_unguarded(sig, payload)).unwrap_or_else(Check::Unusable)
    }

    fn check_unguarded(&self, sig: &DetachedSignature, payload: &[u8]) -> Check {
        let cert = &self.cert;
        let primary = &cert.primary_key;
        let Some(made) = sig.signature.created() else {
            return Check::Unusable("the signature has no creation time".into());
        };
        if let Some(r) = cert.details.revocation_signatures.first() {
            return Check::Unusable(format!("the certificate is revoked{}", reason(r)));
        }
        let in_effect = self.in_effect(made);
        let cert_ok = in_effect.as_ref().map(|_| ()).map_err(Clone::clone);
        // The primary key signs only if every self-signature in effect that
        // carries key flags allows signing.
        let primary_ok = in_effect.and_then(|sigs| {
            match sigs
                .iter()
                .any(|s| has_key_flags(s) && !s.key_flags().sign())
            {
                true => Err("the primary key is not marked for signing".to_owned()),
                false => Ok(()),
            }
        });
        let (mut bad, mut unusable) = (None, None);
        if issued_by(&sig.signature, primary)
            && let Some(fingerprint) = attempt(
                sig,
                payload,
                primary,
                primary_ok.clone(),
                &mut bad,
                &mut unusable,
            )
        {
            return Check::Verified { fingerprint };
        }
        for sub in &cert.public_subkeys {
            if issued_by(&sig.signature, &sub.key)
                && let Some(fingerprint) = attempt(
                    sig,
                    payload,
                    &sub.key,
                    cert_ok.clone().and_then(|()| subkey_usable(sub, made)),
                    &mut bad,
                    &mut unusable,
                )
            {
                return Check::Verified { fingerprint };
            }
        }
        match (bad, unusable) {
            (Some((fingerprint, error)), _) if names_issuer_in_signed_area(&sig.signature) => {
                Check::Bad { fingerprint, error }
            }
            (Some(_), _) => Check::Unusable(
                "it does not verify with the key it names, and it names that key only outside its signed area"
                    .into(),
            ),
            (None, Some(why)) => Check::Unusable(why),
            (None, None) => {
                Check::Unusable("no key of the certificate made the signature".into())
            }
        }
    }

    /// Whether the certificate was valid at `made`, judged by the
    /// self-signatures in effect then: for the direct-key signatures and for
    /// each user ID, the latest one made at or before `made` (or, if all
    /// were made later, for example because older ones were minimized away,
    /// the earliest). A user ID whose signature in effect revokes it does
    /// not count. There must be one, and none may have let the key expire.
    /// Returns them.
    fn in_effect(&self, made: Timestamp) -> Result<Vec<&Signature>, String> {
        let primary = &self.cert.primary_key;
        if made.as_secs() < primary.created_at().as_secs() {
            return Err("the signature is older than the key".into());
        }
        let mut in_effect: Vec<&Signature> = Vec::new();
        in_effect.extend(at(self.cert.details.direct_signatures.iter(), made));
        for u in &self.cert.details.users {
            if let Some(s) = at(u.signatures.iter(), made)
                && !is_revocation(s)
            {
                in_effect.push(s);
            }
        }
        if in_effect.is_empty() {
            return Err(
                "no self-signature of the certificate was in effect when the signature was made"
                    .into(),
            );
        }
        for s in &in_effect {
            if let Some(ends) = expiry(primary.created_at(), s)
                && u64::from(made.as_secs()) > ends
            {
                return Err(format!(
                    "the certificate expired at Unix time {ends}, before the signature was made"
                ));
            }
        }
        Ok(in_effect)
    }
}

/// The signature in effect at `made`: the latest made at or before it,
/// else the earliest. Ties go to the later one in certificate order.
fn at<'a>(
    sigs: impl Iterator<Item = &'a Signature> + Clone,
    made: Timestamp,
) -> Option<&'a Signature> {
    latest(
        sigs.clone()
            .filter(|s| s.created().is_some_and(|c| c.as_secs() <= made.as_secs())),
    )
    .or_else(|| sigs.min_by_key(|s| s.created().map(Timestamp::as_secs)))
}

/// Whether a subkey could sign at `made`: not revoked, and its binding in
/// effect then (as for self-signatures) allows signing and had not expired.
fn subkey_usable(sub: &SignedPublicSubKey, made: Timestamp) -> Result<(), String> {
    if let Some(r) = sub.signatures.iter().find(|s| is_revocation(s)) {
        return Err(format!("the signing subkey is revoked{}", reason(r)));
    }
    if made.as_secs() < sub.key.created_at().as_secs() {
        return Err("the signature is older than the subkey".into());
    }
    let binding = at(sub.signatures.iter(), made).ok_or("the subkey has no binding signature")?;
    if !binding.key_flags().sign() {
        return Err("the subkey is not bound for signing".into());
    }
    if let Some(ends) = expiry(sub.key.created_at(), binding)
        && u64::from(made.as_secs()) > ends
    {
        return Err(format!(
            "the signing subkey expired at Unix time {ends}, before the signature was made"
        ));
    }
    Ok(())
}

/// When a self-signature or binding lets its key expire (Unix seconds).
fn expiry(created: Timestamp, s: &Signature) -> Option<u64> {
    let d = s.key_expiration_time()?.as_secs();
    (d > 0).then(|| u64::from(created.as_secs()) + u64::from(d))
}

/// Verifies with one candidate key: its fingerprint if usable and the
/// signature verifies; otherwise notes the first failure of each kind.
fn attempt(
    sig: &DetachedSignature,
    payload: &[u8],
    key: &impl VerifyingKey,
    usable: Result<(), String>,
    bad: &mut Option<(String, String)>,
    unusable: &mut Option<String>,
) -> Option<String> {
    let fingerprint = hex(key.fingerprint().as_bytes());
    if let Err(why) = usable {
        unusable.get_or_insert(why);
        return None;
    }
    match sig.verify(key, payload) {
        Ok(()) => Some(fingerprint),
        Err(e) => {
            bad.get_or_insert((fingerprint, e.to_string()));
            None
        }
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
        let parsed = DetachedSignature::from_string(armored)
            .map(|(s, _)| s)
            .map_err(|e| format!("malformed: {e}"))?;
        acceptable(&parsed.signature)?;
        Ok(parsed)
    })?
}

/// What a commit signature must be before any key is tried: a version 4 or
/// 6 signature of a binary document (what `git commit -S` makes; a
/// standalone or timestamp signature signs no document, and rpgp would
/// check it against the first byte only), with a creation time in its
/// signed area and a SHA-2 or SHA-3 hash.
fn acceptable(sig: &Signature) -> Result<(), String> {
    if !matches!(sig.version(), SignatureVersion::V4 | SignatureVersion::V6) {
        return Err(format!(
            "a version {:?} signature; Docket accepts versions 4 and 6",
            sig.version()
        ));
    }
    if sig.typ() != Some(SignatureType::Binary) {
        return Err(format!(
            "a signature of type {:?}, not of a binary document, so it does not sign the commit",
            sig.typ()
        ));
    }
    if !strong_enough(sig) || sig.hash_alg() == Some(HashAlgorithm::Sha1) {
        return Err(format!(
            "made with the hash {}, which Docket does not accept for commit signatures (SHA-2 or SHA-3 only)",
            sig.hash_alg()
                .map(|h| h.to_string())
                .unwrap_or_else(|| "unknown".into())
        ));
    }
    if sig.created().is_none() {
        return Err("no creation time in its signed area".into());
    }
    Ok(())
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
    guarded(|| {
        let (fps, ids) = named_issuer(&sig.signature);
        if let Some(f) = fps.first() {
            return hex(f.as_bytes());
        }
        ids.first()
            .map(|k| format!("key id {}", hex(k.as_ref())))
            .unwrap_or_else(|| "no issuer".into())
    })
    .unwrap_or_else(|e| e)
}

/// The usable certificates of a keyring, and why the others were skipped.
#[derive(Clone, Debug)]
pub struct Keyring {
    pub certs: Vec<OpenPgpCert>,
    /// One line per certificate left out: its fingerprint and the reason.
    pub skipped: Vec<String>,
}

/// Reads a keyring of OpenPGP certificates, ASCII-armored (as
/// `gpg --export --armor` writes) or binary. A certificate whose own
/// signatures do not hold it together (nothing its primary key signed
/// verifies, or an old key version) is skipped and reported, so that one
/// broken key does not stop ingestion; its signatures then come out
/// `untrusted-key`. Data that does not parse as certificates is an error.
pub fn read_keyring(path: &Path) -> Result<Keyring, String> {
    let data = crate::files::read_bounded(path, 64 << 20).map_err(|e| e.to_string())?;
    guarded(|| keyring(&data))?
}

/// The first line of an rpgp error, at most 300 bytes: some of its errors
/// print their whole internal state.
fn brief(e: impl std::fmt::Display) -> String {
    let text = e.to_string();
    let text = text.trim_end();
    let line = text.lines().next().unwrap_or_default();
    let mut end = line.len().min(300);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    if end < text.len() {
        format!("{}...", &line[..end])
    } else {
        text.to_owned()
    }
}

fn keyring(data: &[u8]) -> Result<Keyring, String> {
    let (certs, _) = SignedPublicKey::from_reader_many(data).map_err(brief)?;
    let mut out = Keyring {
        certs: Vec::new(),
        skipped: Vec::new(),
    };
    for (i, c) in certs.enumerate() {
        let c = c.map_err(|e| format!("certificate {}: {}", i + 1, brief(e)))?;
        let fp = hex(c.primary_key.fingerprint().as_bytes());
        match OpenPgpCert::new(&c) {
            Ok(cert) => out.certs.push(cert),
            Err(e) => out.skipped.push(format!("certificate {fp}: {e}")),
        }
    }
    if out.certs.is_empty() {
        return Err(match out.skipped.is_empty() {
            true => "holds no OpenPGP certificate".into(),
            false => format!(
                "holds no usable OpenPGP certificate ({})",
                out.skipped.join("; ")
            ),
        });
    }
    Ok(out)
}

/// Keeps what the primary key itself signed: its revocations and direct
/// signatures, user IDs with their self-signatures (revocations included),
/// and v4/v6 subkeys all of whose bindings (and back-signatures) verify.
/// Only signatures that name the primary key as issuer and use SHA-1 or
/// better count. Only version 4 and 6 primary keys are accepted.
fn reduce(cert: &SignedPublicKey) -> Result<SignedPublicKey, String> {
    let primary = &cert.primary_key;
    if !matches!(primary.version(), KeyVersion::V4 | KeyVersion::V6) {
        return Err(format!(
            "a version {:?} key; Docket accepts versions 4 and 6",
            primary.version()
        ));
    }
    let own = |s: &&Signature| issued_by(s, primary) && strong_enough(s);
    let key_sigs = |sigs: &[Signature]| -> Vec<Signature> {
        sigs.iter()
            .filter(own)
            .filter(|s| s.verify_key(primary).is_ok())
            .cloned()
            .collect()
    };
    let revocations = key_sigs(&cert.details.revocation_signatures);
    let direct = key_sigs(&cert.details.direct_signatures);
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
    let certifies = |s: &Signature| !is_revocation(s);
    if !users.iter().flat_map(|u| &u.signatures).any(certifies) && direct.is_empty() {
        return Err("no user ID or direct-key signature is signed by the primary key".into());
    }
    let subkeys = cert
        .public_subkeys
        .iter()
        .filter(|s| matches!(s.key.version(), KeyVersion::V4 | KeyVersion::V6))
        .filter(|s| s.signatures.iter().all(strong_enough))
        .filter(|s| s.verify_bindings(primary).is_ok())
        .cloned()
        .collect();
    Ok(SignedPublicKey::new(
        primary.clone(),
        SignedKeyDetails::new(revocations, direct, users, Vec::new()),
        subkeys,
    ))
}

/// The issuer a signature names in one area: fingerprints and key ids.
fn issuers(s: &Signature, hashed: bool) -> (Vec<&Fingerprint>, Vec<&KeyId>) {
    let Some(c) = s.config() else {
        return (Vec::new(), Vec::new());
    };
    let (mut fps, mut ids) = (Vec::new(), Vec::new());
    let area: Box<dyn Iterator<Item = &Subpacket>> = if hashed {
        Box::new(c.hashed_subpackets())
    } else {
        Box::new(c.unhashed_subpackets())
    };
    for p in area {
        match &p.data {
            SubpacketData::IssuerFingerprint(f) => fps.push(f),
            SubpacketData::IssuerKeyId(k) => ids.push(k),
            _ => {}
        }
    }
    (fps, ids)
}

/// The issuer as the signature names it: from the signed (hashed) area if
/// it names one there, else from the unsigned area (a hint only).
fn named_issuer(s: &Signature) -> (Vec<&Fingerprint>, Vec<&KeyId>) {
    let (fps, ids) = issuers(s, true);
    if fps.is_empty() && ids.is_empty() {
        issuers(s, false)
    } else {
        (fps, ids)
    }
}

fn names_issuer_in_signed_area(s: &Signature) -> bool {
    let (fps, ids) = issuers(s, true);
    !fps.is_empty() || !ids.is_empty()
}

/// Whether `k` is the key the signature names as its issuer: by
/// fingerprint when it names one, else by key id.
fn issued_by(s: &Signature, k: &(impl KeyDetails + ?Sized)) -> bool {
    let (fps, ids) = named_issuer(s);
    if !fps.is_empty() {
        return fps.iter().any(|f| **f == k.fingerprint());
    }
    let id = k.legacy_key_id();
    ids.iter().any(|i| **i == id)
}

/// Self-signatures and bindings may use SHA-1 (rpgp checks it with
/// collision detection; old keys have such signatures) but not MD5,
/// RIPEMD-160 or an unknown hash.
fn strong_enough(s: &Signature) -> bool {
    matches!(
        s.hash_alg(),
        Some(
            HashAlgorithm::Sha1
                | HashAlgorithm::Sha224
                | HashAlgorithm::Sha256
                | HashAlgorithm::Sha384
                | HashAlgorithm::Sha512
                | HashAlgorithm::Sha3_256
                | HashAlgorithm::Sha3_512
        )
    )
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_broken_keyring_is_refused_in_one_short_line() {
        // A public-key packet header promising 511 bytes, then nothing; and
        // random bytes.
        for data in [&[0x99u8, 0x01, 0xff][..], &[0x42; 64][..], &[][..]] {
            let Err(e) = super::keyring(data) else {
                panic!("a broken keyring was read");
            };
            assert!(!e.contains('\n') && e.len() <= 303, "{e}");
        }
        let long = format!("first {}\nsecond", "x".repeat(1000));
        let b = super::brief(&long);
        assert_eq!(b.len(), 303);
        assert!(b.starts_with("first x") && b.ends_with("..."));
        assert_eq!(super::brief("short"), "short");
        assert_eq!(super::brief("short\n"), "short");
    }
}
