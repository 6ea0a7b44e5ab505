"""Long-lived workers are supervised: a node restarts what can succeed on retry, stops
for good (and says why) where it cannot, never answers from a model that stopped
following, and takes no query before it has caught up; `cortex up` exits when a part
it cannot run without has died."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest
import structlog
from conftest import AsAdmin, Forge

from cortex.audit import audit_ledger
from cortex.client import Client
from cortex.errors import CortexError, QueryFailed
from cortex.nats import STREAM, Bus, EmbeddedServer, Outgoing, ledger_subject
from cortex.runtime import Runtime
from cortex.testing import cortex_up, run_cli
from cortex.writer import LedgerWriter
from events.chain import GENESIS, link
from events.codec import decode_event
from events.model import kind_of
from projections.digest import digest
from projections.quarantine import quarantined
from projections.replay import replay
from projections.testing import LedgerBuilder

WAIT = 10.0


async def _append(bus: Bus, records: list[tuple[int, bytes]], *, seq: int = 0) -> int:
    """Put events on the stream chained as the writer chains them, in atomic batches."""
    await bus.ensure_stream()
    head = GENESIS if seq == 0 else (await bus.get(seq)).hash
    for start in range(0, len(records), 1000):
        out = []
        for _, body in records[start : start + 1000]:
            event = decode_event(body)
            own = link(head, body)
            out.append(
                Outgoing(
                    ledger_subject(event.tenant, kind_of(event)), body, str(event.id), head, own
                )
            )
            head = own
        seq = await bus.append(out, expected_last_seq=seq)
    return seq


async def test_a_node_takes_no_query_before_it_has_caught_up(
    server: EmbeddedServer, bus: Bus, tmp_path: Path
) -> None:
    """When start returns (and only then is the node in the query group), it has
    applied the ledger as far as it went when the node started."""
    ledger = LedgerBuilder()
    ledger.agent("a")
    for i in range(3000):
        ledger.fact("a", f"fact {i}")
    last = await _append(bus, ledger.records)
    async with Runtime(server.url, name="test") as runtime:
        node = await runtime.add_node(tmp_path / "node.db")
        assert node.projector.seq == last
        async with await Client.connect(server.url, tenant="acme") as client:
            status = await client.query("status")
    assert (status["seq"], status["following"], status["stopped_reason"]) == (last, True, "")


async def _consumers(bus: Bus) -> list[str]:
    reply = json.loads(await bus.request(f"$JS.API.CONSUMER.NAMES.{STREAM}", b"{}"))
    return list(reply.get("consumers") or [])


async def test_a_projector_that_loses_its_consumer_restarts_and_goes_on(
    server: EmbeddedServer, writer: LedgerWriter, client: Client, bus: Bus, tmp_path: Path
) -> None:
    """The ephemeral consumer a node reads through vanishes (as after a long stall or a
    server restart): the follower restarts with backoff, logged, from its position."""
    async with Runtime(server.url, name="test") as runtime:
        node = await runtime.add_node(tmp_path / "node.db")
        first = await client.register_agent("a")
        assert await node.projector.wait_for(first.seq, timeout=WAIT)
        with structlog.testing.capture_logs() as logs:
            for name in await _consumers(bus):
                await bus.request(f"$JS.API.CONSUMER.DELETE.{STREAM}.{name}", b"")
            second = await client.register_agent("b")
            agents = await client.query("agents", min_seq=second.seq, wait=WAIT)
        assert [a["agent_id"] for a in agents] == ["a", "b"]
        assert any(e["event"] == "projector_restarting" for e in logs), logs
        assert node.service.status().following
        assert runtime.failure is None


async def test_a_node_that_cannot_follow_stops_for_good_and_refuses_queries(
    server: EmbeddedServer,
    writer: LedgerWriter,
    client: Client,
    bus: Bus,
    forge: Forge,
    tmp_path: Path,
) -> None:
    """An event that does not link into the chain: no retry can help. The node stops,
    says why in ``status``, refuses every other query at once (``not_following``,
    also a ``min_seq`` it would otherwise wait for), and its runtime fails with the reason."""
    async with Runtime(server.url, name="test") as runtime:
        node = await runtime.add_node(tmp_path / "node.db")
        await client.register_agent("a")
        first = await bus.get(1)
        await forge(
            first.subject,
            first.body,
            {"Cortex-Prev": first.prev_hash.hex(), "Cortex-Hash": first.hash.hex()},
        )
        with pytest.raises(CortexError, match="does not follow the chain") as failed:
            await asyncio.wait_for(runtime.wait(asyncio.Event()), WAIT)
        assert failed.value.code == "ledger_mismatch"
        status = await client.query("status")
        assert status["following"] is False
        assert "does not follow the chain" in status["stopped_reason"]
        async with asyncio.timeout(2):  # fails fast, not after the 30 s asked for
            with pytest.raises(QueryFailed) as waiting:
                await client.query("agents", min_seq=node.projector.seq + 1, wait=30)
            with pytest.raises(QueryFailed) as plain:
                await client.agents()
        assert waiting.value.code == plain.value.code == "not_following"
        assert "stopped following the ledger for good" in str(plain.value)


async def test_bad_events_on_the_stream_are_quarantined_and_the_node_goes_on(
    server: EmbeddedServer, bus: Bus, forge: Forge, tmp_path: Path
) -> None:
    """Correctly chained events the projector cannot apply, forged onto a ledger
    subject: the node records them, counts them in ``status``, projects what follows,
    and ends where a fresh replay ends, digest for digest."""
    ledger = LedgerBuilder()
    ledger.agent("a")
    fact = ledger.fact("a", "first")
    last = await _append(bus, ledger.records)
    db = tmp_path / "node.db"
    async with Runtime(server.url, name="test") as runtime:
        node = await runtime.add_node(db)
        head = (await bus.get(last)).hash
        subject = ledger_subject("acme", "vote_cast")
        for body in (b'{"kind": "vote_cast"}', b"\xff not json"):
            own = link(head, body)
            await forge(subject, body, {"Cortex-Prev": head.hex(), "Cortex-Hash": own.hex()})
            head = own
        ledger.vote("a", fact, 1)
        end = await _append(bus, ledger.records[-1:], seq=last + 2)
        assert await node.projector.wait_for(end, timeout=WAIT)
        status = node.service.status()
        assert (status.following, status.quarantined) == (True, 2)
        live = await digest(node.pool)
    assert [(q.seq, q.reason) for q in await quarantined(db)] == [
        (last + 1, "undecodable"),
        (last + 2, "undecodable"),
    ]
    assert (await replay(bus, tmp_path / "fresh.db")).digest == live
    # The audit of that database names both: no writer could have appended them.
    report = await audit_ledger(bus, dbs=[db])
    assert [(v.type, v.seq) for v in report.violations if v.type == "quarantined_event"] == [
        ("quarantined_event", last + 1),
        ("quarantined_event", last + 2),
    ]


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


async def test_cortex_up_exits_with_a_reason_when_its_nats_server_dies(tmp_path: Path) -> None:
    """Killing the embedded nats-server leaves `cortex up` nothing to serve: it exits 1
    with one line saying so, instead of staying up without a server."""
    async with cortex_up(tmp_path / "d") as up:
        (server,) = _children(up.proc.pid)
        os.kill(server, signal.SIGKILL)
        assert await up.exited(WAIT) == 1
        assert (
            "error [server_exited]: the embedded nats-server exited (killed by signal SIGKILL)"
            in up.err()
        )


async def _break_chain(bus: Bus, after: int) -> None:
    """Append, around the writer (an insider with the admin's rights), an event that does
    not link to seq ``after``."""
    stored = await bus.get(after)
    forged = Outgoing(stored.subject, stored.body, "forged", b"\x01" * 32, b"\x02" * 32)
    await bus.append([forged], expected_last_seq=after)


async def test_cortex_up_exits_with_a_reason_when_its_ledger_breaks(
    tmp_path: Path, as_admin: AsAdmin
) -> None:
    """An event that breaks the chain, appended around the writer: the node cannot
    follow, and `cortex up` exits 1 naming the broken seq."""
    as_admin(tmp_path / "d")  # an insider: only the admin could append around the writer
    async with cortex_up(tmp_path / "d") as up:
        bus = await Bus.connect(up.url)
        try:
            async with await Client.connect(up.url, tenant="t") as client:
                receipt = await client.register_agent("a")
            await _break_chain(bus, receipt.seq)
            assert await up.exited(WAIT) == 1
        finally:
            await bus.close()
        assert (
            f"error [ledger_mismatch]: the node's projector stopped at seq {receipt.seq}"
            in up.err()
        )


async def test_a_writer_alone_exits_when_its_ledger_breaks(
    tmp_path: Path, as_admin: AsAdmin
) -> None:
    """`cortex up --role writer`: no node to notice. The next command makes the writer
    catch up, find the break, answer `chain_break`, and `cortex up` exits 1 saying so."""
    as_admin(tmp_path / "d")
    async with cortex_up(tmp_path / "d", "--role", "writer") as up:
        bus = await Bus.connect(up.url)
        try:
            async with await Client.connect(up.url, tenant="t") as client:
                receipt = await client.register_agent("a")
                await _break_chain(bus, receipt.seq)
                with pytest.raises(CortexError) as refused:
                    await client.register_agent("b")
                assert refused.value.code == "chain_break"
            assert await up.exited(WAIT) == 1
        finally:
            await bus.close()
        assert f"error [chain_break]: the ledger's chain is broken at seq {receipt.seq + 1}" in (
            up.err()
        )


async def test_an_exported_nats_url_and_data_alone_is_a_question_not_a_guess(
    tmp_path: Path,
) -> None:
    """With CORTEX_NATS_URL exported, `cortex up --data D` could mean either server; guessing
    the embedded one would follow an empty ledger. It exits 1 and says what to type."""
    nowhere = "nats://127.0.0.1:1"
    run = await run_cli("up", "--data", str(tmp_path / "d"), env={"CORTEX_NATS_URL": nowhere})
    assert run.code == 1
    assert "error [invalid_field]" in run.err
    assert f"--nats {nowhere}" in run.err and "--port" in run.err
    assert not (tmp_path / "d" / "store").exists()  # nothing was started


async def test_an_exported_nats_url_gives_way_to_an_explicit_data_and_port(
    tmp_path: Path, as_admin: AsAdmin
) -> None:
    """CORTEX_NATS_URL names a server nobody runs; `cortex up --data X --port P` starts
    its own, as typed, and says it ignored the environment."""
    nowhere = "nats://127.0.0.1:1"
    as_admin(tmp_path / "d")
    async with cortex_up(tmp_path / "d", env={"CORTEX_NATS_URL": nowhere}) as up:
        async with await Client.connect(up.url, tenant="t") as client:
            await client.register_agent("a")
        assert "CORTEX_NATS_URL (nats://127.0.0.1:1) is ignored" in up.err()
        # It says where it serves, for `cortex log`/`audit`/`replay` run beside it.
        assert (tmp_path / "d" / "nats.url").read_text().strip() == up.url
        assert await up.stop() == 0
    assert (tmp_path / "d" / "store" / "jetstream").is_dir()
    assert not (tmp_path / "d" / "nats.url").exists()


async def test_an_explicit_nats_url_and_port_are_refused_together(tmp_path: Path) -> None:
    both = await run_cli(
        "up", "--nats", "nats://127.0.0.1:1", "--port", "4999", "--data", str(tmp_path)
    )
    assert both.code == 1
    assert "--nats nats://127.0.0.1:1 and --port 4999 contradict each other" in both.err
