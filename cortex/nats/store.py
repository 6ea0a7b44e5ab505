"""The ledger stream: create it safely, append atomic batches, get one event, find the end."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext

from cortex.core.records import LEDGER_PREFIX, Outgoing, StoredEvent
from cortex.errors import LedgerError
from cortex.nats.errors import STREAM_NAME_IN_USE, ack_error, translated
from cortex.nats.subjects import DUPLICATE_WINDOW_S, HDR_HASH, HDR_PREV, STREAM, hash_header


async def ensure_stream(js: JetStreamContext, *, replicas: int) -> None:
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
    with translated("create_stream", stream=STREAM):
        try:
            await js.add_stream(config)
            return
        except nats.js.errors.BadRequestError as e:
            if e.err_code != STREAM_NAME_IN_USE:  # in use with another config: check it below
                raise
    with translated("stream_info", stream=STREAM):
        info = await js.stream_info(STREAM)
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
