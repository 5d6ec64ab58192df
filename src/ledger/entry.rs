//! The entry codec. Layout (all integers big-endian), version 3:
//!
//! ```text
//! offset  size  field
//! 0       1     format version = 0x03
//! 1       8     index (u64)
//! 9       8     integrated time, Unix nanoseconds (i64)
//! 17      32    leaf hash of entry index-1 (32 zero bytes for entry 0)
//! 49      8     history count (u64): identity and policy entries at 0..=index
//! 57      4     B = basis length (u32), then B times, keys strictly ascending:
//!                 2  K = key length (u16), then K bytes UTF-8
//!                 8  count (u64): entries before this one the key concerns
//! ..      2     T = transport identity length (u16), then T bytes UTF-8
//! ..      2     P = payload type length (u16), then P bytes UTF-8
//! ..      4     L = payload length (u32), then L bytes (verbatim DSSE payload)
//! ..      1     S = signature count (1..=16), then S times:
//!                 2  K = keyid length (u16), then K bytes UTF-8
//!                 2  G = signature length (u16), then G bytes
//! ```
//! No trailing bytes. The bytes are fixed at append time and never re-encoded.
//!
//! Version 2 is the same without the basis (T at offset 57), version 1 also
//! without the history count (T at offset 49). Logs written before version 3
//! keep their earlier entries, and the writer appends version 3 after them;
//! every entry decodes to one value that encodes back to its own bytes, in
//! its own version.

/// The version the writer appends.
pub const FORMAT_VERSION: u8 = 3;
const VERSION_LEN: usize = 1;
const INDEX_OFF: usize = VERSION_LEN;
const TIME_OFF: usize = INDEX_OFF + 8;
const PREV_OFF: usize = TIME_OFF + 8;
const HISTORY_OFF: usize = PREV_OFF + 32;
const VARIABLE_OFF: usize = HISTORY_OFF + 8;
/// Most signatures one envelope may carry.
pub const MAX_SIGNATURES: usize = 16;

/// One signature of a DSSE envelope, as submitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvelopeSignature {
    pub keyid: String,
    pub sig: Vec<u8>,
}

/// A DSSE envelope whose payload bytes are kept verbatim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub payload_type: String,
    pub payload: Vec<u8>,
    pub signatures: Vec<EnvelopeSignature>,
}

impl Envelope {
    /// BLAKE3 over the envelope's fields encoded as in an entry (payload type,
    /// payload, signatures). Two submissions are "identical bytes" exactly when
    /// their digests are equal.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(&(self.payload_type.len() as u64).to_be_bytes());
        h.update(self.payload_type.as_bytes());
        h.update(&(self.payload.len() as u64).to_be_bytes());
        h.update(&self.payload);
        h.update(&(self.signatures.len() as u64).to_be_bytes());
        for s in &self.signatures {
            h.update(&(s.keyid.len() as u64).to_be_bytes());
            h.update(s.keyid.as_bytes());
            h.update(&(s.sig.len() as u64).to_be_bytes());
            h.update(&s.sig);
        }
        *h.finalize().as_bytes()
    }
}

/// A decoded entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub index: u64,
    pub integrated_time_nanos: i64,
    pub prev_leaf_hash: [u8; 32],
    /// Version 2: how many identity and policy entries (genesis, principal,
    /// key and role changes, identity change approvals and withdrawals,
    /// policy proposals and approvals) the log holds at indices `0..=index`. Anyone holding some
    /// authentic entries of the log can tell from any one of them whether
    /// they hold every identity and policy entry up to it: those they hold
    /// are a subset of the true ones, so equal counts mean equal sets.
    /// `None` for a version-1 entry, which records nothing of the kind.
    pub history_count: Option<u64>,
    /// Version 3: the decision basis, keys in strictly ascending byte order.
    /// For a deployment request, each key names a change (`change:ID`) or a
    /// subject (`subject:S`) its decision read, with the number of entries
    /// before this one that concern it (ledger-format §4.4); empty for other
    /// entries. Whoever holds the entries a key concerns can tell whether
    /// they hold all of them. `None` for versions 1 and 2.
    pub basis: Option<Vec<(String, u64)>>,
    /// The mTLS subject (or `dangerous-plaintext`) that submitted the entry.
    pub transport_identity: String,
    pub envelope: Envelope,
}

