#!/usr/bin/env python3
"""Independent verifier for Docket evidence bundles (`docket-evidence/1`).

Written only from the published documentation:
  docs/evidence-format.md  (cited as EF §x)
  docs/ledger-format.md    (cited as LF §x)
  docs/policy.md           (only where the two documents above point to it)
without reading Docket's source code.

Usage:
    python3 tests/evidence/independent_verify.py BUNDLE.tar --log-key LOG.vkey

Exit codes: 0 verified, 1 the bundle failed verification, 64 usage error (bad arguments,
unreadable bundle or key file, invalid vkey).

Dependencies: Python 3.11 standard library, `blake3`, `cryptography`.

What is checked, in the order of EF §11:
  1. the ustar container is exactly in canonical form (EF §3);
  2. manifest.json basics, manifest.sig (a signed note by the log key over H(manifest.json));
  3. every member's size and BLAKE3 against the manifest, no missing or extra member;
  4. checkpoint.txt (signed note, origin, size, root, and the optional `changes <m> <root>` and
     `subjects <m> <root>` extension lines of LF §6.1) and its agreement with the manifest;
  5. entries.bin, proofs.bin (RFC 9162 inclusion proofs), range.bin (compact range proof);
  6. the sparse fold: entry decoding, protobuf payload, key history from genesis, every DSSE
     signature (strict Ed25519) with a key active at that index, the identity and governance rules
     of LF §8.2 that do not need the policy evaluator, event-id uniqueness, the hash chain between
     consecutive carried entries, genesis naming the trusted key and origin, each history count
     (LF §4.3) and each deployment's decision basis (LF §4.4) against the carried entries;
  7. scope, completeness of a period (boundary entries, contiguity, monotonic times) or of a
     complete change bundle (its range runs from the change's opening to the checkpoint), and `as_of`;
     for a change bundle without `complete` whose checkpoint carries change heads, heads.bin: the
     change-head leaf recomputed from the carried entries concerning the change (LF §6.5) must be
     proven in the change-heads tree the checkpoint signs (EF §2.2 point 10, §6.6, §11 step 7.2);
     heads.bin must be absent from every other bundle; likewise, when the checkpoint carries
     subject heads, subjects.bin: it must name exactly the change's proven subjects, and each
     one's subject-head leaf recomputed from the carried entries concerning it (LF §6.6) must be
     proven in the subject-heads tree (EF §2.2 point 11, §6.7, §11 step 7.2); subjects.bin must
     be absent from every other bundle;
  8. derived files: everything regenerable without the policy evaluator is regenerated and compared
     byte for byte (facts/entries.json, facts/principals.json, facts/policies.json,
     policies/vN.toml, facts/changes.json, facts/obligations.json,
     oscal/assessment-results.json, and the manifest itself); facts/decisions.json is regenerated
     from the fold except for the evaluator's outputs (verdict, rule, reasons, which reviews
     counted, obligation descriptions), which are taken from the bundle and only checked for
     consistency. Re-evaluating decisions and regenerating report.html are skipped (the docs say
     they are defined by Docket's code); report.html is only digest-checked.
"""

import base64
import copy
import datetime
import hashlib
import json
import re
import struct
import sys
import tomllib
import unicodedata

import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

class Failed(Exception):
    """A verification failure: `what` names the file or entry, `why` says what is wrong."""

    def __init__(self, what, why):
        super().__init__(f"{what}: {why}")
        self.what = what
        self.why = why


class UsageError(Exception):
    """Bad arguments or unreadable inputs (exit 64)."""


def require(cond, what, why):
    if not cond:
        raise Failed(what, why)


# ---------------------------------------------------------------------------------------------
# Hashes (LF §1, §5.1)
# ---------------------------------------------------------------------------------------------

def H(data):
    return blake3.blake3(data).digest()


def leaf_hash(entry_bytes):
    return H(b"\x00" + entry_bytes)


def node_hash(left, right):
    return H(b"\x01" + left + right)


# ---------------------------------------------------------------------------------------------
# Strict Ed25519 (LF §2.4)
#
# The `cryptography` package (OpenSSL) does the cofactorless equation with a byte comparison of R
# and refuses S >= l. The small-order checks of rules 3 and 4 are done here in pure Python.
# ---------------------------------------------------------------------------------------------

_P = 2 ** 255 - 19
_L = 2 ** 252 + 27742317777372353535851937790883648493
_D = (-121665 * pow(121666, _P - 2, _P)) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _ed_decode(b):
    """Decode a 32-byte point encoding (as curve25519-dalek does: y is reduced mod p).
    Returns (x, y) or None when it is not a curve point."""
    if len(b) != 32:
        return None
    y = int.from_bytes(b, "little") & ((1 << 255) - 1)
    sign = b[31] >> 7
    y %= _P
    u = (y * y - 1) % _P
    v = (_D * y * y + 1) % _P
    x2 = u * pow(v, _P - 2, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P != 0:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P != 0:
        return None
    if (x & 1) != sign:
        x = (-x) % _P
    return (x, y)


def _ed_add(p1, p2):
    x1, y1 = p1
    x2, y2 = p2
    t = _D * x1 * x2 * y1 * y2 % _P
    x3 = (x1 * y2 + x2 * y1) * pow(1 + t, _P - 2, _P) % _P
    y3 = (y1 * y2 + x1 * x2) * pow(1 - t, _P - 2, _P) % _P
    return (x3, y3)


def _is_small_order(pt):
    q = pt
    for _ in range(3):
        q = _ed_add(q, q)
    return q == (0, 1)


_point_cache = {}


def valid_public_key(key):
    """A valid Ed25519 point that is not of small order (LF §2.4 rule 4, LF §3)."""
    if key not in _point_cache:
        pt = _ed_decode(key) if len(key) == 32 else None
        _point_cache[key] = pt is not None and not _is_small_order(pt)
    return _point_cache[key]


def verify_strict(public_key, message, signature):
    """LF §2.4 rules 1-5."""
    if len(signature) != 64 or len(public_key) != 32:
        return False
    r_bytes, s_bytes = signature[:32], signature[32:]
    if int.from_bytes(s_bytes, "little") >= _L:                   # rule 2
        return False
    r_pt = _ed_decode(r_bytes)                                      # rule 3
    if r_pt is None or _is_small_order(r_pt):
        return False
    if not valid_public_key(public_key):                            # rule 4
        return False
    try:                                                            # rule 5
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
        return True
    except (InvalidSignature, ValueError):
        return False


# ---------------------------------------------------------------------------------------------
# The vkey (LF §6.3) and signed notes (LF §6.2, §6.4)
# ---------------------------------------------------------------------------------------------

def note_key_id(name, public_key):
    return hashlib.sha256(name.encode() + b"\x0a\x01" + public_key).digest()[:4]


def b64decode_strict(text):
    """Standard base64 with padding, in its one canonical spelling: validate=True still accepts
    non-zero bits after the last byte (...AAB= for ...AAA=), which would let a byte change."""
    raw = base64.b64decode(text.encode("ascii"), validate=True)
    if base64.b64encode(raw).decode("ascii") != text:
        raise ValueError("not canonical base64")
    return raw


def parse_vkey(text):
    """Returns (name, key id, public key). Raises ValueError."""
    text = text.strip()
    parts = text.split("+", 2)
    if len(parts) != 3:
        raise ValueError("a vkey is <name>+<key id>+<base64>")
    name, keyid_hex, b64 = parts
    if not name:
        raise ValueError("empty key name")
    raw = b64decode_strict(b64)
    if len(raw) != 33 or raw[0] != 0x01:
        raise ValueError("the key must be 33 bytes starting with 0x01 (Ed25519)")
    key = raw[1:]
    if not valid_public_key(key):
        raise ValueError("the key is not a valid point or is of small order")
    if note_key_id(name, key).hex() != keyid_hex:
        raise ValueError("the key id does not match the key and name")
    return name, note_key_id(name, key), key


def verify_note(note, what, name, keyid, public_key):
    """LF §6.4 steps 1-4. Returns the signed text (the body, ending in a newline)."""
    pos = note.rfind("\n\n")
    require(pos >= 0, what, "not a signed note: no empty line before the signatures")
    text = note[:pos + 1]
    block = note[pos + 2:]
    require(block.endswith("\n"), what, "the signature block does not end with a newline")
    chosen = None
    for line in block[:-1].split("\n"):
        require(line.startswith("\u2014 "), what, f"malformed signature line {line!r}")
        rest = line[2:]
        sp = rest.rfind(" ")
        require(sp >= 0, what, f"malformed signature line {line!r}")   # the name may be empty
        lname, lb64 = rest[:sp], rest[sp + 1:]
        try:
            blob = b64decode_strict(lb64)
        except Exception:
            raise Failed(what, f"signature line with invalid base64: {line!r}")
        if lname != name or blob[:4] != keyid:
            continue                                   # step 3: other keys are skipped
        chosen = blob
        break
    require(chosen is not None, what, f"not signed by the trusted key {name}")
    require(len(chosen) == 68, what, "the signature blob is not 68 bytes")
    require(verify_strict(public_key, text.encode("utf-8"), chosen[4:]), what,
            "the signature does not verify under the trusted key")
    return text


# ---------------------------------------------------------------------------------------------
# Times (EF §1)
# ---------------------------------------------------------------------------------------------

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


I64_MAX = (1 << 63) - 1


def due_time(dep):
    """EF §10.6: a break-glass deployment's review is due at its time plus the policy's
    break_glass_review, saturating at the largest signed 64-bit nanosecond count."""
    return min(dep["time"] + dep["policy"].break_glass_review, I64_MAX)


def fmt_time(ns):
    """RFC 3339 as jiff displays a Timestamp: trailing zeros of the fraction removed."""
    secs, frac = divmod(ns, 1_000_000_000)
    dt = _EPOCH + datetime.timedelta(seconds=secs)
    out = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        out += "." + f"{frac:09d}".rstrip("0")
    return out + "Z"


def fmt_time_seconds(ns):
    """T(t) of EF §10.9: truncated to whole seconds."""
    secs = ns // 1_000_000_000
    return (_EPOCH + datetime.timedelta(seconds=secs)).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_duration_ns(text):
    """policy.md: a positive whole number followed by s, m, h or d."""
    m = re.fullmatch(r"([0-9]+)([smhd])", text)
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"bad duration {text!r}")
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    return int(m.group(1)) * unit * 1_000_000_000


def glob_match(pattern, text):
    """policy.md: `*` matches any run of characters; everything else is literal."""
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, text, re.DOTALL) is not None


def to_json(value):
    """EF §10.1: the serialisation of every JSON file."""
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


# ---------------------------------------------------------------------------------------------
# 1. The container (EF §3, §11 step 1)
# ---------------------------------------------------------------------------------------------

PRIMARY_ORDER_FIRST = ("manifest.json", "manifest.sig")


def _octal_field(field, what, name):
    text = field.rstrip(b"\x00").rstrip(b" ").lstrip(b" ")
    try:
        return int(text.decode("ascii") or "0", 8)
    except ValueError:
        raise Failed("archive", f"member {name!r}: bad {what} field {field!r}")


def read_ustar(data):
    """Read the archive leniently (any ustar the canonical writer could have produced), so that
    the canonical comparison below can name what differs. Returns [(path, content)]."""
    members = []
    pos = 0
    seen = set()
    while True:
        require(pos + 512 <= len(data), "archive", "truncated: no end-of-archive blocks")
        header = data[pos:pos + 512]
        if header == bytes(512):
            break
        raw_name = header[0:100].split(b"\x00", 1)[0]
        prefix = header[345:500].split(b"\x00", 1)[0]
        if prefix:
            raw_name = prefix + b"/" + raw_name
        try:
            name = raw_name.decode("ascii")
        except UnicodeDecodeError:
            raise Failed("archive", f"member path {raw_name!r} is not ASCII")
        stored_sum = _octal_field(header[148:156], "checksum", name)
        actual = sum(header[:148]) + 8 * 0x20 + sum(header[156:])
        require(stored_sum == actual, "archive", f"member {name!r}: header checksum mismatch")
        require(header[156:157] in (b"0", b"\x00"), "archive",
                f"member {name!r} is not a regular file (type {header[156:157]!r})")
        size = _octal_field(header[124:136], "size", name)
        require(size < 2 ** 32 + 1, "archive", f"member {name!r} is larger than 4 GiB")
        comps = name.split("/")
        require(name and not name.startswith("/") and all(c not in ("", ".", "..") for c in comps),
                "archive", f"member path {name!r} is not a clean relative path")
        require(name not in seen, "archive", f"member {name!r} appears twice")
        seen.add(name)
        start = pos + 512
        require(start + size <= len(data), "archive", f"member {name!r} is truncated")
        members.append((name, data[start:start + size]))
        pos = start + (size + 511) // 512 * 512
    return members


def canonical_header(path, size):
    """One header exactly as the table of EF §3.2."""
    name = path.encode("ascii")
    require(len(name) < 100, "archive", f"member path {path!r} is not shorter than 100 bytes")
    h = bytearray(512)
    h[0:len(name)] = name
    h[100:108] = b"0000644\x00"
    h[108:116] = b"0000000\x00"
    h[116:124] = b"0000000\x00"
    h[124:136] = b"%011o\x00" % size
    h[136:148] = b"00000000000\x00"
    h[156:157] = b"0"
    h[257:263] = b"ustar\x00"
    h[263:265] = b"00"
    h[148:156] = b" " * 8
    h[148:156] = b"%07o\x00" % sum(h)
    return bytes(h)


def canonical_order(paths):
    first = [p for p in PRIMARY_ORDER_FIRST if p in paths]
    rest = sorted((p for p in paths if p not in PRIMARY_ORDER_FIRST), key=lambda p: p.encode())
    return first + rest


def write_canonical(files):
    out = bytearray()
    for path in canonical_order(list(files)):
        content = files[path]
        out += canonical_header(path, len(content))
        out += content
        out += bytes((-len(content)) % 512)
    out += bytes(1024)
    return bytes(out)


def check_archive(data):
    """EF §11 step 1: read, rewrite canonically, compare byte for byte."""
    members = read_ustar(data)
    files = dict(members)
    canonical = write_canonical(files)
    if canonical != data:
        # Name the first place that differs, to make the failure actionable.
        order = [p for p, _ in members]
        if order != canonical_order(order):
            raise Failed("archive", f"members are not in canonical order: {order}")
        n = min(len(canonical), len(data))
        off = next((i for i in range(n) if canonical[i] != data[i]), n)
        where, pos = "the end-of-archive blocks or trailing data", 0
        for path in canonical_order(order):
            size = len(files[path])
            span = 512 + (size + 511) // 512 * 512
            if off < pos + 512:
                where = f"the header of {path!r} (byte {off - pos})"
                break
            if off < pos + span:
                where = f"the padding after {path!r}" if off >= pos + 512 + size else f"{path!r}"
                break
            pos += span
        raise Failed("archive", f"not in canonical form: first difference at byte {off}, in {where}"
                     f" (bundle {len(data)} bytes, canonical {len(canonical)} bytes)")
    return files


# ---------------------------------------------------------------------------------------------
# 2./3. Manifest, its signature, the listed files (EF §4, §5, §11 steps 2-3)
# ---------------------------------------------------------------------------------------------

def check_manifest_basics(files, key_name):
    require("manifest.json" in files, "manifest.json", "missing from the bundle")
    # EF §11 step 2: not yet known to be signed, so too large a manifest is refused unparsed.
    require(len(files["manifest.json"]) <= 1 << 20, "manifest.json",
            f"{len(files['manifest.json'])} bytes; a manifest is at most 1048576")
    try:
        manifest = json.loads(files["manifest.json"].decode("utf-8"))
    except Exception as exc:
        raise Failed("manifest.json", f"does not parse as JSON: {exc}")
    require(isinstance(manifest, dict), "manifest.json", "not a JSON object")
    require(manifest.get("format") == "docket-evidence/1", "manifest.json",
            f"format is {manifest.get('format')!r}, not 'docket-evidence/1'")
    require(isinstance(manifest.get("origin"), str), "manifest.json", "origin is not a string")
    require(manifest["origin"] == key_name, "manifest.json",
            f"origin {manifest['origin']!r} is not the trusted key's name {key_name!r}")
    return manifest


