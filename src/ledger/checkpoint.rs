//! Checkpoints: C2SP `tlog-checkpoint` bodies inside signed notes.
//!
//! ```text
//! <origin>\n
//! <tree size, ASCII decimal, no leading zeros>\n
//! <base64 (standard, padded) of the 32-byte root hash>\n
//! [changes <number of changes> <base64 change-heads root>\n]
//! [subjects <number of subjects> <base64 subject-heads root>\n]
//! \n
//! — <key name> <base64(keyid[4] || sig[64])>\n
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::crypto::{NoteError, NoteSigner, NoteVerifier};

use super::merkle::Hash;

/// A verified (or freshly signed) checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    /// The change heads it signs (ledger-format §6.5); `None` in a
    /// checkpoint signed before they existed.
    pub changes: Option<HeadsRoot>,
    /// The subject heads it signs (ledger-format §6.6); `None` in a
    /// checkpoint signed before they existed.
    pub subjects: Option<HeadsRoot>,
    /// The signed note, verbatim.
    pub note: String,
}

/// One heads extension line: how many leaves a heads tree has (changes
/// opened, subjects met) and its root (ledger-format §6.5, §6.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadsRoot {
    pub size: u64,
    pub root: Hash,
}

/// The heads a checkpoint signs with the state folded from its entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heads {
    pub changes: HeadsRoot,
    pub subjects: HeadsRoot,
}

/// The first word of the change-heads extension line.
const CHANGES: &str = "changes ";
/// The first word of the subject-heads extension line.
const SUBJECTS: &str = "subjects ";

/// A canonical decimal u64 (no sign, no leading zeros).
fn canonical_u64(s: &str) -> Option<u64> {
    if s.is_empty() || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    s.parse().ok()
}

