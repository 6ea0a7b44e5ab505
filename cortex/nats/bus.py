"""``Bus``: one connection to NATS and the few operations CORTEX needs over it.

A facade over ``store`` (the ledger stream), ``consumer`` (reading it in
order), ``rpc`` (serving and sending requests) and ``connection``. Everything
it returns or raises is CORTEX's own: ``StoredEvent``, ``Serving``, bytes,
and ``cortex.errors`` exceptions translated by ``cortex.nats.errors``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Self

import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js.api import KeyValueConfig
from nats.js.kv import KeyValue

from cortex.core.records import Outgoing, StoredEvent
from cortex.nats import auth, connection, consumer, rpc, store, stream_config
from cortex.nats.auth import Credentials
from cortex.nats.stream_config import LiveCluster, StreamDrift, StreamStatus
from cortex.nats.subjects import DEFAULT_URL


class Bus:
    """A connection to NATS with the few JetStream operations CORTEX needs."""

    def __init__(self, nc: NatsClient, *, timeout: float = 5.0) -> None:
        self._nc = nc
        self._js = nc.jetstream(timeout=timeout)
        self.timeout = timeout

    @classmethod
    async def connect(
        cls,
        url: str | Sequence[str] = DEFAULT_URL,
        *,
        name: str = "cortex",
        timeout: float = 5.0,
        creds: Credentials | None = None,
    ) -> Self:
        """Connect as ``creds`` (default: the file ``CORTEX_CREDS`` names, else none),
        failing fast with a clear error when nothing listens at ``url`` or the server
        refuses the identity.

        ``url``: one server, or seeds of a cluster (``"nats://a:4222,nats://b:4222"`` or
        a list); once connected the bus reconnects to any of them, and to the servers
        the cluster announces, for as long as it lives.
        """
        if creds is None:
            creds = auth.from_env()
        nc = await connection.connect(url, name=name, timeout=timeout, creds=creds)
        return cls(nc, timeout=timeout)

    async def close(self) -> None:
        await connection.close(self._nc)

    @property
    def connected_url(self) -> str:
        """The server this bus is connected to now ("" while it reconnects)."""
        return connection.connected_url(self._nc)

    @property
    def server_name(self) -> str:
        """The name of the server this bus is connected to now ("" while it reconnects)."""
        return connection.server_name(self._nc)

    # -- the stream -------------------------------------------------------

    async def ensure_stream(self, *, replicas: int = 1) -> None:
        """Create CORTEX_LEDGER if missing; StreamUnsafe if the one there could drop or
        hide events (``stream_config.drifts``)."""
        await store.ensure_stream(self._nc, self._js, replicas=replicas, timeout=self.timeout)

    async def stream_status(self) -> StreamStatus | None:
        """The stream's live configuration, state and cluster; None if it does not exist."""
        return await stream_config.read(self._nc, timeout=self.timeout)

    async def stream_drifts(self, *, replicas: int = 1, appended: int = 0) -> list[StreamDrift]:
        """How the live stream differs from what the ledger needs; empty when it is safe.

        ``replicas``: the fewest copies acceptable; ``appended``: a seq this process
        saw stored (a stream ending before it lost events). A missing stream is a drift.
        """
        status = await stream_config.read(self._nc, timeout=self.timeout)
        return stream_config.drifts(status, replicas=replicas, appended=appended)

    async def check_stream(self, *, replicas: int = 1, appended: int = 0) -> None:
        """StreamUnsafe naming every drift if there is one (see ``stream_drifts``)."""
        if found := await self.stream_drifts(replicas=replicas, appended=appended):
            raise store.unsafe(found)

    # -- in a cluster -----------------------------------------------------

    def server_count(self) -> int:
        """How many servers the cluster has now, as the connected server sees its routes
        (1 for a server on its own)."""
        return connection.server_count(self._nc)

    def default_replicas(self, asked: int | None = None) -> int:
        """How many replicas the stream is created with: ``asked``, else 3 on a cluster of
        three or more servers, else 1."""
        if asked is not None:
            return asked
        return 3 if self.server_count() >= 3 else 1

    async def stream_cluster(self) -> LiveCluster:
        """The stream's leader (a server name) and its followers (``current``, ``lag``);
        LedgerError if there is no stream, Unavailable while the cluster cannot say."""
        return await store.cluster(self._nc, timeout=self.timeout)

    async def step_down(self, preferred: str | None = None) -> None:
        """Have the stream's leader hand over (to the server named ``preferred``, else
        one the cluster picks): before a graceful stop of the leader's server."""
        await store.step_down(self._nc, preferred=preferred, timeout=self.timeout)

    async def scale_replicas(self, replicas: int) -> None:
        """Change the stream's replicas (admin credentials; the other roles may not
        update the stream). Unavailable ``too_few_servers`` if the cluster has fewer."""
        await store.scale_replicas(self._nc, replicas, timeout=self.timeout)

    async def watch_stream(self, notify: Callable[[], None]) -> rpc.Serving:
        """Call ``notify`` on each JetStream advisory about the stream (updated, deleted,
        created…) until the returned handle is closed."""
        return await rpc.watch_advisories(
            self._nc, stream_config.ADVISORIES, notify, timeout=self.timeout
        )

    async def last_seq(self) -> int:
        """The seq of the ledger's last event (0 when it is empty)."""
        return await store.last_seq(self._js)

    async def get(self, seq: int) -> StoredEvent:
        """The event at ``seq``; LedgerError with code ``not_found`` if there is none."""
        return await store.get(self._js, seq)

    async def append(
        self, events: Sequence[Outgoing], *, expected_last_seq: int, timeout: float | None = None
    ) -> int:
        """Append ``events`` as one atomic batch right after ``expected_last_seq``; the
        last seq. AppendConflict if the stream no longer ends there (see ``store.append``).
        ``timeout``: how long to wait for the acknowledgement (default: the bus's)."""
        return await store.append(
            self._nc,
            events,
            expected_last_seq=expected_last_seq,
            timeout=self.timeout if timeout is None else timeout,
        )

    def read(
        self, start_seq: int = 1, end_seq: int | None = None, *, partial: bool = False
    ) -> AsyncIterator[StoredEvent]:
        """Stored events from ``start_seq`` to ``end_seq`` (default: the end when it starts).

        Never waits for events the store has lost: LedgerError ``missing_events``
        within about a second, or with ``partial`` the read just ends early (the
        caller checks the last seq it got, as the audit does).
        """
        return consumer.consume(
            self._nc,
            self._js,
            start_seq,
            end_seq,
            to_end=end_seq is None,
            timeout=self.timeout,
            partial=partial,
        )

    def follow(self, start_seq: int = 1) -> AsyncIterator[StoredEvent]:
        """Stored events from ``start_seq`` on, then each new one as it is appended."""
        return consumer.consume(
            self._nc, self._js, start_seq, None, to_end=False, timeout=self.timeout
        )

    # -- key-value buckets -------------------------------------------------

    async def kv(
        self, bucket: str, *, create: KeyValueConfig | None = None, timeout: float | None = None
    ) -> KeyValue:
        """The JetStream KV bucket ``bucket`` on this connection, created as ``create`` says
        if it is missing (None: nats-py's BucketNotFoundError). For ``cortex.nats`` modules
        (``lease_bucket``): the handle is nats-py's, and so are its errors."""
        js = self._nc.jetstream(timeout=timeout or self.timeout)
        try:
            return await js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            if create is None:
                raise
        return await js.create_key_value(create)

    # -- requests ---------------------------------------------------------

    async def serve(self, subject: str, handler: rpc.Handler, *, queue: str = "") -> rpc.Serving:
        """Call ``handler`` with each request on ``subject`` (in ``queue``'s group), in
        order, until the returned handle is closed."""
        return await rpc.serve(self._nc, subject, handler, queue=queue, timeout=self.timeout)

    async def request(self, subject: str, payload: bytes, *, timeout: float | None = None) -> bytes:
        """Send a request and return the reply's bytes; Unavailable if none comes."""
        return await rpc.request(self._nc, subject, payload, timeout=timeout or self.timeout)

    async def probe(self, subject: str, *, timeout: float) -> bool | None:
        """Whether anyone serves ``subject``: True if it answered, False if the server says
        nobody listens, None if no answer came within ``timeout`` (see ``rpc.probe``)."""
        return await rpc.probe(self._nc, subject, timeout=timeout)
