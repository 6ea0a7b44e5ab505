"""Bad input gets a clear error with a stable code, and the ledger stays exactly as it was."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from cortex.client import Client, new_id
from cortex.errors import CommandRejected, InvalidCommand, StateConflict, UnknownReference
from cortex.nats import Bus, command_subject
from cortex.writer import LedgerWriter
from events.limits import MAX_CONTENT_BYTES


async def _raw(bus: Bus, kind: str, payload: bytes, tenant: str = "acme") -> Any:
    return json.loads(await bus.request(command_subject(tenant, kind), payload))


@pytest.fixture
async def fact(client: Client) -> uuid.UUID:
    """A registered agent 'alice' in tenant acme with one stored fact."""
    await client.register_agent("alice")
    receipt = await client.store_fact("alice", "the sky is blue")
    assert receipt.fact_id is not None
    return receipt.fact_id


def _vote(fact: uuid.UUID, **overrides: Any) -> bytes:
    body = {"id": str(new_id()), "fact_id": str(fact), "agent_id": "alice", "value": 1}
    body.update(overrides)
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("kind", "payload", "code", "says"),
    [
        ("cast_vote", b"\xff\xfe not json", "malformed", "JSON"),
        ("cast_vote", b"[1, 2", "malformed", "JSON"),
        ("drop_table", b"{}", "unknown_kind", "drop_table"),
        ("batch", b'{"not": "a list"}', "malformed", "array"),
        ("batch", b"[1]", "malformed", "object"),
    ],
)
async def test_malformed_requests_are_refused_with_a_code(
    bus: Bus, fact: uuid.UUID, kind: str, payload: bytes, code: str, says: str
) -> None:
    """Garbage, unknown kinds and broken batches: an error reply, nothing appended."""
    before = await bus.last_seq()
    reply = await _raw(bus, kind, payload)
    if isinstance(reply, list):
        reply = reply[0]
    assert reply["error"]["code"] == code
    assert says in reply["error"]["message"]
    assert await bus.last_seq() == before


@pytest.mark.parametrize(
    ("overrides", "code", "says"),
    [
        ({"value": 2}, "invalid_vote", "+1, -1 or 0"),
        ({"value": "up"}, "invalid_vote", "value 'up' is not allowed"),
        ({"value": None}, "invalid_vote", "value null is not allowed"),
        ({"agent_id": 7}, "invalid_field", "agent_id 7 is not allowed: it must be a string"),
        ({"fact_id": "not-a-uuid"}, "invalid_field", "fact_id 'not-a-uuid' is not allowed"),
        ({"id": None}, "invalid_field", "id null is not allowed"),
        ({"extra": 1}, "invalid_field", "there is no field 'extra'"),
        ({"agent_id": "mallory"}, "unknown_agent", "mallory"),
        ({"fact_id": str(uuid.UUID(int=42))}, "unknown_fact", "no fact"),
    ],
)
async def test_bad_votes_are_refused_and_say_why(
    bus: Bus, fact: uuid.UUID, overrides: dict[str, Any], code: str, says: str
) -> None:
    before = await bus.last_seq()
    reply = await _raw(bus, "cast_vote", _vote(fact, **overrides))
    assert reply["error"]["code"] == code, reply
    assert says in reply["error"]["message"]
    assert await bus.last_seq() == before


async def test_a_missing_field_is_named(bus: Bus, fact: uuid.UUID) -> None:
    body = json.dumps({"id": str(new_id()), "agent_id": "alice", "fact_id": str(new_id())}).encode()
    reply = await _raw(bus, "store_fact", body)
    assert reply["error"] == {
        "code": "invalid_field",
        "message": "field 'content' is required but was not sent",
    }


async def test_content_over_the_limit_is_too_large(
    client: Client, bus: Bus, fact: uuid.UUID
) -> None:
    """64 KiB of content is the documented limit: one byte more is refused, the limit is not."""
    before = await bus.last_seq()
    with pytest.raises(InvalidCommand, match=f"limit is {MAX_CONTENT_BYTES} bytes") as info:
        await client.store_fact("alice", "x" * (MAX_CONTENT_BYTES + 1))
    assert info.value.code == "too_large"
    assert await bus.last_seq() == before
    ok = await client.store_fact("alice", "é" * (MAX_CONTENT_BYTES // 2))
    assert ok.seq == before + 1


async def test_a_vote_on_another_tenants_fact_looks_like_an_unknown_fact(
    server: Any, writer: LedgerWriter, bus: Bus, fact: uuid.UUID
) -> None:
    """Tenant isolation: tenant 'other' cannot vote on, or even learn of, acme's fact."""
    async with await Client.connect(server.url, tenant="other") as other:
        await other.register_agent("alice")
        before = await bus.last_seq()
        with pytest.raises(UnknownReference, match=r"no fact .* in tenant 'other'") as info:
            await other.vote("alice", fact, 1)
        assert info.value.code == "unknown_fact"
        with pytest.raises(UnknownReference):
            await other.deprecate_fact("alice", fact)
    assert await bus.last_seq() == before


async def test_an_unregistered_agent_cannot_write(
    client: Client, bus: Bus, fact: uuid.UUID
) -> None:
    before = await bus.last_seq()
    with pytest.raises(UnknownReference, match="'eve' is not registered") as info:
        await client.store_fact("eve", "I was here")
    assert info.value.code == "unknown_agent"
    with pytest.raises(UnknownReference):
        await client.vote("eve", fact, -1)
    assert await bus.last_seq() == before


