//! The bundle container (a deterministic ustar archive) and the byte codecs
//! of its primary files. Layouts are in `docs/evidence-format.md`; integers
//! are big-endian.
//!
//! ```text
//! entries.bin   repeated: u64 index | u32 length | entry bytes (ledger-format §4)
//! proofs.bin    repeated: u64 index | u8 count | count × 32-byte hashes
//! range.bin     u64 start | u64 end | u8 left count | left hashes | u8 right count | right hashes
//! since/consistency.bin   u8 count | count × 32-byte hashes
//! heads.bin     u64 leaf index | u8 count | count × 32-byte hashes
//! subjects.bin  repeated, ascending: u16 length | subject | u64 leaf index | u8 count | hashes
//! ```

use std::collections::BTreeMap;

use crate::ledger::Hash;

/// Largest file accepted from a bundle.
const MAX_FILE: u64 = 4 << 30;

/// Writes `files` as a ustar archive: `manifest.json` and `manifest.sig`
/// first, then the rest by path; mode 0644, owner 0, mtime 0, so the same
/// files always give the same bytes.
pub(super) fn write_tar<D: AsRef<[u8]>>(files: &BTreeMap<String, D>) -> Vec<u8> {
    write_tar_into(files, Vec::new()).expect("writing to a Vec cannot fail")
}

/// Whether `bytes` is exactly the archive [`write_tar`] makes of `files`,
/// found by comparing while the archive is written, without building it.
pub(super) fn is_canonical_tar<D: AsRef<[u8]>>(files: &BTreeMap<String, D>, bytes: &[u8]) -> bool {
    /// A writer that accepts only what comes next in the bytes it holds.
    struct Same<'a>(&'a [u8]);
    impl std::io::Write for Same<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            match self.0.split_at_checked(buf.len()) {
                Some((head, tail)) if head == buf => {
                    self.0 = tail;
                    Ok(buf.len())
                }
                _ => Err(std::io::Error::other("differs from the archive")),
            }
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    // The first difference stops the writing.
    write_tar_into(files, Same(bytes)).is_ok_and(|rest| rest.0.is_empty())
}

fn write_tar_into<W: std::io::Write, D: AsRef<[u8]>>(
    files: &BTreeMap<String, D>,
    out: W,
) -> std::io::Result<W> {
    let mut b = tar::Builder::new(out);
    let first = ["manifest.json", "manifest.sig"];
    let ordered = first
        .iter()
        .filter_map(|p| files.get_key_value(*p))
        .chain(files.iter().filter(|(p, _)| !first.contains(&p.as_str())));
    for (path, data) in ordered {
        let data = data.as_ref();
        let mut h = tar::Header::new_ustar();
        // The exporter's paths are short ASCII; a path read from an archive
        // that does not fit a ustar header cannot be canonical.
        h.set_path(path)?;
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, data)?;
    }
    b.into_inner()
}

/// Reads an archive: regular files only, relative paths without `..`, no
/// path twice. The files are borrowed from `bytes`, not copied.
pub(super) fn read_tar(bytes: &[u8]) -> Result<BTreeMap<String, &[u8]>, String> {
    // What a mistaken file usually is, said plainly rather than as a tar
    // header that does not parse.
    if bytes.is_empty() {
        return Err("the file is empty; a bundle is a tar archive".into());
    }
    if bytes.starts_with(&[0x1f, 0x8b]) {
        return Err(
            "the file is gzip-compressed; a bundle is an uncompressed tar archive (gunzip it first)"
                .into(),
        );
    }
    if bytes.starts_with(b"PK\x03\x04") {
        return Err("the file is a zip archive; a bundle is a tar archive".into());
    }
    let mut archive = tar::Archive::new(std::io::Cursor::new(bytes));
    let mut out = BTreeMap::new();
    let entries = archive
        .entries_with_seek()
        .map_err(|e| format!("not a tar archive: {e}"))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("unreadable member: {e}"))?;
        let path = entry
            .path()
            .map_err(|e| format!("member path: {e}"))?
            .to_str()
            .ok_or("a member path is not UTF-8")?
            .to_owned();
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(format!("{path}: not a regular file"));
        }
        if path.starts_with('/') || path.split('/').any(|c| c == ".." || c.is_empty()) {
            return Err(format!("{path}: path must be relative and without .."));
        }
        let size = entry.size();
        if size > MAX_FILE {
            return Err(format!("{path}: {size} bytes is too large"));
        }
        let data = usize::try_from(entry.raw_file_position())
            .ok()
            .zip(usize::try_from(size).ok())
            .and_then(|(start, n)| bytes.get(start..start.checked_add(n)?))
            .ok_or_else(|| format!("{path}: the archive ends inside this file"))?;
        if out.insert(path.clone(), data).is_some() {
            return Err(format!("{path}: appears twice in the archive"));
        }
    }
    if out.is_empty() {
        return Err(format!(
            "no file in its {} bytes; a bundle is a tar archive of files",
            bytes.len()
        ));
    }
    Ok(out)
}

