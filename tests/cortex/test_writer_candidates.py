"""Writer candidates on one real nats-server (issue 12, item 3): exactly one appends; when
it dies or stops another takes over and continues the same chain; one whose lease was
taken stops appending; every acknowledged command is in the ledger exactly once.

Each candidate runs on its own connection as the writer user. The load is a few
clients that send each command again with the same id until they get a receipt,
as a client riding through a failover does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cortex.client import Client, Receipt, new_id
from cortex.core.keys import writer_key_at
from cortex.errors import Unavailable
from cortex.lease import KEY
from cortex.nats import Bus, EmbeddedServer, LocalAuth, Role
from cortex.nats.lease_bucket import LeaseBucket
from cortex.runtime import Runtime
from cortex.testing import eventually, run_cli, spawn_cli
from cortex.writer import LedgerWriter
from events.codec import decode_event

WAIT = 20.0
PERIOD = 0.5


@dataclasses.dataclass
class Load:
    """Clients storing facts, each retried with the same id until acknowledged."""

    client: Client
    acked: dict[uuid.UUID, Receipt] = dataclasses.field(default_factory=dict)
    #: monotonic time each receipt arrived, in order.
    times: list[float] = dataclasses.field(default_factory=list)
    retries: int = 0
    tasks: list[asyncio.Task[None]] = dataclasses.field(default_factory=list)
    stop: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    progress: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    async def store(self, n: int) -> None:
        command_id, fact_id = new_id(), new_id()

        async def attempt() -> Receipt:
            try:
                return await self.client.store_fact(
                    "ada", f"fact {n}", id=command_id, fact_id=fact_id
                )
            except Unavailable:
                self.retries += 1
                raise

        receipt = await eventually(attempt, timeout=WAIT)
        self.acked[command_id] = receipt
        self.times.append(time.monotonic())
        self.progress.set()

    async def worker(self, first: int) -> None:
        n = first
        while not self.stop.is_set():
            await self.store(n)
            n += 1000

    async def finish(self) -> None:
        """Stop sending new commands; wait for those in flight (bounded)."""
        self.stop.set()
        async with asyncio.timeout(WAIT):
            await asyncio.gather(*self.tasks)

    def first_ack_after(self, moment: float) -> float:
        return next(t for t in self.times if t > moment) - moment

    async def acks_after(self, moment: float, count: int) -> None:
        """Until ``count`` receipts arrived after ``moment`` (bounded)."""
        async with asyncio.timeout(WAIT):
            while sum(t > moment for t in self.times) < count:
                self.progress.clear()
                await self.progress.wait()


@contextlib.asynccontextmanager
async def load(url: str, workers: int = 4) -> AsyncIterator[Load]:
    async with await Client.connect(url, tenant="acme", timeout=2.0) as client:
        await _register(client)
        running = Load(client)
        running.tasks = [asyncio.create_task(running.worker(i)) for i in range(workers)]
        try:
            yield running
        finally:
            await running.finish()


async def _register(client: Client) -> None:
    command_id = new_id()
    await eventually(lambda: client.register_agent("ada", id=command_id), timeout=WAIT)


@contextlib.asynccontextmanager
async def candidate(server: EmbeddedServer, name: str, key: Path) -> AsyncIterator[LedgerWriter]:
    async with Runtime(server.url, name=name, creds=server.credentials(Role.WRITER)) as rt:
        yield await rt.add_writer(
            candidate=True, lease_period=PERIOD, key=writer_key_at(key), checkpoint_every=50
        )


async def first_active(*writers: LedgerWriter) -> LedgerWriter:
    waits = {asyncio.create_task(w.active.wait()): w for w in writers}
    done, pending = await asyncio.wait(waits, timeout=WAIT, return_when="FIRST_COMPLETED")
    for task in pending:
        task.cancel()
    assert done, "no candidate became active"
    return waits[done.pop()]


@contextlib.asynccontextmanager
async def active_and_standby(
    server: EmbeddedServer, key: Path
) -> AsyncIterator[tuple[LedgerWriter, LedgerWriter]]:
    """Two candidates, w1 and w2: the one that became active first, and the other."""
    async with candidate(server, "w1", key) as w1, candidate(server, "w2", key) as w2:
        active = await first_active(w1, w2)
        yield active, w2 if active is w1 else w1


async def check_ledger(server: EmbeddedServer, acked: dict[uuid.UUID, Receipt]) -> None:
    """Every acknowledged command is in the ledger once, at its receipt's seq; the audit holds."""
    bus = await Bus.connect(server.url, creds=server.credentials(Role.ADMIN))
    try:
        ids: dict[uuid.UUID, list[int]] = {}
        async for stored in bus.read(1):
            ids.setdefault(decode_event(stored.body).id, []).append(stored.seq)
    finally:
        await bus.close()
    for command_id, receipt in acked.items():
        assert ids.get(command_id) == [receipt.seq], (command_id, receipt)
    assert all(len(seqs) == 1 for seqs in ids.values())
    audit = await run_cli("audit", "--nats", server.url, "--json")
    assert audit.code == 0, audit.out + audit.err
    assert audit.json()["ok"] is True


async def test_exactly_one_candidate_appends(server: EmbeddedServer, tmp_path: Path) -> None:
    """Two candidates: one serves and appends everything; the other holds no command
    subscription and appends nothing."""
    key = tmp_path / "writer.key"
    async with active_and_standby(server, key) as (active, standby):
        async with load(server.url) as running:
            await running.acks_after(0, 60)
        assert standby.appended == 0 and not standby.active.is_set()
        assert standby.activations == 0 and standby._sub is None
        assert active.appended >= 61
    await check_ledger(server, running.acked)


