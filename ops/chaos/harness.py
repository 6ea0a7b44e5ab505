"""A CORTEX cluster to break on purpose: three real nats-servers on loopback, and beside
each a writer candidate and a node (projector and queries), each its own ``cortex up``
process, under a bounded write load from ``cortex.Client``.

Shared by ``tests/cluster/test_chaos.py``, ``python -m ops.chaos.cluster`` and
``python -m ops.bench.cluster``. Everything it kills, it started: the servers
(``ClusterServers``) and the ``cortex up`` children, by their own process ids.

After a fault, ``ChaosCluster.check`` says whether CORTEX kept its promises:
every acknowledged write is in the ledger exactly once, at its receipt's
sequence; the chain and checkpoints audit clean; every live node's projection
reaches the ledger's end with one and the same digest.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cortex.audit import audit_ledger
from cortex.client import Client, new_id
from cortex.core.keys import writer_key_at
from cortex.errors import CortexError, Unavailable
from cortex.nats import Bus, Credentials, Role
from cortex.nats.cluster import ClusterServers, Ports, stream_cluster
from events.codec import decode_event
from projections.digest import file_digest

#: What ``cortex up`` prints once it serves.
UP_LINE: Final = "CORTEX is up"
#: What a writer candidate logs when it starts serving, and when it stops.
_ACTIVE: Final = "writer_recovered"
_STANDBY: Final = "writer_standing_by"
START_S: Final = 40.0
STOP_S: Final = 15.0
AGENT: Final = "chaos"


class CortexProcess:
    """One ``cortex up`` child: started, stopped (SIGTERM) or killed (SIGKILL) by pid."""

    def __init__(self, name: str, args: list[str], log: Path) -> None:
        self.name = name
        self.args = args
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None
        #: Where this run's lines start in the log (a restart appends to it).
        self._offset = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    async def start(self, *, timeout: float = START_S) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as stderr:
            self._offset = stderr.tell()
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "cortex.cli",
                "up",
                *self.args,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                env={**os.environ, "CORTEX_NATS_URL": "", "CORTEX_CREDS": ""},
            )
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = (await self.proc.stdout.readline()).decode()
                    if UP_LINE in line:
                        break
                    if not line:
                        self._exited()
        except BaseException:
            await self.kill()
            raise
        # Keep reading its stdout so it never blocks on a full pipe.
        self._drain = asyncio.create_task(self._read_rest())

    async def _read_rest(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        while await self.proc.stdout.readline():
            pass

    def _exited(self) -> None:
        raise CortexError(f"{self.name} exited before serving: {self._tail()}")

    def _tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text()[-2000:]
        return ""

    async def kill(self) -> None:
        """SIGKILL: a crash."""
        if self.pid is not None and self.proc is not None:
            os.kill(self.proc.pid, signal.SIGKILL)
        await self._reap()

    async def terminate(self, *, timeout: float = STOP_S) -> None:
        """SIGTERM: a clean stop (SIGKILL if it takes longer than ``timeout``)."""
        if self.pid is not None and self.proc is not None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(timeout):
                    await self.proc.wait()
            except TimeoutError:
                await self.kill()
        await self._reap()

    async def _reap(self) -> None:
        if self.proc is not None:
            await self.proc.wait()
            drain = getattr(self, "_drain", None)
            if drain is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2):
                        await drain

    def serving(self) -> bool:
        """Whether this writer candidate serves now, as its own log says."""
        if self.pid is None:
            return False
        text = self._log_text()
        last_active, last_standby = text.rfind(_ACTIVE), text.rfind(_STANDBY)
        return last_active > last_standby

    def _log_text(self) -> str:
        with contextlib.suppress(OSError), self.log.open("rb") as f:
            f.seek(self._offset)
            return f.read().decode(errors="replace")
        return ""


@dataclass(slots=True)
class Node:
    """What runs beside server ``node``: a writer candidate and a projector, apart."""

    node: int
    writer: CortexProcess
    projector: CortexProcess
    db: Path

    async def start(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self.writer.start())
            group.create_task(self.projector.start())

    async def kill(self) -> None:
        await asyncio.gather(self.writer.kill(), self.projector.kill())

    async def terminate(self) -> None:
        await asyncio.gather(self.writer.terminate(), self.projector.terminate())


@dataclass(slots=True)
class Check:
    """What ``ChaosCluster.check`` found."""

    acked: int
    ledger_events: int
    missing: list[uuid.UUID] = field(default_factory=list)
    doubled: list[uuid.UUID] = field(default_factory=list)
    misplaced: list[uuid.UUID] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    positions: dict[int, int] = field(default_factory=dict)
    digests: dict[int, str] = field(default_factory=dict)
    converged: bool = False

    @property
    def ok(self) -> bool:
        return (
            not self.missing
            and not self.doubled
            and not self.misplaced
            and not self.violations
            and self.converged
        )

    def problems(self) -> str:
        return (
            f"missing {self.missing[:5]} ({len(self.missing)}), doubled {self.doubled[:5]}, "
            f"misplaced {self.misplaced[:5]}, violations {self.violations[:5]}, "
            f"positions {self.positions}, ledger {self.ledger_events}, "
            f"digests {len(set(self.digests.values()))}"
        )


class ChaosCluster:
    """Three (``nodes``) servers, a writer candidate and a projector process beside each."""

    def __init__(self, data: Path, nodes: int = 3, *, checkpoint_every: int = 200) -> None:
        self.data = data.resolve()
        self.servers = ClusterServers(self.data / "cluster", nodes, ports=Ports.free(nodes))
        self.key = self.data / "writer.key"
        self.checkpoint_every = checkpoint_every
        self.nodes: list[Node] = []

    @property
    def urls(self) -> list[str]:
        return self.servers.urls

    def admin(self) -> Credentials:
        return self.servers.admin()

    def _node(self, n: int) -> Node:
        url = self.servers.ports.url(n)
        auth = self.servers.auth
        folder = self.data / f"n{n}"

        def up(name: str, role: Role, *extra: str) -> CortexProcess:
            """``cortex up --role ROLE`` of this node, in its own folder and log."""
            args = ["--nats", url, "--creds", str(auth.path(role)), "--role", role.value]
            return CortexProcess(
                f"{name} n{n}",
                [*args, *extra, "--data", str(folder / role.value)],
                folder / f"{role.value}.log",
            )

        writer = up(
            "writer",
            Role.WRITER,
            "--writer-candidate",
            "--key",
            str(self.key),
            "--checkpoint-every",
            str(self.checkpoint_every),
        )
        projector = up("node", Role.NODE)
        return Node(n, writer, projector, folder / "node" / "projection.db")

    async def start(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        writer_key_at(self.key)  # one key for every candidate: a hand-over adds none
        await self.servers.start()
        bus = await Bus.connect(self.urls[0], name="chaos-setup", creds=self.admin())
        try:
            await bus.ensure_stream(replicas=len(self.servers.members))
        finally:
            await bus.close()
        self.nodes = [self._node(m.node) for m in self.servers.members]
        async with asyncio.TaskGroup() as group:
            for node in self.nodes:
                group.create_task(node.start())
        async with asyncio.timeout(START_S):
            await self.active_writer()
        async with await Client.connect(self.urls, creds=self.admin()) as client:
            command_id = new_id()
            async with asyncio.timeout(START_S):
                while True:
                    try:
                        await client.register_agent(AGENT, id=command_id)
                        break
                    except Unavailable:
                        await asyncio.sleep(0.05)  # a client's retry pause

    async def close(self) -> None:
        for node in self.nodes:  # the writers first: the active one releases its lease
            with contextlib.suppress(Exception):
                await node.writer.terminate()
        for node in self.nodes:
            with contextlib.suppress(Exception):
                await node.projector.terminate()
        await self.servers.close()

    async def __aenter__(self) -> ChaosCluster:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def node(self, n: int) -> Node:
        return self.nodes[n - 1]

    # -- who does what now ---------------------------------------------------

    async def leader(self) -> int:
        """The member that leads CORTEX_LEDGER (bound it with ``asyncio.timeout``)."""
        while True:
            for m in self.servers.members:
                if m.pid is None:
                    continue
                with contextlib.suppress(CortexError):
                    placed = await stream_cluster(
                        self.servers.ports.url(m.node), self.admin(), timeout=2.0
                    )
                    if placed is not None and placed.leader:
                        return next(x.node for x in self.servers.members if x.name == placed.leader)
            await asyncio.sleep(0.1)  # a poll: the server announces no leader to clients

    async def active_writer(self) -> int:
        """The node whose writer candidate serves (bound it with ``asyncio.timeout``)."""
        while True:
            serving = [n.node for n in self.nodes if n.writer.serving()]
            if len(serving) == 1:
                return serving[0]
            await asyncio.sleep(0.05)  # a poll of the candidates' logs

    async def settle(self, timeout: float = 30.0) -> None:
        """Until every running member is a current replica and one writer serves."""
        async with asyncio.timeout(timeout):
            await self.servers.wait_current()
            await self.active_writer()

    # -- faults ----------------------------------------------------------------

    async def kill_server(self, n: int) -> None:
        await self.servers.kill(n)

    async def stop_server(self, n: int) -> None:
        await self.servers.stop(n)

    async def restart_server(self, n: int) -> None:
        await self.servers.restart(n)

    async def kill_node(self, n: int) -> None:
        """kill -9 of the server and both CORTEX processes of node ``n``, all at once."""
        await asyncio.gather(self.servers.kill(n), self.node(n).kill())

    async def stop_node(self, n: int) -> None:
        """A clean stop of node ``n``: its writer and projector (SIGTERM), then its server
        (SIGTERM: it hands its Raft leaderships over)."""
        await self.node(n).terminate()
        await self.servers.stop(n)

    async def restart_node(self, n: int) -> None:
        await self.servers.restart(n)
        await self.node(n).start()

    # -- the promises ------------------------------------------------------------

    async def check(self, acked: dict[uuid.UUID, int], *, timeout: float = 30.0) -> Check:
        """Every acknowledged write once at its seq, a clean audit, and every live node's
        projection at the ledger's end with one digest (waited for, up to ``timeout``)."""
        url = ",".join(self.servers.ports.url(m.node) for m in self.servers.members if m.pid)
        bus = await Bus.connect(url, name="chaos-check", creds=self.admin())
        try:
            # Right after a fault the stream may still be electing a leader: its reads
            # answer 503 (Unavailable) for a few seconds. Read again until it serves.
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        ids = await _ids(bus)
                        report = await audit_ledger(bus)
                        break
                    except Unavailable:
                        await asyncio.sleep(0.2)  # a poll: no event says the election ended
            result = Check(acked=len(acked), ledger_events=sum(map(len, ids.values())))
            result.doubled = [i for i, seqs in ids.items() if len(seqs) > 1]
            for command_id, seq in acked.items():
                seqs = ids.get(command_id)
                if not seqs:
                    result.missing.append(command_id)
                elif seqs != [seq]:
                    result.misplaced.append(command_id)
            result.violations = [str(v) for v in report.violations]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._converge(bus, result)
        finally:
            await bus.close()
        return result

    async def _converge(self, bus: Bus, result: Check) -> None:
        live = [n for n in self.nodes if n.projector.pid is not None]
        while True:
            last = await bus.last_seq()
            for n in live:
                with contextlib.suppress(CortexError):
                    result.positions[n.node], result.digests[n.node] = await file_digest(n.db)
            if (
                all(result.positions.get(n.node) == last for n in live)
                and len({result.digests[n.node] for n in live}) == 1
                and await bus.last_seq() == last
            ):
                result.converged = True
                return
            await asyncio.sleep(0.2)  # a poll: each node's position is in its own file