/// A cursor over bytes that reports truncation instead of panicking. Its
/// errors do not name the file: the caller's failure does.
struct Cur<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or_else(|| format!("truncated at byte {}", self.pos))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn hashes(&mut self) -> Result<Vec<Hash>, String> {
        let n = self.u8()? as usize;
        // A proof in a tree of at most 2^64 leaves has at most 64 hashes.
        if n > 64 {
            return Err(format!(
                "a proof of {n} hashes at byte {}; at most 64 are possible",
                self.pos - 1
            ));
        }
        (0..n)
            .map(|_| Ok(self.take(32)?.try_into().expect("32 bytes")))
            .collect()
    }
    fn done(&self) -> bool {
        self.pos == self.b.len()
    }
}

/// `entries.bin`.
pub(super) fn encode_entries(entries: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut o = Vec::new();
    for (i, e) in entries {
        o.extend_from_slice(&i.to_be_bytes());
        // Entry bytes are bounded far below 4 GiB by admission limits.
        o.extend_from_slice(&(e.len() as u32).to_be_bytes());
        o.extend_from_slice(e);
    }
    o
}

pub(super) fn decode_entries(b: &[u8]) -> Result<Vec<(u64, &[u8])>, String> {
    let mut c = Cur { b, pos: 0 };
    let mut out: Vec<(u64, &[u8])> = Vec::new();
    while !c.done() {
        let i = c.u64()?;
        let n = c.u32()? as usize;
        if let Some((prev, _)) = out.last()
            && *prev >= i
        {
            return Err(format!(
                "entry {i} follows entry {prev}; indices must increase"
            ));
        }
        out.push((i, c.take(n)?));
    }
    Ok(out)
}

/// `proofs.bin`: inclusion proofs of the entries outside the proven range.
pub(super) fn encode_proofs(proofs: &[(u64, Vec<Hash>)]) -> Vec<u8> {
    let mut o = Vec::new();
    for (i, p) in proofs {
        o.extend_from_slice(&i.to_be_bytes());
        put_hashes(&mut o, p);
    }
    o
}

fn put_hashes(o: &mut Vec<u8>, hs: &[Hash]) {
    // A proof in a tree of at most 2^64 leaves has at most 64 hashes.
    o.push(hs.len() as u8);
    for h in hs {
        o.extend_from_slice(h);
    }
}

pub(super) fn decode_proofs(b: &[u8]) -> Result<BTreeMap<u64, Vec<Hash>>, String> {
    let mut c = Cur { b, pos: 0 };
    let mut out: BTreeMap<u64, Vec<Hash>> = BTreeMap::new();
    while !c.done() {
        let i = c.u64()?;
        let p = c.hashes()?;
        if let Some((&prev, _)) = out.last_key_value() {
            if prev == i {
                return Err(format!("entry {i} has two proofs"));
            }
            if prev > i {
                return Err(format!(
                    "the proof of entry {i} follows that of entry {prev}; proofs are in increasing index order"
                ));
            }
        }
        out.insert(i, p);
    }
    Ok(out)
}

/// `since/consistency.bin`: a consistency proof, its hashes only (the two
/// tree sizes are those of the checkpoints it joins).
pub(super) fn encode_consistency(proof: &[Hash]) -> Vec<u8> {
    let mut o = Vec::new();
    put_hashes(&mut o, proof);
    o
}

