"""A cluster's passing states are Unavailable (retry), never LedgerError (stop); a
stream that is really gone still is; too few servers for the replicas says how many."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from conftest import StreamAdmin

from cortex.cli.write import up_replicas
from cortex.errors import LedgerError, StreamUnsafe, Unavailable
from cortex.nats import Bus, EmbeddedServer, Outgoing, ledger_subject
from cortex.nats.errors import ack_error, jetstream_error
from cortex.nats.stream_config import LiveCluster
from cortex.runtime import Runtime
from cortex.testing import eventually, run_cli
from events.chain import GENESIS, link

Start = Callable[..., Awaitable[list[EmbeddedServer]]]
WAIT = 30.0


def _event(body: bytes, event_id: str) -> Outgoing:
    return Outgoing(
        ledger_subject("acme", "agent_registered"), body, event_id, GENESIS, link(GENESIS, body)
    )


@pytest.mark.parametrize("err_code", [10008, 10041, 10118, 10163, 10176])
def test_passing_cluster_states_are_unavailable(err_code: int) -> None:
    """Leader elections, an offline stream, a batch cut by a leader change: retry."""
    status = 503 if err_code == 10008 else 500
    reply = {"code": status, "err_code": err_code, "description": "d"}
    assert isinstance(ack_error(reply), Unavailable)
    assert isinstance(jetstream_error(err_code, "d", status=status), Unavailable)


def test_any_503_is_unavailable_and_other_refusals_stay_ledger_errors() -> None:
    """Whatever its code, a 503 is JetStream saying "not now"."""
    assert isinstance(ack_error({"code": 503, "err_code": 10999, "description": "d"}), Unavailable)
    assert type(ack_error({"code": 500, "err_code": 10999, "description": "d"})) is LedgerError


def test_too_few_servers_says_how_many_are_needed() -> None:
    """A cluster short of servers for the replicas: retryable, and says how many."""
    error = jetstream_error(10023, "insufficient resources", status=503, replicas=3)
    assert isinstance(error, Unavailable)
    assert error.code == "too_few_servers"
    assert "need 3 servers" in error.message


async def test_an_append_to_a_deleted_stream_is_still_fatal_and_named(
    bus: Bus, stream_admin: StreamAdmin
) -> None:
    """No responder because the stream is gone (stream info says so): LedgerError."""
    await bus.ensure_stream()
    assert "error" not in await stream_admin.delete()
    with pytest.raises(LedgerError, match="CORTEX_LEDGER does not exist") as gone:
        await bus.append([_event(b'{"n":1}', "e1")], expected_last_seq=0)
    assert not isinstance(gone.value, Unavailable)
    with pytest.raises(StreamUnsafe, match="stream is missing"):
        await bus.check_stream()


async def test_replicas_on_a_single_server_need_that_many_servers(
    server: EmbeddedServer, bus: Bus
) -> None:
    """A server on its own keeps one replica: asking for 3 is a clear error, and the
    stream is not created."""
    assert bus.server_count() == 1
    assert bus.default_replicas() == 1
    with pytest.raises(LedgerError, match="need 3 servers") as refused:
        await bus.ensure_stream(replicas=3)
    assert refused.value.code == "not_clustered"
    assert await bus.stream_status() is None


async def test_up_with_replicas_3_on_one_server_fails_and_appends_nothing(
    tmp_path: Path,
) -> None:
    """`cortex up --replicas 3` on the embedded server: one clear line, no stream."""
    data = tmp_path / "up"
    run = await run_cli("up", "--data", str(data), "--port", "-1", "--replicas", "3")
    assert run.code == 1
    assert "need 3 servers" in run.err
    assert "Traceback" not in run.err


async def test_in_a_cluster_the_stream_scales_steps_down_and_a_lost_leader_is_unavailable(
    servers: Start,
) -> None:
    """Three servers: R3 is the default; an R1 stream scales to 3 (5 needs 5 servers);
    its leader hands over; an R1 stream whose server stops is Unavailable, not gone."""
    group = await servers(3, cluster=True)
    bus = await Bus.connect([s.url for s in group], timeout=3.0)
    try:
        assert bus.server_count() == 3
        assert bus.default_replicas() == 3
        assert bus.default_replicas(2) == 2
        await bus.ensure_stream(replicas=1)
        single = await bus.stream_cluster()
        assert single.leader is not None
        assert not single.replicas
        with pytest.raises(Unavailable, match="need 5 servers") as short:
            await bus.scale_replicas(5)
        assert short.value.code == "too_few_servers"

        # The R1 stream's only server stops: appends meet no responder, which is
        # a passing state (it may come back), not a missing stream.
        holder = next(
            s for s in group if s.extra_config.startswith(f"server_name: {single.leader}\n")
        )
        others = [s.url for s in group if s is not holder]
        await holder.stop()
        elsewhere = await Bus.connect(others, timeout=2.0)
        try:
            with pytest.raises(Unavailable):
                await elsewhere.append([_event(b'{"n":1}', "e1")], expected_last_seq=0)
        finally:
            await elsewhere.close()
    finally:
        await bus.close()


async def _settled(bus: Bus, followers: int) -> LiveCluster:
    """The stream's cluster once it has a leader and ``followers`` current followers
    (polled: the Raft group elects in its own time)."""

    async def settled() -> LiveCluster | None:
        found = await bus.stream_cluster()
        current = [p for p in found.replicas or [] if p.current]
        return found if found.leader and len(current) == followers else None

    return await eventually(settled, timeout=WAIT, every=0.1)


async def test_a_stream_scaled_up_in_a_cluster_keeps_its_events_and_hands_over(
    servers: Start,
) -> None:
    """R1 scaled to R3 (the raw configuration sent back with one field changed: the
    stream stays safe); then its leader steps down to the server asked for."""
    group = await servers(3, cluster=True)
    bus = await Bus.connect(",".join(s.url for s in group), timeout=3.0)
    try:
        await bus.ensure_stream(replicas=1)
        assert await bus.append([_event(b'{"n":1}', "e1")], expected_last_seq=0) == 1
        await bus.scale_replicas(3)
        before = await _settled(bus, 2)
        assert await bus.stream_drifts(replicas=3) == []
        preferred = (before.replicas or [])[0].name
        await eventually(lambda: _stepped_down(bus, preferred), timeout=WAIT, every=0.1)
        after = await _settled(bus, 2)
        assert after.leader == preferred
        assert await bus.last_seq() == 1
    finally:
        await bus.close()


async def test_up_keeps_an_under_replicated_stream_until_asked_to_scale_it(
    servers: Start,
) -> None:
    """`cortex up` on a cluster of 3 wants R3; an R1 stream there is reported and kept
    (the writer requires the 1 it has) until --scale-replicas scales it to 3."""
    group = await servers(3, cluster=True)
    seeds = ",".join(s.url for s in group)
    async with Runtime(seeds) as runtime:
        bus = await runtime.connect("admin")
        await bus.ensure_stream(replicas=1)
        asked = argparse.Namespace(replicas=None, scale_replicas=False)
        assert await up_replicas(runtime, asked) == 1
        status = await bus.stream_status()
        assert status is not None
        assert status.config.num_replicas == 1
        asked.scale_replicas = True
        assert await up_replicas(runtime, asked) == 3
        status = await bus.stream_status()
        assert status is not None
        assert status.config.num_replicas == 3


async def _stepped_down(bus: Bus, preferred: str) -> bool:
    await bus.step_down(preferred)
    return True
