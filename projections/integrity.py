"""Does a read model hold exactly what a replay of its ledger would, nothing more or less?

Two checks, one cheap and one thorough:

- ``rows_beyond_position`` / ``check_position``: at open, before a node
  projects anything, the rows must end where the stored position says. A
  position moved back (even with the true hash of that seq) would make the
  projector insert rows that are already there (an IntegrityError); one moved
  forward would make it skip events without a word. A handful of ``max()``
  lookups on primary keys, so it costs nothing at start.
- ``compare``: the audit's comparison of a database with a fresh replay to
  its position. The schema first (``sqlite_master``: any table, index, view
  or trigger a replay would not create, or one it would that is missing or
  altered), then every row of every table the replay has, in primary-key
  order, and the full-text index by what it answers: every indexed term with
  its document, column and offset (``fts5vocab``), the per-document sizes and
  the totals BM25 ranks by. FTS5's segment layout depends on how events were
  batched, so the index's b-tree pages themselves are not compared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiosqlite

from events.errors import LedgerMismatch
from events.merkle import TILE
from projections.pool import ConnectionPool

#: The full-text index; FTS5 keeps it in these shadow tables.
FTS: Final = "facts_fts"
_FTS_SEGMENTS: Final = (f"{FTS}_data", f"{FTS}_idx")
#: facts_fts_data's row holding the totals BM25 ranks by (FTS5_AVERAGES_ROWID).
_FTS_AVERAGES: Final = 1
_ROWS: Final = 2000

#: The highest seq each table's rows may reach, as an O(log n) lookup.
_HIGHEST: Final = (
    ("event_hashes", "SELECT max(seq) FROM event_hashes"),
    ("facts", "SELECT max(rowid) FROM facts"),  # a fact's rowid is its stored seq
    ("vote_history", "SELECT max(seq) FROM vote_history"),
    ("checkpoints", "SELECT max(seq) FROM checkpoints"),
    ("merkle_tiles", f"SELECT (max(tile) + 1) * {TILE} FROM merkle_tiles"),  # noqa: S608 - a constant
)


@dataclass(frozen=True, slots=True)
class Difference:
    """One way a database differs from a fresh replay: where, and what each side holds."""

    where: str
    detail: str


@dataclass(slots=True)
class Comparison:
    """What ``compare`` found, and how many rows it found equal."""

    rows: int = 0
    differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences


# -- at open: rows against the position ------------------------------------------


async def rows_beyond_position(conn: aiosqlite.Connection) -> str | None:
    """Why the rows do not end at the stored position, or None when they do (or the
    database was never projected)."""
    async with conn.execute("SELECT seq FROM position") as cur:
        row = await cur.fetchone()
    seq = 0 if row is None else int(row[0])
    for table, sql in _HIGHEST:
        async with conn.execute(sql) as cur:
            found = await cur.fetchone()
        highest = None if found is None or found[0] is None else int(found[0])
        if highest is not None and highest > seq:
            return (
                f"its rows in {table} reach seq {highest} but its position says {seq}: "
                "the position was moved back or rows were added"
            )
        if table == "event_hashes" and seq and highest != seq:
            return (
                f"its position says seq {seq} but its rows end at seq {highest or 0}: "
                "the position was moved forward or rows were removed"
            )
    return None


async def check_position(pool: ConnectionPool, db: Path | str) -> None:
    """Refuse (LedgerMismatch) a database whose rows do not end at its position.

    A node calls this after opening its projector and before following the
    ledger, so a tampered position is refused with the remedy instead of
    crashing the projector on its first insert.
    """
    async with pool.reader() as conn:
        problem = await rows_beyond_position(conn)
    if problem is not None:
        raise LedgerMismatch(f"{db}: {problem}; rebuild it with `cortex replay --db {db}`")


# -- the audit: everything against a fresh replay -----------------------------------


async def compare(fresh: aiosqlite.Connection, have: aiosqlite.Connection) -> Comparison:
    """Compare database ``have`` with ``fresh``, a replay of the ledger to the same seq.

    ``have`` should be inside one read transaction, so that a node still
    projecting into it cannot make its tables disagree with each other.
    """
    result = Comparison()
    problem = await rows_beyond_position(have)
    if problem is not None:
        result.differences.append(Difference("position", problem))
    result.differences += await _schema(fresh, have)
    for table in await _tables(fresh):
        if table in _FTS_SEGMENTS:
            continue
        sql = await _canonical_select(fresh, table)
        await _walk(fresh, have, sql, f"table {table}", result)
    await _walk(
        fresh,
        have,
        f"SELECT id, block FROM {FTS}_data WHERE id = {_FTS_AVERAGES}",  # noqa: S608 - constants
        "full-text index totals",
        result,
    )
    for conn in (fresh, have):
        await conn.execute(
            f"CREATE VIRTUAL TABLE IF NOT EXISTS temp.cortex_vocab USING fts5vocab(main, {FTS}, "
            "'instance')"
        )
    try:
        await _walk(
            fresh,
            have,
            "SELECT term, doc, col, offset FROM temp.cortex_vocab",
            "full-text index",
            result,
        )
    finally:
        for conn in (fresh, have):
            await conn.execute("DROP TABLE IF EXISTS temp.cortex_vocab")
    return result


_MASTER: Final = (
    "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_stat%'"
    " ORDER BY type, name"
)


async def _schema(fresh: aiosqlite.Connection, have: aiosqlite.Connection) -> list[Difference]:
    """Every schema object a replay would not create, would create otherwise, or misses."""
    want = {(r[0], r[1]): tuple(r) async for r in await fresh.execute(_MASTER)}
    found = {(r[0], r[1]): tuple(r) async for r in await have.execute(_MASTER)}
    differences = []
    for key in sorted(want.keys() | found.keys()):
        kind, name = key
        if key not in want:
            differences.append(
                Difference(
                    f"{kind} {name}",
                    f"a replay would not create this {kind}: {_clip(found[key][3])}",
                )
            )
        elif key not in found:
            differences.append(Difference(f"{kind} {name}", f"the database has no {kind} {name}"))
        elif want[key] != found[key]:
            differences.append(
                Difference(
                    f"{kind} {name}",
                    f"a fresh replay defines it as {_clip(want[key][3])}, "
                    f"the database as {_clip(found[key][3])}",
                )
            )
    return differences


async def _tables(conn: aiosqlite.Connection) -> list[str]:
    """The ordinary tables (the FTS shadow tables are ordinary tables too)."""
    async with conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND sql NOT LIKE 'CREATE VIRTUAL%'"
        " AND name NOT LIKE 'sqlite_%' ORDER BY rowid"
    ) as cur:
        return [str(r[0]) for r in await cur.fetchall()]


async def _canonical_select(conn: aiosqlite.Connection, table: str) -> str:
    """Every column of ``table`` in primary-key order (its rowid when it has none)."""
    async with conn.execute(f'PRAGMA table_info("{table}")') as cur:
        columns = [(str(r[1]), int(r[5])) async for r in cur]
    keys = [name for name, pk in sorted(columns, key=lambda c: c[1]) if pk]
    if keys:
        order = ", ".join(f'"{k}"' for k in keys)
        return f'SELECT * FROM "{table}" ORDER BY {order}'  # noqa: S608 - names from the schema
    return f'SELECT rowid, * FROM "{table}" ORDER BY rowid'  # noqa: S608 - a name from the schema


async def _walk(
    fresh: aiosqlite.Connection,
    have: aiosqlite.Connection,
    sql: str,
    what: str,
    result: Comparison,
) -> None:
    """Read both sides of ``sql`` in step; report the first differing row, if any."""
    try:
        async with fresh.execute(sql) as expected, have.execute(sql) as found:
            row = 0
            while True:
                a = list(await expected.fetchmany(_ROWS))
                b = list(await found.fetchmany(_ROWS))
                diff = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
                if diff is not None:
                    result.differences.append(
                        Difference(
                            f"{what}, row {row + diff + 1}",
                            f"a fresh replay has {_show(a[diff])}, the database has "
                            f"{_show(b[diff])}",
                        )
                    )
                    return
                if len(a) != len(b):
                    extra = a[len(b)] if len(a) > len(b) else b[len(a)]
                    side = "is missing" if len(a) > len(b) else "has an extra"
                    result.differences.append(
                        Difference(
                            f"{what}, row {row + min(len(a), len(b)) + 1}",
                            f"the database {side} row {_show(extra)}",
                        )
                    )
                    return
                row += len(a)
                result.rows += len(a)
                if not a:
                    return
    except aiosqlite.Error as e:
        result.differences.append(Difference(what, f"cannot be read: {e}"))


def _show(row: Sequence[Any]) -> str:
    return _clip(repr(tuple(v.hex() if isinstance(v, bytes) else v for v in row)))


def _clip(text: str | None) -> str:
    text = str(text)
    return text if len(text) <= 200 else text[:199] + "…"
