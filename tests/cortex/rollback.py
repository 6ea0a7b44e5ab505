"""An attacker holding a ledger's data folder: a snapshot put back after more writes.

Shared by the remembered-head and the witness tests, which both show that
such a rollback starts and serves, and differ only in what catches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from cortex.client import Client
from cortex.core.keys import writer_key
from cortex.errors import StateConflict
from cortex.nats import CHECKPOINT_SUBJECT, EmbeddedServer
from cortex.testing import running_writer
from cortex.writer import LedgerWriter

WAIT = 30.0
TENANT = "lab"
LATE = "A late fact that the attacker wants gone."


async def write_facts(url: str, *contents: str) -> None:
    """Store facts as agent ann of ``TENANT``, and have the writer sign a checkpoint."""
    async with await Client.connect(url, tenant=TENANT) as client:
        if not contents:
            return
        with contextlib.suppress(StateConflict):  # registered on an earlier call
            await client.register_agent("ann")
        for content in contents:
            await client.store_fact("ann", content)
        await client.bus.request(CHECKPOINT_SUBJECT, b"", timeout=WAIT)  # no node needed


@contextlib.asynccontextmanager
async def rolled_back(
    server: EmbeddedServer,
    writer: LedgerWriter,
    snapshot: Path,
    after_late: Callable[[str], Awaitable[None]],
) -> AsyncIterator[str]:
    """Stop ``writer`` and ``server`` and copy the folder to ``snapshot``; start it again,
    write ``LATE`` and call ``after_late(url)`` (what the test remembers of it); then put
    the old copy back and serve it. Yields the restored server's URL."""
    async with asyncio.timeout(WAIT):
        await writer.stop()
    await writer.bus.close()
    await server.stop()
    shutil.copytree(server.data_dir, snapshot)
    async with EmbeddedServer(server.data_dir, port=-1) as again:
        async with running_writer(again.url, key=writer_key(server.data_dir)):
            await write_facts(again.url, LATE)
        await after_late(again.url)
    shutil.rmtree(server.data_dir)
    shutil.copytree(snapshot, server.data_dir)
    async with EmbeddedServer(server.data_dir, port=-1) as restored:
        yield restored.url
