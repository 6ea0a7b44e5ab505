"""Events a projector cannot apply: why, and the list of them in a read model.

A ledger the writer built never holds such an event, but a forged or damaged
one can (a reused fact id, a vote on a fact the tenant does not have, a number
SQLite cannot store, a body that does not decode). The projector judges each
event before folding it; one it cannot apply is recorded in the ``quarantine``
table (seq, reason, detail) in the same transaction as the rest of its batch,
and projecting goes on. The judgement is a pure function of the events before
it and the texts are fixed, so every node and every fresh replay quarantine
the same events with the same rows, and the read model's digest includes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiosqlite

#: Why an event was quarantined: the stable reasons and what each means.
REASONS: Final[dict[str, str]] = {
    "undecodable": "the body does not decode as an event of a known kind",
    "fact_id_reused": "a fact with this id was stored earlier",
    "unknown_fact": "the fact it names was never stored in its tenant",
    "invalid_vote": "a vote is +1, -1 or 0",
    "already_deprecated": "the fact was deprecated before: the first deprecation holds",
    "out_of_range": "a number the read model cannot store (SQLite integers are 64-bit)",
}

#: SQLite's INTEGER range.
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Quarantined:
    """One event the projector set aside: its seq, a reason from ``REASONS``, a detail."""

    seq: int
    reason: str
    detail: str


async def quarantined(db: Path) -> list[Quarantined]:
    """The events the read model ``db`` quarantined, in ledger order (opened read-only).

    For ``cortex audit --db`` and other readers of a database file; a node's
    ``status`` carries the count.
    """
    async with (
        aiosqlite.connect(_read_only(db), uri=True) as conn,
        conn.execute("SELECT seq, reason, detail FROM quarantine ORDER BY seq") as cur,
    ):
        return [Quarantined(int(seq), reason, detail) async for seq, reason, detail in cur]


def _read_only(db: Path) -> str:
    return f"file:{db.resolve()}?mode=ro"
