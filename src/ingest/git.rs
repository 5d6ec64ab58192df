//! Git ingestion: reads commits from a repository with git2 and turns each
//! into a [`CommitObservation`]: the raw commit object (so anyone can
//! recompute its id and re-check its signature), the paths it changed, and a
//! verdict on its signature.
//!
//! Signature verdicts:
//! - SSH signatures (`gpg.format=ssh`) are verified with the namespace `git`
//!   over the commit without its `gpgsig` header, against the trusted keys:
//!   the principals' Ed25519 keys and an allowed-signers file. A trusted key
//!   whose signature does not verify (e.g. the author line was rewritten) is
//!   `Bad`; a key nobody trusts is `UntrustedKey`.
//! - OpenPGP signatures (`gpg.format=openpgp`) are verified over the same
//!   bytes against the certificates of an OpenPGP keyring
//!   ([`super::openpgp`]): `Verified` or `Bad` with the signer's certificate
//!   recorded, `UntrustedKey` when no trusted certificate made it or the key
//!   may not vouch (revoked, expired, not for signing), `Unverifiable` when
//!   it cannot be parsed.
//! - X.509 (gpgsm) signatures are recorded as `Unverifiable`: Docket does
//!   not check them, and says so rather than guessing.
//! - Commits without a signature are `Unsigned`.

use std::path::{Path, PathBuf};

use ssh_key::public::KeyData;
use ssh_key::{HashAlg, SshSig};

use super::openpgp::{self, Check, OpenPgpCert};
use crate::event::git::{parse_commit, signed_payload};
use crate::event::{
    ChangedPaths, CommitObservation, CommitSignature, SignatureFormat, SignatureVerdict,
};

/// Why ingestion failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    #[error("git repository {path}: {source}")]
    Open { path: String, source: git2::Error },
    #[error("{what}: {source}")]
    Git { what: String, source: git2::Error },
    #[error("commit {sha}: {reason}")]
    Commit { sha: String, reason: String },
    #[error("allowed-signers file {path}{}: {reason}", at_line(*.line))]
    AllowedSigners {
        path: String,
        line: usize,
        reason: String,
    },
    #[error("give --range A..B or at least one --ref")]
    NoRevisions,
    #[error(
        "give --range A..B or --ref, not both: a range's start hides its history from the refs too \
         (run ingest once for each)"
    )]
    RangeAndRefs,
}

/// A key trusted to sign commits, and whose it is.
#[derive(Clone, Debug)]
pub struct TrustedKey {
    /// A principal id, or the identity column of an allowed-signers line.
    pub identity: String,
    pub key: KeyData,
    /// The allowed-signers `valid-after` and `valid-before` options, in
    /// seconds since the epoch: the key vouches only for commits whose
    /// committer time is inside (as `git verify-commit` checks them).
    pub valid_after: Option<i64>,
    pub valid_before: Option<i64>,
}

impl TrustedKey {
    /// A principal's Ed25519 key as an SSH key.
    pub fn principal(id: &str, key: &ed25519_dalek::VerifyingKey) -> Self {
        TrustedKey {
            identity: id.to_owned(),
            key: KeyData::Ed25519(ssh_key::public::Ed25519PublicKey(key.to_bytes())),
            valid_after: None,
            valid_before: None,
        }
    }

    /// Why it does not vouch for a commit made at `time`, if it does not.
    fn outside(&self, time: i64) -> Option<String> {
        let show = |t: i64| {
            jiff::Timestamp::from_second(t).map_or_else(|_| t.to_string(), |t| t.to_string())
        };
        match (self.valid_after, self.valid_before) {
            (Some(a), _) if time < a => Some(format!(
                "{}'s key is valid only after {} and the commit's committer time is {}",
                self.identity,
                show(a),
                show(time)
            )),
            (_, Some(b)) if time > b => Some(format!(
                "{}'s key is valid only before {} and the commit's committer time is {}",
                self.identity,
                show(b),
                show(time)
            )),
            _ => None,
        }
    }
}

