"""A running CORTEX for the front doors: a real nats-server, a signing writer, a node, the
data folder's token store and a Backend on it. The MCP and HTTP tests reuse ``doors``
(``cortex.doors.testing.Doors``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cortex.doors import Backend, TokenStore
from cortex.doors.testing import Doors
from cortex.nats import EmbeddedServer
from cortex.testing import running_node
from cortex.writer import LedgerWriter


@pytest.fixture
async def doors(
    server: EmbeddedServer, signing_writer: LedgerWriter, tmp_path: Path
) -> AsyncIterator[Doors]:
    async with running_node(server.url, tmp_path / "node.db") as node:
        backend = Backend(server.data_dir, url=server.url)
        try:
            yield Doors(server, node, server.data_dir, TokenStore(server.data_dir), backend)
        finally:
            await backend.close()
