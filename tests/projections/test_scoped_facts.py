"""The read model keys facts by (tenant, fact id): two tenants may use one id."""

from __future__ import annotations

import uuid
from pathlib import Path

from events.commands import CastVote, DeprecateFact, StoreFact
from events.operations import Fact
from projections import queries
from projections.digest import digest
from projections.pool import ConnectionPool
from projections.projector import Projector
from projections.quarantine import quarantined
from projections.testing import LedgerBuilder, open_projector

FACT = uuid.UUID(int=42)


def _ledger() -> LedgerBuilder:
    ledger = LedgerBuilder()
    for tenant in ("a", "b"):
        ledger.agent("x", tenant)
        ledger.agent("y", tenant)
        ledger.add(
            StoreFact(id=uuid.uuid4(), fact_id=FACT, agent_id="x", content=f"{tenant}'s"), tenant
        )
    ledger.add(CastVote(id=uuid.uuid4(), fact_id=FACT, agent_id="x", value=1), "a")
    ledger.add(CastVote(id=uuid.uuid4(), fact_id=FACT, agent_id="y", value=1), "a")
    ledger.add(CastVote(id=uuid.uuid4(), fact_id=FACT, agent_id="x", value=-1), "b")
    ledger.add(CastVote(id=uuid.uuid4(), fact_id=FACT, agent_id="y", value=-1), "b")
    ledger.add(CastVote(id=uuid.uuid4(), fact_id=FACT, agent_id="y", value=0), "b")
    ledger.add(DeprecateFact(id=uuid.uuid4(), fact_id=FACT, agent_id="x"), "c")  # no such fact
    return ledger


async def _both(pool: ConnectionPool) -> tuple[Fact, Fact]:
    a = await queries.get_fact(pool, "a", FACT)
    b = await queries.get_fact(pool, "b", FACT)
    assert a is not None and b is not None
    return a, b


async def test_each_tenant_has_its_own_fact_and_votes_under_one_id(
    projected: tuple[ConnectionPool, Projector], tmp_path: Path
) -> None:
    pool, projector = projected
    ledger = _ledger()
    await projector.apply(ledger.records)
    a, b = await _both(pool)
    assert (a.content, a.consensus.votes_for, a.consensus.status) == ("a's", 2, "verified")
    assert (b.content, b.consensus.votes_against, b.consensus.votes_for) == ("b's", 1, 0)
    assert [q.reason for q in await quarantined(pool.path)] == ["unknown_fact"]

    # Reopened, the projector's book (loaded from the tables) keeps them apart too.
    again = Projector(pool)
    await again.open()
    ledger.add(CastVote(id=uuid.uuid4(), fact_id=FACT, agent_id="x", value=0), "b")
    await again.apply(ledger.records[-1:])
    a2, b2 = await _both(pool)
    assert a2 == a
    assert b2.consensus.status == "unvoted"

    # Every replay ends with the same rows.
    other_pool, other = await open_projector(tmp_path / "replayed.db")
    try:
        await other.apply(ledger.records)
        assert await digest(other_pool) == await digest(pool)
    finally:
        await other_pool.close()