/// Splits `s` at `sep` outside double quotes.
fn split_unquoted(s: &str, sep: impl Fn(char) -> bool) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in s.char_indices() {
        if c == '"' {
            quoted = !quoted;
        } else if !quoted && sep(c) {
            if start < i {
                out.push(&s[start..i]);
            }
            start = i + c.len_utf8();
        }
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

/// An allowed-signers time: `YYYYMMDD`, `YYYYMMDDHHMM` or `YYYYMMDDHHMMSS`,
/// in UTC with a trailing `Z` and in the machine's time zone without one
/// (as `ssh-keygen` reads it).
fn signers_time(v: &str) -> Result<i64, String> {
    let (digits, utc) = match v.strip_suffix(['Z', 'z']) {
        Some(d) => (d, true),
        None => (v, false),
    };
    let fmt = match digits.len() {
        8 => "%Y%m%d",
        12 => "%Y%m%d%H%M",
        14 => "%Y%m%d%H%M%S",
        _ => {
            return Err(format!(
                "{v:?} is not a time like 20260101 or 202601011200[Z]"
            ));
        }
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{v:?} is not a time like 20260101 or 202601011200[Z]"
        ));
    }
    let civil = if digits.len() == 8 {
        jiff::civil::Date::strptime(fmt, digits)
            .map(|d| d.to_datetime(jiff::civil::Time::midnight()))
    } else {
        jiff::civil::DateTime::strptime(fmt, digits)
    }
    .map_err(|e| format!("{v:?}: {e}"))?;
    let zone = if utc {
        jiff::tz::TimeZone::UTC
    } else {
        jiff::tz::TimeZone::system()
    };
    match civil.to_zoned(zone) {
        Ok(z) => Ok(z.timestamp().as_second()),
        // jiff counts instants up to 9999-12-30T22:00Z, so the end of year
        // 9999 in most zones lies beyond; as a bound ("never before/after"),
        // that last instant serves.
        Err(_) if civil.year() == 9999 => Ok(jiff::Timestamp::MAX.as_second()),
        Err(e) => Err(format!("{v:?}: {e}")),
    }
}

/// Whether an OpenSSH pattern list (comma-separated patterns with `*` and
/// `?`, a leading `!` negating one) admits `s`, as `match_pattern_list`
/// decides it for `namespaces=`: some pattern matches and no negated one
/// does. Patterns are taken as written, spaces included.
fn ssh_pattern_list_allows(list: &str, s: &str) -> bool {
    let matches = ssh_pattern_matches;
    let mut admitted = false;
    for pattern in list.split(',') {
        match pattern.strip_prefix('!') {
            Some(negated) if matches(negated.as_bytes(), s.as_bytes()) => return false,
            Some(_) => {}
            None => admitted |= matches(pattern.as_bytes(), s.as_bytes()),
        }
    }
    admitted
}

/// Whether one OpenSSH pattern (`*` any run of bytes, `?` any one byte)
/// matches all of `t`. Iterative, backtracking only to the last `*`: the
/// file is untrusted input, and a pattern of many stars must cost time
/// proportional to pattern × text, not stack depth or exponential time.
fn ssh_pattern_matches(p: &[u8], t: &[u8]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    // Where the last star's run would resume: the pattern after it, and
    // the text position it has swallowed up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi + 1, ti));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((after, swallowed)) => {
                    star = Some((after, swallowed + 1));
                    pi = after;
                    ti = swallowed + 1;
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// " line N", or nothing for a failure of the whole file (line 0).
fn at_line(line: usize) -> String {
    if line == 0 {
        String::new()
    } else {
        format!(" line {line}")
    }
}

/// Reads an allowed-signers file (`ssh-keygen -Y verify` format, see
/// ssh-keygen(1) "ALLOWED SIGNERS"): `identities [options] keytype base64
/// [comment]`, `#` comments. Options are comma-separated outside quotes,
/// each value in double quotes (ssh-keygen refuses a line without them):
/// `namespaces="..."` (an ssh pattern list; lines whose list does not
/// admit `git` are skipped),
/// `valid-after=` and `valid-before=` (kept: the key vouches only for
/// commits made inside), `cert-authority` (skipped: such a line trusts
/// certificates the key signed, and Docket does not check SSH
/// certificates). Any other option is refused, as `ssh-keygen` refuses it.
pub fn read_allowed_signers(path: &Path) -> Result<Vec<TrustedKey>, IngestError> {
    let shown = path.display().to_string();
    let text = crate::files::read_bounded_text(path, 16 << 20).map_err(|e| {
        IngestError::AllowedSigners {
            path: shown.clone(),
            line: 0,
            reason: e.to_string(),
        }
    })?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: String| IngestError::AllowedSigners {
            path: shown.clone(),
            line: n + 1,
            reason,
        };
        let fields = split_unquoted(line, |c| c.is_ascii_whitespace());
        let mut fields = fields.into_iter();
        let identities = fields.next().unwrap_or_default().trim_matches('"');
        let mut next = fields
            .next()
            .ok_or_else(|| bad("no key after the identities".into()))?;
        let mut options = "";
        if !is_key_type(next) {
            options = next;
            next = fields
                .next()
                .ok_or_else(|| bad("no key type after the options".into()))?;
        }
        let b64 = fields
            .next()
            .ok_or_else(|| bad(format!("no key data after {next}")))?;
        let key = ssh_key::PublicKey::from_openssh(&format!("{next} {b64}"))
            .map_err(|e| bad(format!("key: {e}")))?;
        let (mut skip, mut valid_after, mut valid_before) = (false, None, None);
        for o in split_unquoted(options, |c| c == ',') {
            let (name, value) = match o.split_once('=') {
                // ssh-keygen refuses the whole line when a value is not
                // in double quotes ("missing start quote").
                Some((n, v)) => match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                    Some(inner) if !inner.contains('"') => (n, Some(inner)),
                    _ => {
                        return Err(bad(format!(
                            "option {n}: the value {v} must be in double quotes, as ssh-keygen requires ({n}=\"...\")"
                        )));
                    }
                },
                None => (o, None),
            };
            match (name.to_ascii_lowercase().as_str(), value) {
                ("cert-authority", None) => skip = true,
                ("namespaces", Some(v)) => {
                    if !ssh_pattern_list_allows(v, "git") {
                        skip = true;
                    }
                }
                ("valid-after", Some(v)) => {
                    valid_after =
                        Some(signers_time(v).map_err(|e| bad(format!("valid-after: {e}")))?);
                }
                ("valid-before", Some(v)) => {
                    valid_before =
                        Some(signers_time(v).map_err(|e| bad(format!("valid-before: {e}")))?);
                }
                _ => {
                    return Err(bad(format!(
                        "unknown option {o:?} (allowed: cert-authority, namespaces=, valid-after=, valid-before=)"
                    )));
                }
            }
        }
        if skip {
            continue;
        }
        for id in identities.split(',') {
            out.push(TrustedKey {
                identity: id.to_owned(),
                key: key.key_data().clone(),
                valid_after,
                valid_before,
            });
        }
    }
    Ok(out)
}

