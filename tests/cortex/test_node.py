"""A node's read side over real NATS and real SQLite: live, exact, isolated, rebuildable."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite
import pytest
from conftest import AsAdmin, Forge

from cortex.client import Client
from cortex.errors import QueryFailed
from cortex.nats import Bus, Durability, EmbeddedServer, Outgoing, ledger_subject
from cortex.node import ProjectionNode
from cortex.testing import eventually, running_node, spawn_cli
from cortex.writer import LedgerWriter
from events.chain import GENESIS, link
from events.codec import decode_event
from events.errors import LedgerMismatch
from events.model import kind_of
from events.operations import GetFact
from projections import queries
from projections.digest import digest
from projections.pool import ConnectionPool
from projections.replay import replay
from projections.testing import LedgerBuilder


@pytest.fixture
async def node(
    server: EmbeddedServer, writer: LedgerWriter, tmp_path: Path
) -> AsyncIterator[ProjectionNode]:
    async with running_node(server.url, tmp_path / "node1.db") as n:
        yield n


async def _append(bus: Bus, builder: LedgerBuilder) -> int:
    """Put a built ledger on the stream as the writer would (atomic batches, chained)."""
    await bus.ensure_stream()
    head, seq = GENESIS, 0
    for start in range(0, len(builder.records), 1000):
        out = []
        for _, body in builder.records[start : start + 1000]:
            event = decode_event(body)
            h = link(head, body)
            out.append(
                Outgoing(ledger_subject(event.tenant, kind_of(event)), body, str(event.id), head, h)
            )
            head = h
        seq = await bus.append(out, expected_last_seq=seq)
    return seq


async def test_a_read_with_min_seq_sees_the_write_it_follows(
    client: Client, node: ProjectionNode
) -> None:
    """Read-your-writes: the receipt's seq makes the node wait until it has applied it."""
    await client.register_agent("a")
    receipt = await client.store_fact("a", "fresh off the press")
    assert receipt.fact_id is not None
    fact = await client.get_fact(receipt.fact_id, min_seq=receipt.seq)
    assert fact is not None
    assert fact["content"] == "fresh off the press"
    vote = await client.vote("a", receipt.fact_id, 1)
    consensus = await client.consensus(receipt.fact_id, min_seq=vote.seq)
    assert consensus is not None
    assert consensus["votes_for"] == 1


async def test_min_seq_beyond_the_ledger_times_out_clearly(
    client: Client, node: ProjectionNode
) -> None:
    await client.register_agent("a")
    with pytest.raises(
        QueryFailed, match=r"applied the ledger up to seq 1; min_seq 99 was not reached"
    ) as info:
        await client.query("agents", min_seq=99, wait=0.3)
    assert info.value.code == "timeout"
    assert node.projector.seq == 1  # the node is fine and still serving
    assert [a["agent_id"] for a in await client.agents()] == ["a"]


async def test_a_read_as_of_a_seq_the_node_has_not_reached_waits_for_it(
    client: Client, node: ProjectionNode
) -> None:
    """ "As of N" past this node's position would be answered as of now, and differ from
    another node's answer: it waits for N like min_seq, then says it was not reached."""
    await client.register_agent("a")
    fact = await client.store_fact("a", "Pluto is a planet")
    assert fact.fact_id is not None
    with pytest.raises(QueryFailed, match="as_of_seq 1000000 was not reached") as info:
        await client.ask(GetFact(fact_id=fact.fact_id, as_of_seq=10**6, timeout=0.3))
    assert info.value.code == "timeout"
    then = await client.ask(GetFact(fact_id=fact.fact_id, as_of_seq=fact.seq, timeout=5))
    assert then is not None and then.content == "Pluto is a planet"


async def test_bad_queries_get_error_replies_and_the_node_keeps_serving(
    client: Client, node: ProjectionNode, bus: Bus
) -> None:
    registered = await client.register_agent("a")
    with pytest.raises(QueryFailed) as unknown:
        await client.query("drop_tables")
    assert unknown.value.code == "unknown_op"
    with pytest.raises(QueryFailed) as bad_param:
        await client.query("agents", surprise=1)
    assert bad_param.value.code == "invalid_query"
    with pytest.raises(QueryFailed) as bad_id:
        await client.get_fact("not-a-uuid")
    assert bad_id.value.code == "invalid_query"
    raw = json.loads(await bus.request("cortex.query.acme.search", b"{oops"))
    assert raw["error"]["code"] == "malformed"
    with pytest.raises(QueryFailed, match="no words"):
        await client.search("  !!  ")
    assert [a["agent_id"] for a in await client.agents(min_seq=registered.seq)] == ["a"]


