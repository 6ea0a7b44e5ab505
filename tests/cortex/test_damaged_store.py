"""A store that lost its last events (a block file cut short, its index kept) makes no
reader wait: every read of the ledger is bounded and says what is missing."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import AsAdmin

from cortex.client import Client
from cortex.errors import LedgerError
from cortex.nats import Bus, EmbeddedServer
from cortex.testing import run_cli, running_writer

WAIT = 10.0


def _cut(data: Path, keep: int) -> None:
    """Cut the (one) block file after its first ``keep`` records, as someone holding
    the files could. The index (``index.db``) stays, so nats-server 2.15 still claims
    the events it no longer has; removed, the server would rebuild a shorter stream."""
    (block,) = (data / "store" / "jetstream").rglob("msgs/*.blk")
    raw = block.read_bytes()
    offset = 0
    for _ in range(keep):
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += length & 0x7FFFFFFF  # the high bit says the record has headers
    block.write_bytes(raw[:offset])


@pytest.fixture
async def damaged(tmp_path: Path, as_admin: AsAdmin) -> AsyncIterator[tuple[EmbeddedServer, int]]:
    """A server whose stream claims four events and holds three; and that last seq."""
    data = tmp_path / "data"
    as_admin(data)
    async with (
        EmbeddedServer(data, port=-1) as server,
        running_writer(server.url),
        await Client.connect(server.url) as client,
    ):
        for agent in ("a", "b", "c", "d"):
            last = (await client.register_agent(agent)).seq
    assert last == 4
    _cut(data, keep=3)
    async with EmbeddedServer(data, port=-1) as server:
        yield server, last


async def test_a_read_of_a_cut_ledger_says_what_is_missing_instead_of_waiting(
    damaged: tuple[EmbeddedServer, int],
) -> None:
    server, last = damaged
    bus = await Bus.connect(server.url)
    try:
        assert await bus.last_seq() == last  # the stream's state still claims it
        async with asyncio.timeout(WAIT):
            with pytest.raises(LedgerError, match=r"events 4\.\.4 are missing") as missing:
                _ = [s.seq async for s in bus.read(1)]
            assert missing.value.code == "missing_events"
            assert [s.seq async for s in bus.read(1, last, partial=True)] == [1, 2, 3]
    finally:
        await bus.close()


async def test_log_audit_and_up_on_a_cut_ledger_fail_within_seconds(
    damaged: tuple[EmbeddedServer, int], tmp_path: Path
) -> None:
    """`cortex log` and `cortex audit` end with exit 1 and name the missing events
    instead of hanging; so does `cortex up` on the damaged folder."""
    server, _ = damaged
    log = await run_cli("log", "--nats", server.url, timeout=WAIT)
    assert log.code == 1
    assert "error [missing_events]" in log.err
    audit = await run_cli("audit", "--nats", server.url, "--json", timeout=WAIT)
    assert audit.code == 1
    assert "sequence_gap" in audit.json()["violation_counts"]
    await server.stop()
    up = await run_cli("up", "--data", str(server.data_dir), "--port", "-1", timeout=WAIT * 2)
    assert up.code == 1
    assert "error [missing_events]" in up.err


async def test_an_empty_stream_whose_state_says_otherwise_is_reported(
    tmp_path: Path, as_admin: AsAdmin
) -> None:
    data = tmp_path / "data"
    as_admin(data)
    async with (
        EmbeddedServer(data, port=-1) as server,
        running_writer(server.url),
        await Client.connect(server.url) as client,
    ):
        await client.register_agent("a")
        await client.register_agent("b")
    _cut(data, keep=0)
    async with EmbeddedServer(data, port=-1) as server:
        bus = await Bus.connect(server.url)
        try:
            assert await bus.last_seq() == 2
            async with asyncio.timeout(WAIT):
                with pytest.raises(LedgerError, match=r"events 1\.\.2 are missing"):
                    _ = [s async for s in bus.read(1)]
        finally:
            await bus.close()
