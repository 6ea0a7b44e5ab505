"""Checkpoints by time as well as count, on clean stops, and receipts that carry them."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cortex.client import Client, new_id
from cortex.core.keys import public_hex, writer_key
from cortex.errors import CommandRejected
from cortex.nats import Bus, EmbeddedServer
from cortex.testing import running_node, running_writer
from cortex.writer import LedgerWriter
from events.codec import decode_event
from events.commands import StoreFact
from events.model import CheckpointSigned
from events.note import parse_checkpoint, verify
from events.signing import command_bytes, sign_command


async def _checkpoints(bus: Bus) -> list[tuple[int, CheckpointSigned]]:
    found = []
    async for stored in bus.read(1):
        event = decode_event(stored.body)
        if isinstance(event, CheckpointSigned):
            found.append((stored.seq, event))
    return found


async def test_a_checkpoint_covers_a_few_events_within_the_interval_without_the_count(
    server: EmbeddedServer, bus: Bus, tmp_path: Path
) -> None:
    """Three events, far below the count of 1,000: the writer still signs a checkpoint
    covering them, and the receipt waits for it (no sleep: the reply is the signal)."""
    key = writer_key(server.data_dir)
    async with (
        running_writer(server.url, key=key, checkpoint_interval=0.2) as writer,
        running_node(server.url, tmp_path / "node.db"),
        await Client.connect(server.url, tenant="acme") as client,
    ):
        await client.register_agent("ann")
        receipt = await client.store_fact("ann", "quiet ledgers get checkpoints too")
        assert receipt.checkpoint is None
        covered = await client.wait_checkpoint(receipt, timeout=5)
        cp = covered.checkpoint
        assert cp is not None and cp.tree_size >= receipt.seq
        assert writer.state.checkpoint_size >= receipt.seq
        body = verify(cp.note, key.name, bytes.fromhex(key.public_hex))
        assert parse_checkpoint(body).root.hex() == cp.root
        assert receipt.fact_id is not None
        also = await client.vote("ann", receipt.fact_id, 1, wait_checkpoint=True)
        assert also.checkpoint is not None and also.checkpoint.tree_size >= also.seq
    found = await _checkpoints(bus)
    assert found and found[0][1].tree_size >= receipt.seq


async def test_a_clean_stop_leaves_the_tail_covered(server: EmbeddedServer, bus: Bus) -> None:
    """An interval far longer than the test: only the stop can have signed the checkpoint."""
    async with (
        running_writer(
            server.url, key=writer_key(server.data_dir), checkpoint_interval=3600
        ) as writer,
        await Client.connect(server.url, tenant="acme") as client,
    ):
        await client.register_agent("ann")
        last = await client.store_fact("ann", "the last word")
        assert writer.state.checkpoint_seq == 0
    found = await _checkpoints(bus)
    assert len(found) == 1
    seq, checkpoint = found[0]
    assert checkpoint.tree_size == last.seq == seq - 1


async def test_a_signature_made_for_another_ledgers_origin_is_refused(
    server: EmbeddedServer, writer: LedgerWriter
) -> None:
    """Agents sign the ledger's origin into their commands: the same signed command made
    for another deployment is ``bad_signature`` here, one made for this ledger passes."""
    key = Ed25519PrivateKey.generate()
    async with await Client.connect(server.url, tenant="acme") as client:
        await client.register_agent("ann", public_key=public_hex(key))
        origin = await client.origin()
        assert origin == writer.state.first_hash and len(origin) == 32
        command = StoreFact(id=new_id(), fact_id=new_id(), agent_id="ann", content="mine")
        elsewhere = sign_command(command, "acme", key, origin=bytes(32))
        with pytest.raises(CommandRejected) as refused:
            await client.submit(elsewhere)
        assert refused.value.code == "bad_signature"
        here = sign_command(command, "acme", key, origin=origin)
        assert command_bytes(command, "acme", origin).startswith(b"cortex.command.v2\0" + origin)
        stored = await client.submit(here)
        # The client signs for this ledger by itself.
        also = await client.store_fact("ann", "signed by the client", key=key)
        assert also.seq == stored.seq + 1
