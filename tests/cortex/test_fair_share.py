"""One agent's flood does not take the writer from the others: rate limits at the door."""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import AsyncIterator
from typing import Any, Final

import msgspec
import pytest

from cortex.client import Client, new_id
from cortex.core.fairshare import Rate
from cortex.errors import RateLimited
from cortex.nats import Bus, EmbeddedServer, command_subject
from cortex.testing import run_cli, running_writer
from cortex.writer import LedgerWriter
from events.codec import encode
from events.commands import StoreFact

#: The flooder: another program, another tenant, as many commands in flight as its
#: client allows, each refusal answered by sending again at once (it ignores
#: retry_after, as an abusive agent would). It prints "flooding" once the writer has
#: refused it (its burst is spent: from then on it floods at its rate limit) and stops
#: when its stdin closes.
FLOODER: Final = """
import asyncio, os, sys
os.nice(10)
from cortex.client import Client
from cortex.errors import RateLimited

async def main(url):
    async with await Client.connect(url, tenant="loud") as client:
        await client.register_agent("flood")
        said = False
        async def one():
            nonlocal said
            while True:
                try:
                    await client.store_fact("flood", "x" * 300)
                except RateLimited:
                    if not said:
                        said = True
                        print("flooding", flush=True)
        tasks = [asyncio.create_task(one()) for _ in range(200)]
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

asyncio.run(main(sys.argv[1]))
"""


async def _p99(client: Client, agent: str, count: int) -> float:
    """The 99th percentile of ``count`` sequential store_fact round trips, in ms."""
    took = []
    for i in range(count):
        started = time.perf_counter()
        await client.store_fact(agent, f"quiet fact {i}")
        took.append((time.perf_counter() - started) * 1000)
    return statistics.quantiles(took, n=100)[98]


#: What a flood may add to the quiet p99 beyond doubling it, on this machine.
#:
#: Everything runs on one 2-core box: nats-server, this process (writer and the
#: measured agent) and the flooder, which spins at full speed (niced) resending every
#: refused batch, often beside other test runs. Fourteen runs on the development
#: machine (load 1-4): quiet p99 5.4-32.6 ms, under flood 12-99 ms; the largest excess
#: over twice the quiet p99 was 93 ms (typically 10-50). Without the limits the same
#: kind of flood took another agent's p99 from 9.6 ms to 332 ms (issue 10). The
#: flooder's admitted share, 2,000 commands/s, is a tenth of what the writer appends
#: here, so the writer's queue stays short: what is left is CPU the processes share.
#: (A flooder sending pre-encoded raw batches refused 20 times more and did no worse
#: or better.) Where agents run on machines of their own the allowance is not needed.
ALLOWANCE_MS: Final = 100.0


@pytest.fixture
async def fair_writer(server: EmbeddedServer) -> AsyncIterator[LedgerWriter]:
    """Each agent may send 2,000 commands/s (burst 2,000), each tenant 3,000/s: well
    below what this machine's writer appends, so a capped flood leaves room."""
    async with running_writer(
        server.url, rate_agent=Rate(2000, 2000), rate_tenant=Rate(3000, 3000)
    ) as w:
        yield w


async def test_a_flooding_agent_keeps_another_agents_p99_within_twice_its_quiet_p99(
    server: EmbeddedServer, fair_writer: LedgerWriter
) -> None:
    """Quiet p99 first (300 sequential writes), then 300 more while another tenant's
    agent floods from another process; at most 2x (+ the allowance above)."""
    async with await Client.connect(server.url, tenant="quiet") as victim:
        await victim.register_agent("calm")
        await _p99(victim, "calm", 50)  # warm up the connection and the writer's paths
        quiet = await _p99(victim, "calm", 300)
        flooder = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            FLOODER,
            server.url,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert flooder.stdout is not None
            assert await asyncio.wait_for(flooder.stdout.readline(), 30) == b"flooding\n"
            loud = await _p99(victim, "calm", 300)
            refused = fair_writer.fairshare.refused
        finally:
            assert flooder.stdin is not None
            flooder.stdin.close()
            await asyncio.wait_for(flooder.wait(), 30)
    print(f"quiet p99 {quiet:.2f} ms, under flood {loud:.2f} ms, refused {refused} commands")
    assert refused > 0
    assert loud <= 2 * quiet + ALLOWANCE_MS


@pytest.fixture
async def tight_writer(server: EmbeddedServer) -> AsyncIterator[LedgerWriter]:
    """Five commands per agent, ten per tenant, refilling so slowly (one every 5 and 10
    seconds) that no test here sees a refill, however slow the machine."""
    async with running_writer(server.url, rate_agent=Rate(0.2, 5), rate_tenant=Rate(0.1, 10)) as w:
        yield w


