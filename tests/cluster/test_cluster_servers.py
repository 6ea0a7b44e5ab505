"""Three real nats-servers on loopback: one R3 ledger, a CORTEX node beside each server,
the same users everywhere, and routes nobody joins without the route password."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cortex.client import Client
from cortex.core.keys import writer_key
from cortex.errors import Forbidden, Unavailable
from cortex.nats import Bus, Credentials, EmbeddedServer, Inbound, Role
from cortex.nats.cluster import ClusterServers, Ports, admits, stream_cluster
from cortex.runtime import Runtime
from projections.digest import digest


@pytest.fixture
async def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ClusterServers]:
    """Three nats-servers on free loopback ports forming one JetStream cluster, ready
    for an R3 stream; stopped after. No ``CORTEX_CREDS``: each connection says who it is."""
    monkeypatch.delenv("CORTEX_CREDS", raising=False)
    async with ClusterServers(tmp_path / "cluster", 3, ports=Ports.free(3)) as servers:
        yield servers


@contextlib.asynccontextmanager
async def r3_writer(cluster: ClusterServers, tmp_path: Path) -> AsyncIterator[None]:
    """While it runs: a writer on n1's server, its ledger stream replicated on all three."""
    async with Runtime(
        cluster.urls[0], name="n1", creds=cluster.auth.credentials(Role.WRITER)
    ) as w:
        await w.add_writer(key=writer_key(tmp_path), replicas=3)
        yield


async def test_an_r3_ledger_reaches_every_node(cluster: ClusterServers, tmp_path: Path) -> None:
    """A write acknowledged through one server is in every node's projection, with the
    same digest, and the stream has a leader and two followers."""
    admin = cluster.admin()
    async with r3_writer(cluster, tmp_path):
        placed = await stream_cluster(cluster.urls[2], admin)
        assert placed is not None
        assert placed.leader in {m.name for m in cluster.members}
        assert sorted(r.name for r in placed.replicas or []) == sorted(
            m.name for m in cluster.members if m.name != placed.leader
        )
        node_creds = cluster.auth.credentials(Role.NODE)
        runtimes = [
            Runtime(url, name=f"n{i}", creds=node_creds) for i, url in enumerate(cluster.urls, 1)
        ]
        nodes = []
        for i, rt in enumerate(runtimes, 1):
            await rt.__aenter__()
            nodes.append(await rt.add_node(tmp_path / f"n{i}.db"))
        try:
            async with await Client.connect(cluster.urls[1], creds=admin) as client:
                await client.register_agent("alice")
                receipt = await client.store_fact("alice", "Raft needs a majority.")
            for node in nodes:
                assert await node.projector.wait_for(receipt.seq, timeout=10)
            digests = {await digest(node.pool) for node in nodes}
            assert len(digests) == 1
        finally:
            for rt in reversed(runtimes):
                await rt.close()


async def test_no_server_admits_a_connection_without_credentials(
    cluster: ClusterServers,
) -> None:
    for url in cluster.urls:
        assert not await admits(url)  # anonymous
        assert not await admits(url, Credentials.generate(Role.ADMIN))  # an unknown key
        assert await admits(url, cluster.admin())


async def test_a_refused_identity_is_told_so_by_a_cluster_not_retried_for_ever(
    cluster: ClusterServers,
) -> None:
    """Each refusal's INFO lists the other members, which nats-py would try for ever:
    ``Bus.connect`` stops at the first refusal and says why."""
    for creds in (None, Credentials.generate(Role.ADMIN)):
        async with asyncio.timeout(15):
            with pytest.raises(Forbidden) as refused:
                await Bus.connect(",".join(cluster.urls), creds=creds, timeout=2)
        assert refused.value.code == "not_authorized"


async def test_a_new_agent_gets_in_on_every_server(cluster: ClusterServers) -> None:
    """One auth folder for all: ``reload`` signals every member, each admits the agent."""
    agent = cluster.auth.add_agent("lab")
    for member in cluster.members:
        member.reloaded.clear()
    assert cluster.auth.reload()
    async with asyncio.timeout(10):
        for member in cluster.members:
            await member.reloaded.wait()
    for url in cluster.urls:
        assert await admits(url, agent)


class Intruder(EmbeddedServer):
    """A nats-server that knows the cluster's route ports but not its route password."""

    def __init__(self, data: Path, route_ports: tuple[int, ...]) -> None:
        super().__init__(data, port=-1)
        self.route_ports = route_ports
        self.refused = asyncio.Event()

    def _write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        routes = ", ".join(f'"nats-route://route:guess@127.0.0.1:{p}"' for p in self.route_ports)
        path = self.data_dir / "intruder.conf"
        path.write_text(
            "server_name: intruder\n"
            'listen: "127.0.0.1:-1"\n'
            'jetstream { store_dir: "store" }\n'
            "cluster {\n"
            "  name: cortex\n"
            '  listen: "127.0.0.1:-1"\n'
            '  authorization { user: route, password: "guess" }\n'
            f"  routes: [ {routes} ]\n"
            "}\n"
        )
        return path

    def _saw(self, line: str) -> None:
        if "Authorization Violation" in line:
            self.refused.set()


async def test_a_server_without_the_route_password_never_joins(
    cluster: ClusterServers, tmp_path: Path
) -> None:
    """The members refuse its routes: nothing published on it reaches the cluster."""

    async def answer(msg: Inbound) -> None:
        await msg.respond(b"inside")

    inside = await Bus.connect(cluster.urls[0], name="inside", creds=cluster.admin())
    serving = await inside.serve("probe.inside", answer)
    intruder = Intruder(tmp_path / "intruder", cluster.ports.route)
    try:
        # Interest crosses the real routes: a member's client reaches the service.
        member = await Bus.connect(cluster.urls[2], name="member", creds=cluster.admin())
        assert await member.request("probe.inside", b"") == b"inside"
        await member.close()
        await intruder.start()
        async with asyncio.timeout(15):
            await intruder.refused.wait()
        outside = await Bus.connect(intruder.url, name="outside")  # its own, open server
        with pytest.raises(Unavailable):
            await outside.request("probe.inside", b"", timeout=2)
        await outside.close()
    finally:
        await intruder.stop()
        await serving.close()
        await inside.close()


async def test_a_killed_member_restarts_and_catches_up(
    cluster: ClusterServers, tmp_path: Path
) -> None:
    """kill -9 of a follower, a write meanwhile, restart: it is a current replica again."""
    admin = cluster.admin()
    async with r3_writer(cluster, tmp_path):
        placed = await stream_cluster(cluster.urls[0], admin)
        assert placed is not None
        # A follower, and not the server the writer is connected to.
        victim = next(m for m in cluster.members if m.name != placed.leader and m.node != 1)
        before = victim.pid
        await cluster.kill(victim.node)
        assert victim.pid is None
        async with await Client.connect(cluster.urls[0], creds=admin) as client:
            receipt = await client.register_agent("bob")
        await cluster.restart(victim.node)
        assert victim.pid not in (None, before)
        async with asyncio.timeout(20):
            placed = await cluster.wait_current()
        assert victim.name in {r.name for r in placed.replicas or [] if r.current}
        assert receipt.seq >= 1
