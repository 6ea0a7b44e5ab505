"""A digest of the read model's canonical contents.

Two nodes (or a replay and a live projection) at the same position must hold
the same rows, bit for bit; comparing one short digest proves it. Rows are
read in a fixed order, encoded with MessagePack (floats as exact float64)
and hashed with BLAKE3, table by table, each table name included.
"""

from __future__ import annotations

from typing import Final

import blake3
import msgspec

from projections.pool import ConnectionPool
from projections.schema import DIGEST_TABLES

_packer: Final = msgspec.msgpack.Encoder()
DOMAIN: Final = b"cortex.readmodel.digest.v1\x00"


async def table_digests(pool: ConnectionPool) -> dict[str, str]:
    """Each table's digest, so a mismatch can be narrowed to a table."""
    digests: dict[str, str] = {}
    async with pool.reader() as conn:
        for name, query in DIGEST_TABLES:
            hasher = blake3.blake3(DOMAIN + name.encode() + b"\x00")
            async with conn.execute(query) as cur:
                while rows := await cur.fetchmany(5000):
                    hasher.update(_packer.encode(rows))
            digests[name] = hasher.hexdigest()
    return digests


async def digest(pool: ConnectionPool) -> str:
    """One digest of every table of the read model."""
    hasher = blake3.blake3(DOMAIN)
    for name, value in (await table_digests(pool)).items():
        hasher.update(f"{name}={value}\n".encode())
    return hasher.hexdigest()