async def test_conflicts_with_the_ledger_are_refused(
    client: Client, bus: Bus, fact: uuid.UUID
) -> None:
    """Registering twice, re-storing a fact id, deprecating twice: each refused by code."""
    with pytest.raises(StateConflict) as registered:
        await client.register_agent("alice")
    assert registered.value.code == "agent_exists"
    with pytest.raises(StateConflict) as stored:
        await client.store_fact("alice", "again", fact_id=fact)
    assert stored.value.code == "fact_exists"
    await client.deprecate_fact("alice", fact, reason="outdated")
    before = await bus.last_seq()
    with pytest.raises(StateConflict) as deprecated:
        await client.deprecate_fact("alice", fact)
    assert deprecated.value.code == "already_deprecated"
    assert await bus.last_seq() == before


async def test_bad_tenant_and_field_constraints(client: Client, bus: Bus, fact: uuid.UUID) -> None:
    with pytest.raises(
        InvalidCommand, match=r"confidence 1\.5 is not allowed: it must be a number at most 1\.0"
    ):
        await client.store_fact("alice", "sure?", confidence=1.5)
    with pytest.raises(InvalidCommand, match="at most 32 items"):
        await client.store_fact("alice", "tagged", tags=[str(i) for i in range(33)])
    reply = await _raw(
        bus,
        "register_agent",
        json.dumps({"id": str(new_id()), "agent_id": "x"}).encode(),
        tenant="a*b",
    )
    assert reply["error"]["code"] == "invalid_field"


async def test_a_client_for_a_tenant_no_subject_can_carry_is_refused_at_once(bus: Bus) -> None:
    """The client judges the tenant by the same rule as the writer, before any request."""
    with pytest.raises(InvalidCommand, match="must be 1-64") as bad:
        Client(bus, tenant="acme.other")
    assert bad.value.code == "invalid_field"
    with pytest.raises(InvalidCommand, match="reserved") as reserved:
        Client(bus, tenant="_cortex")
    assert reserved.value.code == "reserved_tenant"


async def test_one_bad_command_in_a_batch_does_not_sink_the_others(
    bus: Bus, fact: uuid.UUID
) -> None:
    """Each command in a batch gets its own receipt or its own error."""
    before = await bus.last_seq()
    good = json.loads(_vote(fact))
    bad = json.loads(_vote(fact, value=5))
    unknown = {"kind": "nope", "id": str(new_id())}
    batch = [{"kind": "cast_vote", **good}, {"kind": "cast_vote", **bad}, unknown]
    replies = await _raw(bus, "batch", json.dumps(batch).encode())
    assert replies[0]["seq"] == before + 1
    assert replies[1]["error"]["code"] == "invalid_vote"
    assert replies[2]["error"]["code"] == "unknown_kind"
    assert await bus.last_seq() == before + 1


async def test_client_errors_are_one_hierarchy(client: Client, fact: uuid.UUID) -> None:
    """Scripts can catch CommandRejected for every refusal."""
    with pytest.raises(CommandRejected):
        await client.vote("alice", fact, 3)


async def test_json_nested_too_deeply_is_malformed_not_silence(bus: Bus, fact: uuid.UUID) -> None:
    """A meta nested 100,000 deep used to blow msgspec's stack: no reply at all."""
    before = await bus.last_seq()
    deep = b"[" * 100_000 + b"]" * 100_000
    body = (
        b'{"id": "%s", "fact_id": "%s", "agent_id": "alice", "content": "x", "meta": {"a": %s}}'
        % (str(new_id()).encode(), str(new_id()).encode(), deep)
    )
    reply = await _raw(bus, "store_fact", body)
    assert reply["error"]["code"] == "malformed"
    assert "nest" in reply["error"]["message"]
    batch = b'[{"kind": "store_fact", ' + body[1:] + b"]"
    whole = await _raw(bus, "batch", batch)  # too deep even to split into entries
    assert whole["error"]["code"] == "malformed"
    assert await bus.last_seq() == before


async def test_only_the_author_deprecates_without_a_reason(
    client: Client, bus: Bus, fact: uuid.UUID
) -> None:
    """Another agent may deprecate alice's fact only by saying why; the ledger records who."""
    await client.register_agent("bob")
    before = await bus.last_seq()
    with pytest.raises(InvalidCommand, match="'alice'") as bare:
        await client.deprecate_fact("bob", fact)
    assert bare.value.code == "reason_required"
    assert await bus.last_seq() == before
    receipt = await client.deprecate_fact("bob", fact, reason="superseded by the 2025 survey")
    assert receipt.seq == before + 1
    own = await client.store_fact("alice", "mine to withdraw")
    assert own.fact_id is not None
    await client.deprecate_fact("alice", own.fact_id)  # the author needs no reason


@pytest.mark.parametrize("kind", ["batch", "atomic"])
async def test_an_empty_batch_or_atomic_request_is_refused(
    bus: Bus, writer: LedgerWriter, kind: str
) -> None:
    before = await bus.last_seq()
    reply = await _raw(bus, kind, b"[]")
    assert reply["error"]["code"] == "invalid_field"
    assert "at least one command" in reply["error"]["message"]
    assert await bus.last_seq() == before
