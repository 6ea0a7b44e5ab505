"""The writer keeps exactly one chain: under load, across retries, restarts and rival writers."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cortex.audit import audit_ledger
from cortex.client import Client, Receipt, new_id
from cortex.core.ledger_state import LedgerState, Undo
from cortex.errors import InvalidCommand, StateConflict
from cortex.nats import Bus, EmbeddedServer, command_subject
from cortex.testing import running_writer
from cortex.writer import LedgerWriter
from events.chain import GENESIS, link
from events.codec import decode_event
from projections.testing import LedgerBuilder


async def _start_writer(url: str, **options: Any) -> LedgerWriter:
    w = LedgerWriter(await Bus.connect(url, name="writer"), **options)
    await w.start()
    return w


async def _stop_writer(w: LedgerWriter) -> None:
    await w.stop()
    await w.bus.close()


@pytest.fixture
async def two_writers(server: EmbeddedServer) -> AsyncIterator[tuple[LedgerWriter, LedgerWriter]]:
    a, b = await _start_writer(server.url), await _start_writer(server.url)
    yield a, b
    await _stop_writer(a)
    await _stop_writer(b)


async def test_thousands_of_concurrent_writes_form_one_intact_chain(
    client: Client, bus: Bus
) -> None:
    """3,000 commands at once: every one gets a receipt, seqs are 1..N, the audit finds nothing."""
    await client.register_agent("a")
    receipts = await asyncio.gather(*(client.store_fact("a", f"fact {i}") for i in range(3000)))
    seqs = sorted(r.seq for r in receipts)
    assert seqs == list(range(2, 3002))
    report = await audit_ledger(bus)
    assert report.ok, report.violations[:3]
    assert report.events == 3001
    stored = {e.seq: e.hash.hex() async for e in bus.read(2, 3001)}
    assert all(stored[r.seq] == r.hash for r in receipts)


async def test_a_retried_command_returns_the_first_receipt_and_appends_nothing(
    client: Client, bus: Bus
) -> None:
    await client.register_agent("a")
    command_id, fact_id = new_id(), new_id()
    first = await client.store_fact("a", "once", id=command_id, fact_id=fact_id)
    await client.store_fact("a", "something else")
    before = await bus.last_seq()
    again = await client.store_fact("a", "once", id=command_id, fact_id=fact_id)
    assert (again.seq, again.hash, again.id) == (first.seq, first.hash, first.id)
    assert await bus.last_seq() == before


async def test_the_same_id_twice_in_one_batch_is_appended_once(client: Client, bus: Bus) -> None:
    await client.register_agent("a")
    command_id, fact_id = new_id(), new_id()
    results = await asyncio.gather(
        *(client.store_fact("a", "dup", id=command_id, fact_id=fact_id) for _ in range(5))
    )
    assert len({(r.seq, r.hash) for r in results}) == 1
    assert await bus.last_seq() == 2


async def test_an_id_reused_for_another_command_is_refused(client: Client, bus: Bus) -> None:
    await client.register_agent("a")
    receipt = await client.store_fact("a", "x")
    assert receipt.fact_id is not None
    with pytest.raises(StateConflict, match="already used") as info:
        await client.vote("a", receipt.fact_id, 1, id=receipt.id)
    assert info.value.code == "id_reused"


async def test_a_restarted_writer_recovers_the_head_and_continues_the_chain(
    server: EmbeddedServer, bus: Bus
) -> None:
    w = await _start_writer(server.url)
    async with await Client.connect(server.url, tenant="t") as c:
        await c.register_agent("a")
        last = await c.store_fact("a", "before restart")
    await _stop_writer(w)

    w2 = await _start_writer(server.url)
    assert w2.state.seq == last.seq
    assert w2.state.head.hex() == last.hash
    async with await Client.connect(server.url, tenant="t") as c:
        after = await c.store_fact("a", "after restart")  # agent known: state was recovered
        with pytest.raises(StateConflict, match="already registered"):
            await c.register_agent("a")
    await _stop_writer(w2)
    assert after.seq == last.seq + 1
    assert (await bus.get(after.seq)).prev_hash.hex() == last.hash
    assert (await audit_ledger(bus)).ok


async def test_two_writers_never_fork_the_chain(
    server: EmbeddedServer, two_writers: tuple[LedgerWriter, LedgerWriter], bus: Bus
) -> None:
    """Two writers serve the same queue group under load: one chain, every receipt true."""
    clients = [await Client.connect(server.url, tenant="t", max_batch=20) for _ in range(4)]
    try:
        await clients[0].register_agent("a")
        jobs = [c.store_fact("a", f"{n}-{i}") for n, c in enumerate(clients) for i in range(400)]
        receipts: list[Receipt] = await asyncio.gather(*jobs)
    finally:
        for c in clients:
            await c.close()
    a, b = two_writers
    assert a.appended > 0 and b.appended > 0, "both writers should have appended"
    assert a.conflicts + b.conflicts > 0, "the writers should have raced for the same seq"
    assert sorted(r.seq for r in receipts) == list(range(2, 1602))
    report = await audit_ledger(bus)
    assert report.ok, report.violations[:3]
    stored = {e.seq: e.hash.hex() async for e in bus.read(1)}
    assert all(stored[r.seq] == r.hash for r in receipts)


async def test_a_retry_through_the_other_writer_is_still_deduplicated(
    server: EmbeddedServer, bus: Bus
) -> None:
    """Writer B never saw A's append, yet recognises the retried id after catching up."""
    a = await _start_writer(server.url)
    async with await Client.connect(server.url, tenant="t") as c:
        await c.register_agent("a")
        command_id, fact_id = new_id(), new_id()
        first = await c.store_fact("a", "x", id=command_id, fact_id=fact_id)
        b = await _start_writer(server.url)
        b_seq_at_start = b.state.seq
        await _stop_writer(a)  # from now on only B serves
        await c.store_fact("a", "y")  # B appends after A's events
        again = await c.store_fact("a", "x", id=command_id, fact_id=fact_id)
        vote = await c.vote("a", fact_id, 1)  # B knows the fact A stored
    await _stop_writer(b)
    assert b_seq_at_start == first.seq
    assert (again.seq, again.hash) == (first.seq, first.hash)
    assert vote.seq == first.seq + 2
    assert (await audit_ledger(bus)).ok