async def test_queries_never_cross_tenants(
    server: EmbeddedServer, client: Client, node: ProjectionNode
) -> None:
    await client.register_agent("a")
    secret = await client.store_fact("a", "acme launch codes")
    assert secret.fact_id is not None
    await client.get_fact(secret.fact_id, min_seq=secret.seq)
    async with await Client.connect(server.url, tenant="rival") as rival:
        assert await rival.get_fact(secret.fact_id) is None
        assert await rival.consensus(secret.fact_id) is None
        assert await rival.history(secret.fact_id) is None
        assert await rival.search("launch codes") == []
        assert await rival.facts() == []
        assert await rival.agents() == []


async def test_the_cache_serves_hot_reads_and_forgets_what_changes(
    client: Client, node: ProjectionNode
) -> None:
    """A vote invalidates the cached fact: the next read shows the new consensus, not the old."""
    await client.register_agent("a")
    await client.register_agent("b")
    stored = await client.store_fact("a", "cached")
    assert stored.fact_id is not None
    first = await client.get_fact(stored.fact_id, min_seq=stored.seq)
    again = await client.get_fact(stored.fact_id)
    assert first == again
    assert node.cache.stats().hits >= 1
    vote = await client.vote("b", stored.fact_id, -1)
    after = await client.get_fact(stored.fact_id, min_seq=vote.seq)
    assert after is not None
    assert after["consensus"]["votes_against"] == 1
    assert node.cache.stats().invalidations >= 1


async def test_two_nodes_and_a_replay_hold_identical_rows(
    server: EmbeddedServer, client: Client, node: ProjectionNode, tmp_path: Path
) -> None:
    """Determinism across nodes: equal positions, equal digests, bit for bit."""
    bus2 = await Bus.connect(server.url)
    second = ProjectionNode(bus2, tmp_path / "node2.db")
    await second.start()
    try:
        for agent in ("a", "b", "c"):
            await client.register_agent(agent)
        facts = [await client.store_fact("abc"[i % 3], f"fact number {i}") for i in range(30)]
        votes = [
            client.vote(agent, f.fact_id, 1 if (i + j) % 4 else -1)  # type: ignore[arg-type]
            for i, f in enumerate(facts)
            for j, agent in enumerate("abc")
        ]
        last = max(r.seq for r in await asyncio.gather(*votes))
        assert await node.projector.wait_for(last, timeout=10)
        assert await second.projector.wait_for(last, timeout=10)
        rebuilt = await replay(bus2, tmp_path / "replayed.db")
        assert await digest(node.pool) == await digest(second.pool) == rebuilt.digest
        assert rebuilt.seq == last
    finally:
        await second.stop()
        await bus2.close()


async def test_replay_until_gives_the_state_as_of_that_seq(
    client: Client, node: ProjectionNode, tmp_path: Path
) -> None:
    await client.register_agent("a")
    f = await client.store_fact("a", "to be revised")
    assert f.fact_id is not None
    await client.deprecate_fact("a", f.fact_id, reason="revised")
    then = await replay(node.bus, tmp_path / "then.db", until=f.seq)
    assert then.seq == f.seq
    async with ConnectionPool(tmp_path / "then.db", readers=1) as pool:
        fact = await queries.get_fact(pool, "acme", f.fact_id)
    assert fact is not None
    assert fact.deprecated is None


async def test_a_database_from_another_ledger_is_refused(tmp_path: Path, as_admin: AsAdmin) -> None:
    """The stored position's hash must be this ledger's: otherwise say so and how to rebuild."""
    one, other = LedgerBuilder(), LedgerBuilder()
    one.agent("a")
    one.fact("a", "ledger one")
    other.agent("b")
    other.fact("b", "ledger two")
    as_admin(tmp_path / "s1")
    async with EmbeddedServer(tmp_path / "s1", port=-1, durability=Durability.FAST) as s1:
        bus = await Bus.connect(s1.url)
        await _append(bus, one)
        n = ProjectionNode(bus, tmp_path / "node.db")
        await n.start()
        assert await n.projector.wait_for(2, timeout=10)
        await n.stop()
        await bus.close()
    as_admin(tmp_path / "s2")
    async with EmbeddedServer(tmp_path / "s2", port=-1, durability=Durability.FAST) as s2:
        bus = await Bus.connect(s2.url)
        await _append(bus, other)
        n = ProjectionNode(bus, tmp_path / "node.db")
        with pytest.raises(
            LedgerMismatch, match="another ledger or was altered; rebuild it with `cortex replay"
        ):
            await n.start()
        await bus.close()


async def _committed(db: Path) -> int | None:
    """The database's position once it has committed a batch, else None."""
    return await _position(db) or None


async def _position(db: Path) -> int:
    if not db.exists():  # noqa: ASYNC240 - one stat of a local file
        return 0
    try:
        async with (
            aiosqlite.connect(f"file:{db}?mode=ro", uri=True) as conn,
            conn.execute("SELECT seq FROM position") as cur,
        ):
            row = await cur.fetchone()
    except aiosqlite.Error:
        return 0
    return 0 if row is None else int(row[0])


