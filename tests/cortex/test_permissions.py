"""The trust boundary, attacked with real connections: nats-server refuses each attempt of
issue 10's adversary, and nothing is appended, answered falsely or leaked.

Two tenants, ``a`` and ``b``, each with its agent credentials; a writer and a node
running as themselves. The attacker holds agent ``a``'s credentials (or a node's,
or none) and a raw nats-py connection: no CORTEX client in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from cortex.client import Client, new_id
from cortex.errors import Forbidden
from cortex.nats import STREAM, Bus, Credentials, EmbeddedServer, LocalAuth, Role, command_subject
from cortex.node import QUEUE_GROUP as NODE_QUEUE
from cortex.runtime import Runtime
from cortex.writer import QUEUE_GROUP as WRITER_QUEUE
from events.codec import encode
from events.commands import CastVote, RegisterAgent

WAIT = 5.0


@dataclass
class Secured:
    server: EmbeddedServer
    a: Credentials
    b: Credentials
    #: Agent b's fact, voted on by b's agent "bob".
    fact_b: str = ""


@pytest.fixture
async def secured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Secured]:
    """A server with agent credentials for tenants a and b, a writer and a node."""
    data = tmp_path / "data"
    auth = LocalAuth(data)
    a, b = auth.add_agent("a"), auth.add_agent("b")
    async with Runtime(name="test") as runtime:
        await runtime.serve(data, port=-1)
        assert runtime.server is not None
        monkeypatch.setenv("CORTEX_CREDS", str(runtime.server.admin_creds))
        await runtime.add_writer()
        await runtime.add_node(data / "projection.db")
        async with await Client.connect(runtime.url, creds=b) as client:
            await client.register_agent("bob")
            fact = await client.store_fact("bob", "b's own fact")
        yield Secured(runtime.server, a, b, str(fact.fact_id))


@dataclass
class Raw:
    """A raw nats-py connection and what the server said to it."""

    nc: NatsClient
    errors: list[str] = field(default_factory=list)
    received: list[Msg] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def settle(self) -> None:
        """A round trip to the server."""
        await self.nc.flush(timeout=int(WAIT))

    async def refused(self, what: str) -> bool:
        """Whether the server refused ``what``: waits (bounded) for its -ERR, which
        nats-server sends asynchronously (at times just after the next pong)."""
        want = what.lower()
        async with asyncio.timeout(WAIT):
            while not any("permissions violation" in e and want in e for e in self.errors):
                self.arrived.clear()
                await self.arrived.wait()
        return True

    async def keep(self, msg: Msg) -> None:
        self.received.append(msg)


@contextlib.asynccontextmanager
async def raw(url: str, creds: Credentials | None) -> AsyncIterator[Raw]:
    errors: list[str] = []
    arrived = asyncio.Event()

    async def on_error(e: Exception) -> None:
        errors.append(str(e))
        arrived.set()

    auth = (
        {} if creds is None else {"nkeys_seed_str": creds.seed, "inbox_prefix": creds.inbox_prefix}
    )
    nc = await nats.connect(
        url, error_cb=on_error, allow_reconnect=False, connect_timeout=WAIT, **auth
    )
    try:
        yield Raw(nc, errors, arrived=arrived)
    finally:
        await nc.close()


async def _last_seq(server: EmbeddedServer) -> int:
    bus = await Bus.connect(server.url, creds=server.credentials(Role.ADMIN))
    try:
        return await bus.last_seq()
    finally:
        await bus.close()


async def test_an_anonymous_connection_is_refused(
    secured: Secured, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No credentials, or credentials the server never issued: the connection is refused,
    as CORTEX's Forbidden ``not_authorized``, and the error shows no secret."""
    monkeypatch.delenv("CORTEX_CREDS")
    with pytest.raises(Forbidden) as anonymous:
        await Bus.connect(secured.server.url, timeout=WAIT)
    assert anonymous.value.code == "not_authorized"
    stranger = Credentials.generate(Role.ADMIN)
    with pytest.raises(Forbidden) as unknown:
        await Bus.connect(secured.server.url, creds=stranger, timeout=WAIT)
    assert unknown.value.code == "not_authorized"
    assert stranger.seed not in str(unknown.value)
    with pytest.raises((nats.errors.Error, OSError)):
        async with raw(secured.server.url, None):
            pass