/// Whether Docket can check signatures of this key type: Ed25519, ECDSA
/// (P-256, P-384, P-521), RSA and the security-key kinds. DSA (`ssh-dss`),
/// which OpenSSH no longer accepts, is not among them.
fn can_verify(key: &KeyData) -> bool {
    unverifiable(key).is_none()
}

/// Why Docket cannot verify signatures by `key`, if it cannot: DSA and
/// other algorithms it does not implement, and RSA keys under 2048 or over
/// 4096 bits, which the RSA implementation refuses (a verdict of "bad" for
/// them would be false).
fn unverifiable(key: &KeyData) -> Option<String> {
    match key {
        KeyData::Ed25519(_)
        | KeyData::Ecdsa(_)
        | KeyData::SkEd25519(_)
        | KeyData::SkEcdsaSha2NistP256(_) => None,
        KeyData::Rsa(k) => {
            // Counted in whole bytes, as ssh-key and rsa count them.
            let bits = k.n.as_positive_bytes().map_or(0, |b| b.len() * 8);
            (!(2048..=4096).contains(&bits)).then(|| {
                format!(
                    "Docket cannot verify signatures by RSA keys under 2048 or over 4096 bits \
                     (this one has {bits})"
                )
            })
        }
        other => Some(format!(
            "Docket cannot verify {} signatures",
            other.algorithm()
        )),
    }
}

fn is_key_type(s: &str) -> bool {
    s.starts_with("ssh-") || s.starts_with("ecdsa-") || s.starts_with("sk-")
}

/// What to read from which repository.
#[derive(Clone, Debug)]
pub struct GitSource {
    pub repo: PathBuf,
    /// `A..B`: the commits reachable from B and not from A.
    pub range: Option<String>,
    /// Refs (or any revision) whose whole history is read.
    pub refs: Vec<String>,
    /// The repository's name in events; default: derived from the
    /// `origin` remote, else the directory name.
    pub repository: Option<String>,
}