async def test_an_agent_over_its_rate_is_refused_with_a_retry_after_and_nothing_appended(
    server: EmbeddedServer, tight_writer: LedgerWriter, bus: Bus
) -> None:
    async with await Client.connect(server.url, tenant="t") as client:
        await client.register_agent("a")
        await client.register_agent("b")
        for i in range(4):
            await client.store_fact("a", f"fact {i}")
        before = await bus.last_seq()
        with pytest.raises(RateLimited) as refused:
            await client.store_fact("a", "one too many")
        assert refused.value.code == "rate_limited"
        assert 0 < refused.value.retry_after <= 1 / 0.2 + 0.001
        assert f"retry after {refused.value.retry_after} s" in str(refused.value)
        assert "agent 'a' of tenant 't'" in str(refused.value)
        assert await bus.last_seq() == before
        # another agent of the same tenant still has its own share
        await client.store_fact("b", "b's fact")


async def test_a_tenant_over_its_rate_refuses_all_its_agents_but_not_other_tenants(
    server: EmbeddedServer, tight_writer: LedgerWriter
) -> None:
    async with (
        await Client.connect(server.url, tenant="t") as client,
        await Client.connect(server.url, tenant="u") as other,
    ):
        for n in range(10):  # ten agents, one command each: the tenant's whole burst
            await client.register_agent(f"agent{n}")
        with pytest.raises(RateLimited, match="tenant 't' is over its rate"):
            await client.register_agent("agent10")
        await other.register_agent("agent0")


async def test_the_error_reply_carries_retry_after_as_a_field(
    server: EmbeddedServer, tight_writer: LedgerWriter, bus: Bus
) -> None:
    """``{"error": {"code", "message", "retry_after"}}``, for scripts that do not use the
    Python client; a batch over the rate is refused by one such reply (as a malformed one
    is), before it is decoded."""
    commands = [
        encode(StoreFact(id=new_id(), fact_id=new_id(), agent_id="a", content=f"{i}"))
        for i in range(6)
    ]
    batch = b"[" + b",".join(commands) + b"]"
    first: list[dict[str, Any]] = msgspec.json.decode(
        await bus.request(command_subject("t", "batch"), batch)
    )
    assert {r["error"]["code"] for r in first} == {"unknown_agent"}  # judged: burst spent
    reply: dict[str, Any] = msgspec.json.decode(
        await bus.request(command_subject("t", "batch"), batch)
    )
    assert set(reply["error"]) == {"code", "message", "retry_after"}
    assert reply["error"]["code"] == "rate_limited"
    assert 0 < reply["error"]["retry_after"] <= 2 / 0.1 + 0.001  # 2 short, at 0.1/s
    assert await bus.last_seq() == 0


async def test_an_atomic_request_over_the_rate_is_refused_whole(
    server: EmbeddedServer, tight_writer: LedgerWriter, bus: Bus
) -> None:
    async with await Client.connect(server.url, tenant="t") as client:
        await client.register_agent("a")
        await client.register_agent("b")
        stores = [
            StoreFact(id=new_id(), fact_id=new_id(), agent_id=agent, content="x")
            for agent in ("a", "a", "a", "a", "a", "b")
        ]
        before = await bus.last_seq()
        with pytest.raises(RateLimited):
            await client.submit_atomic(stores)
        assert await bus.last_seq() == before


async def test_a_full_queue_refuses_with_rate_limited_instead_of_growing(
    server: EmbeddedServer, bus: Bus
) -> None:
    """A flood of many distinct agents passes every bucket; the bounded queue holds."""
    async with running_writer(server.url, max_queued=10) as writer:
        commands = [
            encode(StoreFact(id=new_id(), fact_id=new_id(), agent_id=f"a{i}", content="x"))
            for i in range(11)
        ]
        raw = await bus.request(command_subject("t", "batch"), b"[" + b",".join(commands) + b"]")
        replies: list[dict[str, Any]] = msgspec.json.decode(raw)
        assert {r["error"]["code"] for r in replies} == {"rate_limited"}
        assert "commands waiting" in replies[0]["error"]["message"]
        assert writer.fairshare.refused == 11
        assert await bus.last_seq() == 0


async def test_cortex_up_takes_rates_and_refuses_nonsense_as_usage() -> None:
    bad = await run_cli("up", "--rate-agent", "fast")
    assert bad.code == 1
    assert "error [usage]" in bad.err and "RATE or RATE:BURST" in bad.err
    helped = await run_cli("up", "--help")
    assert "--rate-agent" in helped.out and "--rate-tenant" in helped.out