async def test_an_agent_cannot_read_the_ledger_or_listen_to_commands(secured: Secured) -> None:
    """Subscriptions to ledger and command subjects are refused, and a write made
    meanwhile reaches none of them."""
    async with raw(secured.server.url, secured.a) as attacker:
        for subject in ("cortex.ledger.>", "cortex.cmd.>", "cortex.cmd.b.*", "cortex.query.>"):
            await attacker.nc.subscribe(subject, cb=attacker.keep)
        await attacker.settle()
        async with await Client.connect(secured.server.url, creds=secured.b) as b:
            await b.store_fact("bob", "a secret of b")
        await attacker.settle()
        for subject in ("cortex.ledger.>", "cortex.cmd.>", "cortex.cmd.b.*", "cortex.query.>"):
            assert await attacker.refused(f'subscription to "{subject}"'), attacker.errors
        assert attacker.received == []


async def test_an_agent_cannot_join_the_writers_or_the_query_group(secured: Secured) -> None:
    """A rogue member of the writer's queue group once took 25 of 40 commands with fake
    receipts. Now the server refuses the membership and the writer answers them all."""
    async with raw(secured.server.url, secured.a) as attacker:
        await attacker.nc.subscribe("cortex.cmd.*.*", queue=WRITER_QUEUE, cb=attacker.keep)
        await attacker.nc.subscribe("cortex.query.*.*", queue=NODE_QUEUE, cb=attacker.keep)
        await attacker.settle()
        assert await attacker.refused('subscription to "cortex.cmd.*.*"'), attacker.errors
        assert await attacker.refused('subscription to "cortex.query.*.*"'), attacker.errors
        before = await _last_seq(secured.server)
        async with await Client.connect(secured.server.url, creds=secured.b) as b:
            receipts = await asyncio.gather(*(b.store_fact("bob", f"{i}") for i in range(40)))
            answers = [await b.agents() for _ in range(5)]
        assert sorted(r.seq for r in receipts) == list(range(before + 1, before + 41))
        assert all([a["agent_id"] for a in page] == ["bob"] for page in answers)
        assert attacker.received == []


async def test_no_one_but_the_writer_may_serve_commands(secured: Secured) -> None:
    """CORTEX's own serve() says so too: a node's credentials cannot answer commands,
    an agent's cannot answer queries."""
    node = await Bus.connect(secured.server.url, creds=secured.server.credentials(Role.NODE))
    agent = await Bus.connect(secured.server.url, creds=secured.a)
    try:

        async def handler(msg: object) -> None:  # pragma: no cover - never called
            raise AssertionError("served")

        with pytest.raises(Forbidden, match=r"cortex\.cmd"):
            await node.serve("cortex.cmd.*.*", handler, queue=WRITER_QUEUE)
        with pytest.raises(Forbidden, match=r"cortex\.query"):
            await agent.serve("cortex.query.*.*", handler, queue=NODE_QUEUE)
    finally:
        await node.close()
        await agent.close()


async def test_an_agent_cannot_write_or_ask_as_another_tenant(secured: Secured) -> None:
    """Agent a voting as b's agent on b's fact: the client refuses the tenant, a raw
    publish is refused by the server (at once, as Forbidden, through CORTEX's bus),
    and nothing is appended."""
    before = await _last_seq(secured.server)
    with pytest.raises(Forbidden) as wrong:
        await Client.connect(secured.server.url, tenant="b", creds=secured.a)
    assert wrong.value.code == "wrong_tenant"
    vote = encode(CastVote(id=new_id(), fact_id=secured.fact_b, agent_id="bob", value=-1))  # type: ignore[arg-type]
    bus = await Bus.connect(secured.server.url, creds=secured.a)
    try:
        async with asyncio.timeout(WAIT / 2):  # refused now, not after the request's timeout
            with pytest.raises(Forbidden, match=r"cortex\.cmd\.b\.cast_vote"):
                await bus.request(command_subject("b", "cast_vote"), vote, timeout=WAIT * 2)
            with pytest.raises(Forbidden):
                await bus.request("cortex.query.b.facts", b"{}", timeout=WAIT * 2)
    finally:
        await bus.close()
    async with raw(secured.server.url, secured.a) as attacker:
        await attacker.nc.publish(command_subject("b", "cast_vote"), vote, reply="_INBOX.x")
        await attacker.settle()
        assert await attacker.refused('publish to "cortex.cmd.b.cast_vote"')
    assert await _last_seq(secured.server) == before


