"""Signed checkpoints in the C2SP formats, so people and transparency tools can read them.

A checkpoint is a C2SP ``tlog-checkpoint`` body: the log's origin, the tree
size, the Merkle root (base64), then one extension line with the chain
head::

    cortex.ledger/5f0c9e1d2a7b3c44
    1000
    q8bG...=
    cortex-head 8d1f...

signed as a C2SP ``signed-note``: a blank line, then ``— <key name>
<base64(key id || Ed25519 signature)>``, the signature covering the body
including its final newline. The key id is ``SHA-256(name || 0x0A || 0x01
|| public key)[:4]``, and a verifier key is written ``name+hex(id)+base64(0x01
|| public key)``, as Go's ``sumdb/note`` reads it. The tree is RFC 6962's
with BLAKE3 instead of SHA-256 (see ``events/merkle.py``).

Pure: no I/O. Signing keys are ``cryptography`` Ed25519 objects; signatures are
checked on raw 32-byte keys by ``events.ed25519``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from events import ed25519

ED25519: Final = 0x01
HEAD_EXTENSION: Final = "cortex-head"
_DASH: Final = "\u2014 "
_NAME: Final = re.compile(r"^[^\s+]+$")


class NoteError(ValueError):
    """A note that cannot be parsed or whose signature does not hold."""


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte id binding a signature line to (name, Ed25519, key)."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([ED25519]) + public_key).digest()[:4]


def verifier_key(name: str, public_key: bytes) -> str:
    """The text a verifier is given: ``name+hex(id)+base64(0x01 || key)``."""
    encoded = base64.b64encode(bytes([ED25519]) + public_key).decode()
    return f"{name}+{key_id(name, public_key).hex()}+{encoded}"


def parse_verifier_key(text: str) -> tuple[str, bytes]:
    """``(name, public key)`` of a verifier key; raises ``NoteError`` if it is not one."""
    try:
        name, hex_id, encoded = text.strip().split("+", 2)
        blob = base64.b64decode(encoded, validate=True)
    except (ValueError, binascii.Error) as e:
        raise NoteError(f"not a verifier key (name+id+key): {text!r}") from e
    if len(blob) != 33 or blob[0] != ED25519:
        raise NoteError("the verifier key is not an Ed25519 key")
    public_key = blob[1:]
    if key_id(name, public_key).hex() != hex_id:
        raise NoteError("the verifier key's id does not match its name and key")
    return name, public_key


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What a checkpoint body says."""

    origin: str
    tree_size: int
    root: bytes
    head: bytes

    def body(self) -> str:
        root = base64.b64encode(self.root).decode()
        return f"{self.origin}\n{self.tree_size}\n{root}\n{HEAD_EXTENSION} {self.head.hex()}\n"


@dataclass(frozen=True, slots=True)
class SignedNote:
    """A parsed note: its body and its ``(key name, key id, signature)`` lines."""

    body: str
    signatures: tuple[tuple[str, bytes, bytes], ...]


def sign(body: str, name: str, private_key: Ed25519PrivateKey) -> str:
    """The signed note: ``body``, a blank line, one signature line."""
    if not _NAME.match(name):
        raise NoteError(f"a key name has no spaces or '+': {name!r}")
    if not body.endswith("\n") or "\n\n" in body:
        raise NoteError("a note body ends with a newline and has no blank line")
    public_key = raw_public(private_key.public_key())
    signature = private_key.sign(body.encode())
    blob = base64.b64encode(key_id(name, public_key) + signature).decode()
    return f"{body}\n{_DASH}{name} {blob}\n"


def parse(note: str) -> SignedNote:
    """Split a signed note into its body and signature lines (nothing verified yet)."""
    cut = note.rfind("\n\n")
    if cut < 0 or not note.endswith("\n"):
        raise NoteError("a signed note is a body, a blank line and signature lines")
    body, lines = note[: cut + 1], note[cut + 2 : -1].split("\n")
    signatures = []
    for line in lines:
        if not line.startswith(_DASH):
            raise NoteError(f"not a signature line: {line!r}")
        try:
            name, encoded = line[len(_DASH) :].split(" ")
            blob = base64.b64decode(encoded, validate=True)
        except (ValueError, binascii.Error) as e:
            raise NoteError(f"malformed signature line: {line!r}") from e
        if len(blob) == 4 + 8 + 64:
            continue  # a cosignature (tlog-cosignature): see ``verify_cosignature``
        if len(blob) != 4 + 64:
            raise NoteError("an Ed25519 signature line holds a 4-byte id and 64 bytes")
        signatures.append((name, blob[:4], blob[4:]))
    return SignedNote(body, tuple(signatures))


