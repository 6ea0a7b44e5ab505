"""Agent signatures: Ed25519 over the canonical body of the event a command becomes.

What is signed is the event, not the command as sent: ``to_event`` with the
tenant, ``ts`` 0 and no signature, canonically encoded, after a domain
prefix. So the signature binds the tenant, the event id and every field in
the exact form the ledger keeps (world times in UTC), and anyone holding
the ledger and the agent's registered key can check it again, the writer
at the door and ``cortex audit`` long after. A signature taken from one
command does not fit another: a new id, another tenant or one changed field
makes it fail.
"""

from __future__ import annotations

import functools
from typing import Final, TypeVar

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from events import ed25519
from events.codec import encode
from events.commands import Command, to_event
from events.model import Event

#: Signatures made before agents named the ledger (still checked: old ledgers audit).
DOMAIN: Final = b"cortex.command.v1\0"
#: Followed by the ledger's origin (its first event's hash, 32 bytes): a signature
#: made for one deployment does not hold on another.
DOMAIN_V2: Final = b"cortex.command.v2\0"

C = TypeVar("C", bound=Command)


def signed_bytes(event: Event, origin: bytes = b"") -> bytes:
    """The bytes an agent signs for ``event`` (its ``ts`` and ``signature`` left out) in
    the ledger of ``origin`` (b"": the v1 form, which names no ledger)."""
    body = encode(msgspec.structs.replace(event, ts=0, signature=None))
    return DOMAIN_V2 + origin + body if origin else DOMAIN + body


def command_bytes(command: Command, tenant: str, origin: bytes = b"") -> bytes:
    """The bytes an agent signs for ``command`` sent under ``tenant`` to the ledger of
    ``origin``."""
    unsigned = msgspec.structs.replace(command, signature=None)
    return signed_bytes(to_event(unsigned, tenant=tenant, ts=0), origin)


def sign_command(command: C, tenant: str, key: Ed25519PrivateKey, origin: bytes = b"") -> C:
    """``command`` with its signature by ``key``, for the ledger of ``origin``."""
    signature = key.sign(command_bytes(command, tenant, origin)).hex()
    return msgspec.structs.replace(command, signature=signature)


def check_command(
    public_key_hex: str,
    signature_hex: str,
    command: Command,
    tenant: str,
    origin: bytes,
    *,
    unbound: bool = True,
) -> bool:
    """Whether the signature holds for ``command`` in the ledger of ``origin``: signed
    naming that origin, or (``unbound``) in the older form that names none."""
    return (
        bool(origin)
        and check(public_key_hex, signature_hex, command_bytes(command, tenant, origin))
    ) or (unbound and check(public_key_hex, signature_hex, command_bytes(command, tenant)))


def is_unbound(public_key_hex: str, signature_hex: str, command: Command, tenant: str) -> bool:
    """Whether the signature holds only in the older form, which names no ledger (and
    so could have been taken from another deployment)."""
    return check(public_key_hex, signature_hex, command_bytes(command, tenant))


def is_signable(value: Command | Event) -> bool:
    """Whether this kind of command or event carries an agent signature."""
    return hasattr(value, "signature")


@functools.lru_cache(maxsize=4096)
def public_key(public_key_hex: str) -> bytes:
    """The raw 32 bytes of a registered hex key, decoded once (b"" if it is not hex)."""
    try:
        return bytes.fromhex(public_key_hex)
    except ValueError:
        return b""


def check(public_key_hex: str, signature_hex: str, payload: bytes) -> bool:
    """Whether ``signature_hex`` is the key's Ed25519 signature of ``payload``."""
    try:
        signature = bytes.fromhex(signature_hex)
    except ValueError:
        return False
    return ed25519.verify(public_key(public_key_hex), signature, payload)


def verify_event(event: Event, public_key_hex: str, origin: bytes = b"") -> bool:
    """Whether a stored event carries its agent's good signature (for the ledger of
    ``origin``, or in the older form that names no ledger)."""
    signature = getattr(event, "signature", None)
    if signature is None:
        return False
    if origin and check(public_key_hex, signature, signed_bytes(event, origin)):
        return True
    return check(public_key_hex, signature, signed_bytes(event))
