"""The ledger stream: create it or refuse an unsafe one, append atomic batches, get, find the end;
and in a cluster, its leader and replicas, a leader hand-over and scaling it up."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any, Final

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext

from cortex.core.records import LEDGER_PREFIX, Outgoing, StoredEvent
from cortex.errors import CortexError, LedgerError, StreamUnsafe, Unavailable
from cortex.nats import stream_config
from cortex.nats.errors import STREAM_NAME_IN_USE, ack_error, jetstream_error, translated
from cortex.nats.stream_config import LiveCluster, StreamDrift
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
    with translated("create_stream", stream=STREAM, replicas=replicas, doing=f"creating {STREAM}"):
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
    try:
        reply = await _send_batch(nc, events, expected_last_seq, timeout=timeout)
    except Unavailable as e:
        if isinstance(e.__cause__, nats.errors.NoRespondersError) and await _missing(nc, timeout):
            raise LedgerError(
                f"no stream accepts {events[-1].subject}: {STREAM} does not exist (deleted, or "
                "never created)"
            ) from e
        raise
    last = len(events)
    ack: dict[str, Any] = json.loads(reply)
    error = ack.get("error")
    if error:
        raise ack_error(error)
    seq = int(ack["seq"])
    if ack.get("count", last) != last or seq != expected_last_seq + last:
        raise LedgerError(f"JetStream stored the batch unexpectedly: {ack}")
    return seq


async def _missing(nc: NatsClient, timeout: float) -> bool:
    """Whether the stream is known not to exist (False when that cannot be told now)."""
    try:
        return await stream_config.read(nc, timeout=timeout) is None
    except CortexError:
        return False


async def _send_batch(
    nc: NatsClient, events: Sequence[Outgoing], expected_last_seq: int, *, timeout: float
) -> bytes:
    """Publish the batch; the commit's acknowledgement (JSON)."""
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
    return bytes(reply.data)


# -- in a cluster ---------------------------------------------------------

_API: Final = "$JS.API.STREAM"
_STEPDOWN: Final = f"{_API}.LEADER.STEPDOWN.{STREAM}"
_CLUSTERING_REQUIRED: Final = 10010


def _api_reply(raw: bytes, *, doing: str, replicas: int | None = None) -> dict[str, Any]:
    """A JetStream API reply as a dict; its ``error`` raised as CORTEX's."""
    try:
        reply: dict[str, Any] = json.loads(raw)
    except ValueError as e:
        raise LedgerError(f"{doing}: JetStream's reply is not JSON") from e
    error = reply.get("error")
    if isinstance(error, dict):
        err_code, description = error.get("err_code"), str(error.get("description"))
        if err_code == _CLUSTERING_REQUIRED:
            raise LedgerError(f"{doing}: this nats-server is not in a cluster ({description})")
        status = error.get("code")
        passing = jetstream_error(
            err_code if isinstance(err_code, int) else None,
            description,
            status=status if isinstance(status, int) else None,
            replicas=replicas,
            doing=doing,
        )
        if passing is not None:
            raise passing
        raise LedgerError(f"{doing}: JetStream refused: {description} ({err_code})")
    return reply


async def cluster(nc: NatsClient, *, timeout: float) -> LiveCluster:
    """The stream's leader and followers (LedgerError if there is no stream)."""
    status = await stream_config.read(nc, timeout=timeout)
    if status is None:
        raise LedgerError(f"stream {STREAM} does not exist")
    return status.cluster or LiveCluster()


async def step_down(nc: NatsClient, *, preferred: str | None, timeout: float) -> None:
    """Have the stream's leader hand over to another replica (``preferred``: a server
    name). Only the leader answers; Unavailable while there is none."""
    body = (
        b"" if preferred is None else json.dumps({"placement": {"preferred": preferred}}).encode()
    )
    with translated("request", subject=_STEPDOWN, timeout=timeout, size=len(body)):
        msg = await nc.request(_STEPDOWN, body, timeout=timeout)
    _api_reply(msg.data, doing=f"handing over {STREAM}'s leadership")


async def scale_replicas(nc: NatsClient, replicas: int, *, timeout: float) -> None:
    """Set the stream's replicas to ``replicas`` (an admin's right), changing nothing else.

    The configuration is the server's own JSON, sent back with one field changed:
    nats-py's ``StreamConfig`` would drop fields it does not know. New replicas
    catch up online (``cluster`` shows their lag).
    """
    doing = f"scaling {STREAM} to {replicas} replicas"
    with translated("stream_info", stream=STREAM):
        info = await nc.request(f"{_API}.INFO.{STREAM}", b"", timeout=timeout)
    config = _api_reply(info.data, doing=doing).get("config")
    if not isinstance(config, dict):
        raise LedgerError(f"{doing}: JetStream's answer has no configuration")
    if config.get("num_replicas", 1) == replicas:
        return
    config["num_replicas"] = replicas
    body = msgspec.json.encode(config)
    with translated("request", subject=f"{_API}.UPDATE.{STREAM}", timeout=timeout, size=len(body)):
        msg = await nc.request(f"{_API}.UPDATE.{STREAM}", body, timeout=timeout)
    _api_reply(msg.data, doing=doing, replicas=replicas)
    log.warning("stream_scaled", stream=STREAM, replicas=replicas)