async def test_an_agent_cannot_append_to_the_ledger_nor_bounce_a_reply_onto_it(
    secured: Secured,
) -> None:
    """A raw publish to a ledger subject once broke the chain for good. It is refused;
    so is a command whose reply subject names a ledger subject (the writer, which may
    publish there, would have appended its answer)."""
    before = await _last_seq(secured.server)
    async with raw(secured.server.url, secured.a) as attacker:
        await attacker.nc.publish("cortex.ledger.a.fact_stored", b"{}")
        bounced = encode(RegisterAgent(id=new_id(), agent_id="mallory"))
        await attacker.nc.publish(
            command_subject("a", "register_agent"), bounced, reply="cortex.ledger.a.fact_stored"
        )
        await attacker.settle()
        assert await attacker.refused('publish to "cortex.ledger.a.fact_stored"')
    async with await Client.connect(secured.server.url, creds=secured.a) as a:
        # The writer has taken every command sent before this one (in order, on one
        # subscription): the bounced one appended nothing, this one appends one event.
        receipt = await a.register_agent("alice")
    assert receipt.seq == before + 1


@pytest.mark.parametrize("role", ["agent", "node", "writer"])
async def test_only_an_admin_may_change_or_delete_the_stream(secured: Secured, role: str) -> None:
    """STREAM.UPDATE (max_age 1 s once erased every event), DELETE, PURGE, MSG.DELETE:
    refused to everyone but the admin; the stream is unchanged."""
    creds = secured.a if role == "agent" else secured.server.credentials(Role(role))
    async with raw(secured.server.url, secured.server.credentials(Role.ADMIN)) as admin:
        config = (await admin.nc.jetstream().stream_info(STREAM)).config
        before = (await admin.nc.jetstream().stream_info(STREAM)).state.messages
    update = json.dumps({**dataclasses.asdict(config), "max_age": 1_000_000_000}).encode()
    async with raw(secured.server.url, creds) as attacker:
        for subject, body in (
            (f"$JS.API.STREAM.UPDATE.{STREAM}", update),
            (f"$JS.API.STREAM.DELETE.{STREAM}", b""),
            (f"$JS.API.STREAM.PURGE.{STREAM}", b"{}"),
            (f"$JS.API.STREAM.MSG.DELETE.{STREAM}", b'{"seq": 1}'),
        ):
            await attacker.nc.publish(subject, body, reply=attacker.nc.new_inbox())
        await attacker.settle()
        for verb in ("update", "delete", "purge", "msg.delete"):
            assert await attacker.refused(f'publish to "$js.api.stream.{verb}.'), attacker.errors
    async with raw(secured.server.url, secured.server.credentials(Role.ADMIN)) as admin:
        info = await admin.nc.jetstream().stream_info(STREAM)
    assert info.config == config
    assert info.state.messages == before


async def test_an_agent_cannot_use_jetstream_or_another_agents_inbox(secured: Secured) -> None:
    """No stream info, no consumer on the ledger, no listening to b's replies."""
    async with raw(secured.server.url, secured.a) as attacker:
        await attacker.nc.publish(f"$JS.API.STREAM.INFO.{STREAM}", b"", reply="_INBOX.x")
        await attacker.nc.publish(f"$JS.API.CONSUMER.CREATE.{STREAM}", b"{}", reply="_INBOX.x")
        await attacker.nc.subscribe(f"{secured.b.inbox_prefix}.>", cb=attacker.keep)
        await attacker.settle()
        assert await attacker.refused(f'publish to "$js.api.stream.info.{STREAM.lower()}"')
        assert await attacker.refused(f'publish to "$js.api.consumer.create.{STREAM.lower()}"')
        assert await attacker.refused(f'subscription to "{secured.b.inbox_prefix.lower()}.>"')
        async with await Client.connect(secured.server.url, creds=secured.b) as b:
            await b.agents()
        await attacker.settle()
        assert attacker.received == []


async def test_an_agent_works_in_its_own_tenant(secured: Secured) -> None:
    """The same credentials do all an agent needs: write, read, through the client,
    which takes its tenant from them."""
    async with await Client.connect(secured.server.url, creds=secured.a) as a:
        assert a.tenant == "a"
        await a.register_agent("alice")
        fact = await a.store_fact("alice", "a's fact")
        assert fact.fact_id is not None
        await a.vote("alice", fact.fact_id, 1)
        assert [f["content"] for f in await a.facts(min_seq=fact.seq)] == ["a's fact"]
