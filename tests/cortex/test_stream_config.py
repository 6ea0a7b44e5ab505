"""The stream's configuration is pinned: attacks through the JetStream API, with real connections.

Someone allowed to administer CORTEX_LEDGER (``stream_admin``, from one
fixture) changes its configuration under a running writer: an age or count
limit, interest retention, a narrower subject filter, ``sealed``. Each time the
writer stops acknowledging at once (the stream's advisory) or within its poll
interval (without advisories), acknowledges nothing after the change, names
what drifted; ``cortex audit`` reports it as ``stream_config``; a writer (and
``cortex up``) refuses to start on it. What nats-server itself refuses
(``deny_delete`` back to false) changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import msgspec
import pytest
from conftest import AdminConnect, AsAdmin, StreamAdmin

from cortex.audit import audit_ledger
from cortex.client import Client
from cortex.errors import CortexError, StreamUnsafe
from cortex.nats import STREAM, Bus, EmbeddedServer
from cortex.nats.stream_config import LiveConfig, LiveState, StreamStatus, drifts
from cortex.testing import cortex_up, run_cli, running_writer
from cortex.writer import LedgerWriter

#: The poll interval of the writers here, and how long past it a test waits at most.
POLL_S: Final = 0.5
MARGIN_S: Final = 10.0
_NS: Final = 1_000_000_000

SAFE: Final = StreamStatus(
    LiveConfig(
        subjects=["cortex.ledger.>"],
        discard="new",
        duplicate_window=120 * _NS,
        deny_delete=True,
        deny_purge=True,
        allow_atomic=True,
    ),
    LiveState(messages=3, first_seq=1, last_seq=3),
)

#: (field changed, nats-server JSON value) for every drift the pin catches.
BAD_FIELDS: Final[list[tuple[str, Any]]] = [
    ("subjects", ["cortex.ledger.acme.>"]),
    ("subjects", ["cortex.>"]),
    ("retention", "interest"),
    ("retention", "workqueue"),
    ("max_age", _NS),
    ("max_msgs", 1),
    ("max_bytes", 1_000_000),
    ("max_msgs_per_subject", 1),
    ("discard", "old"),
    ("storage", "memory"),
    ("no_ack", True),
    ("duplicate_window", _NS),
    ("mirror", {"name": "OTHER"}),
    ("sources", [{"name": "OTHER"}]),
    ("first_seq", 1000),
    ("subject_transform", {"src": "cortex.ledger.a.*", "dest": "cortex.ledger.b.{{wildcard(1)}}"}),
    ("republish", {"src": ">", "dest": "leak.>"}),
    ("sealed", True),
    ("deny_delete", False),
    ("deny_purge", False),
    ("allow_rollup_hdrs", True),
    ("allow_msg_ttl", True),
    ("subject_delete_marker_ttl", _NS),
    ("allow_msg_counter", True),
    ("allow_msg_schedules", True),
    ("allow_atomic", False),
    ("persist_mode", "async"),
]

#: Attacks on a running writer: the update (nats-server JSON) and what the error names.
ATTACKS: Final[dict[str, tuple[dict[str, Any], str]]] = {
    # nats-server wants the duplicate window within max_age: an attacker lowers both.
    "max_age 1 s": ({"max_age": _NS, "duplicate_window": _NS}, "max_age is 1 s"),
    "max_msgs 1": ({"max_msgs": 1}, "max_msgs is 1"),
    "retention interest": ({"retention": "interest"}, "retention is interest"),
    "subjects narrowed to one tenant": (
        {"subjects": ["cortex.ledger.acme.>"]},
        "subjects is ['cortex.ledger.acme.>']",
    ),
    "sealed": ({"sealed": True}, "sealed is true"),
}


def _with(field: str, value: Any) -> StreamStatus:
    raw = msgspec.json.decode(msgspec.json.encode(SAFE.config))
    config = msgspec.convert({**raw, field: value}, LiveConfig)
    return StreamStatus(config, SAFE.state)


def test_the_configuration_cortex_requires_has_no_drift() -> None:
    assert drifts(SAFE) == []


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS)
def test_each_field_that_can_drop_or_hide_events_is_one_drift(field: str, value: Any) -> None:
    """Every field of nats-server's StreamConfig that can drop, hide or inject events
    is checked, and a bad value is exactly one drift, named by its field."""
    found = drifts(_with(field, value))
    assert [d.field for d in found] == [field]
    assert found[0].why


def test_fewer_replicas_than_asked_is_drift_and_more_is_not() -> None:
    three = _with("num_replicas", 3)
    assert drifts(three, replicas=3) == []
    assert drifts(SAFE, replicas=1) == []
    assert [str(d) for d in drifts(SAFE, replicas=3)] == [
        "num_replicas is 1, must be at least 3 (fewer copies than the operator asked for)"
    ]


def test_a_stream_that_lost_its_start_or_end_or_is_gone_is_drift() -> None:
    cut = StreamStatus(SAFE.config, LiveState(messages=6, first_seq=18, last_seq=23))
    assert [(d.field, d.found) for d in drifts(cut)] == [
        ("state.first_seq", "18 (events 1-17 gone)")
    ]
    assert [d.field for d in drifts(SAFE, appended=5)] == ["state.last_seq"]
    assert drifts(SAFE, appended=3) == []
    assert [d.field for d in drifts(None)] == ["stream"]


async def test_the_stream_cortex_creates_is_safe(bus: Bus) -> None:
    await bus.ensure_stream()
    assert await bus.stream_drifts() == []


async def test_a_stream_of_an_earlier_cortex_is_tightened_to_discard_new(
    bus: Bus, stream_admin: StreamAdmin
) -> None:
    """Discard old is harmless without limits, but under one it drops events where
    discard new refuses writes: the one drift a writer repairs itself."""
    await bus.ensure_stream()
    assert "error" not in await stream_admin.update(discard="old")
    assert [d.field for d in await bus.stream_drifts()] == ["discard"]
    await bus.ensure_stream()
    assert (await stream_admin.config())["discard"] == "new"


# -- attacks on a running writer --------------------------------------------------


class Watched:
    """A running writer and the failure it reported to whoever runs it."""

    def __init__(self) -> None:
        self.failure: CortexError | None = None
        self.failed = asyncio.Event()

    def on_fatal(self, error: CortexError) -> None:
        self.failure = error
        self.failed.set()

    async def stopped(self, within: float) -> CortexError:
        await asyncio.wait_for(self.failed.wait(), within)
        assert self.failure is not None
        return self.failure


@contextlib.asynccontextmanager
async def _writer(
    server: EmbeddedServer, **options: Any
) -> AsyncIterator[tuple[LedgerWriter, Watched, Client]]:
    watched = Watched()
    # No timed checkpoint: one landing after ``last`` is read would look like an append
    # past the change (seen under load).
    options.setdefault("checkpoint_interval", 3600.0)
    async with running_writer(
        server.url, stream_check_s=POLL_S, on_fatal=watched.on_fatal, **options
    ) as writer:
        client = await Client.connect(server.url, tenant="acme")
        try:
            await client.register_agent("alice")
            await client.store_fact("alice", "acknowledged before the change")
            yield writer, watched, client
        finally:
            await client.close()


@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_a_config_change_stops_the_writer_and_the_audit_names_it(
    attack: str, server: EmbeddedServer, bus: Bus, stream_admin: StreamAdmin
) -> None:
    """The writer hears the stream's advisory and stops: commands are refused
    ``stream_unsafe`` naming the drift, and nothing is appended from then on. The
    server sends the advisory after its reply to the change, so a command sent at
    once may reach the writer first: it is acknowledged, as the module doc allows
    within a check interval, and the very next one is refused."""
    changes, named = ATTACKS[attack]
    async with _writer(server) as (writer, watched, client):
        last = await bus.last_seq()
        reply = await stream_admin.update(**changes)
        assert "error" not in reply, reply
        refused: StreamUnsafe | None = None
        try:
            await client.store_fact("alice", "sent after the change")
        except StreamUnsafe as e:
            refused = e
        assert refused is None or named in refused.message
        slipped = 1 if refused is None else 0
        failure = await watched.stopped(POLL_S + MARGIN_S)
        assert isinstance(failure, StreamUnsafe) and named in failure.message
        assert writer.unsafe is failure
        with pytest.raises(StreamUnsafe):
            await client.register_agent("bob")
        assert await bus.last_seq() == last + slipped
    report = await audit_ledger(bus)
    field = named.split(" is ")[0]
    assert ("stream_config", f"stream {STREAM}: {field}") in [
        (v.type, v.where) for v in report.violations
    ]
    assert not report.ok
    again = LedgerWriter(await Bus.connect(server.url))
    try:
        with pytest.raises(StreamUnsafe, match=field):
            await asyncio.wait_for(again.start(), MARGIN_S)
    finally:
        await again.stop()
        await again.bus.close()


async def test_a_message_limit_under_discard_new_drops_nothing(
    server: EmbeddedServer, bus: Bus, stream_admin: StreamAdmin
) -> None:
    """The discard policy CORTEX sets: a limit refuses new writes, old events stay."""
    async with _writer(server) as (_, watched, client):
        for n in range(3):
            await client.store_fact("alice", f"fact {n}")
        last = await bus.last_seq()
        reply = await stream_admin.update(max_msgs=1)
        await watched.stopped(POLL_S + MARGIN_S)
    assert (reply["state"]["first_seq"], reply["state"]["last_seq"]) == (1, last)
    assert [s.seq async for s in bus.read(1)] == list(range(1, last + 1))


async def test_without_advisories_the_poll_stops_the_writer_within_its_interval(
    server: EmbeddedServer, bus: Bus, stream_admin: StreamAdmin
) -> None:
    """A connection not allowed to hear advisories still polls: the drift is found
    within the interval, and nothing is acknowledged after that."""
    async with _writer(server, watch_advisories=False) as (_, watched, client):
        assert "error" not in await stream_admin.update(max_age=_NS, duplicate_window=_NS)
        failure = await watched.stopped(POLL_S + MARGIN_S)
        assert "max_age is 1 s" in failure.message
        last = await bus.last_seq()
        with pytest.raises(StreamUnsafe, match="max_age"):
            await client.store_fact("alice", "after")
        assert await bus.last_seq() == last


async def test_what_nats_server_refuses_changes_nothing(
    server: EmbeddedServer, bus: Bus, stream_admin: StreamAdmin
) -> None:
    """deny_delete and deny_purge cannot be turned off again: the writer goes on."""
    async with _writer(server) as (writer, _watched, client):
        for field in ("deny_delete", "deny_purge"):
            reply = await stream_admin.update(**{field: False})
            assert "can not cancel deny" in reply["error"]["description"]
        await writer.check_stream()
        receipt = await client.store_fact("alice", "still acknowledged")
        assert receipt.seq == await bus.last_seq()
        assert writer.unsafe is None
    assert (await audit_ledger(bus)).ok


async def test_a_stream_deleted_under_the_writer_stops_it_saying_so(
    server: EmbeddedServer, bus: Bus, stream_admin: StreamAdmin
) -> None:
    async with _writer(server) as (writer, watched, client):
        config = await stream_admin.config()
        assert "error" not in await stream_admin.delete()
        failure = await watched.stopped(POLL_S + MARGIN_S)
        assert "stream is missing" in failure.message
        with pytest.raises(StreamUnsafe, match="stream is missing"):
            await client.store_fact("alice", "after")
        # Recreated empty (and unprotected) behind its back: still nothing appended.
        assert "error" not in await stream_admin.create({**config, "deny_delete": False})
        with pytest.raises(StreamUnsafe):
            await client.store_fact("alice", "after recreation")
        assert await bus.last_seq() == 0
        assert writer.unsafe is failure


async def test_a_stream_recreated_under_the_writer_is_noticed(
    server: EmbeddedServer, bus: Bus, stream_admin: StreamAdmin
) -> None:
    """Deleted and recreated at once, with the same configuration: it ends before
    what the writer appended, so the writer stops rather than start a new chain."""
    async with _writer(server) as (_, watched, client):
        config = await stream_admin.config()
        assert "error" not in await stream_admin.delete()
        assert "error" not in await stream_admin.create(config)
        failure = await watched.stopped(POLL_S + MARGIN_S)
        assert "stream is missing" in failure.message or "state.last_seq" in failure.message
        with pytest.raises(StreamUnsafe):
            await client.store_fact("alice", "after")
        assert await bus.last_seq() == 0


async def test_cortex_up_refuses_an_unsafe_stream_with_the_reason(
    server: EmbeddedServer, bus: Bus, stream_admin: StreamAdmin, tmp_path: Path
) -> None:
    await bus.ensure_stream()
    assert "error" not in await stream_admin.update(
        max_age=_NS, duplicate_window=_NS, retention="interest"
    )
    run = await run_cli("up", "--nats", server.url, "--data", str(tmp_path / "up"))
    assert run.code == 1
    assert "error [stream_unsafe]" in run.err
    assert "max_age is 1 s" in run.err and "retention is interest" in run.err
    audit = await run_cli("audit", "--nats", server.url, "--json")
    assert audit.code == 1
    found = {(v["type"], v["where"]) for v in audit.json()["violations"]}
    assert {
        ("stream_config", f"stream {STREAM}: max_age"),
        ("stream_config", f"stream {STREAM}: retention"),
    } <= found


async def test_cortex_up_exits_saying_why_when_the_stream_drifts(
    tmp_path: Path, admin_connect: AdminConnect, as_admin: AsAdmin
) -> None:
    async with cortex_up(tmp_path / "data") as up:
        as_admin(tmp_path / "data")  # the folder's operator changes the stream
        admin = await admin_connect(up.url)
        assert "error" not in await admin.update(sealed=True)
        assert await up.exited() == 1
        assert "error [stream_unsafe]" in up.err()
        assert "sealed is true" in up.err()
