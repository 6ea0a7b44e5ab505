"""The writer lease's storage on NATS: one key in a JetStream KV bucket, changed only by
compare-and-set on its revision, and the liveness probe between writer candidates.

``cortex.lease`` holds the logic (who holds, when to renew, when to take over);
this module is the nats-py part of it, with its errors translated:

    KeyWrongLastSequenceError (10071/10164)        LeaseLost: someone else wrote the key
    timeouts, no responders, a lost connection,    Unavailable: try again soon; the lease
    JetStream 503s (10008, 10023, 10118, 10163)    is neither won nor lost by it

A candidate serves ``cortex.writer.alive.<its id>`` for as long as its
connection lives. A probe there answers at once with no responders once that
connection is gone (kill -9 closes the socket and the server drops the interest),
so a standby need not wait for the lease to age to see that its holder died.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import nats.errors
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from cortex.errors import CortexError, LedgerError, Unavailable
from cortex.nats.bus import Bus
from cortex.nats.rpc import Inbound, Serving
from events.errors import LeaseLost

log = structlog.get_logger(__name__)

BUCKET: Final = "CORTEX_WRITER"
KV_STREAM: Final = f"KV_{BUCKET}"
#: ``<prefix>.<candidate id>``: answered by that candidate while its connection lives.
ALIVE_PREFIX: Final = "cortex.writer.alive"
#: JetStream's "try again" answers (HTTP 503 in its error JSON): during an election,
#: while a stream is offline, right after a KV stream's leader changed.
_TRANSIENT: Final = frozenset({10008, 10023, 10118, 10163})
_WRONG_LAST: Final = (nats.js.errors.KeyWrongLastSequenceError,)

__all__ = ["ALIVE_PREFIX", "BUCKET", "KV_STREAM", "LeaseBucket", "LeaseEntry"]


@dataclass(frozen=True, slots=True)
class LeaseEntry:
    """The key's latest revision: its value, or a delete marker (a released lease)."""

    revision: int
    value: bytes
    deleted: bool


def _translate(e: Exception, doing: str) -> CortexError:
    if isinstance(e, CortexError):
        return e
    if isinstance(e, _WRONG_LAST):
        return LeaseLost(f"the writer lease changed hands ({doing})")
    if isinstance(e, nats.js.errors.APIError):
        if e.code == 503 or e.err_code in _TRANSIENT:
            return Unavailable(f"JetStream is unavailable ({doing}): {e.description}")
        return LedgerError(
            f"JetStream refused {doing}: {e.description} ({e.err_code})", code="ledger_error"
        )
    if isinstance(e, TimeoutError | OSError | nats.errors.Error):
        return Unavailable(f"NATS did not answer ({doing}): {e or type(e).__name__}")
    raise e


class _Translated:
    """``with _Translated("renew"):`` raises CORTEX's error for a nats-py one."""

    __slots__ = ("_doing",)

    def __init__(self, doing: str) -> None:
        self._doing = doing

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, e: BaseException | None, tb: object) -> None:
        if isinstance(e, Exception) and not isinstance(e, CortexError):
            raise _translate(e, self._doing) from e


class LeaseBucket:
    """The lease's key, read and written by compare-and-set, on one connection."""

    def __init__(self, bus: Bus, kv: KeyValue, *, timeout: float) -> None:
        self._bus = bus
        self._kv = kv
        self.timeout = timeout
        self._watch: Subscription | None = None
        self._alive: Serving | None = None

    @classmethod
    async def open(cls, bus: Bus, *, replicas: int, timeout: float) -> LeaseBucket:
        """The bucket on ``bus``'s connection (a candidate's lease dies with it), created
        (with ``replicas`` copies) if missing.

        Two candidates creating it at once both succeed: JetStream accepts a create
        that matches the stream already there.
        """
        config = KeyValueConfig(
            bucket=BUCKET,
            description="CORTEX: which writer candidate appends (cortex.lease)",
            history=1,
            replicas=replicas,
            storage=StorageType.FILE,
        )
        with _Translated("open the lease bucket"):
            kv = await bus.kv(BUCKET, create=config, timeout=timeout)
        return cls(bus, kv, timeout=timeout)

    @classmethod
    async def existing(cls, bus: Bus, *, timeout: float) -> LeaseBucket | None:
        """The bucket if it exists (None: no candidate ever ran on this ledger); to read."""
        with _Translated("open the lease bucket"):
            try:
                kv = await bus.kv(BUCKET, timeout=timeout)
            except nats.js.errors.BucketNotFoundError:
                return None
        return cls(bus, kv, timeout=timeout)

    async def get(self, key: str) -> LeaseEntry | None:
        """The key's latest revision (a delete marker too); None if it never was written."""
        with _Translated("read the lease"):
            try:
                entry = await self._kv.get(key)
            except nats.js.errors.KeyNotFoundError as e:
                if e.entry is None:  # nothing at all under the key
                    return None
                return LeaseEntry(e.entry.revision, b"", deleted=True)
        assert entry.revision is not None
        return LeaseEntry(entry.revision, entry.value or b"", deleted=False)

    async def put(self, key: str, value: bytes, *, last: int) -> int:
        """Write ``value`` if the key's latest revision is still ``last`` (0: none); the new
        revision. LeaseLost if it is not."""
        with _Translated("write the lease"):
            return await self._kv.update(key, value, last=last)

    async def delete(self, key: str, *, last: int) -> None:
        """Put a delete marker if the key's latest revision is still ``last``."""
        with _Translated("release the lease"):
            await self._kv.delete(key, last=last)

    async def watch(self, key: str, changed: Callable[[], None]) -> None:
        """Call ``changed`` whenever the key gets a new revision (until ``close``).

        Only a wake-up: whoever watches reads the key itself, so a watch that
        misses or repeats an update costs a poll period, never a wrong decision.
        """
        subject = f"$KV.{BUCKET}.{key}"

        async def on_update(_msg: Msg) -> None:
            changed()

        with _Translated("watch the lease"):
            self._watch = await self._kv._js.subscribe(
                subject,
                stream=KV_STREAM,
                cb=on_update,
                ordered_consumer=True,
                deliver_policy=nats.js.api.DeliverPolicy.NEW,
                inactive_threshold=60.0,
            )

    async def serve_alive(self, candidate: str) -> None:
        """Answer probes on ``ALIVE_PREFIX.<candidate>`` while this connection lives."""

        async def pong(msg: Inbound) -> None:
            with contextlib.suppress(Exception):
                await msg.respond(b"")

        self._alive = await self._bus.serve(f"{ALIVE_PREFIX}.{candidate}", pong)

    async def probe(self, candidate: str, *, timeout: float) -> bool | None:
        """Whether ``candidate`` answers: True; False when nobody serves its subject (its
        connection is gone); None when no answer came in ``timeout`` (or NATS is away)."""
        return await self._bus.probe(f"{ALIVE_PREFIX}.{candidate}", timeout=timeout)

    async def close(self) -> None:
        """Stop the watch and the probe answers (the connection stays the bus's)."""
        if self._watch is not None:
            with contextlib.suppress(Exception):
                await self._watch.unsubscribe()
        if self._alive is not None:
            with contextlib.suppress(Exception):
                await self._alive.close()
        self._watch = self._alive = None