/// Why a checkpoint was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CheckpointError {
    #[error("signed note: {0}")]
    Note(#[from] NoteError),
    #[error("checkpoint body is malformed: {0}")]
    Malformed(&'static str),
    #[error("checkpoint origin is {got:?}, expected {expected:?}")]
    WrongOrigin { expected: String, got: String },
}

impl Checkpoint {
    /// Signs a checkpoint for (origin, size, root), without change heads (as
    /// logs written before them have).
    pub fn sign(signer: &NoteSigner, origin: &str, size: u64, root: &Hash) -> Checkpoint {
        Checkpoint::sign_with(signer, origin, size, root, None)
    }

    /// Signs a checkpoint for (origin, size, root) and, if given, the change
    /// and subject heads of the state folded from the same entries.
    pub fn sign_with(
        signer: &NoteSigner,
        origin: &str,
        size: u64,
        root: &Hash,
        heads: Option<Heads>,
    ) -> Checkpoint {
        let mut body = format!("{origin}\n{size}\n{}\n", B64.encode(root));
        if let Some(h) = &heads {
            for (word, line) in [(CHANGES, h.changes), (SUBJECTS, h.subjects)] {
                body.push_str(&format!("{word}{} {}\n", line.size, B64.encode(line.root)));
            }
        }
        Checkpoint {
            origin: origin.to_owned(),
            size,
            root: *root,
            changes: heads.map(|h| h.changes),
            subjects: heads.map(|h| h.subjects),
            note: signer.sign(&body),
        }
    }

    /// Verifies the note's signature with `verifier` and parses its body. The
    /// origin must equal the verifier's key name's log origin given here.
    pub fn verify(
        note: &str,
        verifier: &NoteVerifier,
        origin: &str,
    ) -> Result<Checkpoint, CheckpointError> {
        let body = verifier.verify(note)?;
        let cp = Checkpoint::parse_body(body, note)?;
        if cp.origin != origin {
            return Err(CheckpointError::WrongOrigin {
                expected: origin.to_owned(),
                got: cp.origin,
            });
        }
        Ok(cp)
    }

    /// Reads a note's body without checking its signature: for a checkpoint
    /// the caller already trusts as it is (pinned out of band), whose
    /// signatures it may have no key for.
    pub fn parse_pinned(note: &str) -> Result<Checkpoint, CheckpointError> {
        let body = note
            .split_once("\n\n")
            .map(|(b, _)| format!("{b}\n"))
            .ok_or(CheckpointError::Malformed(
                "no blank line before the signatures",
            ))?;
        Checkpoint::parse_body(&body, note)
    }

    fn parse_body(body: &str, note: &str) -> Result<Checkpoint, CheckpointError> {
        let mut lines = body.split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or(CheckpointError::Malformed("missing origin"))?;
        let size_s = lines
            .next()
            .ok_or(CheckpointError::Malformed("missing tree size"))?;
        if size_s.is_empty()
            || (size_s.len() > 1 && size_s.starts_with('0'))
            || !size_s.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(CheckpointError::Malformed(
                "tree size is not canonical decimal",
            ));
        }
        let size: u64 = size_s
            .parse()
            .map_err(|_| CheckpointError::Malformed("tree size overflows"))?;
        let root_s = lines
            .next()
            .ok_or(CheckpointError::Malformed("missing root hash"))?;
        let root: Hash = B64
            .decode(root_s)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or(CheckpointError::Malformed(
                "root hash is not 32 bytes of base64",
            ))?;
        // Extension lines: the change and subject heads are read, others
        // ignored.
        let (mut changes, mut subjects) = (None, None);
        for line in lines {
            let (slot, rest, twice, malformed) = if let Some(rest) = line.strip_prefix(CHANGES) {
                (
                    &mut changes,
                    rest,
                    "two change-heads lines",
                    "the change-heads line is not `changes <decimal> <32 bytes of base64>`",
                )
            } else if let Some(rest) = line.strip_prefix(SUBJECTS) {
                (
                    &mut subjects,
                    rest,
                    "two subject-heads lines",
                    "the subject-heads line is not `subjects <decimal> <32 bytes of base64>`",
                )
            } else {
                continue;
            };
            if slot.is_some() {
                return Err(CheckpointError::Malformed(twice));
            }
            *slot = Some(parse_heads(rest).ok_or(CheckpointError::Malformed(malformed))?);
        }
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
            changes,
            subjects,
            note: note.to_owned(),
        })
    }
}

/// `<decimal> <32 bytes of base64>`, the rest of a heads line.
fn parse_heads(rest: &str) -> Option<HeadsRoot> {
    let mut words = rest.split(' ');
    let size = words.next().and_then(canonical_u64)?;
    let root = words
        .next()
        .and_then(|r| B64.decode(r).ok())
        .and_then(|r| <Hash>::try_from(r).ok())?;
    words.next().is_none().then_some(HeadsRoot { size, root })
}

/// The first line of an evidence manifest note. A checkpoint's first line
/// is its origin, which can never be this (origins have no spaces), so a
/// manifest note can never pass as a checkpoint nor the reverse.
pub const MANIFEST_HEADER: &str = "docket evidence manifest v1";

/// Signs the statement "the evidence manifest whose BLAKE3 is `digest` was
/// issued by the log `origin`":
///
/// ```text
/// docket evidence manifest v1\n
/// <origin>\n
/// <lowercase hex BLAKE3 of manifest.json>\n
/// \n
/// — <key name> <base64(keyid[4] || sig[64])>\n
/// ```
pub fn sign_manifest(signer: &NoteSigner, origin: &str, digest: &Hash) -> String {
    signer.sign(&format!(
        "{MANIFEST_HEADER}\n{origin}\n{}\n",
        hex::encode(digest)
    ))
}

