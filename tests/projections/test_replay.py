"""Feed and replay with no server: a ledger in memory, a real SQLite file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from events.errors import LedgerMismatch
from projections.digest import digest
from projections.feed import records
from projections.replay import replay
from projections.testing import LedgerBuilder, MemoryReader, open_projector


def _story(ledger: LedgerBuilder) -> None:
    for agent in ("ada", "bob", "cy"):
        ledger.agent(agent)
    facts = [ledger.fact(("ada", "bob", "cy")[i % 3], f"fact {i}") for i in range(12)]
    for i, fact in enumerate(facts):
        for j, agent in enumerate(("ada", "bob", "cy")):
            ledger.vote(agent, fact, 1 if (i + j) % 3 else -1)
    ledger.deprecate("ada", facts[0], successor=facts[1])


async def test_replay_from_a_memory_reader_matches_the_projector(
    ledger: LedgerBuilder, tmp_path: Path
) -> None:
    """projections rebuilds a database on its own: same position, same digest as a projector
    applying the same events directly; progress reports (done, total) up to the end."""
    _story(ledger)
    pool, projector = await open_projector(tmp_path / "direct.db")
    try:
        await projector.apply(ledger.records)
        want = await digest(pool)
    finally:
        await pool.close()
    reader = MemoryReader(ledger.records)
    seen: list[tuple[int, int]] = []

    rebuilt = await replay(
        reader, tmp_path / "replayed.db", progress=lambda d, t: seen.append((d, t))
    )

    assert rebuilt.digest == want
    assert rebuilt.seq == len(ledger.records)
    assert rebuilt.head == reader.events[-1].hash.hex()
    assert seen[-1] == (len(ledger.records), len(ledger.records))
    assert not (tmp_path / "replayed.db.building").exists()


async def test_replay_until_stops_there_and_replaces_an_older_build(
    ledger: LedgerBuilder, tmp_path: Path
) -> None:
    """``until`` gives the state as of that seq; replaying again over the file replaces it."""
    _story(ledger)
    reader = MemoryReader(ledger.records)
    db = tmp_path / "asof.db"
    early = await replay(reader, db, until=5)
    assert early.seq == 5
    assert early.head == reader.events[4].hash.hex()
    full = await replay(reader, db)
    assert full.seq == len(ledger.records)
    assert full.digest != early.digest


async def test_an_empty_ledger_replays_to_an_empty_database(tmp_path: Path) -> None:
    rebuilt = await replay(MemoryReader([]), tmp_path / "empty.db")
    assert (rebuilt.seq, rebuilt.to_dict()["events_per_s"]) == (0, 0)
    assert (tmp_path / "empty.db").is_file()


async def test_a_tampered_event_stops_the_replay_and_leaves_the_old_database(
    ledger: LedgerBuilder, tmp_path: Path
) -> None:
    """An event whose bytes no longer hash to what the ledger recorded is refused: the replay
    raises LedgerMismatch, the database already there is untouched, nothing half-built stays."""
    _story(ledger)
    reader = MemoryReader(ledger.records)
    db = tmp_path / "kept.db"
    before = await replay(reader, db)
    bad = reader.events[6]
    reader.events[6] = dataclasses.replace(bad, body=bad.body.replace(b"fact", b"FACT"))

    with pytest.raises(LedgerMismatch, match="seq 7 does not follow the chain"):
        await replay(reader, db)

    pool, projector = await open_projector(db)
    try:
        assert (projector.seq, await digest(pool)) == (before.seq, before.digest)
    finally:
        await pool.close()
    assert not (tmp_path / "kept.db.building").exists()


async def test_the_feed_checks_links_only_from_a_known_head(ledger: LedgerBuilder) -> None:
    """Without ``head`` the feed passes events through; with it, a broken link is refused."""
    _story(ledger)
    reader = MemoryReader(ledger.records)
    reader.events[2] = dataclasses.replace(reader.events[2], prev_hash=bytes(32))
    assert [seq async for seq, _ in records(reader, 1, 4)] == [1, 2, 3, 4]
    with pytest.raises(LedgerMismatch, match="seq 3"):
        async for _ in records(reader, 2, 4, head=reader.events[0].hash):
            pass