async def test_killing_a_node_mid_replay_neither_repeats_nor_skips(
    tmp_path: Path, as_admin: AsAdmin
) -> None:
    """SIGKILL `cortex up` while it projects; the restarted node ends with exactly a fresh replay's rows."""
    builder = LedgerBuilder()
    for i in range(20):
        builder.agent(f"agent{i}")
    facts = [builder.fact(f"agent{i % 20}", f"fact {i} about things") for i in range(4000)]
    for i in range(36_000):
        builder.vote(f"agent{i % 20}", facts[(i * 7) % 4000], 1 if i % 3 else -1)
    as_admin(tmp_path / "srv")
    async with EmbeddedServer(tmp_path / "srv", port=-1, durability=Durability.FAST) as srv:
        bus = await Bus.connect(srv.url)
        total = await _append(bus, builder)
        data = tmp_path / "node"
        db = data / "projection.db"
        proc = await spawn_cli(
            "up",
            "--nats",
            srv.url,
            "--data",
            str(data),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, "CORTEX_NATS_URL": ""},
        )
        try:
            # The node takes no query before it has caught up, so its database
            # says when its first batch is committed, with most still to come.
            first = await eventually(lambda: _committed(db), timeout=60, every=0.01)
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        killed_at = await _position(db)
        assert 0 < first <= killed_at < total, (
            f"the kill should land mid-replay (at {killed_at}/{total})"
        )

        total = await bus.last_seq()  # the writer of `cortex up` added its key
        node = ProjectionNode(bus, db)
        await node.start()
        try:
            # It resumed where the kill left it, and caught up before it took queries.
            assert node.projector.seq == total
            assert node.projector.applied == total - killed_at
            fresh = await replay(bus, tmp_path / "fresh.db")
            assert await digest(node.pool) == fresh.digest
        finally:
            await node.stop()
            await bus.close()


async def test_a_forged_event_on_the_stream_is_never_projected(
    client: Client, node: ProjectionNode, bus: Bus, forge: Forge, tmp_path: Path
) -> None:
    """An event appended around the writer, not linked into the chain, stops the projection there."""
    await client.register_agent("a")
    first = await bus.get(1)
    await forge(
        first.subject,
        first.body,
        {"Cortex-Prev": first.prev_hash.hex(), "Cortex-Hash": first.hash.hex()},
    )
    assert not await node.projector.wait_for(2, timeout=0.5)
    assert node.projector.seq == 1
    with pytest.raises(LedgerMismatch, match="seq 2 does not follow the chain"):
        await replay(bus, tmp_path / "r.db")


async def test_a_slow_query_does_not_hold_up_the_others(
    client: Client, node: ProjectionNode
) -> None:
    """One read waiting for a far-off min_seq; another read is answered meanwhile."""
    registered = await client.register_agent("a")
    waiting = asyncio.ensure_future(client.query("agents", min_seq=10**9, wait=2))
    async with asyncio.timeout(1):
        agents = await client.agents(min_seq=registered.seq)
    assert [a["agent_id"] for a in agents] == ["a"]
    assert not waiting.done()
    waiting.cancel()


async def test_fact_ids_in_any_spelling_share_one_cache_entry(
    client: Client, node: ProjectionNode
) -> None:
    """An upper-case id must not keep serving a consensus the projector already replaced."""
    await client.register_agent("a")
    stored = await client.store_fact("a", "spelled")
    assert stored.fact_id is not None
    upper = str(stored.fact_id).upper()
    assert await client.get_fact(upper, min_seq=stored.seq) is not None
    vote = await client.vote("a", stored.fact_id, 1)
    fact = await client.get_fact(upper, min_seq=vote.seq)
    assert fact is not None
    assert fact["consensus"]["votes_for"] == 1


async def test_a_node_stopped_right_after_its_start_stops(bus: Bus, tmp_path: Path) -> None:
    """A stop that meets the follower's first request used to hang for ever, or leave
    the follower running (a cancellation lost inside nats-py on Python 3.11)."""
    ledger = LedgerBuilder()
    ledger.agent("a")
    ledger.fact("a", "x")
    await _append(bus, ledger)
    for round_ in range(30):
        node = ProjectionNode(bus, tmp_path / f"node-{round_}.db")
        await node.start()
        assert await node.projector.wait_for(2, timeout=10)
        stopping = asyncio.create_task(node.stop())
        done, _ = await asyncio.wait({stopping}, timeout=10)
        assert done == {stopping}, f"round {round_}: the stop did not end"
        await stopping
        left = {t.get_name() for t in asyncio.all_tasks()} & {"cortex-projector", "projector-pump"}
        assert left == set(), f"round {round_}: the stop left {left} running"
