"""Edge cases on which ``events.ed25519`` (libsodium) and ``cryptography`` (OpenSSL)
must agree, or where they do not, on which the verifier keeps the stricter verdict.

RFC 8032 §7.1 TEST 1-3, then malleated and malformed inputs: S >= L, small-order
and non-canonical public keys and R, wrong lengths, one flipped bit.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from events import ed25519
from events.signing import check

#: The order of the base point.
L = 2**252 + 27742317777372353535851937790883648493
P = 2**255 - 19


class Vector(NamedTuple):
    secret: str
    public: str
    message: str
    signature: str


RFC8032 = [
    Vector(  # TEST 1: empty message
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555f"
        "b8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    Vector(  # TEST 2: one octet
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da08"
        "5ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    Vector(  # TEST 3: two octets
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18"
        "ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
]


def openssl(public: bytes, signature: bytes, message: bytes) -> bool:
    """``cryptography``'s verdict, any refusal (bad length, bad point, bad signature) False."""
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def _k(r: bytes, public: bytes, message: bytes) -> int:
    return int.from_bytes(hashlib.sha512(r + public + message).digest(), "little") % L


def _forgery(public: bytes, r: bytes, order: int, shift: int = 0) -> tuple[bytes, bytes]:
    """``(R || S=0, message)`` that a cofactorless check accepts when ``public`` (of
    ``order``) and ``R`` (= identity, or = [shift]A) are small-order: [0]B == R + [k]A."""
    for n in range(10_000):
        message = b"forged %d" % n
        if (_k(r, public, message) + shift) % order == 0:
            return r + bytes(32), message
    raise AssertionError("no message found")


def _le(n: int) -> bytes:
    return n.to_bytes(32, "little")


IDENTITY = _le(1)  # the neutral point (x 0, y 1), order 1
IDENTITY_NEG_ZERO = _le(1 | 1 << 255)  # same point, sign bit set with x = 0: non-canonical
IDENTITY_Y_PLUS_P = _le(P + 1)  # y = p + 1 >= p: non-canonical encoding of the identity
ORDER_2 = _le(P - 1)  # (0, -1)
ORDER_8 = bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa")

_key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUB = _key.public_key().public_bytes_raw()
MSG = b"cortex edge cases"
SIG = _key.sign(MSG)
S = int.from_bytes(SIG[32:], "little")


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


#: name -> (public key, signature, message, the verdict events.ed25519 must give)
CASES: dict[str, tuple[bytes, bytes, bytes, bool]] = {
    "good": (PUB, SIG, MSG, True),
    "S + L (non-canonical S)": (PUB, SIG[:32] + _le(S + L), MSG, False),
    "S = L": (PUB, SIG[:32] + _le(L), MSG, False),
    "S = 2^256 - 1": (PUB, SIG[:32] + b"\xff" * 32, MSG, False),
    "S = 0": (PUB, SIG[:32] + bytes(32), MSG, False),
    "identity key, identity R, S 0": (IDENTITY, *_forgery(IDENTITY, IDENTITY, 1), False),
    "order-2 key, identity R, S 0": (ORDER_2, *_forgery(ORDER_2, IDENTITY, 2), False),
    "order-8 key, identity R, S 0": (ORDER_8, *_forgery(ORDER_8, IDENTITY, 8), False),
    "order-8 key, R = the key": (ORDER_8, *_forgery(ORDER_8, ORDER_8, 8, shift=1), False),
    "good key, small-order R": (PUB, ORDER_8 + SIG[32:], MSG, False),
    "non-canonical key (y = p + 1)": (
        IDENTITY_Y_PLUS_P,
        *_forgery(IDENTITY_Y_PLUS_P, IDENTITY, 1),
        False,
    ),
    "non-canonical key (x = 0, sign 1)": (
        IDENTITY_NEG_ZERO,
        *_forgery(IDENTITY_NEG_ZERO, IDENTITY, 1),
        False,
    ),
    "non-canonical R (y = p + 1)": (IDENTITY, *_forgery(IDENTITY, IDENTITY_Y_PLUS_P, 1), False),
    "non-canonical R (x = 0, sign 1)": (IDENTITY, *_forgery(IDENTITY, IDENTITY_NEG_ZERO, 1), False),
    "key not on the curve": (_le(2), SIG, MSG, False),
    "signature 63 bytes": (PUB, SIG[:63], MSG, False),
    "signature 65 bytes": (PUB, SIG + b"\0", MSG, False),
    "signature empty": (PUB, b"", MSG, False),
    "key 31 bytes": (PUB[:31], SIG, MSG, False),
    "key 33 bytes": (PUB + b"\0", SIG, MSG, False),
    "key empty": (b"", SIG, MSG, False),
    "flipped bit in the message": (PUB, SIG, _flip(MSG, 3), False),
    "flipped bit in R": (PUB, _flip(SIG, 5), MSG, False),
    "flipped bit in S": (PUB, _flip(SIG, 300), MSG, False),
    "flipped bit in the key": (_flip(PUB, 9), SIG, MSG, False),
    "flipped top bit of S": (PUB, _flip(SIG, 511), MSG, False),
}

#: Where OpenSSL accepts what libsodium refuses (none the other way round): signatures
#: "by" a small-order or non-canonically encoded public key, which anyone can make (no
#: secret key behind them: R small-order, S 0). libsodium screens the key, OpenSSL does
#: not. The verifier keeps libsodium's (stricter) verdict.
OPENSSL_ONLY: frozenset[str] = frozenset(
    {
        "identity key, identity R, S 0",
        "order-2 key, identity R, S 0",
        "order-8 key, identity R, S 0",
        "order-8 key, R = the key",
        "non-canonical key (y = p + 1)",
        "non-canonical key (x = 0, sign 1)",
    }
)


@pytest.mark.parametrize("vector", RFC8032, ids=["test1", "test2", "test3"])
def test_rfc8032_vectors(vector: Vector) -> None:
    public, message = bytes.fromhex(vector.public), bytes.fromhex(vector.message)
    signature = bytes.fromhex(vector.signature)
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vector.secret))
    assert key.public_key().public_bytes_raw() == public
    assert key.sign(message) == signature  # cryptography still signs as the RFC does
    assert ed25519.verify(public, signature, message)
    assert openssl(public, signature, message)
    assert check(vector.public, vector.signature, message)
    assert not ed25519.verify(public, signature, message + b"\0")
    assert not ed25519.verify(public, _flip(signature, 0), message)


@pytest.mark.parametrize("name", list(CASES))
def test_edge_case_verdicts(name: str) -> None:
    public, signature, message, expected = CASES[name]
    ours, theirs = ed25519.verify(public, signature, message), openssl(public, signature, message)
    assert ours is expected
    assert ours is False or theirs is True  # never more lenient than cryptography
    assert (ours != theirs) is (name in OPENSSL_ONLY), (name, "libsodium", ours, "openssl", theirs)
    assert check(public.hex(), signature.hex(), message) is expected


def test_bad_hex_is_false() -> None:
    assert not check("zz" * 32, SIG.hex(), MSG)
    assert not check(PUB.hex(), "zz" * 64, MSG)
    assert not ed25519.verify_hex(PUB.hex(), SIG.hex()[:-1], MSG)
    assert ed25519.verify_hex(PUB.hex(), SIG.hex(), MSG)
