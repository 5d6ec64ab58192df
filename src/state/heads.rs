//! Change heads (ledger-format §6.5): for each change, in the order changes
//! were opened, a leaf committing to how many entries concern it and to a
//! hash chain over their indices; a Merkle tree over those leaves, whose size
//! and root every checkpoint signs. A change bundle proves with it that it
//! carries every entry concerning its change.
//!
//! The tree is kept in memory, every level of it, so that an entry concerning
//! a change costs one path of hashes and a proof is a read.

use crate::ledger::merkle::{self, Hash, NodeSource};

/// The chain of a change no entry concerns yet.
pub const EMPTY_CHAIN: Hash = [0; 32];

/// `BLAKE3(0x02 || chain || u64 BE index)`: the chain after entry `index`.
pub fn chain_step(chain: &Hash, index: u64) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[0x02]);
    h.update(chain);
    h.update(&index.to_be_bytes());
    *h.finalize().as_bytes()
}

/// The tree leaf hash of a change with `count` entries chained into `chain`.
/// Change ids are at most a few hundred bytes (ledger-format §2.5), far
/// below the u16 of the length prefix.
pub fn leaf_hash(id: &str, count: u64, chain: &Hash) -> Hash {
    let len = u16::try_from(id.len()).expect("change ids are limited to well under 64 KiB");
    let mut leaf = Vec::with_capacity(2 + id.len() + 8 + 32);
    leaf.extend_from_slice(&len.to_be_bytes());
    leaf.extend_from_slice(id.as_bytes());
    leaf.extend_from_slice(&count.to_be_bytes());
    leaf.extend_from_slice(chain);
    merkle::leaf_hash(&leaf)
}

/// What a change head proves: the leaf of change number `index` in a tree
/// of `size` leaves, and the inclusion path to the root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadProof {
    pub index: u64,
    pub path: Vec<Hash>,
}

/// The change-heads tree: `levels[l][i]` is the hash of the perfect subtree
/// of leaves `[i << l, (i + 1) << l)`, for every such subtree complete so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeadTree {
    levels: Vec<Vec<Hash>>,
}

impl NodeSource for HeadTree {
    type Error = std::convert::Infallible;
    fn perfect(&self, level: u32, index: u64) -> Result<Hash, Self::Error> {
        Ok(self.levels[level as usize][index as usize])
    }
}

impl HeadTree {
    /// The number of leaves (changes).
    pub fn len(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the leaf of a newly opened change; returns its number.
    pub fn push(&mut self, leaf: Hash) -> u64 {
        if self.levels.is_empty() {
            self.levels.push(Vec::new());
        }
        let index = self.levels[0].len() as u64;
        self.levels[0].push(leaf);
        let mut l = 0;
        while self.levels[l].len().is_multiple_of(2) {
            let n = self.levels[l].len();
            let parent = merkle::node_hash(&self.levels[l][n - 2], &self.levels[l][n - 1]);
            if self.levels.len() == l + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[l + 1].push(parent);
            l += 1;
        }
        index
    }

    /// Replaces the leaf of change number `index`, and every complete
    /// subtree above it.
    pub fn set(&mut self, index: u64, leaf: Hash) {
        let mut i = index as usize;
        self.levels[0][i] = leaf;
        for l in 1..self.levels.len() {
            i /= 2;
            if i >= self.levels[l].len() {
                break;
            }
            self.levels[l][i] =
                merkle::node_hash(&self.levels[l - 1][2 * i], &self.levels[l - 1][2 * i + 1]);
        }
    }

    /// The root over every leaf (`BLAKE3("")` when there is none).
    pub fn root(&self) -> Hash {
        match merkle::root(self, self.len()) {
            Ok(h) => h,
            Err(never) => match never {},
        }
    }

    /// The inclusion proof of leaf `index`, or `None` past the end.
    pub fn proof(&self, index: u64) -> Option<HeadProof> {
        if index >= self.len() {
            return None;
        }
        match merkle::inclusion_proof(self, index, self.len()) {
            Ok(path) => Some(HeadProof { index, path }),
            Err(never) => match never {},
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(n: u64) -> Hash {
        leaf_hash(&format!("CHG-{n}"), n, &chain_step(&EMPTY_CHAIN, n))
    }

    /// The tree kept by pushes and updates has the root and proofs of the
    /// same leaves hashed from scratch, at every size and after updates
    /// anywhere.
    #[test]
    fn kept_tree_agrees_with_one_built_from_scratch() {
        let mut t = HeadTree::default();
        assert_eq!(t.root(), merkle::empty_root());
        let mut leaves = Vec::new();
        for n in 0..37u64 {
            leaves.push(leaf(n));
            assert_eq!(t.push(leaf(n)), n);
            // Touch an earlier leaf too.
            let j = (n * 7) % (n + 1);
            leaves[j as usize] = leaf(1000 + n);
            t.set(j, leaf(1000 + n));
            let mut fresh = HeadTree::default();
            for l in &leaves {
                fresh.push(*l);
            }
            assert_eq!(t, fresh, "at {} leaves", n + 1);
            let root = fresh.root();
            assert_eq!(t.root(), root);
            for (i, l) in leaves.iter().enumerate() {
                let p = t.proof(i as u64).unwrap();
                assert!(
                    merkle::verify_inclusion(l, i as u64, t.len(), &p.path, &root).is_ok(),
                    "leaf {i} of {}",
                    t.len()
                );
            }
            assert!(t.proof(t.len()).is_none());
        }
    }

    #[test]
    fn leaf_bytes_are_as_documented() {
        // ledger-format §6.5, by hand for one change with one entry (index 5).
        let mut c = vec![0x02];
        c.extend_from_slice(&[0; 32]);
        c.extend_from_slice(&5u64.to_be_bytes());
        let chain = *blake3::hash(&c).as_bytes();
        assert_eq!(chain_step(&EMPTY_CHAIN, 5), chain);
        let mut l = vec![0x00, 0x00, 0x03];
        l.extend_from_slice(b"C-1");
        l.extend_from_slice(&1u64.to_be_bytes());
        l.extend_from_slice(&chain);
        assert_eq!(leaf_hash("C-1", 1, &chain), *blake3::hash(&l).as_bytes());
    }
}