/// Reads the commits of `src`, parents before children, each with its
/// signature verdict under `trusted` (SSH keys) and `openpgp`
/// (certificates).
pub fn observe(
    src: &GitSource,
    trusted: &[TrustedKey],
    openpgp: &[OpenPgpCert],
) -> Result<Vec<CommitObservation>, IngestError> {
    // As git does, a directory inside the work tree finds its repository.
    let repo = git2::Repository::discover(&src.repo).map_err(|source| IngestError::Open {
        path: src.repo.display().to_string(),
        source,
    })?;
    let git = |what: &str| {
        let what = what.to_owned();
        move |source| IngestError::Git { what, source }
    };
    let repository = match &src.repository {
        Some(r) => r.clone(),
        None => default_name(&repo, &src.repo),
    };
    let mut walk = repo.revwalk().map_err(git("revwalk"))?;
    walk.set_sorting(git2::Sort::TOPOLOGICAL | git2::Sort::REVERSE)
        .map_err(git("revwalk"))?;
    if src.range.is_none() && src.refs.is_empty() {
        return Err(IngestError::NoRevisions);
    }
    // One walk hides a range's start from every tip, refs included, so
    // "--ref main --range a..b" would leave out main's history before a.
    if src.range.is_some() && !src.refs.is_empty() {
        return Err(IngestError::RangeAndRefs);
    }
    if let Some(range) = &src.range {
        walk.push_range(range)
            .map_err(git(&format!("range {range}")))?;
    }
    for r in &src.refs {
        let obj = repo.revparse_single(r).map_err(git(&format!("ref {r}")))?;
        walk.push(obj.id()).map_err(git(&format!("ref {r}")))?;
    }
    let odb = repo.odb().map_err(git("object database"))?;
    let shallow = shallow_boundary(&repo);
    let mut out = Vec::new();
    for oid in walk {
        let oid = oid.map_err(git("revwalk"))?;
        let sha = oid.to_string();
        // Said here, by commit, rather than by the server at the append
        // (and so also in a dry run); from the object's header, before its
        // body is read and copied.
        let (size, _) = odb
            .read_header(oid)
            .map_err(git(&format!("reading commit {sha}")))?;
        if size > crate::api::convert::MAX_COMMIT_BYTES {
            return Err(IngestError::Commit {
                sha,
                reason: format!(
                    "its object is {size} bytes; the log records commit objects of at most {} bytes",
                    crate::api::convert::MAX_COMMIT_BYTES
                ),
            });
        }
        let raw = odb
            .read(oid)
            .map_err(git(&format!("reading commit {sha}")))?
            .data()
            .to_vec();
        let commit = parse_commit(&raw).map_err(|e| IngestError::Commit {
            sha: sha.clone(),
            reason: e.to_string(),
        })?;
        let changed = changed_paths(&repo, oid, !commit.parents.is_empty(), &shallow)
            .map_err(git(&format!("diff of {sha}")))?;
        let signature = verdict(&raw, &commit, trusted, openpgp);
        out.push(CommitObservation {
            repository: repository.clone(),
            sha,
            raw,
            commit,
            changed,
            signature,
        });
    }
    Ok(out)
}

/// `github.com/acme/payments` from `git@github.com:acme/payments.git` or
/// `https://github.com/acme/payments.git`; else the directory name.
fn default_name(repo: &git2::Repository, path: &Path) -> String {
    let url = repo
        .find_remote("origin")
        .ok()
        .and_then(|r| r.url().ok().map(str::to_owned));
    if let Some(url) = url.as_deref().and_then(name_of_url) {
        return url;
    }
    std::fs::canonicalize(path)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "repository".into())
}

/// The repository name a remote URL gives: host and path, without the
/// scheme, user, port and `.git`, so that the scp form
/// (`git@host:acme/pay.git`), `https://host/acme/pay.git` and
/// `ssh://git@host:2222/acme/pay.git` all name `host/acme/pay`.
fn name_of_url(url: &str) -> Option<String> {
    let s = url.trim_end_matches('/').trim_end_matches(".git");
    let name = match s.split_once("://") {
        Some((_, rest)) => {
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            let host = match host.rsplit_once(':') {
                Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
                _ => host,
            };
            match (host.is_empty(), path.is_empty()) {
                (_, true) => host.to_owned(),
                (true, false) => format!("/{path}"),
                (false, false) => format!("{host}/{path}"),
            }
        }
        None => {
            let s = s.rsplit_once('@').map_or(s, |(_, r)| r);
            s.replacen(':', "/", 1)
        }
    };
    Some(name).filter(|n| !n.is_empty() && !n.contains(char::is_whitespace))
}

/// The longest path `changed_paths` lists (the log refuses longer ones).
const MAX_PATH_BYTES: usize = 4096;

/// The commits a shallow clone has without their parents (`.git/shallow`).
fn shallow_boundary(repo: &git2::Repository) -> std::collections::HashSet<String> {
    std::fs::read_to_string(repo.path().join("shallow"))
        .map(|t| t.lines().map(|l| l.trim().to_owned()).collect())
        .unwrap_or_default()
}

