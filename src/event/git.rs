//! Raw git commit objects: the bytes `git cat-file commit <sha>` prints.
//! Pure parsing with no git library, so the fold and an offline auditor read
//! the same facts (author, committer, parents, signature) from the same
//! bytes, and recompute the object id instead of trusting it.
//!
//! Layout (git's `commit` object): header lines `tree <id>`, `parent <id>`
//! (any number), `author <name> <<email>> <seconds> <±hhmm>`, `committer ...`,
//! then optional headers (`encoding`, `gpgsig`, `gpgsig-sha256`, `mergetag`,
//! ...), where a line starting with a space continues the previous header;
//! then an empty line and the message.

use sha1::Digest as _;

/// A person line of a commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitPerson {
    pub name: String,
    /// Lowercased, as principals' e-mails are stored.
    pub email: String,
    /// Seconds since the Unix epoch, as recorded.
    pub time: i64,
    /// The recorded zone offset, e.g. `+0100`.
    pub offset: String,
}

/// The facts of a commit object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitCommit {
    pub tree: String,
    pub parents: Vec<String>,
    pub author: GitPerson,
    pub committer: GitPerson,
    /// The signature header's value with continuation lines joined, if the
    /// commit is signed (`gpgsig` or `gpgsig-sha256`).
    pub signature: Option<String>,
    /// First line of the message, at most 256 bytes.
    pub summary: String,
}

/// Why bytes are not a commit object.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct GitObjectError(pub String);

fn bad(m: impl Into<String>) -> GitObjectError {
    GitObjectError(m.into())
}

/// True for a lowercase hex object id of either hash (40 or 64 digits).
pub fn is_object_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The object id of a commit with content `raw`: SHA-1 (`hex_len` 40) or
/// SHA-256 (64) over `"commit " + len + NUL + raw`.
pub fn object_id(raw: &[u8], hex_len: usize) -> Option<String> {
    let header = format!("commit {}\0", raw.len());
    match hex_len {
        40 => {
            let mut h = sha1::Sha1::new();
            h.update(header.as_bytes());
            h.update(raw);
            Some(hex::encode(h.finalize()))
        }
        64 => {
            let mut h = sha2::Sha256::new();
            h.update(header.as_bytes());
            h.update(raw);
            Some(hex::encode(h.finalize()))
        }
        _ => None,
    }
}

fn person(field: &str, v: &str) -> Result<GitPerson, GitObjectError> {
    // "<name> <<email>> <seconds> <offset>"; the name may contain anything
    // but '<', the e-mail anything but '>'.
    let lt = v
        .find('<')
        .ok_or_else(|| bad(format!("{field}: no <e-mail>")))?;
    let gt = v[lt..]
        .find('>')
        .map(|i| lt + i)
        .ok_or_else(|| bad(format!("{field}: unterminated <e-mail>")))?;
    let name = v[..lt].trim_end().to_owned();
    let email = v[lt + 1..gt].trim().to_ascii_lowercase();
    // The time follows the *last* '>', as git reads it (ident.c), so a
    // crafted line cannot show git one time and Docket another. When
    // nothing readable follows it, the words after the e-mail's own '>'
    // are read, as before: a line older logs hold must still decode.
    let read = |from: usize| {
        let mut rest = v[from + 1..].split_ascii_whitespace();
        let time = rest.next().and_then(|t| t.parse::<i64>().ok())?;
        Some((time, rest.next().unwrap_or("+0000").to_owned()))
    };
    let last = v.rfind('>').unwrap_or(gt);
    let (time, offset) = read(last)
        .or_else(|| read(gt))
        .ok_or_else(|| bad(format!("{field}: no timestamp")))?;
    Ok(GitPerson {
        name,
        email,
        time,
        offset,
    })
}

