"""The client batches under load, yet every call keeps its own receipt or its own error."""

from __future__ import annotations

import asyncio

import pytest

from cortex.client import Client, Receipt
from cortex.errors import CommandRejected, InvalidCommand
from cortex.nats import Bus


async def test_concurrent_calls_share_requests(client: Client, bus: Bus) -> None:
    """500 calls at once travel in far fewer than 500 requests."""
    await client.register_agent("a")
    sent_before = client.requests_sent
    receipts = await asyncio.gather(*(client.store_fact("a", f"f{i}") for i in range(500)))
    assert len({r.seq for r in receipts}) == 500
    assert client.requests_sent - sent_before <= 500 // 10


async def test_a_lone_call_is_sent_at_once(client: Client) -> None:
    """No batching delay when nothing else is in flight: one call, one request."""
    await client.register_agent("a")
    before = client.requests_sent
    await client.store_fact("a", "alone")
    assert client.requests_sent == before + 1


async def test_each_call_in_a_batch_gets_its_own_outcome(client: Client, bus: Bus) -> None:
    await client.register_agent("a")
    fact = (await client.store_fact("a", "x")).fact_id
    assert fact is not None
    results = await asyncio.gather(
        client.store_fact("a", "fine"),
        client.store_fact("nobody", "who?"),
        client.vote("a", fact, 7),
        return_exceptions=True,
    )
    assert isinstance(results[0], Receipt)
    assert isinstance(results[1], CommandRejected)
    assert results[1].code == "unknown_agent"
    assert isinstance(results[2], CommandRejected)
    assert results[2].code == "invalid_vote"


async def test_a_command_too_big_for_one_request_is_refused_locally(
    client: Client, bus: Bus
) -> None:
    await client.register_agent("a")
    before = await bus.last_seq()
    with pytest.raises(InvalidCommand) as info:
        await client.store_fact("a", "x" * 2_000_000)
    assert info.value.code == "too_large"
    assert await bus.last_seq() == before


async def test_big_commands_are_split_across_requests(client: Client, bus: Bus) -> None:
    """Twenty 60 KiB facts exceed one request's payload; they still all land."""
    await client.register_agent("a")
    receipts = await asyncio.gather(*(client.store_fact("a", "y" * 60_000) for _ in range(20)))
    assert len({r.seq for r in receipts}) == 20
