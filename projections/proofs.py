"""Merkle proofs from a node's read model, without reading the stream.

The projector stores every event hash (the tree's leaves: leaf ``i`` is the
hash of seq ``i + 1``) and the root of every complete tile of 256 leaves. A
proof for a tree of ``n`` leaves needs O(log n) subtree hashes: perfect
subtrees of 256 leaves or more are folded from tiles, the rest from the
leaves of at most three tiles (the one holding the event, and the right
edges of the old and new trees). So a proof over a million events reads a
few thousand small rows, not a million.

Proofs are checked with ``events.merkle.verify_inclusion`` /
``verify_consistency`` against a checkpoint's signed root; nothing here has
to be trusted.
"""

from __future__ import annotations

import functools
import uuid
from typing import Any, Protocol

import msgspec

from events.chain import StoredRecord
from events.codec import decode_event
from events.errors import QueryFailed
from events.merkle import TILE, consistency_path, inclusion_path, leaf_hash, node_hash
from events.note import verifier_key
from events.operations import Checkpoint, ConsistencyProof, InclusionProof
from events.proof import CONSISTENCY, INCLUSION
from projections.pool import ConnectionPool


def _checkpoint(row: Any) -> dict[str, Any]:
    seq, size, root, head, public_key, note = row
    return {
        "seq": seq,
        "tree_size": size,
        "root": root,
        "head": head,
        "public_key": public_key,
        "note": note,
    }


async def checkpoints(pool: ConnectionPool) -> list[dict[str, Any]]:
    """Every checkpoint this node has applied, oldest first."""
    async with (
        pool.reader() as conn,
        conn.execute(
            "SELECT seq, tree_size, root, head, public_key, note FROM checkpoints ORDER BY seq"
        ) as cur,
    ):
        return [_checkpoint(row) for row in await cur.fetchall()]


async def checkpoint(pool: ConnectionPool, *, tree_size: int | None = None) -> dict[str, Any]:
    """The checkpoint of ``tree_size``, or the latest one."""
    # The latest checkpoint, or the latest of that size (-1: any size).
    sql = (
        "SELECT seq, tree_size, root, head, public_key, note FROM checkpoints"
        " WHERE ? < 0 OR tree_size = ? ORDER BY seq DESC LIMIT 1"
    )
    wanted = -1 if tree_size is None else tree_size
    args = (wanted, wanted)
    async with pool.reader() as conn, conn.execute(sql, args) as cur:
        row = await cur.fetchone()
    if row is None:
        what = "no checkpoint yet" if tree_size is None else f"no checkpoint of size {tree_size}"
        raise QueryFailed(f"{what} on this node", code="no_checkpoint")
    return _checkpoint(row)


