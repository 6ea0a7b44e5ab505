"""One place where CORTEX's roles are started and stopped again.

``cortex up``, ``cortex demo`` and the test fixtures all run the same few
roles: an embedded nats-server (or an external one by URL), the ledger
writer, one or more projection nodes, and later the MCP and HTTP servers.
A ``Runtime`` starts each role on its own connection and, on leaving its
``async with`` block, stops everything it started and closes every
connection it opened, in reverse order: nodes before the writer, the writer
before its connection, every connection before the server::

    async with Runtime() as rt:
        await rt.serve(Path(".cortex"), port=-1)  # or Runtime("nats://…") for a running one
        writer = await rt.add_writer(key=writer_key(data))
        node = await rt.add_node(data / "projection.db")
        ...

A role is anything with ``start()`` and ``stop()`` (``Role``); ``add`` runs
any such object the same way, so a new front door is one more role.

The runtime also watches what it started: if the embedded server exits, or a
node's projector stops for good, it records the failure, and ``wait`` (what
``cortex up`` blocks in) raises it, so the process exits saying why instead of
running on with a dead part::

        await rt.wait(stop)  # until ``stop`` is set, or raises the first failure
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

import structlog

from cortex.cosigner import Cosigner, NodeReads
from cortex.datalock import DataLock
from cortex.errors import CortexError, ServerError
from cortex.lease import DEFAULT_PERIOD, WriterLease
from cortex.nats import Bus, Credentials, Durability, EmbeddedServer
from cortex.nats.permissions import Role as User
from cortex.node import ProjectionNode
from cortex.writer import LedgerWriter
from projections.tasks import stop_task


class Role(Protocol):
    """Something the runtime starts and later stops.

    ``stop`` must be safe to call after a ``start`` that failed part way:
    the runtime stops a role whose start raised, so it leaves nothing behind.
    """

    async def start(self) -> object: ...
    async def stop(self) -> None: ...


R = TypeVar("R", bound=Role)
log = structlog.get_logger(__name__)


class Runtime:
    """Starts roles, remembers what it owns, and stops it all in reverse order on exit."""

    def __init__(
        self, url: str | None = None, *, name: str = "cortex", creds: Credentials | None = None
    ) -> None:
        self._url = url
        #: What every role connects as on a server this runtime did not start (None:
        #: ``CORTEX_CREDS``, else anonymous). On its own server each role is its own user.
        self._creds = creds
        #: Connections are named ``<name>-<role>`` (as the server's monitoring shows them).
        self.name = name
        self.server: EmbeddedServer | None = None
        self.writer: LedgerWriter | None = None
        self.nodes: list[ProjectionNode] = []
        self._locked: set[Path] = set()
        self._stack = contextlib.AsyncExitStack()
        #: The first failure of a part that cannot recover (see ``fail``).
        self.failure: CortexError | None = None
        self._failed = asyncio.Event()

    @property
    def url(self) -> str:
        """The server every role connects to: the one given, or the one ``serve`` started."""
        if self._url is None:
            raise RuntimeError("no server yet: give Runtime a URL or call serve() first")
        return self._url

    async def add(self, role: R) -> R:
        """Start ``role`` now and stop it on exit (also if its start fails)."""
        self._stack.push_async_callback(role.stop)
        await role.start()
        return role

    def lock(self, data: Path, *, purpose: str = "cortex") -> None:
        """Own the data folder for the runtime's life (``cortex.datalock``); refuse if taken."""
        folder = data.resolve()
        if folder in self._locked:
            return
        lock = DataLock(data, purpose=purpose).acquire()
        self._stack.callback(lock.release)
        self._locked.add(folder)

    async def serve(
        self,
        data: Path,
        *,
        port: int = 4222,
        durability: Durability = Durability.SAFE,
        extra_config: str = "",
    ) -> str:
        """Start the embedded nats-server storing in ``data``; its URL."""
        if self._url is not None:
            raise RuntimeError(f"this runtime already uses the server at {self._url}")
        self.lock(data, purpose=f"{self.name} server")
        server = EmbeddedServer(data, port=port, durability=durability, extra_config=extra_config)
        self.server = await self.add(server)
        self._url = server.url
        watch = asyncio.create_task(self._watch(server), name="cortex-server-watch")
        self._stack.push_async_callback(stop_task, watch)  # before the server is stopped
        return server.url

    async def _watch(self, server: EmbeddedServer) -> None:
        """The server is a child process: if it ends while we run, nothing can go on."""
        code = await server.exited()
        if server.stopping:
            return
        how = f"killed by signal {_signal_name(-code)}" if code < 0 else f"exit code {code}"
        self.fail(
            ServerError(
                f"the embedded nats-server exited ({how}) while CORTEX was running on it",
                code="server_exited",
            )
        )

    def fail(self, error: CortexError) -> None:
        """Record that a part failed for good; ``wait`` raises the first such failure."""
        log.critical("runtime_failed", code=error.code, error=error.message)
        if self.failure is None:
            self.failure = error
        self._failed.set()

    async def wait(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set; raises the failure if a part fails for good first."""
        stopping = asyncio.create_task(stop.wait())
        failing = asyncio.create_task(self._failed.wait())
        try:
            await asyncio.wait({stopping, failing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stopping, failing):
                await stop_task(task)
        if self.failure is not None:
            raise self.failure

    def credentials(self, role: str) -> Credentials | None:
        """Who a connection for ``role`` is: on the runtime's own server, the folder's
        writer or node user for those roles and its admin for anything else (readers,
        audits); elsewhere the credentials given (or None: ``CORTEX_CREDS``)."""
        if self.server is None:
            return self._creds
        known = {"writer": User.WRITER, "node": User.NODE}
        return self.server.credentials(known.get(role, User.ADMIN))

    async def connect(self, role: str) -> Bus:
        """A connection of this runtime's own, named for ``role``, closed on exit."""
        bus = await Bus.connect(self.url, name=f"{self.name}-{role}", creds=self.credentials(role))
        self._stack.push_async_callback(bus.close)
        return bus

    async def add_writer(
        self, *, candidate: bool = False, lease_period: float = DEFAULT_PERIOD, **options: Any
    ) -> LedgerWriter:
        """Start the ledger writer on its own connection (options as ``LedgerWriter`` takes).

        ``candidate``: one of several writers, serving only while it holds the writer
        lease (``cortex.lease``, renewed every ``lease_period / 4`` seconds); its start
        returns once it stands by, and ``writer.active`` is set while it serves.
        """
        options.setdefault("on_fatal", self.fail)
        bus = await self.connect("writer")
        if candidate:
            options["lease"] = WriterLease(
                bus, replicas=options.get("replicas", 1), period=lease_period, name=self.name
            )
        writer = LedgerWriter(bus, **options)
        self.writer = await self.add(writer)
        return writer

    async def add_node(self, db: Path, **options: Any) -> ProjectionNode:
        """Start a node (projector into ``db``, and its queries) on its own connection."""
        options.setdefault("on_fatal", self.fail)
        node = ProjectionNode(await self.connect("node"), db, **options)
        self.nodes.append(await self.add(node))
        return node

    async def add_cosigner(self, witnesses: list[str], folder: Path, **options: Any) -> Cosigner:
        """Have every checkpoint the writer signs cosigned by ``witnesses`` in the background,
        with proofs from this runtime's first node, and kept under ``folder``
        (``cortex.cosigner``). Needs the writer and a node started here first."""
        writer = self.writer
        if writer is None or not self.nodes:
            raise CortexError(
                "witnessing needs the writer and a node in this process (the node's read "
                "side makes the consistency proofs)",
                code="invalid_field",
            )
        cosigner = Cosigner(witnesses, folder, NodeReads(self.nodes[0].service), **options)

        async def stop() -> None:
            # Stop the writer first (again is harmless), while the node still serves:
            # the checkpoint a clean stop signs is cosigned too.
            await writer.stop()
            await cosigner.stop()

        self._stack.push_async_callback(stop)
        await cosigner.start()
        writer.on_checkpoint = cosigner.checkpointed
        if writer.state.checkpoint_seq:
            cosigner.checkpointed(writer.state.checkpoint_seq, writer.state.checkpoint_size)
        return cosigner

    async def close(self) -> None:
        """Stop every role and close every connection, the last started first."""
        await self._stack.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.__aexit__(exc_type, exc, tb)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)
