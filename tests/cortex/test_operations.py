"""One description of every operation: its JSON Schemas hold for real requests and real replies.

Each query in ``events.operations.QUERIES`` and each command kind gets its
request and result schema generated, and a real request sent to a real node
(or writer) and the real reply must both validate. An op added to the table
without a sample here fails the test: the schema promise covers every op.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest

from cortex.client import Client, new_id
from cortex.errors import QueryFailed
from cortex.testing import running_node
from events.commands import CastVote, DeprecateFact, RegisterAgent, StoreFact
from events.operations import (
    COMMANDS,
    QUERIES,
    GetCheckpoint,
    GetConsensus,
    GetConsistency,
    GetDigest,
    GetFact,
    GetHistory,
    GetProof,
    GetStats,
    GetStatus,
    ListAgents,
    ListFacts,
    PageFacts,
    PageSearch,
    Query,
    Search,
    Stats,
    decode_query,
    schema,
)


def _check(instance: Any, against: dict[str, Any]) -> None:
    jsonschema.validate(instance, against, cls=jsonschema.Draft202012Validator)


@pytest.fixture
async def story(
    server: Any, signing_writer: Any, tmp_path: Path
) -> AsyncIterator[tuple[Client, dict[str, Any]]]:
    """A node over a small signed ledger: two agents, two facts, votes, a deprecation."""
    async with (
        running_node(server.url, tmp_path / "node.db"),
        await Client.connect(server.url, tenant="acme") as client,
    ):
        await client.register_agent("ann")
        first = await client.make_checkpoint()
        await client.register_agent("bob")
        old = await client.store_fact("ann", "the sky is green", tags=["sky"])
        new = await client.store_fact("bob", "the sky is blue", tags=["sky"])
        assert old.fact_id and new.fact_id
        await client.vote("bob", new.fact_id, 1)
        await client.vote("ann", new.fact_id, 1)
        last = await client.deprecate_fact("ann", old.fact_id, successor_id=new.fact_id)
        cp = await client.make_checkpoint()
        yield (
            client,
            {
                "fact": new.fact_id,
                "seq": last.seq,
                "old": first["tree_size"],
                "size": cp["tree_size"],
            },
        )


def _samples(ids: dict[str, Any]) -> dict[str, Query]:
    at = ids["seq"]
    return {
        "get_fact": GetFact(fact_id=ids["fact"], min_seq=at),
        "consensus": GetConsensus(fact_id=ids["fact"]),
        "history": GetHistory(fact_id=ids["fact"]),
        "facts": ListFacts(include_deprecated=True, valid_at=dt.datetime.now(dt.UTC), limit=5),
        "search": Search(text="sky", limit=3),
        "facts_page": PageFacts(include_deprecated=True, limit=1, cursor=f"f{at}"),
        "search_page": PageSearch(text="sky", limit=1, cursor="s1"),
        "agents": ListAgents(),
        "status": GetStatus(),
        "digest": GetDigest(),
        "stats": GetStats(),
        "checkpoint": GetCheckpoint(),
        "proof": GetProof(event=at),
        "consistency": GetConsistency(old_size=ids["old"], new_size=ids["size"]),
    }


async def test_every_query_schema_validates_a_real_request_and_its_real_reply(
    story: tuple[Client, dict[str, Any]],
) -> None:
    client, ids = story
    samples = _samples(ids)
    assert set(samples) == set(QUERIES), "every op in the table needs a sample here"
    for op, query in samples.items():
        schemas = schema(op)
        request = json.loads(msgspec.json.encode(query))
        _check(request, schemas["request"])
        raw = await client.bus.request(f"cortex.query.acme.{op}", msgspec.json.encode(query))
        reply = json.loads(raw)
        assert "error" not in reply, (op, reply)
        _check(reply["result"], schemas["result"])
        # The typed client decodes the same reply into the table's result type.
        typed = await client.ask(query)
        assert msgspec.to_builtins(typed) == reply["result"] or op in ("status", "digest")


async def test_every_command_schema_validates_a_real_command_and_its_receipt(
    client: Client,
) -> None:
    fact = new_id()
    commands = {
        "register_agent": RegisterAgent(id=new_id(), agent_id="ann"),
        "store_fact": StoreFact(id=new_id(), fact_id=fact, agent_id="ann", content="x"),
        "cast_vote": CastVote(id=new_id(), fact_id=fact, agent_id="ann", value=1),
        "deprecate_fact": DeprecateFact(id=new_id(), fact_id=fact, agent_id="ann"),
    }
    assert set(commands) == set(COMMANDS)
    for kind, command in commands.items():
        schemas = schema(kind)
        body = msgspec.json.encode(command)
        _check(json.loads(body), schemas["request"])
        reply = json.loads(await client.bus.request(f"cortex.cmd.acme.{kind}", body))
        _check(reply, schemas["result"])


async def test_the_typed_client_reads_a_new_op_without_client_code(
    story: tuple[Client, dict[str, Any]],
) -> None:
    """``stats`` was added as one Struct, one table line and one service case."""
    client, ids = story
    stats = await client.ask(GetStats(min_seq=ids["seq"]))
    assert stats == Stats(seq=stats.seq, facts=2, deprecated=1, agents=2, votes=2)
    assert stats.seq >= ids["seq"]


def test_bad_queries_are_refused_with_what_was_wrong() -> None:
    with pytest.raises(QueryFailed, match="unknown query 'nope'") as e:
        decode_query("nope", b"{}")
    assert e.value.code == "unknown_op"
    with pytest.raises(QueryFailed, match="limit 0 is not allowed") as e:
        decode_query("search", b'{"text": "x", "limit": 0}')
    assert e.value.code == "invalid_query"
    with pytest.raises(QueryFailed, match=r"no field .tenant.") as e:
        decode_query("agents", b'{"tenant": "other"}')
    with pytest.raises(QueryFailed) as e:
        decode_query("get_fact", b"[")
    assert e.value.code == "malformed"
    # A boolean is not a seq (True used to pass an isinstance(int) check).
    with pytest.raises(QueryFailed, match="min_seq"):
        decode_query("status", b'{"min_seq": true}')
    # Numbers beyond what SQLite holds are refused, not an internal error.
    with pytest.raises(QueryFailed, match="as_of_seq") as e:
        decode_query("facts", b'{"as_of_seq": 18446744073709551615}')
    assert e.value.code == "invalid_query"
