"""Signed checkpoints and proofs over a real writer, a real node and real files."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cortex.audit import audit_ledger
from cortex.client import Client
from cortex.core.keys import writer_key
from cortex.errors import QueryFailed
from cortex.nats import Bus, EmbeddedServer
from cortex.node import ProjectionNode
from cortex.testing import run_cli as cortex
from cortex.testing import running_node, running_writer
from cortex.writer import LedgerWriter
from events.codec import decode_event
from events.merkle import MerkleAccumulator, leaf_hash
from events.model import CheckpointSigned, FactStored, WriterKeyAdded
from events.note import parse_checkpoint, verify
from events.proof import check_proof


@pytest.fixture
async def node(
    server: EmbeddedServer, signing_writer: LedgerWriter, tmp_path: Path
) -> AsyncIterator[ProjectionNode]:
    async with running_node(server.url, tmp_path / "node.db") as n:
        yield n


async def _story(client: Client, votes: int) -> int:
    """Two agents, a fact, ``votes`` votes; the last receipt's seq."""
    await client.register_agent("ann")
    await client.register_agent("bob")
    fact = await client.store_fact("ann", "the sky is blue")
    assert fact.fact_id is not None
    seq = fact.seq
    for n in range(votes):
        seq = (await client.vote("bob" if n % 2 else "ann", fact.fact_id, 1 - 2 * (n % 2))).seq
    return seq


async def test_the_writer_records_its_key_and_signs_a_checkpoint_every_n_events(
    server: EmbeddedServer, signing_writer: LedgerWriter, bus: Bus
) -> None:
    async with await Client.connect(server.url, tenant="acme") as client:
        await _story(client, 40)
    events = [(s.seq, s.hash, decode_event(s.body)) async for s in bus.read(1)]
    assert isinstance(events[0][2], WriterKeyAdded)
    key = signing_writer.key
    assert key is not None and events[0][2].public_key == key.public_hex
    tree = MerkleAccumulator()
    checkpoints = 0
    for seq, event_hash, event in events:
        if isinstance(event, CheckpointSigned):
            checkpoints += 1
            # It covers exactly the events before it, and its note is a valid
            # C2SP checkpoint signed by the recorded key.
            assert event.tree_size == seq - 1 == tree.size
            assert event.root == tree.root().hex()
            body = verify(event.note, key.name, bytes.fromhex(key.public_hex))
            assert parse_checkpoint(body).root.hex() == event.root
        tree.append(leaf_hash(event_hash))
    assert checkpoints >= 4  # 40+ events, one checkpoint per 10


async def test_a_writer_restart_keeps_its_key_and_does_not_record_it_twice(
    server: EmbeddedServer, bus: Bus
) -> None:
    for _ in range(2):
        async with running_writer(server.url, key=writer_key(server.data_dir)):
            pass
    kinds = [type(decode_event(s.body)) async for s in bus.read(1)]
    # The first clean stop covered the key event with a checkpoint; the second found
    # nothing uncovered.
    assert kinds == [WriterKeyAdded, CheckpointSigned]
    assert (server.data_dir / "writer.key").stat().st_mode & 0o777 == 0o600


async def test_inclusion_and_consistency_proofs_verify_offline_and_catch_edits(
    server: EmbeddedServer, node: ProjectionNode, tmp_path: Path
) -> None:
    async with await Client.connect(server.url, tenant="acme") as client:
        last = await _story(client, 600)  # several tiles of 256 leaves
        cp = await client.make_checkpoint()
        assert cp["tree_size"] == last
        for seq in (2, 257, 300, last):  # inside, at and across tile edges
            doc = await client.proof(seq)
            assert check_proof(doc, verifier=cp["verifier"]).ok, seq
        first = await client.checkpoint(10)
        consistency = await client.consistency_proof(10, last)
        assert check_proof(consistency, verifier=first["verifier"]).ok
        # Another tenant cannot get a proof of acme's event.
        async with await Client.connect(server.url, tenant="rival") as rival:
            with pytest.raises(QueryFailed) as e:
                await rival.proof(last)
            assert e.value.code == "not_found"
    # A proof of an edited event, or with a forged root, does not verify.
    edited = {**doc, "body": doc["body"].replace('"reason":""', '"reason":"edited"')}
    assert edited["body"] != doc["body"]
    assert not check_proof(edited, verifier=cp["verifier"]).ok
    other = writer_key(tmp_path / "other")
    assert not check_proof(doc, verifier=other.verifier).ok


