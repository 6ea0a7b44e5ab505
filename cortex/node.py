"""A node's read side: its projector fed from JetStream, its queries served on NATS.

``projections`` knows SQLite, not NATS; this module joins the two. On start
it checks that the database really follows this ledger (the hash it stored
for its position must be the ledger's hash at that seq), catches up to the
ledger's last seq as it stands then (logging its progress), and only then
joins the query group: it answers ``cortex.query.<tenant>.<op>`` in a queue
group, so any node may answer any client, and none answers from far behind.
A named node also answers ``status`` on a subject of its own
(``status_subject``), so that ``cortex cluster status`` can ask each node.

From then on it follows the stream live, supervised (``cortex.supervisor``):
a stall or a lost connection restarts the follower with backoff (the read
model says it is not following meanwhile, and a ``min_seq`` past it fails
fast); a ledger it cannot follow (a broken chain, missing events, the stream
gone) stops it for good, tells ``on_fatal`` (``cortex up`` then exits with
that reason), and every query but ``status`` is refused from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import msgspec
import structlog

from cortex.nats import Bus, Inbound, Serving
from cortex.supervisor import Backoff, as_cortex_error, fatal
from events.errors import CortexError, LedgerMismatch, Unavailable
from events.limits import MAX_WAIT_S
from projections.cache import ReadCache
from projections.feed import records
from projections.integrity import check_position
from projections.pool import ConnectionPool
from projections.projector import Projector
from projections.service import ReadService
from projections.tasks import stop_task

log = structlog.get_logger(__name__)

QUERY_PREFIX: Final = "cortex.query"
QUEUE_GROUP: Final = "cortex-query"
HEALTH_CHECK_S: Final = 30.0
#: How often a node catching up on start logs its progress.
PROGRESS_LOG_S: Final = 2.0
#: Failed attempts in a row, without progress, before a catch-up on start gives up.
CATCH_UP_ATTEMPTS: Final = 5
_encoder: Final = msgspec.json.Encoder()
_TOKEN: Final = re.compile(r"[A-Za-z0-9_-]+")


def status_subject(tenant: str, node: str) -> str:
    """Where the node named ``node`` alone answers ``status`` (its projector's position,
    whether it follows): ``cortex.query.<tenant>.status.<node>``. Any other query
    subject is served by the whole group, so whichever node answers says nothing of
    a given one."""
    return f"{QUERY_PREFIX}.{tenant}.status.{node}"


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

    def __init__(
        self,
        bus: Bus,
        db: Path,
        *,
        readers: int = 4,
        cache_size: int = 10_000,
        on_fatal: Callable[[CortexError], None] | None = None,
        name: str = "",
    ) -> None:
        if name and not _TOKEN.fullmatch(name):
            raise ValueError(f"a node's name is one subject token (letters, digits, - _): {name!r}")
        self.bus = bus
        #: Answers ``status`` on its own subject too (``status_subject``); "" for none.
        self.name = name
        self._own: Serving | None = None
        self.db = db
        self.pool = ConnectionPool(db, readers=readers)
        self.cache = ReadCache(cache_size)
        self.projector = Projector(
            self.pool, on_commit=lambda _seq, touched: self.cache.invalidate(touched)
        )
        self._follow: asyncio.Task[None] | None = None
        self._health: asyncio.Task[None] | None = None
        self._queries: set[asyncio.Task[None]] = set()
        self._sub: Serving | None = None
        self._on_fatal = on_fatal
        self.service = ReadService(self.pool, self.projector, self.cache, ledger=bus, db=db)

    async def start(self) -> None:
        self.db.parent.mkdir(parents=True, exist_ok=True)
        await self.pool.open()
        try:
            await self.projector.open()
            await check_position(self.pool, self.db)  # its rows end where it says
            await verify_position(self.bus, self.projector, self.db)
            await self._catch_up()
        except BaseException:
            await self.pool.close()
            raise
        self._follow = asyncio.create_task(self._supervise(), name="cortex-projector")
        self._health = asyncio.create_task(self._check_pool(), name="cortex-pool-health")
        for task in (self._follow, self._health):
            task.add_done_callback(self._ended)
        self._sub = await self.bus.serve(f"{QUERY_PREFIX}.*.*", self._on_query, queue=QUEUE_GROUP)
        if self.name:
            # Alone on its subject: the queue group the node's permissions require
            # has this one member, so the answer is this node's, not any node's.
            self._own = await self.bus.serve(
                status_subject("*", self.name), self._on_own_status, queue=QUEUE_GROUP
            )
        log.info("projector_started", db=str(self.db), seq=self.projector.seq)

    async def _catch_up(self) -> None:
        """Apply the ledger up to its last seq as of now (a bounded read), before any
        query is taken; a stall is retried a few times, a broken ledger is not."""
        projector = self.projector
        target = await self.bus.last_seq()
        if projector.seq >= target:
            return
        started = time.monotonic()
        logged = started
        log.info("projector_catching_up", db=str(self.db), seq=projector.seq, target=target)

        def progress(seq: int) -> None:
            nonlocal logged
            now = time.monotonic()
            if now - logged >= PROGRESS_LOG_S:
                logged = now
                log.info("projector_catching_up", seq=seq, target=target)

        backoff = Backoff(limit=CATCH_UP_ATTEMPTS)
        while projector.seq < target:
            before = projector.seq
            try:
                feed = records(self.bus, before + 1, target, head=projector.head)
                await projector.consume(feed, progress=progress)
            except Exception as e:
                if projector.seq > before:
                    backoff.progressed()
                delay = None if fatal(e) else backoff.failed(e)
                if delay is None:
                    raise
                log.warning("projector_catch_up_retry", seq=projector.seq, error=str(e), in_s=delay)
                await asyncio.sleep(delay)
        log.info(
            "projector_caught_up",
            seq=projector.seq,
            seconds=round(time.monotonic() - started, 3),
        )

    async def _supervise(self) -> None:
        """Follow the ledger live; restart with backoff where that can help, else halt."""
        projector, backoff = self.projector, Backoff()
        while True:
            before = projector.seq
            error: Exception
            try:
                target = await self.bus.last_seq()  # the stream answers: the feed is back
                if not projector.following and projector.seq < target:
                    # Back after a stop: catch up (a bounded read) before saying so, or
                    # reads would be answered from a model known to be behind.
                    feed = records(self.bus, projector.seq + 1, target, head=projector.head)
                    await projector.consume(feed)
                projector.mark_following()
                await projector.consume(records(self.bus, projector.seq + 1, head=projector.head))
                error = Unavailable("the ledger feed ended")
            except asyncio.CancelledError:
                raise
            except Exception as e:
                error = e
            if projector.seq > before:
                backoff.progressed()
            delay = None if fatal(error) else backoff.failed(error)
            if delay is None:
                await self._halt(error)
                return
            await projector.mark_stopped(f"restarting after: {error}")
            log.warning(
                "projector_restarting",
                seq=projector.seq,
                error=str(error) or type(error).__name__,
                in_s=delay,
                attempt=backoff.attempts,
            )
            await asyncio.sleep(delay)

    async def _halt(self, error: Exception) -> None:
        """Stop following for good: refuse queries, say why, tell whoever runs the node."""
        seq = self.projector.seq
        await self.projector.mark_stopped(str(error) or type(error).__name__, halted=True)
        log.critical("projector_stopped", db=str(self.db), seq=seq, error=str(error))
        if self._on_fatal is not None:
            self._on_fatal(as_cortex_error(error, f"the node's projector stopped at seq {seq}"))

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A long-lived task ended on its own: nothing may die silently."""
        if task.cancelled():
            return
        error = task.exception()
        if error is None and task is self._follow and self.projector.halted:
            return  # _halt has said why already
        failure = error or RuntimeError(f"{task.get_name()} ended")
        log.critical("node_task_ended", task=task.get_name(), error=str(failure))
        if self._on_fatal is not None:
            self._on_fatal(as_cortex_error(failure, f"the node's {task.get_name()} task ended"))

    async def _check_pool(self) -> None:
        """Every half minute, replace any pooled connection that stopped answering."""
        while True:
            await asyncio.sleep(HEALTH_CHECK_S)
            try:
                if replaced := await self.pool.check():
                    log.warning("pool_connections_replaced", count=replaced)
            except Exception:  # a failed check is retried at the next one
                log.exception("pool_check_failed")

    async def stop(self) -> None:
        if self._health is not None:
            await stop_task(self._health)
            self._health = None
        for sub in (self._sub, self._own):
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.close()
        self._sub = self._own = None
        if self._queries:
            await asyncio.wait(self._queries, timeout=MAX_WAIT_S)
        if self._follow is not None:
            await stop_task(self._follow)
            self._follow = None
        await self.pool.close()

    # -- queries ---------------------------------------------------------------

    async def _on_query(self, msg: Inbound) -> None:
        """Answer in a task of its own: a slow query (or one waiting for
        ``min_seq``) must not hold up the others; the pool bounds the concurrency."""
        task = asyncio.create_task(self._reply(msg))
        self._queries.add(task)
        task.add_done_callback(self._queries.discard)

    async def _on_own_status(self, msg: Inbound) -> None:
        """``status`` asked of this node by name: its position, whether it follows."""
        reply = await self.service.respond(msg.subject.split(".")[2], "status", msg.data)
        with contextlib.suppress(Exception):
            await msg.respond(reply)

    async def _reply(self, msg: Inbound) -> None:
        parts = msg.subject.split(".")
        if len(parts) == 4:
            reply = await self.service.respond(parts[2], parts[3], msg.data)
        else:
            reply = _encoder.encode(
                {
                    "error": {
                        "code": "malformed",
                        "message": f"queries go to cortex.query.<tenant>.<op>, not {msg.subject}",
                    }
                }
            )
        if msg.reply:
            with contextlib.suppress(Exception):
                await msg.respond(reply)
