"""The ledger writer: the only appender to CORTEX_LEDGER.

It serves ``cortex.cmd.<tenant>.<kind>`` in a queue group and drives the
pure ``cortex.core.sequencer`` (judge each command against the ledger state,
link it into the hash chain, sign checkpoints) over ``cortex.nats``: it
queues commands, appends what the sequencer stages and answers each caller.
Commands that arrive while a batch is being written wait and go out together
as the next atomic batch (group commit): the fsync that ``sync_interval:
always`` costs is paid once per batch, not once per event, and no event
waits for another event's acknowledgement before it is published.

The stream's configuration is part of the ledger's integrity: the writer
refuses to start on a stream that could drop or hide events
(``cortex.nats.stream_config``), and keeps checking while it runs, on every
JetStream advisory about the stream and at least every ``stream_check_s``
seconds. A batch is acknowledged only if the stream was found safe within
that interval and no advisory came since (else it is checked first). On a
drift it stops appending for good: every queued and later command is
answered ``stream_unsafe`` naming what drifted, and ``on_fatal`` is told
(``cortex up`` exits saying why).

Fair share: each request is charged, before it is queued, to a token bucket
of each agent it speaks for and of its tenant (``cortex.core.fairshare``);
one over its rate is answered ``rate_limited`` with a retry-after and
nothing is queued. The queue itself is bounded (``max_queued`` commands), so
a flood of many distinct agents or tenants is refused the same way instead
of growing the writer's memory and everyone's wait.

Every append states the sequence it expects to follow. A writer whose view
is stale (another writer appended first) is refused by JetStream, reads
what it missed, judges its commands again and retries: two writers can
never fork the chain, and a retried command id is found even if the other
writer appended it.

A writer *candidate* (``lease=``, ``cortex.lease``) serves only while it holds
the writer lease: on start it makes sure the stream is there, then stands by
(no command subscription) until it wins the lease, recovers the chain head
from the stream, and serves. When it learns that another candidate took the
lease it stops appending at once, leaves the command queue group and answers
what it had queued ``unavailable`` (clients send the same ids again and reach
the new writer), then stands by again. A clean stop hands over without a gap:
it answers new requests ``unavailable`` while it appends what it queued, signs
its final checkpoint and releases the lease, and leaves the command queue group
only once a standby serves (``_hand_over``); leaving, it drains the requests
already delivered to it, so that none waits out its client's timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Callable
from typing import Final

import msgspec
import structlog

from cortex.commands_wire import Request, Result, encode_reply, error, parse, speakers
from cortex.core.fairshare import DEFAULT_AGENT_RATE, DEFAULT_TENANT_RATE, FairShare, Rate
from cortex.core.keys import WriterKey
from cortex.core.ledger_state import LedgerState
from cortex.core.sequencer import (
    CHECKPOINT,
    DEFAULT_CHECKPOINT_EVERY,
    DEFAULT_CHECKPOINT_INTERVAL,
    JETSTREAM_BATCH_LIMIT,
    Item,
    Sequencer,
    Staged,
    same_or_reused,
)
from cortex.errors import (
    AppendConflict,
    ChainBroken,
    CortexError,
    InternalError,
    LedgerError,
    StreamUnsafe,
    Unavailable,
)
from cortex.lease import WriterLease
from cortex.nats import CHECKPOINT_SUBJECT, COMMAND_PREFIX, STREAM, Bus, Inbound, Serving
from cortex.receipts import COVERING_KIND, ORIGIN_KIND
from cortex.supervisor import Backoff
from events.chain import link
from events.codec import decode_event
from events.commands import Command
from events.limits import MAX_QUEUED
from events.model import SYSTEM_TENANT
from events.rules import Refusal
from projections.tasks import stop_task

log = structlog.get_logger(__name__)

QUEUE_GROUP: Final = "cortex-writer"
DEFAULT_MAX_BATCH: Final = JETSTREAM_BATCH_LIMIT
_MAX_ATTEMPTS: Final = 50
#: How long a stop may spend signing its final checkpoint.
_FINAL_CHECKPOINT_S: Final = 2.0
#: How old the last check of the stream's configuration may be when a batch is acknowledged.
DEFAULT_STREAM_CHECK_S: Final = 5.0
#: A batch that meets NATS unavailable is retried after 50 ms, doubling to 1 s, for this long
#: (a stream leader's election takes 4-9 s); then its callers are answered ``unavailable``.
_UNAVAILABLE_BUDGET_S: Final = 15.0
#: How long one append waits for JetStream's acknowledgement before it is tried
#: again (same ids, same expected seq: safe). A stream leader killed with the batch
#: in flight never answers; waiting the bus's 5 s put CORTEX's fail-over on the next
#: 5 s step after the engine's (measured: 10.2 s against 4.8 s). The p99 of an
#: append on a loaded 3-node cluster is about 60 ms.
_APPEND_ATTEMPT_S: Final = 1.0
#: A catch-up after a failed append that hears nothing this long is tried again.
_RESYNC_QUIET_S: Final = 0.5
_RETRY_FIRST_S: Final = 0.05
_RETRY_CAP_S: Final = 0.25
#: How long a stop (or a lost lease) waits for the requests already delivered to it.
_DRAIN_S: Final = 1.0
#: How long a clean stop waits for a standby to serve before it leaves the queue group.
_HAND_OVER_S: Final = 2.0
#: How long a start waits for the stream to become available (a cluster electing its leaders).
_START_BUDGET_S: Final = 60.0

__all__ = [
    "DEFAULT_CHECKPOINT_EVERY",
    "DEFAULT_CHECKPOINT_INTERVAL",
    "DEFAULT_MAX_BATCH",
    "DEFAULT_STREAM_CHECK_S",
    "JETSTREAM_BATCH_LIMIT",
    "QUEUE_GROUP",
    "LedgerWriter",
]

#: A command waiting in the queue; its payload is the future its reply waits on.
_Pending = Item[asyncio.Future[Result]]


class LedgerWriter:
    """Validates commands and appends them as hash-chained events; see the module doc."""

    def __init__(
        self,
        bus: Bus,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        replicas: int = 1,
        key: WriterKey | None = None,
        checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
        checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL,
        rotate_from: WriterKey | None = None,
        require_signatures: bool = False,
        accept_unbound_signatures: bool = False,
        stream_check_s: float = DEFAULT_STREAM_CHECK_S,
        watch_advisories: bool = True,
        on_fatal: Callable[[CortexError], None] | None = None,
        on_checkpoint: Callable[[int, int], None] | None = None,
        rate_agent: Rate = DEFAULT_AGENT_RATE,
        rate_tenant: Rate = DEFAULT_TENANT_RATE,
        max_queued: int = MAX_QUEUED,
        lease: WriterLease | None = None,
    ) -> None:
        if not 1 <= max_batch <= JETSTREAM_BATCH_LIMIT:
            raise ValueError(
                "max_batch must be between 1 and 1000 (JetStream's atomic batch limit)"
            )
        if not 0 < stream_check_s <= 60:
            raise ValueError("stream_check_s must be more than 0 and at most 60 seconds")
        self.bus = bus
        self.max_batch = max_batch
        self.replicas = replicas
        #: Judges, links and signs; the writer appends what it stages and answers.
        self.sequencer = Sequencer(
            LedgerState(
                require_signatures=require_signatures,
                accept_unbound_signatures=accept_unbound_signatures,
            ),
            key=key,
            checkpoint_every=checkpoint_every,
            checkpoint_interval=checkpoint_interval,
            rotate_from=rotate_from,
        )
        self.checkpoint_interval = checkpoint_interval
        #: Callers waiting for a checkpoint covering a seq: (seq, future of the reply).
        self._covering: list[tuple[int, asyncio.Future[Result]]] = []
        self._ticker: asyncio.Task[None] | None = None
        self._tick = asyncio.Event()
        self._idle = False  # the timer sleeps with nothing uncovered
        #: A command, an atomic group of them (never split across batches), or None: stop.
        self._queue: asyncio.Queue[_Pending | list[_Pending] | None] = asyncio.Queue()
        #: Per-agent and per-tenant token buckets, charged before a command is queued.
        self.fairshare = FairShare(rate_agent, rate_tenant)
        if max_queued < 1:
            raise ValueError("max_queued must be at least 1")
        self.max_queued = max_queued
        #: Commands in the queue now, and the seconds a commit has taken per command.
        self._queued = 0
        self._per_item = 50e-6
        self._groups = 0
        self._sub: Serving | None = None
        self._admin: Serving | None = None
        self._committer: asyncio.Task[None] | None = None
        self._replies: set[asyncio.Task[None]] = set()
        self._broken: ChainBroken | None = None
        #: How often the stream's configuration is checked, at least; see the module doc.
        self.stream_check_s = stream_check_s
        #: False for a connection not allowed to subscribe to JetStream advisories:
        #: then only the polling bounds how long a drift goes unnoticed.
        self.watch_advisories = watch_advisories
        self._on_fatal = on_fatal
        #: Told ``(seq, tree_size)`` of each newer checkpoint once it is stored (must not block).
        self.on_checkpoint = on_checkpoint
        self._failed = False
        self._stopping = False
        #: Set while a clean stop hands over: every request is answered ``unavailable``.
        self._refusing = ""
        #: Set once the stream was found unsafe: nothing is appended after it.
        self.unsafe: StreamUnsafe | None = None
        self._checked_at = -float("inf")  # monotonic time the last good check began
        self._advised = False  # an advisory came since that check began
        self._check_lock = asyncio.Lock()
        self._poke = asyncio.Event()
        self._advisories: Serving | None = None
        self._watch: asyncio.Task[None] | None = None
        #: The last seq known to be in the stream (appended or read by this writer).
        self._stored = 0
        self.appended = 0
        #: A candidate's lease (None: this writer always serves); see the module doc.
        self.lease = lease
        #: A clean stop of the active candidate waits (bounded) for a standby to serve
        #: before it leaves the command queue group; False when no standby will.
        self.hand_over = True
        #: Set while this writer serves commands (holds the lease, if it is a candidate).
        self.active = asyncio.Event()
        self._candidacy: asyncio.Task[None] | None = None
        #: Times this writer started serving (more than once: it lost and won the lease again).
        self.activations = 0
        #: Bugs met (each answered ``internal`` with a trace id that the log holds).
        self.internal_errors = 0
        self.conflicts = 0

    @property
    def state(self) -> LedgerState:
        """The ledger as far as this writer has appended or read it."""
        return self.sequencer.state

    @property
    def key(self) -> WriterKey | None:
        """Signs checkpoints; without one the writer appends no checkpoints."""
        return self.sequencer.key

    async def start(self) -> None:
        """Create the stream or check it, watch its configuration; then recover the head
        and state and serve (a candidate: stand by until it holds the lease, and
        return at once)."""
        checked = time.monotonic()
        await self._ensure_stream()
        self._checked_at = checked
        if self.watch_advisories:
            self._advisories = await self.bus.watch_stream(self._on_advisory)
        if self.lease is None:
            await self._activate()
        else:
            self._candidacy = asyncio.create_task(self._stand(), name="cortex-writer-candidacy")
            self._candidacy.add_done_callback(self._ended)
        self._watch = asyncio.create_task(self._watch_stream(), name="cortex-stream-watch")
        self._watch.add_done_callback(self._ended)

    async def _ensure_stream(self) -> None:
        """``ensure_stream``, retried while JetStream is unavailable (a cluster still
        electing its leaders), for at most ``_START_BUDGET_S``."""
        deadline = time.monotonic() + _START_BUDGET_S
        backoff = Backoff(first=0.1, cap=2.0)
        while True:
            try:
                await self.bus.ensure_stream(replicas=self.replicas)
                return
            except Unavailable as e:
                delay = backoff.failed(e)
                if delay is None or time.monotonic() + delay > deadline:
                    raise
                log.warning("stream_unavailable", error=e.message, retry_in=delay)
                await asyncio.sleep(delay)

    async def _activate(self) -> None:
        """Recover the head and state from the stream, then serve commands."""
        started = time.perf_counter()
        await self._catch_up()
        gc.freeze()  # the recovered state lives as long as the writer: stop re-scanning it
        log.info(
            "writer_recovered",
            seq=self.state.seq,
            head=self.state.head.hex()[:16],
            seconds=round(time.perf_counter() - started, 3),
        )
        if self.key is not None and self.key.public_hex not in self.state.writer_keys:
            await self._commit([])  # records this writer's key before anything it signs
        self._committer = asyncio.create_task(self._run(), name="cortex-writer")
        self._committer.add_done_callback(self._ended)
        if self.key is not None:
            self._ticker = asyncio.create_task(self._checkpoint_timer(), name="cortex-ckpt-timer")
            self._ticker.add_done_callback(self._ended)
        self._sub = await self.bus.serve(
            f"{COMMAND_PREFIX}.*.*", self._on_request, queue=QUEUE_GROUP
        )
        self._admin = await self.bus.serve(
            CHECKPOINT_SUBJECT, self._on_checkpoint, queue=QUEUE_GROUP
        )
        self.activations += 1
        self.active.set()
        if self.lease is not None:
            await self.lease.serving()  # a predecessor handing over may leave now

    async def _stand(self) -> None:
        """A candidate's life: wait for the lease, serve while it holds it, stand by again
        once it lost it (see the module doc)."""
        assert self.lease is not None
        lease = self.lease
        while True:
            await lease.acquire()
            try:
                await self._activate()
            except Unavailable as e:  # NATS away while it recovered: let another try
                log.warning("writer_activation_failed", error=e.message)
                await self._deactivate("it could not recover the ledger's head")
                await lease.release()
                continue
            await lease.lost.wait()
            await self._deactivate("another writer holds the writer lease")

    async def _deactivate(self, why: str) -> None:
        """Stop serving at once: leave the queue group, answer what was queued
        ``unavailable`` (nothing more is appended: ``_commit`` checks the lease)."""
        self.active.clear()
        log.warning("writer_standing_by", why=why, seq=self.state.seq)
        await self._drain()
        if self._ticker is not None:
            self._ticker.remove_done_callback(self._ended)
            await stop_task(self._ticker)
            self._ticker = None
        if self._committer is not None:
            self._committer.remove_done_callback(self._ended)
            await self._queue.put(None)  # what is queued before it is answered `unavailable`
            await self._committer
            self._committer = None
        for _seq, waiter in self._covering:
            if not waiter.done():
                waiter.set_result(error("unavailable", f"this writer stopped serving: {why}"))
        self._covering.clear()

    async def stop(self) -> None:
        """Stop taking requests, finish what was taken, answer every caller.

        An active candidate hands over first (``_hand_over``): its clients see a
        standby serve within moments, and none waits out its attempt timeout.
        """
        self._stopping = True
        if self._candidacy is not None:
            await stop_task(self._candidacy)
            self._candidacy = None
        if self.lease is not None and self.lease.held and self._sub is not None:
            await self._hand_over(self.lease)
        self.active.clear()
        await self._drain()
        if self._advisories is not None:
            with contextlib.suppress(Exception):
                await self._advisories.close()
            self._advisories = None
        for task in (self._watch, self._ticker):
            if task is not None:
                await stop_task(task)
        self._watch = self._ticker = None
        if self._committer is not None:
            await self._queue.put(None)
            await self._committer
            self._committer = None
            await self._final_checkpoint()
        for _seq, waiter in self._covering:
            if not waiter.done():
                waiter.set_result(error("unavailable", "the writer stopped"))
        self._covering.clear()
        if self._replies:
            await asyncio.gather(*self._replies, return_exceptions=True)
        if self.lease is not None:
            await self.lease.release()  # a standby takes over now, not after a period
            await self.lease.close()

    async def _hand_over(self, lease: WriterLease) -> None:
        """A clean stop of the active writer, without a moment when nobody serves:

        it keeps its place in the command queue group but answers whatever comes
        from now on ``unavailable`` (clients send it again within 50 ms), appends
        what it had queued, signs its final checkpoint and releases the lease; a
        standby takes it and serves; only then (bounded by ``_HAND_OVER_S``) does
        this writer leave the group. Leaving first would drop the requests other
        servers route to it before they learn that it left (each would cost its
        client a whole attempt timeout), and answer the rest "no responders" until
        the standby serves.

        It does not ask the stream's leader to step down, even when that is this
        writer's server: measured on three servers under load, a stepdown right
        after the hand-over cost the new writer's in-flight batch its
        acknowledgement 1 time in 6 (a 5 s append timeout), and never saved
        anything (a SIGTERM of the server moves its leaderships anyway).
        """
        self._refusing = "this writer is handing over to another one: ask again"
        began = time.monotonic()
        if self._ticker is not None:
            self._ticker.remove_done_callback(self._ended)
            await stop_task(self._ticker)
            self._ticker = None
        if self._committer is not None:
            await self._queue.put(None)  # answers everything queued before this point
            await self._committer
            self._committer = None
            await self._final_checkpoint()
        released = time.monotonic()
        await lease.release()
        if not self.hand_over:
            return
        successor = await lease.successor(timeout=_HAND_OVER_S, serving=True)
        if successor is None:
            log.warning("writer_successor_not_seen", within_s=_HAND_OVER_S)
        else:
            log.info(
                "writer_handed_over",
                to=successor.name,
                finishing_s=round(released - began, 3),
                successor_s=round(time.monotonic() - released, 3),
            )

    async def _drain(self) -> None:
        """Leave the command queue group, but first take in every request the server
        already delivered (bounded): each is answered, by this writer or ``unavailable``
        (then its client sends it again at once) instead of waiting out its timeout."""
        subs = [sub for sub in (self._sub, self._admin) if sub is not None]
        self._sub = self._admin = None
        if subs:
            drained = await asyncio.gather(*(sub.drain(_DRAIN_S) for sub in subs))
            if not all(drained):
                log.warning("writer_drain_incomplete", within_s=_DRAIN_S)

    async def _final_checkpoint(self) -> None:
        """A clean stop leaves no tail uncovered: its checkpoint is the head a restart,
        an auditor or a receipt holder can check. Bounded: a server already gone
        does not hold up the stop."""
        state = self.state
        if (
            self.key is None
            or self.unsafe is not None
            or self._broken is not None
            or self._failed
            or state.seq <= state.checkpoint_seq
        ):
            return
        final: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(_FINAL_CHECKPOINT_S):
                await self._commit([Item(CHECKPOINT, SYSTEM_TENANT, final)])
        except Exception as e:  # the stop goes on; the next start signs one
            log.warning("final_checkpoint_failed", error=str(e) or type(e).__name__)

    # -- requests ---------------------------------------------------------

    async def _on_ask(self, msg: Inbound, kind: str) -> None:
        """The two asks agents send the writer besides commands (``cortex.receipts``)."""
        if kind == ORIGIN_KIND:  # what agents sign into their commands (events.signing)
            await self._respond(msg, {"origin": self.state.first_hash.hex()})
        elif msg.data.strip():  # an agent's receipt waits for the checkpoint covering it
            await self._on_checkpoint(msg)
        else:
            await self._respond(msg, error("invalid_field", 'send {"covering": SEQ}'))

    async def _on_request(self, msg: Inbound) -> None:
        if self._refusing:
            await self._respond(msg, error("unavailable", self._refusing))
            return
        kind = msg.subject.rpartition(".")[2]
        if kind in (ORIGIN_KIND, COVERING_KIND):
            await self._on_ask(msg, kind)
        else:
            await self._on_command(msg)

    async def _on_command(self, msg: Inbound) -> None:
        # A flood over its rate is refused before it is decoded: it costs the writer
        # (and everyone waiting behind it) as little as possible.
        tenant = _tenant_of(msg.subject)
        refused = self.fairshare.tenant_empty(tenant)
        if refused is None:
            costs = speakers(msg.subject, msg.data)
            refused = None if costs is None else self.fairshare.over(tenant, costs)
            if refused is not None:
                self.fairshare.refused += sum(costs.values()) if costs else 0
        if refused is not None:
            await self._respond(msg, _rate_limited(refused.message, refused.retry_after))
            return
        parsed = parse(msg.subject, msg.data)
        if not isinstance(parsed, Request):
            await self._respond(msg, parsed)
            return
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Result]] = [loop.create_future() for _ in parsed.items]
        limited = self._admit(parsed)
        if parsed.atomic and any(limited):
            for future, reply in zip(futures, limited, strict=True):
                future.set_result(reply or _rate_limited("", 0.0))  # _admit refuses all or none
        elif parsed.atomic:
            self._enqueue_group(parsed, futures)
        else:
            for item, future, reply in zip(parsed.items, futures, limited, strict=True):
                if isinstance(item, Refusal):
                    future.set_result(error(item.code, item.message))
                elif reply is not None:
                    future.set_result(reply)
                else:
                    self._queued += 1
                    self._queue.put_nowait(Item(item, parsed.tenant, future))
        task = asyncio.create_task(self._answer(msg, futures, batch=parsed.batch))
        self._replies.add(task)
        task.add_done_callback(self._replies.discard)

    def _admit(self, parsed: Request) -> list[Result | None]:
        """Per item, the ``rate_limited`` reply that refuses it, or None: it may be queued.

        Charges the agents' and the tenant's buckets for what passes. An
        atomic request passes or is refused whole (and one that holds a
        malformed command is not charged: it is refused anyway).
        """
        items = parsed.items
        verdicts: list[Result | None] = [None] * len(items)
        if parsed.atomic and any(isinstance(i, Refusal) for i in items):
            return verdicts
        costs: dict[str, int] = {}
        for item in items:
            if isinstance(item, Command):
                agent_id: str = getattr(item, "agent_id", "")
                costs[agent_id] = costs.get(agent_id, 0) + 1
        count = sum(costs.values())
        if not count:
            return verdicts
        if self._queued + count > self.max_queued:
            wait = max(0.001, round(self._queued * self._per_item, 3))
            full = _rate_limited(
                f"the writer has {self._queued} commands waiting, its limit "
                f"({self.max_queued}): nothing was appended; retry after {wait} s",
                wait,
            )
            self.fairshare.refused += count
            return [full if isinstance(i, Command) else None for i in items]
        refused = self.fairshare.admit(parsed.tenant, costs, whole=parsed.atomic)
        if refused:
            replies = {a: _rate_limited(r.message, r.retry_after) for a, r in refused.items()}
            for n, item in enumerate(items):
                if isinstance(item, Command):
                    verdicts[n] = replies.get(getattr(item, "agent_id", ""))
        return verdicts

    def _enqueue_group(self, parsed: Request, futures: list[asyncio.Future[Result]]) -> None:
        """An atomic request: one queue entry, or refused whole at the door."""
        refused = [(n, i) for n, i in enumerate(parsed.items, 1) if isinstance(i, Refusal)]
        if refused:
            n, first = refused[0]
            aborted = error(
                "aborted",
                f"nothing of this atomic request was appended: its command {n} was refused "
                f"({first.code})",
            )
            for item, future in zip(parsed.items, futures, strict=True):
                future.set_result(
                    error(item.code, item.message) if isinstance(item, Refusal) else aborted
                )
            return
        self._groups += 1
        self._queued += len(futures)
        self._queue.put_nowait(
            [
                Item(command, parsed.tenant, future, group=self._groups)
                for command, future in zip(parsed.items, futures, strict=True)
                if isinstance(command, Command)
            ]
        )

    async def _on_checkpoint(self, msg: Inbound) -> None:
        """An empty request: sign a checkpoint now. ``{"covering": N}``: answer with the
        first checkpoint covering seq N, once there is one (the timer brings it soon)."""
        if self._refusing:
            await self._respond(msg, error("unavailable", self._refusing))
            return
        if self.key is None:
            await self._respond(msg, error("no_key", "this writer has no key to sign with"))
            return
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        covering = _covering_of(msg.data)
        if isinstance(covering, dict):
            await self._respond(msg, covering)
            return
        if covering is not None:
            if covering > self.state.seq + 1:
                await self._respond(
                    msg, error("invalid_field", f"seq {covering} is past the ledger's end")
                )
                return
            self._covering.append((covering, future))
            self._answer_covering()
            if self._idle:
                self._tick.set()
        else:
            self._queued += 1
            self._queue.put_nowait(Item(CHECKPOINT, SYSTEM_TENANT, future))
        task = asyncio.create_task(self._answer(msg, [future], batch=False))
        self._replies.add(task)
        task.add_done_callback(self._replies.discard)

    async def _answer(
        self, msg: Inbound, futures: list[asyncio.Future[Result]], *, batch: bool
    ) -> None:
        results = list(await asyncio.gather(*futures))
        await self._respond(msg, results if batch else results[0])

    @staticmethod
    async def _respond(msg: Inbound, result: list[Result] | Result) -> None:
        if msg.reply:
            with contextlib.suppress(Exception):
                await msg.respond(encode_reply(result))

    # -- the commit loop --------------------------------------------------

    async def _run(self) -> None:
        # Keep one message of each atomic batch free for a checkpoint, or a
        # writer under full load would never sign one.
        limit = (
            self.max_batch if self.key is None else min(self.max_batch, JETSTREAM_BATCH_LIMIT - 1)
        )
        stopping = False
        carry: _Pending | list[_Pending] | None = None
        while not stopping:
            first = carry if carry is not None else await self._queue.get()
            carry = None
            if first is None:
                break
            items = list(first) if isinstance(first, list) else [first]
            if not items:
                continue
            while len(items) < limit and not self._queue.empty():
                entry = self._queue.get_nowait()
                if entry is None:
                    stopping = True
                    break
                group = entry if isinstance(entry, list) else [entry]
                if len(items) + len(group) > limit:
                    carry = entry  # a group is never split: it opens the next batch
                    break
                items.extend(group)
            self._queued -= len(items)
            started = time.perf_counter()
            try:
                await self._commit(items)
                took = (time.perf_counter() - started) / len(items)
                self._per_item = 0.8 * self._per_item + 0.2 * took
            except Exception as e:  # answer every caller, whatever went wrong
                failure = e if isinstance(e, CortexError) else InternalError(e)
                if isinstance(failure, InternalError):
                    self.internal_errors += 1
                log.exception(
                    "commit_failed", code=failure.code, trace=getattr(failure, "trace", None)
                )
                reply = error(failure.code, str(failure) or type(e).__name__)
                for item in items:
                    if not item.payload.done():
                        item.payload.set_result(reply)

    async def _commit(self, items: list[_Pending]) -> None:
        """Stage and append ``items`` as one batch, retrying after conflicts (at once) and
        after NATS was unavailable (backing off, within ``_UNAVAILABLE_BUDGET_S``)."""
        synced = False
        signed = self.state.checkpoint_seq
        retry = _Retry()
        for _attempt in range(_MAX_ATTEMPTS):
            self._may_append()
            staged: Staged | None = None
            appended = False
            failure: CortexError | None = None
            try:
                staged = self.sequencer.stage(items, synced=synced)
                if not staged.behind:
                    if staged.outgoing:
                        await self.bus.append(
                            staged.outgoing,
                            expected_last_seq=staged.base,
                            timeout=_APPEND_ATTEMPT_S,
                        )
                    appended = True
            except CortexError as e:
                # AppendConflict: another writer got there first. Anything
                # else (a timeout) may or may not have landed. Either way,
                # learn from the stream and judge again: ids make it safe.
                self.conflicts += isinstance(e, AppendConflict)
                failure = e
            finally:
                if staged is not None and not appended:
                    # whatever happened, the state matches the stream again
                    self.sequencer.rollback(staged)
            if staged is not None and appended:
                self.appended += len(staged.outgoing)
                self._stored = max(self._stored, staged.base + len(staged.outgoing))
                # Stored, but acknowledged only from a stream known to keep it. If this
                # raises, the callers' retries (same ids) get the first receipt later.
                await self._ensure_safe()
                self._resolve(items, staged)
                self._answer_covering()
                if self.on_checkpoint is not None and self.state.checkpoint_seq > signed:
                    self.on_checkpoint(self.state.checkpoint_seq, self.state.checkpoint_size)
                if self._idle and self.state.seq > self.state.checkpoint_seq:
                    self._idle = False
                    self._tick.set()  # the timer slept with nothing uncovered: it counts now
                return
            # Anything but a conflict (a timeout, JetStream electing a leader) is retried
            # after a pause, not at once. TODO(issue 12 P2): a NoResponders append is still
            # a LedgerError here until cortex.nats.errors maps it to Unavailable; the pause
            # covers it meanwhile.
            if failure is not None and not isinstance(failure, AppendConflict):
                await retry.pause(failure)
            # A stateful refusal may only mean this writer has not yet seen
            # what another writer appended: catch up, then judge again.
            await self._resync(retry)
            synced = True
        raise CortexError(f"could not append after {_MAX_ATTEMPTS} attempts", code="unavailable")

    def _may_append(self) -> None:
        """Raise why this writer must append nothing now (a broken or unsafe ledger, a lost lease)."""
        if self._broken is not None:
            raise self._broken
        if self.unsafe is not None:
            raise self.unsafe
        if self.lease is not None and not self.lease.held:
            raise Unavailable("this writer no longer holds the writer lease: ask again")

    async def _resync(self, retry: _Retry) -> None:
        """Catch up with the stream, pausing while NATS is unavailable.

        A catch-up that hears nothing for ``_RESYNC_QUIET_S`` is tried again:
        while JetStream elects a stream leader, its API requests get no answer
        for the bus's whole timeout (5 s, measured as 5 s added to a fail-over).
        """
        while True:
            try:
                await self._catch_up(quiet_s=_RESYNC_QUIET_S)
                return
            except TimeoutError:
                await retry.pause(Unavailable("JetStream did not answer the catch-up"))
            except Unavailable as e:
                await retry.pause(e)
            except LedgerError as e:  # a broken or cut ledger: no retry will mend it
                self._fatal(e)
                raise

    def _answer_covering(self) -> None:
        """Answer those waiting for a checkpoint that now covers their seq."""
        state = self.state
        if not self._covering or not state.checkpoint_seq:
            return
        latest: Result = {
            "seq": state.checkpoint_seq,
            "tree_size": state.checkpoint_size,
            "root": state.checkpoint_root,
        }
        waiting = []
        for seq, future in self._covering:
            if future.done():
                continue
            if seq <= state.checkpoint_size:
                future.set_result(latest)
            else:
                waiting.append((seq, future))
        self._covering = waiting

    async def _checkpoint_timer(self) -> None:
        """Sign a checkpoint once events have waited ``checkpoint_interval`` uncovered
        and no batch brought one (a quiet ledger, or the last of a burst)."""
        interval_ns = self.sequencer.checkpoint_interval_ns
        while self.unsafe is None and self._broken is None:
            now = time.time_ns()
            wait = self.checkpoint_interval  # nothing uncovered: sleep until a commit wakes us
            if self.sequencer.checkpoint_due(now):
                future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
                self._queued += 1
                self._queue.put_nowait(Item(CHECKPOINT, SYSTEM_TENANT, future))
                if "error" not in await future:
                    continue
            elif self.state.seq > self.state.checkpoint_seq:
                wait = (self.sequencer.checkpointed_at + interval_ns - now) / 1e9
            self._idle = self.state.seq <= self.state.checkpoint_seq
            self._tick.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.001, wait)):
                    await self._tick.wait()
            self._idle = False

    def _resolve(self, items: list[_Pending], staged: Staged) -> None:
        for item, result in zip(items, staged.results, strict=True):
            if not isinstance(result, int):
                item.payload.set_result(result)
            else:  # a retry of an earlier event: look it up without holding up the commit loop
                task = asyncio.create_task(self._duplicate(item, result))
                self._replies.add(task)
                task.add_done_callback(self._replies.discard)

    async def _duplicate(self, item: _Pending, seq: int) -> None:
        command = item.command
        assert isinstance(command, Command)  # only commands have ids to repeat
        try:
            stored = await self.bus.get(seq)
            result = same_or_reused(command, item.tenant, seq, stored.body, stored.hash)
        except Exception as e:
            result = error("unavailable", f"could not read seq {seq} to answer a retry: {e}")
        if not item.payload.done():
            item.payload.set_result(result)

    async def _catch_up(self, *, quiet_s: float | None = None) -> None:
        """Fold into the state every event appended since ``state.seq``, checking the chain;
        ``quiet_s``: TimeoutError after that long without an event (progress is kept)."""
        async with asyncio.timeout(None) as quiet:
            await self._fold_new(quiet, quiet_s)

    async def _fold_new(self, quiet: asyncio.Timeout, quiet_s: float | None) -> None:
        loop = asyncio.get_running_loop()
        if quiet_s is not None:
            quiet.reschedule(loop.time() + quiet_s)
        async for stored in self.bus.read(self.state.seq + 1):
            if quiet_s is not None:
                quiet.reschedule(loop.time() + quiet_s)
            if (
                stored.prev_hash != self.state.head
                or link(stored.prev_hash, stored.body) != stored.hash
            ):
                self._broken = ChainBroken(
                    f"the ledger's chain is broken at seq {stored.seq}; the writer will not "
                    "append to it. Run `cortex audit` to see what is wrong.",
                    seq=stored.seq,
                )
                raise self._broken
            try:
                event = decode_event(stored.body)
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                # No writer appended this: it was published around it. It stays in the
                # chain (the audit names it); the writer carries on after it.
                log.warning("unreadable_event_skipped", seq=stored.seq, error=str(e))
                self.state.skip(stored.seq, stored.hash)
                self._stored = stored.seq
                continue
            self.state.apply(event, stored.seq, stored.hash)
            self._stored = stored.seq

    # -- ending -------------------------------------------------------------

    def _fatal(self, error: CortexError) -> None:
        """This writer cannot go on: say so once, to whoever runs it (``cortex up`` exits)."""
        if self._failed:
            return
        self._failed = True
        log.critical("writer_stopped", code=error.code, error=error.message)
        if self._on_fatal is not None:
            self._on_fatal(error)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A long-lived task ended: fine when ``stop`` ended it, fatal otherwise."""
        if task.cancelled() or self._stopping:
            return
        error = task.exception()
        self._fatal(
            error
            if isinstance(error, CortexError)
            else InternalError(error or RuntimeError(f"{task.get_name()} ended"))
        )

    # -- the stream's configuration ----------------------------------------

    def _on_advisory(self) -> None:
        self._advised = True
        self._poke.set()

    async def check_stream(self) -> None:
        """Check the stream's configuration and state now; on a drift, stop appending
        for good (see the module doc) and raise StreamUnsafe."""
        if self.unsafe is not None:
            raise self.unsafe
        async with self._check_lock:
            if self.unsafe is not None:
                raise self.unsafe
            began = time.monotonic()
            self._advised = False
            try:
                await self.bus.check_stream(replicas=self.replicas, appended=self._stored)
            except StreamUnsafe as e:
                self._stop_appending(e)
                raise
            except BaseException:
                self._advised = True  # still unknown: the next acknowledgement checks again
                raise
            self._checked_at = began

    async def _ensure_safe(self) -> None:
        """Before acknowledging: a check if the last is too old or an advisory came since."""
        if self.unsafe is not None:
            raise self.unsafe
        if self._advised or time.monotonic() - self._checked_at > self.stream_check_s:
            await self.check_stream()

    def _stop_appending(self, error: StreamUnsafe) -> None:
        if self.unsafe is not None:
            return
        self.unsafe = error
        log.critical("writer_stopped_appending", code=error.code, error=error.message)
        self._fatal(error)

    async def _watch_stream(self) -> None:
        """Check the stream on each advisory and twice per ``stream_check_s`` (so that
        an acknowledgement never waits for a check of its own while this task keeps
        up); retry a check that failed (NATS away), give up on one that keeps failing."""
        backoff = Backoff(first=min(1.0, self.stream_check_s), cap=self.stream_check_s)
        period = self.stream_check_s / 2
        due = self._checked_at + period
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, due - time.monotonic())):
                    await self._poke.wait()
            self._poke.clear()
            try:
                await self.check_stream()
            except StreamUnsafe:
                return
            except Exception as e:
                delay = backoff.failed(e)
                if delay is None:
                    failure = StreamUnsafe(
                        f"the writer could not check stream {STREAM}'s configuration "
                        f"({e}), so it appends nothing"
                    )
                    self._stop_appending(failure)
                    return
                log.warning("stream_check_failed", error=str(e) or type(e).__name__, in_s=delay)
                due = time.monotonic() + delay
                continue
            backoff.progressed()
            due = self._checked_at + period