pub(super) fn decode_consistency(b: &[u8]) -> Result<Vec<Hash>, String> {
    let mut c = Cur { b, pos: 0 };
    let proof = c.hashes()?;
    if !c.done() {
        return Err("trailing bytes".into());
    }
    Ok(proof)
}

/// A contiguous run of entries proven with one range proof.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct RangeProof {
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) left: Vec<Hash>,
    pub(super) right: Vec<Hash>,
}

pub(super) fn encode_range(r: &RangeProof) -> Vec<u8> {
    let mut o = Vec::new();
    o.extend_from_slice(&r.start.to_be_bytes());
    o.extend_from_slice(&r.end.to_be_bytes());
    put_hashes(&mut o, &r.left);
    put_hashes(&mut o, &r.right);
    o
}

pub(super) fn decode_range(b: &[u8]) -> Result<RangeProof, String> {
    let mut c = Cur { b, pos: 0 };
    let r = RangeProof {
        start: c.u64()?,
        end: c.u64()?,
        left: c.hashes()?,
        right: c.hashes()?,
    };
    if !c.done() {
        return Err("trailing bytes".into());
    }
    if r.start >= r.end {
        return Err(format!("empty range {}..{}", r.start, r.end));
    }
    Ok(r)
}

/// `heads.bin`: the change's leaf index and its inclusion path in the
/// change-heads tree (evidence-format §6.6).
pub(super) fn encode_head(p: &crate::state::heads::HeadProof) -> Vec<u8> {
    let mut o = p.index.to_be_bytes().to_vec();
    put_hashes(&mut o, &p.path);
    o
}

pub(super) fn decode_head(b: &[u8]) -> Result<crate::state::heads::HeadProof, String> {
    let mut c = Cur { b, pos: 0 };
    let p = crate::state::heads::HeadProof {
        index: c.u64()?,
        path: c.hashes()?,
    };
    if !c.done() {
        return Err("trailing bytes".into());
    }
    Ok(p)
}

/// `subjects.bin`: per proven subject, in ascending order, its text, leaf
/// index and inclusion path in the subject-heads tree (evidence-format §6.7).
pub(super) fn encode_subject_heads(
    subjects: &[(String, crate::state::heads::HeadProof)],
) -> Vec<u8> {
    let mut o = Vec::new();
    for (s, p) in subjects {
        // Subjects are digests and commit SHAs, far below 64 KiB.
        o.extend_from_slice(&(s.len() as u16).to_be_bytes());
        o.extend_from_slice(s.as_bytes());
        o.extend_from_slice(&encode_head(p));
    }
    o
}

