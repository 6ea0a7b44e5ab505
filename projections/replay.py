"""Rebuild a read model from zero: the ledger replayed into a fresh database.

``cortex replay`` and ``cortex audit`` both call ``replay``; the caller
draws any progress bar, this module only reports ``(done, total)``. The
database is built beside its final name and swapped in when complete, so a
replay that fails or is interrupted never leaves a half-built database
under that name.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from events.chain import GENESIS
from projections.digest import digest
from projections.feed import LedgerReader, records
from projections.pool import ConnectionPool
from projections.projector import Projector

#: Called with (events applied so far, events to apply) after each committed batch.
Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class Replayed:
    """What a replay built: where, up to which event, and the digest of its rows."""

    db: Path
    seq: int
    head: str
    digest: str
    seconds: float

    @property
    def events_per_s(self) -> int:
        return round(self.seq / self.seconds) if self.seconds > 0 else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "db": str(self.db),
            "seq": self.seq,
            "head": self.head,
            "digest": self.digest,
            "seconds": round(self.seconds, 3),
            "events_per_s": self.events_per_s,
        }


def remove_database(path: Path) -> None:
    """Delete a SQLite database with its WAL and shared-memory files, if there."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


async def replay(
    reader: LedgerReader,
    db: Path,
    *,
    until: int | None = None,
    progress: Progress | None = None,
) -> Replayed:
    """Rebuild ``db`` from the ledger (up to ``until``, else to its end), then swap it in.

    Every event is checked against the chain on the way in: a tampered
    ledger raises ``LedgerMismatch`` and ``db`` is left as it was.
    """
    last = await reader.last_seq()
    end = last if until is None else min(until, last)
    building = db.with_name(db.name + ".building")
    remove_database(building)
    started = time.perf_counter()
    try:
        seq, head, rows = await _build(reader, building, end, progress)
    except BaseException:
        remove_database(building)
        raise
    seconds = time.perf_counter() - started
    remove_database(db)
    os.replace(building, db)
    remove_database(building)
    return Replayed(db, seq, head, rows, seconds)


async def _build(
    reader: LedgerReader, db: Path, end: int, progress: Progress | None
) -> tuple[int, str, str]:
    """Project events 1..end into the new database ``db``; its position and digest."""
    pool = ConnectionPool(db, readers=1)
    await pool.open()
    try:
        async with pool.writer() as conn:
            # A rebuild that crashes is thrown away and started again, so no
            # fsync per batch; durability comes from the checkpoint below.
            await conn.execute("PRAGMA synchronous=OFF")
            await conn.execute("PRAGMA cache_size=-32768")
        projector = Projector(pool)
        await projector.open()
        if end > 0:
            report = None if progress is None else _reporter(progress, end)
            await projector.consume(records(reader, 1, end, head=GENESIS), progress=report)
        seq, head, rows = projector.seq, projector.head.hex(), await digest(pool)
        async with pool.writer() as conn:
            # Everything into the main file, on disk: a WAL must not stay
            # behind under the old name, and the swap must not precede the data.
            await conn.execute("PRAGMA synchronous=FULL")
            await conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        await pool.close()
    return seq, head, rows


def _reporter(progress: Progress, total: int) -> Callable[[int], None]:
    return lambda seq: progress(seq, total)
