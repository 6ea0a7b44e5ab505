"""Writer key rotation recorded in the ledger: the old key signs the new one.

``cortex up --key NEW --rotate-from OLD`` records the new key in a
``WriterKeyAdded`` event that carries the old key's signature over a
statement naming this ledger (its origin, the first event's hash) and the
new key. An auditor who pins the old key can follow the chain of keys; the
audit accepts an endorsed key only when a writer key recorded before it
signed it (``audit_key``, called by ``events.verify``).
"""

from __future__ import annotations

from collections.abc import Callable, Container
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from events import signing
from events.model import WriterKeyAdded
from events.note import raw_public

DOMAIN: Final = b"cortex.writer-key-rotation.v1\0"


def statement(origin: bytes, new_public_hex: str) -> bytes:
    """What the old key signs: this ledger and the new key."""
    return DOMAIN + origin + bytes.fromhex(new_public_hex)


def endorse(old: Ed25519PrivateKey, origin: bytes, new_public_hex: str) -> tuple[str, str]:
    """``(endorsed_by, endorsement)`` for the ``WriterKeyAdded`` of ``new_public_hex``."""
    signature = old.sign(statement(origin, new_public_hex)).hex()
    return raw_public(old.public_key()).hex(), signature


def problem(event: WriterKeyAdded, known: Container[str], origin: bytes) -> str | None:
    """Why an endorsed key must not be accepted, or None (not endorsed, or endorsed well)."""
    if event.endorsed_by is None and event.endorsement is None:
        return None
    if event.endorsed_by is None or event.endorsement is None:
        return "a rotation names its endorsing key and carries its signature, or neither"
    if event.endorsed_by not in known:
        return f"endorsed by {event.endorsed_by[:16]}…, which is no earlier writer key"
    if not signing.check(event.endorsed_by, event.endorsement, statement(origin, event.public_key)):
        return f"the endorsement is not {event.endorsed_by[:16]}…'s signature of this key"
    return None


def audit_key(
    event: WriterKeyAdded,
    seq: int,
    known: Container[str],
    origin: bytes,
    found: Callable[[str, int, str], None],
) -> None:
    """Report a rotation its old key did not sign as a ``checkpoint_signature`` violation."""
    wrong = problem(event, known, origin)
    if wrong is not None:
        found("checkpoint_signature", seq, f"writer key {event.public_key[:16]}…: {wrong}")
