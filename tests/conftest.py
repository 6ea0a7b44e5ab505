"""Fixtures chained as the product runs: a real nats-server → connections → writer → client."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient

from cortex.client import Client
from cortex.core.keys import writer_key
from cortex.nats import STREAM, Bus, Credentials, EmbeddedServer, LocalAuth, Role
from cortex.runtime import Runtime
from cortex.testing import running_writer
from cortex.writer import LedgerWriter
from projections.pool import ConnectionPool
from projections.projector import Projector
from projections.testing import LedgerBuilder, open_projector


@pytest.fixture(autouse=True)
def config_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's own user config folder: the remembered heads of ``cortex audit``
    (``trust.json``) and ``cortex up``'s writer key never touch the real one, nor
    another test's."""
    home = tmp_path_factory.mktemp("config")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return home


@pytest.fixture
async def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[EmbeddedServer]:
    """A real nats-server from the wheel, on a free loopback port, storing in tmp_path.

    It admits no one anonymously; ``CORTEX_CREDS`` names its admin credentials for
    the test, so a connection made without credentials (a client, a ``cortex``
    command) is the operator's.
    """
    async with Runtime(name="test") as runtime:
        await runtime.serve(tmp_path / "data", port=-1)
        assert runtime.server is not None
        monkeypatch.setenv("CORTEX_CREDS", str(runtime.server.admin_creds))
        yield runtime.server


#: Sets ``CORTEX_CREDS`` to the admin credentials of a data folder (which its
#: embedded server creates on first start), for tests that start servers themselves.
AsAdmin = Callable[[Path], Path]


@pytest.fixture
def as_admin(monkeypatch: pytest.MonkeyPatch) -> AsAdmin:
    """Connections made without credentials are the admin's of the data folder given."""

    def use(data: Path) -> Path:
        path = LocalAuth(data).path(Role.ADMIN)
        monkeypatch.setenv("CORTEX_CREDS", str(path))
        return path

    return use


@pytest.fixture
async def bus(server: EmbeddedServer) -> AsyncIterator[Bus]:
    b = await Bus.connect(server.url)
    yield b
    await b.close()


#: Publishes straight onto the ledger stream: subject, body, headers.
Forge = Callable[[str, bytes, dict[str, str]], Awaitable[object]]


@pytest.fixture
async def forge(server: EmbeddedServer) -> AsyncIterator[Forge]:
    """Publish onto the ledger stream around the writer, as an insider with the admin's
    credentials and a raw nats-py connection could.

    With ``tests/cortex/test_tamper.py`` (which plays an attacker), the only
    place outside ``cortex.nats`` that imports nats-py; ``tests/test_layering.py``
    holds it to that.
    """
    admin = server.credentials()
    nc = await nats.connect(
        server.url, name="forger", nkeys_seed_str=admin.seed, inbox_prefix=admin.inbox_prefix
    )
    js = nc.jetstream()

    async def publish(subject: str, body: bytes, headers: dict[str, str]) -> object:
        return await js.publish(subject, body, headers=headers)

    yield publish
    await nc.close()


class StreamAdmin:
    """Changes CORTEX_LEDGER through the JetStream API, as whoever may administer the
    stream can: every field as nats-server's JSON names it (durations in ns)."""

    def __init__(self, nc: NatsClient) -> None:
        self.nc = nc

    async def _api(self, verb: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        payload = b"" if body is None else json.dumps(body).encode()
        reply = await self.nc.request(f"$JS.API.STREAM.{verb}.{STREAM}", payload, timeout=5)
        answer: dict[str, Any] = json.loads(reply.data)
        return answer

    async def config(self) -> dict[str, Any]:
        config: dict[str, Any] = (await self._api("INFO"))["config"]
        return config

    async def update(self, **changes: Any) -> dict[str, Any]:
        """The stream's config with ``changes``; nats-server's reply (``error`` if refused)."""
        return await self._api("UPDATE", {**await self.config(), **changes})

    async def create(self, config: dict[str, Any]) -> dict[str, Any]:
        return await self._api("CREATE", config)

    async def delete(self) -> dict[str, Any]:
        return await self._api("DELETE")


#: Opens a StreamAdmin on the server at a URL (closed after the test).
AdminConnect = Callable[[str], Awaitable[StreamAdmin]]


@pytest.fixture
async def admin_connect() -> AsyncIterator[AdminConnect]:
    """The one place that opens a connection allowed to change the stream: a raw nats-py
    connection with the admin's credentials (``CORTEX_CREDS``, as the fixtures set it)."""
    opened: list[NatsClient] = []

    async def connect(url: str) -> StreamAdmin:
        # The admin credentials the test set up (the ``server`` fixture or ``as_admin``).
        admin = Credentials.load(Path(os.environ["CORTEX_CREDS"]))
        nc = await nats.connect(
            url, name="stream-admin", nkeys_seed_str=admin.seed, inbox_prefix=admin.inbox_prefix
        )
        opened.append(nc)
        return StreamAdmin(nc)

    yield connect
    for nc in opened:
        await nc.close()


@pytest.fixture
async def stream_admin(server: EmbeddedServer, admin_connect: AdminConnect) -> StreamAdmin:
    """A StreamAdmin on the test's server."""
    return await admin_connect(server.url)


@pytest.fixture
async def writer(server: EmbeddedServer) -> AsyncIterator[LedgerWriter]:
    """A running writer on its own connection, as `cortex up` runs it."""
    async with running_writer(server.url) as w:
        yield w


@pytest.fixture
async def signing_writer(server: EmbeddedServer) -> AsyncIterator[LedgerWriter]:
    """A writer with its key in the data folder, checkpointing every 10 events."""
    async with running_writer(
        server.url, key=writer_key(server.data_dir), checkpoint_every=10
    ) as w:
        yield w


@pytest.fixture
async def client(server: EmbeddedServer, writer: LedgerWriter) -> AsyncIterator[Client]:
    c = await Client.connect(server.url, tenant="acme")
    yield c
    await c.close()


@pytest.fixture
def ledger() -> LedgerBuilder:
    """A ledger built in memory, as the writer would append it."""
    return LedgerBuilder()


@pytest.fixture
async def projected(tmp_path: Path) -> AsyncIterator[tuple[ConnectionPool, Projector]]:
    """A projector over a real SQLite file."""
    pool, projector = await open_projector(tmp_path / "node.db")
    yield pool, projector
    await pool.close()