def check_manifest_sig(files, origin, keyid, public_key):
    """EF §5: a signed note whose body is the manifest's digest."""
    require("manifest.sig" in files, "manifest.sig", "missing from the bundle")
    try:
        note = files["manifest.sig"].decode("utf-8")
    except UnicodeDecodeError:
        raise Failed("manifest.sig", "not UTF-8")
    text = verify_note(note, "manifest.sig", origin, keyid, public_key)
    lines = text.split("\n")
    require(len(lines) >= 4, "manifest.sig", "the body has fewer than three lines")
    require(len(lines) == 4, "manifest.sig", "the body has lines after the digest")
    # The one member the manifest cannot list: nothing but the body and one signature line.
    require(note[len(text) + 1:].count("\n") == 1, "manifest.sig",
            "the note must carry exactly one signature line, the log key's")
    require(lines[0] == "docket evidence manifest v1", "manifest.sig",
            f"first line is {lines[0]!r}, not 'docket evidence manifest v1'")
    require(lines[1] == origin, "manifest.sig", f"second line {lines[1]!r} is not the origin")
    require(re.fullmatch(r"[0-9a-fA-F]{64}", lines[2]) is not None, "manifest.sig",
            "third line is not the hex of 32 bytes")
    require(bytes.fromhex(lines[2]) == H(files["manifest.json"]), "manifest.json",
            "its BLAKE3 differs from the digest manifest.sig signs (the manifest was altered)")


def check_listed_files(files, manifest):
    """EF §11 step 3."""
    listed = manifest.get("files")
    require(isinstance(listed, list), "manifest.json", "files is not an array")
    by_path = {}
    for item in listed:
        require(isinstance(item, dict) and isinstance(item.get("path"), str)
                and isinstance(item.get("size"), int) and not isinstance(item.get("size"), bool)
                and item["size"] >= 0 and isinstance(item.get("blake3"), str),
                "manifest.json", f"malformed files item {item!r}")
        require(item["path"] not in by_path, "manifest.json", f"{item['path']} is listed twice")
        by_path[item["path"]] = item
    for path in canonical_order(list(files)):
        if path in PRIMARY_ORDER_FIRST:
            continue
        require(path in by_path, path, "not listed in the manifest")
        content = files[path]
        require(len(content) == by_path[path]["size"], path,
                f"its size {len(content)} differs from the manifest's {by_path[path]['size']}")
        require(H(content).hex() == by_path[path]["blake3"], path,
                "its BLAKE3 differs from the manifest (the file was altered)")
    for path in by_path:
        require(path in files, path, "listed in the manifest but missing from the bundle")
    return len(by_path)


# ---------------------------------------------------------------------------------------------
# 4. The checkpoint (LF §6, EF §11 step 4)
# ---------------------------------------------------------------------------------------------

def read_checkpoint(files, path, origin, keyid, public_key):
    """LF §6.4: a checkpoint note signed by the log key; returns (size, root, heads, subjects),
    where heads is None when the body has no `changes` line (a checkpoint signed before change
    heads existed, LF §6.1) and (m, change-heads root) otherwise, and subjects likewise None
    without a `subjects` line (signed before subject heads existed) and (m, subject-heads root)
    otherwise."""
    require(path in files, path, "missing from the bundle")
    try:
        note = files[path].decode("utf-8")
    except UnicodeDecodeError:
        raise Failed(path, "not UTF-8")
    text = verify_note(note, path, origin, keyid, public_key)
    lines = text.split("\n")
    require(len(lines) >= 4, path, "the body has fewer than three lines")
    require(lines[0] != "", path, "empty origin")
    require(lines[0] == origin, path, f"origin {lines[0]!r} is not {origin!r}")
    require(re.fullmatch(r"0|[1-9][0-9]*", lines[1]) is not None and int(lines[1]) < 2 ** 64,
            path, f"bad tree size {lines[1]!r}")
    size = int(lines[1])
    try:
        root = b64decode_strict(lines[2])
    except Exception:
        raise Failed(path, "the root is not base64")
    require(len(root) == 32, path, "the root is not 32 bytes")
    # LF §6.1: of the lines after the root, the one that starts with `changes ` and the one that
    # starts with `subjects ` are read, in either order: each exactly the word, a canonical
    # decimal and 32 bytes of base64, separated by single spaces; two lines of either word are
    # refused. Any other extension line is ignored. The body ends with a newline (LF §6.2), so
    # the last item of `lines` is the empty string after it.
    read = {}   # word -> (m, root)
    for line in lines[3:-1]:
        word = next((w for w in ("changes", "subjects") if line.startswith(w + " ")), None)
        if word is None:
            continue
        tree = "change-heads" if word == "changes" else "subject-heads"
        require(word not in read, path, f"more than one `{word}` line")
        parts = line.split(" ")
        require(len(parts) == 3 and parts[0] == word, path,
                f"malformed `{word}` line {line!r}: not the word, a number and a root separated"
                " by single spaces")
        require(re.fullmatch(r"0|[1-9][0-9]*", parts[1]) is not None and int(parts[1]) < 2 ** 64,
                path, f"bad number of {word} {parts[1]!r} in the `{word}` line")
        try:
            heads_root = b64decode_strict(parts[2])
        except Exception:
            raise Failed(path, f"the {tree} root is not base64")
        require(len(heads_root) == 32, path, f"the {tree} root is not 32 bytes")
        read[word] = (int(parts[1]), heads_root)
    return size, root, read.get("changes"), read.get("subjects")


def check_checkpoint(files, manifest, origin, keyid, public_key):
    """EF §11 step 4.1-4.2. Returns (n, R, heads, subjects) as read_checkpoint gives them."""
    size, root, heads, subjects = read_checkpoint(files, "checkpoint.txt", origin, keyid,
                                                  public_key)
    cp = manifest.get("checkpoint")
    require(isinstance(cp, dict) and cp.get("size") == size and cp.get("root") == root.hex(),
            "manifest.json", f"checkpoint {cp!r} differs from checkpoint.txt (size {size}, "
            f"root {root.hex()})")
    return size, root, heads, subjects


def verify_consistency(m, n, proof, old_root, new_root):
    """LF §5.4 (RFC 9162 §2.1.4.2)."""
    if m > n:
        return False
    if m == n:
        return not proof and old_root == new_root
    if m == 0:
        return not proof
    if not proof:
        return False
    path = ([old_root] if m & (m - 1) == 0 else []) + list(proof)
    a, b = m - 1, n - 1
    while a % 2 == 1:
        a >>= 1
        b >>= 1
    old_h = new_h = path[0]
    for c in path[1:]:
        if b == 0:
            return False
        if a % 2 == 1 or a == b:
            old_h = node_hash(c, old_h)
            new_h = node_hash(c, new_h)
            if a % 2 == 0:
                while a % 2 == 0 and a != 0:
                    a >>= 1
                    b >>= 1
        else:
            new_h = node_hash(new_h, c)
        a >>= 1
        b >>= 1
    return b == 0 and old_h == old_root and new_h == new_root


SINCE_NOTE, SINCE_PROOF = "since/checkpoint.txt", "since/consistency.bin"


def check_since(files, origin, keyid, public_key, n, root):
    """EF §6.5, §11 step 4: an earlier checkpoint and the consistency proof from it."""
    if SINCE_NOTE not in files and SINCE_PROOF not in files:
        return None
    require(SINCE_PROOF in files, SINCE_PROOF, f"missing, but the bundle carries {SINCE_NOTE}")
    require(SINCE_NOTE in files, SINCE_NOTE, f"missing, but the bundle carries {SINCE_PROOF}")
    # Its `changes` and `subjects` lines, if any, are parsed (a malformed one refused) but not
    # used: change and subject heads are not append-only, so nothing relates them across
    # checkpoints (LF §6.5, §6.6).
    m, old_root, _, _ = read_checkpoint(files, SINCE_NOTE, origin, keyid, public_key)
    require(1 <= m <= n, SINCE_NOTE, f"is for tree size {m}; an earlier checkpoint is for a size "
            f"from 1 to the bundle's {n}")
    data = files[SINCE_PROOF]
    require(len(data) >= 1, SINCE_PROOF, "truncated at byte 0")
    count = data[0]
    require(count <= 64, SINCE_PROOF, f"a proof of {count} hashes; at most 64 are possible")
    require(len(data) == 1 + 32 * count, SINCE_PROOF,
            f"{len(data)} bytes, not 1 + 32 x {count}")
    proof = [data[p:p + 32] for p in range(1, len(data), 32)]
    require(verify_consistency(m, n, proof, old_root, root), SINCE_PROOF,
            f"consistency proof from tree size {m} to {n} does not verify")
    return m, old_root


# ---------------------------------------------------------------------------------------------
# 5. entries.bin, proofs.bin, range.bin and the Merkle proofs (EF §6, §7, LF §5)
# ---------------------------------------------------------------------------------------------

def decode_entries_bin(data):
    """EF §6.2. Returns [(index, entry bytes)]."""
    out = []
    pos = 0
    prev = None
    while pos < len(data):
        require(pos + 12 <= len(data), "entries.bin", f"truncated record header at byte {pos}")
        index, length = struct.unpack(">QI", data[pos:pos + 12])
        require(pos + 12 + length <= len(data), "entries.bin",
                f"the record of entry {index} is truncated")
        require(prev is None or index > prev, "entries.bin",
                f"index {index} does not follow {prev} (indices must strictly increase)")
        out.append((index, data[pos + 12:pos + 12 + length]))
        prev = index
        pos += 12 + length
    return out


def decode_proofs_bin(data):
    """EF §6.3. Returns {index: [hash, ...]}."""
    proofs = {}
    last = None
    pos = 0
    while pos < len(data):
        require(pos + 9 <= len(data), "proofs.bin", f"truncated record at byte {pos}")
        index = struct.unpack(">Q", data[pos:pos + 8])[0]
        k = data[pos + 8]
        require(k <= 64, "proofs.bin", f"the proof of entry {index} has {k} > 64 hashes")
        end = pos + 9 + 32 * k
        require(end <= len(data), "proofs.bin", f"the proof of entry {index} is truncated")
        require(index not in proofs, "proofs.bin", f"two proofs for entry {index}")
        require(last is None or index > last, "proofs.bin",
                f"the proof of entry {index} is out of increasing index order")
        last = index
        proofs[index] = [data[p:p + 32] for p in range(pos + 9, end, 32)]
        pos = end
    return proofs


def decode_range_bin(data):
    """EF §6.4. Returns (start, end, left hashes, right hashes)."""
    require(len(data) >= 17, "range.bin", "truncated")
    start, end = struct.unpack(">QQ", data[:16])
    a = data[16]
    pos = 17 + 32 * a
    require(pos + 1 <= len(data), "range.bin", "truncated in the left hashes")
    left = [data[p:p + 32] for p in range(17, pos, 32)]
    b = data[pos]
    stop = pos + 1 + 32 * b
    require(stop <= len(data), "range.bin", "truncated in the right hashes")
    require(stop == len(data), "range.bin", "trailing bytes")
    right = [data[p:p + 32] for p in range(pos + 1, stop, 32)]
    require(a <= 64 and b <= 64, "range.bin", f"{a} left and {b} right hashes; at most 64 each")
    require(start < end, "range.bin", f"start {start} is not below end {end}")
    return start, end, left, right


def verify_inclusion(leaf, index, size, proof, root):
    """LF §5.3."""
    if index >= size:
        return False
    a, b, h = index, size - 1, leaf
    for p in proof:
        if b == 0:
            return False
        if a % 2 == 1 or a == b:
            h = node_hash(p, h)
            if a % 2 == 0:
                while a % 2 == 0 and a != 0:
                    a >>= 1
                    b >>= 1
        else:
            h = node_hash(h, p)
        a >>= 1
        b >>= 1
    return b == 0 and h == root


def right_cover(end, n):
    """EF §7.1: the levels of the right hashes."""
    levels = []
    p = end
    while p < n:
        level = 0
        while p % (1 << (level + 1)) == 0 and p + (1 << (level + 1)) <= n:
            level += 1
        levels.append(level)
        p += 1 << level
    return levels


def verify_range(start, leaves, n, left, right, root):
    """EF §7.2, transcribed."""
    end = start + len(leaves)
    if end > n:
        return False
    levels = [lv for lv in range(63, -1, -1) if (start >> lv) & 1]
    if len(left) != len(levels):
        return False
    stack = []

    def push(level, h):
        while stack and stack[-1][0] == level:
            _, l = stack.pop()
            h = node_hash(l, h)
            level += 1
        stack.append((level, h))

    stack.extend(zip(levels, left))
    for h in leaves:
        push(0, h)
    cover = right_cover(end, n)
    if len(right) != len(cover):
        return False
    for level, h in zip(cover, right):
        push(level, h)
    if not stack:
        return False
    h = stack[-1][1]
    for _, eh in reversed(stack[:-1]):
        h = node_hash(eh, h)
    return h == root


def check_entries_and_proofs(files, manifest, n, root):
    """EF §11 step 5. Returns (records, range or None, number of inclusion proofs)."""
    require("entries.bin" in files, "entries.bin", "missing from the bundle")
    records = decode_entries_bin(files["entries.bin"])
    for index, _ in records:
        require(index < n, "entries.bin", f"entry {index} is not below the checkpoint size {n}")
    require(manifest.get("entries") == len(records), "manifest.json",
            f"entries is {manifest.get('entries')!r} but entries.bin holds {len(records)}")

    mrange = manifest.get("range")
    require(mrange is None or isinstance(mrange, dict), "manifest.json", "range is malformed")
    require((mrange is not None) == ("range.bin" in files), "range.bin",
            "present" if "range.bin" in files else "missing although the manifest has a range")
    rng = None
    if mrange is not None:
        rng = decode_range_bin(files["range.bin"])
        require(mrange.get("start") == rng[0] and mrange.get("end") == rng[1], "manifest.json",
                f"range {mrange!r} differs from range.bin ({rng[0]}..{rng[1]})")

    require("proofs.bin" in files, "proofs.bin", "missing from the bundle")
    proofs = decode_proofs_bin(files["proofs.bin"])

    in_range = (lambda i: rng is not None and rng[0] <= i < rng[1])
    leaves = {index: leaf_hash(entry) for index, entry in records}
    used = 0
    for index, _ in records:
        if in_range(index):
            continue
        require(index in proofs, f"entry {index}", "has no inclusion proof in proofs.bin")
        require(verify_inclusion(leaves[index], index, n, proofs[index], root), f"entry {index}",
                f"its inclusion proof does not lead to the checkpoint root (size {n})")
        used += 1
    carried = set(leaves)
    for index in sorted(proofs):
        require(index in carried and not in_range(index), "proofs.bin",
                f"holds a proof for entry {index}, which is "
                + ("in the range" if in_range(index) else "not carried"))
    if rng is not None:
        start, end, left, right = rng
        # Counted first: the range's end is not yet known to be within the tree, and listing
        # the indices of a range of 2^40 entries would not end.
        present = sum(1 for i in carried if start <= i < end)
        if present != end - start:
            first = next(i for i in range(start, end) if i not in carried)
            raise Failed("completeness",
                         f"entries.bin must hold every entry of the range {start}..{end} the bundle"
                         f" proves; {end - start - present} missing, first {first}")
        require(verify_range(start, [leaves[i] for i in range(start, end)], n, left, right, root),
                "range.bin", f"the range proof of {start}..{end} does not lead to the checkpoint root")
    return records, rng, used


# ---------------------------------------------------------------------------------------------
# Entry bytes (LF §4.1)
# ---------------------------------------------------------------------------------------------

PAYLOAD_TYPE = "application/vnd.docket.event.v1+protobuf"


