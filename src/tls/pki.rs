//! The life of a client certificate from the development CA: issued for a
//! bounded number of days with a random serial, renewed (`--replace`, which
//! revokes the certificate it replaces), revoked (`tls/revoked.json`, from
//! which `tls/crl.pem` is re-signed), and listed.
//!
//! The server refuses a revoked certificate twice over: its TLS verifier
//! checks `crl.pem` at the handshake, and [`crate::api::access::Guard`]
//! checks the serial of a connection already open on every call, so a
//! revocation applied by a reload (SIGHUP) also ends calls on connections
//! made before it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use rcgen::{
    CertificateParams, CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose, Issuer,
    KeyIdMethod, KeyPair, RevocationReason, RevokedCertParams, SerialNumber,
};
use serde::{Deserialize, Serialize};

use super::{PkiPaths, TlsError, read};

/// Default validity of an issued client certificate.
pub const DEFAULT_DAYS: u32 = 365;
/// Longest validity `docket cert issue` grants (ten years).
pub const MAX_DAYS: u32 = 3650;
/// Days the development CA that `init` makes is valid (ten years).
pub const CA_DAYS: u32 = 3650;
/// Default validity of a server certificate (`init`, `cert renew-server`).
pub const SERVER_DAYS: u32 = 397;
/// A server certificate this close to its end is reported when the server
/// starts or reloads.
pub const RENEW_WITHIN_SECS: i64 = 30 * 86_400;
/// How far before "now" a certificate's validity starts, so that a server
/// whose clock is a little behind the issuer's accepts it at once.
pub(super) const BACKDATE_SECS: i64 = 300;

/// What a certificate says about itself, for listing and revoking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// The transport identity, e.g. `CN=ci`.
    pub subject: String,
    /// Lower-case hex of the serial number's bytes.
    pub serial: String,
    pub not_before: i64,
    pub not_after: i64,
    pub issuer: String,
}

/// Reads the subject, serial and validity of a DER certificate.
pub fn cert_info(der: &[u8]) -> Option<CertInfo> {
    let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(CertInfo {
        subject: c.subject().to_string(),
        serial: hex::encode(c.raw_serial()),
        not_before: c.validity().not_before.timestamp(),
        not_after: c.validity().not_after.timestamp(),
        issuer: c.issuer().to_string(),
    })
}

/// The one certificate of a PEM file.
pub fn read_cert_info(path: &Path) -> Result<(CertInfo, Vec<u8>), TlsError> {
    let certs = super::certs(path)?;
    let pem_err = |reason: String| TlsError::Pem {
        path: path.display().to_string(),
        reason,
    };
    let [der] = certs.as_slice() else {
        return Err(pem_err(format!(
            "holds {} certificates; expected exactly one",
            certs.len()
        )));
    };
    let info = cert_info(der).ok_or_else(|| pem_err("not a readable X.509 certificate".into()))?;
    Ok((info, der.to_vec()))
}

/// One revoked certificate, as recorded in `tls/revoked.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revoked {
    pub serial: String,
    pub subject: String,
    /// RFC 3339, UTC.
    pub not_after: String,
    /// RFC 3339, UTC.
    pub revoked_at: String,
    /// One of [`REASONS`].
    pub reason: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokedFile {
    revoked: Vec<Revoked>,
}

/// The revocation reasons `docket cert revoke --reason` takes (RFC 5280 §5.3.1).
pub const REASONS: &[&str] = &[
    "unspecified",
    "key-compromise",
    "affiliation-changed",
    "superseded",
    "cessation-of-operation",
    "privilege-withdrawn",
];

fn reason_code(reason: &str) -> Option<RevocationReason> {
    Some(match reason {
        "unspecified" => RevocationReason::Unspecified,
        "key-compromise" => RevocationReason::KeyCompromise,
        "affiliation-changed" => RevocationReason::AffiliationChanged,
        "superseded" => RevocationReason::Superseded,
        "cessation-of-operation" => RevocationReason::CessationOfOperation,
        "privilege-withdrawn" => RevocationReason::PrivilegeWithdrawn,
        _ => return None,
    })
}

