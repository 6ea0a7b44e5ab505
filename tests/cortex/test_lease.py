"""The writer lease on a real nats-server: one holder among candidates, handed over on a
clean release at once, taken over from a dead holder within a bounded time, and lost
for certain (never twice held) when another candidate takes it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
import structlog.testing

from cortex.lease import KEY, WriterLease
from cortex.nats import Bus, EmbeddedServer, Role
from cortex.nats.lease_bucket import LeaseBucket

PERIOD = 0.4
WAIT = 10.0


@contextlib.asynccontextmanager
async def candidate(server: EmbeddedServer, name: str) -> AsyncIterator[WriterLease]:
    """A lease on its own connection, as the writer user."""
    bus = await Bus.connect(
        server.url, name=name, creds=server.credentials(Role.WRITER), timeout=2.0
    )
    lease = WriterLease(bus, period=PERIOD, name=name)
    try:
        yield lease
    finally:
        await lease.close()
        await bus.close()


async def acquired(lease: WriterLease) -> asyncio.Task[None]:
    return asyncio.create_task(lease.acquire(), name=f"acquire-{lease.name}")


async def test_one_candidate_holds_and_a_release_hands_over_at_once(
    server: EmbeddedServer,
) -> None:
    """Of two candidates one holds; the other waits for as long as the holder renews,
    then takes the lease within moments of its release."""
    with structlog.testing.capture_logs() as logs:
        async with candidate(server, "a") as a, candidate(server, "b") as b:
            async with asyncio.timeout(WAIT):
                await a.acquire()
            waiting = await acquired(b)
            done, _ = await asyncio.wait({waiting}, timeout=PERIOD * 4)
            assert not done, "b acquired while a renews"
            assert a.held and not b.held and a.renewals >= 8
            started = time.perf_counter()
            await a.release()
            async with asyncio.timeout(WAIT):
                await waiting
            took = time.perf_counter() - started
            print(f"\nlease handover after release: {took * 1000:.0f} ms")
            assert b.held and not a.held and not a.lost.is_set()
            assert took < PERIOD  # the watch woke it, no poll period needed
    assert not [e for e in logs if e["event"] == "nats_permission_denied"], logs


async def test_a_dead_holder_is_replaced_within_a_bounded_time(server: EmbeddedServer) -> None:
    """The holder's connection closes without a word (as a killed process's does): the
    probe finds no one behind it, and the standby takes over in well under a period."""
    with structlog.testing.capture_logs() as logs:
        async with candidate(server, "a") as a, candidate(server, "b") as b:
            async with asyncio.timeout(WAIT):
                await a.acquire()
            waiting = await acquired(b)
            await a.bus._nc.close()  # no release, no drain: the socket just goes
            started = time.perf_counter()
            async with asyncio.timeout(WAIT):
                await waiting
            took = time.perf_counter() - started
            print(f"\nlease takeover after the holder's connection died: {took * 1000:.0f} ms")
            assert b.held
            assert took < PERIOD * 3
    assert not [e for e in logs if e["event"] == "nats_permission_denied"], logs


async def test_a_holder_whose_lease_was_taken_knows_it_lost(server: EmbeddedServer) -> None:
    """Someone writes the key on the holder's revision: the holder's next renewal is
    refused, it sets ``lost`` and no longer claims to hold; it can acquire again later."""
    async with candidate(server, "a") as a, candidate(server, "b") as b:
        async with asyncio.timeout(WAIT):
            await a.acquire()
        bucket = await LeaseBucket.open(b.bus, replicas=1, timeout=2.0)
        entry = await bucket.get(KEY)
        assert entry is not None
        await bucket.put(KEY, b'{"holder": "thief"}', last=entry.revision)
        async with asyncio.timeout(WAIT):
            await a.lost.wait()
        assert not a.held
        waiting = await acquired(a)  # the thief never renews and answers no probe
        async with asyncio.timeout(WAIT):
            await waiting
        assert a.held and not a.lost.is_set()
        await bucket.close()


async def test_candidates_racing_for_a_free_lease_never_both_hold(
    server: EmbeddedServer,
) -> None:
    """Five candidates start at once: exactly one holds, every time."""
    for _round in range(3):
        async with contextlib.AsyncExitStack() as stack:
            leases = [await stack.enter_async_context(candidate(server, f"c{i}")) for i in range(5)]
            tasks = [await acquired(lease) for lease in leases]
            done, pending = await asyncio.wait(tasks, timeout=WAIT, return_when="FIRST_COMPLETED")
            assert len(done) == 1
            await asyncio.wait(pending, timeout=PERIOD * 2)
            assert sum(lease.held for lease in leases) == 1
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            holder = next(lease for lease in leases if lease.held)
            await holder.release()


@pytest.mark.parametrize("period", [0.05, 61.0])
def test_the_period_is_bounded(period: float) -> None:
    with pytest.raises(ValueError, match="period"):
        WriterLease(None, period=period)  # type: ignore[arg-type]
