"""Remembered heads, played by an attacker who holds the data folder (server stopped).

A cut tail or a restored copy is an internally perfect, shorter ledger: the
audit's own checks pass. The auditor's trust store (``cortex.trust``), kept
outside the folder, remembers the latest checkpoint it verified, so the next
audit names the rollback; a ledger whose history differs from the one it
verified is a fork.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from rollback import LATE, TENANT, rolled_back, write_facts

from cortex.audit import AuditReport, audit_ledger
from cortex.client import Client
from cortex.errors import Forked, RolledBack
from cortex.nats import Bus, EmbeddedServer
from cortex.testing import running_node
from cortex.trust import Head, TrustStore, default_path
from cortex.writer import LedgerWriter

WAIT = 30.0


async def _audit(url: str, trust: TrustStore) -> AuditReport:
    bus = await Bus.connect(url, name="audit-test")
    try:
        return await asyncio.wait_for(audit_ledger(bus, trust=trust), WAIT)
    finally:
        await bus.close()


def _found(report: AuditReport) -> list[str]:
    return [v.type for v in report.violations]


async def test_the_first_audit_remembers_the_latest_checkpoint_and_says_so(
    server: EmbeddedServer, signing_writer: LedgerWriter, config_home: Path
) -> None:
    """Trust on first use is explicit: the report names the origin, size and root,
    and the store (in the user's config folder) holds them after."""
    await write_facts(server.url, "one", "two")
    store = TrustStore.load()
    assert store.path == default_path() == config_home / "cortex" / "trust.json"
    report = await _audit(server.url, store)
    assert report.ok, report.violations
    assert report.trust.startswith(f"first audit of origin {report.origin}: remembering")
    head = TrustStore.load().get(report.origin)
    assert head is not None and head.tree_size == report.latest_checkpoint
    assert (store.path.stat().st_mode & 0o777) == 0o600
    assert (await _audit(server.url, TrustStore.load())).trust.startswith(
        f"checkpoint {head.tree_size} of origin {report.origin} extends"
    )


async def test_a_restored_older_copy_of_the_data_folder_is_a_rollback(
    server: EmbeddedServer, signing_writer: LedgerWriter, tmp_path: Path
) -> None:
    """Snapshot rollback: copy the folder, write one more fact, audit (remembered),
    then put the old copy back. ``cortex up`` would start; the audit says rollback."""
    trust = tmp_path / "trust.json"
    await write_facts(server.url, "one", "two")
    remembered: Head | None = None

    async def remember(url: str) -> None:
        nonlocal remembered
        report = await _audit(url, TrustStore.load(trust))
        assert report.ok, report.violations
        remembered = TrustStore.load(trust).get(report.origin)

    async with rolled_back(server, signing_writer, tmp_path / "snapshot", remember) as url:
        report = await _audit(url, TrustStore.load(trust))
    assert remembered is not None
    assert _found(report) == ["rollback"]
    assert f"fewer than the remembered checkpoint of {remembered.tree_size}" in (
        report.violations[0].detail
    )
    assert TrustStore.load(trust).get(report.origin) == remembered  # not overwritten


async def test_a_cut_tail_is_a_rollback(
    server: EmbeddedServer, signing_writer: LedgerWriter, tmp_path: Path
) -> None:
    """Tail truncation: a damaged record and no ``index.db`` make nats-server serve
    the blocks' clean prefix. The stream alone cannot show it; the remembered head can."""
    trust = tmp_path / "trust.json"
    await write_facts(server.url, "one", "two", LATE, "after it")
    assert (await _audit(server.url, TrustStore.load(trust))).ok
    await asyncio.wait_for(signing_writer.stop(), WAIT)
    await signing_writer.bus.close()
    await server.stop()

    needle = LATE.encode()
    store = server.data_dir / "store" / "jetstream"
    (block,) = [p for p in store.rglob("*.blk") if needle in p.read_bytes()]
    block.write_bytes(block.read_bytes().replace(needle, needle.replace(b"late", b"lame")))
    (block.parent / "index.db").unlink()

    async with EmbeddedServer(server.data_dir, port=-1) as restarted:
        report = await _audit(restarted.url, TrustStore.load(trust))
    assert _found(report) == ["rollback"]


async def test_another_history_under_the_same_origin_is_a_fork(
    server: EmbeddedServer, signing_writer: LedgerWriter, tmp_path: Path
) -> None:
    """A ledger whose first N events no longer give the root remembered for size N
    (re-chained and re-signed, or a second history) is a fork, whatever it signs."""
    trust = tmp_path / "trust.json"
    await write_facts(server.url, "one", "two")
    first = await _audit(server.url, TrustStore.load(trust))
    store = TrustStore.load(trust)
    head = store.get(first.origin)
    assert head is not None
    store.remember(Head(head.origin, head.tree_size, bytes(32), head.note))
    store.save()
    report = await _audit(server.url, TrustStore.load(trust))
    assert _found(report) == ["fork"]

    store.remember(Head(head.origin, head.tree_size - 1, bytes(32), head.note))
    store.save()
    await write_facts(server.url, "three")
    report = await _audit(server.url, TrustStore.load(trust))
    assert _found(report) == ["fork"]
    assert "does not extend" in report.violations[0].detail


async def test_a_client_that_remembers_refuses_a_node_that_rolled_back_or_forked(
    server: EmbeddedServer, signing_writer: LedgerWriter, tmp_path: Path
) -> None:
    """``Client(remember=PATH)`` checks each latest checkpoint against the one it saw
    before, with a consistency proof from the node checked offline."""
    trust = tmp_path / "trust.json"
    await write_facts(server.url, "one", "two")
    async with running_node(server.url, tmp_path / "node.db"):
        async with await Client.connect(server.url, tenant=TENANT, remember=trust) as client:
            first = Head.from_note((await client.checkpoint(min_seq=1))["note"])
        assert TrustStore.load(trust).get(first.origin) == first
        await write_facts(server.url, "three", "four")
        async with await Client.connect(server.url, tenant=TENANT, remember=trust) as client:
            last = await client.bus.last_seq()
            latest = Head.from_note((await client.checkpoint(min_seq=last))["note"])
            assert latest.tree_size > first.tree_size
            assert TrustStore.load(trust).get(first.origin) == latest

            store = TrustStore.load(trust)
            store.remember(Head(first.origin, first.tree_size, bytes(32)))
            store.save()
        async with await Client.connect(server.url, tenant=TENANT, remember=trust) as client:
            with pytest.raises(Forked) as forked:
                await client.checkpoint()
            assert forked.value.code == "fork"

            store.remember(Head(first.origin, latest.tree_size + 5, bytes(32)))
            store.save()
        async with await Client.connect(server.url, tenant=TENANT, remember=trust) as client:
            with pytest.raises(RolledBack) as rolled:
                await client.checkpoint()
            assert rolled.value.code == "rollback"


async def test_a_pinned_origin_catches_a_ledger_that_would_be_a_first_use(
    server: EmbeddedServer, signing_writer: LedgerWriter
) -> None:
    """A rewritten first event makes a new origin, which a trust store can only meet as a
    first use: an auditor who pinned the origin names it instead."""
    await write_facts(server.url, "one")
    bus = await Bus.connect(server.url, name="audit-test")
    try:
        first = await asyncio.wait_for(audit_ledger(bus), WAIT)
        same = await asyncio.wait_for(audit_ledger(bus, origin=first.origin), WAIT)
        other = await asyncio.wait_for(
            audit_ledger(bus, origin="cortex.ledger/0000000000000000"), WAIT
        )
    finally:
        await bus.close()
    assert same.ok, same.violations
    assert [v.type for v in other.violations] == ["origin_mismatch"]
    assert first.origin in other.violations[0].detail