/// The revoked certificates recorded in `pki.revoked` (none if the file
/// does not exist yet).
pub fn revoked(pki: &PkiPaths) -> Result<Vec<Revoked>, TlsError> {
    let p = &pki.revoked;
    if !p.exists() {
        return Ok(Vec::new());
    }
    let text = read(p)?;
    let mut f: RevokedFile = serde_json::from_slice(&text).map_err(|e| TlsError::Pem {
        path: p.display().to_string(),
        reason: e.to_string(),
    })?;
    for r in &mut f.revoked {
        // As `cert_info` writes it, whatever a hand edit made of it.
        r.serial = r.serial.to_ascii_lowercase();
        if r.serial.is_empty() || hex::decode(&r.serial).is_err() {
            return Err(TlsError::Pem {
                path: p.display().to_string(),
                reason: format!("serial {:?} is not hex", r.serial),
            });
        }
    }
    Ok(f.revoked)
}

/// The serials of [`revoked`], for the per-call check.
pub fn revoked_serials(pki: &PkiPaths) -> Result<BTreeSet<String>, TlsError> {
    Ok(revoked(pki)?.into_iter().map(|r| r.serial).collect())
}

pub(super) fn now_secs() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn rfc3339(secs: i64) -> String {
    jiff::Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| secs.to_string())
}

pub(super) fn odt(secs: i64) -> Result<time::OffsetDateTime, TlsError> {
    time::OffsetDateTime::from_unix_timestamp(secs).map_err(|e| TlsError::Pem {
        path: "validity".into(),
        reason: e.to_string(),
    })
}

fn ca_issuer(pki: &PkiPaths) -> Result<Issuer<'static, KeyPair>, TlsError> {
    let pem_err = |path: &Path, e: String| TlsError::Pem {
        path: path.display().to_string(),
        reason: e,
    };
    let ca_key_pem =
        String::from_utf8(read(&pki.ca_key)?).map_err(|e| pem_err(&pki.ca_key, e.to_string()))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| pem_err(&pki.ca_key, e.to_string()))?;
    let ca_pem =
        String::from_utf8(read(&pki.ca_cert)?).map_err(|e| pem_err(&pki.ca_cert, e.to_string()))?;
    Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|e| pem_err(&pki.ca_cert, e.to_string()))
}

/// Writes `data` to `path` through a temporary file and a rename, so a
/// reader sees the old or the new file, never half of one.
pub fn replace_file(path: &Path, data: &str, private: bool) -> Result<(), TlsError> {
    let tmp = aside(path);
    write_new(&tmp, data, private)?;
    rename(&tmp, path)
}

/// A newly issued client certificate.
#[derive(Debug)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub info: CertInfo,
    /// The certificate this one replaced, now revoked as superseded.
    pub replaced: Option<Replaced>,
}

/// Checks a common name for `cert issue`.
pub fn check_cn(cn: &str) -> Result<(), TlsError> {
    if cn.is_empty()
        || !cn
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
    {
        return Err(TlsError::Pem {
            path: "--cn".into(),
            reason: format!("{cn:?} must be 1+ characters of A-Z a-z 0-9 - _ . @"),
        });
    }
    Ok(())
}

/// Issues a client certificate with common name `cn`, valid for `days`
/// from now, signed by the development CA in `pki`; writes `<out>/<cn>.pem`
/// and `<out>/<cn>.key`. If they exist, `replace` must be set: the old
/// certificate is then revoked as superseded, after the new pair has been
/// written aside and before it is renamed into place.
pub fn issue_client_cert(
    pki: &PkiPaths,
    cn: &str,
    out: &Path,
    days: u32,
    replace: bool,
) -> Result<Issued, TlsError> {
    check_cn(cn)?;
    issue_with_validity(pki, cn, out, validity_for(pki, days)?, replace)
}

/// The validity (Unix seconds) of a certificate issued now for `days`:
/// 1 to [`MAX_DAYS`], and ending before the CA, whose end would end it
/// anyway.
fn validity_for(pki: &PkiPaths, days: u32) -> Result<(i64, i64), TlsError> {
    if !(1..=MAX_DAYS).contains(&days) {
        return Err(TlsError::Pem {
            path: "--days".into(),
            reason: format!("{days} must be between 1 and {MAX_DAYS}"),
        });
    }
    let now = now_secs();
    let end = now + i64::from(days) * 86_400;
    let ca_end = first_cert_end(&pki.ca_cert)?;
    if ca_end <= now {
        return Err(TlsError::Pem {
            path: pki.ca_cert.display().to_string(),
            reason: format!(
                "the CA expired at {}, so nothing it signs is valid; make a new PKI (`docket \
                 init` in a new data directory) or use your own",
                rfc3339(ca_end)
            ),
        });
    }
    if end >= ca_end {
        return Err(TlsError::Pem {
            path: "--days".into(),
            reason: format!(
                "{days} days would outlast the CA {}, which expires at {}: at most {} days",
                pki.ca_cert.display(),
                rfc3339(ca_end),
                (ca_end - now - 1).max(0) / 86_400
            ),
        });
    }
    Ok((now - BACKDATE_SECS, end))
}