/// Why entry bytes could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("unknown entry format version {0} (this build reads 1, 2 and 3)")]
    Version(u8),
    #[error("basis key {0:?} does not follow the previous key in strictly ascending order")]
    BasisOrder(String),
    #[error("entry truncated while reading {0}")]
    Truncated(&'static str),
    #[error("field {0} is not UTF-8")]
    NotUtf8(&'static str),
    #[error("signature count {0} is outside 1..=16")]
    SignatureCount(usize),
    #[error("{0} trailing bytes after the last field")]
    Trailing(usize),
}

/// Why an entry could not be encoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    #[error("{field} is {len} bytes; at most {max} allowed")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("an envelope needs 1..=16 signatures, got {0}")]
    SignatureCount(usize),
    #[error("a basis needs a history count (format version 3)")]
    BasisWithoutHistory,
    #[error("basis key {0:?} does not follow the previous key in strictly ascending order")]
    BasisOrder(String),
}

impl Entry {
    /// The format version the entry encodes in: 3 with a basis, 2 with a
    /// history count only, 1 (as written before version 2 existed) with
    /// neither.
    pub fn version(&self) -> u8 {
        match (&self.history_count, &self.basis) {
            (_, Some(_)) => 3,
            (Some(_), None) => 2,
            (None, None) => 1,
        }
    }

    /// Encodes the entry in its [`Entry::version`].
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let env = &self.envelope;
        if env.signatures.is_empty() || env.signatures.len() > MAX_SIGNATURES {
            return Err(EncodeError::SignatureCount(env.signatures.len()));
        }
        if self.basis.is_some() && self.history_count.is_none() {
            return Err(EncodeError::BasisWithoutHistory);
        }
        let mut out = Vec::with_capacity(VARIABLE_OFF + 64 + env.payload.len() + 80);
        out.push(self.version());
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&self.integrated_time_nanos.to_be_bytes());
        out.extend_from_slice(&self.prev_leaf_hash);
        if let Some(n) = self.history_count {
            out.extend_from_slice(&n.to_be_bytes());
        }
        if let Some(basis) = &self.basis {
            let len = u32::try_from(basis.len()).map_err(|_| EncodeError::TooLong {
                field: "basis",
                len: basis.len(),
                max: u32::MAX as usize,
            })?;
            out.extend_from_slice(&len.to_be_bytes());
            let mut prev: Option<&str> = None;
            for (key, count) in basis {
                if prev.is_some_and(|p| p.as_bytes() >= key.as_bytes()) {
                    return Err(EncodeError::BasisOrder(key.clone()));
                }
                prev = Some(key);
                put16(&mut out, "basis key", key.as_bytes())?;
                out.extend_from_slice(&count.to_be_bytes());
            }
        }
        put16(
            &mut out,
            "transport_identity",
            self.transport_identity.as_bytes(),
        )?;
        put16(&mut out, "payload_type", env.payload_type.as_bytes())?;
        let len = u32::try_from(env.payload.len()).map_err(|_| EncodeError::TooLong {
            field: "payload",
            len: env.payload.len(),
            max: u32::MAX as usize,
        })?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&env.payload);
        // Checked above: 1..=16 fits a u8.
        out.push(env.signatures.len() as u8);
        for s in &env.signatures {
            put16(&mut out, "keyid", s.keyid.as_bytes())?;
            put16(&mut out, "sig", &s.sig)?;
        }
        Ok(out)
    }

    /// Decodes entry bytes, refusing anything but an exact version-1,
    /// version-2 or version-3 encoding.
    pub fn decode(bytes: &[u8]) -> Result<Entry, DecodeError> {
        let mut r = Reader { buf: bytes, pos: 0 };
        let version = r.take(VERSION_LEN, "version")?[0];
        if !(1..=3).contains(&version) {
            return Err(DecodeError::Version(version));
        }
        let index = u64::from_be_bytes(r.array("index")?);
        let integrated_time_nanos = i64::from_be_bytes(r.array("integrated_time")?);
        let prev_leaf_hash: [u8; 32] = r.array("prev_leaf_hash")?;
        let history_count = match version {
            1 => None,
            _ => Some(u64::from_be_bytes(r.array("history count")?)),
        };
        let basis = match version {
            3 => {
                let n = u32::from_be_bytes(r.array("basis length")?) as usize;
                // Each key takes at least 10 bytes: do not let a forged
                // length reserve memory the bytes cannot fill.
                let mut basis: Vec<(String, u64)> = Vec::with_capacity(n.min(r.left() / 10));
                for _ in 0..n {
                    let key = r.str16("basis key")?;
                    let count = u64::from_be_bytes(r.array("basis count")?);
                    if basis
                        .last()
                        .is_some_and(|(p, _)| p.as_bytes() >= key.as_bytes())
                    {
                        return Err(DecodeError::BasisOrder(key));
                    }
                    basis.push((key, count));
                }
                Some(basis)
            }
            _ => None,
        };
        let transport_identity = r.str16("transport_identity")?;
        let payload_type = r.str16("payload_type")?;
        let plen = u32::from_be_bytes(r.array("payload length")?) as usize;
        let payload = r.take(plen, "payload")?.to_vec();
        let count = r.take(1, "signature count")?[0] as usize;
        if count == 0 || count > MAX_SIGNATURES {
            return Err(DecodeError::SignatureCount(count));
        }
        let mut signatures = Vec::with_capacity(count);
        for _ in 0..count {
            let keyid = r.str16("keyid")?;
            let sig = r.bytes16("sig")?.to_vec();
            signatures.push(EnvelopeSignature { keyid, sig });
        }
        if r.pos != bytes.len() {
            return Err(DecodeError::Trailing(bytes.len() - r.pos));
        }
        Ok(Entry {
            index,
            integrated_time_nanos,
            prev_leaf_hash,
            history_count,
            basis,
            transport_identity,
            envelope: Envelope {
                payload_type,
                payload,
                signatures,
            },
        })
    }
}

