"""`cortex audit --db` compares everything that answers a query with a fresh replay."""

from __future__ import annotations

from pathlib import Path

import aiosqlite

from cortex.client import Client
from cortex.nats import EmbeddedServer
from cortex.testing import run_cli, running_node
from cortex.writer import LedgerWriter


async def _node_db(url: str, tmp_path: Path) -> Path:
    db = tmp_path / "node.db"
    async with await Client.connect(url, tenant="lab") as client:
        await client.register_agent("ada")
        for text in ("Water boils at 100 °C", "The Moon is rock", "Light is fast"):
            receipt = await client.store_fact("ada", text)
        async with running_node(url, db) as node:
            assert await node.projector.wait_for(receipt.seq, timeout=10)
    return db


async def test_a_fact_taken_out_of_the_full_text_index_fails_the_audit(
    server: EmbeddedServer, writer: LedgerWriter, tmp_path: Path
) -> None:
    """Before, deleting an FTS row passed the audit while search stopped finding the fact."""
    db = await _node_db(server.url, tmp_path)
    clean = await run_cli("audit", "--nats", server.url, "--db", str(db), "--json")
    assert clean.code == 0, clean.out
    async with aiosqlite.connect(db) as conn:
        await conn.execute(
            "DELETE FROM facts_fts WHERE rowid = (SELECT rowid FROM facts WHERE content LIKE 'The Moon%')"
        )
        await conn.execute("CREATE TRIGGER quiet AFTER INSERT ON votes BEGIN SELECT 1; END")
        await conn.commit()
    run = await run_cli("audit", "--nats", server.url, "--db", str(db), "--json")
    assert run.code == 1
    wheres = [v["where"] for v in run.json()["violations"]]
    assert f"{db}: trigger quiet" in wheres
    assert any(w.startswith(f"{db}: full-text index") for w in wheres), wheres
