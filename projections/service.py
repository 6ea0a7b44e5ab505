"""The read service: every query a node answers, behind one plain async method.

Transport-free, so the NATS node, an HTTP route and an MCP tool all go
through the same code: ``run(tenant, query)`` waits (bounded) for the
query's ``min_seq``, answers from the cache where the table says the answer
is cacheable, and dispatches the typed query with ``match``. ``respond``
does the same from wire bytes to wire bytes, with errors as
``{"error": {"code", "message"}}`` — a query never takes the node down.

It never answers from a read model known to have stopped following the
ledger: once it stopped for good every query but ``status`` fails at once with
``not_following`` (a ``min_seq`` wait too, instead of running out its time);
while its follower restarts, a ``min_seq`` it does not reach in time fails with
``not_following`` rather than ``timeout``; ``status`` says which and why.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

import msgspec
import structlog

from events.errors import CortexError, InternalError, QueryFailed
from events.limits import MAX_WAIT_S
from events.operations import (
    Digest,
    GetCheckpoint,
    GetConsensus,
    GetConsistency,
    GetDigest,
    GetFact,
    GetHistory,
    GetProof,
    GetStats,
    GetStatus,
    ListAgents,
    ListFacts,
    NodeStatus,
    PageFacts,
    PageSearch,
    Query,
    Search,
    decode_query,
)
from projections import proofs, queries
from projections.cache import ReadCache
from projections.digest import digest
from projections.pool import ConnectionPool
from projections.projector import Projector

log = structlog.get_logger(__name__)
_encoder: Final = msgspec.json.Encoder()


class ReadService:
    """Answers typed queries from one node's read model; see the module doc."""

    def __init__(
        self,
        pool: ConnectionPool,
        projector: Projector,
        cache: ReadCache,
        *,
        ledger: proofs.EventLookup | None = None,
        db: Path | None = None,
    ) -> None:
        self.pool = pool
        self.projector = projector
        self.cache = cache
        #: Where inclusion proofs read the event's bytes; without it, ``proof`` is refused.
        self.ledger = ledger
        self.db = db
        #: Bugs met (each answered ``internal`` with a trace id that the log holds).
        self.internal_errors = 0

    async def run(self, tenant: str, query: Query) -> Any:
        """Answer ``query`` for ``tenant``, after waiting (bounded) for its ``min_seq``."""
        projector = self.projector
        if isinstance(query, GetStatus):
            return self.status()  # always: it is how a node says it is not following
        if projector.halted:
            raise self._not_following(query.min_seq)
        # A read as of a seq this node has not reached would be answered as of now:
        # wait for it as for min_seq.
        as_of: int | None = getattr(query, "as_of_seq", None)
        needed = max(query.min_seq or 0, as_of or 0)
        if needed > projector.seq:
            # Waits through a restart too: read-your-writes survives a blip of the feed.
            wait = min(query.timeout, MAX_WAIT_S)
            if not await projector.wait_for(needed, timeout=wait):
                if not projector.following:
                    raise self._not_following(needed)
                what = "min_seq" if needed == query.min_seq else "as_of_seq"
                raise QueryFailed(
                    f"this node has applied the ledger up to seq {self.projector.seq}; "
                    f"{what} {needed} was not reached within {wait} s",
                    code="timeout",
                )
        elif not projector.following and query.min_seq is None:
            # Restarting, and the read asked for no position: its rows may be stale.
            raise self._not_following()
        return await self._answer(tenant, query)

    async def _answer(self, tenant: str, query: Query) -> Any:  # noqa: PLR0912 (one case per op)
        pool = self.pool
        match query:
            case GetFact(fact_id=fact_id, as_of_seq=None):
                return await self._cached(
                    "fact", tenant, fact_id, lambda: queries.get_fact(pool, tenant, fact_id)
                )
            case GetFact(fact_id=fact_id, as_of_seq=as_of):
                return await queries.get_fact(pool, tenant, fact_id, as_of_seq=as_of)
            case GetConsensus(fact_id=fact_id, as_of_seq=None):
                return await self._cached(
                    "consensus",
                    tenant,
                    fact_id,
                    lambda: queries.consensus_of(pool, tenant, fact_id),
                )
            case GetConsensus(fact_id=fact_id, as_of_seq=as_of):
                return await queries.consensus_of(pool, tenant, fact_id, as_of_seq=as_of)
            case GetHistory(fact_id=fact_id, as_of_seq=as_of):
                return await queries.history(pool, tenant, fact_id, as_of_seq=as_of)
            case ListFacts():
                page = await queries.facts_page(
                    pool,
                    tenant,
                    include_deprecated=query.include_deprecated,
                    valid_at=_zoned(query.valid_at),
                    as_of_seq=query.as_of_seq,
                    agent_id=query.agent_id,
                    type=query.type,
                    limit=query.limit,
                    cursor=query.cursor,
                )
                return page if isinstance(query, PageFacts) else page.items
            case Search():
                hits = await queries.search_page(
                    pool,
                    tenant,
                    query.text,
                    limit=query.limit,
                    include_deprecated=query.include_deprecated,
                    as_of_seq=query.as_of_seq,
                    cursor=query.cursor,
                )
                return hits if isinstance(query, PageSearch) else hits.items
            case ListAgents():
                return await queries.agents(pool, tenant)
            case GetStatus():
                return self.status()
            case GetDigest():
                return Digest(seq=self.projector.seq, digest=await digest(pool))
            case GetStats():
                return await queries.stats(pool, tenant, self.projector.seq)
            case GetCheckpoint(tree_size=tree_size):
                return await proofs.signed_checkpoint(pool, tree_size)
            case GetProof(event=event, tree_size=tree_size):
                if self.ledger is None:
                    raise QueryFailed(
                        "this node cannot read the ledger for proofs", code="unavailable"
                    )
                return await proofs.inclusion_proof(pool, self.ledger, tenant, event, tree_size)
            case GetConsistency(old_size=old, new_size=new):
                return await proofs.consistency_proof(pool, old, new)
        raise InternalError(TypeError(f"no handler for {type(query).__name__}"))

    async def respond(self, tenant: str, op: str, payload: bytes) -> bytes:
        """One query from wire bytes to reply bytes: ``{"result": …}`` or ``{"error": …}``."""
        try:
            reply: dict[str, Any] = {"result": await self.run(tenant, decode_query(op, payload))}
        except CortexError as e:
            reply = {"error": {"code": e.code, "message": str(e)}}
        except Exception as e:  # a query must never take the node down
            bug = InternalError(e)
            self.internal_errors += 1
            log.exception("query_failed", tenant=tenant, op=op, trace=bug.trace)
            reply = {"error": {"code": bug.code, "message": str(bug)}}
        return _encoder.encode(reply)

    async def _cached(
        self, op: str, tenant: str, fact_id: uuid.UUID, read: Callable[[], Awaitable[Any]]
    ) -> Any:
        key = (op, tenant, str(fact_id))
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        generation = self.cache.generation
        value = await read()
        self.cache.put(key, value, read_at=generation)
        return value

    def _not_following(self, min_seq: int | None = None) -> QueryFailed:
        projector = self.projector
        wanted = "" if min_seq is None else f"; min_seq {min_seq} cannot be reached here"
        state = (
            "stopped following the ledger for good"
            if projector.halted
            else "is not following the ledger now"
        )
        return QueryFailed(
            f"this node {state} (at seq {projector.seq}: {projector.stopped_reason}){wanted}; "
            "ask another node, or see `cortex status`",
            code="not_following",
        )

    def status(self) -> NodeStatus:
        return NodeStatus(
            seq=self.projector.seq,
            head=self.projector.head.hex(),
            applied=self.projector.applied,
            db=str(self.db or ""),
            pool=asdict(self.pool.stats()),
            cache=asdict(self.cache.stats()),
            following=self.projector.following,
            stopped_reason=self.projector.stopped_reason,
            quarantined=self.projector.quarantined,
        )


def _zoned(value: dt.datetime | None) -> dt.datetime | None:
    """A world time without a zone is read as UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=dt.UTC)
