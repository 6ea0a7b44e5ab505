"""The ledger writer: the only appender to CORTEX_LEDGER.

It serves ``cortex.cmd.<tenant>.<kind>`` in a queue group, judges each
command against the ledger state, links it into the hash chain and appends.
Commands that arrive while a batch is being written wait and go out together
as the next atomic batch (group commit): the fsync that ``sync_interval:
always`` costs is paid once per batch, not once per event, and no event
waits for another event's acknowledgement before it is published.

Every append states the sequence it expects to follow. A writer whose view
is stale (another writer appended first) is refused by JetStream, reads
what it missed, judges its commands again and retries: two writers can
never fork the chain, and a retried command id is found even if the other
writer appended it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from dataclasses import dataclass
from typing import Final

import msgspec
import structlog
from uuid_utils.compat import uuid7

from cortex.commands_wire import Request, Result, encode_reply, error, parse, receipt
from cortex.core.keys import WriterKey
from cortex.core.ledger_state import LedgerState, Undo
from cortex.errors import AppendConflict, ChainBroken, CortexError
from cortex.nats import (
    CHECKPOINT_SUBJECT,
    COMMAND_PREFIX,
    Bus,
    Inbound,
    Outgoing,
    Serving,
    ledger_subject,
)
from events.chain import link
from events.codec import decode_event, encode
from events.commands import Command, to_event
from events.model import SYSTEM_TENANT, CheckpointSigned, Event, WriterKeyAdded, kind_of
from events.note import Checkpoint, sign
from events.rules import Refusal

log = structlog.get_logger(__name__)

QUEUE_GROUP: Final = "cortex-writer"
#: JetStream accepts at most 1,000 messages in one atomic batch.
JETSTREAM_BATCH_LIMIT: Final = 1000
DEFAULT_MAX_BATCH: Final = JETSTREAM_BATCH_LIMIT
DEFAULT_CHECKPOINT_EVERY: Final = 1000
_MAX_ATTEMPTS: Final = 50


class _CheckpointRequest:
    """Stands in a batch for ``cortex checkpoint``: answered with the checkpoint's receipt."""


_CHECKPOINT: Final = _CheckpointRequest()


@dataclass(slots=True)
class _Pending:
    command: Command | _CheckpointRequest
    tenant: str
    future: asyncio.Future[Result]


