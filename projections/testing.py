"""Helpers for tests and benchmarks: a ledger built in memory, a projector on a file.

Shipped with the package (as structlog ships ``structlog.testing``) so the
benchmarks and the tests build ledgers the same way.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

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


async def open_projector(path: Path) -> tuple[ConnectionPool, Projector]:
    pool = ConnectionPool(path)
    await pool.open()
    projector = Projector(pool)
    await projector.open()
    return pool, projector