/// When the first certificate of a PEM file (a certificate, or a chain
/// that starts with one) expires, in Unix seconds.
pub fn first_cert_end(path: &Path) -> Result<i64, TlsError> {
    let certs = super::certs(path)?;
    cert_info(&certs[0])
        .map(|i| i.not_after)
        .ok_or_else(|| TlsError::Pem {
            path: path.display().to_string(),
            reason: "the certificate does not parse".into(),
        })
}

/// A renewed server certificate.
#[derive(Debug)]
pub struct RenewedServer {
    pub info: CertInfo,
    /// The names (DNS names, IP addresses) it is for.
    pub hosts: Vec<String>,
    /// The certificate it replaced.
    pub previous: CertInfo,
}

/// Issues the server a new key and certificate from the development CA,
/// valid `days`, for `hosts` (none: the names the current certificate is
/// for), and puts them in place of `server.key` and `server.pem`, the key
/// first. A running server takes them up when it reloads (SIGHUP) or
/// restarts; connections already open keep the old one.
pub fn renew_server_cert(
    pki: &PkiPaths,
    hosts: &[String],
    days: u32,
) -> Result<RenewedServer, TlsError> {
    let (previous, _) = read_cert_info(&pki.server_cert)?;
    let validity = validity_for(pki, days)?;
    let (info, hosts) = issue_server_cert(pki, hosts, validity)?;
    Ok(RenewedServer {
        info,
        hosts,
        previous,
    })
}

/// [`renew_server_cert`] with an explicit validity (Unix seconds), which
/// tests use to make a server certificate that has expired.
#[doc(hidden)]
pub fn issue_server_cert(
    pki: &PkiPaths,
    hosts: &[String],
    (not_before, not_after): (i64, i64),
) -> Result<(CertInfo, Vec<String>), TlsError> {
    let hosts = if hosts.is_empty() {
        let (_, der) = read_cert_info(&pki.server_cert)?;
        names_of(&der).ok_or_else(|| TlsError::Pem {
            path: pki.server_cert.display().to_string(),
            reason: "names no host (DNS name or IP address); give --host".into(),
        })?
    } else {
        super::check_hosts(hosts).map_err(|reason| TlsError::Pem {
            path: "--host".into(),
            reason,
        })?;
        hosts.to_vec()
    };
    let _lock = lock(pki)?;
    let issuer = ca_issuer(pki)?;
    let (key, cert, info) = sign_leaf(
        &issuer,
        Leaf {
            names: hosts.clone(),
            cn: super::SERVER_CN,
            usage: ExtendedKeyUsagePurpose::ServerAuth,
            validity: (not_before, not_after),
        },
        &pki.server_cert,
    )?;
    let key_tmp = aside(&pki.server_key);
    let cert_tmp = aside(&pki.server_cert);
    if let Err(e) = write_new(&key_tmp, &key.serialize_pem(), true)
        .and_then(|()| write_new(&cert_tmp, &cert.pem(), false))
    {
        let _ = std::fs::remove_file(&key_tmp);
        let _ = std::fs::remove_file(&cert_tmp);
        return Err(e);
    }
    // The key first: between the renames a reload reads a pair that does
    // not match and is refused, keeping the running configuration.
    rename(&key_tmp, &pki.server_key)?;
    rename(&cert_tmp, &pki.server_cert)?;
    Ok((info, hosts))
}

/// What a leaf certificate of the development CA says.
pub(super) struct Leaf<'a> {
    /// Subject alternative names (DNS names, IP addresses).
    pub(super) names: Vec<String>,
    pub(super) cn: &'a str,
    pub(super) usage: ExtendedKeyUsagePurpose,
    /// Not before, not after (Unix seconds).
    pub(super) validity: (i64, i64),
}