pub(super) fn decode_subject_heads(
    b: &[u8],
) -> Result<Vec<(String, crate::state::heads::HeadProof)>, String> {
    let mut c = Cur { b, pos: 0 };
    let mut out: Vec<(String, crate::state::heads::HeadProof)> = Vec::new();
    while !c.done() {
        let at = c.pos;
        let len = u16::from_be_bytes(c.take(2)?.try_into().expect("2 bytes"));
        let s = std::str::from_utf8(c.take(len.into())?)
            .map_err(|_| format!("the subject at byte {at} is not UTF-8"))?;
        if s.is_empty() {
            return Err(format!("an empty subject at byte {at}"));
        }
        if out.last().is_some_and(|(prev, _)| prev.as_str() >= s) {
            return Err(format!(
                "subject {s:?} at byte {at} does not come after the one before it"
            ));
        }
        let p = crate::state::heads::HeadProof {
            index: c.u64()?,
            path: c.hashes()?,
        };
        out.push((s.to_owned(), p));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codecs_round_trip_and_refuse_truncation() {
        let entries = vec![(3u64, vec![1, 2, 3]), (9, vec![])];
        let b = encode_entries(&entries);
        let borrowed: Vec<(u64, &[u8])> = entries.iter().map(|(i, e)| (*i, &e[..])).collect();
        assert_eq!(decode_entries(&b).unwrap(), borrowed);
        assert!(decode_entries(&b[..b.len() - 1]).is_err());
        let mut swapped = encode_entries(&[(9, vec![]), (3, vec![1])]);
        assert!(
            decode_entries(&swapped)
                .unwrap_err()
                .contains("must increase")
        );
        swapped.clear();
        let proofs = vec![(1u64, vec![[7u8; 32]; 3])];
        let b = encode_proofs(&proofs);
        assert_eq!(decode_proofs(&b).unwrap()[&1].len(), 3);
        assert!(decode_proofs(&b[..40]).is_err());
        let r = RangeProof {
            start: 4,
            end: 9,
            left: vec![[1; 32]],
            right: vec![],
        };
        assert_eq!(decode_range(&encode_range(&r)).unwrap(), r);
        let c = encode_consistency(&[[2; 32], [3; 32]]);
        assert_eq!(c.len(), 65);
        assert_eq!(decode_consistency(&c).unwrap(), vec![[2; 32], [3; 32]]);
        assert!(
            decode_consistency(&c[..64])
                .unwrap_err()
                .contains("truncated")
        );
        let mut long = c.clone();
        long.push(0);
        assert_eq!(decode_consistency(&long).unwrap_err(), "trailing bytes");
        assert!(decode_consistency(&[]).is_err());
        let h = crate::state::heads::HeadProof {
            index: 5,
            path: vec![[4; 32], [6; 32]],
        };
        let hb = encode_head(&h);
        assert_eq!(hb.len(), 8 + 1 + 64);
        assert_eq!(decode_head(&hb).unwrap(), h);
        assert!(decode_head(&hb[..hb.len() - 1]).is_err());
        let mut long = hb.clone();
        long.push(0);
        assert_eq!(decode_head(&long).unwrap_err(), "trailing bytes");
        let subjects = vec![("a".to_owned(), h.clone()), ("b".to_owned(), h.clone())];
        let sb = encode_subject_heads(&subjects);
        assert_eq!(decode_subject_heads(&sb).unwrap(), subjects);
        assert!(decode_subject_heads(&sb[..sb.len() - 1]).is_err());
        let twice = encode_subject_heads(&[subjects[0].clone(), subjects[0].clone()]);
        assert!(
            decode_subject_heads(&twice)
                .unwrap_err()
                .contains("does not come after")
        );
        let backwards = encode_subject_heads(&[subjects[1].clone(), subjects[0].clone()]);
        assert!(decode_subject_heads(&backwards).is_err());
        let empty = encode_subject_heads(&[(String::new(), h.clone())]);
        assert!(
            decode_subject_heads(&empty)
                .unwrap_err()
                .contains("empty subject")
        );
        let files = BTreeMap::from([
            ("b.txt".to_owned(), b"b".to_vec()),
            ("manifest.json".to_owned(), b"{}".to_vec()),
        ]);
        let t = write_tar(&files);
        assert_eq!(t, write_tar(&files), "deterministic");
        let read = read_tar(&t).unwrap();
        assert_eq!(read.len(), files.len());
        assert!(read.iter().all(|(p, b)| files[p] == *b));
        assert!(read_tar(b"not a tar").is_err());
        // Mistaken files are named for what they are.
        let why = |b: &[u8]| read_tar(b).unwrap_err();
        assert!(why(b"").contains("the file is empty"));
        assert!(why(&[0x1f, 0x8b, 8, 0, 0, 0]).contains("gzip-compressed"));
        assert!(why(b"PK\x03\x04rest").contains("zip archive"));
        assert!(why(&[0; 1024]).starts_with("no file in its 1024 bytes"));
        // The canonical-form check compares without building the archive.
        assert!(is_canonical_tar(&files, &t));
        assert!(is_canonical_tar(&read, &t));
        let mut padded = t.clone();
        padded.extend_from_slice(&[0; 512]);
        assert!(!is_canonical_tar(&files, &padded), "trailing bytes");
        assert!(!is_canonical_tar(&files, &t[..t.len() - 1]), "truncated");
        let mut mtime = t.clone();
        mtime[136] ^= 1; // the first header's mtime field
        assert!(!is_canonical_tar(&files, &mtime), "a header field changed");
        let truncated_in_file = &t[..513]; // one byte of manifest.json's two
        assert!(read_tar(truncated_in_file).is_err());
    }
}
