"""Several real nats-servers on loopback that share one folder's users.

``EmbeddedServer`` takes extra configuration, which is all a JetStream
cluster needs (a server name and a ``cluster`` block): the servers here are
embedded servers, each with its own store, and the same ``auth/`` folder
copied into each data folder so that one set of credentials gets in
everywhere. (``cortex.nats.cluster`` is the product's way of doing this; the
tests of the client side do not depend on it.)
"""

from __future__ import annotations

import contextlib
import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from cortex.nats import Bus, EmbeddedServer, LocalAuth, Role
from cortex.nats.auth import AUTH_DIR
from cortex.testing import eventually


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def shared_servers(root: Path, count: int, *, cluster: bool) -> list[EmbeddedServer]:
    """``count`` embedded servers under ``root`` with the users of the first one;
    with ``cluster``, routed to each other as one JetStream cluster."""
    first = root / "n1"
    LocalAuth(first).ensure()
    routes = [free_port() for _ in range(count)]
    servers = []
    for n in range(1, count + 1):
        data = root / f"n{n}"
        if n > 1:
            data.mkdir(mode=0o700)
            shutil.copytree(first / AUTH_DIR, data / AUTH_DIR)
        extra = ""
        if cluster:
            peers = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in routes)
            extra = (
                f"server_name: ride-n{n}\n"
                "cluster {\n"
                "  name: ride\n"
                f'  listen: "127.0.0.1:{routes[n - 1]}"\n'
                f"  routes: [{peers}]\n"
                "}\n"
            )
        servers.append(EmbeddedServer(data, port=free_port(), extra_config=extra))
    return servers


async def jetstream_ready(url: str, *, timeout: float = 30.0) -> None:
    """Until the cluster has a JetStream meta leader (the API answers)."""
    bus = await Bus.connect(url)
    try:

        async def answered() -> bool | None:
            await bus.request("$JS.API.INFO", b"", timeout=1.0)
            return True if bus.server_count() >= 1 else None

        await eventually(answered, timeout=timeout, every=0.1, retry_on=(Exception,))
    finally:
        await bus.close()


Servers = Callable[[int], Awaitable[list[EmbeddedServer]]]


@pytest.fixture
async def servers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Callable[..., Awaitable[list[EmbeddedServer]]]]:
    """Start ``count`` servers sharing users (``cluster=True``: one JetStream cluster);
    ``CORTEX_CREDS`` is their admin. All are stopped at the end."""
    started: list[EmbeddedServer] = []

    async def start(count: int, *, cluster: bool = False) -> list[EmbeddedServer]:
        group = shared_servers(tmp_path / f"g{len(started)}", count, cluster=cluster)
        monkeypatch.setenv("CORTEX_CREDS", str(group[0].auth.path(Role.ADMIN)))
        for server in group:
            started.append(server)
            await server.start()
        if cluster:
            await jetstream_ready(group[0].url)
        return group

    yield start
    for server in reversed(started):
        with contextlib.suppress(Exception):
            await server.stop()
