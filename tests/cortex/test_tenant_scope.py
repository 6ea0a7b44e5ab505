"""Nothing leaks across tenants: another tenant's fact ids and event ids are fresh ids here.

Tenant ``lab`` stores a fact; tenant ``rival`` then sends commands carrying the
very same fact id and event id. Before ids were scoped, ``rival`` learnt that
they existed (``fact_exists``, ``id_reused … (seq 3)``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cortex.audit import audit_ledger
from cortex.client import Client, new_id
from cortex.errors import QueryFailed, StateConflict
from cortex.nats import Bus, EmbeddedServer
from cortex.node import ProjectionNode
from cortex.testing import running_node
from cortex.writer import LedgerWriter
from events.proof import check_proof


@pytest.fixture
async def node(
    server: EmbeddedServer, signing_writer: LedgerWriter, tmp_path: Path
) -> AsyncIterator[ProjectionNode]:
    async with running_node(server.url, tmp_path / "node.db") as n:
        yield n


@pytest.fixture
async def lab(server: EmbeddedServer, node: ProjectionNode) -> AsyncIterator[Client]:
    async with await Client.connect(server.url, tenant="lab") as c:
        yield c


@pytest.fixture
async def rival(server: EmbeddedServer, node: ProjectionNode) -> AsyncIterator[Client]:
    async with await Client.connect(server.url, tenant="rival") as c:
        yield c


async def test_another_tenants_fact_id_and_event_id_are_fresh_ids(
    lab: Client, rival: Client, bus: Bus, node: ProjectionNode
) -> None:
    await lab.register_agent("ann")
    fact_id, event_id = new_id(), new_id()
    theirs = await lab.store_fact("ann", "lab's secret", fact_id=fact_id, id=event_id)
    await lab.vote("ann", fact_id, 1)
    before = await lab.history(fact_id, min_seq=theirs.seq + 1)

    await rival.register_agent("eve")
    ours = await rival.store_fact("eve", "rival's fact", fact_id=fact_id, id=event_id)
    assert ours.seq > theirs.seq and ours.hash != theirs.hash and ours.id == event_id
    vote = await rival.vote("eve", fact_id, -1)

    mine = await rival.get_fact(fact_id, min_seq=vote.seq)
    assert mine is not None
    assert (mine["content"], mine["agent_id"], mine["tenant"]) == ("rival's fact", "eve", "rival")
    assert mine["consensus"]["votes_against"] == 1
    assert mine["consensus"]["votes_for"] == 0
    unchanged = await lab.history(fact_id, min_seq=vote.seq)
    assert unchanged == before
    assert unchanged is not None and unchanged["fact"]["content"] == "lab's secret"
    assert [f["content"] for f in await lab.facts()] == ["lab's secret"]
    assert [f["content"] for f in await rival.search("fact secret")] == ["rival's fact"]

    report = await audit_ledger(bus, dbs=[node.db])
    assert report.ok, report.violations


async def test_id_reused_names_only_the_tenants_own_seq(lab: Client, rival: Client) -> None:
    await lab.register_agent("ann")
    await rival.register_agent("eve")
    shared = new_id()
    theirs = await lab.store_fact("ann", "first use", id=shared)
    ours = await rival.register_agent("mallory", id=shared)  # a different command: fine here
    assert ours.seq != theirs.seq
    again = await rival.register_agent("mallory", id=shared)  # a retry: the first receipt
    assert (again.seq, again.hash) == (ours.seq, ours.hash)
    with pytest.raises(StateConflict) as refused:
        await rival.store_fact("eve", "another command, same id", id=shared)
    assert refused.value.code == "id_reused"
    assert f"(seq {ours.seq})" in str(refused.value)
    assert f"seq {theirs.seq}" not in str(refused.value)


async def test_a_fact_id_is_still_unique_within_its_tenant(lab: Client) -> None:
    await lab.register_agent("ann")
    fact_id = new_id()
    await lab.store_fact("ann", "once", fact_id=fact_id)
    with pytest.raises(StateConflict, match="already exists in tenant 'lab'") as refused:
        await lab.store_fact("ann", "twice", fact_id=fact_id)
    assert refused.value.code == "fact_exists"


async def test_a_proof_by_event_id_is_of_the_asking_tenants_event(
    lab: Client, rival: Client, server: EmbeddedServer
) -> None:
    await lab.register_agent("ann")
    await rival.register_agent("eve")
    shared = new_id()
    theirs = await lab.store_fact("ann", "lab's", id=shared)
    ours = await rival.store_fact("eve", "rival's", id=shared)
    cp = await lab.make_checkpoint()
    for client, receipt in ((lab, theirs), (rival, ours)):
        doc = await client.proof(shared, min_seq=cp["seq"])
        assert doc["seq"] == receipt.seq
        assert check_proof(doc, verifier=cp["verifier"]).ok
    async with await Client.connect(server.url, tenant="third") as third:
        with pytest.raises(QueryFailed, match=f"no event {shared}") as unknown:
            await third.proof(shared, min_seq=cp["seq"])
        assert unknown.value.code == "not_found"
