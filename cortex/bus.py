"""All of CORTEX's NATS access, in one small module.

Connect, create the ledger stream, append atomic batches, read ranges, serve
and send requests. nats-py's maintainers call it legacy and are building a
successor; a switch should touch this file and nothing else. nats-py errors
are translated into CORTEX errors here, where they enter.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec
import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from cortex.errors import AppendConflict, InvalidCommand, LedgerError, Unavailable

log = structlog.get_logger(__name__)

STREAM: Final = "CORTEX_LEDGER"
LEDGER_PREFIX: Final = "cortex.ledger"
COMMAND_PREFIX: Final = "cortex.cmd"
#: Where ``cortex checkpoint`` asks the writer for a checkpoint now.
CHECKPOINT_SUBJECT: Final = "cortex.admin.checkpoint"
HDR_PREV: Final = "Cortex-Prev"
HDR_HASH: Final = "Cortex-Hash"
DEFAULT_URL: Final = "nats://127.0.0.1:4222"
#: How long JetStream remembers a Nats-Msg-Id; the writer's own index covers all time.
DUPLICATE_WINDOW_S: Final = 120.0
#: Messages per pull request while reading the ledger, and how long one waits for new ones.
_PULL_BATCH: Final = 2000
_PULL_EXPIRES_S: Final = 5.0
# JetStream error codes the writer reacts to (nats-server errors.json).
_WRONG_LAST_SEQUENCE: Final = 10071
_BATCH_DUPLICATE_MSG_ID: Final = 10201


class StoredEvent(msgspec.Struct, frozen=True, gc=False):
    """One ledger message as JetStream holds it: position, bytes and chain links.

    A msgspec Struct, not a frozen dataclass: built once per event read, and a
    frozen dataclass's ``__init__`` costs a million-event read about a second.
    """

    seq: int
    subject: str
    body: bytes
    prev_hash: bytes
    hash: bytes


@dataclass(frozen=True, slots=True)
class Outgoing:
    """An event ready to append: its subject, canonical bytes and chain links."""

    subject: str
    body: bytes
    event_id: str
    prev_hash: bytes
    hash: bytes


def ledger_subject(tenant: str, kind: str) -> str:
    return f"{LEDGER_PREFIX}.{tenant}.{kind}"


def command_subject(tenant: str, kind: str) -> str:
    return f"{COMMAND_PREFIX}.{tenant}.{kind}"


def _hash_header(headers: dict[str, str] | None, name: str, seq: int) -> bytes:
    value = (headers or {}).get(name, "")
    try:
        return bytes.fromhex(value)
    except ValueError:
        return b""


async def _log_nats_error(e: Exception) -> None:
    # nats-py prints tracebacks for connection trouble by default; a user
    # gets one clear CORTEX error instead, and the detail goes to the log.
    log.debug("nats_error", error=str(e) or type(e).__name__)


def _header_lines(raw: bytes) -> dict[str, str]:
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


class _Client(NatsClient):
    """nats-py's client with the lighter header parser above. Should a later nats-py
    stop calling this hook, reads get slower, not wrong."""

    _parse_header_lines = staticmethod(_header_lines)


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
                await asyncio.wait_for(self._waiter, timeout)
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
        prev_hash=_hash_header(headers, HDR_PREV, seq),
        hash=_hash_header(headers, HDR_HASH, seq),
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


class Bus:
    """A connection to NATS with the few JetStream operations CORTEX needs."""

    def __init__(self, nc: NatsClient, *, timeout: float = 5.0) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=timeout)
        self.timeout = timeout

    @classmethod
    async def connect(
        cls, url: str = DEFAULT_URL, *, name: str = "cortex", timeout: float = 5.0
    ) -> Bus:
        """Connect, failing fast with a clear error when nothing listens at ``url``."""
        try:
            nc = _Client()
            # nats-py types these seconds as int; it takes (and uses) floats.
            options: dict[str, Any] = {
                "connect_timeout": timeout,
                # Fail fast when nothing listens at first…
                "max_reconnect_attempts": 1,
                "reconnect_time_wait": 0.5,
                "allow_reconnect": True,
            }
            await nc.connect(url, name=name, error_cb=_log_nats_error, **options)
        except (TimeoutError, OSError, nats.errors.Error) as e:
            raise Unavailable(f"cannot reach NATS at {url}: {e or type(e).__name__}") from e
        # …but once connected, ride out restarts and cluster fail-overs.
        nc.options["max_reconnect_attempts"] = -1
        return cls(nc, timeout=timeout)

    async def close(self) -> None:
        with contextlib.suppress(nats.errors.Error):
            await self.nc.drain()
        if not self.nc.is_closed:
            await self.nc.close()

    # -- the stream -------------------------------------------------------

    async def ensure_stream(self, *, replicas: int = 1) -> None:
        """Create CORTEX_LEDGER if missing; refuse to run on one that could lose events."""
        config = StreamConfig(
            name=STREAM,
            subjects=[f"{LEDGER_PREFIX}.>"],
            storage=StorageType.FILE,
            num_replicas=replicas,
            deny_delete=True,
            deny_purge=True,
            allow_rollup_hdrs=False,
            duplicate_window=DUPLICATE_WINDOW_S,
            allow_atomic=True,
        )
        try:
            await self.js.add_stream(config)
            return
        except nats.js.errors.BadRequestError as e:
            if e.err_code != 10058:  # stream name already in use with another config
                raise LedgerError(f"cannot create stream {STREAM}: {e.description}") from e
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as e:
            raise Unavailable("JetStream did not answer: is it enabled on this server?") from e
        info = await self.js.stream_info(STREAM)
        c = info.config
        unsafe = [
            name
            for name, bad in (
                ("deletes allowed", not c.deny_delete),
                ("purges allowed", not c.deny_purge),
                ("rollups allowed", bool(c.allow_rollup_hdrs)),
                ("no atomic batches", not c.allow_atomic),
                ("not file storage", c.storage != StorageType.FILE),
                ("not limits retention", c.retention not in (None, RetentionPolicy.LIMITS)),
                (
                    "a message, byte or age limit",
                    any(
                        (v or 0) > 0
                        for v in (c.max_msgs, c.max_bytes, c.max_age, c.max_msgs_per_subject)
                    ),
                ),
            )
            if bad
        ]
        if unsafe:
            raise LedgerError(
                f"stream {STREAM} exists but could lose or rewrite events ({', '.join(unsafe)}); "
                "it cannot hold a tamper-evident ledger"
            )

    async def last_seq(self) -> int:
        try:
            info = await self.js.stream_info(STREAM)
        except nats.js.errors.NotFoundError as e:
            raise LedgerError(f"stream {STREAM} does not exist") from e
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as e:
            raise Unavailable("JetStream did not answer") from e
        return int(info.state.last_seq)

    async def get(self, seq: int) -> StoredEvent:
        try:
            msg = await self.js.get_msg(STREAM, seq=seq)
        except nats.js.errors.NotFoundError as e:
            raise LedgerError(f"the ledger has no event at seq {seq}", code="not_found") from e
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as e:
            raise Unavailable("JetStream did not answer") from e
        headers = msg.headers or {}
        return StoredEvent(
            seq=seq,
            subject=msg.subject or "",
            body=msg.data or b"",
            prev_hash=_hash_header(headers, HDR_PREV, seq),
            hash=_hash_header(headers, HDR_HASH, seq),
        )

    async def append(self, events: Sequence[Outgoing], *, expected_last_seq: int) -> int:
        """Append ``events`` as one atomic batch right after ``expected_last_seq``.

        Every message but the last goes out without waiting (one round trip
        per batch, one fsync per batch with ``sync_interval: always``). The
        server stores all of them or none, and only if the stream still ends
        at ``expected_last_seq``: a writer whose head is stale gets
        AppendConflict and can never fork the chain. Returns the last seq.
        """
        if not events:
            return expected_last_seq
        batch_id = uuid.uuid4().hex
        last = len(events)
        for n, event in enumerate(events, 1):
            headers = {
                "Nats-Batch-Id": batch_id,
                "Nats-Batch-Sequence": str(n),
                "Nats-Msg-Id": event.event_id,
                HDR_PREV: event.prev_hash.hex(),
                HDR_HASH: event.hash.hex(),
            }
            if n == 1:
                headers["Nats-Expected-Last-Sequence"] = str(expected_last_seq)
            if n < last:
                await self.nc.publish(event.subject, event.body, headers=headers)
                continue
            headers["Nats-Batch-Commit"] = "1"
            try:
                reply = await self.nc.request(
                    event.subject, event.body, timeout=self.timeout, headers=headers
                )
            except nats.errors.NoRespondersError as e:
                raise LedgerError(f"no stream accepts {event.subject}: is {STREAM} created?") from e
            except nats.errors.TimeoutError as e:
                raise Unavailable("JetStream did not acknowledge the batch in time") from e
        ack: dict[str, Any] = json.loads(reply.data)
        error = ack.get("error")
        if error:
            err_code = error.get("err_code")
            if err_code in (_WRONG_LAST_SEQUENCE, _BATCH_DUPLICATE_MSG_ID):
                raise AppendConflict(f"stream moved on: {error.get('description')}")
            raise LedgerError(
                f"JetStream refused the batch: {error.get('description')} ({err_code})"
            )
        seq = int(ack["seq"])
        if ack.get("count", last) != last or seq != expected_last_seq + last:
            raise LedgerError(f"JetStream stored the batch unexpectedly: {ack}")
        return seq

    def read(self, start_seq: int = 1, end_seq: int | None = None) -> AsyncIterator[StoredEvent]:
        """Stored events from ``start_seq`` to ``end_seq`` (default: the end when it starts)."""
        return self._consume(start_seq, end_seq, to_end=end_seq is None)

    def follow(self, start_seq: int = 1) -> AsyncIterator[StoredEvent]:
        """Stored events from ``start_seq`` on, then each new one as it is appended."""
        return self._consume(start_seq, None, to_end=False)

    async def _consume(
        self, start_seq: int, end: int | None, *, to_end: bool
    ) -> AsyncIterator[StoredEvent]:
        """Read in order through an ephemeral pull consumer, one pull request at a time.

        The server sends only what was asked for (``_PULL_BATCH`` at most), so
        a slow reader holds at most one batch in memory and nothing is ever
        dropped. A push consumer is no good here: nats-py answers its flow
        control on arrival, not on processing, so a slow reader's backlog grows
        until nats-py drops messages as a slow consumer. ``fetch`` is bounded
        but creates a task per message; raw pull requests on an inbox cost a
        round trip per batch and nothing per message. (One generator, not one
        wrapped in another, and a deque rather than an ``asyncio.Queue``: each
        costs a reader of a million events seconds.)
        """
        if to_end:
            end = await self.last_seq()
        if end is not None and start_seq > end:
            return
        consumer = await self._reader(start_seq)
        arrived = _Arrivals()
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox, cb=arrived.deliver)
        next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{consumer}"
        expires_ns = int(_PULL_EXPIRES_S * 1e9)
        # Two pull requests in flight, so the next batch is on its way while
        # this one is read. The server serves (and expires) them in order.
        pending: collections.deque[int] = collections.deque()
        try:
            seq = start_seq - 1
            while end is None or seq < end:
                while len(pending) < 2:
                    asked = seq + sum(pending)
                    want = _PULL_BATCH if end is None else min(_PULL_BATCH, end - asked)
                    if want <= 0:
                        break
                    request = json.dumps({"batch": want, "expires": expires_ns}).encode()
                    await self.nc.publish(next_subject, request, reply=inbox)
                    pending.append(want)
                try:
                    msg = await arrived.next(_PULL_EXPIRES_S + self.timeout)
                except TimeoutError as e:
                    raise Unavailable(f"reading {STREAM} stalled after seq {seq}") from e
                status = (msg.headers or {}).get("Status") if not msg.data else None
                if status is not None:
                    if status in ("404", "408") and pending:  # the oldest request ended short
                        pending.popleft()
                        continue
                    description = (msg.headers or {}).get("Description", "")
                    raise Unavailable(f"reading {STREAM} failed: {status} {description}")
                pending[0] -= 1
                if pending[0] == 0:
                    pending.popleft()
                stored = _stored(msg)
                seq = stored.seq
                yield stored
        finally:
            with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
                await sub.unsubscribe()
            with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, asyncio.TimeoutError):
                await self.js.delete_consumer(STREAM, consumer)

    async def _reader(self, start_seq: int) -> str:
        """An ephemeral, unacknowledged pull consumer from ``start_seq``; its name."""
        info = await self.js.add_consumer(
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

    # -- requests ---------------------------------------------------------

    async def serve(
        self, subject: str, handler: Callable[[Msg], Awaitable[None]], *, queue: str = ""
    ) -> Subscription:
        sub = await self.nc.subscribe(subject, queue=queue, cb=handler)
        # Round-trip to the server so the subscription is live before we say we serve.
        await self.nc.flush(timeout=max(1, int(self.timeout)))
        return sub

    async def request(self, subject: str, payload: bytes, *, timeout: float | None = None) -> bytes:
        try:
            reply = await self.nc.request(subject, payload, timeout=timeout or self.timeout)
        except nats.errors.NoRespondersError as e:
            raise Unavailable(
                f"no CORTEX writer is serving {subject}: is `cortex up` running?"
            ) from e
        except nats.errors.TimeoutError as e:
            raise Unavailable(f"no reply on {subject} within {timeout or self.timeout}s") from e
        except nats.errors.MaxPayloadError as e:
            raise InvalidCommand(
                f"request of {len(payload)} bytes exceeds the server max payload", code="too_large"
            ) from e
        return bytes(reply.data)
