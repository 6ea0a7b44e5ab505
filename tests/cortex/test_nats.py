"""cortex.nats over a real nats-server: CORTEX types in, CORTEX errors out."""

from __future__ import annotations

import asyncio
import typing
from pathlib import Path

import pytest

from cortex.errors import AppendConflict, CortexError, LedgerError, Unavailable
from cortex.nats import Bus, EmbeddedServer, Inbound, Outgoing, ledger_subject
from cortex.nats.errors import _TABLE, Op, ack_error, translate
from events.chain import GENESIS, link


def _event(body: bytes, event_id: str, prev: bytes = GENESIS) -> Outgoing:
    return Outgoing(
        ledger_subject("acme", "agent_registered"), body, event_id, prev, link(prev, body)
    )


async def test_every_operation_has_its_rows_and_others_pass_untouched() -> None:
    """The table names every Op; a CORTEX error or a non-NATS error is not translated."""
    assert set(_TABLE) == set(typing.get_args(Op))
    assert translate(LedgerError("x"), "get") is None
    assert translate(ValueError("x"), "get") is None
    assert translate(asyncio.CancelledError(), "read") is None


async def test_a_stream_that_does_not_exist_is_a_ledger_error(bus: Bus) -> None:
    """Before the writer created it, the ledger's end is a clear LedgerError."""
    with pytest.raises(LedgerError, match="stream CORTEX_LEDGER does not exist"):
        await bus.last_seq()


async def test_appending_after_a_stale_seq_is_an_append_conflict(bus: Bus) -> None:
    """The expected-last-seq guard comes back as AppendConflict, and nothing is stored."""
    await bus.ensure_stream()
    first = _event(b'{"n":1}', "e1")
    assert await bus.append([first], expected_last_seq=0) == 1
    with pytest.raises(AppendConflict, match="stream moved on"):
        await bus.append([_event(b'{"n":2}', "e2", first.hash)], expected_last_seq=0)
    assert await bus.last_seq() == 1
    with pytest.raises(LedgerError) as missing:
        await bus.get(2)
    assert missing.value.code == "not_found"


def test_an_ack_error_maps_by_jetstream_code() -> None:
    """10071 (wrong last sequence) and 10201 (duplicate id in a batch) are conflicts."""
    assert isinstance(ack_error({"err_code": 10071, "description": "d"}), AppendConflict)
    assert isinstance(ack_error({"err_code": 10201, "description": "d"}), AppendConflict)
    other = ack_error({"err_code": 10999, "description": "odd"})
    assert type(other) is LedgerError
    assert str(other) == "JetStream refused the batch: odd (10999)"


async def test_serve_hands_an_inbound_and_close_stops_it(bus: Bus) -> None:
    """A handler sees subject, data and reply, answers with respond; after close, nobody does."""
    seen: list[tuple[str, bytes]] = []

    async def echo(msg: Inbound) -> None:
        seen.append((msg.subject, msg.data))
        if msg.reply:
            await msg.respond(msg.data.upper())

    serving = await bus.serve("cortex.test.echo", echo)
    assert await bus.request("cortex.test.echo", b"hi") == b"HI"
    assert seen == [("cortex.test.echo", b"hi")]
    await serving.close()
    with pytest.raises(Unavailable, match=r"no CORTEX writer is serving cortex\.test\.echo"):
        await bus.request("cortex.test.echo", b"again", timeout=1.0)


async def test_nothing_listening_is_unavailable(tmp_path: Path) -> None:
    """A connection to a stopped server fails fast with Unavailable, not a nats-py error."""
    server = EmbeddedServer(tmp_path / "d", port=-1)
    url = await server.start()
    await server.stop()
    with pytest.raises(Unavailable, match="cannot reach NATS") as info:
        await Bus.connect(url, timeout=1.0)
    assert isinstance(info.value, CortexError)
