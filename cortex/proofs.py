"""Proof documents assembled by a node: its stored hashes plus the event from the stream.

The node answers ``checkpoint``, ``proof`` and ``consistency`` queries with
documents that ``events.proof.check_proof`` verifies offline. An event is
named by seq or by id, and only within the asking tenant: another tenant's
event is "not found", like an unknown one. Checkpoints are ledger-wide.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec

from cortex.bus import Bus
from events.codec import decode_event
from events.note import verifier_key
from events.proof import CONSISTENCY, INCLUSION
from projections import proofs
from projections.errors import QueryError
from projections.pool import ConnectionPool


async def _verifier(pool: ConnectionPool, public_key: str) -> str:
    name = await proofs.writer_key(pool, public_key)
    if name is None:
        raise QueryError(f"writer key {public_key[:16]}… is not in the ledger", code="internal")
    return verifier_key(name, bytes.fromhex(public_key))


async def checkpoint(pool: ConnectionPool, tree_size: int | None = None) -> dict[str, Any]:
    """The latest checkpoint (or the one of ``tree_size``) with its verifier key."""
    cp = await proofs.checkpoint(pool, tree_size=tree_size)
    return {**cp, "verifier": await _verifier(pool, cp["public_key"])}


async def _resolve(pool: ConnectionPool, event: Any) -> int:
    if isinstance(event, int) and not isinstance(event, bool):
        return event
    text = str(event)
    if text.isdigit():
        return int(text)
    try:
        event_id = uuid.UUID(text)
    except ValueError as e:
        raise QueryError(f"{text!r} is neither a seq nor an event id", code="invalid_query") from e
    seq = await proofs.seq_of(pool, event_id.bytes)
    if seq is None:
        raise QueryError(f"no event {event_id} on this node", code="not_found")
    return seq


async def inclusion(
    pool: ConnectionPool, bus: Bus, tenant: str, event: Any, tree_size: int | None = None
) -> dict[str, Any]:
    """An inclusion proof of one of the tenant's events against a signed checkpoint."""
    seq = await _resolve(pool, event)
    cp = await checkpoint(pool, tree_size)
    if seq < 1:
        raise QueryError("seqs start at 1", code="invalid_query")
    stored = await bus.get(seq)
    try:
        owner = decode_event(stored.body).tenant
    except (msgspec.DecodeError, msgspec.ValidationError):
        owner = ""
    if owner != tenant:
        raise QueryError(f"no event {event} in tenant {tenant!r}", code="not_found")
    if seq > cp["tree_size"]:
        raise QueryError(
            f"seq {seq} is after the latest checkpoint ({cp['tree_size']} events): "
            "ask again after the next one (`cortex checkpoint` makes one now)",
            code="not_checkpointed",
        )
    path = await proofs.inclusion(pool, seq, cp["tree_size"])
    return {
        "kind": INCLUSION,
        "seq": seq,
        "body": stored.body.decode(),
        "prev_hash": stored.prev_hash.hex(),
        "hash": stored.hash.hex(),
        "tree_size": cp["tree_size"],
        "root": cp["root"],
        "path": [p.hex() for p in path],
        "checkpoint": cp["note"],
        "verifier": cp["verifier"],
    }


async def consistency(pool: ConnectionPool, old_size: int, new_size: int) -> dict[str, Any]:
    """A consistency proof between two checkpoints, named by their tree sizes."""
    old = await checkpoint(pool, old_size)
    new = await checkpoint(pool, new_size)
    path = await proofs.consistency(pool, old_size, new_size)
    return {
        "kind": CONSISTENCY,
        "old_size": old_size,
        "new_size": new_size,
        "old": old["note"],
        "new": new["note"],
        "path": [p.hex() for p in path],
        "old_verifier": old["verifier"],
        "new_verifier": new["verifier"],
    }