async def test_a_writer_that_is_behind_catches_up_before_refusing(
    server: EmbeddedServer, two_writers: tuple[LedgerWriter, LedgerWriter], bus: Bus
) -> None:
    """A fact stored through one writer can be voted on through the other at once."""
    async with await Client.connect(server.url, tenant="t") as c:
        await c.register_agent("a")
        for _ in range(20):  # the queue group spreads these over both writers
            r = await c.store_fact("a", "fresh")
            assert r.fact_id is not None
            await c.vote("a", r.fact_id, 1)
    assert (await audit_ledger(bus)).ok


async def test_the_same_id_with_different_content_is_refused_not_acknowledged(
    client: Client, bus: Bus
) -> None:
    """A reused id never gets a receipt for something the ledger does not hold."""
    await client.register_agent("a")
    fact = await client.store_fact("a", "x")
    assert fact.fact_id is not None
    vote_id = new_id()
    up = await client.vote("a", fact.fact_id, 1, id=vote_id)
    before = await bus.last_seq()
    with pytest.raises(StateConflict, match="different command") as info:
        await client.vote("a", fact.fact_id, -1, id=vote_id)
    assert info.value.code == "id_reused"
    same = await client.vote("a", fact.fact_id, 1, id=vote_id)
    assert (same.seq, same.hash) == (up.seq, up.hash)
    assert await bus.last_seq() == before


async def test_a_command_that_cannot_be_recorded_does_not_jam_the_writer(
    client: Client, bus: Bus
) -> None:
    """A world time outside what UTC can hold is refused; the batch around it still lands."""
    await client.register_agent("a")
    far_past = dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5)))
    results = await asyncio.gather(
        client.store_fact("a", "fine"),
        client.store_fact("a", "too early", valid_from=far_past),
        client.store_fact("a", "also fine"),
        return_exceptions=True,
    )
    assert isinstance(results[0], Receipt)
    assert isinstance(results[1], InvalidCommand)
    assert results[1].code == "invalid_field"
    assert isinstance(results[2], Receipt)
    assert await bus.last_seq() == 3
    later = await client.store_fact("a", "the writer still works")
    assert later.seq == 4
    assert (await audit_ledger(bus)).ok


def test_a_refused_batch_leaves_the_state_and_its_merkle_tree_as_they_were() -> None:
    """What the writer folds in for a batch JetStream refuses is rolled back in
    full: head, ids, agents and the tree its next checkpoint is computed from."""
    state = LedgerState()
    ledger = LedgerBuilder()
    ledger.agent("ann")
    ledger.agent("bob")
    ledger.agent("cy")
    head = GENESIS
    hashes = []
    for _seq, body in ledger.records:
        head = link(head, body)
        hashes.append(head)
    state.apply(decode_event(ledger.records[0][1]), 1, hashes[0])
    before = (state.seq, state.head, state.tree.root(), dict(state.agents), dict(state.ids))
    undo: Undo = []
    state.begin(undo)
    for (seq, body), h in zip(ledger.records[1:], hashes[1:], strict=True):
        state.apply(decode_event(body), seq, h, undo)
    assert state.tree.size == 3
    LedgerState.rollback(undo)
    assert (state.seq, state.head, state.tree.root(), dict(state.agents), dict(state.ids)) == before


