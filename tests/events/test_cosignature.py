"""Cosignatures per C2SP tlog-cosignature (cosignature/v1, Ed25519)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from events.note import (
    Checkpoint,
    NoteError,
    cosign,
    cosigner_verifier_key,
    parse_cosigner_key,
    raw_public,
    sign,
    verify,
    verify_cosignature,
)


def test_a_cosigned_note_still_verifies_for_the_log_and_for_the_witness() -> None:
    """The witness line is appended to the log's note; each verifier finds its own line,
    and the timestamp signed with it comes back."""
    log, witness = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    body = Checkpoint("cortex.ledger/00", 3, bytes(32), bytes(32)).body()
    note = sign(body, "writer", log)
    cosigned = note + cosign(body, "witness.example/w1", witness, 1_700_000_000)
    assert verify(cosigned, "writer", raw_public(log.public_key())) == body
    key = cosigner_verifier_key("witness.example/w1", raw_public(witness.public_key()))
    name, public = parse_cosigner_key(key)
    assert verify_cosignature(cosigned, name, public) == 1_700_000_000
    with pytest.raises(NoteError):
        verify_cosignature(cosigned.replace("\n3\n", "\n4\n"), name, public)
    with pytest.raises(NoteError):
        verify_cosignature(note, name, public)
