//! RFC 9162 §2.1 Merkle trees with BLAKE3-256: tree hashes, inclusion and
//! consistency proofs, and their verification. Pure functions; storage is
//! reached through [`NodeSource`].

/// A 32-byte BLAKE3 hash.
pub type Hash = [u8; 32];

/// `BLAKE3(0x00 || entry)`.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[0x00]);
    h.update(entry);
    *h.finalize().as_bytes()
}

/// `BLAKE3(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[0x01]);
    h.update(left);
    h.update(right);
    *h.finalize().as_bytes()
}

/// The hash of the empty tree: `BLAKE3("")`.
pub fn empty_root() -> Hash {
    *blake3::hash(b"").as_bytes()
}

/// Gives the hash of a perfect subtree: level `l`, position `i` covers leaves
/// `[i << l, (i + 1) << l)`. Level 0 are leaf hashes.
pub trait NodeSource {
    type Error;
    fn perfect(&self, level: u32, index: u64) -> Result<Hash, Self::Error>;
}

/// Largest power of two strictly less than `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// MTH(D[start:end]) where `start` is a multiple of the largest power of two
/// not exceeding `end - start` (always true for the ranges RFC 9162 visits).
pub fn subtree<S: NodeSource>(src: &S, start: u64, end: u64) -> Result<Hash, S::Error> {
    let n = end - start;
    if n == 0 {
        return Ok(empty_root());
    }
    if n.is_power_of_two() && start.is_multiple_of(n) {
        return src.perfect(n.trailing_zeros(), start >> n.trailing_zeros());
    }
    let k = split(n);
    let l = subtree(src, start, start + k)?;
    let r = subtree(src, start + k, end)?;
    Ok(node_hash(&l, &r))
}

/// The root of the tree of the first `size` leaves.
pub fn root<S: NodeSource>(src: &S, size: u64) -> Result<Hash, S::Error> {
    subtree(src, 0, size)
}

/// PATH(m, D[0:n]) of RFC 9162 §2.1.3.1. Requires `m < n`.
pub fn inclusion_proof<S: NodeSource>(src: &S, m: u64, n: u64) -> Result<Vec<Hash>, S::Error> {
    let mut out = Vec::new();
    path(src, m, 0, n, &mut out)?;
    Ok(out)
}

fn path<S: NodeSource>(
    src: &S,
    m: u64,
    start: u64,
    end: u64,
    out: &mut Vec<Hash>,
) -> Result<(), S::Error> {
    let n = end - start;
    if n <= 1 {
        return Ok(());
    }
    let k = split(n);
    if m < k {
        path(src, m, start, start + k, out)?;
        out.push(subtree(src, start + k, end)?);
    } else {
        path(src, m - k, start + k, end, out)?;
        out.push(subtree(src, start, start + k)?);
    }
    Ok(())
}

/// PROOF(m, D[0:n]) of RFC 9162 §2.1.4.1. Requires `0 < m <= n`.
pub fn consistency_proof<S: NodeSource>(src: &S, m: u64, n: u64) -> Result<Vec<Hash>, S::Error> {
    let mut out = Vec::new();
    subproof(src, m, 0, n, true, &mut out)?;
    Ok(out)
}

fn subproof<S: NodeSource>(
    src: &S,
    m: u64,
    start: u64,
    end: u64,
    complete: bool,
    out: &mut Vec<Hash>,
) -> Result<(), S::Error> {
    let n = end - start;
    if m == n {
        if !complete {
            out.push(subtree(src, start, end)?);
        }
        return Ok(());
    }
    let k = split(n);
    if m <= k {
        subproof(src, m, start, start + k, complete, out)?;
        out.push(subtree(src, start + k, end)?);
    } else {
        subproof(src, m - k, start + k, end, false, out)?;
        out.push(subtree(src, start, start + k)?);
    }
    Ok(())
}

/// The perfect subtrees that cover leaves `[start, end)` when appended in
/// order to a tree of `start` leaves, as (level, first leaf): at each step
/// the largest subtree aligned at the current position that fits.
pub fn right_cover(start: u64, end: u64) -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    let mut p = start;
    while p < end {
        let align = if p == 0 { 63 } else { p.trailing_zeros() };
        let mut level = align.min(63);
        while level > 0 && p.checked_add(1 << level).is_none_or(|e| e > end) {
            level -= 1;
        }
        out.push((level, p));
        p += 1 << level;
    }
    out
}

/// A proof that leaves `[start, end)` are exactly those positions of the
/// tree of `size` leaves: the compact range of `[0, start)` (its perfect
/// subtrees, largest first) and the [`right_cover`] of `[end, size)`.
pub fn range_proof<S: NodeSource>(
    src: &S,
    start: u64,
    end: u64,
    size: u64,
) -> Result<(Vec<Hash>, Vec<Hash>), S::Error> {
    let left = CompactRange::from_source(src, start)?
        .stack
        .into_iter()
        .map(|(_, h)| h)
        .collect();
    let right = right_cover(end, size)
        .into_iter()
        .map(|(level, first)| src.perfect(level, first >> level))
        .collect::<Result<_, _>>()?;
    Ok((left, right))
}