def decode_entry(data, what):
    """Returns a dict with the entry's fields, or raises Failed."""
    def need(pos, k):
        require(pos + k <= len(data), what, "the entry bytes are truncated")

    def utf8(b, field):
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            raise Failed(what, f"invalid UTF-8 in the {field}")

    need(0, 51)
    version = data[0]
    require(version in (1, 2, 3), what, f"entry format version {version} is not 1, 2 or 3")
    index, time = struct.unpack(">Qq", data[1:17])
    prev = data[17:49]
    pos = 49
    history = None
    basis = None
    if version >= 2:
        need(pos, 8)
        (history,) = struct.unpack(">Q", data[pos:pos + 8])
        pos += 8
    if version == 3:
        need(pos, 4)
        (b_len,) = struct.unpack(">I", data[pos:pos + 4])
        pos += 4
        basis = []
        for _ in range(b_len):
            need(pos, 2)
            (k_len,) = struct.unpack(">H", data[pos:pos + 2])
            pos += 2
            need(pos, k_len + 8)
            key = utf8(data[pos:pos + k_len], "basis key")
            pos += k_len
            (n,) = struct.unpack(">Q", data[pos:pos + 8])
            pos += 8
            require(not basis or basis[-1][0].encode() < key.encode(), what,
                    "the basis keys are not in strictly ascending order")
            basis.append((key, n))
    need(pos, 2)
    (t_len,) = struct.unpack(">H", data[pos:pos + 2])
    pos += 2
    need(pos, t_len + 2)
    transport = utf8(data[pos:pos + t_len], "transport identity")
    pos += t_len
    (p_len,) = struct.unpack(">H", data[pos:pos + 2])
    pos += 2
    need(pos, p_len + 4)
    ptype = utf8(data[pos:pos + p_len], "payload type")
    pos += p_len
    (l_len,) = struct.unpack(">I", data[pos:pos + 4])
    pos += 4
    need(pos, l_len + 1)
    payload = data[pos:pos + l_len]
    pos += l_len
    count = data[pos]
    pos += 1
    require(1 <= count <= 16, what, f"signature count {count} is not 1 to 16")
    sigs = []
    for _ in range(count):
        need(pos, 2)
        (k_len,) = struct.unpack(">H", data[pos:pos + 2])
        pos += 2
        need(pos, k_len + 2)
        keyid = utf8(data[pos:pos + k_len], "keyid")
        pos += k_len
        (g_len,) = struct.unpack(">H", data[pos:pos + 2])
        pos += 2
        need(pos, g_len)
        sigs.append((keyid, data[pos:pos + g_len]))
        pos += g_len
    require(pos == len(data), what, "trailing bytes after the last signature")
    return {"index": index, "time": time, "prev": prev, "history": history, "basis": basis,
            "transport": transport,
            "payload_type": ptype, "payload": payload, "signatures": sigs}


def pae(payload_type, payload):
    """LF §2.1."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


# ---------------------------------------------------------------------------------------------
# The protobuf payload (LF §3). Field numbers: those the doc gives, the others in the order the
# doc lists the fields (confirmed against the sample bundles where they occur).
# ---------------------------------------------------------------------------------------------

# Field spec: number -> (name, type, repeated). Types: "string", "bytes", "varint", "bool",
# "int64", a nested schema name, or "map" (map<string, string>).
SCHEMAS = {
    "Event": {1: ("event_id", "string", False), 2: ("claimed_time", "int64", False),
              3: ("signer", "string", False)},
    "Principal": {1: ("id", "string", False), 2: ("kind", "varint", False),
                  3: ("display_name", "string", False), 4: ("roles", "string", True),
                  5: ("public_keys", "bytes", True), 6: ("emails", "string", True)},
    "Genesis": {1: ("origin", "string", False), 2: ("log_public_key", "bytes", False),
                3: ("administrators", "Principal", True), 4: ("policy", "string", False)},
    "PrincipalRegistered": {1: ("principal", "Principal", False)},
    "KeyRotated": {1: ("principal_id", "string", False), 2: ("new_public_key", "bytes", False),
                   3: ("old_public_key", "bytes", False)},
    "KeyRevoked": {1: ("principal_id", "string", False), 2: ("public_key", "bytes", False),
                   3: ("reason", "string", False)},
    "Annotation": {1: ("subject", "string", False), 2: ("kind", "string", False),
                   3: ("text", "string", False), 4: ("attributes", "map", True)},
    "PrincipalUpdated": {1: ("principal_id", "string", False), 2: ("grant_roles", "string", True),
                         3: ("revoke_roles", "string", True), 4: ("add_emails", "string", True),
                         5: ("remove_emails", "string", True), 6: ("reason", "string", False)},
    "IdentityChangeApproved": {1: ("entry_index", "varint", False)},
    "IdentityChangeWithdrawn": {1: ("entry_index", "varint", False), 2: ("reason", "string", False)},
    "ChangedPaths": {1: ("added", "varint", False), 2: ("modified", "varint", False),
                     3: ("deleted", "varint", False), 4: ("paths", "string", True),
                     5: ("truncated", "bool", False)},
    "CommitSignature": {1: ("format", "varint", False), 2: ("verdict", "varint", False),
                        3: ("signer_identity", "string", False),
                        4: ("key_fingerprint", "string", False), 5: ("detail", "string", False),
                        6: ("signer_key", "bytes", False)},
    "CommitObserved": {1: ("repository", "string", False), 2: ("sha", "string", False),
                       3: ("raw_commit", "bytes", False), 4: ("changed_paths", "ChangedPaths", False),
                       5: ("signature", "CommitSignature", False)},
    "CiRunReported": {1: ("repository", "string", False), 2: ("commit", "string", False),
                      3: ("artifact_digests", "string", True), 4: ("status", "varint", False),
                      5: ("provider", "string", False), 6: ("pipeline", "string", False),
                      7: ("run_id", "string", False), 8: ("url", "string", False),
                      9: ("ref", "string", False)},
    "ChangeOpened": {1: ("change_id", "string", False), 2: ("title", "string", False),
                     3: ("repository", "string", False), 4: ("commits", "string", True),
                     5: ("artifact_digests", "string", True), 6: ("environments", "string", True),
                     7: ("ticket", "string", False), 8: ("description", "string", False)},
    "ChangeAmended": {1: ("change_id", "string", False), 2: ("commits", "string", True),
                      3: ("artifact_digests", "string", True), 4: ("environments", "string", True),
                      5: ("reason", "string", False)},
    "ChangeReviewed": {1: ("change_id", "string", False), 2: ("seen_subjects", "string", True),
                       3: ("verdict", "varint", False), 4: ("comment", "string", False),
                       5: ("revision", "varint", False)},
    "DeployRequested": {1: ("action", "string", False), 2: ("environment", "string", False),
                        3: ("repository", "string", False), 4: ("kind", "string", False),
                        5: ("namespace", "string", False), 6: ("subjects", "string", True),
                        7: ("change_id", "string", False), 8: ("break_glass", "bool", False),
                        9: ("justification", "string", False)},
    "BreakGlassReviewed": {1: ("deployment_index", "varint", False), 2: ("justified", "bool", False),
                           3: ("comment", "string", False)},
    "PolicyProposed": {1: ("proposal_id", "string", False), 2: ("text", "string", False),
                       3: ("base_version", "varint", False), 4: ("description", "string", False)},
    "PolicyApproved": {1: ("proposal_id", "string", False)},
}

# The `body` oneof of docket.v1.Event (LF §3): field number -> (schema, entries.json kind).
BODIES = {
    10: ("Genesis", "genesis"), 11: ("PrincipalRegistered", "principal_registered"),
    12: ("KeyRotated", "key_rotated"), 13: ("KeyRevoked", "key_revoked"),
    14: ("Annotation", "annotation"), 15: ("PrincipalUpdated", "principal_updated"),
    16: ("IdentityChangeApproved", "identity_change_approved"),
    17: ("IdentityChangeWithdrawn", "identity_change_withdrawn"),
    20: ("CommitObserved", "commit_observed"), 21: ("CiRunReported", "ci_run_reported"),
    22: ("ChangeOpened", "change_opened"), 23: ("ChangeAmended", "change_amended"),
    24: ("ChangeReviewed", "change_reviewed"), 25: ("DeployRequested", "deploy_requested"),
    26: ("BreakGlassReviewed", "break_glass_reviewed"), 27: ("PolicyProposed", "policy_proposed"),
    28: ("PolicyApproved", "policy_approved"),
}


class ProtoError(Exception):
    pass


def _read_varint(buf, pos):
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ProtoError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return result & ((1 << 64) - 1), pos
        if shift >= 70:
            raise ProtoError("varint too long")


def _iter_fields(buf):
    """Yields (field number, wire type, value) with proto3 binary rules."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        num, wt = key >> 3, key & 7
        if num == 0:
            raise ProtoError("field number 0")
        if wt == 0:
            val, pos = _read_varint(buf, pos)
        elif wt == 1:
            if pos + 8 > len(buf):
                raise ProtoError("truncated fixed64")
            val, pos = buf[pos:pos + 8], pos + 8
        elif wt == 2:
            ln, pos = _read_varint(buf, pos)
            if pos + ln > len(buf):
                raise ProtoError("truncated length-delimited field")
            val, pos = buf[pos:pos + ln], pos + ln
        elif wt == 5:
            if pos + 4 > len(buf):
                raise ProtoError("truncated fixed32")
            val, pos = buf[pos:pos + 4], pos + 4
        elif wt == 3:                                  # a group: skip to its end marker
            depth = 1
            while depth:
                k2, pos = _read_varint(buf, pos)
                w2 = k2 & 7
                if w2 == 3:
                    depth += 1
                elif w2 == 4:
                    depth -= 1
                elif w2 == 0:
                    _, pos = _read_varint(buf, pos)
                elif w2 == 1:
                    pos += 8
                elif w2 == 5:
                    pos += 4
                elif w2 == 2:
                    ln, pos = _read_varint(buf, pos)
                    pos += ln
                if pos > len(buf):
                    raise ProtoError("truncated group")
            val = None
        else:
            raise ProtoError(f"invalid wire type {wt}")
        yield num, wt, val


def _default(ftype, repeated):
    if repeated:
        return {} if ftype == "map" else []
    return {"string": "", "bytes": b"", "varint": 0, "bool": False, "int64": 0}.get(ftype)


def decode_message(buf, schema_name, into=None):
    """Decode `buf` as the message `schema_name`; merge into `into` (proto3 merge semantics)."""
    schema = SCHEMAS[schema_name]
    msg = into if into is not None else {n: _default(t, r) for n, t, r in schema.values()}
    for num, wt, val in _iter_fields(buf):
        if num not in schema:
            continue                                   # unknown fields are skipped
        name, ftype, repeated = schema[num]
        if ftype in ("varint", "bool", "int64"):
            if wt != 0:
                raise ProtoError(f"{schema_name}.{name}: wrong wire type")
            if ftype == "bool":
                val = val != 0
            elif ftype == "int64" and val >= 1 << 63:
                val -= 1 << 64
            msg[name] = val
            continue
        if wt != 2:
            raise ProtoError(f"{schema_name}.{name}: wrong wire type")
        if ftype == "string":
            try:
                val = val.decode("utf-8")
            except UnicodeDecodeError:
                raise ProtoError(f"{schema_name}.{name}: invalid UTF-8")
        elif ftype == "bytes":
            val = bytes(val)
        elif ftype == "map":
            k, v = "", ""
            for n2, w2, v2 in _iter_fields(val):
                if n2 in (1, 2):
                    if w2 != 2:
                        raise ProtoError(f"{schema_name}.{name}: wrong wire type")
                    try:
                        s = v2.decode("utf-8")
                    except UnicodeDecodeError:
                        raise ProtoError(f"{schema_name}.{name}: invalid UTF-8")
                    if n2 == 1:
                        k = s
                    else:
                        v = s
            msg[name][k] = v
            continue
        else:                                           # nested message
            if repeated:
                val = decode_message(val, ftype)
            else:
                val = decode_message(val, ftype, msg[name])   # singular messages merge
        if repeated:
            msg[name].append(val)
        else:
            msg[name] = val
    return msg


def decode_event(payload):
    """docket.v1.Event with its `body` oneof: the last body member wins, the same one merges."""
    event = decode_message(payload, "Event")
    body_num, body = None, None
    for num, wt, val in _iter_fields(payload):
        if num in BODIES:
            if wt != 2:
                raise ProtoError("body: wrong wire type")
            schema = BODIES[num][0]
            body = decode_message(val, schema, body if num == body_num else None)
            body_num = num
    if body_num is None:
        raise ProtoError("the event has no body")
    event["body_num"] = body_num
    event["body_type"], event["kind"] = BODIES[body_num]
    event["body"] = body
    return event


# ---------------------------------------------------------------------------------------------
# Value kinds (LF §3) and git commit objects (LF §3.1)
# ---------------------------------------------------------------------------------------------

RE_PRINCIPAL = re.compile(r"[a-z0-9][a-z0-9._@-]{0,127}")
RE_RECORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
RE_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
RE_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def is_subject(s):
    return RE_SHA.fullmatch(s) is not None or RE_DIGEST.fullmatch(s) is not None


# Rust's `str::trim` strips Unicode White_Space, which is not quite Python's `str.isspace`.
RUST_WHITESPACE = ("\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
                   "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")


def ascii_lower(text):
    """Lowercases A-Z only, as Rust's `to_ascii_lowercase` does (str.lower maps more)."""
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in text)