/// What a commit changed against its first parent. At a shallow clone's
/// boundary, where the parent is not in the repository, it cannot be known:
/// no path is listed and `truncated` is set (a diff against nothing would
/// claim that every file was added). Paths the log could not hold (not
/// UTF-8, control characters, over 4096 bytes) are counted but not listed,
/// and also set `truncated`.
fn changed_paths(
    repo: &git2::Repository,
    oid: git2::Oid,
    has_parents: bool,
    shallow: &std::collections::HashSet<String>,
) -> Result<ChangedPaths, git2::Error> {
    // git lists a root commit at the depth limit too; its diff is whole.
    if has_parents && shallow.contains(&oid.to_string()) {
        return Ok(ChangedPaths {
            truncated: true,
            ..ChangedPaths::default()
        });
    }
    let commit = repo.find_commit(oid)?;
    let tree = commit.tree()?;
    let parent_tree = match commit.parent_count() {
        0 => None,
        _ => Some(commit.parent(0)?.tree()?),
    };
    let diff = repo.diff_tree_to_tree(parent_tree.as_ref(), Some(&tree), None)?;
    let mut out = ChangedPaths::default();
    for d in diff.deltas() {
        match d.status() {
            git2::Delta::Added | git2::Delta::Copied => out.added += 1,
            git2::Delta::Deleted => out.deleted += 1,
            _ => out.modified += 1,
        }
        let path = d.new_file().path().or_else(|| d.old_file().path());
        if let Some(p) = path {
            // A path that is not UTF-8 is not listed in some lossy
            // spelling that names no file of the tree.
            let recordable = p
                .to_str()
                .filter(|p| p.len() <= MAX_PATH_BYTES && !p.chars().any(char::is_control));
            match recordable {
                Some(p) if out.paths.len() < 100 => out.paths.push(p.to_owned()),
                _ => out.truncated = true,
            }
        }
    }
    Ok(out)
}

fn sig(
    format: SignatureFormat,
    verdict: SignatureVerdict,
    signer_identity: String,
    key_fingerprint: String,
    detail: String,
) -> CommitSignature {
    CommitSignature {
        format,
        verdict,
        signer_identity,
        key_fingerprint,
        detail,
        signer_key: Vec::new(),
    }
}

fn verdict(
    raw: &[u8],
    commit: &crate::event::GitCommit,
    trusted: &[TrustedKey],
    openpgp: &[OpenPgpCert],
) -> CommitSignature {
    let Some(armored) = &commit.signature else {
        return CommitSignature::unsigned();
    };
    if armored.starts_with(PGP_ARMOR) {
        return openpgp_verdict(raw, armored, openpgp);
    }
    if armored.starts_with("-----BEGIN SIGNED MESSAGE-----") {
        return sig(
            SignatureFormat::X509,
            SignatureVerdict::Unverifiable,
            String::new(),
            String::new(),
            "X.509 (gpgsm) signature present; Docket does not verify X.509 signatures".into(),
        );
    }
    if !armored.starts_with("-----BEGIN SSH SIGNATURE-----") {
        return sig(
            SignatureFormat::Unknown,
            SignatureVerdict::Unverifiable,
            String::new(),
            String::new(),
            "a signature of an unknown format".into(),
        );
    }
    let parsed = match SshSig::from_pem(armored.as_bytes()) {
        Ok(s) => s,
        Err(e) => {
            return sig(
                SignatureFormat::Ssh,
                SignatureVerdict::Unverifiable,
                String::new(),
                String::new(),
                format!("malformed SSH signature: {e}"),
            );
        }
    };
    let key = parsed.public_key().clone();
    let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
    let holders: Vec<&TrustedKey> = trusted.iter().filter(|t| t.key == key).collect();
    let time = commit.committer.time;
    let Some(owner) = holders.iter().find(|t| t.outside(time).is_none()) else {
        let why = match holders.first() {
            None => {
                format!("signed with {fingerprint}, which no principal or allowed signer holds")
            }
            Some(t) => format!(
                "signed with {fingerprint}, but {}",
                t.outside(time).unwrap_or_default()
            ),
        };
        return sig(
            SignatureFormat::Ssh,
            SignatureVerdict::UntrustedKey,
            String::new(),
            fingerprint.clone(),
            why,
        );
    };
    if let Some(why) = unverifiable(&key) {
        return sig(
            SignatureFormat::Ssh,
            SignatureVerdict::Unverifiable,
            owner.identity.clone(),
            fingerprint,
            format!(
                "{}'s {} key made this signature; {why}",
                owner.identity,
                key.algorithm()
            ),
        );
    }
    let payload = signed_payload(raw);
    let public = ssh_key::PublicKey::from(key);
    match public.verify("git", &payload, &parsed) {
        Ok(()) => sig(
            SignatureFormat::Ssh,
            SignatureVerdict::Verified,
            owner.identity.clone(),
            fingerprint,
            format!("good SSH signature by {}", owner.identity),
        ),
        Err(e) => sig(
            SignatureFormat::Ssh,
            SignatureVerdict::Bad,
            owner.identity.clone(),
            fingerprint,
            if parsed.namespace() != "git" {
                format!(
                    "{}'s key made this signature for the namespace {:?}, not \"git\": it does not sign this commit",
                    owner.identity,
                    parsed.namespace()
                )
            } else {
                format!(
                    "{}'s key made this signature, but it does not verify over this commit ({e}): the commit was changed after signing",
                    owner.identity
                )
            },
        ),
    }
}