# -- the load ---------------------------------------------------------------------


@dataclass(slots=True)
class Write:
    sent: float
    acked: float
    seq: int


@dataclass
class Load:
    """Clients storing facts, each command retried with its id until acknowledged; at
    most ``limit`` writes, and none started after ``stop`` is set."""

    client: Client
    limit: int
    acked: dict[uuid.UUID, int] = field(default_factory=dict)
    writes: list[Write] = field(default_factory=list)
    failed: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _count: int = 0

    async def store(self, n: int, *, give_up: float) -> None:
        command_id, fact_id = new_id(), new_id()
        sent = time.monotonic()
        while True:
            try:
                receipt = await self.client.store_fact(
                    AGENT, f"chaos fact {n}", id=command_id, fact_id=fact_id
                )
                break
            except Unavailable:
                if time.monotonic() > give_up:
                    self.failed += 1
                    return
                await asyncio.sleep(0.05)  # a client's retry pause, not synchronisation
        self.acked[command_id] = receipt.seq
        self.writes.append(Write(sent, time.monotonic(), receipt.seq))
        self.progress.set()

    async def worker(self, deadline: float) -> None:
        while not self.stop.is_set() and self._count < self.limit:
            if time.monotonic() > deadline:
                return
            self._count += 1
            await self.store(self._count, give_up=deadline + 30)

    async def ticker(self, deadline: float, interval: float) -> None:
        """A new write every ``interval`` seconds whatever the others wait for: writes
        sent after a fault measure when the cluster accepts writes again, not how long
        a client waits before it resends a command whose reply was lost."""
        ticks: set[asyncio.Task[None]] = set()
        while not self.stop.is_set() and self._count < self.limit:
            if time.monotonic() > deadline:
                break
            self._count += 1
            task = asyncio.create_task(self.store(self._count, give_up=deadline + 30))
            ticks.add(task)
            task.add_done_callback(ticks.discard)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):  # pacing, not synchronisation
                    await self.stop.wait()
        if ticks:
            await asyncio.gather(*ticks)

    async def finish(self, timeout: float = 60.0) -> None:
        """Start no new write; wait for those in flight (bounded)."""
        self.stop.set()
        async with asyncio.timeout(timeout):
            await asyncio.gather(*self.tasks)

    def first_ack_after(self, moment: float) -> float | None:
        """Seconds from ``moment`` to the first receipt of a write sent after it."""
        after = [w.acked for w in self.writes if w.sent >= moment]
        return min(after) - moment if after else None

    def longest_gap(self, start: float, end: float) -> float:
        """The longest time in [start, end] without a receipt."""
        times = sorted(w.acked for w in self.writes if start <= w.acked <= end)
        edges = [start, *times, end]
        return max(b - a for a, b in itertools.pairwise(edges))

    async def acks_after(self, moment: float, count: int, timeout: float = 30.0) -> None:
        """Until ``count`` writes sent after ``moment`` were acknowledged (bounded)."""
        async with asyncio.timeout(timeout):
            while sum(w.sent >= moment for w in self.writes) < count:
                self.progress.clear()
                await self.progress.wait()


