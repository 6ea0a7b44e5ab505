"""A node's read side: its projector fed from JetStream, its queries served on NATS.

``projections`` knows SQLite, not NATS; this module joins the two. On start
it checks that the database really follows this ledger (the hash it stored
for its position must be the ledger's hash at that seq), then follows the
stream live from there and answers ``cortex.query.<tenant>.<op>`` — in a
queue group, so any node may answer any client.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import msgspec
import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from cortex import proofs
from cortex.bus import Bus
from cortex.errors import CortexError
from events.chain import link
from projections import queries
from projections.cache import ReadCache
from projections.digest import digest
from projections.errors import LedgerMismatch, ProjectionError, QueryError
from projections.pool import ConnectionPool
from projections.projector import Projector, Record

log = structlog.get_logger(__name__)

QUERY_PREFIX: Final = "cortex.query"
QUEUE_GROUP: Final = "cortex-query"
#: Longest a read may wait for ``min_seq`` (read-your-writes).
MAX_WAIT_S: Final = 30.0
DEFAULT_WAIT_S: Final = 5.0
HEALTH_CHECK_S: Final = 30.0
_encoder: Final = msgspec.json.Encoder()
_params: Final = msgspec.json.Decoder(dict[str, Any])


async def records(
    bus: Bus, start_seq: int, end_seq: int | None = None, *, head: bytes | None = None
) -> AsyncIterator[Record]:
    """The ledger as the projector wants it: (seq, body), read once or followed live.

    With ``head`` (the chain hash before ``start_seq``), every event must link
    to the one before and hash to what the ledger recorded for it; a node
    never projects a stream that was tampered with.
    """
    source = bus.read(start_seq, end_seq) if end_seq is not None else bus.follow(start_seq)
    async for stored in source:
        if head is not None:
            if stored.prev_hash != head or link(head, stored.body) != stored.hash:
                raise LedgerMismatch(
                    f"the ledger's event at seq {stored.seq} does not follow the chain: "
                    "nothing more is projected; run `cortex audit`"
                )
            head = stored.hash
        yield stored.seq, stored.body


async def verify_position(bus: Bus, projector: Projector, db: Path) -> None:
    """Refuse a database that was built from another ledger, altered, or is ahead of it."""
    if projector.seq == 0:
        return
    rebuild = f"rebuild it with `cortex replay --db {db}`"
    last = await bus.last_seq()
    if projector.seq > last:
        raise LedgerMismatch(
            f"{db} is at seq {projector.seq} but the ledger ends at {last}: it was built from "
            f"another ledger; {rebuild}"
        )
    stored = await bus.get(projector.seq)
    if stored.hash != projector.head:
        raise LedgerMismatch(
            f"{db} holds hash {projector.head.hex()[:16]}… at seq {projector.seq} but the ledger "
            f"has {stored.hash.hex()[:16]}…: the database is from another ledger or was altered; "
            f"{rebuild}"
        )


class ProjectionNode:
    """Runs one node's projector and serves its queries; see the module doc."""

    def __init__(self, bus: Bus, db: Path, *, readers: int = 4, cache_size: int = 10_000) -> None:
        self.bus = bus
        self.db = db
        self.pool = ConnectionPool(db, readers=readers)
        self.cache = ReadCache(cache_size)
        self.projector = Projector(
            self.pool, on_commit=lambda _seq, touched: self.cache.invalidate(touched)
        )
        self._follow: asyncio.Task[None] | None = None
        self._health: asyncio.Task[None] | None = None
        self._queries: set[asyncio.Task[None]] = set()
        self._sub: Subscription | None = None
        self._ops: dict[str, Callable[[str, dict[str, Any]], Awaitable[Any]]] = {
            "get_fact": self._get_fact,
            "consensus": self._consensus,
            "facts": self._facts,
            "search": self._search,
            "history": self._history,
            "agents": self._agents,
            "status": self._status,
            "digest": self._digest,
            "checkpoint": self._checkpoint,
            "proof": self._proof,
            "consistency": self._consistency,
        }

    async def start(self) -> None:
        self.db.parent.mkdir(parents=True, exist_ok=True)
        await self.pool.open()
        try:
            await self.projector.open()
            await verify_position(self.bus, self.projector, self.db)
        except BaseException:
            await self.pool.close()
            raise
        self._follow = asyncio.create_task(self._run(), name="cortex-projector")
        self._health = asyncio.create_task(self._check_pool(), name="cortex-pool-health")
        self._sub = await self.bus.serve(f"{QUERY_PREFIX}.*.*", self._on_query, queue=QUEUE_GROUP)
        log.info("projector_started", db=str(self.db), seq=self.projector.seq)

    async def _run(self) -> None:
        try:
            await self.projector.consume(
                records(self.bus, self.projector.seq + 1, head=self.projector.head)
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("projector_stopped", seq=self.projector.seq)
            raise

    async def _check_pool(self) -> None:
        """Every half minute, replace any pooled connection that stopped answering."""
        while True:
            await asyncio.sleep(HEALTH_CHECK_S)
            try:
                if replaced := await self.pool.check():
                    log.warning("pool_connections_replaced", count=replaced)
            except ProjectionError:
                log.exception("pool_check_failed")

    async def stop(self) -> None:
        if self._health is not None:
            self._health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health
            self._health = None
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        if self._queries:
            await asyncio.wait(self._queries, timeout=MAX_WAIT_S)
        if self._follow is not None:
            self._follow.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._follow
            self._follow = None
        await self.pool.close()

    # -- queries ---------------------------------------------------------------

    async def _on_query(self, msg: Msg) -> None:
        """Answer in a task of its own: a slow query (or one waiting for
        ``min_seq``) must not hold up the others; the pool bounds the concurrency."""
        task = asyncio.create_task(self._reply(msg))
        self._queries.add(task)
        task.add_done_callback(self._queries.discard)

    async def _reply(self, msg: Msg) -> None:
        try:
            tenant, op, params = _parse_query(msg.subject, msg.data)
            reply: dict[str, Any] = {"result": await self.answer(tenant, op, params)}
        except (ProjectionError, CortexError) as e:
            reply = {"error": {"code": e.code, "message": str(e)}}
        except Exception as e:  # a query must never take the node down
            log.exception("query_failed", subject=msg.subject)
            reply = {"error": {"code": "internal", "message": f"{type(e).__name__}: {e}"}}
        if msg.reply:
            with contextlib.suppress(Exception):
                await msg.respond(_encoder.encode(reply))

    async def answer(self, tenant: str, op: str, params: dict[str, Any]) -> Any:
        """Answer one query, after waiting (bounded) for ``min_seq`` if given."""
        handler = self._ops.get(op)
        if handler is None:
            raise QueryError(f"unknown query {op!r}; known: {sorted(self._ops)}", code="unknown_op")
        min_seq = params.pop("min_seq", None)
        wait = params.pop("timeout", DEFAULT_WAIT_S)
        if min_seq is not None:
            if not isinstance(min_seq, int) or not isinstance(wait, int | float) or wait < 0:
                raise QueryError("min_seq must be an integer and timeout a number of seconds")
            if not await self.projector.wait_for(min_seq, timeout=min(float(wait), MAX_WAIT_S)):
                raise QueryError(
                    f"this node has applied the ledger up to seq {self.projector.seq}; "
                    f"min_seq {min_seq} was not reached within {min(float(wait), MAX_WAIT_S)} s",
                    code="timeout",
                )
        try:
            return await handler(tenant, params)
        except TypeError as e:
            raise QueryError(f"bad parameters for {op}: {e}") from e
        except KeyError as e:
            raise QueryError(f"{op} needs the parameter {e}") from e

    async def _cached(
        self, op: str, tenant: str, fact_id: Any, read: Callable[[], Awaitable[Any]]
    ) -> Any:
        key = (op, tenant, queries.canonical_fact_id(fact_id))
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        generation = self.cache.generation
        value = await read()
        self.cache.put(key, value, read_at=generation)
        return value

    async def _get_fact(self, tenant: str, p: dict[str, Any]) -> Any:
        fact_id = p.pop("fact_id")
        _no_more(p)
        return await self._cached(
            "fact", tenant, fact_id, lambda: queries.get_fact(self.pool, tenant, fact_id)
        )

    async def _consensus(self, tenant: str, p: dict[str, Any]) -> Any:
        fact_id = p.pop("fact_id")
        _no_more(p)
        return await self._cached(
            "consensus", tenant, fact_id, lambda: queries.consensus_of(self.pool, tenant, fact_id)
        )

    async def _facts(self, tenant: str, p: dict[str, Any]) -> Any:
        valid_at = p.pop("valid_at", None)
        if valid_at is not None:
            valid_at = _parse_time(valid_at)
        return await queries.list_facts(self.pool, tenant, valid_at=valid_at, **p)

    async def _search(self, tenant: str, p: dict[str, Any]) -> Any:
        return await queries.search(self.pool, tenant, **p)

    async def _history(self, tenant: str, p: dict[str, Any]) -> Any:
        return await queries.history(self.pool, tenant, **p)

    async def _agents(self, tenant: str, p: dict[str, Any]) -> Any:
        _no_more(p)
        return await queries.agents(self.pool, tenant)

    async def _status(self, tenant: str, p: dict[str, Any]) -> Any:
        _no_more(p)
        return self.status()

    async def _digest(self, tenant: str, p: dict[str, Any]) -> Any:
        _no_more(p)
        return {"seq": self.projector.seq, "digest": await digest(self.pool)}

    async def _checkpoint(self, tenant: str, p: dict[str, Any]) -> Any:
        tree_size = p.pop("tree_size", None)
        _no_more(p)
        return await proofs.checkpoint(self.pool, _size(tree_size))

    async def _proof(self, tenant: str, p: dict[str, Any]) -> Any:
        event, tree_size = p.pop("event"), p.pop("tree_size", None)
        _no_more(p)
        return await proofs.inclusion(self.pool, self.bus, tenant, event, _size(tree_size))

    async def _consistency(self, tenant: str, p: dict[str, Any]) -> Any:
        old, new = p.pop("old_size"), p.pop("new_size")
        _no_more(p)
        return await proofs.consistency(self.pool, _size(old) or 0, _size(new) or 0)

    def status(self) -> dict[str, Any]:
        return {
            "seq": self.projector.seq,
            "head": self.projector.head.hex(),
            "applied": self.projector.applied,
            "db": str(self.db),
            "pool": vars_of(self.pool.stats()),
            "cache": vars_of(self.cache.stats()),
        }


def _parse_query(subject: str, data: bytes) -> tuple[str, str, dict[str, Any]]:
    parts = subject.split(".")
    if len(parts) != 4:
        raise QueryError(
            f"queries go to cortex.query.<tenant>.<op>, not {subject}", code="malformed"
        )
    try:
        params = _params.decode(data) if data.strip() else {}
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise QueryError(f"a query is a JSON object: {e}", code="malformed") from e
    return parts[2], parts[3], params


def vars_of(value: Any) -> dict[str, Any]:
    return {name: getattr(value, name) for name in value.__dataclass_fields__}


def _size(value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise QueryError(f"a tree size is a positive whole number, not {value!r}")
    return value


def _no_more(params: dict[str, Any]) -> None:
    if params:
        raise QueryError(f"unknown parameters: {sorted(params)}")


def _parse_time(value: Any) -> dt.datetime:
    if not isinstance(value, str):
        raise QueryError("valid_at is an ISO 8601 date-time string")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as e:
        raise QueryError(f"valid_at {value!r} is not an ISO 8601 date-time") from e
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