/// Verifies a manifest note and returns the manifest digest it signs.
pub fn verify_manifest(
    note: &str,
    verifier: &NoteVerifier,
    origin: &str,
) -> Result<Hash, CheckpointError> {
    let body = verifier.verify(note)?;
    let mut lines = body.split('\n');
    if lines.next() != Some(MANIFEST_HEADER) {
        return Err(CheckpointError::Malformed(
            "not an evidence manifest note (first line)",
        ));
    }
    let got = lines.next().unwrap_or_default();
    if got != origin {
        return Err(CheckpointError::WrongOrigin {
            expected: origin.to_owned(),
            got: got.to_owned(),
        });
    }
    let digest = lines
        .next()
        .and_then(|d| hex::decode(d).ok())
        .and_then(|d| <Hash>::try_from(d.as_slice()).ok())
        .ok_or(CheckpointError::Malformed(
            "manifest digest is not 32 bytes of hex",
        ))?;
    if lines.next() != Some("") || lines.next().is_some() {
        return Err(CheckpointError::Malformed(
            "the manifest note's body has lines after the digest",
        ));
    }
    // manifest.sig is the one member of a bundle that the manifest cannot
    // list, so it is held to exactly what the log key signed: the body and
    // one signature line. (A note may carry other signers' lines, which a
    // verifier skips; here they would be bytes that change unnoticed.)
    // `body` is the note up to its empty line; after that, the signatures.
    if note[body.len() + 1..].matches('\n').count() != 1 {
        return Err(CheckpointError::Malformed(
            "the manifest note must carry exactly one signature line, the log key's",
        ));
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    #[test]
    fn sign_then_verify_and_refuse_tampering() {
        let s = NoteSigner::new("docket.test/log", SigningKey::from_bytes(&[4; 32]));
        let cp = Checkpoint::sign(&s, "docket.test/log", 12, &[7; 32]);
        let back = Checkpoint::verify(&cp.note, &s.verifier(), "docket.test/log").unwrap();
        assert_eq!(back, cp);
        let forged = cp.note.replacen("\n12\n", "\n13\n", 1);
        assert!(matches!(
            Checkpoint::verify(&forged, &s.verifier(), "docket.test/log"),
            Err(CheckpointError::Note(NoteError::InvalidSignature(_)))
        ));
        assert!(matches!(
            Checkpoint::verify(&cp.note, &s.verifier(), "other"),
            Err(CheckpointError::WrongOrigin { .. })
        ));
    }

    #[test]
    fn change_heads_ride_in_the_signed_body() {
        let s = NoteSigner::new("docket.test/log", SigningKey::from_bytes(&[4; 32]));
        let heads = Heads {
            changes: HeadsRoot {
                size: 3,
                root: [9; 32],
            },
            subjects: HeadsRoot {
                size: 5,
                root: [8; 32],
            },
        };
        let cp = Checkpoint::sign_with(&s, "docket.test/log", 12, &[7; 32], Some(heads));
        assert!(cp.note.contains(&format!(
            "\nchanges 3 {}\nsubjects 5 {}\n\n",
            B64.encode([9u8; 32]),
            B64.encode([8u8; 32])
        )));
        let back = Checkpoint::verify(&cp.note, &s.verifier(), "docket.test/log").unwrap();
        assert_eq!(back.changes, Some(heads.changes));
        assert_eq!(back.subjects, Some(heads.subjects));
        assert_eq!(back, cp);
        // Altering either line breaks the signature.
        for (from, to) in [("changes 3 ", "changes 4 "), ("subjects 5 ", "subjects 6 ")] {
            let forged = cp.note.replacen(from, to, 1);
            assert!(matches!(
                Checkpoint::verify(&forged, &s.verifier(), "docket.test/log"),
                Err(CheckpointError::Note(NoteError::InvalidSignature(_)))
            ));
        }
        // Without the line, no heads.
        let bare = Checkpoint::sign(&s, "docket.test/log", 12, &[7; 32]);
        assert_eq!(
            Checkpoint::verify(&bare.note, &s.verifier(), "docket.test/log")
                .unwrap()
                .changes,
            None
        );
    }

    #[test]
    fn malformed_change_heads_are_refused_and_other_extensions_ignored() {
        let s = NoteSigner::new("docket.test/log", SigningKey::from_bytes(&[4; 32]));
        let root = format!("{}\n", B64.encode([7u8; 32]));
        let good = B64.encode([9u8; 32]);
        let body = |ext: &str| format!("docket.test/log\n12\n{root}{ext}");
        let parse =
            |ext: &str| Checkpoint::verify(&s.sign(&body(ext)), &s.verifier(), "docket.test/log");
        let other = parse("witness-note v1\n").unwrap();
        assert_eq!(other.changes, None);
        let both = parse(&format!("other\nchanges 0 {good}\n")).unwrap();
        assert_eq!(both.changes.map(|c| c.size), Some(0));
        assert_eq!(both.subjects, None);
        // Either order; each line read on its own.
        let swapped = parse(&format!("subjects 7 {good}\nx\nchanges 2 {good}\n")).unwrap();
        assert_eq!(
            (
                swapped.changes.map(|c| c.size),
                swapped.subjects.map(|c| c.size)
            ),
            (Some(2), Some(7))
        );
        for bad in [
            format!("subjects 07 {good}\n"),
            format!("subjects 7 {good} x\n"),
            "subjects 7 AAAA\n".to_owned(),
            format!("changes 3 {good}\nsubjects 3 {good}\nsubjects 3 {good}\n"),
            format!("changes 03 {good}\n"),
            format!("changes -3 {good}\n"),
            format!("changes 3  {good}\n"),
            format!("changes 3 {good} x\n"),
            "changes 3 AAAA\n".to_owned(),
            "changes 3\n".to_owned(),
            format!("changes 18446744073709551616 {good}\n"),
            format!("changes 3 {good}\nchanges 3 {good}\n"),
        ] {
            assert!(
                matches!(parse(&bad), Err(CheckpointError::Malformed(_))),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn a_manifest_note_is_its_body_and_one_signature_line() {
        let s = NoteSigner::new("docket.test/log", SigningKey::from_bytes(&[4; 32]));
        let note = sign_manifest(&s, "docket.test/log", &[9; 32]);
        assert_eq!(
            verify_manifest(&note, &s.verifier(), "docket.test/log").unwrap(),
            [9; 32]
        );
        // A second line after the log key's, even one the verifier would
        // skip (another signer's name), changes the file's bytes.
        let other = NoteSigner::new("witness.example/w", SigningKey::from_bytes(&[5; 32]));
        let cosig = other.sign("x\n");
        let extra = cosig.rsplit_once("\n\n").unwrap().1;
        let with_extra = format!("{note}{extra}");
        assert!(matches!(
            verify_manifest(&with_extra, &s.verifier(), "docket.test/log"),
            Err(CheckpointError::Malformed(m)) if m.contains("exactly one signature line")
        ));
        // A body with more than the three lines, even signed by the log key.
        let long = s.sign(&format!(
            "{MANIFEST_HEADER}\ndocket.test/log\n{}\nmore\n",
            hex::encode([9; 32])
        ));
        assert!(matches!(
            verify_manifest(&long, &s.verifier(), "docket.test/log"),
            Err(CheckpointError::Malformed(m)) if m.contains("lines after the digest")
        ));
    }

    #[test]
    fn manifest_notes_and_checkpoints_are_not_interchangeable() {
        let s = NoteSigner::new("docket.test/log", SigningKey::from_bytes(&[4; 32]));
        let m = sign_manifest(&s, "docket.test/log", &[9; 32]);
        assert_eq!(
            verify_manifest(&m, &s.verifier(), "docket.test/log"),
            Ok([9; 32])
        );
        assert!(Checkpoint::verify(&m, &s.verifier(), "docket.test/log").is_err());
        let cp = Checkpoint::sign(&s, "docket.test/log", 12, &[7; 32]);
        assert!(verify_manifest(&cp.note, &s.verifier(), "docket.test/log").is_err());
        let forged = m.replace(&hex::encode([9u8; 32]), &hex::encode([8u8; 32]));
        assert!(verify_manifest(&forged, &s.verifier(), "docket.test/log").is_err());
    }
}
