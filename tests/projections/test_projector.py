"""The projector: one transaction per batch, exact consensus, deterministic rows."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import pytest

from events.codec import encode
from events.errors import LedgerMismatch
from events.model import WriterKeyAdded
from events.operations import Fact
from projections import queries
from projections.digest import digest
from projections.pool import ConnectionPool
from projections.projector import Projector
from projections.testing import LedgerBuilder, open_projector

Projected = tuple[ConnectionPool, Projector]


async def test_facts_votes_and_deprecation_become_rows(
    ledger: LedgerBuilder, projected: Projected
) -> None:
    pool, projector = projected
    ledger.agent("ann")
    old = ledger.fact("ann", "Pluto is a planet", tags=("astronomy",), confidence=0.5)
    new = ledger.fact("ann", "Pluto is a dwarf planet", meta={"iau": 2006})
    ledger.deprecate("ann", old, successor=new)
    await projector.apply(ledger.records)

    fact = await queries.get_fact(pool, "acme", new)
    assert fact is not None
    assert fact.content == "Pluto is a dwarf planet"
    assert fact.meta == {"iau": 2006}
    assert fact.deprecated is None
    gone = await queries.get_fact(pool, "acme", old)
    assert gone is not None
    assert gone.deprecated is not None
    assert gone.deprecated.successor_id == str(new)
    assert gone.tags == ["astronomy"]
    current = await queries.list_facts(pool, "acme")
    assert [f.fact_id for f in current] == [str(new)]
    history = await queries.history(pool, "acme", new)
    assert history is not None
    assert history.replaces == [str(old)]
    assert projector.seq == 4


async def test_consensus_and_reputation_match_hand_computed_values(
    ledger: LedgerBuilder, projected: Projected
) -> None:
    """The documented formula, worked by hand (see projections/consensus.py)."""
    pool, projector = projected
    for agent in ("a", "b", "c"):
        ledger.agent(agent)
    f1 = ledger.fact("a", "one")
    f2 = ledger.fact("c", "two")
    ledger.vote("a", f1, 1)
    ledger.vote("b", f1, 1)  # 2 voters, score 1 → verified; a, b agree (rep 2/3)
    await projector.apply(ledger.records)
    c1 = await queries.consensus_of(pool, "acme", f1)
    assert c1 is not None
    assert (c1.score, c1.weight, c1.status) == (1.0, 1.0, "verified")

    ledger.vote("a", f2, 1)
    ledger.vote("c", f2, -1)  # (2/3 - 1/2) / (2/3 + 1/2) = 1/7
    await projector.apply(ledger.records[projector.seq :])
    c2 = await queries.consensus_of(pool, "acme", f2)
    assert c2 is not None
    assert c2.score == pytest.approx(1 / 7, abs=0)
    assert c2.weight == 7 / 6
    assert c2.status == "disputed"

    ledger.vote("b", f2, -1)  # (2/3 - 2/3 - 1/2) / (11/6) = -3/11
    ledger.vote("a", f2, 0)  # a withdraws: b, c at -1 → score -1 → rejected; b, c agree
    await projector.apply(ledger.records[projector.seq :])
    c2 = await queries.consensus_of(pool, "acme", f2)
    assert c2 is not None
    assert (c2.score, c2.weight, c2.status, c2.votes_for, c2.votes_against) == (
        -1.0,
        7 / 6,
        "rejected",
        0,
        2,
    )
    reps = {
        a.agent_id: (a.agrees, a.disagrees, a.reputation)
        for a in await queries.agents(pool, "acme")
    }
    assert reps == {"a": (1, 0, 2 / 3), "b": (2, 0, 3 / 4), "c": (1, 0, 2 / 3)}

    ledger.vote("c", f1, -1)  # f1 unsettles: (1/2 + 2/3 - 2/3) / (11/6) = 3/11
    await projector.apply(ledger.records[projector.seq :])
    c1 = await queries.consensus_of(pool, "acme", f1)
    assert c1 is not None
    assert c1.score == 3 / 11
    assert c1.status == "disputed"
    counts = {a.agent_id: (a.agrees, a.disagrees) for a in await queries.agents(pool, "acme")}
    assert counts == {"a": (0, 0), "b": (1, 0), "c": (1, 0)}


async def test_a_later_vote_replaces_the_earlier_and_history_keeps_both(
    ledger: LedgerBuilder, projected: Projected
) -> None:
    pool, projector = projected
    ledger.agent("a")
    f = ledger.fact("a", "x")
    ledger.vote("a", f, 1)
    ledger.vote("a", f, -1)
    await projector.apply(ledger.records)
    h = await queries.history(pool, "acme", f)
    assert h is not None
    assert [v.value for v in h.current_votes] == [-1]
    assert [(e.kind, e.value) for e in h.events] == [
        ("fact_stored", None),
        ("vote_cast", 1),
        ("vote_cast", -1),
    ]


async def test_batch_boundaries_do_not_change_a_single_row(
    ledger: LedgerBuilder, tmp_path: Path
) -> None:
    """Determinism: one event per transaction or all at once, the digest is the same."""
    for agent in ("a", "b", "c", "d"):
        ledger.agent(agent)
    facts = [ledger.fact("abcd"[i % 4], f"fact {i}") for i in range(30)]
    for i, f in enumerate(facts):
        for j, agent in enumerate("abcd"):
            ledger.vote(agent, f, 1 if (i + j) % 3 else -1)
    ledger.vote("a", facts[0], 0)
    pool1, p1 = await open_projector(tmp_path / "one.db")
    for record in ledger.records:
        await p1.apply([record])
    pool2, p2 = await open_projector(tmp_path / "all.db")
    await p2.apply(ledger.records)
    try:
        assert await digest(pool1) == await digest(pool2)
    finally:
        await pool1.close()
        await pool2.close()


async def test_a_failed_batch_leaves_no_trace_and_can_be_retried(
    ledger: LedgerBuilder, tmp_path: Path
) -> None:
    """A batch that fails midway (here: a gap before its last event) commits nothing,
    position included. (An undecodable event no longer fails a batch: it is quarantined.)"""
    ledger.agent("a")
    f = ledger.fact("a", "x")
    ledger.vote("a", f, 1)
    pool, projector = await open_projector(tmp_path / "n.db")
    try:
        await projector.apply(ledger.records[:1])
        before = await digest(pool)
        with pytest.raises(LedgerMismatch, match="expected seq 3 next but got 4"):
            await projector.apply([ledger.records[1], (4, ledger.records[2][1])])
        assert await digest(pool) == before
        assert projector.seq == 1
        await projector.apply(ledger.records[1:])
        assert projector.seq == 3
    finally:
        await pool.close()
    # A fresh projector on the same file resumes from the stored position.
    pool, again = await open_projector(tmp_path / "n.db")
    try:
        assert (again.seq, again.head) == (projector.seq, projector.head)
        fact = await queries.get_fact(pool, "acme", f)
        assert fact is not None
        assert fact.consensus.votes_for == 1
    finally:
        await pool.close()


async def test_gaps_and_repeats_are_refused(ledger: LedgerBuilder, projected: Projected) -> None:
    _, projector = projected
    ledger.agent("a")
    ledger.agent("b")
    ledger.agent("c")
    await projector.apply(ledger.records[:1])
    with pytest.raises(LedgerMismatch, match="expected seq 2"):
        await projector.apply(ledger.records[2:])
    with pytest.raises(LedgerMismatch):
        await projector.apply(ledger.records[:1])
    assert projector.seq == 1


async def test_every_query_is_scoped_to_its_tenant(
    ledger: LedgerBuilder, projected: Projected
) -> None:
    pool, projector = projected
    ledger.agent("a", tenant="acme")
    ledger.agent("a", tenant="rival")
    ours = ledger.fact("a", "secret acme plan", tenant="acme")
    ledger.vote("a", ours, 1, tenant="acme")
    await projector.apply(ledger.records)
    assert await queries.get_fact(pool, "rival", ours) is None
    assert await queries.consensus_of(pool, "rival", ours) is None
    assert await queries.history(pool, "rival", ours) is None
    assert await queries.list_facts(pool, "rival") == []
    assert await queries.search(pool, "rival", "secret plan") == []
    assert [a.agent_id for a in await queries.agents(pool, "rival")] == ["a"]
    assert len(await queries.search(pool, "acme", "secret plan")) == 1


async def test_search_ranks_better_matches_first(
    ledger: LedgerBuilder, projected: Projected
) -> None:
    pool, projector = projected
    ledger.agent("a")
    ledger.fact("a", "The cat sat on the mat")
    best = ledger.fact("a", "Cat food: cats love cat food", tags=("cat",))
    ledger.fact("a", "Dogs bark")
    await projector.apply(ledger.records)
    hits = await queries.search(pool, "acme", "cat")
    assert next(h.fact_id for h in hits) == str(best)
    assert len(hits) == 2
    assert "[" in hits[0].snippet
    assert (
        await queries.search(pool, "acme", 'cat" OR 1=1 --') is not None
    )  # no FTS syntax injection


async def test_search_matches_word_forms_and_ranks_facts_matching_more_words_first(
    ledger: LedgerBuilder, projected: Projected
) -> None:
    """The README's own example: "boiling water" finds "Water boils at 100 °C"."""
    pool, projector = projected
    ledger.agent("a")
    boils = ledger.fact("a", "Water boils at 100 °C")
    ledger.fact("a", "Water is wet")
    ledger.fact("a", "Deployments failed twice on Monday")
    await projector.apply(ledger.records)
    hits = await queries.search(pool, "acme", "boiling water")
    assert [h.fact_id for h in hits][:1] == [str(boils)]  # both words beat one
    assert len(hits) == 2  # "Water is wet" matches one of the words
    deploys = await queries.search(pool, "acme", "deployment failure")
    assert [h.content for h in deploys] == ["Deployments failed twice on Monday"]
    assert await queries.search(pool, "acme", "photosynthesis") == []