const PGP_ARMOR: &str = "-----BEGIN PGP SIGNATURE-----";

fn openpgp_verdict(raw: &[u8], armored: &str, certs: &[OpenPgpCert]) -> CommitSignature {
    let pgp = SignatureFormat::OpenPgp;
    let parsed = match openpgp::parse_signature(armored) {
        Ok(s) => s,
        Err(e) => {
            return sig(
                pgp,
                SignatureVerdict::Unverifiable,
                String::new(),
                String::new(),
                format!("OpenPGP signature not checked: {e}"),
            );
        }
    };
    let issuer = openpgp::issuer(&parsed);
    let payload = signed_payload(raw);
    // Every trusted certificate holding the named issuer is tried: a good
    // signature by any of them wins, then a bad one, then the first reason
    // a key could not vouch.
    let mut found: Option<(&OpenPgpCert, Check)> = None;
    for cert in certs.iter().filter(|c| c.issued(&parsed)) {
        let check = cert.check(&parsed, &payload);
        let rank = |c: &Check| match c {
            Check::Verified { .. } => 0,
            Check::Bad { .. } => 1,
            Check::Unusable(_) => 2,
        };
        if found.as_ref().is_none_or(|(_, f)| rank(&check) < rank(f)) {
            found = Some((cert, check));
        }
    }
    let Some((cert, check)) = found else {
        let fingerprint = if issuer.contains(' ') {
            String::new()
        } else {
            issuer.clone()
        };
        return sig(
            pgp,
            SignatureVerdict::UntrustedKey,
            String::new(),
            fingerprint,
            format!("signed with OpenPGP {issuer}, which no certificate of the keyring holds"),
        );
    };
    let who = cert.identity.clone();
    let (verdict, fingerprint, detail) = match check {
        Check::Verified { fingerprint } => (
            SignatureVerdict::Verified,
            fingerprint.clone(),
            format!("good OpenPGP signature by {who} (key {fingerprint})"),
        ),
        Check::Bad { fingerprint, error } => (
            SignatureVerdict::Bad,
            fingerprint.clone(),
            format!(
                "{who}'s key {fingerprint} made this signature, but it does not verify over this commit ({error}): the commit was changed after signing"
            ),
        ),
        Check::Unusable(why) => {
            return sig(
                pgp,
                SignatureVerdict::UntrustedKey,
                who.clone(),
                if issuer.contains(' ') {
                    String::new()
                } else {
                    issuer
                },
                format!("signed with {who}'s certificate, but {why}"),
            );
        }
    };
    CommitSignature {
        signer_key: cert.bytes().to_vec(),
        ..sig(pgp, verdict, who, fingerprint, detail)
    }
}