/// Checks that `leaves` sit at positions `start..` of the tree of `size`
/// leaves whose root is `root`, given a [`range_proof`].
pub fn verify_range(
    start: u64,
    leaves: &[Hash],
    size: u64,
    left: &[Hash],
    right: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    let end = start
        .checked_add(leaves.len() as u64)
        .ok_or(ProofError::WrongLength)?;
    if end > size {
        return Err(ProofError::IndexOutOfRange { index: end, size });
    }
    let mut range = CompactRange::from_hashes(start, left).ok_or(ProofError::WrongLength)?;
    for leaf in leaves {
        range.push(*leaf);
    }
    let cover = right_cover(end, size);
    if cover.len() != right.len() {
        return Err(ProofError::WrongLength);
    }
    for ((level, _), h) in cover.into_iter().zip(right) {
        range.push_subtree(level, *h);
    }
    if range.root() == *root {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

/// Why a proof did not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProofError {
    #[error("leaf index {index} is not below tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("old size {old} is larger than new size {new}")]
    SizesOutOfOrder { old: u64, new: u64 },
    #[error("proof has the wrong number of hashes")]
    WrongLength,
    #[error("proof does not lead to the expected root")]
    RootMismatch,
}

/// RFC 9162 §2.1.3.2: checks `leaf` is at `index` in the tree of `size` leaves
/// whose root is `root`.
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return Err(ProofError::WrongLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::WrongLength);
    }
    if &r != root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// RFC 9162 §2.1.4.2: checks the tree of `old` leaves (root `old_root`) is a
