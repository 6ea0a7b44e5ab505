"""Chaos on a real three-server cluster (issue 12, item 6): kill -9 the server that leads
the ledger, kill -9 the active writer, kill and restart a whole node, each under a
bounded write load. After each: every acknowledged write is in the ledger once, at its
receipt's seq; the audit finds nothing; every live node's projection reaches the
ledger's end with the same digest; a restarted node catches up.

Each node is a nats-server, a ``cortex up --role writer --writer-candidate`` process
and a ``cortex up --role node`` process (``ops.chaos.harness``). Failover times are
printed (run with ``-s``); the bar here is loose (15 s), the benchmark
(``python -m ops.bench.cluster``) reports them against the issue's.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from ops.chaos.harness import ChaosCluster, Check, Load, load

#: The loose bar of a test on a shared, slow machine (the issue's is 10 s for a crash).
MAX_FAILOVER_S = 15.0
#: Bounds of the load: it stops by itself.
WORKERS = 4
LIMIT = 3_000
SECONDS = 40.0


@pytest.fixture
async def chaos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ChaosCluster]:
    monkeypatch.delenv("CORTEX_CREDS", raising=False)
    async with ChaosCluster(tmp_path / "chaos") as cluster:
        yield cluster


def _report(what: str, failover: float | None, acked: int) -> None:
    shown = "none" if failover is None else f"{failover * 1000:.0f} ms"
    print(f"\n{what}: first acknowledged write {shown} after the kill ({acked} acknowledged)")


@contextlib.asynccontextmanager
async def _killed_under_load(
    chaos: ChaosCluster, kill: Callable[[], Awaitable[object]]
) -> AsyncIterator[tuple[Load, float]]:
    """Under the bounded load: 50 acknowledged writes, ``kill()``, 50 more after it; the
    load and the kill's time (the block runs while the load still does)."""
    async with load(
        chaos.urls, chaos.admin(), workers=WORKERS, limit=LIMIT, seconds=SECONDS
    ) as running:
        await running.acks_after(0, 50)
        killed = time.monotonic()
        await kill()
        await running.acks_after(killed, 50)
        yield running, killed


async def _checked(chaos: ChaosCluster, running: Load, failover: float | None) -> Check:
    """Every acknowledged write once, a clean audit and projections alike; none failed; the
    failover within the bar."""
    check = await chaos.check(running.acked)
    assert check.ok, check.problems()
    assert running.failed == 0
    assert failover is not None and failover < MAX_FAILOVER_S
    return check


async def test_kill_9_of_the_stream_leader(chaos: ChaosCluster) -> None:
    victim = await chaos.leader()
    async with _killed_under_load(chaos, lambda: chaos.kill_server(victim)) as (running, killed):
        pass
    failover = running.first_ack_after(killed)
    _report(f"kill -9 of the stream leader (n{victim})", failover, len(running.acked))
    await chaos.restart_server(victim)
    await chaos.settle()
    await _checked(chaos, running, failover)


async def test_kill_9_of_the_active_writer(chaos: ChaosCluster) -> None:
    victim = await chaos.active_writer()
    async with _killed_under_load(chaos, chaos.node(victim).writer.kill) as (running, killed):
        pass
    failover = running.first_ack_after(killed)
    _report(f"kill -9 of the active writer (n{victim})", failover, len(running.acked))
    assert await chaos.active_writer() != victim
    await _checked(chaos, running, failover)


async def test_kill_and_restart_of_a_whole_node(chaos: ChaosCluster) -> None:
    """The node of the active writer: its server, writer and projector die at once."""
    victim = await chaos.active_writer()
    async with _killed_under_load(chaos, lambda: chaos.kill_node(victim)) as (running, killed):
        failover = running.first_ack_after(killed)
        # Back while the load runs: the node catches up with what it missed.
        await chaos.restart_node(victim)
        await running.acks_after(time.monotonic(), 20)
    _report(f"kill -9 of a whole node (n{victim})", failover, len(running.acked))
    await chaos.settle()
    check = await _checked(chaos, running, failover)
    assert victim in check.positions  # the restarted node caught up with the others
