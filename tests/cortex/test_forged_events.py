"""Events no writer could have appended, forged onto the ledger as an insider could.

Each is published straight onto its ledger subject with the admin's credentials,
linked correctly after the real head (the chain has no secret), so hashes, links
and checkpoints all hold. Only re-judging each event by the writer's own rules
tells: ``cortex audit`` names each ``invalid_event`` with the refusal's code, and
the projector's quarantine agrees with it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiosqlite
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cortex.client import Client, new_id
from cortex.core.keys import public_hex
from cortex.nats import HDR_HASH, HDR_PREV, Bus, EmbeddedServer, ledger_subject
from cortex.node import ProjectionNode
from cortex.testing import run_cli
from cortex.writer import LedgerWriter
from events.chain import link
from events.codec import encode
from events.commands import CastVote, Command, DeprecateFact, RegisterAgent, StoreFact, to_event
from events.limits import MAX_TAGS
from events.model import SYSTEM_TENANT, Event, FactStored, kind_of

#: The ``forge`` fixture of tests/conftest.py.
Forge = Callable[[str, bytes, dict[str, str]], Awaitable[object]]
T = "acme"
WAIT = 10.0


async def _publish(bus: Bus, forge: Forge, event: Event) -> int:
    """``event`` appended around the writer, chained after the real head; its seq."""
    last = await bus.last_seq()
    head = (await bus.get(last)).hash
    body = encode(event)
    headers = {HDR_PREV: head.hex(), HDR_HASH: link(head, body).hex()}
    await forge(ledger_subject(event.tenant, kind_of(event)), body, headers)
    assert await bus.last_seq() == last + 1
    return last + 1


def _as(command: Command, tenant: str = T) -> Event:
    return to_event(command, tenant=tenant, ts=1)


async def test_forged_events_are_re_judged_and_named_by_the_writers_rule(
    server: EmbeddedServer, writer: LedgerWriter, bus: Bus, forge: Forge, tmp_path: Path
) -> None:
    """Fifteen kinds of event the writer refuses, each an ``invalid_event`` at its seq
    whose detail opens with the rule's code; the vote of 7 is quarantined by a node
    (which the audit also names) and leaves its fact unverified."""
    kay = Ed25519PrivateKey.generate()
    async with await Client.connect(server.url, tenant=T) as client:
        await client.register_agent("ann")
        await client.register_agent("bob")
        await client.register_agent("kay", public_key=public_hex(kay))
        fact = (await client.store_fact("ann", "Basalt is an igneous rock.")).fact_id
        sevens = (await client.store_fact("ann", "Obsidian is volcanic glass.")).fact_id
        assert fact is not None and sevens is not None
    async with await Client.connect(server.url, tenant="rival") as client:
        await client.register_agent("rex")
        theirs = (await client.store_fact("rex", "Granite is intrusive.")).fact_id
        assert theirs is not None
    await asyncio.wait_for(writer.stop(), WAIT)  # the forger appends; no writer races it
    clean = await bus.last_seq()

    fresh = new_id()
    forged: list[tuple[Event, str]] = [
        (_as(CastVote(id=new_id(), fact_id=fact, agent_id="eve", value=1)), "unknown_agent"),
        (_as(CastVote(id=new_id(), fact_id=sevens, agent_id="bob", value=7)), "invalid_vote"),
        (_as(CastVote(id=new_id(), fact_id=theirs, agent_id="bob", value=1)), "unknown_fact"),
        (
            _as(StoreFact(id=new_id(), fact_id=fresh, agent_id="ann", content="x" * 900_000)),
            "too_large",
        ),
        (
            _as(StoreFact(id=new_id(), fact_id=fact, agent_id="bob", content="Mine now.")),
            "fact_exists",
        ),
        (_as(RegisterAgent(id=new_id(), agent_id="eve"), SYSTEM_TENANT), "reserved_tenant"),
        (_as(DeprecateFact(id=new_id(), fact_id=fact, agent_id="bob")), "reason_required"),
        # Refused, yet folded as the writer's catch-up folds it: the first deprecation holds.
        (_as(DeprecateFact(id=new_id(), fact_id=fact, agent_id="ann")), "already_deprecated"),
        (
            to_event(
                StoreFact(id=new_id(), fact_id=uuid.uuid4(), agent_id="ann", content="Late."),
                tenant=T,
                ts=2**63,
            ),
            "invalid_field",
        ),
        (_as(DeprecateFact(id=new_id(), fact_id=uuid.uuid4(), agent_id="ann")), "unknown_fact"),
        (
            _as(DeprecateFact(id=new_id(), fact_id=fresh, agent_id="ann", successor_id=theirs)),
            "unknown_fact",
        ),
        (_as(RegisterAgent(id=new_id(), agent_id="ann")), "agent_exists"),
        (
            FactStored(
                id=new_id(),
                tenant=T,
                ts=1,
                fact_id=uuid.uuid4(),
                agent_id="ann",
                content="Too many tags.",
                tags=tuple(f"t{i}" for i in range(MAX_TAGS + 1)),
            ),
            "invalid_field",
        ),
        (
            FactStored(
                id=new_id(),
                tenant=T,
                ts=1,
                fact_id=uuid.uuid4(),
                agent_id="ann",
                content="Sure.",
                confidence=2.0,
            ),
            "invalid_field",
        ),
    ]
    seqs = [await _publish(bus, forge, event) for event, _ in forged]
    # kay has a key: its unsigned vote is named once, by the signature check, with the rule.
    unsigned = await _publish(
        bus, forge, _as(CastVote(id=new_id(), fact_id=fact, agent_id="kay", value=1))
    )
    assert seqs == list(range(clean + 1, clean + 1 + len(forged)))

    db = tmp_path / "node.db"
    node = ProjectionNode(bus, db)
    await node.start()
    try:
        assert await node.projector.wait_for(unsigned, timeout=WAIT)
    finally:
        await node.stop()

    run = await run_cli("audit", "--nats", server.url, "--db", str(db), "--json")
    assert run.code == 1
    report = run.json()
    invalid = [
        (v["seq"], v["detail"].split(":")[0])
        for v in report["violations"]
        if v["type"] == "invalid_event"
    ]
    assert invalid == [(seq, code) for seq, (_, code) in zip(seqs, forged, strict=True)]
    signatures = [v for v in report["violations"] if v["type"] == "agent_signature"]
    assert [(v["seq"], "signature_required" in v["detail"]) for v in signatures] == [
        (unsigned, True)
    ]
    assert report["checkpoints"] == 0  # this writer has no key: every event is an agent's
    assert report["rejudged"] == unsigned
    # Whatever the node set aside, the audit named as an invalid event too.
    quarantined = {v["seq"] for v in report["violations"] if v["type"] == "quarantined_event"}
    assert len(quarantined) == 8 and quarantined <= {seq for seq, _ in invalid}

    async with aiosqlite.connect(db) as conn:
        query = (
            "SELECT c.status FROM consensus c JOIN facts f ON f.rowid = c.fact_row"
            " WHERE f.fact_id = ?"
        )
        async with conn.execute(query, (str(sevens),)) as cur:
            row = await cur.fetchone()
    assert row is None or row[0] != "verified"
