"""Several seed servers: a comma-separated list or a sequence, and fail-over between them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from cortex.errors import InvalidCommand
from cortex.nats import Bus, EmbeddedServer, Inbound
from cortex.nats.subjects import parse_urls
from cortex.testing import eventually

WAIT = 20.0
Start = Callable[..., Awaitable[list[EmbeddedServer]]]


def test_a_url_list_is_split_on_commas_stripped_and_deduplicated() -> None:
    """What --nats, CORTEX_NATS_URL and a credentials file's url may hold."""
    assert parse_urls(" nats://a:1, nats://b:2,,nats://a:1 ") == ["nats://a:1", "nats://b:2"]
    assert parse_urls(["nats://a:1,nats://b:2", "nats://c:3"]) == [
        "nats://a:1",
        "nats://b:2",
        "nats://c:3",
    ]
    with pytest.raises(InvalidCommand, match="no NATS server URL"):
        parse_urls(" , ")


async def answered(bus: Bus, subject: str) -> bytes:
    """The first reply on ``subject``, asking again while nobody serves it (polling a
    server we do not control: there is no event to wait on)."""
    return await eventually(lambda: bus.request(subject, b"ping", timeout=1.0), timeout=30)


@pytest.mark.parametrize("as_list", [False, True])
async def test_a_bus_given_two_servers_moves_to_the_other_when_its_own_stops(
    servers: Start, as_list: bool
) -> None:
    """Connected to one of two seeds, a bus reconnects to the other when its server
    stops, and serves there again (its subscriptions follow it)."""
    one, two = await servers(2)
    seeds = [one.url, two.url]
    bus = await Bus.connect(seeds if as_list else ",".join(seeds))
    try:
        seen: list[bytes] = []

        async def echo(msg: Inbound) -> None:
            seen.append(msg.data)
            await msg.respond(b"pong")

        await bus.serve("ride.echo", echo)
        first = bus.connected_url
        assert first in seeds
        gone, other = (one, two) if first == one.url else (two, one)
        asker = await Bus.connect(other.url)
        try:
            await gone.stop()
            async with asyncio.timeout(WAIT):
                assert await answered(asker, "ride.echo") == b"pong"
            assert bus.connected_url == other.url
        finally:
            await asker.close()
    finally:
        await bus.close()


async def test_the_first_seed_down_is_skipped_at_connect(servers: Start) -> None:
    """A bus connects to whichever seed is up, whatever the order."""
    one, two = await servers(2)
    await one.stop()
    bus = await Bus.connect(f"{one.url},{two.url}", timeout=2.0)
    try:
        assert bus.connected_url == two.url
    finally:
        await bus.close()
