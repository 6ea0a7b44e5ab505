"""Reads "as of" a seq show the ledger as it stood then, every field: exactly what a read
model replayed up to that seq shows now."""

from __future__ import annotations

import random
from pathlib import Path

import msgspec

from projections import queries
from projections.testing import LedgerBuilder, open_projector


def _story(seed: int) -> LedgerBuilder:
    """Agents, facts, votes that flip and withdraw, deprecations with successors."""
    rng = random.Random(seed)
    ledger = LedgerBuilder()
    agents = [f"a{i}" for i in range(5)]
    for agent in agents:
        ledger.agent(agent)
    facts = [ledger.fact(rng.choice(agents), f"fact number {i} about water") for i in range(6)]
    live = list(facts)
    for step in range(80):
        roll = rng.random()
        if roll < 0.8:
            ledger.vote(rng.choice(agents), rng.choice(facts), rng.choice((1, 1, -1, 0)))
        elif roll < 0.9 and len(live) > 2:
            old = live.pop(rng.randrange(len(live)))
            new = ledger.fact(rng.choice(agents), f"successor {step} of water facts")
            facts.append(new)
            live.append(new)
            ledger.deprecate(rng.choice(agents), old, successor=new)
        else:
            facts.append(ledger.fact(rng.choice(agents), f"late fact {step} about water"))
    return ledger


def _plain(value: object) -> object:
    return msgspec.to_builtins(value)


async def test_every_as_of_read_equals_a_replay_to_that_seq(tmp_path: Path) -> None:
    ledger = _story(7)
    fact_ids = sorted(
        {
            str(e["fact_id"])
            for _, body in ledger.records
            for e in [msgspec.json.decode(body)]
            if "fact_id" in e
        }
    )
    full_pool, full = await open_projector(tmp_path / "full.db")
    try:
        await full.apply(ledger.records)
        total = len(ledger.records)
        for n in sorted({8, 12, total // 3, total // 2, total - 5, total}):
            then_pool, then = await open_projector(tmp_path / f"then-{n}.db")
            try:
                await then.apply(ledger.records[:n])
                for deprecated in (False, True):
                    assert _plain(
                        await queries.list_facts(
                            full_pool,
                            "acme",
                            as_of_seq=n,
                            include_deprecated=deprecated,
                            limit=1000,
                        )
                    ) == _plain(
                        await queries.list_facts(
                            then_pool, "acme", include_deprecated=deprecated, limit=1000
                        )
                    ), (n, deprecated)
                for fact in fact_ids:
                    for read in (queries.get_fact, queries.consensus_of, queries.history):
                        assert _plain(await read(full_pool, "acme", fact, as_of_seq=n)) == _plain(
                            await read(then_pool, "acme", fact)
                        ), (n, fact, read.__name__)
                # Ranks differ with the corpus; which facts match, and as what, does not.
                hits_then = await queries.search(
                    full_pool, "acme", "water", as_of_seq=n, limit=1000
                )
                hits_replay = await queries.search(then_pool, "acme", "water", limit=1000)
                strip = {"rank", "snippet"}
                assert (
                    sorted(
                        (msgspec.structs.asdict(h) for h in hits_then), key=lambda h: h["fact_id"]
                    )
                    != []
                    or n < 8
                )
                assert sorted(
                    (
                        {k: v for k, v in msgspec.structs.asdict(h).items() if k not in strip}
                        for h in hits_then
                    ),
                    key=lambda h: str(h["fact_id"]),
                ) == sorted(
                    (
                        {k: v for k, v in msgspec.structs.asdict(h).items() if k not in strip}
                        for h in hits_replay
                    ),
                    key=lambda h: str(h["fact_id"]),
                ), n
            finally:
                await then_pool.close()
    finally:
        await full_pool.close()


async def test_a_fact_deprecated_later_is_current_as_of_before(tmp_path: Path) -> None:
    """The issue's own example: deprecated at seq 7, it is not deprecated "as of" seq 5."""
    ledger = LedgerBuilder()
    ledger.agent("a")
    ledger.agent("b")
    fact = ledger.fact("a", "Pluto is a planet")
    ledger.vote("a", fact, 1)
    before = len(ledger.records)
    ledger.vote("b", fact, -1)
    ledger.deprecate("a", fact)
    pool, projector = await open_projector(tmp_path / "n.db")
    try:
        await projector.apply(ledger.records)
        now = await queries.get_fact(pool, "acme", fact)
        then = await queries.get_fact(pool, "acme", fact, as_of_seq=before)
        assert now is not None and then is not None
        assert now.deprecated is not None and then.deprecated is None
        assert (now.consensus.votes_against, then.consensus.votes_against) == (1, 0)
        assert then.consensus.as_of_seq == before
        assert await queries.get_fact(pool, "acme", fact, as_of_seq=2) is None  # not yet stored
    finally:
        await pool.close()