def parse_commit(raw, sha, what):
    """LF §3.1: object id, headers, author/committer e-mails, summary, signature header."""
    algo = hashlib.sha1 if len(sha) == 40 else hashlib.sha256
    oid = algo(b"commit %d\x00" % len(raw) + raw).hexdigest()
    require(oid == sha, what, f"raw_commit hashes to {oid}, not {sha}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Failed(what, "raw_commit is not UTF-8")
    head, sep, message = text.partition("\n\n")
    headers = []
    for line in head.split("\n"):
        if line.startswith(" ") and headers:
            headers[-1][1] += "\n" + line[1:]
        else:
            key, _, value = line.partition(" ")
            headers.append([key, value])
    counts = {}
    for key, _ in headers:
        counts[key] = counts.get(key, 0) + 1
    require(counts.get("tree") == 1, what, "the commit must have exactly one tree header")
    require(counts.get("author") == 1 and counts.get("committer") == 1, what,
            "the commit must have exactly one author and one committer")
    info = {"signed": False}
    for key, value in headers:
        if key in ("tree", "parent"):
            require(RE_SHA.fullmatch(value) is not None, what, f"bad {key} id {value!r}")
        elif key in ("author", "committer"):
            lt, gt = value.find("<"), value.find(">", value.find("<") + 1)
            require(lt >= 0 and gt > lt, what, f"bad {key} header")
            # The time follows the last '>' (as git reads it); when nothing readable follows
            # it, the words after the e-mail's own '>' (as older logs were read).
            rest = value[value.rfind(">") + 1:].split()
            if not (rest and rest[0].isdigit()):
                rest = value[gt + 1:].split()
            require(len(rest) in (1, 2) and rest[0].isdigit(), what, f"bad {key} time")
            info[key] = ascii_lower(value[lt + 1:gt].strip(RUST_WHITESPACE))
        elif key in ("gpgsig", "gpgsig-sha256"):
            info["signed"] = True
    first_line = message.split("\n", 1)[0] if sep else ""
    summary = first_line.encode("utf-8")[:256].decode("utf-8", "ignore")
    info["summary"] = summary
    return info


# ---------------------------------------------------------------------------------------------
# Policies: only what the ledger rules need (permissions, policy_changes, break-glass deadline)
# ---------------------------------------------------------------------------------------------

DEFAULT_POLICY = (
    "# Docket built-in default policy (genesis named none).\n"
    "# Every permission belongs to the admin role; a policy change needs two\n"
    "# admins other than the proposer; nothing is authorized until a policy says how.\n"
    "version = 1\n"
    "\n"
    "[defaults]\n"
    "unmatched = \"deny\"\n"
)

PERMISSIONS = ("register_principals", "change_roles", "propose_policy", "approve_policy",
               "open_change", "approve", "break_glass", "report")


class Policy:
    """The parts of a policy document the fold needs (LF §8.2, §8.4, §8.5; policy.md)."""

    def __init__(self, text, what):
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise Failed(what, f"the policy does not parse as TOML: {exc}")
        require(doc.get("version") == 1, what, "the policy's version is not 1")
        perms = doc.get("permissions", {})
        require(isinstance(perms, dict), what, "[permissions] is not a table")
        self.permissions = {}
        for p in PERMISSIONS:
            roles = perms.get(p, ["admin"])
            require(isinstance(roles, list) and all(isinstance(r, str) for r in roles), what,
                    f"permissions.{p} is not a list of roles")
            self.permissions[p] = set(roles)
        pc = doc.get("policy_changes", {})
        self.pc_approvals = pc.get("approvals", 2)
        self.pc_roles = set(pc.get("roles", sorted(self.permissions["approve_policy"])))
        try:
            self.break_glass_review = parse_duration_ns(
                doc.get("defaults", {}).get("break_glass_review", "24h"))
            # How long a waiting policy proposal or identity change may wait (policy.md,
            # "Policy changes" and "Identity changes"); None: for ever.
            expire = pc.get("expire_after")
            self.pc_expire = None if expire is None else parse_duration_ns(expire)
            expire = doc.get("identity_changes", {}).get("expire_after")
            self.identity_expire = None if expire is None else parse_duration_ns(expire)
        except ValueError as exc:
            raise Failed(what, str(exc))
        self.text = text
        self.digest = H(text.encode("utf-8")).hex()


# ---------------------------------------------------------------------------------------------
# 6. The sparse fold (EF §9, LF §8)
# ---------------------------------------------------------------------------------------------

KIND_NAMES = {1: "human", 2: "service", 3: "ci", 4: "cluster"}
CI_STATUS = {1: "passed", 2: "failed", 3: "canceled"}
SIG_VERDICT = {1: "unsigned", 2: "verified", 3: "bad", 4: "untrusted-key", 5: "unverifiable"}
REVIEW_VERDICT = {1: "approve", 2: "reject"}
# Identity changes: one signed about another principal waits for a second identity administrator
# while one exists (LF §8.2); IdentityChangeApproved applies it.
IDENTITY_CHANGES = ("PrincipalRegistered", "KeyRotated", "KeyRevoked", "PrincipalUpdated")
# The kinds a version-2 entry's history count counts (LF §4.3).
HISTORY_KINDS = ("Genesis",) + IDENTITY_CHANGES + ("PolicyProposed", "PolicyApproved",
                                                   "IdentityChangeApproved",
                                                   "IdentityChangeWithdrawn")


class Fold:
    """The state folded from the carried entries (identity and governance parts)."""

    def __init__(self, claimed_decisions):
        # claimed_decisions(): the bundle's facts/decisions.json by index; only consulted for the
        # verdict of a break-glass deployment that a BreakGlassReviewed entry names (the verifier
        # does not re-evaluate decisions).
        self.claimed_decisions = claimed_decisions
        self.principals = {}
        self.email_owner = {}
        self.all_keys = set()
        self.versions = []          # policy versions, oldest first
        self.proposals = {}
        self.changes = {}           # each with "concerning": the entries concerning it (LF §6.5)
        self.subject_entries = {}   # subject -> the carried entries concerning it (LF §6.6)
        self.commits = {}
        self.ci_runs = []
        self.recorded_repos = {}    # subject -> repositories its commit observation and CI runs name
        self.deployments = {}
        self.bg_reviews = {}        # deployment index -> review
        self.pending = {}           # entry index -> an identity change that waited for approval
        self.event_ids = set()
        self.records = []           # per carried entry: what the derived files need
        self.next_index = 0
        self.history = 0                # carried identity and policy entries so far
        self.counted_since = None       # the first carried version-2 entry
        self.proven_to = None           # the last carried version-2 entry
        self.based_since = None         # the first carried version-3 entry
        self.decisions_based = 0        # carried deployments whose basis was found complete
        self.origin = None
        self.log_key = None
        self.signatures = 0

    # -- helpers -------------------------------------------------------------------------------

    @property
    def policy(self):
        return self.versions[-1]["policy"]

    def holds(self, pid, permission, policy=None):
        policy = policy or self.policy
        p = self.principals.get(pid)
        return p is not None and bool(p["roles"] & policy.permissions[permission])

    def active_keys(self, pid):
        p = self.principals.get(pid)
        return [k["key"] for k in p["keys"] if k["revoked_at"] is None] if p else []

    def lockout_check(self, what, action, policy=None, roles=None, revoked=None):
        """LF §8.2 lock-out protection. `roles` ({principal: roles}) and `revoked` ((principal,
        key)) describe a change not made yet: the check is of the state it would leave."""
        policy = policy or self.policy
        roles = roles or {}
        for perm in ("register_principals", "change_roles"):
            ok = any([k for k in self.active_keys(pid) if (pid, k) != revoked]
                     and roles.get(pid, self.principals[pid]["roles"]) & policy.permissions[perm]
                     for pid in self.principals)
            require(ok, what, f"{action} would leave no principal with an active key holding `{perm}`")

    def need_perm(self, what, signer, perm, action):
        require(self.holds(signer, perm), what,
                f"{signer!r} may not {action}: policy version {len(self.versions)} gives "
                f"`{perm}` to role(s) {', '.join(sorted(self.policy.permissions[perm]))}")

    def check_principal_msg(self, what, pr):
        require(RE_PRINCIPAL.fullmatch(pr["id"]) is not None, what,
                f"invalid principal id {pr['id']!r}")
        require(pr["kind"] in KIND_NAMES, what, f"principal {pr['id']}: invalid kind {pr['kind']}")
        require(len(pr["public_keys"]) >= 1, what, f"principal {pr['id']} has no key")
        seen = set()
        for key in pr["public_keys"]:
            require(len(key) == 32 and valid_public_key(key), what,
                    f"principal {pr['id']}: a key is not a valid non-small-order Ed25519 point")
            require(key not in seen, what, f"principal {pr['id']}: a key is listed twice")
            require(key not in self.all_keys, what,
                    f"principal {pr['id']}: key {key.hex()} was registered before")
            seen.add(key)
        for e in pr["emails"]:
            require(e not in self.email_owner, what,
                    f"e-mail {e} already identifies {self.email_owner.get(e)}")

    def register(self, pr, index, extra_roles=()):
        self.principals[pr["id"]] = {
            "id": pr["id"], "kind": pr["kind"], "display_name": pr["display_name"],
            "roles": set(pr["roles"]) | set(extra_roles), "emails": set(pr["emails"]),
            "keys": [{"key": k, "added_at": index, "revoked_at": None}
                     for k in dict.fromkeys(pr["public_keys"])],
            "registered_at": index}
        for k in pr["public_keys"]:
            self.all_keys.add(k)
        for e in pr["emails"]:
            self.email_owner[e] = pr["id"]

    def check_basis(self, what, recorded, b, subjects, change):
        """LF §4.4: the changes and subjects the decision reads, each with the number of carried
        entries before this one that concern it, must be what the entry records."""
        changes = {cid for cid, ch in self.changes.items()
                   if any(s in self.subjects_of(r) for r in ch["revisions"] for s in subjects)}
        if b["change_id"]:
            changes.add(b["change_id"])
        reads = set(subjects)
        if change:
            changes.add(change)
            cur = self.changes[change]["revisions"][-1]
            reads |= self.subjects_of(cur)
            for r in self.ci_runs:
                if r["commit"] and any(d in r["digests"] for d in cur["digests"]):
                    reads.add(r["commit"])

        def change_count(cid):
            ch = self.changes.get(cid)
            return len(ch["revisions"]) + len(ch["reviews"]) if ch else 0

        def subject_count(s):
            n = int(s in self.commits)
            n += sum(1 for r in self.ci_runs if r["commit"] == s or s in r["digests"])
            n += sum(1 for ch in self.changes.values() for r in ch["revisions"]
                     if s in self.subjects_of(r))
            n += sum(1 for d in self.deployments.values() if s in d["subjects"])
            return n

        folded = {f"change:{c}": change_count(c) for c in changes}
        folded.update({f"subject:{s}": subject_count(s) for s in reads})
        rec = dict(recorded)
        for key in sorted(set(folded) | set(rec), key=str.encode):
            r, c = rec.get(key), folded.get(key)
            if r is not None and c is not None and r > c:
                raise Failed(what, f"decision basis: the deployment was decided on {r} entries"
                                   f" concerning {key} before it; the bundle carries {c}")
            require(r == c, what, f"decision basis: for {key} the entry records {r} entries"
                                  f" before it, the bundle's facts give {c}")

    def subjects_of(self, rev):
        return rev["commits"] | rev["digests"]

    def concern_subjects(self, index, subjects):
        """LF §6.6 (the `subject:` keys of LF §4.4): the entry at `index` concerns each of
        `subjects`, at most once each. Called in index order, so every list stays increasing."""
        for s in set(subjects):
            self.subject_entries.setdefault(s, []).append(index)

    def proven_subjects(self, cid):
        """EF §6.7, §11 step 7.2: every commit and artifact digest any revision of change `cid`
        bound, and the commit of every carried CI run that reports one of those artifact
        digests."""
        revs = self.changes[cid]["revisions"]
        digests = set().union(*(r["digests"] for r in revs))
        out = set().union(*(self.subjects_of(r) for r in revs))
        out |= {r["commit"] for r in self.ci_runs if digests & set(r["digests"])}
        return out

    def is_identity_admin(self, pid):
        """A human principal whose roles give `register_principals` or `change_roles`, whatever
        its keys: one who may approve another's identity change (LF §8.2.1)."""
        p = self.principals.get(pid)
        return (p is not None and p["kind"] == 1
                and (self.holds(pid, "register_principals") or self.holds(pid, "change_roles")))

    @staticmethod
    def identity_change_open(what, e, pend):
        """An identity change that was applied or withdrawn can be neither again (LF §8.2.1)."""
        if pend["applied"] is not None:
            at, by = pend["applied"]
            raise Failed(what, f"the identity change at entry {e} already took effect at entry"
                         f" {at}, approved by {by!r}")
        if pend["withdrawn"] is not None:
            at, by = pend["withdrawn"]
            raise Failed(what, f"the identity change at entry {e} was withdrawn at entry {at}"
                         f" by {by!r}")

    def identity_subject(self, signer, kind, b):
        """The principal an identity body signed by `signer` is about, when it is about someone
        other than the signer (or is any role or e-mail update); None for a principal rotating or
        revoking its own key, which applies at once."""
        if kind == "PrincipalRegistered":
            return b["principal"]["id"] if b["principal"] is not None else None
        if kind in ("KeyRotated", "KeyRevoked"):
            return b["principal_id"] if b["principal_id"] != signer else None
        return b["principal_id"]                          # PrincipalUpdated

    def identity(self, index, what, signer, kind, b, commit):
        """Checks the identity body `b` signed by `signer` and, when `commit`, applies it as entry
        `index`. Without `commit` nothing changes: the check of a change that waits for a second
        identity administrator."""
        if kind == "PrincipalRegistered":
            pr = b["principal"]
            require(pr is not None, what, "no principal")
            self.need_perm(what, signer, "register_principals", "register principals")
            if pr["roles"]:
                self.need_perm(what, signer, "change_roles", "grant roles")
            require(pr["id"] not in self.principals, what, f"principal {pr['id']} already exists")
            self.check_principal_msg(what, pr)
            if commit:
                self.register(pr, index)
        elif kind == "KeyRotated":
            pid = b["principal_id"]
            require(signer == pid or self.holds(signer, "register_principals"), what,
                    f"{signer!r} may not rotate {pid!r}'s key")
            require(pid in self.principals, what, f"principal {pid} does not exist")
            nk = b["new_public_key"]
            require(len(nk) == 32 and valid_public_key(nk), what, "invalid new_public_key")
            require(nk not in self.all_keys, what, "new_public_key was registered before")
            require(len(self.principals[pid]["keys"]) < 1024, what,
                    "the principal already has 1024 keys, revoked ones included")
            if b["old_public_key"]:
                require(b["old_public_key"] in self.active_keys(pid), what,
                        "old_public_key is not an active key of the principal")
            if not commit:
                return                                    # a rotation adds a key: no lock-out
            if b["old_public_key"]:
                for k in self.principals[pid]["keys"]:
                    if k["key"] == b["old_public_key"]:
                        k["revoked_at"] = index
            self.principals[pid]["keys"].append({"key": nk, "added_at": index, "revoked_at": None})
            self.all_keys.add(nk)
            self.lockout_check(what, "this rotation")
        elif kind == "KeyRevoked":
            pid = b["principal_id"]
            require(signer == pid or self.holds(signer, "register_principals"), what,
                    f"{signer!r} may not revoke {pid!r}'s key")
            require(pid in self.principals, what, f"principal {pid} does not exist")
            require(b["public_key"] in self.active_keys(pid), what,
                    "the key is not an active key of the principal")
            self.lockout_check(what, "revoking this key", revoked=(pid, b["public_key"]))
            if not commit:
                return
            for k in self.principals[pid]["keys"]:
                if k["key"] == b["public_key"]:
                    k["revoked_at"] = index
        elif kind == "PrincipalUpdated":
            pid = b["principal_id"]
            grant, revoke = set(b["grant_roles"]), set(b["revoke_roles"])
            add, remove = set(b["add_emails"]), set(b["remove_emails"])
            require(grant or revoke or add or remove, what, "the update changes nothing")
            require(not grant & revoke and not add & remove, what,
                    "a role or e-mail is both added and removed")
            if grant or revoke:
                self.need_perm(what, signer, "change_roles", "change roles")
                require(signer != pid, what, "no one may change their own roles")
            if add or remove:
                self.need_perm(what, signer, "register_principals", "change e-mails")
            require(pid in self.principals, what, f"principal {pid} does not exist")
            p = self.principals[pid]
            require(not grant & p["roles"], what, "a granted role is already held")
            require(revoke <= p["roles"], what, "a revoked role is not held")
            require(remove <= p["emails"], what, "a removed e-mail is not the principal's")
            require(not any(e in self.email_owner for e in add), what,
                    "an added e-mail already identifies a principal")
            new_roles = (p["roles"] | grant) - revoke
            require(len(new_roles) <= 1024 and len((p["emails"] | add) - remove) <= 1024, what,
                    "the principal would hold more than 1024 roles or e-mails")
            if grant or revoke:
                self.lockout_check(what, "this role change", roles={pid: new_roles})
            if not commit:
                return
            p["roles"] = new_roles
            p["emails"] = (p["emails"] | add) - remove
            for e in remove:
                self.email_owner.pop(e, None)
            for e in add:
                self.email_owner[e] = pid
        else:  # pragma: no cover
            raise Failed(what, f"{kind} is not an identity change")

    # -- folding one entry (EF §9 steps 1-7) -------------------------------------------------

    def fold_entry(self, index, entry_bytes):
        what = f"entry {index}"
        if not self.records:
            require(index == 0, "entries.bin", f"the first carried entry is {index}, not entry 0"
                    " (the genesis, the bundle's trust root)")
        require(index >= self.next_index, what, "out of order")
        entry = decode_entry(entry_bytes, what)
        require(entry["index"] == index, what,
                f"the entry's own index {entry['index']} differs from its record's")
        require(entry["payload_type"] == PAYLOAD_TYPE, what,
                f"payload type {entry['payload_type']!r} is not the Docket type")
        try:
            event = decode_event(entry["payload"])
        except ProtoError as exc:
            raise Failed(what, f"the payload does not decode as docket.v1.Event: {exc}")
        require(1 <= len(event["event_id"].encode()) <= 256
                and not any(ord(c) < 32 or ord(c) == 127 for c in event["event_id"]), what,
                f"invalid event id {event['event_id']!r}")
        require(event["claimed_time"] > 0, what, "claimed time is not positive")
        require(RE_PRINCIPAL.fullmatch(event["signer"]) is not None, what,
                f"invalid signer id {event['signer']!r}")
        require(event["event_id"] not in self.event_ids, what,
                f"event id {event['event_id']!r} appears twice")
        if index == 0:
            require(entry["prev"] == bytes(32), what, "entry 0's prev_leaf_hash is not zero")
        # Step 4: a version-2 entry counts the identity and policy entries up to it; the
        # bundle must carry that many (the ones it carries are a subset of the log's).
        if event["body_type"] in HISTORY_KINDS:
            self.history += 1
        if entry["history"] is None:
            require(self.counted_since is None, what,
                    f"entry format version 1 after version-2 entry {self.counted_since}")
        else:
            require(entry["history"] == self.history, what,
                    f"it counts {entry['history']} identity and policy entries up to it; the bundle"
                    f" carries {self.history}")
            if self.counted_since is None:
                self.counted_since = index
            self.proven_to = index
        # A version-3 entry records its decision basis (LF §4.4), checked where a deployment is
        # applied; any other entry's is empty. No earlier version follows version 3.
        if entry["basis"] is None:
            require(self.based_since is None, what,
                    f"entry format version 1 or 2 after version-3 entry {self.based_since}")
        else:
            if self.based_since is None:
                self.based_since = index
            require(event["body_type"] == "DeployRequested" or entry["basis"] == [], what,
                    "only a deployment request has a decision basis")

        # Step 5: the signer's keys just before this entry.
        signer = event["signer"]
        if index == 0:
            require(event["body_type"] == "Genesis", what, "entry 0 is not a genesis")
            keys = [k for a in event["body"]["administrators"] if a["id"] == signer
                    for k in a["public_keys"]]
            require(keys, what, f"the genesis signer {signer!r} is not one of its administrators")
        else:
            require(signer in self.principals, what, f"unknown signer {signer!r}")
            keys = self.active_keys(signer)
            require(keys, what, f"signer {signer!r} has no active key (all revoked)")

        # Step 6: at least one signature verifies with one of those keys, over the DSSE PAE. The
        # key that verified first (signatures in order, the keyid hint's key first) is the one
        # the entry was signed with: a review or policy approval keeps it (LF §8.5).
        message = pae(entry["payload_type"], entry["payload"])
        hint = {blake3.blake3(k).digest()[:8].hex(): k for k in keys}
        signed_with = None
        for keyid, sig in entry["signatures"]:
            order = ([hint[keyid]] if keyid in hint else []) + keys
            signed_with = next((k for k in order if verify_strict(k, message, sig)), None)
            if signed_with is not None:
                break
        require(signed_with is not None, what, f"no signature verifies with an active key of {signer!r}")
        self.signatures += 1

        # Step 7: apply the event under the rules.
        self.apply(index, entry, event, what, signed_with)

        self.event_ids.add(event["event_id"])
        self.next_index = index + 1
        self.records.append({"index": index, "time": entry["time"], "event": event,
                             "leaf": leaf_hash(entry_bytes), "prev": entry["prev"],
                             "transport": entry["transport"], "kind": event["kind"]})

    def key_revoked(self, pid, key):
        """Whether `key` of `pid` was revoked or rotated away (LF §8.5: what it signed no longer
        counts from then on)."""
        p = self.principals.get(pid)
        return p is not None and any(k["key"] == key and k["revoked_at"] is not None
                                     for k in p["keys"])

    def apply(self, index, entry, event, what, signed_with):
        """LF §8.2-§8.5, without the policy evaluator."""
        b, signer, t = event["body"], event["signer"], entry["time"]
        kind = event["body_type"]
        if kind != "Genesis":
            require(index != 0, what, "entry 0 is not a genesis")
        if kind == "Genesis":
            require(index == 0, what, "only entry 0 may carry a genesis")
            require(b["origin"] and not re.search(r"[\s\x00-\x1f\x7f]", b["origin"]), what,
                    "invalid origin")
            require(len(b["log_public_key"]) == 32 and valid_public_key(b["log_public_key"]), what,
                    "log_public_key is not a valid Ed25519 point")
            require(b["administrators"], what, "the genesis names no administrator")
            ids = [a["id"] for a in b["administrators"]]
            require(len(set(ids)) == len(ids), what, "an administrator is listed twice")
            require(signer in ids, what, "the genesis signer is not an administrator")
            for a in b["administrators"]:
                self.check_principal_msg(what, a)
                self.register(a, 0, extra_roles=("admin",))
            self.origin, self.log_key = b["origin"], b["log_public_key"]
            text = b["policy"] or DEFAULT_POLICY
            self.versions.append({"version": 1, "policy": Policy(text, what), "activated_at": 0,
                                  "proposal": None})
            self.lockout_check(what, "the genesis policy")
        elif kind in IDENTITY_CHANGES:
            subject = self.identity_subject(signer, kind, b)
            if subject is not None and any(pid != signer and self.is_identity_admin(pid)
                                           for pid in self.principals):
                # Another identity administrator exists: checked, recorded, without effect.
                self.identity(index, what, signer, kind, b, commit=False)
                self.pending[index] = {"proposer": signer, "subject": subject, "kind": kind,
                                       "body": b, "applied": None, "withdrawn": None, "time": t,
                                       "expired": False}
            else:
                self.identity(index, what, signer, kind, b, commit=True)
        elif kind == "IdentityChangeApproved":
            e = b["entry_index"]
            require(e != 0, what, "identity_change_approved.entry_index: entry 0 is the genesis,"
                    " which waits for no approval")
            pend = self.pending.get(e)
            require(pend is not None, what,
                    f"entry {e} did not record an identity change that waits for approval")
            self.identity_change_open(what, e, pend)
            # Expired under a policy it outlived, or under the policy in force now, to the
            # nanosecond (LF §8.2.1).
            limit = self.policy.identity_expire
            require(not pend["expired"] and (limit is None or t - pend["time"] <= limit), what,
                    f"the identity change at entry {e} expired before this approval"
                    " ([identity_changes] expire_after)")
            require(signer != pend["proposer"], what,
                    f"the identity change at entry {e} needs the approval of an identity"
                    " administrator other than the one who signed it")
            require(self.is_identity_admin(signer), what,
                    f"{signer!r} may not approve identity changes: only a human principal whose"
                    " roles give `register_principals`"
                    f" ({', '.join(sorted(self.policy.permissions['register_principals']))}) or"
                    " `change_roles`"
                    f" ({', '.join(sorted(self.policy.permissions['change_roles']))}) may")
            # A key the signer held when it signed, revoked since: no longer vouched for.
            for k in self.principals[pend["proposer"]]["keys"]:
                require(not (k["added_at"] < e and k["revoked_at"] is not None
                             and k["revoked_at"] >= e), what,
                        f"the identity change at entry {e} can no longer take effect:"
                        f" {pend['proposer']!r}'s key, active when it signed, was revoked at entry"
                        f" {k['revoked_at']}")
            # Applied now, as this entry, re-checked as signed by its proposer.
            try:
                self.identity(index, what, pend["proposer"], pend["kind"], pend["body"], commit=True)
            except Failed as exc:
                raise Failed(what, f"the identity change at entry {e} can no longer take effect:"
                             f" {exc.why}")
            pend["applied"] = (index, signer)
        elif kind == "IdentityChangeWithdrawn":
            e = b["entry_index"]
            require(e != 0, what, "identity_change_withdrawn.entry_index: entry 0 is the genesis,"
                    " which waits for no approval")
            reason = b["reason"]
            require(len(reason.encode()) <= 1024, what,
                    f"identity_change_withdrawn.reason: is {len(reason.encode())} bytes;"
                    " at most 1024 allowed")
            require(not any(unicodedata.category(c) == "Cc" and c not in "\n\t" for c in reason),
                    what, "identity_change_withdrawn.reason: contains control characters")
            pend = self.pending.get(e)
            require(pend is not None, what,
                    f"entry {e} did not record an identity change that waits for approval")
            self.identity_change_open(what, e, pend)
            # Only its proposer: another administrator who disagrees just does not approve.
            require(signer == pend["proposer"], what,
                    f"\"{signer}\" may not withdraw this identity change: only its proposer"
                    f" (\"{pend['proposer']}\") may withdraw the change recorded at entry {e}")
            pend["withdrawn"] = (index, signer)
        elif kind == "Annotation":
            pass
        elif kind == "CommitObserved":
            self.need_perm(what, signer, "report", "report commits")
            require(RE_SHA.fullmatch(b["sha"]) is not None, what, "invalid sha")
            require(b["sha"] not in self.commits, what,
                    f"commit {b['sha']} was already observed at entry "
                    f"{self.commits.get(b['sha'], {}).get('index')}")
            sig = b["signature"]
            require(sig is not None and sig["format"] in range(1, 6) and sig["verdict"] in SIG_VERDICT,
                    what, "missing or invalid commit signature block")
            info = parse_commit(b["raw_commit"], b["sha"], what)
            if info["signed"]:
                require(sig["verdict"] != 1 and sig["format"] != 1, what,
                        "the commit carries a signature but the verdict says unsigned")
            else:
                require(sig["verdict"] == 1 and sig["format"] == 1, what,
                        "the commit carries no signature but the verdict says otherwise")
            if b["repository"]:
                self.recorded_repos.setdefault(b["sha"], set()).add(b["repository"])
            self.commits[b["sha"]] = {"index": index, "author": info["author"],
                                      "committer": info["committer"], "summary": info["summary"],
                                      "signature": SIG_VERDICT[sig["verdict"]],
                                      "signer": sig["signer_identity"]}
            self.concern_subjects(index, [b["sha"]])                        # LF §4.4, §6.6
        elif kind == "CiRunReported":
            self.need_perm(what, signer, "report", "report CI runs")
            require(b["status"] in CI_STATUS, what, "invalid CI status")
            require(RE_SHA.fullmatch(b["commit"]) is not None, what, "invalid commit")
            if b["repository"]:
                for subject in {b["commit"]} | set(b["artifact_digests"]):
                    self.recorded_repos.setdefault(subject, set()).add(b["repository"])
            self.ci_runs.append({"index": index, "builder": signer, "commit": b["commit"],
                                 "digests": sorted(set(b["artifact_digests"])),
                                 "pipeline": b["pipeline"], "provider": b["provider"],
                                 "run_id": b["run_id"], "status": CI_STATUS[b["status"]],
                                 "url": b["url"]})
            # LF §4.4, §6.6: its commit and each artifact digest, once each.
            self.concern_subjects(index, [b["commit"]] + list(b["artifact_digests"]))
        elif kind == "ChangeOpened":
            self.need_perm(what, signer, "open_change", "open changes")
            cid = b["change_id"]
            require(RE_RECORD.fullmatch(cid) is not None, what, "invalid change id")
            require(cid not in self.changes, what, f"change {cid} is already in use")
            require(b["commits"] or b["artifact_digests"], what, "no commit or digest")
            require(b["environments"], what, "no environment")
            require(all(is_subject(s) for s in b["commits"] + b["artifact_digests"]), what,
                    "invalid subject")
            # "concerning": the indices of the entries concerning the change (LF §6.5), in log
            # order (the fold applies entries in increasing index order): its opening, each
            # amendment and review, each deployment whose decision considered it, and each
            # break-glass review of such a deployment. Its change head is computed from them.
            self.changes[cid] = {
                "id": cid, "title": b["title"], "repository": b["repository"], "ticket": b["ticket"],
                "requesters": [signer], "reviews": [], "deployments": [], "concerning": [index],
                "revisions": [{"by": signer, "commits": set(b["commits"]),
                               "digests": set(b["artifact_digests"]),
                               "environments": set(b["environments"]), "index": index,
                               "reason": "", "time": t}]}
            # LF §4.4, §6.6: each commit and digest of the revision it records.
            self.concern_subjects(index, self.subjects_of(self.changes[cid]["revisions"][0]))
        elif kind == "ChangeAmended":
            cid = b["change_id"]
            require(cid in self.changes, what, f"change {cid} does not exist")
            ch = self.changes[cid]
            require(signer in ch["requesters"] or self.holds(signer, "open_change"), what,
                    f"{signer!r} may not amend change {cid}")
            require(b["commits"] or b["artifact_digests"], what, "no commit or digest")
            cur = ch["revisions"][-1]
            rev = {"by": signer, "commits": set(b["commits"]), "digests": set(b["artifact_digests"]),
                   "environments": set(b["environments"]) or set(cur["environments"]),
                   "index": index, "reason": b["reason"], "time": t}
            require((rev["commits"], rev["digests"], rev["environments"])
                    != (cur["commits"], cur["digests"], cur["environments"]), what,
                    "the amendment changes nothing")
            ch["revisions"].append(rev)
            ch["concerning"].append(index)                # LF §6.5
            self.concern_subjects(index, self.subjects_of(rev))            # LF §4.4, §6.6
            if signer not in ch["requesters"]:
                ch["requesters"].append(signer)
        elif kind == "ChangeReviewed":
            self.need_perm(what, signer, "approve", "review changes")
            cid = b["change_id"]
            require(cid in self.changes, what, f"change {cid} does not exist")
            ch = self.changes[cid]
            seen = set(b["seen_subjects"])
            if b["revision"]:
                # LF §8.2: a review that names its revision must be of the current one.
                require(b["revision"] == len(ch["revisions"]), what,
                        f"the review is of revision {b['revision']}, but the change is at revision"
                        f" {len(ch['revisions'])}")
                require(seen == self.subjects_of(ch["revisions"][-1]), what,
                        "seen_subjects are not those of the revision the review names")
            require(any(seen == self.subjects_of(r) for r in ch["revisions"]), what,
                    "seen_subjects are not the subjects of any revision of the change")
            require(b["verdict"] in REVIEW_VERDICT, what, "invalid review verdict")
            ch["reviews"].append({"index": index, "reviewer": signer, "seen": seen,
                                  "verdict": REVIEW_VERDICT[b["verdict"]], "comment": b["comment"],
                                  "time": t})
            ch["concerning"].append(index)                # LF §6.5: approval or rejection
        elif kind == "DeployRequested":
            subjects = set(b["subjects"])
            require(subjects and all(is_subject(s) for s in subjects), what, "invalid subjects")
            change, named_missing = None, False
            if b["change_id"]:
                if b["change_id"] in self.changes:
                    change = b["change_id"]
                else:
                    named_missing = True
            else:
                best = None
                for cid, ch in self.changes.items():
                    cur = ch["revisions"][-1]
                    if subjects <= self.subjects_of(cur) and b["environment"] in cur["environments"]:
                        if best is None or cur["index"] > best[0]:
                            best = (cur["index"], cid)
                change = best[1] if best else None
            if entry["basis"] is not None:
                self.check_basis(what, entry["basis"], b, subjects, change)
                self.decisions_based += 1
            dep = {"index": index, "actor": signer, "time": t, "action": b["action"] or "deploy",
                   "environment": b["environment"], "repository": b["repository"] or None,
                   "kind": b["kind"] or None, "namespace": b["namespace"] or None,
                   "subjects": sorted(subjects), "change_id": b["change_id"],
                   "named_missing": named_missing, "break_glass": b["break_glass"],
                   "justification": b["justification"], "change": change,
                   "change_revision": len(self.changes[change]["revisions"]) if change else None,
                   "reviews": list(self.changes[change]["reviews"]) if change else [],
                   "roles": {pid: sorted(p["roles"]) for pid, p in self.principals.items()},
                   "policy_version": len(self.versions), "policy": self.policy}
            if b["break_glass"]:
                require(b["justification"].strip() != "", what,
                        "a break-glass request needs a justification")
            self.deployments[index] = dep
            # LF §4.4, §6.6: each requested subject, whatever the decision (so after the basis
            # check above, which counts the entries before this one).
            self.concern_subjects(index, subjects)
            if change:
                self.changes[change]["deployments"].append(index)
                # LF §6.5: a deployment whose decision considered the change concerns it, allowed
                # or denied. The considered change is the fold's own reading of LF §8.5 above (the
                # change `change_id` names, or the most recently revised carried change binding
                # every subject and targeting the environment); it needs no policy evaluation,
                # and step 8.2 holds the `change` of facts/decisions.json to it. In a sparse
                # bundle the search sees only carried changes: for a version-3 entry the decision
                # basis (checked above) proves every change binding its subjects is carried; for
                # an older one this is the same trust the verifier already places in the
                # bundle's choice of changes (a wrong attribution makes the recomputed change
                # head differ, so it fails step 7.2 rather than pass unnoticed).
                self.changes[change]["concerning"].append(index)
        elif kind == "BreakGlassReviewed":
            di = b["deployment_index"]
            p = self.principals.get(signer)
            require(p is not None and p["kind"] == 1, what, "a break-glass review needs a human")
            self.need_perm(what, signer, "approve", "review break-glass deployments")
            dep = self.deployments.get(di)
            require(dep is not None, what, f"entry {di} is not a carried DeployRequested entry")
            claimed = self.claimed_decisions().get(di)
            require(dep["break_glass"] and claimed is not None and claimed.get("verdict") == "allow",
                    what, f"the deployment at entry {di} opened no break-glass obligation")
            require(signer != dep["actor"], what,
                    f"the review must come from someone other than {dep['actor']!r}")
            require(di not in self.bg_reviews, what,
                    f"the break-glass deployment at entry {di} was already reviewed at entry "
                    f"{self.bg_reviews.get(di, {}).get('index')}")
            self.bg_reviews[di] = {"index": index, "reviewer": signer, "justified": b["justified"],
                                   "comment": b["comment"], "time": t}
            # LF §6.5: the break-glass review of a deployment that considered a change concerns
            # that change. (That the deployment opened an obligation at all rests on the verdict
            # claimed in facts/decisions.json, as above: the verifier does not re-evaluate it.)
            if dep["change"]:
                self.changes[dep["change"]]["concerning"].append(index)
            # LF §6.6: it also concerns the subjects of the deployment it reviews (beyond the
            # `subject:` keys of LF §4.4, so after every basis check).
            self.concern_subjects(index, dep["subjects"])
        elif kind == "PolicyProposed":
            self.need_perm(what, signer, "propose_policy", "propose a policy")
            pid = b["proposal_id"]
            require(RE_RECORD.fullmatch(pid) is not None, what, "invalid proposal id")
            require(pid not in self.proposals, what, f"proposal {pid} is already in use")
            require(b["base_version"] == len(self.versions), what,
                    f"base_version is {b['base_version']} but policy version {len(self.versions)}"
                    " is in force")
            require(b["text"] != "", what, "empty policy text")
            Policy(b["text"], what)                       # must parse
            self.proposals[pid] = {"id": pid, "text": b["text"], "base": b["base_version"],
                                   "proposer": signer, "proposed_at": index, "approvals": [],
                                   "active": False, "time": t}
        elif kind == "PolicyApproved":
            self.need_perm(what, signer, "approve_policy", "approve a policy")
            pid = b["proposal_id"]
            prop = self.proposals.get(pid)
            require(prop is not None, what, f"proposal {pid} does not exist")
            require(not prop["active"], what, f"proposal {pid} is already active")
            require(prop["base"] == len(self.versions), what,
                    f"it replaces version {prop['base']} but version {len(self.versions)} is in force")
            limit = self.policy.pc_expire
            require(limit is None or t - prop["time"] <= limit, what,
                    f"proposal {pid} expired before this approval ([policy_changes] expire_after)")
            require(signer != prop["proposer"], what, "the proposer may not approve")
            # An approval whose key was revoked or rotated away since does not stop its approver
            # from approving again; every approval on record counts toward activation (LF §8.4).
            standing = [a for a, _, k in prop["approvals"] if not self.key_revoked(a, k)]
            require(signer not in standing, what, "approved twice")
            prop["approvals"].append((signer, index, signed_with))
            counting = {a for a, _, _ in prop["approvals"]
                        if a != prop["proposer"] and self.principals[a]["kind"] == 1
                        and self.principals[a]["roles"] & self.policy.pc_roles}
            if len(counting) >= self.policy.pc_approvals:
                new = Policy(prop["text"], what)
                self.lockout_check(what, "activating this policy", new)
                # Expiry is final: what the outgoing policy let expire stays expired (LF §8.2.1).
                limit = self.policy.identity_expire
                for pend in self.pending.values():
                    if (limit is not None and pend["applied"] is None and pend["withdrawn"] is None
                            and t - pend["time"] > limit):
                        pend["expired"] = True
                prop["active"] = True
                self.versions.append({"version": len(self.versions) + 1, "policy": new,
                                      "activated_at": index, "proposal": prop})
        else:  # pragma: no cover
            raise Failed(what, f"unknown body {kind}")


def check_fold(records, key_name, log_key, load_decisions, boundary=None):
    """EF §11 step 6. Returns the fold, and the view the derived files are computed from (EF
    §10.2): with `boundary` (a period's last range index and its end), when that entry is
    integrated at or after the end, the state folded from the entries before it, with every
    carried entry's record."""
    fold = Fold(load_decisions)
    view = None
    for index, entry_bytes in records:
        if (boundary is not None and index == boundary[0] and len(entry_bytes) >= 17
                and struct.unpack(">q", entry_bytes[9:17])[0] >= boundary[1]):
            view = copy.deepcopy(fold)
        fold.fold_entry(index, entry_bytes)
    require(fold.records, "entries.bin", "no entries (entry 0 is missing)")
    require(fold.log_key == log_key, "entry 0", "the genesis does not name the trusted log key")
    require(fold.origin == key_name, "entry 0",
            f"the genesis origin {fold.origin!r} is not the trusted key's name {key_name!r}")
    for prev, cur in zip(fold.records, fold.records[1:]):
        if cur["index"] == prev["index"] + 1:
            require(cur["prev"] == prev["leaf"], f"entry {cur['index']}",
                    f"prev_leaf_hash is not the leaf hash of entry {prev['index']}")
    if view is None:
        return fold, fold
    view.records, view.proven_to = fold.records, fold.proven_to
    return fold, view


# ---------------------------------------------------------------------------------------------
# 7. Scope, completeness and as_of (EF §4, §8.4, §8.5, §11 step 7)
# ---------------------------------------------------------------------------------------------

CONTROLS = {  # key -> (OSCAL id, title)
    "soc2-cc8.1": ("cc8.1", "SOC 2 CC8.1 \u2014 change management"),
    "iso27001-a8.32": ("a.8.32", "ISO/IEC 27001:2022 A.8.32 \u2014 change management"),
    "hipaa-164.312b": ("hipaa-164.312.b", "HIPAA \u00a7164.312(b) \u2014 audit controls"),
}


def parse_scope(manifest):
    scope = manifest.get("scope")
    require(isinstance(scope, dict), "manifest.json", "scope is not an object")
    kind = scope.get("kind")
    out = {"kind": kind}
    if kind == "change":
        require(isinstance(scope.get("change"), str), "manifest.json", "scope.change is not a string")
        out["change"] = scope["change"]
        # EF §4: "complete" appears only as true, for a bundle that carries the range from the
        # change's opening to the checkpoint.
        require(scope.get("complete", True) is True, "manifest.json", "scope.complete, if present, must be true")
        out["complete"] = "complete" in scope
    elif kind in ("period", "control"):
        for f in ("from_unix_nanos", "to_unix_nanos"):
            require(isinstance(scope.get(f), int), "manifest.json", f"scope.{f} is not an integer")
        out["from"], out["to"] = scope["from_unix_nanos"], scope["to_unix_nanos"]
        require(out["from"] < out["to"], "manifest.json",
                "the scope's period is empty: from must be before to")
        if kind == "period":
            for f in ("environments", "repositories"):
                require(isinstance(scope.get(f), list) and all(isinstance(x, str) for x in scope[f]),
                        "manifest.json", f"scope.{f} is not an array of strings")
            out["environments"], out["repositories"] = scope["environments"], scope["repositories"]
        else:
            require(scope.get("control") in CONTROLS, "manifest.json",
                    f"unknown control {scope.get('control')!r}")
            out["control"] = scope["control"]
            out["environments"], out["repositories"] = [], []
    else:
        raise Failed("manifest.json", f"unknown scope kind {kind!r}")
    as_of = manifest.get("as_of_unix_nanos")
    require(isinstance(as_of, int), "manifest.json", "as_of_unix_nanos is not an integer")
    return out, as_of


HEADS = "heads.bin"


def change_head_leaf(cid, indices):
    """LF §6.5: the leaf of change `cid` whose concerning entries are at `indices` (increasing):
    u16 BE byte length of the id || id (UTF-8) || u64 BE k || chain_k, where chain_0 is 32 zero
    bytes and chain_j = BLAKE3(0x02 || chain_(j-1) || u64 BE i_j). Returns the leaf bytes; the
    tree hashes it as leaf_hash (LF §5.1: BLAKE3(0x00 || leaf))."""
    chain = bytes(32)
    for i in indices:
        chain = H(b"\x02" + chain + struct.pack(">Q", i))
    cid_bytes = cid.encode("utf-8")
    return struct.pack(">H", len(cid_bytes)) + cid_bytes + struct.pack(">Q", len(indices)) + chain


def decode_heads_bin(data, m):
    """EF §6.6: u64 BE j, u8 k (at most 64), k hashes of 32 bytes, no trailing bytes; j < m.
    Returns (j, proof)."""
    require(len(data) >= 9, HEADS, f"truncated: {len(data)} bytes, at least 9 needed")
    j = struct.unpack(">Q", data[:8])[0]
    k = data[8]
    require(k <= 64, HEADS, f"a proof of {k} hashes; at most 64 are possible")
    require(len(data) >= 9 + 32 * k, HEADS, f"the proof of {k} hashes is truncated")
    require(len(data) == 9 + 32 * k, HEADS, "trailing bytes after the proof")
    require(j < m, HEADS, f"leaf {j} is not below the checkpoint's {m} changes")
    return j, [data[p:p + 32] for p in range(9, len(data), 32)]


def heads_member_wanted(scope, files, name, what, signed):
    """EF §3.1, §6.6, §6.7, §11 steps 7.2-7.3: a heads member (heads.bin, subjects.bin) is present
    exactly in a change bundle without `--complete` whose checkpoint signs those heads (`signed`
    not None). Returns True when it must be checked, after refusing it where it may not be."""
    if signed is not None and scope["kind"] == "change" and not scope["complete"]:
        require(name in files, name, f"missing, but the checkpoint commits to {what} heads")
        return True
    require(name not in files, name,
            f"present, but the checkpoint has no {what} heads" if signed is None
            else "present, but only a change bundle without --complete carries it")
    return False


def check_change_heads(fold, scope, files, heads):
    """EF §11 step 7.2, the change heads (EF §2.2 point 10, §6.6, LF §6.5). Returns (k, j, m)
    when heads.bin was checked, None when the bundle has none (as it must then)."""
    if not heads_member_wanted(scope, files, HEADS, "change", heads):
        return None
    m, heads_root = heads
    j, proof = decode_heads_bin(files[HEADS], m)
    cid = scope["change"]
    # The entries concerning the change among the carried ones, as the fold applied them; the
    # leaf is computed here, never taken from the exporter (EF §6.6).
    concerning = fold.changes[cid]["concerning"]
    leaf = change_head_leaf(cid, concerning)
    require(verify_inclusion(leaf_hash(leaf), j, m, proof, heads_root), "completeness",
            f"the bundle carries {len(concerning)} entries concerning change {cid}, which do not"
            f" make the change head the checkpoint signs (leaf {j} of {m}); an entry concerning it"
            " was left out")
    return len(concerning), j, m


SUBJECTS = "subjects.bin"


def subject_head_leaf(subject, indices):
    """LF §6.6: the leaf of a subject is that of LF §6.5 with the subject's UTF-8 text in place of
    the change id, over the indices of the entries concerning it."""
    return change_head_leaf(subject, indices)


def decode_subjects_bin(data, m):
    """EF §6.7: records of u16 BE L (at least 1), L bytes of subject (UTF-8), u64 BE j, u8 k (at
    most 64), k hashes of 32 bytes; subjects strictly ascending by their bytes (so none twice),
    j < m in each, no trailing bytes. Returns [(subject, j, proof)]."""
    out, pos, prev = [], 0, None
    while pos < len(data):
        what = f"record {len(out)} at byte {pos}"
        require(len(data) - pos >= 2, SUBJECTS, f"{what}: truncated")
        length = struct.unpack(">H", data[pos:pos + 2])[0]
        require(length >= 1, SUBJECTS, f"{what}: an empty subject")
        require(len(data) - pos >= 2 + length + 9, SUBJECTS, f"{what}: truncated")
        raw = data[pos + 2:pos + 2 + length]
        try:
            subject = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Failed(SUBJECTS, f"{what}: the subject is not UTF-8")
        if prev is not None and raw <= prev:
            raise Failed(SUBJECTS, f"{what}: subject {subject} does not come after"
                                   f" {prev.decode('utf-8')} in byte order (records are strictly"
                                   " ascending by subject, with no subject twice)")
        pos += 2 + length
        j = struct.unpack(">Q", data[pos:pos + 8])[0]
        k = data[pos + 8]
        require(k <= 64, SUBJECTS, f"{what}: a proof of {k} hashes; at most 64 are possible")
        require(len(data) - pos >= 9 + 32 * k, SUBJECTS,
                f"{what}: the proof of {k} hashes is truncated")
        require(j < m, SUBJECTS, f"{what}: leaf {j} of subject {subject} is not below the"
                                 f" checkpoint's {m} subjects")
        proof = [data[p:p + 32] for p in range(pos + 9, pos + 9 + 32 * k, 32)]
        pos += 9 + 32 * k
        out.append((subject, j, proof))
        prev = raw
    return out


def check_subject_heads(fold, scope, files, subject_heads):
    """EF §11 step 7.2-7.3, the subject heads (EF §2.2 point 11, §6.7, LF §6.6). Returns (s, e, m),
    s proven subjects whose e carried entries (each counted once, however many of the subjects it
    concerns) make their leaves in the tree of m subjects, when subjects.bin was checked; None when
    the bundle has none (as it must then)."""
    if not heads_member_wanted(scope, files, SUBJECTS, "subject", subject_heads):
        return None
    m, subjects_root = subject_heads
    records = decode_subjects_bin(files[SUBJECTS], m)
    cid = scope["change"]
    # The proven subjects are computed from the fold, never taken from the exporter (EF §6.7).
    named = [subject for subject, _, _ in records]
    proven = sorted(fold.proven_subjects(cid), key=str.encode)
    require(named == proven, SUBJECTS,
            f"it proves subjects {', '.join(named) or '(none)'} but the change's proven subjects"
            f" are {', '.join(proven) or '(none)'}")
    entries = set()
    for subject, j, proof in records:
        concerning = fold.subject_entries.get(subject, [])
        leaf = subject_head_leaf(subject, concerning)
        require(verify_inclusion(leaf_hash(leaf), j, m, proof, subjects_root), "completeness",
                f"the bundle carries {len(concerning)} entries concerning subject {subject}, which"
                f" do not make the subject head the checkpoint signs (leaf {j} of {m}); an entry"
                " concerning it was left out")
        entries.update(concerning)
    return len(records), len(entries), m


def check_scope(fold, scope, as_of, rng, n, files, heads, subject_heads):
    """EF §11 step 7.2-7.3. Returns (what check_change_heads returns, what check_subject_heads
    returns)."""
    by_index = {r["index"]: r for r in fold.records}
    if scope["kind"] == "change":
        require(scope["change"] in fold.changes, "entries.bin",
                f"the bundle's entries do not know change {scope['change']!r}")
        last = by_index.get(n - 1)
        require(last is not None, "manifest.json", f"entry {n - 1}, the checkpoint's last, is not carried")
        require(last["time"] == as_of, "manifest.json",
                f"as_of {fmt_time(as_of)} is not the time of entry {n - 1} ({fmt_time(last['time'])})")
        if not scope["complete"]:
            return (check_change_heads(fold, scope, files, heads),
                    check_subject_heads(fold, scope, files, subject_heads))
        # EF §8.2: the range runs from the entry that opened the change to the checkpoint, and
        # nothing concerning a change comes before its opening. (verify() has already required
        # the range exactly when the scope is complete.)
        opened = fold.changes[scope["change"]]["revisions"][0]["index"]
        require(rng[0] == opened, "completeness",
                f"the range starts at entry {rng[0]}, not at entry {opened} that opened the change")
        require(rng[1] == n, "completeness",
                f"the range ends before entry {rng[1]}, not at the checkpoint's size {n}")
        # heads.bin and subjects.bin must be absent:
        return (check_change_heads(fold, scope, files, heads),
                check_subject_heads(fold, scope, files, subject_heads))
    check_change_heads(fold, scope, files, heads)              # heads.bin must be absent
    check_subject_heads(fold, scope, files, subject_heads)     # subjects.bin must be absent
    require(rng is not None, "range.bin", "a period or control bundle must carry a range")
    start, end = rng[0], rng[1]
    for i in range(start + 1, end):
        require(by_index[i]["time"] >= by_index[i - 1]["time"], f"entry {i}",
                "its integrated time is earlier than the previous entry's")
    # The lead-in: the longest break-glass review deadline of a policy version activated
    # before the period's first entry (EF §8.5).
    a = next((i for i in range(start, end) if by_index[i]["time"] >= scope["from"]), end)
    lead_in = max((v["policy"].break_glass_review for v in fold.versions
                   if v["activated_at"] < a), default=0)
    if start != 0:
        require(by_index[start]["time"] < scope["from"] - lead_in, "completeness",
                f"entry {start} is the first of the range but is not earlier than the period's"
                " start minus its lead-in; earlier entries may have been left out")
    # EF §11 step 7.3: the range is exactly the one the scope gives, no longer on either side.
    require(not (start + 1 < end and by_index[start + 1]["time"] < scope["from"] - lead_in),
            "range.bin", f"the range starts earlier than needed: entry {start + 1} is already before"
            " the period and its lead-in")
    if by_index[end - 1]["time"] >= scope["to"]:
        require(as_of == scope["to"], "manifest.json", "as_of is not the end of the period")
        require(not (end - 1 > start and by_index[end - 2]["time"] >= scope["to"]), "range.bin",
                f"the range runs past the period: entry {end - 2} is already at or after its end")
        later = [i for i in by_index if i >= end]
        require(not later, f"entry {later[0] if later else 0}",
                "lies after the range; a period bundle whose range reaches the period's end carries"
                " nothing later")
    else:
        require(end == n, "completeness",
                f"entry {end - 1} is the last of the range but lies inside the period, and the log"
                " continues; later entries of the period may have been left out")
        require(as_of == by_index[n - 1]["time"], "manifest.json",
                f"as_of is not the time of entry {n - 1}")
    return None, None


# ---------------------------------------------------------------------------------------------
# 8. Derived files (EF §10, §11 step 8)
# ---------------------------------------------------------------------------------------------

class Derived:
    """Computes the derived files from the fold, the scope and the bundle's decisions."""

    def __init__(self, fold, scope, as_of, origin, n, root, rng, claimed, whole=None):
        # `fold` is the view the files describe (EF §10.2); `whole` every carried entry's fold,
        # whose deployments facts/decisions.json lists (a period's boundary included).
        self.fold, self.scope, self.as_of = fold, scope, as_of
        self.whole = whole or fold
        self.origin, self.n, self.root, self.rng = origin, n, root, rng
        self.claimed = claimed          # facts/decisions.json by index (verdicts, rules, reasons)
        self.compute_scope()

    # -- EF §10.2 --------------------------------------------------------------------------------

    def compute_scope(self):
        f, s = self.fold, self.scope
        if s["kind"] == "change":
            ch = f.changes[s["change"]]
            ins = {r["index"] for r in ch["revisions"]} | {r["index"] for r in ch["reviews"]}
            ins |= set(ch["deployments"])
            ins |= {f.bg_reviews[d]["index"] for d in ch["deployments"] if d in f.bg_reviews}
        else:
            ins = {r["index"] for r in f.records if s["from"] <= r["time"] < s["to"]}
        self.in_scope = ins
        self.decisions_in_scope = {i for i in f.deployments if i in ins and self.filtered(i)}

        # EF §10.2: the changes the decisions in scope considered, whatever their current
        # revision targets, and those the filters keep.
        changes = {f.deployments[i]["change"] for i in self.decisions_in_scope
                   if f.deployments[i]["change"]}
        for cid, ch in f.changes.items():
            touched = ({r["index"] for r in ch["revisions"]} | {r["index"] for r in ch["reviews"]}
                       | set(ch["deployments"])) & ins
            if not touched:
                continue
            cur = ch["revisions"][-1]
            if not self.repos_keep([ch["repository"]], set(cur["commits"]) | set(cur["digests"])):
                continue
            if s.get("environments") and not any(glob_match(p, e)
                                                 for e in ch["revisions"][-1]["environments"]
                                                 for p in s["environments"]):
                continue
            changes.add(cid)
        self.changes_in_scope = sorted(changes, key=lambda c: c.encode())

    def filtered(self, i):
        """Whether the scope's environment and repository filters keep deployment i."""
        f, s, dep = self.fold, self.scope, self.fold.deployments[i]
        if s.get("environments") and not any(glob_match(p, dep["environment"])
                                             for p in s["environments"]):
            return False
        named = [dep["repository"] or ""]
        subjects = set(dep["subjects"])
        if dep["change"] is not None:
            ch = f.changes[dep["change"]]
            named.append(ch["repository"])
            # The revision its decision considered.
            subjects |= self.fold.subjects_of(ch["revisions"][dep["change_revision"] - 1])
        return self.repos_keep(named, subjects)

    def repos_keep(self, named, subjects):
        """EF §10.2: the repository patterns keep what one of its repositories matches, named
        (request, change) or recorded for its code (commit observations, CI runs); what names
        and records none is kept."""
        pats = self.scope.get("repositories")
        if not pats:
            return True
        known = [r for r in named if r]
        for s in subjects:
            known += sorted(self.fold.recorded_repos.get(s, ()))
        return not known or any(glob_match(p, r) for p in pats for r in known)

    def came_due(self, i):
        """EF §10.6: a break-glass deployment made before the period, unreviewed when it began,
        whose review came due in it or later."""
        s = self.scope
        if s["kind"] == "change":
            return False
        dep = self.fold.deployments[i]
        due = due_time(dep)
        rv = self.fold.bg_reviews.get(i)
        return (dep["time"] < s["from"] and due >= s["from"]
                and (rv is None or rv["time"] >= s["from"]) and self.filtered(i))

    # -- shared helpers -------------------------------------------------------------------------

    def allowed(self, i):
        return self.claimed.get(i, {}).get("verdict") == "allow"

    def obligation_status(self, i):
        """LF §8.5, EF §10.6: (status, review or None) of the obligation opened at entry i."""
        dep = self.fold.deployments[i]
        due = due_time(dep)
        rv = self.fold.bg_reviews.get(i)
        if rv is not None and rv["time"] > self.as_of:
            rv = None
        if rv is not None:
            return ("closed" if rv["time"] <= due else "closed-late"), rv, due
        return ("overdue" if self.as_of > due else "open"), None, due

    # -- facts/decisions.json (EF §10.4) ----------------------------------------------------------

    def decisions(self):
        """Everything but the evaluator's outputs is regenerated; those are taken from the bundle
        after consistency checks that need no policy evaluation."""
        out = []
        for i in sorted(self.whole.deployments):
            dep = self.whole.deployments[i]
            c = self.claimed.get(i)
            what = "facts/decisions.json"
            require(c is not None, what, f"the bundle has no decision for entry {i}")
            require(c.get("verdict") in ("allow", "deny"), what, f"entry {i}: invalid verdict")
            require(c.get("rule") is None or isinstance(c.get("rule"), str), what,
                    f"entry {i}: invalid rule")
            require(isinstance(c.get("reasons"), list)
                    and all(isinstance(r, str) for r in c["reasons"]), what,
                    f"entry {i}: invalid reasons")
            # counted / not_counted: together every review of the considered change before i,
            # or both empty when the decision came before any rule looked at reviews
            # (break-glass, a freeze window, a repository mismatch, repositories under different
            # rules, an unknown field a rule filters on, no rule matching).
            reviews = {r["index"]: r for r in dep["reviews"]}
            counted, not_counted = c.get("counted"), c.get("not_counted")
            require(isinstance(counted, list) and isinstance(not_counted, list), what,
                    f"entry {i}: counted / not_counted are not arrays")
            idx = [x.get("index") for x in counted + not_counted if isinstance(x, dict)]
            if dep["break_glass"] and c["verdict"] == "allow":
                require(not idx, what, f"entry {i}: an allowed break-glass counts no review")
            require(not idx or (sorted(idx) == sorted(reviews)
                                and len(idx) == len(counted) + len(not_counted)),
                    what, f"entry {i}: counted and not_counted are not exactly the reviews of the"
                          f" change the decision considered ({sorted(reviews)}), but {sorted(idx)}")
            new_counted = []
            for x in counted:
                r = reviews[x["index"]]
                new_counted.append({"approver": r["reviewer"], "index": r["index"],
                                    "roles": ", ".join(dep["roles"].get(r["reviewer"], []))})
            new_not = []
            for x in not_counted:
                r = reviews[x["index"]]
                require(isinstance(x.get("reason"), str), what, f"entry {i}: invalid reason")
                new_not.append({"approver": r["reviewer"], "index": r["index"], "reason": x["reason"]})
            # obligations: exactly one for an allowed break-glass.
            obl = c.get("obligations")
            require(isinstance(obl, list), what, f"entry {i}: obligations is not an array")
            new_obl = []
            if dep["break_glass"] and c["verdict"] == "allow":
                require(len(obl) == 1 and isinstance(obl[0], dict)
                        and isinstance(obl[0].get("description"), str), what,
                        f"entry {i}: an allowed break-glass must carry exactly one obligation")
                new_obl.append({"description": obl[0]["description"],
                                "due": fmt_time(due_time(dep)),
                                "not_by": dep["actor"]})
            change = dep["change"]
            if dep["named_missing"] and c.get("change") == dep["change_id"]:
                change = dep["change_id"]    # doc unclear whether a missing named change is kept
            out.append({
                "action": dep["action"], "actor": dep["actor"], "break_glass": dep["break_glass"],
                "change": change, "change_revision": dep["change_revision"],
                "counted": new_counted, "environment": dep["environment"],
                "in_scope": i in self.decisions_in_scope, "index": i,
                "justification": dep["justification"], "kind": dep["kind"],
                "namespace": dep["namespace"], "not_counted": new_not, "obligations": new_obl,
                "policy_digest": dep["policy"].digest, "policy_version": dep["policy_version"],
                "reasons": c["reasons"], "repository": dep["repository"], "rule": c["rule"],
                "subjects": dep["subjects"], "time": fmt_time(dep["time"]),
                "verdict": c["verdict"]})
        extra = set(self.claimed) - set(self.whole.deployments)
        require(not extra, "facts/decisions.json",
                f"holds decisions for entries that are not carried deployments: {sorted(extra)}")
        return out

    # -- facts/entries.json (EF §10.3) --------------------------------------------------------

    def entries(self):
        return [{"event_id": r["event"]["event_id"], "in_scope": r["index"] in self.in_scope,
                 "index": r["index"], "kind": r["kind"], "leaf_hash": r["leaf"].hex(),
                 "signer": r["event"]["signer"], "time": fmt_time(r["time"]),
                 "transport_identity": r["transport"]} for r in self.fold.records]

    # -- facts/changes.json (EF §10.5) --------------------------------------------------------

    def changes(self):
        f = self.fold
        out = []
        for cid in self.changes_in_scope:
            ch = f.changes[cid]
            cur = ch["revisions"][-1]
            cur_subjects = f.subjects_of(cur)
            # EF §10.5: the change's code is its commits and those its digests were built from.
            built_from = []
            for d in sorted(cur["digests"]):
                for run in f.ci_runs:
                    if (d in run["digests"] and run["commit"] and run["commit"] not in cur["commits"]
                            and run["commit"] not in built_from):
                        built_from.append(run["commit"])
            observed = sorted(s for s in set(cur["commits"]) | set(built_from) if s in f.commits)
            authors, unmapped = set(), set()
            for s in observed:
                k = f.commits[s]
                people = [(k["author"], f.email_owner.get(k["author"])),
                          (k["committer"], f.email_owner.get(k["committer"]))]
                if k["signature"] == "verified" and k["signer"]:
                    # The principal with that id and the one with that e-mail: both, when
                    # they differ.
                    by_id = k["signer"] if k["signer"] in f.principals else None
                    by_email = f.email_owner.get(ascii_lower(k["signer"]))
                    people.append((k["signer"], by_id if by_id is not None else by_email))
                    if by_id is not None and by_email is not None and by_id != by_email:
                        people.append((k["signer"], by_email))
                for identity, owner in people:
                    if owner is None:
                        unmapped.add(identity)
                    else:
                        authors.add(owner)
            authors, unmapped = sorted(authors), sorted(unmapped)
            ci = [dict(run) for run in f.ci_runs
                  if run["commit"] in cur_subjects or set(run["digests"]) & cur_subjects]
            deployments = []
            for i in ch["deployments"]:
                dep, c = f.deployments[i], self.claimed.get(i, {})
                deployments.append({"break_glass": dep["break_glass"],
                                    "environment": dep["environment"], "index": i,
                                    "rule": c.get("rule"), "time": fmt_time(dep["time"]),
                                    "verdict": c.get("verdict")})
            # EF §10.5: in a period or control bundle, the latest decision before the period's end.
            decided = [i for i in ch["deployments"]
                       if self.scope["kind"] == "change" or f.deployments[i]["time"] < self.scope["to"]]
            if decided:
                last = max(decided)
                dep, c = f.deployments[last], self.claimed.get(last, {})
                if c.get("verdict") == "allow":
                    outcome = "bypassed (break-glass)" if dep["break_glass"] else "satisfied"
                else:
                    outcome = "not satisfied"
                sod = {"counted": [x.get("approver") for x in c.get("counted", [])],
                       "decided_at": last,
                       "not_counted": [{"approver": x.get("approver"), "reason": x.get("reason")}
                                       for x in c.get("not_counted", [])],
                       "outcome": outcome}
            else:
                sod = {"outcome": "no deployment decided"}
            out.append({
                "authors": authors, "built_from": sorted(built_from), "change": cid, "ci": ci,
                "commits": [dict(f.commits[s], sha=s) for s in observed],
                "deployments": deployments, "repository": ch["repository"],
                "requesters": list(ch["requesters"]),
                "reviews": [{"comment": r["comment"],
                             "current_revision": r["index"] > cur["index"] and r["seen"] == cur_subjects,
                             "index": r["index"], "reviewer": r["reviewer"],
                             "time": fmt_time(r["time"]), "verdict": r["verdict"]}
                            for r in ch["reviews"]],
                "revision": len(ch["revisions"]),
                "revisions": [{"by": r["by"], "commits": sorted(r["commits"]),
                               "digests": sorted(r["digests"]),
                               "environments": sorted(r["environments"]), "index": r["index"],
                               "reason": r["reason"], "time": fmt_time(r["time"])}
                              for r in ch["revisions"]],
                "segregation_of_duties": sod, "ticket": ch["ticket"], "title": ch["title"],
                "unmapped_authors": unmapped})
        return out

    # -- facts/obligations.json (EF §10.6) ------------------------------------------------------

    def obligations(self):
        f = self.fold
        opened = [i for i in sorted(f.deployments)
                  if f.deployments[i]["break_glass"] and self.allowed(i)]
        in_scope = [i for i in opened if i in self.decisions_in_scope
                    or (i in f.bg_reviews and f.bg_reviews[i]["index"] in self.in_scope
                        and self.filtered(i))
                    or self.came_due(i)]
        obligations, violations = [], []
        for i in in_scope:
            dep = f.deployments[i]
            status, rv, due = self.obligation_status(i)
            obligations.append({
                "actor": dep["actor"], "deployment_index": i, "due": fmt_time(due),
                "environment": dep["environment"], "justification": dep["justification"],
                "opened": fmt_time(dep["time"]),
                "review": None if rv is None else {
                    "comment": rv["comment"], "index": rv["index"], "justified": rv["justified"],
                    "reviewer": rv["reviewer"], "time": fmt_time(rv["time"])},
                "status": status, "subjects": dep["subjects"]})
            noun = "deployments" if len(dep["subjects"]) > 1 else "deployment"
            head = f"break-glass {noun} to {dep['environment']} by {dep['actor']} (entry {i})"
            if status == "overdue":
                violations.append({"description": f"{head}: no review by someone else; it was due "
                                                   f"{fmt_time(due)}",
                                   "index": i, "kind": "overdue-review", "time": fmt_time(due)})
            if status == "closed-late":
                violations.append({"description": f"{head}: reviewed by {rv['reviewer']} at "
                                                   f"{fmt_time(rv['time'])}, after the deadline "
                                                   f"{fmt_time(due)}",
                                   "index": i, "kind": "late-review", "time": fmt_time(rv["time"])})
            if rv is not None and not rv["justified"]:
                violations.append({"description": f"{head}: {rv['reviewer']} found it unjustified "
                                                   f"(entry {rv['index']}): {rv['comment']}",
                                   "index": i, "kind": "unjustified-break-glass",
                                   "time": fmt_time(rv["time"])})
        self.obligation_rows, self.violation_rows = obligations, violations
        return {"as_of": fmt_time(self.as_of), "obligations": obligations, "violations": violations}

    # -- facts/policies.json and policies/vN.toml (EF §10.7) --------------------------------------

    def policies(self):
        out = []
        for v in self.fold.versions:
            prop = v["proposal"]
            out.append({
                "activated_at": v["activated_at"], "digest": v["policy"].digest,
                "file": f"policies/v{v['version']}.toml",
                "proposal": None if prop is None else {
                    "approvals": [{"approver": a, "index": i} for a, i, _ in prop["approvals"]],
                    "id": prop["id"], "proposed_at": prop["proposed_at"],
                    "proposer": prop["proposer"]},
                "version": v["version"]})
        return out

    # -- facts/principals.json (EF §10.8) -------------------------------------------------------

    def principals(self):
        out = []
        for pid in sorted(self.fold.principals, key=lambda s: s.encode()):
            p = self.fold.principals[pid]
            out.append({
                "display_name": p["display_name"], "emails": sorted(p["emails"]), "id": pid,
                "keys": [{"added_at": k["added_at"], "keyid": H(k["key"])[:8].hex(),
                          "public_key": k["key"].hex(), "revoked_at": k["revoked_at"]}
                         for k in p["keys"]],
                "kind": KIND_NAMES[p["kind"]], "registered_at": p["registered_at"],
                "roles": sorted(p["roles"])})
        return out

    # -- oscal/assessment-results.json (EF §10.9) ----------------------------------------------

    def oscal(self, manifest_scope):
        s = self.scope
        scope_json = json.dumps(manifest_scope, separators=(",", ":"), sort_keys=True,
                                ensure_ascii=False).encode("utf-8")

        def U(name):
            b = bytearray(H(self.origin.encode() + self.root + scope_json + name.encode())[:16])
            b[6] = (b[6] & 0x0F) | 0x50
            b[8] = (b[8] & 0x3F) | 0x80
            h = b.hex()
            return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

        def P(name, value):
            return {"name": name, "ns": "https://docket.dev/ns/oscal", "value": str(value)}

        if s["kind"] == "change":
            words = f"change {s['change']}"
            if s["complete"]:
                words += ", with every entry from its opening to the checkpoint"
            # "the time of its lowest in-scope entry": the entry with the lowest index.
            times = [r["time"] for r in self.fold.records if r["index"] in self.in_scope]
            start = times[0] if times else self.as_of
        elif s["kind"] == "period":
            words = f"the period {fmt_time(s['from'])} to {fmt_time(s['to'])}"
            if s["environments"]:
                words += ", environments " + ", ".join(s["environments"])
            if s["repositories"]:
                words += ", repositories " + ", ".join(s["repositories"])
            start = s["from"]
        else:
            words = f"{s['control']} over the period {fmt_time(s['from'])} to {fmt_time(s['to'])}"
            start = s["from"]
        start = min(start, self.as_of)
        controls = [s["control"]] if s["kind"] == "control" else list(CONTROLS)

        n_changes = len(self.changes_in_scope)
        allowed = sum(1 for i in self.decisions_in_scope if self.claimed[i]["verdict"] == "allow")
        denied = len(self.decisions_in_scope) - allowed
        n_viol = len(self.violation_rows)
        n_open = sum(1 for o in self.obligation_rows if o["status"] == "open")
        evidence_gov = [
            ("facts/changes.json", "Each change: requesters, authors, approvals, CI, deployments and"
                                   " the segregation-of-duties outcome."),
            ("facts/decisions.json", "Every deployment decision with its rule, policy version and"
                                     " reasons."),
            ("facts/policies.json", "The policy versions in force and their approval trail."),
            ("facts/obligations.json", "Break-glass review obligations and violations as of the"
                                       " bundle's time.")]
        evidence_hipaa = [
            ("entries.bin", "Every entry in scope, verbatim as the log stores it."),
            ("checkpoint.txt", "The signed checkpoint all proofs lead to."),
            ("manifest.sig", "The log key's signature over the manifest of every file.")]
        observations, findings = [], []
        for key in controls:
            cid, title = CONTROLS[key]
            if key == "hipaa-164.312b":
                W = (f"{len(self.fold.records)} entries, each proven in the hash-chained, "
                     f"Merkle-verifiable log at checkpoint {self.n}")
                if self.rng is not None and s["kind"] == "change":
                    W += ("; every entry from the change's opening to the checkpoint is proven"
                          " carried by one range proof")
                elif s["kind"] == "change" and getattr(self, "heads_proven", False):
                    W += ("; every entry concerning the change is proven carried by the change"
                          " head the checkpoint signs")
                    if getattr(self, "subjects_proven", False):
                        W += ", and every entry concerning its subjects by the subject heads"
                elif self.rng is not None and self.as_of < s["to"]:
                    W += (f"; the period is proven complete only up to {fmt_time(self.as_of)}, the"
                          f" log's last entry at the checkpoint (the period runs to"
                          f" {fmt_time(s['to'])}), by its boundary entry and one range proof")
                elif self.rng is not None:
                    W += "; the period is proven complete by its boundary entries and one range proof"
                if self.fold.proven_to is not None:
                    W += (f"; every identity and policy entry up to entry {self.fold.proven_to} is"
                          " carried, as the entries' history counts show")
                W += "; every signature checked against the key history the bundle carries, folded from genesis"
                satisfied, evidence = True, evidence_hipaa
            else:
                W = (f"{n_changes} change(s) in scope; {allowed} deployment(s) allowed under the "
                     f"policy in force, {denied} denied; {n_viol} violation(s); {n_open} break-glass"
                     f" review(s) still open and not yet due")
                satisfied, evidence = n_viol == 0, evidence_gov
            D = (f"Satisfied for {words}: {W}." if satisfied else
                 f"Not satisfied for {words}: {W}. See the violations in facts/obligations.json.")
            observations.append({
                "uuid": U("observation:" + key), "title": title + ": facts from the log",
                "description": W, "methods": ["EXAMINE", "TEST"],
                "relevant-evidence": [{"description": d, "href": h} for h, d in evidence],
                "collected": fmt_time_seconds(self.as_of)})
            findings.append({
                "uuid": U("finding:" + key), "title": title, "description": D,
                "target": {"type": "objective-id", "target-id": cid,
                           "status": {"state": "satisfied" if satisfied else "not-satisfied"}},
                "related-observations": [{"observation-uuid": U("observation:" + key)}]})
        return {"assessment-results": {
            "uuid": U("assessment-results"),
            "metadata": {"title": f"Docket evidence for {words} from log {self.origin}",
                         "last-modified": fmt_time_seconds(self.as_of), "version": "1",
                         "oscal-version": "1.2.1",
                         "props": [P("log-origin", self.origin), P("checkpoint-size", self.n),
                                   P("checkpoint-root", self.root.hex())]},
            "import-ap": {"href": "#", "remarks": "No separate assessment plan: the reviewed "
                          "controls are listed in the result, and the facts are in this evidence "
                          "bundle."},
            "results": [{
                "uuid": U("result"),
                "title": f"Change-management and audit evidence for {words}",
                "description": "Evaluated by Docket from signed, hash-chained log entries; "
                               "re-check with `docket evidence verify`.",
                "start": fmt_time_seconds(start), "end": fmt_time_seconds(self.as_of),
                "reviewed-controls": {"control-selections": [{"include-controls": [
                    {"control-id": CONTROLS[k][0]} for k in controls]}]},
                "observations": observations, "findings": findings}]}}


def load_claimed_decisions(files):
    """Parse the bundle's facts/decisions.json into {index: decision}."""
    what = "facts/decisions.json"
    require(what in files, what, "missing from the bundle")
    try:
        arr = json.loads(files[what].decode("utf-8"))
    except Exception as exc:
        raise Failed(what, f"does not parse as JSON: {exc}")
    require(isinstance(arr, list), what, "not an array")
    out = {}
    for d in arr:
        require(isinstance(d, dict) and isinstance(d.get("index"), int), what,
                f"a decision without an integer index: {str(d)[:80]}")
        require(d["index"] not in out, what, f"two decisions for entry {d['index']}")
        out[d["index"]] = d
    return out


def manifest_scope_object(scope, manifest):
    """The scope object as the exporter writes it (EF §4)."""
    s = scope
    if s["kind"] == "change":
        obj = {"change": s["change"], "kind": "change"}
        if s["complete"]:
            obj["complete"] = True
        return obj
    obj = {"from": fmt_time(s["from"]), "from_unix_nanos": s["from"], "kind": s["kind"],
           "to": fmt_time(s["to"]), "to_unix_nanos": s["to"]}
    if s["kind"] == "period":
        obj["environments"], obj["repositories"] = s["environments"], s["repositories"]
    else:
        obj["control"] = s["control"]
    return obj


def check_derived(files, manifest, fold, scope, as_of, origin, n, root, rng, whole=None,
                  heads_proven=False, subjects_proven=False):
    """EF §11 step 8, without re-evaluating decisions or rendering report.html."""
    claimed = load_claimed_decisions(files)
    d = Derived(fold, scope, as_of, origin, n, root, rng, claimed, whole)
    d.heads_proven = heads_proven   # heads.bin proved the change's entries (EF §10.9)
    d.subjects_proven = subjects_proven   # subjects.bin proved its subjects' entries (EF §10.9)

    # 8.2 (as far as possible without the evaluator): decision by decision.
    regenerated_decisions = d.decisions()
    for new in regenerated_decisions:
        old = claimed[new["index"]]
        if old != new:
            diff = sorted(k for k in set(old) | set(new) if old.get(k, "<absent>") != new.get(k, "<absent>"))
            raise Failed("facts/decisions.json",
                         f"the decision recorded for entry {new['index']} differs from the bundle's "
                         f"facts in field(s) {', '.join(diff)}")

    # 8.3: every regenerated file byte for byte.
    scope_obj = manifest_scope_object(scope, manifest)
    regenerated = {
        "facts/decisions.json": to_json(regenerated_decisions),
        "facts/entries.json": to_json(d.entries()),
        "facts/changes.json": to_json(d.changes()),
        "facts/obligations.json": to_json(d.obligations()),
        "facts/policies.json": to_json(d.policies()),
        "facts/principals.json": to_json(d.principals()),
        "oscal/assessment-results.json": to_json(d.oscal(scope_obj)),
    }
    for v in fold.versions:
        regenerated[f"policies/v{v['version']}.toml"] = v["policy"].text.encode("utf-8")
    for path in sorted(regenerated):
        require(path in files, path, "missing from the bundle")
        if files[path] != regenerated[path]:
            a, b = files[path], regenerated[path]
            off = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
            raise Failed(path, f"differs from the file regenerated from the bundle's entries "
                               f"(first difference at byte {off}: bundle "
                               f"{a[max(0, off - 30):off + 30]!r}, expected "
                               f"{b[max(0, off - 30):off + 30]!r})")

    # 8.4: no other member: the regenerated files, report.html and the ten primary names of
    # EF §3.1 (heads.bin's and subjects.bin's presence was already decided by step 7.2-7.3,
    # check_change_heads and check_subject_heads).
    allowed = set(regenerated) | {"manifest.json", "manifest.sig", "checkpoint.txt", "entries.bin",
                                  "proofs.bin", "report.html", HEADS, SUBJECTS, SINCE_NOTE,
                                  SINCE_PROOF}
    if rng is not None:
        allowed.add("range.bin")
    for path in canonical_order(list(files)):
        require(path in allowed, path, "not a file of this bundle format")
    require("report.html" in files, "report.html", "missing from the bundle")

    # 8.5: the manifest, regenerated.
    listed = [{"blake3": H(files[p]).hex(), "path": p, "size": len(files[p])}
              for p in sorted((p for p in files if p not in PRIMARY_ORDER_FIRST),
                              key=lambda p: p.encode())]
    new_manifest = {
        "as_of": fmt_time(as_of), "as_of_unix_nanos": as_of,
        "checkpoint": {"root": root.hex(), "size": n}, "entries": len(fold.records),
        "files": listed, "format": "docket-evidence/1", "origin": origin,
        "range": None if rng is None else {"end": rng[1], "start": rng[0]}, "scope": scope_obj}
    require(to_json(new_manifest) == files["manifest.json"], "manifest.json",
            "differs from the manifest regenerated from the bundle (unknown or duplicate fields, "
            "or text times that disagree with their integers)")
    return len(regenerated_decisions), len(d.violation_rows), len(regenerated)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def verify(bundle, key_name, keyid, log_key):
    files = check_archive(bundle)                                           # step 1
    manifest = check_manifest_basics(files, key_name)                       # step 2.1-2.2
    origin = manifest["origin"]
    check_manifest_sig(files, origin, keyid, log_key)                       # step 2.3-2.4
    check_listed_files(files, manifest)                                     # step 3
    n, root, heads, subject_heads = check_checkpoint(files, manifest, origin, keyid,
                                                     log_key)               # step 4
    since = check_since(files, origin, keyid, log_key, n, root)            # step 4.4
    records, rng, n_proofs = check_entries_and_proofs(files, manifest, n, root)   # step 5
    if isinstance(manifest.get("scope"), dict) and manifest["scope"].get("kind") == "change":
        complete = manifest["scope"].get("complete") is True
        require((rng is not None) == complete, "range.bin",
                "a complete change bundle must carry a range" if complete
                else "a change bundle carries no range unless its scope says it is complete")
    claimed_cache = {}

    def claimed():
        if "v" not in claimed_cache:
            claimed_cache["v"] = load_claimed_decisions(files)
        return claimed_cache["v"]

    scope, as_of = parse_scope(manifest)                                    # step 6.1
    boundary = None if scope["kind"] == "change" or rng is None else (rng[1] - 1, scope["to"])
    fold, view = check_fold(records, key_name, log_key, claimed, boundary)  # step 6
    heads_checked, subjects_checked = check_scope(fold, scope, as_of, rng, n, files, heads,
                                                  subject_heads)            # step 7
    n_dec, n_viol, n_regen = check_derived(files, manifest, view, scope, as_of, origin, n, root,
                                           rng, fold, heads_checked is not None,
                                           subjects_checked is not None)    # step 8
    range_text = f", range {rng[0]}..{rng[1]} proven complete" if rng else ""
    since_text = (f"consistent with the earlier checkpoint of size {since[0]} "
                  f"(root {since[1].hex()})\n" if since else "")
    heads_text = (f"change heads: the {heads_checked[0]} carried entries concerning change "
                  f"{scope['change']} make its leaf {heads_checked[1]} of the "
                  f"{heads_checked[2]} the checkpoint signs\n" if heads_checked else "")
    subjects_text = (f"subject heads: the {subjects_checked[1]} carried entries concerning the "
                     f"{subjects_checked[0]} proven subjects of change {scope['change']} make "
                     f"their leaves among the {subjects_checked[2]} the checkpoint signs\n"
                     if subjects_checked else "")
    return (since_text + f"OK: {len(records)} entries of log {origin} at checkpoint {n} ({n_proofs} inclusion "
            f"proofs{range_text}), {fold.signatures} signatures checked, {n_dec} decisions "
            f"cross-checked (verdicts not re-evaluated), {n_regen} derived files regenerated, "
            f"{len(files)} files digest-checked; {n_viol} violation(s) in scope\n"
            f"decision bases: {fold.decisions_based} of {len(fold.deployments)} carried deployments"
            f" record one, and the bundle carries every entry it counts\n"
            + heads_text + subjects_text +
            f"skipped: re-evaluating decisions (verdict, rule, reasons, which reviews counted) and "
            f"regenerating report.html, which the docs define by Docket's code "
            f"(report.html was only checked against the signed manifest digest)")


def main(argv):
    args = argv[1:]
    bundle_path = key_path = None
    i = 0
    while i < len(args):
        if args[i] == "--log-key" and i + 1 < len(args):
            key_path = args[i + 1]
            i += 2
        elif args[i].startswith("--log-key="):
            key_path = args[i].split("=", 1)[1]
            i += 1
        elif not args[i].startswith("-") and bundle_path is None:
            bundle_path = args[i]
            i += 1
        else:
            raise UsageError(f"unexpected argument {args[i]!r}")
    if bundle_path is None or key_path is None:
        raise UsageError("usage: independent_verify.py BUNDLE.tar --log-key LOG.vkey")
    try:
        with open(bundle_path, "rb") as fh:
            bundle = fh.read()
        with open(key_path, "r", encoding="utf-8") as fh:
            vkey_text = fh.read()
    except OSError as exc:
        raise UsageError(f"cannot read input: {exc}")
    try:
        key_name, keyid, log_key = parse_vkey(vkey_text)
    except (ValueError, UnicodeError) as exc:
        raise UsageError(f"invalid vkey {key_path}: {exc}")
    print(verify(bundle, key_name, keyid, log_key))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(64)
    except Failed as exc:
        print(f"FAILED: {exc.what} \u2014 {exc.why}")
        sys.exit(1)