fn put16(out: &mut Vec<u8>, field: &'static str, b: &[u8]) -> Result<(), EncodeError> {
    let len = u16::try_from(b.len()).map_err(|_| EncodeError::TooLong {
        field,
        len: b.len(),
        max: u16::MAX as usize,
    })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(b);
    Ok(())
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(DecodeError::Truncated(what))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn bytes16(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let n = u16::from_be_bytes(self.array(what)?) as usize;
        self.take(n, what)
    }

    fn str16(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let b = self.bytes16(what)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::NotUtf8(what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Entry {
        Entry {
            index: 7,
            integrated_time_nanos: 1_700_000_000_000_000_000,
            prev_leaf_hash: [9; 32],
            history_count: Some(3),
            basis: Some(vec![("change:c1".into(), 2), ("subject:s".into(), 0)]),
            transport_identity: "CN=ci".into(),
            envelope: Envelope {
                payload_type: "t".into(),
                payload: vec![1, 2, 3],
                signatures: vec![EnvelopeSignature {
                    keyid: "ab".into(),
                    sig: vec![5; 64],
                }],
            },
        }
    }

    #[test]
    fn layout_offsets_are_as_documented() {
        let b3 = sample().encode().unwrap();
        assert_eq!(b3[0], 3);
        assert_eq!(&b3[INDEX_OFF..TIME_OFF], &7u64.to_be_bytes());
        assert_eq!(&b3[PREV_OFF..HISTORY_OFF], &[9; 32]);
        assert_eq!(&b3[HISTORY_OFF..VARIABLE_OFF], &3u64.to_be_bytes());
        let mut basis = 2u32.to_be_bytes().to_vec();
        for (k, n) in [("change:c1", 2u64), ("subject:s", 0)] {
            basis.extend_from_slice(&(k.len() as u16).to_be_bytes());
            basis.extend_from_slice(k.as_bytes());
            basis.extend_from_slice(&n.to_be_bytes());
        }
        let t = VARIABLE_OFF + basis.len();
        assert_eq!(&b3[VARIABLE_OFF..t], &basis[..]);
        assert_eq!(&b3[t..t + 2], &5u16.to_be_bytes());
        // Version 2: no basis, the identity right after the history count.
        let v2 = Entry {
            basis: None,
            ..sample()
        };
        let b = v2.encode().unwrap();
        assert_eq!((b[0], b.len() + basis.len()), (2, b3.len()));
        assert_eq!(&b[VARIABLE_OFF..VARIABLE_OFF + 2], &5u16.to_be_bytes());
        assert_eq!(Entry::decode(&b).unwrap(), v2);
        // Version 1: no history count, the variable part at offset 49.
        let v1 = Entry {
            history_count: None,
            ..v2
        };
        let b1 = v1.encode().unwrap();
        assert_eq!((b1[0], b1.len() + 8), (1, b.len()));
        assert_eq!(&b1[HISTORY_OFF..HISTORY_OFF + 2], &5u16.to_be_bytes());
        assert_eq!(Entry::decode(&b1).unwrap(), v1);
        // A basis needs the history count of version 3.
        let odd = Entry {
            history_count: None,
            ..sample()
        };
        assert_eq!(odd.encode(), Err(EncodeError::BasisWithoutHistory));
    }

    #[test]
    fn decode_refuses_truncation_trailing_and_versions() {
        let b = sample().encode().unwrap();
        for cut in 0..b.len() {
            assert!(Entry::decode(&b[..cut]).is_err(), "prefix {cut} accepted");
        }
        let mut t = b.clone();
        t.push(0);
        assert_eq!(Entry::decode(&t), Err(DecodeError::Trailing(1)));
        for version in [0, 4, 255] {
            let mut v = b.clone();
            v[0] = version;
            assert_eq!(Entry::decode(&v), Err(DecodeError::Version(version)));
        }
        // An entry relabelled as an earlier version no longer parses as the
        // same entry: its basis or history count is read as the identity.
        for version in [1, 2] {
            let mut v = b.clone();
            v[0] = version;
            assert_ne!(Entry::decode(&v).ok(), Some(sample()));
        }
    }

    #[test]
    fn basis_keys_must_ascend_strictly() {
        for basis in [
            vec![("b".to_owned(), 1), ("a".to_owned(), 1)],
            vec![("a".to_owned(), 1), ("a".to_owned(), 2)],
        ] {
            let bad = basis[1].0.clone();
            let e = Entry {
                basis: Some(basis.clone()),
                ..sample()
            };
            assert_eq!(e.encode(), Err(EncodeError::BasisOrder(bad.clone())));
            // The same bytes written by hand do not decode either.
            let good = Entry {
                basis: Some(vec![("a".into(), 1), ("c".into(), 2)]),
                ..sample()
            };
            let mut b = good.encode().unwrap();
            let second = b.windows(3).position(|w| w == [0, 1, b'c']).unwrap();
            b[second + 2] = bad.as_bytes()[0];
            assert_eq!(Entry::decode(&b), Err(DecodeError::BasisOrder(bad)));
        }
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(
            index in any::<u64>(), time in any::<i64>(), prev in any::<[u8; 32]>(),
            history_count in any::<Option<u64>>(),
            basis in proptest::option::of(proptest::collection::btree_map(".{0,12}", any::<u64>(), 0..4)),
            ident in ".{0,40}", ptype in ".{0,40}",
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            sigs in proptest::collection::vec((".{0,20}", proptest::collection::vec(any::<u8>(), 0..80)), 1..4),
        ) {
            let e = Entry {
                index, integrated_time_nanos: time, prev_leaf_hash: prev,
                basis: basis.filter(|_| history_count.is_some()).map(|b| b.into_iter().collect()),
                history_count, transport_identity: ident, envelope: Envelope {
                    payload_type: ptype, payload,
                    signatures: sigs.into_iter().map(|(keyid, sig)| EnvelopeSignature { keyid, sig }).collect(),
                },
            };
            let b = e.encode().unwrap();
            prop_assert_eq!(Entry::decode(&b).unwrap(), e);
        }

        #[test]
        fn decoded_bytes_are_canonical(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            // Whatever decodes must re-encode to exactly the same bytes: one
            // entry has one encoding, so a leaf hash names one entry.
            if let Ok(e) = Entry::decode(&bytes) {
                prop_assert_eq!(e.encode().unwrap(), bytes);
            }
        }
    }
}