/// prefix of the tree of `new` leaves (root `new_root`).
pub fn verify_consistency(
    old: u64,
    new: u64,
    proof: &[Hash],
    old_root: &Hash,
    new_root: &Hash,
) -> Result<(), ProofError> {
    if old > new {
        return Err(ProofError::SizesOutOfOrder { old, new });
    }
    if old == new {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        return if old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    if old == 0 {
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError::WrongLength)
        };
    }
    if proof.is_empty() {
        return Err(ProofError::WrongLength);
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let (mut fnode, mut snode) = (old - 1, new - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if snode == 0 {
            return Err(ProofError::WrongLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::WrongLength);
    }
    if &fr != old_root || &sr != new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// The right edge of a growing tree: one perfect subtree per set bit of the
/// size, largest first. Appending a leaf returns the perfect nodes it completes
/// so a store can keep them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactRange {
    size: u64,
    /// (level, hash), levels strictly decreasing.
    stack: Vec<(u32, Hash)>,
}

impl CompactRange {
    /// The compact range of the first `size` leaves, read from a source.
    pub fn from_source<S: NodeSource>(src: &S, size: u64) -> Result<Self, S::Error> {
        let mut stack = Vec::new();
        let mut start = 0u64;
        for level in (0..64u32).rev() {
            if size & (1 << level) != 0 {
                stack.push((level, src.perfect(level, start >> level)?));
                start += 1 << level;
            }
        }
        Ok(CompactRange { size, stack })
    }

    /// The compact range of `size` leaves from its perfect subtree hashes,
    /// largest first; `None` if there are not exactly one per set bit.
    pub fn from_hashes(size: u64, hashes: &[Hash]) -> Option<Self> {
        let levels: Vec<u32> = (0..64u32).rev().filter(|l| size & (1 << l) != 0).collect();
        if levels.len() != hashes.len() {
            return None;
        }
        Some(CompactRange {
            size,
            stack: levels.into_iter().zip(hashes.iter().copied()).collect(),
        })
    }

    /// Appends a perfect subtree of `2^level` leaves. The caller keeps the
    /// size aligned (as [`right_cover`] does); the subtree then merges with
    /// equal-level neighbours exactly as its leaves would have.
    pub fn push_subtree(&mut self, level: u32, hash: Hash) {
        let mut cur = (level, hash);
        while let Some(&(l, left)) = self.stack.last() {
            if l != cur.0 {
                break;
            }
            self.stack.pop();
            cur = (l + 1, node_hash(&left, &cur.1));
        }
        self.stack.push(cur);
        self.size += 1 << level;
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf; returns every perfect node completed, as
    /// (level, index, hash), starting with the leaf itself.
    pub fn push(&mut self, leaf: Hash) -> Vec<(u32, u64, Hash)> {
        let index = self.size;
        let mut made = vec![(0, index, leaf)];
        let mut cur = (0u32, leaf);
        while let Some(&(level, left)) = self.stack.last() {
            if level != cur.0 {
                break;
            }
            self.stack.pop();
            let h = node_hash(&left, &cur.1);
            cur = (level + 1, h);
            made.push((level + 1, index >> (level + 1), h));
        }
        self.stack.push(cur);
        self.size += 1;
        made
    }

    /// The tree root.
    pub fn root(&self) -> Hash {
        let mut it = self.stack.iter().rev();
        let Some(&(_, mut h)) = it.next() else {
            return empty_root();
        };
        for (_, left) in it {
            h = node_hash(left, &h);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_proofs_for_every_range_of_small_trees() {
        let leaves: Vec<Hash> = (0u8..37).map(|i| leaf_hash(&[i])).collect();
        struct Src<'a>(&'a [Hash]);
        impl NodeSource for Src<'_> {
            type Error = std::convert::Infallible;
            fn perfect(&self, level: u32, index: u64) -> Result<Hash, Self::Error> {
                let start = (index << level) as usize;
                let mut r = CompactRange::default();
                for l in &self.0[start..start + (1 << level)] {
                    r.push(*l);
                }
                Ok(r.root())
            }
        }
        for n in 1..=leaves.len() as u64 {
            let root = root(&Src(&leaves), n).unwrap();
            for a in 0..n {
                for b in a + 1..=n {
                    let (l, r) = range_proof(&Src(&leaves), a, b, n).unwrap();
                    let run = &leaves[a as usize..b as usize];
                    assert_eq!(
                        verify_range(a, run, n, &l, &r, &root),
                        Ok(()),
                        "{a}..{b} of {n}"
                    );
                    // A wrong leaf, a shifted start or a dropped leaf fails.
                    let mut bad = run.to_vec();
                    bad[0][0] ^= 1;
                    assert!(verify_range(a, &bad, n, &l, &r, &root).is_err());
                    if a > 0 {
                        assert!(verify_range(a - 1, run, n, &l, &r, &root).is_err());
                    }
                    if run.len() > 1 {
                        assert!(verify_range(a, &run[1..], n, &l, &r, &root).is_err());
                    }
                }
            }
        }
    }
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::convert::Infallible;

    /// Nodes computed straight from the RFC's recursive definition.
    struct Leaves(Vec<Hash>);

    impl NodeSource for Leaves {
        type Error = Infallible;
        fn perfect(&self, level: u32, index: u64) -> Result<Hash, Infallible> {
            let start = (index << level) as usize;
            Ok(mth(&self.0[start..start + (1 << level)]))
        }
    }

    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    fn leaves(n: u64) -> Leaves {
        Leaves((0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect())
    }

    #[test]
    fn all_proofs_verify_up_to_size_70() {
        for n in 1..=70u64 {
            let src = leaves(n);
            let root_n = root(&src, n).unwrap();
            for m in 0..n {
                let p = inclusion_proof(&src, m, n).unwrap();
                verify_inclusion(&src.0[m as usize], m, n, &p, &root_n).unwrap();
                // Any other leaf, index or size fails.
                let other = leaf_hash(b"other");
                assert!(verify_inclusion(&other, m, n, &p, &root_n).is_err());
                if n > 1 {
                    assert!(
                        verify_inclusion(&src.0[m as usize], (m + 1) % n, n, &p, &root_n).is_err()
                    );
                }
                let old = m + 1;
                let c = consistency_proof(&src, old, n).unwrap();
                let root_old = root(&src, old).unwrap();
                verify_consistency(old, n, &c, &root_old, &root_n).unwrap();
                if old < n {
                    assert!(verify_consistency(old, n, &c, &root_n, &root_n).is_err());
                }
            }
        }
    }

    #[test]
    fn compact_range_matches_definition_and_reports_nodes() {
        let src = leaves(100);
        let mut cr = CompactRange::default();
        let mut stored: HashMap<(u32, u64), Hash> = HashMap::new();
        assert_eq!(cr.root(), empty_root());
        for (i, l) in src.0.iter().enumerate() {
            for (lvl, idx, h) in cr.push(*l) {
                assert_eq!(h, src.perfect(lvl, idx).unwrap());
                stored.insert((lvl, idx), h);
            }
            let n = i as u64 + 1;
            assert_eq!(cr.root(), root(&src, n).unwrap());
            assert_eq!(CompactRange::from_source(&src, n).unwrap(), cr);
        }
        // Every perfect subtree of 100 leaves was reported exactly once.
        let expected: usize = (0..7).map(|l| 100usize >> l).sum();
        assert_eq!(stored.len(), expected);
    }

    proptest! {
        #[test]
        fn proofs_verify_for_random_sizes(n in 1u64..5000, seed in any::<u64>()) {
            let src = leaves(n);
            let m = seed % n;
            let root_n = root(&src, n).unwrap();
            let p = inclusion_proof(&src, m, n).unwrap();
            prop_assert!(verify_inclusion(&src.0[m as usize], m, n, &p, &root_n).is_ok());
            let old = 1 + seed % n;
            let c = consistency_proof(&src, old, n).unwrap();
            prop_assert!(verify_consistency(old, n, &c, &root(&src, old).unwrap(), &root_n).is_ok());
        }
    }
}