@contextlib.asynccontextmanager
async def load(
    urls: list[str],
    creds: Credentials,
    *,
    workers: int = 4,
    limit: int = 100_000,
    seconds: float = 60.0,
    tick: float = 0.05,
) -> AsyncIterator[Load]:
    """``workers`` concurrent writers through one client that knows every server, and a
    new write every ``tick`` seconds beside them; they stop by themselves after
    ``limit`` writes or ``seconds``, or when the block ends."""
    async with await Client.connect(urls, creds=creds, timeout=5.0) as client:
        running = Load(client, limit)
        deadline = time.monotonic() + seconds
        running.tasks = [asyncio.create_task(running.worker(deadline)) for _ in range(workers)]
        running.tasks.append(asyncio.create_task(running.ticker(deadline, tick)))
        try:
            yield running
        finally:
            await running.finish()


# -- one fault, measured -------------------------------------------------------------


@dataclass(slots=True)
class Fault:
    kind: str
    victim: int
    #: Seconds from the fault to the first receipt of a write sent after it.
    failover_s: float | None
    #: The longest time without any receipt, from the fault until writes flowed again.
    gap_s: float
    #: When the fault began and when its measurement ended (monotonic), for the
    #: plain JetStream load measured beside it.
    began: float = 0.0
    ended: float = 0.0
    check: Check | None = None


