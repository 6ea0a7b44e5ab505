"""Agents' receipts as evidence: saved with their checkpoint, held against the ledger later."""

from __future__ import annotations

import json
from pathlib import Path

from cortex.client import Client
from cortex.core.keys import writer_key
from cortex.nats import EmbeddedServer
from cortex.testing import run_cli as cortex
from cortex.testing import running_node, running_writer

MARKER = "The receipt holder remembers this fact."


def _cut_at_marker(data_dir: Path) -> None:
    """Play someone holding the data folder with the server stopped: damage the record
    holding MARKER and drop the cached stream state, so the server rebuilds the stream
    from the blocks and ends just before that record (the tail is cut)."""
    needle = MARKER.encode()
    hits = [
        p for p in (data_dir / "store" / "jetstream").rglob("*.blk") if needle in p.read_bytes()
    ]
    assert len(hits) == 1, hits
    block = hits[0]
    block.write_bytes(block.read_bytes().replace(needle, needle.replace(b"this", b"thys")))
    (block.parent / "index.db").unlink()


async def test_a_saved_receipt_verifies_until_the_tail_holding_its_event_is_cut(
    server: EmbeddedServer, tmp_path: Path
) -> None:
    key = writer_key(tmp_path / "keys")
    url = ("--nats", server.url, "--tenant", "acme")
    saved = tmp_path / "receipt.json"
    async with (
        running_writer(server.url, key=key, checkpoint_interval=0.2),
        running_node(server.url, tmp_path / "node.db"),
    ):
        async with await Client.connect(server.url, tenant="acme") as client:
            await client.register_agent("ann")
            await client.store_fact("ann", "an earlier fact")
        added = await cortex(
            "fact", "add", MARKER, "--agent", "ann", "--receipt-out", str(saved), *url
        )
        assert added.code == 0, added.err
        doc = json.loads(saved.read_text())
        assert doc["checkpoint"]["tree_size"] >= doc["seq"] and "—" in doc["checkpoint"]["note"]
        good = await cortex("verify-receipt", str(saved), *url)
        assert good.code == 0 and "VALID" in good.out, good.out + good.err
    await server.stop()

    _cut_at_marker(server.data_dir)

    async with (
        EmbeddedServer(server.data_dir, port=-1) as restarted,
        running_writer(restarted.url, key=key),
        running_node(restarted.url, tmp_path / "fresh.db"),  # the old database is gone too
    ):
        async with await Client.connect(restarted.url, tenant="acme") as client:
            cp = await client.make_checkpoint()
            assert cp["tree_size"] < doc["seq"]  # the ledger now ends before the event
        again = ("--nats", restarted.url, "--tenant", "acme")
        lost = await cortex("verify-receipt", str(saved), *again)
        assert lost.code == 1, lost.out + lost.err
        assert "missing_acknowledged_event" in lost.out
        named = await cortex("verify-receipt", str(saved), "--json", *again)
        assert named.json()["code"] == "missing_acknowledged_event"