async def test_an_edit_stores_the_successor_and_deprecates_in_one_append(
    client: Client, bus: Bus
) -> None:
    await client.register_agent("a")
    old = await client.store_fact("a", "Pluto is a planet")
    assert old.fact_id is not None
    new = await client.edit_fact("a", old.fact_id, "Pluto is a dwarf planet", reason="IAU 2006")
    assert new.fact_id is not None
    stored, deprecated = [decode_event(s.body) async for s in bus.read(new.seq, new.seq + 1)]
    assert getattr(stored, "content", "") == "Pluto is a dwarf planet"
    assert getattr(deprecated, "successor_id", None) == new.fact_id
    assert getattr(deprecated, "fact_id", None) == old.fact_id
    # Editing it again is refused whole: no orphan successor is stored.
    before = await bus.last_seq()
    with pytest.raises(StateConflict) as again:
        await client.edit_fact("a", old.fact_id, "Pluto is a planet again")
    assert again.value.code == "already_deprecated"
    assert await bus.last_seq() == before


async def test_atomic_groups_are_never_split_under_load_and_retries_append_nothing(
    server: EmbeddedServer, bus: Bus
) -> None:
    """Edits mixed with ordinary writes through a writer of 3-event batches: each edit's
    two events still sit side by side, and resending an atomic request returns the first
    receipts and appends nothing."""
    async with (
        running_writer(server.url, max_batch=3),
        await Client.connect(server.url, tenant="acme") as client,
    ):
        await client.register_agent("a")
        facts = [await client.store_fact("a", f"fact {i}") for i in range(20)]
        edits = [
            client.edit_fact("a", f.fact_id, f"fact {i}, revised")
            for i, f in enumerate(facts)
            if f.fact_id
        ]
        noise = [client.vote("a", f.fact_id, 1) for f in facts if f.fact_id]
        results = await asyncio.gather(*edits, *noise)
        ledger = {s.seq: decode_event(s.body) async for s in bus.read(1)}
        for receipt in results[: len(edits)]:
            follower = ledger[receipt.seq + 1]
            assert getattr(follower, "successor_id", None) == receipt.fact_id
        commands = [
            {"kind": "register_agent", "id": str(new_id()), "agent_id": "b"},
            {"kind": "register_agent", "id": str(new_id()), "agent_id": "c"},
        ]
        payload = json.dumps(commands).encode()
        first = json.loads(await bus.request(command_subject("acme", "atomic"), payload))
        before = await bus.last_seq()
        second = json.loads(await bus.request(command_subject("acme", "atomic"), payload))
    assert first == second and [r["seq"] for r in first] == [before - 1, before]
    assert await bus.last_seq() == before


async def test_an_atomic_request_larger_than_a_batch_still_lands_whole_or_not_at_all(
    server: EmbeddedServer, bus: Bus
) -> None:
    """A writer of 1-event batches must not split a group: the refused second command takes
    the first one down with it."""
    async with running_writer(server.url, max_batch=1):
        before = await bus.last_seq()
        commands = [
            {"kind": "register_agent", "id": str(new_id()), "agent_id": "b"},
            {"kind": "register_agent", "id": str(new_id()), "agent_id": "b"},
        ]
        replies = json.loads(
            await bus.request(command_subject("acme", "atomic"), json.dumps(commands).encode())
        )
        assert [r["error"]["code"] for r in replies] == ["aborted", "agent_exists"]
        assert await bus.last_seq() == before


async def test_a_writer_carries_on_past_events_it_cannot_read(
    server: EmbeddedServer, bus: Bus, forge: Any
) -> None:
    """An undecodable event published around the writer, correctly chained: the running writer
    keeps appending after it (it used to answer `internal` to everything), a restarted writer
    starts (it used to fail with a ValidationError), and neither lets a forged event take over
    another tenant's fact."""
    async with (
        running_writer(server.url) as live,
        await Client.connect(server.url, tenant="acme") as client,
    ):
        await client.register_agent("a")
        owned = await client.store_fact("a", "acme's own")
        assert owned.fact_id is not None

        async def forged(subject: str, body: bytes) -> None:
            last = await bus.get(await bus.last_seq())
            await forge(
                subject,
                body,
                {"Cortex-Prev": last.hash.hex(), "Cortex-Hash": link(last.hash, body).hex()},
            )

        await forged("cortex.ledger.acme.fact_stored", b'{"kind": "fact_stored", "broken": ')
        hijack = {
            "kind": "fact_stored",
            "id": str(new_id()),
            "tenant": "rival",
            "ts": 1,
            "fact_id": str(owned.fact_id),
            "agent_id": "r",
            "content": "mine now",
        }
        await forged("cortex.ledger.rival.fact_stored", json.dumps(hijack).encode())
        after = await client.vote("a", owned.fact_id, 1)  # still acme's fact, still accepted
        assert after.seq == await bus.last_seq()
        assert live.internal_errors == 0
    async with (
        running_writer(server.url),
        await Client.connect(server.url, tenant="acme") as client,
    ):
        again = await client.vote("a", owned.fact_id, -1)
        assert again.seq == after.seq + 1