class _Retry:
    """The pauses of one batch's retries: 50 ms doubling to 250 ms, within a budget (an
    election answers nothing for 4-9 s; a short pause finds its end sooner)."""

    __slots__ = ("deadline", "delay")

    def __init__(self) -> None:
        self.delay = _RETRY_FIRST_S
        self.deadline = time.monotonic() + _UNAVAILABLE_BUDGET_S

    async def pause(self, failure: CortexError) -> None:
        """Sleep before the next attempt; Unavailable once the budget is spent."""
        if time.monotonic() + self.delay > self.deadline:
            raise Unavailable(
                f"could not append for {_UNAVAILABLE_BUDGET_S:.0f} s: {failure.message}"
            ) from failure
        log.warning("append_retry", error=failure.message, in_s=self.delay)
        await asyncio.sleep(self.delay)
        self.delay = min(_RETRY_CAP_S, self.delay * 2)


def _tenant_of(subject: str) -> str:
    """The tenant token of ``cortex.cmd.<tenant>.<kind>`` (a wrong subject: "", never limited)."""
    parts = subject.split(".")
    return parts[2] if len(parts) == 4 else ""


def _covering_of(data: bytes) -> int | Result | None:
    """The seq a checkpoint request asks to be covered (None: sign one now), or an error."""
    if not data.strip():
        return None
    try:
        request = msgspec.json.decode(data, type=dict[str, int])
        seq = request["covering"]
    except (msgspec.DecodeError, msgspec.ValidationError, KeyError):
        return error("invalid_field", 'a checkpoint request is empty or {"covering": SEQ}')
    if seq < 1:
        return error("invalid_field", "covering must name a seq of 1 or more")
    return seq


def _rate_limited(message: str, retry_after: float) -> Result:
    return error("rate_limited", message, retry_after=retry_after)
