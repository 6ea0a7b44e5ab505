"""The ledger as the projector wants it, over any reader of stored events.

A projection only needs the events in order with the hashes the ledger
recorded beside them. ``LedgerReader`` names that much and no more, so this
package can rebuild a database from JetStream (``cortex.nats.Bus`` fits it),
from a file or from memory without knowing which, and never imports NATS.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from events.chain import StoredRecord, link
from events.errors import LedgerMismatch
from projections.projector import Record


class LedgerReader(Protocol):
    """Where stored events come from, in sequence order."""

    def read(self, start: int, end: int | None, /) -> AsyncIterator[StoredRecord]:
        """The events from ``start`` to ``end`` (inclusive; None: to the current end)."""
        ...

    def follow(self, start: int, /) -> AsyncIterator[StoredRecord]:
        """The events from ``start`` on, waiting for new ones without end."""
        ...

    async def last_seq(self) -> int:
        """The sequence of the last stored event (0 for an empty ledger)."""
        ...


async def records(
    reader: LedgerReader, start: int, end: int | None = None, *, head: bytes | None = None
) -> AsyncIterator[Record]:
    """The ledger as (seq, body) from ``start``: to ``end`` if given, else followed live.

    With ``head`` (the chain hash before ``start``), every event must link to
    the one before and hash to what the ledger recorded for it; a projection
    never applies a stream that was tampered with.
    """
    source = reader.read(start, end) if end is not None else reader.follow(start)
    async for stored in source:
        if head is not None:
            if stored.prev_hash != head or link(head, stored.body) != stored.hash:
                raise LedgerMismatch(
                    f"the ledger's event at seq {stored.seq} does not follow the chain: "
                    "nothing more is projected; run `cortex audit`"
                )
            head = stored.hash
        yield stored.seq, stored.body