async def test_ledger_time_and_world_time_combine(
    ledger: LedgerBuilder, projected: Projected
) -> None:
    """as_of_seq: what the ledger said then; valid_at: what held in the world at that moment."""
    pool, projector = projected
    ledger.agent("a")
    y2020 = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    y2030 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    old = ledger.fact("a", "old rule", valid_until=y2020)
    rule = ledger.fact("a", "current rule", valid_from=y2020, valid_until=y2030)
    seq_before_deprecation = len(ledger.records)
    ledger.deprecate("a", rule)
    await projector.apply(ledger.records)

    def ids(rows: list[Fact]) -> list[str]:
        return [r.fact_id for r in rows]

    assert ids(await queries.list_facts(pool, "acme")) == [str(old)]
    then = await queries.list_facts(pool, "acme", as_of_seq=seq_before_deprecation)
    assert ids(then) == [str(rule), str(old)]
    in_2025 = await queries.list_facts(
        pool,
        "acme",
        as_of_seq=seq_before_deprecation,
        valid_at=dt.datetime(2025, 6, 1, tzinfo=dt.UTC),
    )
    assert ids(in_2025) == [str(rule)]
    in_2010 = await queries.list_facts(
        pool, "acme", include_deprecated=True, valid_at=dt.datetime(2010, 1, 1, tzinfo=dt.UTC)
    )
    assert ids(in_2010) == [str(old)]


async def test_events_only_a_forger_could_append_do_not_stop_the_projector(
    projected: tuple[ConnectionPool, Projector],
) -> None:
    """A second registration of an agent or of a writer key, and a vote by an agent
    never registered: the first registration holds and projecting goes on."""
    pool, projector = projected
    ledger = LedgerBuilder()
    ledger.agent("ann")
    fact = ledger.fact("ann", "x")
    ledger.agent("ann")
    ledger.vote("ghost", fact, 1)
    ledger.vote("ann", fact, 1)
    key = WriterKeyAdded(id=uuid.uuid4(), tenant="_cortex", ts=0, name="w", public_key="ab" * 32)
    for _ in range(2):
        ledger.records.append((len(ledger.records) + 1, encode(key)))
    await projector.apply(ledger.records)
    assert projector.seq == len(ledger.records)
    c = await queries.consensus_of(pool, "acme", fact)
    assert c is not None and c.votes_for == 2
