"""What is acknowledged stays: the embedded default fsyncs, and a killed server loses nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

from conftest import AsAdmin

from cortex.audit import audit_ledger
from cortex.client import Client
from cortex.core.keys import default_key_path
from cortex.nats import Bus, Durability, EmbeddedServer
from cortex.testing import cortex_up
from cortex.testing import run_cli as cortex
from cortex.writer import LedgerWriter


async def test_the_embedded_default_fsyncs_before_acknowledging(tmp_path: Path) -> None:
    """`sync_interval: always` unless the user asks for the fast mode."""
    async with EmbeddedServer(tmp_path / "safe", port=-1) as safe:
        assert "sync_interval: always" in (safe.data_dir / "nats-server.conf").read_text()
    async with EmbeddedServer(tmp_path / "fast", port=-1, durability=Durability.FAST) as fast:
        assert "sync_interval: 2m" in (fast.data_dir / "nats-server.conf").read_text()
    assert "sync_interval: always" in (Path(__file__).parents[2] / "nats.conf").read_text()


async def test_acknowledged_events_survive_a_killed_server(
    tmp_path: Path, as_admin: AsAdmin
) -> None:
    """SIGKILL the server after the receipts: on restart every event is there, chain intact."""
    as_admin(tmp_path / "data")
    server = EmbeddedServer(tmp_path / "data", port=-1)
    await server.start()
    bus = await Bus.connect(server.url)
    writer = LedgerWriter(bus)
    await writer.start()
    async with await Client.connect(server.url, tenant="t") as c:
        await c.register_agent("a")
        receipts = await asyncio.gather(*(c.store_fact("a", f"{i}") for i in range(300)))
    await writer.stop()
    await bus.close()
    assert server._proc is not None
    server._proc.kill()
    await server._proc.wait()
    await server.stop()

    restarted = EmbeddedServer(tmp_path / "data", port=-1)
    await restarted.start()
    try:
        bus = await Bus.connect(restarted.url)
        assert await bus.last_seq() == 301
        stored = {e.seq: e.hash.hex() async for e in bus.read(1)}
        assert all(stored[r.seq] == r.hash for r in receipts)
        assert (await audit_ledger(bus)).ok
        await bus.close()
    finally:
        await restarted.stop()


async def test_cortex_up_serves_and_stops_cleanly_on_sigterm(
    tmp_path: Path, as_admin: AsAdmin
) -> None:
    """`cortex up` as a user runs it: says its URL, takes commands, exits 0 on SIGTERM."""
    as_admin(tmp_path / "d")
    async with cortex_up(tmp_path / "d") as up:
        async with await Client.connect(up.url, tenant="t") as c:
            receipt = await c.register_agent("a")
        assert receipt.seq == 2  # after the writer's key, recorded on first start
        assert await up.stop() == 0
    assert (tmp_path / "d" / "store" / "jetstream").is_dir()
    # The writer key is kept out of the data folder, in the user's configuration folder.
    assert not (tmp_path / "d" / "writer.key").exists()
    assert default_key_path(tmp_path / "d").stat().st_mode & 0o777 == 0o600


async def test_a_second_cortex_up_on_the_same_data_folder_is_refused(
    tmp_path: Path, as_admin: AsAdmin
) -> None:
    """Two `cortex up` on one folder would each append their own seq 2: the second must not start."""
    data = tmp_path / "d"
    as_admin(data)
    async with cortex_up(data) as up:
        second = await cortex("up", "--data", str(data), "--port", "-1")
        assert second.code == 1
        assert "error [data_locked]" in second.err + second.out
        assert f"pid {up.proc.pid}" in second.err + second.out
        # The first one is untouched and still serves.
        async with await Client.connect(up.url, tenant="t") as c:
            assert (await c.register_agent("a")).seq == 2
        assert await up.stop() == 0
