"""A read model against a fresh replay: everything that answers a query is compared, and
anything a replay would not create is named; a moved position is refused at open."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite
import pytest

from events.errors import LedgerMismatch
from projections import queries
from projections.integrity import Comparison, check_position, compare
from projections.pool import ConnectionPool
from projections.replay import replay
from projections.testing import LedgerBuilder, MemoryReader, open_projector

WORDS = [
    "water",
    "boils",
    "at",
    "sea",
    "level",
    "the",
    "moon",
    "is",
    "rock",
    "light",
    "from",
    "the",
    "sun",
]


def _story(ledger: LedgerBuilder) -> None:
    for agent in ("ada", "bob"):
        ledger.agent(agent)
    facts = [
        ledger.fact(
            ("ada", "bob")[i % 2],
            " ".join(WORDS[(i * 5 + j) % len(WORDS)] for j in range(6)) + f" number{i}",
            tags=(f"t{i % 3}",),
        )
        for i in range(40)
    ]
    for i, fact in enumerate(facts):
        ledger.vote("bob" if i % 2 else "ada", fact, 1 if i % 3 else -1)
    ledger.deprecate("ada", facts[0], successor=facts[1])


@pytest.fixture
async def live(ledger: LedgerBuilder, tmp_path: Path) -> Path:
    """A database projected as a live node does, one event per transaction."""
    _story(ledger)
    db = tmp_path / "live.db"
    pool, projector = await open_projector(db)
    try:
        for record in ledger.records:
            await projector.apply([record])
    finally:
        await pool.close()
    return db


async def _compare(ledger: LedgerBuilder, db: Path, tmp_path: Path) -> Comparison:
    async with aiosqlite.connect(db) as conn, conn.execute("SELECT seq FROM position") as cur:
        row = await cur.fetchone()
    assert row is not None
    fresh = await replay(MemoryReader(ledger.records), tmp_path / "fresh.db", until=int(row[0]))
    async with (
        aiosqlite.connect(f"file:{fresh.db}?mode=ro", uri=True) as want,
        aiosqlite.connect(f"file:{db}?mode=ro", uri=True) as have,
    ):
        return await compare(want, have)


@contextlib.asynccontextmanager
async def _sql(db: Path) -> AsyncIterator[aiosqlite.Connection]:
    async with aiosqlite.connect(db) as conn:
        yield conn
        await conn.commit()


async def _search(db: Path, text: str) -> list[str]:
    async with ConnectionPool(db, readers=1) as pool:
        return [h.content for h in await queries.search(pool, "acme", text, limit=100)]


async def test_a_live_database_equals_its_replay_though_its_index_pages_differ(
    ledger: LedgerBuilder, live: Path, tmp_path: Path
) -> None:
    """Batching changes FTS5's segment layout, not what the index answers: no false alarm."""
    found = await _compare(ledger, live, tmp_path)
    assert found.ok, found.differences
    assert found.rows > len(ledger.records)


@pytest.mark.parametrize(
    "tamper",
    [
        "DELETE FROM facts_fts WHERE rowid = {row}",
        "UPDATE facts_fts SET content = 'nothing to see' WHERE rowid = {row}",
        "DELETE FROM facts_fts_docsize WHERE id = {row}",
    ],
)
async def test_a_deleted_or_rewritten_full_text_row_is_named(
    ledger: LedgerBuilder, live: Path, tmp_path: Path, tamper: str
) -> None:
    """Search stops finding the fact (or ranks it by forged sizes) and the comparison
    says the full-text index differs."""
    async with _sql(live) as conn:
        async with conn.execute("SELECT rowid FROM facts WHERE content LIKE '%number7'") as cur:
            row = await cur.fetchone()
        assert row is not None
        await conn.execute(tamper.format(row=row[0]))
    found = await _compare(ledger, live, tmp_path)
    assert not found.ok
    assert any(
        d.where.startswith(("full-text index", "table facts_fts")) for d in found.differences
    )


