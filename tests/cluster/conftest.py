"""A real three-server JetStream cluster on free loopback ports, stopped after the test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cortex.nats.cluster import ClusterServers, Ports


@pytest.fixture
async def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ClusterServers]:
    """Three nats-servers forming one JetStream cluster, ready for an R3 stream. No
    ``CORTEX_CREDS``: each connection says who it is."""
    monkeypatch.delenv("CORTEX_CREDS", raising=False)
    servers = ClusterServers(tmp_path / "cluster", 3, ports=Ports.free(3))
    async with servers:
        yield servers
