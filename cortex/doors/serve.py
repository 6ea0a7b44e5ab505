"""``HttpServer``: the HTTP API (and, when ``cortex.doors.mcp`` offers it, MCP at
``/mcp``) on uvicorn, as a role with ``start()``/``stop()``: alone, or one more role
of a ``cortex.runtime.Runtime`` (``await rt.add(HttpServer(data))``).

It listens on 127.0.0.1 only: put a TLS-terminating proxy in front to reach it
from elsewhere (the bearer tokens must not cross a network in the clear).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import socket
from collections.abc import Generator
from pathlib import Path
from typing import Any, Final

import structlog
import uvicorn

from cortex.doors.backend import Backend
from cortex.doors.http import ASGIApp, HttpDoor
from cortex.doors.tokens import TokenStore
from cortex.errors import CortexError
from cortex.listen import HOST, listen
from projections.tasks import stop_task

log = structlog.get_logger(__name__)

#: How long requests under way may take to finish when the server stops.
STOP_S: Final = 5.0
#: How long the server may take to listen before its start is a failure.
START_S: Final = 30.0


def mcp_mount(backend: Backend, tokens: TokenStore, base_url: str) -> tuple[ASGIApp, Any] | None:
    """The MCP app and the context manager to enter while it serves; None while
    ``cortex.doors.mcp`` has no ``mcp_asgi``. The seam (issue 13): ``mcp_asgi(backend,
    tokens, base_url) -> (starlette_app, lifespan_cm)``; the app serves ``/mcp`` itself and
    is mounted at the root after the HTTP API's routes, the context manager entered by
    this server's lifespan."""
    try:  # imported late: the MCP SDK is slow to import, and may not be there yet
        module = importlib.import_module("cortex.doors.mcp")
    except ImportError:
        return None
    mcp_asgi = getattr(module, "mcp_asgi", None)
    if mcp_asgi is None:
        return None
    mounted: tuple[ASGIApp, Any] = mcp_asgi(backend, tokens, base_url)
    return mounted


class _Uvicorn(uvicorn.Server):
    """uvicorn that says when it listens, and leaves signals to its owner."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.should_exit:
            self.listening.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class HttpServer:
    """The HTTP door of the data folder ``data`` on 127.0.0.1:``port`` (0: any free port)."""

    def __init__(
        self, data: Path, *, url: str | None = None, port: int = 0, mcp: bool = True
    ) -> None:
        self.data = data
        self.nats_url = url
        self.port = port
        self._with_mcp = mcp
        self.url = ""
        self.door: HttpDoor | None = None
        self.backend: Backend | None = None
        self._server: _Uvicorn | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None

    @property
    def mcp_mounted(self) -> bool:
        return self.door is not None and self.door.mcp_mounted

    async def start(self) -> str:
        """Listen; the server's base URL (``http://127.0.0.1:PORT``)."""
        sock = listen(self.port, what="the HTTP API", code="unavailable")
        self._sock = sock
        self.url = f"http://{HOST}:{sock.getsockname()[1]}"
        tokens = TokenStore(self.data)
        self.backend = Backend(self.data, url=self.nats_url)
        mcp = mcp_mount(self.backend, tokens, self.url) if self._with_mcp else None
        self.door = HttpDoor(self.backend, tokens, mcp=mcp)
        config = uvicorn.Config(
            self.door.asgi,
            log_level="warning",
            access_log=False,
            lifespan="auto",
            proxy_headers=False,  # no proxy is trusted: the client address is the peer's
        )
        self._server = server = _Uvicorn(config)
        self._task = task = asyncio.create_task(server.serve(sockets=[sock]), name="cortex-http")
        listening = asyncio.create_task(server.listening.wait())
        try:
            await asyncio.wait(
                {task, listening}, timeout=START_S, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            listening.cancel()
        if not server.listening.is_set():
            error = None if not task.done() or task.cancelled() else task.exception()
            raise CortexError(
                f"the HTTP API failed to start ({error or 'its startup failed'})",
                code="unavailable",
            )
        task.add_done_callback(self._ended)
        log.info("http_listening", url=self.url, mcp=mcp is not None)
        return self.url

    def _ended(self, task: asyncio.Task[None]) -> None:
        """The server ended without being stopped: nothing may die silently."""
        if self._task is not task or task.cancelled():
            return
        log.critical("http_server_ended", url=self.url, error=repr(task.exception()))

    async def stop(self) -> None:
        """Stop answering (requests under way finish first), then close the tenants' clients."""
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            task, self._task = self._task, None
            try:
                async with asyncio.timeout(STOP_S):
                    await asyncio.wait({task})
            except TimeoutError:
                log.warning("http_stop_slow", seconds=STOP_S)
            await stop_task(task)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self.backend is not None:
            await self.backend.close()
            self.backend = None
