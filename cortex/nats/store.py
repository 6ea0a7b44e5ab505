"""The ledger stream: create it or refuse an unsafe one, append atomic batches, get, find the end."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

import nats.js.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext

from cortex.core.records import LEDGER_PREFIX, Outgoing, StoredEvent
from cortex.errors import LedgerError, StreamUnsafe
from cortex.nats import stream_config
from cortex.nats.errors import STREAM_NAME_IN_USE, ack_error, translated
from cortex.nats.stream_config import StreamDrift
from cortex.nats.subjects import DUPLICATE_WINDOW_S, HDR_HASH, HDR_PREV, STREAM, hash_header

log = structlog.get_logger(__name__)


def required_config(*, replicas: int) -> StreamConfig:
    """The configuration CORTEX creates the stream with (``stream_config.drifts`` checks it)."""
    return StreamConfig(
        name=STREAM,
        subjects=[f"{LEDGER_PREFIX}.>"],
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.NEW,
        storage=StorageType.FILE,
        num_replicas=replicas,
        deny_delete=True,
        deny_purge=True,
        allow_rollup_hdrs=False,
        duplicate_window=DUPLICATE_WINDOW_S,
        allow_atomic=True,
    )


def unsafe(found: Sequence[StreamDrift]) -> StreamUnsafe:
    """The error naming every drift: what is wrong, what it must be, and why."""
    return StreamUnsafe(
        f"stream {STREAM} could drop or hide events, so nothing is appended to it: "
        + "; ".join(map(str, found))
        + ". Restore its configuration (an admin, with `nats stream edit` or the JetStream "
        "API) or move the ledger to a new stream; `cortex audit` lists the same."
    )


async def ensure_stream(
    nc: NatsClient, js: JetStreamContext, *, replicas: int, timeout: float
) -> None:
    """Create CORTEX_LEDGER if missing; StreamUnsafe if the one there could drop or hide
    events (``stream_config.drifts``).

    A stream made by an earlier CORTEX differs only in its discard policy (old):
    harmless while no limit is set, but under one it drops events instead of
    refusing writes, so it is tightened to ``new`` when that is the only drift.
    """
    config = required_config(replicas=replicas)
    with translated("create_stream", stream=STREAM):
        try:
            await js.add_stream(config)
            return
        except nats.js.errors.BadRequestError as e:
            if e.err_code != STREAM_NAME_IN_USE:  # in use with another config: check it below
                raise
    status = await stream_config.read(nc, timeout=timeout)
    found = stream_config.drifts(status, replicas=replicas)
    if found and all(d.field == "discard" for d in found) and status is not None:
        with translated("create_stream", stream=STREAM):
            await js.update_stream(
                required_config(replicas=max(replicas, status.config.num_replicas))
            )
        log.warning("stream_discard_tightened", stream=STREAM, was="old", now="new")
        found = stream_config.drifts(
            await stream_config.read(nc, timeout=timeout), replicas=replicas
        )
    if found:
        raise unsafe(found)


async def last_seq(js: JetStreamContext) -> int:
    """The seq of the ledger's last event (0 when it is empty)."""
    with translated("stream_info", stream=STREAM):
        info = await js.stream_info(STREAM)
    return int(info.state.last_seq)


async def get(js: JetStreamContext, seq: int) -> StoredEvent:
    """The event at ``seq``; LedgerError with code ``not_found`` if there is none."""
    with translated("get", seq=seq):
        msg = await js.get_msg(STREAM, seq=seq)
    headers = msg.headers or {}
    return StoredEvent(
        seq=seq,
        subject=msg.subject or "",
        body=msg.data or b"",
        prev_hash=hash_header(headers, HDR_PREV),
        hash=hash_header(headers, HDR_HASH),
    )


async def append(
    nc: NatsClient, events: Sequence[Outgoing], *, expected_last_seq: int, timeout: float
) -> int:
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
    with translated("append", subject=events[-1].subject, stream=STREAM):
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
                await nc.publish(event.subject, event.body, headers=headers)
                continue
            headers["Nats-Batch-Commit"] = "1"
            reply = await nc.request(event.subject, event.body, timeout=timeout, headers=headers)
    ack: dict[str, Any] = json.loads(reply.data)
    error = ack.get("error")
    if error:
        raise ack_error(error)
    seq = int(ack["seq"])
    if ack.get("count", last) != last or seq != expected_last_seq + last:
        raise LedgerError(f"JetStream stored the batch unexpectedly: {ack}")
    return seq
