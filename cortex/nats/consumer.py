"""Reading the ledger in order: once to a seq, or followed live.

This is the audit's and the projector's hot path; it was tuned hard. Every
event costs one ``_Arrivals.deliver``, one ``_Arrivals.next`` and one
``_stored``, and nothing else: no task, no queue, no generator wrapped in
another, no nats-py metadata object. Keep it that way.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Final

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from cortex.core.records import StoredEvent
from cortex.errors import LedgerError, Unavailable
from cortex.nats.errors import translated
from cortex.nats.store import last_seq
from cortex.nats.subjects import HDR_HASH, HDR_PREV, STREAM, hash_header

#: Messages per pull request while reading the ledger, and how long one waits for new ones.
_PULL_BATCH: Final = 2000
_PULL_EXPIRES_S: Final = 5.0
#: How long a pull of a bounded read waits. Every message it asks for is already
#: stored, so the server sends at once; a pull that expires means the rest is not
#: there, and the read asks the consumer whether anything is left to deliver.
_BOUNDED_EXPIRES_S: Final = 1.0


def header_lines(raw: bytes) -> dict[str, str]:
    """``Name: Value`` lines to a dict, the block decoded once.

    nats-py's own parser also tests every character of every header name
    for whitespace, which cost a ledger read half its time (five header
    lines per event). Names come from our own writer and nats-server.
    """
    out: dict[str, str] = {}
    for line in raw.decode("utf-8", "replace").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            out[name.strip()] = value.strip()
    return out


class _Arrivals:
    """Messages delivered to a reader's inbox, in order; bounded by the pulls' batches."""

    def __init__(self) -> None:
        self._msgs: collections.deque[Msg] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None

    async def deliver(self, msg: Msg) -> None:
        self._msgs.append(msg)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next(self, timeout: float) -> Msg:
        """The next message; TimeoutError if none comes within ``timeout`` seconds."""
        if not self._msgs:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._waiter
            finally:
                self._waiter = None
        return self._msgs.popleft()


def _stored(msg: Msg) -> StoredEvent:
    seq = _stream_seq(msg)
    headers = msg.headers
    return StoredEvent(
        seq=seq,
        subject=msg.subject,
        body=msg.data,
        prev_hash=hash_header(headers, HDR_PREV),
        hash=hash_header(headers, HDR_HASH),
    )


def _stream_seq(msg: Msg) -> int:
    """The stream seq from a consumer delivery's reply subject, without building
    nats-py's metadata objects (``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>…``,
    or with a domain and account hash, two tokens more)."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9:
        return int(tokens[5])
    if len(tokens) >= 12:
        return int(tokens[7])
    return int(msg.metadata.sequence.stream)


