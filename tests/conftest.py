"""Fixtures chained as the product runs: a real nats-server → connections → writer → client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import nats
import pytest

from cortex.client import Client
from cortex.core.keys import writer_key
from cortex.nats import Bus, EmbeddedServer, LocalAuth, Role
from cortex.runtime import Runtime
from cortex.testing import running_writer
from cortex.writer import LedgerWriter
from projections.pool import ConnectionPool
from projections.projector import Projector
from projections.testing import LedgerBuilder, open_projector


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