/// Parses a commit object's content.
pub fn parse_commit(raw: &[u8]) -> Result<GitCommit, GitObjectError> {
    let text = std::str::from_utf8(raw)
        .map_err(|_| bad("commit object is not UTF-8 (other encodings are not supported)"))?;
    let (headers, message) = match text.find("\n\n") {
        Some(i) => (&text[..i], &text[i + 2..]),
        None => (text.trim_end_matches('\n'), ""),
    };
    let mut tree = None;
    let mut parents = Vec::new();
    let mut author = None;
    let mut committer = None;
    let mut signature: Option<String> = None;
    // Whether continuation lines belong to the signature: only those of
    // the header that set it, not those of a later signature header (which
    // would otherwise corrupt the first, hiding a good signature).
    let mut in_signature = false;
    for line in headers.split('\n') {
        if let Some(cont) = line.strip_prefix(' ') {
            if in_signature && let Some(sig) = signature.as_mut() {
                sig.push('\n');
                sig.push_str(cont);
            }
            continue;
        }
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        in_signature = matches!(key, "gpgsig" | "gpgsig-sha256") && signature.is_none();
        match key {
            "tree" if tree.is_none() => {
                if !is_object_id(value) {
                    return Err(bad(format!("tree {value:?} is not an object id")));
                }
                tree = Some(value.to_owned());
            }
            "parent" => {
                if !is_object_id(value) {
                    return Err(bad(format!("parent {value:?} is not an object id")));
                }
                parents.push(value.to_owned());
            }
            "author" if author.is_none() => author = Some(person("author", value)?),
            "committer" if committer.is_none() => committer = Some(person("committer", value)?),
            "gpgsig" | "gpgsig-sha256" if signature.is_none() => {
                signature = Some(value.to_owned());
            }
            "tree" | "author" | "committer" => {
                return Err(bad(format!("{key} appears twice")));
            }
            _ => {}
        }
    }
    let summary: String = message.lines().next().unwrap_or("").to_owned();
    let summary = if summary.len() > 256 {
        let mut cut = 256;
        while !summary.is_char_boundary(cut) {
            cut -= 1;
        }
        summary[..cut].to_owned()
    } else {
        summary
    };
    Ok(GitCommit {
        tree: tree.ok_or_else(|| bad("no tree header"))?,
        parents,
        author: author.ok_or_else(|| bad("no author header"))?,
        committer: committer.ok_or_else(|| bad("no committer header"))?,
        signature,
        summary,
    })
}