KINDS: Final = ("leader", "writer", "node", "stop")
#: What each kind of fault does.
KIND_HELP: Final = {
    "leader": "kill -9 of the nats-server that leads CORTEX_LEDGER (restarted after)",
    "writer": "kill -9 of the active writer candidate process (restarted after)",
    "node": "kill -9 of a whole node: its server, writer and projector (restarted after)",
    "stop": "SIGTERM of a whole node: writer, projector, then server (restarted after)",
}


async def victim_of(cluster: ChaosCluster, kind: str, round_: int = 0) -> int:
    """The node a fault of ``kind`` hits: the stream leader's, or the active writer's
    (whole-node faults alternate between the two)."""
    async with asyncio.timeout(30):
        if kind == "leader" or (kind in ("node", "stop") and round_ % 2 == 1):
            return await cluster.leader()
        return await cluster.active_writer()


async def inflict(cluster: ChaosCluster, kind: str, victim: int) -> None:
    """The fault itself: what returns once it is done (the kill, or the clean stop)."""
    if kind == "leader":
        await cluster.kill_server(victim)
    elif kind == "writer":
        await cluster.node(victim).writer.kill()
    elif kind == "node":
        await cluster.kill_node(victim)
    elif kind == "stop":
        await cluster.stop_node(victim)
    else:
        raise ValueError(f"no such fault: {kind}")


async def restore(cluster: ChaosCluster, kind: str, victim: int) -> None:
    """Bring back what ``inflict`` took away, and wait until the cluster is whole."""
    if kind == "leader":
        await cluster.restart_server(victim)
    elif kind == "writer":
        await cluster.node(victim).writer.start()
    else:
        await cluster.restart_node(victim)
    await cluster.settle()


async def fault(
    cluster: ChaosCluster, running: Load, kind: str, round_: int = 0, *, after: int = 30
) -> Fault:
    """One fault of ``kind`` under ``running``'s load, measured, then restored."""
    victim = await victim_of(cluster, kind, round_)
    await running.acks_after(time.monotonic(), 20)
    began = time.monotonic()
    await inflict(cluster, kind, victim)
    await running.acks_after(began, after)
    ended = time.monotonic()
    failover = running.first_ack_after(began)
    gap = running.longest_gap(began, ended)
    await restore(cluster, kind, victim)
    return Fault(kind, victim, failover, gap, began, ended)


async def _ids(bus: Bus) -> dict[uuid.UUID, list[int]]:
    """Each event id in the ledger, with every seq it is stored at."""
    ids: dict[uuid.UUID, list[int]] = {}
    async for stored in bus.read(1):
        ids.setdefault(decode_event(stored.body).id, []).append(stored.seq)
    return ids
