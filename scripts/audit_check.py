#!/usr/bin/env python3
"""Check an asap-sidecar audit export against signed checkpoints, offline.

An auditor's own verifier, independent of the sidecar's code: Python's
standard library plus the `cryptography` package for Ed25519. It checks
what `asap-caddy asap audit check` checks (docs/wire.md, "Audit log entries"):

  * every entry's hash = hex SHA-256 of "prev_hash|timestamp|operation|"
    followed by the RFC 8785 (JCS) canonical JSON of its details, and each
    prev_hash is the hash of the entry before (seq 0: empty);
  * the RFC 6962 Merkle tree over the entries (leaf data: the 32 bytes of
    the hash) has, at each checkpoint's size, the root the checkpoint signs;
  * each checkpoint is a signed note signed by one of the given keys.

Usage:
  audit_check.py --entries audit.json --checkpoint cp.txt [--checkpoint …] \\
                 --key 'urn:asap:agent:x/audit+1a2b3c4d+AXyz…' [--key …]

The export is json ({"entries": [...], "checkpoints": [...]}) or jsonl (an
entry a line; checkpoints on lines with "type": "checkpoint"). Exit 0 and
"valid: …" when everything checks, else exit 1 and what failed.
"""

import argparse
import base64
import hashlib
import json
import math
import sys
from decimal import Decimal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


class Broken(Exception):
    pass


# --- RFC 8785 canonical JSON ------------------------------------------------

def jcs(v):
    if v is None or isinstance(v, bool):
        return json.dumps(v)
    if isinstance(v, (int, float)):
        return es_number(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ",".join(jcs(x) for x in v) + "]"
    keys = sorted(v, key=lambda k: k.encode("utf-16-be"))  # UTF-16 code units
    return "{" + ",".join(jcs(k) + ":" + jcs(v[k]) for k in keys) + "}"


def es_number(x):
    """A number as ECMAScript's Number.prototype.toString writes it."""
    if isinstance(x, int) and abs(x) < 2**53:
        return str(x)
    x = float(x)
    if not math.isfinite(x):
        raise Broken("details hold a number JSON cannot hold")
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    t = Decimal(repr(abs(x))).as_tuple()  # repr: the shortest round-trip digits
    n = len(t.digits) + t.exponent  # where the decimal point goes
    d = "".join(map(str, t.digits)).rstrip("0")
    k = len(d)
    if k <= n <= 21:
        return sign + d + "0" * (n - k)
    if 0 < n <= 21:
        return sign + d[:n] + "." + d[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * -n + d
    e = n - 1
    return sign + d[0] + ("." + d[1:] if k > 1 else "") + "e" + ("+" if e > 0 else "-") + str(abs(e))


# --- RFC 6962 tree ------------------------------------------------------------

def leaf_hash(data):
    return hashlib.sha256(b"\x00" + data).digest()


def root(leaves):
    """MTH of RFC 6962 §2.1 over a list of leaf hashes."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)  # largest power of 2 below n
    return hashlib.sha256(b"\x01" + root(leaves[:k]) + root(leaves[k:])).digest()


# --- signed notes (golang.org/x/mod/sumdb/note) -------------------------------

def parse_vkey(vkey):
    try:
        name, keyhash, key = vkey.split("+", 2)  # base64 may hold "+"
        raw = base64.b64decode(key)
    except ValueError:
        raise SystemExit(f"--key {vkey!r}: not a note verifier key (name+hash+base64)")
    if len(raw) != 33 or raw[0] != 1:
        raise SystemExit(f"--key {vkey!r}: not an Ed25519 verifier key")
    if hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4].hex() != keyhash:
        raise SystemExit(f"--key {vkey!r}: its key hash does not match its key")
    return name, bytes.fromhex(keyhash), Ed25519PublicKey.from_public_bytes(raw[1:])


def open_checkpoint(signed, keys, label):
    """The (size, root) a checkpoint signs, if one of keys signed it."""
    cut = signed.rfind("\n\n")
    if cut < 0:
        raise Broken(f"checkpoint {label}: not a signed note")
    text, sigs = signed[: cut + 1], signed[cut + 2 :]
    for line in sigs.splitlines():
        if not line.startswith("\u2014 "):
            continue
        name, _, sig = line[2:].partition(" ")
        sig = base64.b64decode(sig)
        for kname, khash, pub in keys:
            if name == kname and sig[:4] == khash:
                try:
                    pub.verify(sig[4:], text.encode())
                except InvalidSignature:
                    raise Broken(f"checkpoint {label}: its signature does not verify")
                origin, size, b64root = text.split("\n")[:3]
                if origin != name:
                    raise Broken(f"checkpoint {label}: origin {origin!r} is not the signer {name!r}")
                return int(size), base64.b64decode(b64root)
    raise Broken(f"checkpoint {label}: not signed by any of the given keys")


# --- the export ---------------------------------------------------------------

def read_export(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and "entries" in doc:
        return doc["entries"], doc.get("checkpoints") or []
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    return ([x for x in lines if x.get("type") != "checkpoint"],
            [x for x in lines if x.get("type") == "checkpoint"])


def check(entries, checkpoints, keys):
    leaves, prev = [], ""
    for seq, e in enumerate(entries):
        if e["seq"] != seq:
            raise Broken(f"BROKEN at seq {seq}: entry {seq} is missing or out of order (found seq {e['seq']})")
        if e["prev_hash"] != prev:
            raise Broken(f"BROKEN at seq {seq}: prev_hash does not link to entry {seq - 1}'s hash")
        data = f"{prev}|{e['timestamp']}|{e['operation']}|{jcs(e['details'])}"
        h = hashlib.sha256(data.encode()).hexdigest()
        if h != e["hash"]:
            raise Broken(f"BROKEN at seq {seq}: hash does not match the entry's content")
        leaves.append(leaf_hash(bytes.fromhex(h)))
        prev = h
    if not checkpoints:
        raise Broken("no checkpoint to check the entries against")
    largest = 0
    for label, signed in checkpoints:
        size, signed_root = open_checkpoint(signed, keys, label)
        if size > len(leaves):
            raise Broken(f"checkpoint {label}: signed at size {size}, but the export has only {len(leaves)} entries (export truncated)")
        if root(leaves[:size]) != signed_root:
            raise Broken(f"checkpoint {label}: its root does not match entries 0 to {size - 1}")
        largest = max(largest, size)
    return f"valid: {len(leaves)} entries, {len(checkpoints)} checkpoints checked, largest at size {largest}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--entries", required=True, help="json or jsonl export")
    p.add_argument("--checkpoint", action="append", default=[], help="signed checkpoint file (repeatable)")
    p.add_argument("--key", action="append", required=True, help="note verifier key (repeatable)")
    args = p.parse_args()
    keys = [parse_vkey(k) for k in args.key]
    entries, carried = read_export(args.entries)
    cps = [(f, open(f, encoding="utf-8").read()) for f in args.checkpoint]
    cps += [(f"carried in the export at size {c['size']}", c["note"]) for c in carried]
    try:
        print(check(entries, cps, keys))
    except Broken as err:
        print(err)
        sys.exit(1)


if __name__ == "__main__":
    main()