def origin_of(first_hash: bytes) -> str:
    """The checkpoints' origin line: this ledger, named by the hash of its first event."""
    return f"cortex.ledger/{first_hash.hex()[:16]}"


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
        require_signatures: bool = False,
    ) -> None:
        if not 1 <= max_batch <= JETSTREAM_BATCH_LIMIT:
            raise ValueError(
                "max_batch must be between 1 and 1000 (JetStream's atomic batch limit)"
            )
        if checkpoint_every < 1:
            raise ValueError("checkpoint_every must be at least 1")
        self.bus = bus
        self.max_batch = max_batch
        self.replicas = replicas
        #: Signs checkpoints; without one the writer appends no checkpoints.
        self.key = key
        self.checkpoint_every = checkpoint_every
        self.state = LedgerState(require_signatures=require_signatures)
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._sub: Serving | None = None
        self._admin: Serving | None = None
        self._committer: asyncio.Task[None] | None = None
        self._replies: set[asyncio.Task[None]] = set()
        self._broken: ChainBroken | None = None
        self.appended = 0
        self.conflicts = 0

    async def start(self) -> None:
        """Create the stream if needed, recover the head and state, then serve."""
        await self.bus.ensure_stream(replicas=self.replicas)
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
        self._sub = await self.bus.serve(
            f"{COMMAND_PREFIX}.*.*", self._on_request, queue=QUEUE_GROUP
        )
        self._admin = await self.bus.serve(
            CHECKPOINT_SUBJECT, self._on_checkpoint, queue=QUEUE_GROUP
        )

    async def stop(self) -> None:
        """Stop taking requests, finish what was taken, answer every caller."""
        for sub in (self._sub, self._admin):
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.close()
        self._sub = self._admin = None
        if self._committer is not None:
            await self._queue.put(None)
            await self._committer
            self._committer = None
        if self._replies:
            await asyncio.gather(*self._replies, return_exceptions=True)

    # -- requests ---------------------------------------------------------

    async def _on_request(self, msg: Inbound) -> None:
        parsed = parse(msg.subject, msg.data)
        if not isinstance(parsed, Request):
            await self._respond(msg, parsed)
            return
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Result]] = []
        for item in parsed.items:
            future: asyncio.Future[Result] = loop.create_future()
            if isinstance(item, Refusal):
                future.set_result(error(item.code, item.message))
            else:
                self._queue.put_nowait(_Pending(item, parsed.tenant, future))
            futures.append(future)
        task = asyncio.create_task(self._answer(msg, futures, batch=parsed.batch))
        self._replies.add(task)
        task.add_done_callback(self._replies.discard)

    async def _on_checkpoint(self, msg: Inbound) -> None:
        if self.key is None:
            await self._respond(msg, error("no_key", "this writer has no key to sign with"))
            return
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(_CHECKPOINT, SYSTEM_TENANT, future))
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
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            items = [first]
            while len(items) < limit and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stopping = True
                    break
                items.append(item)
            try:
                await self._commit(items)
            except Exception as e:  # answer every caller, whatever went wrong
                log.exception("commit_failed")
                code = e.code if isinstance(e, CortexError) else "internal"
                reply = error(code, str(e) or type(e).__name__)
                for item in items:
                    if not item.future.done():
                        item.future.set_result(reply)

    async def _commit(self, items: list[_Pending]) -> None:
        """Judge, link and append ``items`` as one batch, retrying after conflicts."""
        synced = False
        for _attempt in range(_MAX_ATTEMPTS):
            if self._broken is not None:
                raise self._broken
            base = self.state.seq
            undo: Undo = []
            appended = False
            try:
                outgoing, results, behind = self._stage(items, undo, synced=synced)
                if not behind:
                    if outgoing:
                        await self.bus.append(outgoing, expected_last_seq=base)
                    appended = True
            except CortexError as e:
                # AppendConflict: another writer got there first. Anything
                # else (a timeout) may or may not have landed. Either way,
                # learn from the stream and judge again: ids make it safe.
                self.conflicts += isinstance(e, AppendConflict)
            finally:
                if not appended:  # whatever happened, the state matches the stream again
                    LedgerState.rollback(undo)
            if appended:
                self.appended += len(outgoing)
                self._resolve(items, results, base, outgoing)
                return
            # A stateful refusal may only mean this writer has not yet seen
            # what another writer appended: catch up, then judge again.
            await self._catch_up()
            synced = True
        raise CortexError(f"could not append after {_MAX_ATTEMPTS} attempts", code="unavailable")

    def _stage(
        self, items: list[_Pending], undo: Undo, *, synced: bool
    ) -> tuple[list[Outgoing], list[Result | int], bool]:
        """Judge each command and link the accepted ones into the chain, in memory.

        Returns the events to append, one result per command (or the seq of
        the earlier event a duplicate id refers to), and whether a refusal
        might only reflect a stale view of the ledger.
        """
        self.state.begin(undo)
        outgoing: list[Outgoing] = []
        results: list[Result | int] = []
        behind = False
        now = time.time_ns()
        asked: list[int] = []  # where checkpoint requests sit in ``results``
        for item in items:
            command = item.command
            if isinstance(command, _CheckpointRequest):
                asked.append(len(results))
                results.append(error("internal", "no checkpoint"))
                continue
            seen = self.state.seq_of(command.id)
            if seen is not None:
                results.append(seen)
                continue
            refusal = self.state.check(command, item.tenant)
            if refusal is not None:
                behind = behind or (refusal.stateful and not synced)
                results.append(error(refusal.code, refusal.message))
                continue
            try:
                event = to_event(command, tenant=item.tenant, ts=now)
            except (ValueError, OverflowError) as e:  # one bad command, not the whole batch
                results.append(error("invalid_field", f"cannot record this command: {e}"))
                continue
            results.append(self._link(event, outgoing, undo))
        if not behind:
            checkpoint = self._stage_own(outgoing, undo, now, forced=bool(asked))
            for index in asked:
                results[index] = checkpoint
        return outgoing, results, behind

    def _link(self, event: Event, outgoing: list[Outgoing], undo: Undo) -> Result:
        """Chain ``event`` after the head, queue it and fold it into the state."""
        body = encode(event)
        prev = self.state.head
        event_hash = link(prev, body)
        event_id = str(event.id)
        subject = ledger_subject(event.tenant, kind_of(event))
        outgoing.append(Outgoing(subject, body, event_id, prev, event_hash))
        self.state.apply(event, self.state.seq + 1, event_hash, undo)
        return receipt(self.state.seq, event_hash, event_id)

    def _stage_own(self, outgoing: list[Outgoing], undo: Undo, now: int, *, forced: bool) -> Result:
        """Append the writer's own events: its key if new, and a checkpoint when one is due.

        A checkpoint covers every event before it, this batch's included, so
        it rides in the same atomic batch. Returns the latest checkpoint's
        receipt (for ``cortex checkpoint``).
        """
        key, state = self.key, self.state
        if key is None:
            return error("no_key", "this writer has no key to sign with")
        if key.public_hex not in state.writer_keys:
            added = WriterKeyAdded(
                id=uuid7(),
                tenant=SYSTEM_TENANT,
                ts=now,
                name=key.name,
                public_key=key.public_hex,
            )
            self._link(added, outgoing, undo)
        due = state.seq - state.checkpoint_size >= self.checkpoint_every
        new = state.seq > state.checkpoint_seq  # something since the last checkpoint
        room = len(outgoing) < JETSTREAM_BATCH_LIMIT
        if room and new and (due or forced):
            summary = Checkpoint(
                origin_of(state.first_hash), state.seq, state.tree.root(), state.head
            )
            event = CheckpointSigned(
                id=uuid7(),
                tenant=SYSTEM_TENANT,
                ts=now,
                tree_size=summary.tree_size,
                root=summary.root.hex(),
                head=summary.head.hex(),
                public_key=key.public_hex,
                note=sign(summary.body(), key.name, key.private),
            )
            result = self._link(event, outgoing, undo)
            return {**result, "tree_size": summary.tree_size, "root": summary.root.hex()}
        if forced and not room:
            return error("busy", "the batch was full; ask for the checkpoint again")
        if not state.checkpoint_seq:
            return error("no_checkpoint", "the ledger is empty: nothing to checkpoint")
        return {
            "seq": state.checkpoint_seq,
            "tree_size": state.checkpoint_size,
            "root": state.checkpoint_root,
        }

    def _resolve(
        self,
        items: list[_Pending],
        results: list[Result | int],
        base: int,
        outgoing: list[Outgoing],
    ) -> None:
        for item, result in zip(items, results, strict=True):
            if not isinstance(result, int):
                item.future.set_result(result)
            elif result > base:  # a duplicate of an event in this very batch
                stored = outgoing[result - base - 1]
                item.future.set_result(self._same_or_reused(item, result, stored.body, stored.hash))
            else:  # an earlier event: look it up without holding up the commit loop
                task = asyncio.create_task(self._duplicate(item, result))
                self._replies.add(task)
                task.add_done_callback(self._replies.discard)

    async def _duplicate(self, item: _Pending, seq: int) -> None:
        try:
            stored = await self.bus.get(seq)
            result = self._same_or_reused(item, seq, stored.body, stored.hash)
        except Exception as e:
            result = error("unavailable", f"could not read seq {seq} to answer a retry: {e}")
        if not item.future.done():
            item.future.set_result(result)

    @staticmethod
    def _same_or_reused(item: _Pending, seq: int, body: bytes, event_hash: bytes) -> Result:
        """The original receipt if the retry is the same command, else ``id_reused``."""
        command = item.command
        assert isinstance(command, Command)  # only commands have ids to repeat
        original = msgspec.structs.replace(decode_event(body), ts=0)
        again = to_event(command, tenant=item.tenant, ts=0)
        if original != again:
            return error(
                "id_reused",
                f"id {command.id} was already used for a different command (seq {seq})",
            )
        return receipt(seq, event_hash, str(command.id))

    async def _catch_up(self) -> None:
        """Fold into the state every event appended since ``state.seq``, checking the chain."""
        async for stored in self.bus.read(self.state.seq + 1):
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
            self.state.apply(decode_event(stored.body), stored.seq, stored.hash)
