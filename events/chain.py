"""The hash chain that links every ledger event to the one before it.

``hash(n) = BLAKE3(DOMAIN || hash(n-1) || body(n))`` where ``body`` is the
exact stored bytes of event ``n`` and the first event links to ``GENESIS``.
The domain tag keeps these hashes from ever being confused with any other
BLAKE3 use (Merkle leaves, signatures). Changing, removing, inserting or
reordering any event changes every hash after it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Final, Protocol

import blake3

#: The domain-separation prefix of every chain hash.
DOMAIN: Final = b"cortex.ledger.event.v1\x00"
#: The link of the first event: 32 zero bytes.
GENESIS: Final = bytes(32)
HASH_SIZE: Final = 32


class _PerThread(threading.local):
    """One BLAKE3 hasher per thread, reused with ``reset``.

    Most of a BLAKE3 call on a few hundred bytes is the making of the hasher:
    reusing one costs about a quarter less. One per thread, because a hasher
    shared by two threads at once would mix their inputs.
    """

    def __init__(self) -> None:
        self.hasher = blake3.blake3()


_per_thread: Final = _PerThread()


def hasher() -> blake3.blake3:
    """This thread's reusable hasher: ``reset`` it before each use, and use it
    only until the next call that may hash (nothing else on this thread may
    be between its ``reset`` and its ``digest``)."""
    return _per_thread.hasher


def link(prev_hash: bytes, body: bytes) -> bytes:
    """The chain hash of ``body`` appended after an event whose hash is ``prev_hash``."""
    h = _per_thread.hasher
    h.reset()
    # One update of one buffer: the copy costs less than two more method calls.
    return h.update(DOMAIN + prev_hash + body).digest()


class StoredRecord(Protocol):
    """One event as the ledger stores it: its position, exact bytes and chain links.

    What every reader of the ledger yields (``cortex.nats.StoredEvent`` is one)
    and what the projector, the audit and proofs need of it.
    """

    @property
    def seq(self) -> int: ...
    @property
    def body(self) -> bytes: ...
    @property
    def prev_hash(self) -> bytes: ...
    @property
    def hash(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Violation:
    """One thing wrong with a ledger, at a position a person can go and look at."""

    type: str
    seq: int
    detail: str
    #: Where, when a seq does not say it: a database, table and row.
    location: str = ""

    @property
    def where(self) -> str:
        return self.location or f"seq {self.seq}"


class ChainVerifier:
    """Checks a ledger read in sequence order, one stored event at a time.

    It needs nothing but what is stored: the sequence, the body, and the
    previous and own hash the writer recorded beside it. Each ``check``
    returns the violations found at that position; the verifier then goes
    on from the recorded hash, so one altered event is reported once, not
    at every event after it.
    """

    def __init__(self, head: bytes = GENESIS, last_seq: int = 0) -> None:
        #: Its own hasher: a verifier is fed by one thread at a time.
        self._hasher = blake3.blake3()
        self.head = head
        self.last_seq = last_seq
        self.count = 0
        #: The hash this verifier computed for the last event, and the one before it.
        self.computed = head
        self.computed_before = head

    def follows(self, seq: int, body: bytes, prev_hash: bytes, claimed_hash: bytes) -> bool:
        """The common case in one step: if the event is the next one, links to the
        head and hashes to what was recorded, take it and say True; otherwise
        change nothing and say False (then ``check`` says what is wrong)."""
        h = self._hasher
        h.reset()
        own = h.update(DOMAIN + prev_hash + body).digest()
        if seq != self.last_seq + 1 or own != claimed_hash or prev_hash != self.head:
            return False
        self.computed_before, self.computed = self.computed, own
        self.head = claimed_hash
        self.last_seq = seq
        self.count += 1
        return True

    def check(
        self, seq: int, body: bytes, prev_hash: bytes, claimed_hash: bytes
    ) -> list[Violation]:
        found: list[Violation] = []
        if seq != self.last_seq + 1:
            found.append(
                Violation(
                    "sequence_gap",
                    seq,
                    f"expected seq {self.last_seq + 1}, found {seq}: events "
                    f"{self.last_seq + 1}..{seq - 1} are missing",
                )
            )
        own = link(prev_hash, body)
        self.computed_before, self.computed = self.computed, own
        if own != claimed_hash:
            found.append(
                Violation(
                    "hash_mismatch",
                    seq,
                    f"recorded hash {claimed_hash.hex()[:16]}… but its bytes hash to "
                    f"{own.hex()[:16]}…: the event was altered after it was written",
                )
            )
        if prev_hash != self.head:
            found.append(
                Violation(
                    "chain_break",
                    seq,
                    f"links to {prev_hash.hex()[:16]}… but the event before it hashes to "
                    f"{self.head.hex()[:16]}…",
                )
            )
        # Go on from what the next event should link to, so one edit is one report.
        self.head = claimed_hash
        self.last_seq = seq
        self.count += 1
        return found
