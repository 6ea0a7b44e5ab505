"""The one Ed25519 verifier: agent signatures, signed notes, cosignatures, rotations.

Verification goes through libsodium (PyNaCl): about twice as fast as
``cryptography`` here, and it releases the GIL, so signatures can be checked
in a thread while another reads and hashes. Signing stays with
``cryptography`` (key files are unchanged).

libsodium is the stricter of the two (``tests/events/test_ed25519_vectors.py``):
besides a non-canonical S (S >= L), which both refuse, it refuses small-order
public keys and small-order or non-canonical R, which OpenSSL accepts. No
honest signer produces any of these.
"""

from __future__ import annotations

from typing import Final

from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

KEY_BYTES: Final = 32
SIGNATURE_BYTES: Final = 64


def verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` is the Ed25519 signature of ``message`` by ``public_key``
    (32 raw bytes); any malformed input is a plain ``False``."""
    if len(public_key) != KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False  # libsodium reads fixed lengths: never hand it a short buffer
    try:
        crypto_sign_open(signature + message, public_key)
    except BadSignatureError:
        return False
    return True


def verify_hex(public_key_hex: str, signature_hex: str, message: bytes) -> bool:
    """``verify`` on hex-encoded key and signature; bad hex is ``False``."""
    try:
        public_key, signature = bytes.fromhex(public_key_hex), bytes.fromhex(signature_hex)
    except (ValueError, TypeError):
        return False
    return verify(public_key, signature, message)