/// The bytes a commit signature signs: the object without its `gpgsig`
/// (or `gpgsig-sha256`) header and that header's continuation lines.
pub fn signed_payload(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut in_headers = true;
    let mut skipping = false;
    for line in raw.split_inclusive(|&b| b == b'\n') {
        if in_headers {
            if line == b"\n" {
                in_headers = false;
            } else if line.starts_with(b" ") && skipping {
                continue;
            } else {
                skipping = line.starts_with(b"gpgsig ") || line.starts_with(b"gpgsig-sha256 ");
                if skipping {
                    continue;
                }
            }
        }
        out.extend_from_slice(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIGNED: &str = "tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\
parent 1111111111111111111111111111111111111111\n\
author Alice Example <Alice@Example.com> 1700000000 +0100\n\
committer Bob <bob@example.com> 1700000100 -0500\n\
gpgsig -----BEGIN SSH SIGNATURE-----\n \
U1NIU0lH\n \
-----END SSH SIGNATURE-----\n\
\n\
Fix the thing\n\nLonger text.\n";

    #[test]
    fn parses_people_parents_and_signature() {
        let c = parse_commit(SIGNED.as_bytes()).unwrap();
        assert_eq!(c.tree, "4b825dc642cb6eb9a060e54bf8d69288fbee4904");
        assert_eq!(c.parents.len(), 1);
        assert_eq!(c.author.name, "Alice Example");
        assert_eq!(c.author.email, "alice@example.com");
        assert_eq!(c.author.time, 1_700_000_000);
        assert_eq!(c.committer.offset, "-0500");
        assert_eq!(
            c.signature.as_deref(),
            Some("-----BEGIN SSH SIGNATURE-----\nU1NIU0lH\n-----END SSH SIGNATURE-----")
        );
        assert_eq!(c.summary, "Fix the thing");
        let payload = String::from_utf8(signed_payload(SIGNED.as_bytes())).unwrap();
        assert!(!payload.contains("gpgsig") && !payload.contains("U1NIU0lH"));
        assert!(payload.ends_with(
            "committer Bob <bob@example.com> 1700000100 -0500\n\nFix the thing\n\nLonger text.\n"
        ));
    }

    /// Git concatenates every signature header and ssh-keygen reads the
    /// first armored block; Docket keeps the first header alone. A second
    /// header's continuation lines must not be appended to it.
    #[test]
    fn a_second_signature_header_leaves_the_first_intact() {
        let two = SIGNED.replace(
            "-----END SSH SIGNATURE-----\n\n",
            "-----END SSH SIGNATURE-----\ngpgsig -----BEGIN SSH SIGNATURE-----\n \
             Sk9VTks=\n -----END SSH SIGNATURE-----\nmergetag object 1\n more\n\n",
        );
        let c = parse_commit(two.as_bytes()).unwrap();
        assert_eq!(
            c.signature.as_deref(),
            Some("-----BEGIN SSH SIGNATURE-----\nU1NIU0lH\n-----END SSH SIGNATURE-----")
        );
        // Both are left out of what the signature signs, as git does.
        let payload = String::from_utf8(signed_payload(two.as_bytes())).unwrap();
        assert!(!payload.contains("gpgsig") && !payload.contains("Sk9VTks"));
        assert!(payload.contains("mergetag object 1\n more\n"));
    }

    /// Git reads an ident's time after its last '>'.
    #[test]
    fn the_time_follows_the_last_angle_bracket() {
        let raw = "tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\
author A <a@x> 100 +0000 <x> 1795570000 +0100\n\
committer A <a@x> 5 +0000\n\nm\n";
        let c = parse_commit(raw.as_bytes()).unwrap();
        assert_eq!(c.author.email, "a@x");
        assert_eq!(c.author.time, 1_795_570_000);
        assert_eq!(c.author.offset, "+0100");
        assert_eq!(c.committer.time, 5);
        // Nothing readable after the last '>': the words after the
        // e-mail's, as older builds read them (older logs hold such lines).
        let raw = "tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\
author A <a@x> 1700000000 +0000 x>\n\
committer A <a@x> 5 +0000\n\nm\n";
        let c = parse_commit(raw.as_bytes()).unwrap();
        assert_eq!(
            (c.author.time, c.author.offset.as_str()),
            (1_700_000_000, "+0000")
        );
    }

    #[test]
    fn refuses_what_is_not_a_commit() {
        for (raw, needle) in [
            (
                "author a <a> 1 +0000\ncommitter a <a> 1 +0000\n\nx",
                "no tree",
            ),
            ("tree xyz\n", "not an object id"),
            (
                "tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\nauthor a 1 +0000\n",
                "no <e-mail>",
            ),
            (
                "tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\nauthor a <a> x\n",
                "no timestamp",
            ),
        ] {
            let e = parse_commit(raw.as_bytes()).unwrap_err();
            assert!(e.0.contains(needle), "{raw:?}: {e}");
        }
    }

    #[test]
    fn object_id_is_gits() {
        // `git hash-object -t commit --stdin` of this content (git 2.47).
        let raw = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\nauthor A <a@x> 0 +0000\ncommitter A <a@x> 0 +0000\n\nm\n";
        assert_eq!(
            object_id(raw, 40).unwrap(),
            "5f7841df035ac026c260f82a8e8b6fe174a4a2ce"
        );
        assert_eq!(object_id(raw, 64).unwrap().len(), 64);
        assert!(object_id(raw, 12).is_none());
    }
}