/// A new key and `leaf`'s certificate for it, signed by `issuer` with a
/// random serial, and what the certificate says (`path` names it in an
/// error).
pub(super) fn sign_leaf(
    issuer: &Issuer<'_, KeyPair>,
    leaf: Leaf<'_>,
    path: &Path,
) -> Result<(KeyPair, rcgen::Certificate, CertInfo), TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(leaf.names)?;
    params.distinguished_name.push(DnType::CommonName, leaf.cn);
    params.extended_key_usages = vec![leaf.usage];
    params.not_before = odt(leaf.validity.0)?;
    params.not_after = odt(leaf.validity.1)?;
    params.serial_number = Some(random_serial());
    let cert = params.signed_by(&key, issuer)?;
    let info = cert_info(cert.der()).ok_or_else(|| TlsError::Pem {
        path: path.display().to_string(),
        reason: "the certificate just issued does not parse".into(),
    })?;
    Ok((key, cert, info))
}

/// Whether the CA in `pki` signed `der` (whatever its validity).
fn signed_by_ca(pki: &PkiPaths, der: &[u8]) -> Result<bool, TlsError> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Ok(false);
    };
    for ca in super::certs(&pki.ca_cert)? {
        if let Ok((_, ca)) = x509_parser::parse_x509_certificate(&ca)
            && cert.issuer() == ca.subject()
            && cert.verify_signature(Some(ca.public_key())).is_ok()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The DNS names and IP addresses a certificate is for.
fn names_of(der: &[u8]) -> Option<Vec<String>> {
    use x509_parser::extensions::GeneralName;
    let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = c.subject_alternative_name().ok()??;
    let names: Vec<String> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some((*d).to_owned()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(*b).ok()?).to_string()),
                16 => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(*b).ok()?).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    (!names.is_empty()).then_some(names)
}

/// [`issue_client_cert`] with an explicit validity (Unix seconds), which
/// tests use to make certificates that have already expired.
#[doc(hidden)]
pub fn issue_with_validity(
    pki: &PkiPaths,
    cn: &str,
    out: &Path,
    (not_before, not_after): (i64, i64),
    replace: bool,
) -> Result<Issued, TlsError> {
    check_cn(cn)?;
    let cert_path = out.join(format!("{cn}.pem"));
    let key_path = out.join(format!("{cn}.key"));
    if out == pki.ca_cert.parent().unwrap_or(Path::new(""))
        && ["ca", "server", "client"].contains(&cn)
    {
        return Err(TlsError::Pem {
            path: "--cn".into(),
            reason: format!(
                "{cn:?} would overwrite the development PKI's own {cn}.pem and {cn}.key in {}",
                out.display()
            ),
        });
    }
    issue_to(
        pki,
        cn,
        (&cert_path, &key_path),
        (not_before, not_after),
        replace,
    )
}

/// Renews the admin's client certificate that `init` made
/// (`tls/client.pem` and `client.key`): same common name, valid `days`,
/// and the certificate it replaces revoked as superseded.
pub fn renew_admin_cert(pki: &PkiPaths, days: u32) -> Result<Issued, TlsError> {
    let (old, _) = read_cert_info(&pki.client_cert)?;
    let cn = old
        .subject
        .strip_prefix("CN=")
        .filter(|cn| check_cn(cn).is_ok())
        .ok_or_else(|| TlsError::Pem {
            path: pki.client_cert.display().to_string(),
            reason: format!(
                "its subject {:?} is not one common name; issue a new certificate instead",
                old.subject
            ),
        })?
        .to_owned();
    let validity = validity_for(pki, days)?;
    issue_to(
        pki,
        &cn,
        (&pki.client_cert, &pki.client_key),
        validity,
        true,
    )
}