def verify(note: str, name: str, public_key: bytes) -> str:
    """The body of ``note`` if it carries a good signature by (name, key); else ``NoteError``."""
    parsed = parse(note)
    wanted = key_id(name, public_key)
    for signer, kid, signature in parsed.signatures:
        if signer == name and kid == wanted:
            if not ed25519.verify(public_key, signature, parsed.body.encode()):
                raise NoteError(f"the signature by {name} does not match the note")
            return parsed.body
    raise NoteError(f"the note carries no signature by {name}")


def parse_checkpoint(body: str) -> Checkpoint:
    """Read a checkpoint body; raises ``NoteError`` on anything unexpected."""
    lines = body.split("\n")
    if len(lines) < 4 or lines[-1] != "":
        raise NoteError("a checkpoint body has an origin, a size and a root")
    origin, size, root = lines[0], lines[1], lines[2]
    head = b""
    for extension in lines[3:-1]:
        key, _, value = extension.partition(" ")
        if key == HEAD_EXTENSION:
            try:
                head = bytes.fromhex(value)
            except ValueError as e:
                raise NoteError("the cortex-head line is not hex") from e
    if not size.isdigit() or (size.startswith("0") and size != "0"):
        raise NoteError(f"tree size {size!r} is not a decimal number")
    try:
        root_bytes = base64.b64decode(root, validate=True)
    except binascii.Error as e:
        raise NoteError("the root hash is not base64") from e
    if len(root_bytes) != 32 or len(head) != 32:
        raise NoteError("the root and the chain head are 32-byte hashes")
    return Checkpoint(origin, int(size), root_bytes, head)


# -- cosignatures (C2SP tlog-cosignature, cosignature/v1, Ed25519) ---------------

COSIGNATURE_V1: Final = 0x04


def cosigner_key_id(name: str, public_key: bytes) -> bytes:
    """``SHA-256(name || 0x0A || 0x04 || key)[:4]``: a cosignature line's key id."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([COSIGNATURE_V1]) + public_key).digest()[:4]


def cosigner_verifier_key(name: str, public_key: bytes) -> str:
    """A witness's verifier key: ``name+hex(id)+base64(0x04 || key)``."""
    encoded = base64.b64encode(bytes([COSIGNATURE_V1]) + public_key).decode()
    return f"{name}+{cosigner_key_id(name, public_key).hex()}+{encoded}"


def parse_cosigner_key(text: str) -> tuple[str, bytes]:
    """``(name, public key)`` of a witness's verifier key; ``NoteError`` if it is not one."""
    try:
        name, hex_id, encoded = text.strip().split("+", 2)
        blob = base64.b64decode(encoded, validate=True)
    except (ValueError, binascii.Error) as e:
        raise NoteError(f"not a witness verifier key (name+id+key): {text!r}") from e
    if len(blob) != 33 or blob[0] != COSIGNATURE_V1:
        raise NoteError("the witness key is not an Ed25519 cosignature/v1 key")
    if cosigner_key_id(name, blob[1:]).hex() != hex_id:
        raise NoteError("the witness key's id does not match its name and key")
    return name, blob[1:]


def _cosigned_message(body: str, timestamp: int) -> bytes:
    return f"cosignature/v1\ntime {timestamp}\n{body}".encode()


def cosign(body: str, name: str, private_key: Ed25519PrivateKey, timestamp: int) -> str:
    """One cosignature line (with its newline) on a checkpoint ``body`` at ``timestamp``."""
    if not 0 < timestamp < 2**63:
        raise NoteError("a cosignature's timestamp is a positive POSIX time")
    public_key = raw_public(private_key.public_key())
    signature = private_key.sign(_cosigned_message(body, timestamp))
    blob = cosigner_key_id(name, public_key) + timestamp.to_bytes(8, "big") + signature
    return f"{_DASH}{name} {base64.b64encode(blob).decode()}\n"


def verify_cosignature(note: str, name: str, public_key: bytes) -> int:
    """The timestamp of a good cosignature by (name, key) on ``note``; else ``NoteError``."""
    cut = note.rfind("\n\n")
    if cut < 0:
        raise NoteError("a signed note is a body, a blank line and signature lines")
    body = note[: cut + 1]
    wanted = cosigner_key_id(name, public_key)
    for line in note[cut + 2 :].splitlines():
        signer, _, encoded = line.removeprefix(_DASH).partition(" ")
        try:
            blob = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            continue
        if signer != name or blob[:4] != wanted or len(blob) != 4 + 8 + 64:
            continue
        timestamp = int.from_bytes(blob[4:12], "big")
        if not ed25519.verify(public_key, blob[12:], _cosigned_message(body, timestamp)):
            raise NoteError(f"the cosignature by {name} does not match the note")
        return timestamp
    raise NoteError(f"the note carries no cosignature by {name}")
