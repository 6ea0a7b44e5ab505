"""A digest of the read model's canonical contents.

Two nodes (or a replay and a live projection) at the same position must hold
the same rows, bit for bit; comparing one short digest proves it. Rows are
read in a fixed order, encoded with MessagePack (floats as exact float64)
and hashed with BLAKE3, table by table, each table name included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import aiosqlite
import blake3
import msgspec

from events.errors import CortexError
from projections.pool import ConnectionPool
from projections.schema import DIGEST_TABLES

_packer: Final = msgspec.msgpack.Encoder()
DOMAIN: Final = b"cortex.readmodel.digest.v1\x00"


async def _table_digests(conn: aiosqlite.Connection) -> dict[str, str]:
    digests: dict[str, str] = {}
    for name, query in DIGEST_TABLES:
        hasher = blake3.blake3(DOMAIN + name.encode() + b"\x00")
        async with conn.execute(query) as cur:
            while rows := await cur.fetchmany(5000):
                hasher.update(_packer.encode(rows))
        digests[name] = hasher.hexdigest()
    return digests


def _combined(digests: dict[str, str]) -> str:
    hasher = blake3.blake3(DOMAIN)
    for name, value in digests.items():
        hasher.update(f"{name}={value}\n".encode())
    return hasher.hexdigest()


async def table_digests(pool: ConnectionPool) -> dict[str, str]:
    """Each table's digest, so a mismatch can be narrowed to a table."""
    async with pool.reader() as conn:
        return await _table_digests(conn)


async def digest(pool: ConnectionPool) -> str:
    """One digest of every table of the read model."""
    return _combined(await table_digests(pool))


async def file_digest(db: Path) -> tuple[int, str]:
    """(position, digest) of a read-model file, opened read-only: safe beside a node that
    is writing it, and never creating anything in a file that is not a read model."""
    try:
        uri = f"file:{db.resolve()}?mode=ro"  # noqa: ASYNC240 - no I/O: a path resolved
        async with aiosqlite.connect(uri, uri=True) as conn:
            await conn.execute("BEGIN")  # the position and the rows of one moment
            async with conn.execute("SELECT seq FROM position") as cur:
                row = await cur.fetchone()
            return (0 if row is None else int(row[0])), _combined(await _table_digests(conn))
    except aiosqlite.Error as e:
        raise CortexError(
            f"{db} is not a CORTEX read model ({e}); build one with `cortex replay --db {db}`",
            code="not_found",
        ) from e