/// Re-checks what an OpenPGP verdict claims, with the certificate it
/// carries.
fn recheck_openpgp(claimed: &CommitSignature, raw: &[u8], armored: &str) -> Result<(), String> {
    if claimed.format != SignatureFormat::OpenPgp {
        return Err("the commit carries an OpenPGP signature but the format says otherwise".into());
    }
    let parsed = match openpgp::parse_signature(armored) {
        Ok(p) => p,
        Err(e) => {
            return match claimed.verdict {
                SignatureVerdict::Unverifiable => Ok(()),
                v => Err(format!(
                    "the OpenPGP signature cannot be checked ({e}), so the verdict must be unverifiable, not {}",
                    v.name()
                )),
            };
        }
    };
    if !matches!(
        claimed.verdict,
        SignatureVerdict::Verified | SignatureVerdict::Bad
    ) {
        // Whom the ingester trusted is its word, as for SSH.
        return Ok(());
    }
    if claimed.signer_key.is_empty() {
        return Err(format!(
            "a {} OpenPGP verdict must carry the signer's certificate (signer_key), so it can be re-checked",
            claimed.verdict.name()
        ));
    }
    let cert =
        OpenPgpCert::from_recorded(&claimed.signer_key).map_err(|e| format!("signer_key: {e}"))?;
    if !cert.issued(&parsed) {
        return Err(format!(
            "signer_key: no key of this certificate made the signature (its issuer is {})",
            openpgp::issuer(&parsed)
        ));
    }
    let found = match cert.check(&parsed, &signed_payload(raw)) {
        Check::Unusable(why) => {
            return Err(format!(
                "the verdict is {} but the signing key may not vouch for anything: {why}",
                claimed.verdict.name()
            ));
        }
        Check::Verified { fingerprint } => (SignatureVerdict::Verified, fingerprint),
        Check::Bad { fingerprint, .. } => (SignatureVerdict::Bad, fingerprint),
    };
    match found {
        (SignatureVerdict::Verified, _) if claimed.verdict == SignatureVerdict::Bad => {
            Err("the verdict is bad but the OpenPGP signature verifies over this commit".into())
        }
        (SignatureVerdict::Bad, _) if claimed.verdict == SignatureVerdict::Verified => Err(
            "the verdict is verified but the OpenPGP signature does not verify over this commit"
                .into(),
        ),
        (_, fp) if fp != claimed.key_fingerprint => Err(format!(
            "the key fingerprint {} is not that of the signing key, {fp}",
            claimed.key_fingerprint
        )),
        _ => Ok(()),
    }
}

/// Re-checks an ingester's verdict against the commit object it came with,
/// as far as the object itself allows: an SSH signature carries its public
/// key, so whether it verifies over the commit, and with which key, can be
/// recomputed by anyone. A `Verified` verdict on a signature that does not
/// verify, a `Bad` one on a signature that does, a fingerprint that is not
/// the signing key's, or a `Verified` claim for a format Docket cannot check
/// (X.509) is refused. An OpenPGP signature does not carry its key, so a
/// `Verified` or `Bad` OpenPGP verdict must carry the signer's certificate,
/// and is re-checked with it the same way. Whether the key was *trusted* (a
/// principal's, in the ingester's allowed-signers file or keyring) is the
/// ingester's word and is recorded as such, with the identity it names.
pub fn recheck(obs: &CommitObservation) -> Result<(), String> {
    recheck_signer(obs).map(drop)
}