class _Tree:
    """Subtree hashes over the stored tiles and the leaves of a few tiles."""

    def __init__(self, tiles: dict[int, bytes], leaves: dict[int, bytes]) -> None:
        self.tiles, self.leaves = tiles, leaves
        self.subtree = functools.lru_cache(maxsize=None)(self._subtree)

    def _subtree(self, lo: int, hi: int) -> bytes:
        if hi - lo == 1:
            event_hash = self.leaves.get(lo)
            if event_hash is None:
                raise QueryFailed(f"leaf {lo} is not loaded", code="internal")
            return leaf_hash(event_hash)
        if hi - lo == TILE and lo % TILE == 0 and lo // TILE in self.tiles:
            return self.tiles[lo // TILE]
        k = 1 << ((hi - lo - 1).bit_length() - 1)
        return node_hash(self.subtree(lo, lo + k), self.subtree(lo + k, hi))


async def _load(pool: ConnectionPool, size: int, edges: set[int]) -> _Tree:
    """Tiles below ``size`` and the leaves of the tiles holding the ``edges`` indices."""
    async with pool.reader() as conn:
        async with conn.execute("SELECT MAX(seq) FROM event_hashes") as cur:
            row = await cur.fetchone()
        applied = int(row[0] or 0) if row else 0
        if size > applied:
            raise QueryFailed(
                f"this node has applied {applied} events; the tree of {size} is ahead of it",
                code="not_yet",
            )
        async with conn.execute(
            "SELECT tile, hash FROM merkle_tiles WHERE tile < ?", (size // TILE,)
        ) as cur:
            tiles = {int(t): bytes(h) for t, h in await cur.fetchall()}
        leaves: dict[int, bytes] = {}
        for edge in edges:
            start = edge - edge % TILE
            async with conn.execute(
                "SELECT seq, hash FROM event_hashes WHERE seq > ? AND seq <= ?",
                (start, min(start + TILE, size)),
            ) as cur:
                leaves.update({int(s) - 1: bytes(h) for s, h in await cur.fetchall()})
    return _Tree(tiles, leaves)


async def seqs_of(pool: ConnectionPool, event_id: bytes) -> list[int]:
    """The seqs of the events with this id (16 bytes) this node has applied: ids are
    unique within a tenant, so there is one per tenant that used it."""
    async with (
        pool.reader() as conn,
        conn.execute("SELECT seq FROM event_hashes WHERE id = ? ORDER BY seq", (event_id,)) as cur,
    ):
        return [int(seq) for (seq,) in await cur.fetchall()]


async def writer_key(pool: ConnectionPool, public_key: str) -> str | None:
    """The name the ledger recorded for a writer key."""
    async with (
        pool.reader() as conn,
        conn.execute("SELECT name FROM writer_keys WHERE public_key = ?", (public_key,)) as cur,
    ):
        row = await cur.fetchone()
    return None if row is None else str(row[0])


async def inclusion(pool: ConnectionPool, seq: int, tree_size: int) -> list[bytes]:
    """The audit path of the event at ``seq`` in the tree of ``tree_size`` events."""
    if not 1 <= seq <= tree_size:
        raise QueryFailed(f"seq {seq} is not in a tree of {tree_size} events", code="invalid_query")
    tree = await _load(pool, tree_size, {seq - 1, tree_size - 1})
    return inclusion_path(seq - 1, tree_size, tree.subtree)


async def consistency(pool: ConnectionPool, old_size: int, new_size: int) -> list[bytes]:
    """The proof that the tree of ``new_size`` events extends the tree of ``old_size``."""
    if not 1 <= old_size <= new_size:
        raise QueryFailed(
            f"no consistency proof from {old_size} to {new_size} events", code="invalid_query"
        )
    tree = await _load(pool, new_size, {old_size - 1, new_size - 1})
    return consistency_path(old_size, new_size, tree.subtree)


# -- proof documents ---------------------------------------------------------
#
# What a node answers to ``checkpoint``, ``proof`` and ``consistency`` queries:
# its stored hashes plus the event's bytes from the ledger, as documents that
# ``events.proof.check_proof`` verifies offline. An event is named by seq or
# by id, and only within the asking tenant: another tenant's event is "not
# found", like an unknown one. Checkpoints are ledger-wide.


class EventLookup(Protocol):
    """Where the event bytes of a proof come from (the ledger, or a copy of it)."""

    async def get(self, seq: int) -> StoredRecord: ...


async def signed_checkpoint(pool: ConnectionPool, tree_size: int | None = None) -> Checkpoint:
    """The latest checkpoint (or the one of ``tree_size``) with its verifier key."""
    cp = await checkpoint(pool, tree_size=tree_size)
    name = await writer_key(pool, cp["public_key"])
    if name is None:
        raise QueryFailed(
            f"writer key {cp['public_key'][:16]}… is not in the ledger", code="internal"
        )
    return Checkpoint(**cp, verifier=verifier_key(name, bytes.fromhex(cp["public_key"])))


def _tenant_of(body: bytes) -> str:
    try:
        return decode_event(body).tenant
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ""


async def _resolve(
    pool: ConnectionPool, ledger: EventLookup, tenant: str, event: int | str
) -> tuple[int, StoredRecord | None]:
    """The seq ``event`` names for ``tenant``, and its stored record if already read."""
    if isinstance(event, int):
        return event, None
    if event.isdigit():
        return int(event), None
    try:
        event_id = uuid.UUID(event)
    except ValueError as e:
        raise QueryFailed(f"{event!r} is neither a seq nor an event id") from e
    for seq in await seqs_of(pool, event_id.bytes):  # another tenant's is not this one's
        stored = await ledger.get(seq)
        if _tenant_of(stored.body) == tenant:
            return seq, stored
    raise QueryFailed(f"no event {event_id} on this node", code="not_found")


async def inclusion_proof(
    pool: ConnectionPool,
    ledger: EventLookup,
    tenant: str,
    event: int | str,
    tree_size: int | None = None,
) -> InclusionProof:
    """An inclusion proof of one of the tenant's events against a signed checkpoint."""
    seq, stored = await _resolve(pool, ledger, tenant, event)
    cp = await signed_checkpoint(pool, tree_size)
    if seq < 1:
        raise QueryFailed("seqs start at 1")
    if stored is None:
        stored = await ledger.get(seq)
    if _tenant_of(stored.body) != tenant:
        raise QueryFailed(f"no event {event} in tenant {tenant!r}", code="not_found")
    if seq > cp.tree_size:
        raise QueryFailed(
            f"seq {seq} is after the latest checkpoint ({cp.tree_size} events): "
            "ask again after the next one (`cortex checkpoint` makes one now)",
            code="not_checkpointed",
        )
    path = await inclusion(pool, seq, cp.tree_size)
    return InclusionProof(
        kind=INCLUSION,
        seq=seq,
        body=stored.body.decode(),
        prev_hash=stored.prev_hash.hex(),
        hash=stored.hash.hex(),
        tree_size=cp.tree_size,
        root=cp.root,
        path=[p.hex() for p in path],
        checkpoint=cp.note,
        verifier=cp.verifier,
    )


async def consistency_proof(pool: ConnectionPool, old_size: int, new_size: int) -> ConsistencyProof:
    """A consistency proof between two checkpoints, named by their tree sizes."""
    old = await signed_checkpoint(pool, old_size)
    new = await signed_checkpoint(pool, new_size)
    path = await consistency(pool, old_size, new_size)
    return ConsistencyProof(
        kind=CONSISTENCY,
        old_size=old_size,
        new_size=new_size,
        old=old.note,
        new=new.note,
        path=[p.hex() for p in path],
        old_verifier=old.verifier,
        new_verifier=new.verifier,
    )
