"""Helpers for tests and benchmarks: a ledger built in memory, a projector on a file.

Shipped with the package (as structlog ships ``structlog.testing``) so the
benchmarks and the tests build ledgers the same way.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from events.chain import GENESIS, link
from events.codec import encode
from events.commands import CastVote, Command, DeprecateFact, RegisterAgent, StoreFact, to_event
from projections.pool import ConnectionPool
from projections.projector import Projector, Record


class LedgerBuilder:
    """Appends events as the writer would (without checking them): (seq, body) records."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self._n = 0

    def _id(self) -> uuid.UUID:
        self._n += 1
        return uuid.UUID(int=(0x0190 << 112) | self._n)

    def add(self, command: Command, tenant: str = "acme") -> int:
        seq = len(self.records) + 1
        self.records.append(
            (seq, encode(to_event(command, tenant=tenant, ts=1_700_000_000_000_000_000 + seq)))
        )
        return seq

    def agent(self, agent_id: str, tenant: str = "acme") -> None:
        self.add(RegisterAgent(id=self._id(), agent_id=agent_id), tenant)

    def fact(self, agent_id: str, content: str, tenant: str = "acme", **fields: Any) -> uuid.UUID:
        fact_id = self._id()
        command = StoreFact(
            id=self._id(), fact_id=fact_id, agent_id=agent_id, content=content, **fields
        )
        self.add(command, tenant)
        return fact_id

    def vote(self, agent_id: str, fact_id: uuid.UUID, value: int, tenant: str = "acme") -> None:
        self.add(CastVote(id=self._id(), fact_id=fact_id, agent_id=agent_id, value=value), tenant)

    def deprecate(
        self,
        agent_id: str,
        fact_id: uuid.UUID,
        successor: uuid.UUID | None = None,
        tenant: str = "acme",
    ) -> None:
        self.add(
            DeprecateFact(
                id=self._id(),
                fact_id=fact_id,
                agent_id=agent_id,
                reason="old",
                successor_id=successor,
            ),
            tenant,
        )


@dataclass(frozen=True, slots=True)
class ChainedRecord:
    """One event as a ledger stores it: position, bytes, and the chain hashes beside them."""

    seq: int
    body: bytes
    prev_hash: bytes
    hash: bytes


class MemoryReader:
    """A ``projections.feed.LedgerReader`` over events held in memory, chained as the
    writer chains them: replay and feed tests need no server."""

    def __init__(self, records: Sequence[Record]) -> None:
        self.events: list[ChainedRecord] = []
        head = GENESIS
        for seq, body in records:
            own = link(head, body)
            self.events.append(ChainedRecord(seq, body, head, own))
            head = own

    async def read(self, start: int, end: int | None = None) -> AsyncIterator[ChainedRecord]:
        for event in self.events[start - 1 : end]:
            yield event

    async def follow(self, start: int) -> AsyncIterator[ChainedRecord]:
        """What there is from ``start``, then a wait for more that never comes."""
        async for event in self.read(start):
            yield event
        await asyncio.Event().wait()

    async def last_seq(self) -> int:
        return len(self.events)


async def open_projector(path: Path) -> tuple[ConnectionPool, Projector]:
    pool = ConnectionPool(path)
    await pool.open()
    projector = Projector(pool)
    await projector.open()
    return pool, projector