async def test_deleting_a_fact_from_the_index_hides_it_from_search(live: Path) -> None:
    """Why the index is compared: the facts table still holds the fact, search does not."""
    assert any("number7" in c for c in await _search(live, "number7"))
    async with _sql(live) as conn:
        await conn.execute(
            "DELETE FROM facts_fts WHERE rowid = (SELECT rowid FROM facts"
            " WHERE content LIKE '%number7')"
        )
    assert await _search(live, "number7") == []


@pytest.mark.parametrize(
    ("ddl", "where"),
    [
        ("CREATE TABLE notes (x)", "table notes"),
        ("CREATE INDEX facts_by_agent ON facts (agent_id)", "index facts_by_agent"),
        ("CREATE VIEW everything AS SELECT * FROM facts", "view everything"),
        (
            "CREATE TRIGGER hide AFTER INSERT ON facts BEGIN DELETE FROM votes; END",
            "trigger hide",
        ),
    ],
)
async def test_anything_a_replay_would_not_create_is_named(
    ledger: LedgerBuilder, live: Path, tmp_path: Path, ddl: str, where: str
) -> None:
    async with _sql(live) as conn:
        await conn.execute(ddl)
    found = await _compare(ledger, live, tmp_path)
    assert [d.where for d in found.differences] == [where]
    assert "a replay would not create" in found.differences[0].detail


async def test_a_dropped_index_is_named(ledger: LedgerBuilder, live: Path, tmp_path: Path) -> None:
    async with _sql(live) as conn:
        await conn.execute("DROP INDEX facts_by_tenant")
    found = await _compare(ledger, live, tmp_path)
    assert [d.where for d in found.differences] == ["index facts_by_tenant"]


async def test_a_changed_fact_rowid_is_named(
    ledger: LedgerBuilder, live: Path, tmp_path: Path
) -> None:
    """Rowids join facts to their index and consensus: every column is compared."""
    async with _sql(live) as conn:
        await conn.execute(
            "UPDATE facts SET rowid = 999999 WHERE rowid = (SELECT max(rowid) FROM facts)"
        )
    found = await _compare(ledger, live, tmp_path)
    assert any(d.where.startswith("table facts,") for d in found.differences)


async def _move_position(db: Path, by: int) -> int:
    """Set the position ``by`` events away, with the true chain hash of that seq."""
    async with _sql(db) as conn:
        async with conn.execute("SELECT seq FROM position") as cur:
            row = await cur.fetchone()
        assert row is not None
        seq = int(row[0]) + by
        await conn.execute(
            "UPDATE position SET seq = ?, hash = (SELECT hash FROM event_hashes WHERE seq = ?)",
            (seq, seq),
        )
    return seq


@pytest.mark.parametrize("by", [-10, 10])
async def test_a_moved_position_is_refused_at_open_with_the_remedy(
    ledger: LedgerBuilder, live: Path, by: int
) -> None:
    """Moved back, the projector would re-insert rows it has (an IntegrityError); ahead
    of its rows, it would have skipped events. Either way: ledger_mismatch."""
    if by > 0:  # as if the last events' rows were taken out
        async with _sql(live) as conn:
            await conn.execute(
                "DELETE FROM event_hashes WHERE seq > (SELECT seq FROM position) - ?", (by,)
            )
    else:
        await _move_position(live, by)
    pool, _projector = await open_projector(live)
    try:
        with pytest.raises(LedgerMismatch) as caught:
            await check_position(pool, live)
    finally:
        await pool.close()
    assert caught.value.code == "ledger_mismatch"
    assert f"cortex replay --db {live}" in caught.value.message


async def test_a_rewound_position_is_named_by_the_comparison(
    ledger: LedgerBuilder, live: Path, tmp_path: Path
) -> None:
    await _move_position(live, -10)
    found = await _compare(ledger, live, tmp_path)
    assert found.differences[0].where == "position"
    assert "moved back" in found.differences[0].detail


async def test_an_intact_database_passes_the_position_check(live: Path) -> None:
    pool, _projector = await open_projector(live)
    try:
        await check_position(pool, live)
    finally:
        await pool.close()
