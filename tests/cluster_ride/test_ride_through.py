"""A client rides through a writer's loss: it sends the same command again (same id)
until a writer answers, and a command whose reply was lost is neither lost nor doubled."""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import AsyncIterator, Sequence

import msgspec
import pytest

from cortex.client import Client
from cortex.core.records import Outgoing
from cortex.errors import CortexError, Unavailable
from cortex.nats import Bus, EmbeddedServer, Inbound, Role
from cortex.testing import running_writer
from cortex.writer import LedgerWriter
from events.codec import decode_command, decode_event
from events.commands import Command

WAIT = 20.0


async def ledger_ids(bus: Bus) -> collections.Counter[uuid.UUID]:
    """How many times each event id is in the ledger."""
    return collections.Counter(
        [decode_event(event.body).id async for event in bus.read(1)] if await bus.last_seq() else []
    )


class Spy:
    """Listens on the tenant's command subjects without answering: each request it
    sees costs its sender a try (no reply within ``attempt_timeout``)."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []
        self.first = asyncio.Event()

    async def __call__(self, msg: Inbound) -> None:
        self.seen.append(msg.data)
        self.first.set()


@pytest.fixture
async def client(server: EmbeddedServer) -> AsyncIterator[Client]:
    c = await Client.connect(server.url, tenant="acme", attempt_timeout=0.5, deadline=WAIT)
    yield c
    await c.close()


async def test_commands_sent_while_no_writer_runs_get_one_receipt_each(
    server: EmbeddedServer, bus: Bus, client: Client
) -> None:
    """Commands made while the writer is stopped are sent again, same ids, until a new
    writer answers: each gets one receipt, and the ledger holds each id once."""
    async with running_writer(server.url):
        await client.register_agent("a")
    spy = Spy()
    spying = await bus.serve("cortex.cmd.acme.*", spy)
    sends = [asyncio.create_task(client.store_fact("a", f"fact {n}")) for n in range(5)]
    async with asyncio.timeout(WAIT):
        await spy.first.wait()  # the client is trying, and nobody answers
    await spying.close()
    async with running_writer(server.url):
        async with asyncio.timeout(WAIT):
            receipts = await asyncio.gather(*sends)
    ids = await ledger_ids(bus)
    assert all(ids[r.id] == 1 for r in receipts)
    assert len({r.seq for r in receipts}) == 5
    sent = {c.id for body in spy.seen for c in _commands(body)}
    assert sent <= {r.id for r in receipts}, "a later try carried other ids than the first"


def _commands(body: bytes) -> list[Command]:
    """The commands one request carries (one, or a batch)."""
    raw = msgspec.json.decode(body)
    items = raw if isinstance(raw, list) else [raw]
    return [decode_command(msgspec.json.encode(item)) for item in items]


class LosesReplies(Bus):
    """A writer's connection that dies right after its first append is stored, before
    the writer can answer: the client's reply is lost."""

    stored = 0
    appended: asyncio.Event

    async def append(
        self, events: Sequence[Outgoing], *, expected_last_seq: int, timeout: float | None = None
    ) -> int:
        seq = await super().append(events, expected_last_seq=expected_last_seq, timeout=timeout)
        if events and not self.stored:
            self.stored = seq
            self.appended.set()
            await self._nc.close()  # the process dies here, as far as NATS can tell
        return seq


async def test_a_lost_reply_is_retried_with_the_same_id_and_gets_the_first_receipt(
    server: EmbeddedServer, bus: Bus, client: Client
) -> None:
    """The writer stores a command and dies before its reply; the client's next try
    (same id) reaches a new writer, which answers with the first receipt: stored once."""
    async with running_writer(server.url):
        await client.register_agent("a")
    dying_bus = await LosesReplies.connect(server.url, creds=server.credentials(Role.WRITER))
    dying_bus.appended = asyncio.Event()
    dying = LedgerWriter(dying_bus)
    await dying.start()
    try:
        send = asyncio.create_task(client.store_fact("a", "said once"))
        async with asyncio.timeout(WAIT):
            await dying_bus.appended.wait()
        async with running_writer(server.url), asyncio.timeout(WAIT):
            receipt = await send
    finally:
        await dying.stop()
    assert receipt.seq == dying_bus.stored
    assert (await ledger_ids(bus))[receipt.id] == 1
    assert await bus.last_seq() == receipt.seq


async def test_refusals_are_final_at_once(server: EmbeddedServer, client: Client) -> None:
    """A refusal (an unknown agent) is not retried: it comes back within one try."""
    async with running_writer(server.url):
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(CortexError) as refused:
            await client.store_fact("nobody", "x")
        assert refused.value.code == "unknown_agent"
        assert loop.time() - began < client.attempt_timeout


async def test_no_writer_until_the_deadline_is_unavailable(server: EmbeddedServer) -> None:
    """With no writer at all, the client tries until its deadline, then says why."""
    async with await Client.connect(server.url, tenant="acme", deadline=0.5) as c:
        with pytest.raises(Unavailable, match=r"no answer from a writer within 0\.5 s") as e:
            await c.register_agent("a")
    assert "no CORTEX writer is serving" in str(e.value)
