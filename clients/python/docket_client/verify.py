"""Offline receipt verification, written from docs/ledger-format.md alone: leaf hash, entry
index, C2SP signed-note checkpoint and RFC 9162 inclusion proof (with BLAKE3)."""

import base64
import hashlib
import struct

import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


class ReceiptError(Exception):
    """A receipt that does not prove what it claims."""


def leaf_hash(entry: bytes) -> bytes:
    return blake3.blake3(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return blake3.blake3(b"\x01" + left + right).digest()


class Verifier:
    """A signed-note verifier key: ``name+hexkeyid+base64(0x01 || pubkey)``."""

    def __init__(self, vkey: str):
        name, key_id, b64 = vkey.strip().split("+", 2)
        raw = base64.b64decode(b64)
        if len(raw) != 33 or raw[0] != 1:
            raise ValueError("not an Ed25519 signed-note key")
        self.name = name
        self.key = Ed25519PublicKey.from_public_bytes(raw[1:])
        self.key_id = hashlib.sha256(name.encode() + b"\n\x01" + raw[1:]).digest()[:4]
        if self.key_id.hex() != key_id:
            raise ValueError("key id does not match name and key")

    def checkpoint(self, note: str):
        """Verifies a checkpoint note; returns (origin, size, root)."""
        text, sep, sigs = note.rpartition("\n\n")
        if not sep:
            raise ReceiptError("checkpoint has no signature block")
        text += "\n"
        for line in sigs.rstrip("\n").split("\n"):
            if not line.startswith("\u2014 "):
                raise ReceiptError(f"malformed signature line {line!r}")
            name, _, b64 = line[2:].rpartition(" ")
            blob = base64.b64decode(b64)
            if name != self.name or blob[:4] != self.key_id:
                continue  # another signer (a witness, a rotated key): ignored
            try:
                self.key.verify(blob[4:], text.encode())
            except InvalidSignature as e:
                raise ReceiptError("checkpoint signature does not verify") from e
            origin, size, root = text.split("\n")[:3]
            if origin != self.name:
                raise ReceiptError(f"checkpoint origin {origin!r} is not {self.name!r}")
            return origin, int(size), base64.b64decode(root)
        raise ReceiptError(f"no signature by {self.name!r}")


def verify_inclusion(leaf: bytes, index: int, size: int, proof, root: bytes) -> None:
    if index >= size:
        raise ReceiptError("index is not below the tree size")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ReceiptError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0 or r != root:
        raise ReceiptError("inclusion proof does not lead to the checkpoint's root")


def entry_payload(entry: bytes):
    """The (payload type, payload) stored in version-1, -2 or -3 entry bytes."""
    # version(1) index(8) time(8) previous leaf hash(32), then from version 2 on the history
    # count(8), then in version 3 the decision basis: count(4), each key(2 + K) and count(8)
    pos = 49 if entry[0] == 1 else 57
    if entry[0] == 3:
        (b,) = struct.unpack(">I", entry[pos : pos + 4])
        pos += 4
        for _ in range(b):
            (k,) = struct.unpack(">H", entry[pos : pos + 2])
            pos += 2 + k + 8
    (t,) = struct.unpack(">H", entry[pos : pos + 2])
    pos += 2 + t
    (p,) = struct.unpack(">H", entry[pos : pos + 2])
    payload_type = entry[pos + 2 : pos + 2 + p].decode()
    pos += 2 + p
    (n,) = struct.unpack(">I", entry[pos : pos + 4])
    return payload_type, entry[pos + 4 : pos + 4 + n]


def verify_receipt(receipt, verifier: Verifier, envelope=None) -> int:
    """Checks a Receipt message offline; with ``envelope``, also that the entry carries it.
    Returns the entry index."""
    entry = receipt.entry
    if leaf_hash(entry) != receipt.leaf_hash:
        raise ReceiptError("leaf hash is not the hash of the entry bytes")
    if entry[0] not in (1, 2, 3):
        raise ReceiptError(f"unknown entry format version {entry[0]}")
    (index,) = struct.unpack(">Q", entry[1:9])
    if index != receipt.index:
        raise ReceiptError(f"entry records index {index}, receipt says {receipt.index}")
    _, size, root = verifier.checkpoint(receipt.checkpoint.note)
    verify_inclusion(receipt.leaf_hash, index, size, list(receipt.inclusion_proof.hashes), root)
    if envelope is not None and entry_payload(entry) != (envelope.payload_type, envelope.payload):
        raise ReceiptError("the entry does not carry the submitted payload")
    return index