async def consume(
    nc: NatsClient,
    js: JetStreamContext,
    start_seq: int,
    end: int | None,
    *,
    to_end: bool,
    timeout: float,
    partial: bool = False,
) -> AsyncIterator[StoredEvent]:
    """Read in order through an ephemeral pull consumer, one pull request at a time.

    ``to_end``: stop at the ledger's last seq when the read starts; else
    stop at ``end``, or never when it is None (follow). The server sends
    only what was asked for (``_PULL_BATCH`` at most), so a slow reader
    holds at most one batch in memory and nothing is ever dropped. A push
    consumer is no good here: nats-py answers its flow control on arrival,
    not on processing, so a slow reader's backlog grows until nats-py drops
    messages as a slow consumer. ``fetch`` is bounded but creates a task per
    message; raw pull requests on an inbox cost a round trip per batch and
    nothing per message. (One generator, not one wrapped in another, and a
    deque rather than an ``asyncio.Queue``: each costs a reader of a million
    events seconds.)

    A bounded read never waits for events the store does not have (a block
    file cut short, a stream whose state claims more than it holds): when a
    pull ends with nothing and the consumer has nothing left to deliver, the
    events up to ``end`` are missing. That raises LedgerError with code
    ``missing_events`` within about a second, or with ``partial`` ends the
    read quietly (the caller compares the last seq it got with ``end``).
    """
    if to_end:
        end = await last_seq(js)
    if end is not None and start_seq > end:
        return
    with translated("read"):
        consumer = await _reader(js, start_seq)
        arrived = _Arrivals()
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, cb=arrived.deliver)
    next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{consumer}"
    expires_ns = int((_PULL_EXPIRES_S if end is None else _BOUNDED_EXPIRES_S) * 1e9)
    # Two pull requests in flight, so the next batch is on its way while
    # this one is read. The server serves (and expires) them in order.
    pending: collections.deque[int] = collections.deque()
    try:
        seq = start_seq - 1
        received = 0
        while end is None or seq < end:
            await _pull(nc, next_subject, inbox, pending, seq=seq, end=end, expires_ns=expires_ns)
            try:
                msg = await arrived.next(_PULL_EXPIRES_S + timeout)
            except TimeoutError as e:
                raise Unavailable(f"reading {STREAM} stalled after seq {seq}") from e
            status = (msg.headers or {}).get("Status") if not msg.data else None
            if status is not None:
                if status in ("404", "408") and pending:  # the oldest request ended short
                    pending.popleft()
                    if end is not None and await _nothing_left(js, consumer, received):
                        _missing(seq, end, partial)
                        return
                    continue
                description = (msg.headers or {}).get("Description", "")
                raise Unavailable(f"reading {STREAM} failed: {status} {description}")
            pending[0] -= 1
            if pending[0] == 0:
                pending.popleft()
            received += 1
            stored = _stored(msg)
            if end is not None and stored.seq > end:  # appended after the missing end
                _missing(seq, end, partial)
                return
            seq = stored.seq
            yield stored
    finally:
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
            await sub.unsubscribe()
        # Without a connection, the server drops the consumer by itself once it is
        # inactive; waiting for a reply that cannot come would only hold up a shutdown.
        if nc.is_connected:
            with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, asyncio.TimeoutError):
                await js.delete_consumer(STREAM, consumer)


async def _nothing_left(js: JetStreamContext, consumer: str, received: int) -> bool:
    """Whether the consumer has nothing left to deliver and nothing on its way: all it
    delivered (``consumer_seq`` counts deliveries) is among the ``received``."""
    with translated("read"):
        info = await js.consumer_info(STREAM, consumer)
    delivered = info.delivered.consumer_seq if info.delivered is not None else 0
    return not info.num_pending and delivered <= received


async def _pull(
    nc: NatsClient,
    subject: str,
    inbox: str,
    pending: collections.deque[int],
    *,
    seq: int,
    end: int | None,
    expires_ns: int,
) -> None:
    """Keep two pull requests in flight, never asking for more than up to ``end``."""
    while len(pending) < 2:
        asked = seq + sum(pending)
        want = _PULL_BATCH if end is None else min(_PULL_BATCH, end - asked)
        if want <= 0:
            return
        request = json.dumps({"batch": want, "expires": expires_ns}).encode()
        with translated("read"):
            await nc.publish(subject, request, reply=inbox)
        pending.append(want)


def _missing(seq: int, end: int, partial: bool) -> None:
    """A bounded read found nothing after ``seq``: raise, unless a partial read is asked for."""
    if partial:
        return
    raise LedgerError(
        f"{STREAM} says it holds events up to seq {end}, but nothing after seq {seq} can be "
        f"read: events {seq + 1}..{end} are missing from the store (cut or damaged); "
        "`cortex audit` names the gap",
        code="missing_events",
    )


async def _reader(js: JetStreamContext, start_seq: int) -> str:
    """An ephemeral, unacknowledged pull consumer from ``start_seq``; its name."""
    info = await js.add_consumer(
        STREAM,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start_seq,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=60.0,
            mem_storage=True,
            num_replicas=1,
        ),
    )
    return str(info.name)