/// Issues a client certificate for `cn` into `cert_path` and `key_path`
/// (see [`issue_client_cert`]).
fn issue_to(
    pki: &PkiPaths,
    cn: &str,
    (cert_path, key_path): (&Path, &Path),
    (not_before, not_after): (i64, i64),
    replace: bool,
) -> Result<Issued, TlsError> {
    let existing = cert_path.exists() || key_path.exists();
    // Replacing revokes the old certificate with this CA's CRL, which can
    // revoke only what this CA signed (every development CA has the same
    // name, so the signature decides).
    if replace && cert_path.exists() {
        let (old, der) = read_cert_info(cert_path)?;
        if !signed_by_ca(pki, &der)? {
            return Err(TlsError::Pem {
                path: cert_path.display().to_string(),
                reason: format!(
                    "holds {} (issuer {}), which this data directory's CA did not sign, so its \
                     CRL could not revoke it; nothing was changed: move the file away or pick \
                     another name",
                    old.subject, old.issuer
                ),
            });
        }
    }
    if existing && !replace {
        return Err(TlsError::Pem {
            path: cert_path.display().to_string(),
            reason: "already exists; give --replace to renew it (the certificate it holds \
                     is then revoked as superseded)"
                .into(),
        });
    }
    // One issuance or revocation at a time: two renewals of one name would
    // otherwise mix their files.
    let _lock = lock(pki)?;
    let issuer = ca_issuer(pki)?;
    let (key, cert, info) = sign_leaf(
        &issuer,
        Leaf {
            names: Vec::new(),
            cn,
            usage: ExtendedKeyUsagePurpose::ClientAuth,
            validity: (not_before, not_after),
        },
        cert_path,
    )?;
    let out = cert_path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(out).map_err(|source| TlsError::Io {
        path: out.display().to_string(),
        source,
    })?;
    // Both new files are written aside first; only then is the old
    // certificate revoked and are the two files put in place, so a failure
    // leaves the old pair whole (and, before the revocation, valid).
    let key_tmp = aside(key_path);
    let cert_tmp = aside(cert_path);
    let staged = write_new(&key_tmp, &key.serialize_pem(), true)
        .and_then(|()| write_new(&cert_tmp, &cert.pem(), false));
    let replaced = staged.and_then(|()| match cert_path.exists() {
        true => {
            let (old, _) = read_cert_info(cert_path)?;
            let newly = revoke_locked(pki, &issuer, &old, "superseded")?.is_some();
            Ok(Some(Replaced { info: old, newly }))
        }
        false => Ok(None),
    });
    let replaced = match replaced {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&key_tmp);
            let _ = std::fs::remove_file(&cert_tmp);
            return Err(e);
        }
    };
    // The key first: a certificate file never names a key that is not there.
    rename(&key_tmp, key_path)?;
    rename(&cert_tmp, cert_path)?;
    Ok(Issued {
        cert: cert_path.to_owned(),
        key: key_path.to_owned(),
        info,
        replaced,
    })
}

/// The certificate a renewal replaced.
#[derive(Debug)]
pub struct Replaced {
    pub info: CertInfo,
    /// False when it had been revoked already.
    pub newly: bool,
}

fn aside(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    PathBuf::from(tmp)
}

fn write_new(path: &Path, data: &str, private: bool) -> Result<(), TlsError> {
    let _ = std::fs::remove_file(path);
    super::write(path, data, private)
}

fn rename(from: &Path, to: &Path) -> Result<(), TlsError> {
    std::fs::rename(from, to).map_err(|source| TlsError::Io {
        path: to.display().to_string(),
        source,
    })
}

/// 16 random bytes, the first one's top bit clear (a positive INTEGER
/// without a leading zero byte) and the serial never zero.
pub(super) fn random_serial() -> SerialNumber {
    use rand::RngCore as _;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b[0] = (b[0] & 0x7f) | 0x01;
    SerialNumber::from(b.to_vec())
}

/// Revokes the certificate in `cert` (which the development CA must have
/// issued) for `reason`, and re-signs `crl.pem`. Revoking one already
/// revoked adds nothing to the list and says so (`Ok(None)`); the CRL is
/// re-signed from the list all the same.
pub fn revoke(pki: &PkiPaths, cert: &Path, reason: &str) -> Result<Option<Revoked>, TlsError> {
    let (info, der) = read_cert_info(cert)?;
    let issuer = ca_issuer(pki)?;
    // Only a certificate this CA signed can be revoked by its CRL.
    if let Err(e) = super::verify_client_cert(&pki.ca_cert, &der) {
        return Err(TlsError::Pem {
            path: cert.display().to_string(),
            reason: format!(
                "{} (issuer {}) is not a current client certificate of this data directory's \
                 CA, so its CRL cannot revoke it: {e}",
                info.subject, info.issuer
            ),
        });
    }
    revoke_info(pki, &issuer, &info, reason)
}

fn revoke_info(
    pki: &PkiPaths,
    issuer: &Issuer<'_, KeyPair>,
    info: &CertInfo,
    reason: &str,
) -> Result<Option<Revoked>, TlsError> {
    // One revocation at a time: each reads the list, adds to it and signs.
    let _lock = lock(pki)?;
    revoke_locked(pki, issuer, info, reason)
}

