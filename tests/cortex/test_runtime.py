"""The runtime that `cortex up`, `cortex demo` and the fixtures share: roles started on their
own connections, everything stopped in reverse order, also when a start fails."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import AsAdmin

from cortex.client import Client
from cortex.errors import Unavailable
from cortex.nats import Bus
from cortex.runtime import Runtime


class Recorded:
    """A role that writes down when it starts and stops (and can refuse to start)."""

    def __init__(self, name: str, log: list[str], *, fail: bool = False) -> None:
        self.name, self.log, self.fail = name, log, fail

    async def start(self) -> None:
        self.log.append(f"start {self.name}")
        if self.fail:
            raise RuntimeError(f"{self.name} cannot start")

    async def stop(self) -> None:
        self.log.append(f"stop {self.name}")


async def _server_is_gone(url: str) -> bool:
    try:
        bus = await Bus.connect(url, timeout=2)
    except Unavailable:
        return True
    await bus.close()
    return False


async def test_server_writer_and_node_serve_a_write_and_a_read(
    tmp_path: Path, as_admin: AsAdmin
) -> None:
    """What `cortex up` runs: a receipt's seq is readable through the node with min_seq;
    after the block the server is stopped."""
    as_admin(tmp_path / "data")
    async with Runtime(name="test") as runtime:
        url = await runtime.serve(tmp_path / "data", port=-1)
        writer = await runtime.add_writer()
        node = await runtime.add_node(tmp_path / "data" / "projection.db")
        assert (runtime.url, runtime.writer, runtime.nodes) == (url, writer, [node])
        async with await Client.connect(url, tenant="lab") as client:
            receipt = await client.register_agent("ada")
            agents = await client.agents(min_seq=receipt.seq)
        assert [a["agent_id"] for a in agents] == ["ada"]
    assert await _server_is_gone(url)


async def test_roles_stop_in_reverse_order_of_their_start(tmp_path: Path) -> None:
    log: list[str] = []
    async with Runtime(name="test") as runtime:
        await runtime.serve(tmp_path / "data", port=-1)
        await runtime.add(Recorded("first", log))
        await runtime.add_writer()
        await runtime.add(Recorded("second", log))
    assert log == ["start first", "start second", "stop second", "stop first"]


async def test_a_role_that_fails_to_start_stops_everything_started_before(
    tmp_path: Path,
) -> None:
    """The error reaches the caller; the failed role, the roles before it and the server
    are all stopped: nothing is left running."""
    log: list[str] = []
    runtime = Runtime(name="test")
    url = await runtime.serve(tmp_path / "data", port=-1)
    await runtime.add(Recorded("good", log))

    async def up_to_the_broken_role() -> None:
        async with runtime:
            await runtime.add(Recorded("broken", log, fail=True))
            await runtime.add(Recorded("never", log))

    with pytest.raises(RuntimeError, match="broken cannot start"):
        await up_to_the_broken_role()
    assert log == ["start good", "start broken", "stop broken", "stop good"]
    assert await _server_is_gone(url)


async def test_an_external_url_is_used_as_given(tmp_path: Path, as_admin: AsAdmin) -> None:
    """With a URL the runtime starts no server of its own, and refuses to start one."""
    as_admin(tmp_path / "data")
    async with Runtime(name="test") as outer:
        url = await outer.serve(tmp_path / "data", port=-1)
        async with Runtime(url, name="test") as runtime:
            assert runtime.url == url
            assert runtime.server is None
            with pytest.raises(RuntimeError, match="already uses the server"):
                await runtime.serve(tmp_path / "other", port=-1)
        assert not await _server_is_gone(url)


async def test_a_runtime_without_a_server_says_so() -> None:
    async with Runtime() as runtime:
        with pytest.raises(RuntimeError, match="no server yet"):
            await runtime.add_writer()