/// [`recheck`], also returning the Ed25519 key that made the commit's SSH
/// signature when that signature verifies over the commit, so that it is
/// checked once. The server compares the key with the principals' keys: a
/// principal's key is Docket's own to trust, not the ingester's.
pub fn recheck_signer(obs: &CommitObservation) -> Result<Option<[u8; 32]>, String> {
    let claimed = &obs.signature;
    let Some(armored) = &obs.commit.signature else {
        // Unsigned objects are held to an unsigned verdict when decoded.
        return Ok(None);
    };
    if armored.starts_with(PGP_ARMOR) {
        return recheck_openpgp(claimed, &obs.raw, armored).map(|()| None);
    }
    if !armored.starts_with("-----BEGIN SSH SIGNATURE-----") {
        return match claimed.verdict {
            SignatureVerdict::Verified | SignatureVerdict::Bad => Err(format!(
                "the verdict is {} but the signature is neither SSH nor OpenPGP, which is all Docket can check; record it as unverifiable",
                claimed.verdict.name()
            )),
            _ => Ok(None),
        };
    }
    if claimed.format != SignatureFormat::Ssh {
        return Err("the commit carries an SSH signature but the format says otherwise".into());
    }
    let Ok(parsed) = SshSig::from_pem(armored.as_bytes()) else {
        return match claimed.verdict {
            SignatureVerdict::Unverifiable => Ok(None),
            v => Err(format!(
                "the SSH signature is malformed, so the verdict must be unverifiable, not {}",
                v.name()
            )),
        };
    };
    let key = parsed.public_key().clone();
    let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
    if !claimed.key_fingerprint.is_empty() && claimed.key_fingerprint != fingerprint {
        return Err(format!(
            "the key fingerprint {} is not that of the signing key, {fingerprint}",
            claimed.key_fingerprint
        ));
    }
    if !can_verify(&key) {
        return match claimed.verdict {
            SignatureVerdict::Unverifiable | SignatureVerdict::UntrustedKey => Ok(None),
            v => Err(format!(
                "Docket cannot check {} signatures, so the verdict must be unverifiable or untrusted-key, not {}",
                key.algorithm(),
                v.name()
            )),
        };
    }
    let ed25519 = match &key {
        KeyData::Ed25519(k) => Some(k.0),
        _ => None,
    };
    let verifies = ssh_key::PublicKey::from(key)
        .verify("git", &signed_payload(&obs.raw), &parsed)
        .is_ok();
    match (claimed.verdict, verifies) {
        (SignatureVerdict::Verified, false) => {
            Err("the verdict is verified but the SSH signature does not verify over this commit".into())
        }
        (SignatureVerdict::Bad, true) => {
            Err("the verdict is bad but the SSH signature verifies over this commit".into())
        }
        (SignatureVerdict::Unverifiable, _) => Err(
            "a well-formed SSH signature can be checked: the verdict must be verified, bad or untrusted-key".into(),
        ),
        _ => Ok(ed25519.filter(|_| verifies)),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    /// The obvious recursive matcher, exponential on many stars: the
    /// reference the iterative one is checked against.
    fn reference(p: &[u8], t: &[u8]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some((b'*', rest)) => (0..=t.len()).any(|i| reference(rest, &t[i..])),
            Some((b'?', rest)) => !t.is_empty() && reference(rest, &t[1..]),
            Some((c, rest)) => t.first() == Some(c) && reference(rest, &t[1..]),
        }
    }

    proptest! {
        #[test]
        fn ssh_patterns_match_as_the_recursive_definition(
            p in "[ab*?]{0,8}",
            t in "[ab*?]{0,8}",
        ) {
            prop_assert_eq!(
                super::ssh_pattern_matches(p.as_bytes(), t.as_bytes()),
                reference(p.as_bytes(), t.as_bytes())
            );
        }
    }

    #[test]
    fn ssh_patterns_of_many_stars_are_decided_without_deep_recursion() {
        // 200,000 stars: one stack frame each would overflow the stack.
        let stars = "*".repeat(200_000);
        assert!(super::ssh_pattern_list_allows(&stars, "git"));
        // Stars then a byte the text lacks: exponential when backtracking
        // to every star, pattern × text when only to the last.
        let never = format!("{}x", "*".repeat(5_000));
        assert!(!super::ssh_pattern_list_allows(&never, "gitgitgitgitgit"));
        assert!(super::ssh_pattern_list_allows("g*t,!file", "git"));
        assert!(!super::ssh_pattern_list_allows("*,!g?t", "git"));
    }

    #[test]
    fn remote_urls_name_host_and_path() {
        for (url, name) in [
            (
                "git@github.com:acme/payments.git",
                Some("github.com/acme/payments"),
            ),
            (
                "https://github.com/acme/payments.git",
                Some("github.com/acme/payments"),
            ),
            (
                "https://github.com/acme/payments/",
                Some("github.com/acme/payments"),
            ),
            (
                "ssh://git@git.example.com:2222/acme/pay.git",
                Some("git.example.com/acme/pay"),
            ),
            (
                "https://user@git.example.com:8443/acme/pay",
                Some("git.example.com/acme/pay"),
            ),
            ("ssh://git@[::1]:22/acme/pay.git", Some("[::1]/acme/pay")),
            ("file:///srv/git/pay.git", Some("/srv/git/pay")),
            ("/srv/git/pay.git", Some("/srv/git/pay")),
            ("https://host/a b", None),
            ("", None),
        ] {
            assert_eq!(super::name_of_url(url).as_deref(), name, "{url}");
        }
    }

    use ssh_key::Mpint;
    use ssh_key::public::{KeyData, RsaPublicKey};

    #[test]
    fn rsa_keys_docket_checks_have_2048_to_4096_bits() {
        let key = |bytes: usize| {
            let mut n = vec![0xc3u8; bytes];
            n[bytes - 1] |= 1;
            KeyData::Rsa(RsaPublicKey {
                e: Mpint::from_positive_bytes(&[1, 0, 1]).unwrap(),
                n: Mpint::from_positive_bytes(&n).unwrap(),
            })
        };
        let why = |bytes| super::unverifiable(&key(bytes));
        assert!(why(128).unwrap().contains("(this one has 1024)"));
        assert_eq!(why(256), None);
        assert_eq!(why(512), None);
        assert!(why(1024).unwrap().contains("(this one has 8192)"));
    }
}