async def test_cli_checkpoint_proof_and_offline_verify(
    server: EmbeddedServer, node: ProjectionNode, tmp_path: Path
) -> None:
    async with await Client.connect(server.url, tenant="acme") as client:
        seq = await _story(client, 3)
    url = ("--nats", server.url, "--tenant", "acme")
    made = await cortex("checkpoint", "--json", *url)
    assert made.code == 0, made.err
    cp = made.json()
    proof_file = tmp_path / "proof.json"
    proved = await cortex("proof", str(seq), "--out", str(proof_file), *url)
    assert proved.code == 0, proved.err
    # verify-proof needs no server at all.
    good = await cortex("verify-proof", str(proof_file), "--key", cp["verifier"])
    assert good.code == 0 and "VALID" in good.out, good.out + good.err
    doc = json.loads(proof_file.read_text())
    doc["path"][-1] = "00" * 32
    proof_file.write_text(json.dumps(doc))
    bad = await cortex("verify-proof", str(proof_file), "--key", cp["verifier"])
    assert bad.code == 1 and "INVALID" in bad.out


async def test_a_consistency_proof_across_two_writers_keys(
    server: EmbeddedServer, tmp_path: Path
) -> None:
    """After a fail-over the next checkpoint is signed by another writer's key: the
    proof names both, and pinning both (not just one) verifies it."""
    node_bus = await Bus.connect(server.url, name="node")
    node = ProjectionNode(node_bus, tmp_path / "node.db")
    sizes, verifiers = [], []
    try:
        for name in ("one", "two"):
            async with running_writer(server.url, key=writer_key(tmp_path / name)):
                if name == "one":
                    await node.start()  # once the first writer has made the stream
                async with await Client.connect(server.url, tenant="acme") as client:
                    await client.register_agent(name)
                    cp = await client.make_checkpoint()
            sizes.append(cp["tree_size"])
            verifiers.append(cp["verifier"])
        async with await Client.connect(server.url, tenant="acme") as client:
            doc = await client.consistency_proof(sizes[0], sizes[1])
    finally:
        await node.stop()
        await node_bus.close()
    assert verifiers[0] != verifiers[1]
    assert check_proof(doc).ok  # each note against the key the document names for it
    assert check_proof(doc, verifier=verifiers).ok
    assert not check_proof(doc, verifier=verifiers[1]).ok


async def test_a_writer_under_full_batches_still_checkpoints(
    server: EmbeddedServer, bus: Bus, tmp_path: Path
) -> None:
    """Thousands of commands queued at once fill every batch; one message of each is
    kept for the checkpoint, so one still comes in the first batch that reaches
    ``checkpoint_every`` events: never more than a batch (1,000) late."""
    async with (
        running_writer(server.url, key=writer_key(tmp_path / "w"), checkpoint_every=100),
        await Client.connect(server.url, tenant="acme") as client,
    ):
        await asyncio.gather(*(client.register_agent(f"a{n}") for n in range(4000)))
    events = [(s.seq, decode_event(s.body)) async for s in bus.read(1)]
    sizes = [0] + [e.tree_size for _, e in events if isinstance(e, CheckpointSigned)]
    assert len(sizes) > 4
    gaps = [b - a for a, b in itertools.pairwise(sizes)] + [len(events) - sizes[-1]]
    assert max(gaps) <= 100 + 1000


async def test_a_signed_fact_with_an_odd_local_offset_is_accepted(
    server: EmbeddedServer, signing_writer: LedgerWriter, bus: Bus
) -> None:
    """A zone offset with seconds (Amsterdam before 1937: +00:19:32) does not survive
    the wire; the client sends world times in UTC, so the signature still holds."""
    key = Ed25519PrivateKey.generate()
    zone = dt.timezone(dt.timedelta(minutes=19, seconds=32))
    async with await Client.connect(server.url, tenant="acme") as client:
        await client.register_agent("ann", public_key=key)
        when = dt.datetime(1930, 5, 1, 12, 0, tzinfo=zone)
        receipt = await client.store_fact("ann", "tulips", valid_from=when)
    event = decode_event((await bus.get(receipt.seq)).body)
    assert isinstance(event, FactStored) and event.valid_from == when


async def test_auditing_a_node_database_while_it_projects_is_clean(
    server: EmbeddedServer, node: ProjectionNode, bus: Bus
) -> None:
    """The database's position and tables are read in one snapshot, so writes landing
    during the audit are never mistaken for tampering."""
    async with await Client.connect(server.url, tenant="acme") as client:
        await _story(client, 5)

        async def keep_writing() -> None:
            for n in range(300):
                await client.register_agent(f"w{n}")

        writing = asyncio.create_task(keep_writing())
        reports = []
        while not writing.done():
            reports.append(await audit_ledger(bus, dbs=[node.db]))
        await writing
    assert reports and all(r.ok for r in reports), [r.violations for r in reports]