async def test_a_graceful_stop_hands_over_at_once(server: EmbeddedServer, tmp_path: Path) -> None:
    """The active writer stops cleanly under load: it drains, signs its final checkpoint
    and releases the lease; the standby serves within moments, on the same chain."""
    key = tmp_path / "writer.key"
    first = Runtime(server.url, name="w1", creds=server.credentials(Role.WRITER))
    try:
        w1 = await first.add_writer(
            candidate=True, lease_period=PERIOD, key=writer_key_at(key), checkpoint_every=50
        )
        async with asyncio.timeout(WAIT):
            await w1.active.wait()
    except BaseException:
        await first.close()
        raise
    async with candidate(server, "w2", key) as w2:
        async with load(server.url) as running:
            try:
                await running.acks_after(0, 30)
                assert w1.active.is_set() and not w2.active.is_set()
                stopped = time.monotonic()
            finally:
                await first.close()
            async with asyncio.timeout(WAIT):
                await w2.active.wait()
            handover = time.monotonic() - stopped
            await running.acks_after(stopped, 30)
            first_ack = running.first_ack_after(stopped)
        print(
            f"\ngraceful stop: standby active after {handover * 1000:.0f} ms, first ack "
            f"{first_ack * 1000:.0f} ms after the stop began ({running.retries} retries)"
        )
        assert handover < 10 and first_ack < 10
    await check_ledger(server, running.acked)


async def test_a_stolen_lease_stops_the_writer_at_once(
    server: EmbeddedServer, tmp_path: Path
) -> None:
    """Someone writes the lease key under the active writer: it stops appending (nothing
    more from it, ``_commit`` refuses with unavailable), leaves the queue group; the
    standby takes over; no fork, every receipt once."""
    key = tmp_path / "writer.key"
    async with active_and_standby(server, key) as (active, standby):
        async with load(server.url) as running:
            await running.acks_after(0, 20)
            bucket = await LeaseBucket.open(standby.bus, replicas=1, timeout=2.0)
            entry = await bucket.get(KEY)
            assert entry is not None
            await bucket.put(KEY, b'{"holder": "thief"}', last=entry.revision)
            stolen = time.monotonic()
            assert active.lease is not None
            async with asyncio.timeout(WAIT):
                await active.lease.lost.wait()
                if (committer := active._committer) is not None:  # an append in flight lands
                    await asyncio.wait({committer})
            appended = active.appended
            with pytest.raises(Unavailable, match="no longer holds"):
                await active._commit([])
            async with asyncio.timeout(WAIT):
                await standby.active.wait()
            await running.acks_after(stolen, 30)
            await bucket.close()
        assert active.appended == appended and not active.active.is_set()
        assert active._sub is None and standby.appended > 0
        print(f"\nstolen lease: first ack {running.first_ack_after(stolen) * 1000:.0f} ms after")
    await check_ledger(server, running.acked)


@contextlib.asynccontextmanager
async def candidate_process(
    server: EmbeddedServer, data: Path, key: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``cortex up --role writer --writer-candidate`` against the test's server."""
    creds = LocalAuth(server.data_dir).path(Role.WRITER)
    log = data.parent / f"{data.name}.log"
    with log.open("wb") as stderr:
        proc = await spawn_cli(
            "up",
            "--nats",
            server.url,
            "--creds",
            str(creds),
            "--role",
            "writer",
            "--writer-candidate",
            "--data",
            str(data),
            "--key",
            str(key),
            "--checkpoint-every",
            "50",
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env={**os.environ, "CORTEX_NATS_URL": ""},
        )
        try:
            assert proc.stdout is not None
            async with asyncio.timeout(WAIT):
                line = (await proc.stdout.readline()).decode()
            assert re.search(r"CORTEX is up: serving", line), (line, log.read_text())
            yield proc
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_a_killed_writer_is_replaced_on_the_same_chain(
    server: EmbeddedServer, tmp_path: Path
) -> None:
    """kill -9 of a `cortex up --writer-candidate` process that serves under load: the
    standby takes over within a bounded time, continues the same chain (the audit
    holds), and every acknowledged command is in the ledger exactly once."""
    key = tmp_path / "writer.key"
    writer_key_at(key)  # one key for every candidate
    async with candidate_process(server, tmp_path / "w1", key) as proc:
        async with load(server.url) as running:
            await running.acks_after(0, 40)  # the process serves: nobody else could
            async with candidate(server, "w2", key) as w2:
                await running.acks_after(time.monotonic(), 20)
                assert not w2.active.is_set() and w2.appended == 0
                killed = time.monotonic()
                os.kill(proc.pid, signal.SIGKILL)
                async with asyncio.timeout(WAIT):
                    await w2.active.wait()
                takeover = time.monotonic() - killed
                await running.acks_after(killed, 40)
                first_ack = running.first_ack_after(killed)
                await running.finish()  # while a writer still serves
        assert await proc.wait() == -signal.SIGKILL
    print(
        f"\nkill -9 of the active writer: standby active after {takeover * 1000:.0f} ms, "
        f"first ack {first_ack * 1000:.0f} ms after the kill ({running.retries} retries)"
    )
    assert takeover < 10 and first_ack < 10
    await check_ledger(server, running.acked)