/// [`revoke_info`] with `revoked.lock` already held.
fn revoke_locked(
    pki: &PkiPaths,
    issuer: &Issuer<'_, KeyPair>,
    info: &CertInfo,
    reason: &str,
) -> Result<Option<Revoked>, TlsError> {
    if reason_code(reason).is_none() {
        return Err(TlsError::Pem {
            path: "--reason".into(),
            reason: format!("{reason:?} is not one of {}", REASONS.join(", ")),
        });
    }
    let mut list = revoked(pki)?;
    let added = if list.iter().any(|r| r.serial == info.serial) {
        None
    } else {
        let entry = Revoked {
            serial: info.serial.clone(),
            subject: info.subject.clone(),
            not_after: rfc3339(info.not_after),
            revoked_at: rfc3339(now_secs()),
            reason: reason.to_owned(),
        };
        list.push(entry.clone());
        // The list is the record; the CRL is signed from it.
        let json = serde_json::to_string_pretty(&RevokedFile {
            revoked: list.clone(),
        })
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
        replace_file(&pki.revoked, &format!("{json}\n"), false)?;
        Some(entry)
    };
    // Re-signed every time, also when nothing was added: a CRL an earlier
    // failure left behind the list is brought level with it.
    write_crl(pki, issuer, &list)?;
    Ok(added)
}

/// An exclusive lock on `<tls>/revoked.lock`, held until dropped.
fn lock(pki: &PkiPaths) -> Result<std::fs::File, TlsError> {
    let path = pki.revoked.with_file_name("revoked.lock");
    let io = |source| TlsError::Io {
        path: path.display().to_string(),
        source,
    };
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io)?;
    f.lock().map_err(io)?;
    Ok(f)
}

/// How long a CRL says it is good for. The server does not enforce it (a
/// CRL past its next update still revokes what it lists); it is set far
/// out so other verifiers that do enforce it keep using this one.
const CRL_DAYS: i64 = 3650;

fn write_crl(
    pki: &PkiPaths,
    issuer: &Issuer<'_, KeyPair>,
    list: &[Revoked],
) -> Result<(), TlsError> {
    let now = now_secs();
    let mut revoked_certs = Vec::with_capacity(list.len());
    for r in list {
        let at = r
            .revoked_at
            .parse::<jiff::Timestamp>()
            .map_or(now, |t| t.as_second());
        revoked_certs.push(RevokedCertParams {
            serial_number: SerialNumber::from(hex::decode(&r.serial).unwrap_or_default()),
            revocation_time: odt(at)?,
            reason_code: reason_code(&r.reason),
            invalidity_date: None,
        });
    }
    let params = CertificateRevocationListParams {
        this_update: odt(now)?,
        next_update: odt(now + CRL_DAYS * 86_400)?,
        // Increases with every CRL signed (RFC 5280 §5.2.3), also when one
        // is re-signed with the same list or twice in a second.
        crl_number: SerialNumber::from(next_crl_number(pki, now)),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(issuer)?;
    replace_file(&pki.crl, &crl.pem()?, false)
}

/// One more than the number of the CRL on disk, or the time if later.
fn next_crl_number(pki: &PkiPaths, now: i64) -> u64 {
    use rustls::pki_types::pem::PemObject as _;
    use x509_parser::prelude::FromDer as _;
    let previous = std::fs::read(&pki.crl).ok().and_then(|pem| {
        let der = rustls::pki_types::CertificateRevocationListDer::pem_slice_iter(&pem)
            .next()?
            .ok()?;
        let (_, crl) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(&der).ok()?;
        crl.crl_number().and_then(|n| u64::try_from(n).ok())
    });
    let now = u64::try_from(now).unwrap_or(0);
    previous.map_or(now, |p| p.saturating_add(1).max(now))
}

/// One client certificate found under a directory, for `docket cert list`.
#[derive(Debug)]
pub struct Listed {
    pub path: PathBuf,
    pub info: CertInfo,
    pub revoked: Option<Revoked>,
}

/// The certificates (`*.pem`) directly under `dir`, by file name, each with
/// its revocation if any. Files that are not one certificate are skipped.
pub fn list(pki: &PkiPaths, dir: &Path) -> Result<Vec<Listed>, TlsError> {
    let revoked = revoked(pki)?;
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(source) => {
            return Err(TlsError::Io {
                path: dir.display().to_string(),
                source,
            });
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pem"))
        .collect();
    paths.sort();
    for path in paths {
        let Ok((info, _)) = read_cert_info(&path) else {
            continue;
        };
        let revoked = revoked.iter().find(|r| r.serial == info.serial).cloned();
        out.push(Listed {
            path,
            info,
            revoked,
        });
    }
    Ok(out)
}

/// RFC 3339 (UTC) of Unix seconds, for messages.
pub fn fmt_secs(secs: i64) -> String {
    rfc3339(secs)
}
