"""Events the projector cannot apply are set aside, the same way everywhere, and the
rest of the ledger (the rest of their batch included) is projected."""

from __future__ import annotations

import uuid
from pathlib import Path

import msgspec

from events.codec import decode_event, encode
from events.commands import CastVote, StoreFact
from projections import queries
from projections.digest import digest
from projections.quarantine import Quarantined, quarantined
from projections.replay import replay
from projections.testing import LedgerBuilder, MemoryReader, open_projector


def _forged(ledger: LedgerBuilder) -> list[Quarantined]:
    """Appends one event of each kind a projector cannot apply; what it must record."""
    ledger.agent("a")
    fact = ledger.fact("a", "the first claim")
    n = len(ledger.records)
    ledger.add(StoreFact(id=uuid.uuid4(), fact_id=fact, agent_id="a", content="a second claim"))
    ghost = uuid.UUID(int=7)
    ledger.vote("a", ghost, 1)
    ledger.add(CastVote(id=uuid.uuid4(), fact_id=fact, agent_id="a", value=7))
    ledger.vote("a", fact, 1, tenant="rival")  # the fact is acme's
    late = decode_event(ledger.records[0][1])
    ledger.records.append((n + 5, encode(msgspec.structs.replace(late, ts=2**64 - 1))))
    ledger.records.append((n + 6, b'{"kind": "fact_stored", "id": "not a uuid"}'))
    return [
        Quarantined(n + 1, "fact_id_reused", f"fact {fact} was stored before"),
        Quarantined(n + 2, "unknown_fact", f"no fact {ghost} in tenant acme"),
        Quarantined(n + 3, "invalid_vote", "a vote of 7"),
        Quarantined(n + 4, "unknown_fact", f"no fact {fact} in tenant rival"),
        Quarantined(n + 5, "out_of_range", f"ts {2**64 - 1} is not a 64-bit integer"),
        Quarantined(n + 6, "undecodable", "the body is not a CORTEX event"),
    ]


async def test_bad_events_are_quarantined_and_the_rest_of_their_batch_applied(
    ledger: LedgerBuilder, tmp_path: Path
) -> None:
    """One transaction holds good events before and after six bad ones: the good ones
    are all applied, the bad ones recorded with a reason, the position at the end."""
    expected = _forged(ledger)
    after = ledger.fact("a", "said after the forgeries")
    ledger.vote("a", after, 1)
    pool, projector = await open_projector(tmp_path / "node.db")
    try:
        await projector.apply(ledger.records)  # one batch, one transaction
        assert projector.seq == len(ledger.records)
        assert projector.quarantined == len(expected)
        fact = await queries.get_fact(pool, "acme", after)
        assert fact is not None
        assert fact.consensus.votes_for == 1
        first = [f.content for f in await queries.list_facts(pool, "acme")]
        assert "a second claim" not in first  # the reused id did not replace the fact
        live = await digest(pool)
    finally:
        await pool.close()
    assert await quarantined(tmp_path / "node.db") == expected
    # A fresh replay, in other batches, makes the same choices: the same digest.
    rebuilt = await replay(MemoryReader(ledger.records), tmp_path / "fresh.db")
    assert rebuilt.digest == live
    assert await quarantined(tmp_path / "fresh.db") == expected
    # One event per transaction: the same again.
    pool, single = await open_projector(tmp_path / "single.db")
    try:
        for record in ledger.records:
            await single.apply([record])
        assert await digest(pool) == live
    finally:
        await pool.close()
    # And a reopened projector counts what it holds.
    pool, again = await open_projector(tmp_path / "node.db")
    await pool.close()
    assert again.quarantined == len(expected)


async def test_a_second_deprecation_is_quarantined_and_the_first_holds(tmp_path: Path) -> None:
    """Only a forger appends a second deprecation: it must not rewrite who deprecated the fact
    and when (the writer keeps the first; as-of reads would disagree with a replay)."""
    ledger = LedgerBuilder()
    ledger.agent("a")
    ledger.agent("m")
    fact = ledger.fact("a", "the first holds")
    ledger.deprecate("a", fact)
    first = len(ledger.records)
    ledger.deprecate("m", fact)
    pool, projector = await open_projector(tmp_path / "n.db")
    try:
        await projector.apply(ledger.records)
        now = await queries.get_fact(pool, "acme", fact)
        assert now is not None and now.deprecated is not None
        assert (now.deprecated.by, now.deprecated.seq) == ("a", first)
    finally:
        await pool.close()
    assert [(q.seq, q.reason) for q in await quarantined(tmp_path / "n.db")] == [
        (first + 1, "already_deprecated")
    ]
