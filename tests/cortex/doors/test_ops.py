"""Every door operation, end to end through ``run`` against a real server, writer and node."""

from __future__ import annotations

import json
import uuid
from typing import Any

import jsonschema
import msgspec
import pytest

from cortex.core.keys import create_key, public_hex
from cortex.doors import BY_NAME, OPS, Principal, decode, input_schema, openapi, output_schema, run
from cortex.doors.results import (
    AgentList,
    FactView,
    SearchResult,
    StatusResult,
    VerifyDoc,
    WriteResult,
)
from cortex.doors.testing import Doors
from cortex.errors import CortexError
from events.limits import MAX_CONTENT_BYTES
from events.proof import check_proof


async def _run(doors: Doors, name: str, who: Principal, args: dict[str, Any] | bytes) -> Any:
    op = BY_NAME[name]
    result = await run(op, args, who, doors.backend)
    assert isinstance(result, op.result)
    # What a door sends is what its output schema promises (the MCP client checks this).
    jsonschema.validate(msgspec.to_builtins(result), output_schema(op))
    return result


async def _seq(doors: Doors, who: Principal) -> int:
    status: StatusResult = await _run(doors, "status", who, {})
    return status.node.seq


async def test_every_operation_runs_end_to_end(doors: Doors) -> None:
    """store → search finds it → get with consensus and history → a vote moves the
    consensus → edit replaces it atomically → deprecate → agents → status → verify,
    whose proof document checks offline."""
    ann, bob = doors.principal("lab", "ann"), doors.principal("lab", "bob")
    stored: WriteResult = await _run(
        doors,
        "store_fact",
        ann,
        {"content": "the cache is invalidated by the projector", "tags": ["cache", "design"]},
    )
    assert stored.fact_id is not None
    found: SearchResult = await _run(
        doors, "search_facts", bob, {"text": "cache projector", "min_seq": stored.seq}
    )
    assert [f.fact_id for f in found.items] == [stored.fact_id]
    listed: SearchResult = await _run(
        doors, "search_facts", bob, {"tags": ["design"], "agent": "ann", "min_seq": stored.seq}
    )
    assert [f.fact_id for f in listed.items] == [stored.fact_id]
    assert (await _run(doors, "search_facts", bob, {"tags": ["nope"]})).items == []

    view: FactView = await _run(doors, "get_fact", bob, {"fact_id": stored.fact_id})
    assert view.fact is not None and view.fact.agent_id == "ann"
    assert view.fact.consensus.votes_for == 0
    assert view.history is not None and [e.kind for e in view.history.events] == ["fact_stored"]

    vote: WriteResult = await _run(doors, "vote", bob, {"fact_id": stored.fact_id, "value": 1})
    after: FactView = await _run(
        doors, "get_fact", ann, {"fact_id": stored.fact_id, "min_seq": vote.seq, "history": False}
    )
    assert after.fact is not None and after.history is None
    assert after.fact.consensus.votes_for == 1
    assert after.fact.consensus.score != view.fact.consensus.score

    edited: WriteResult = await _run(
        doors,
        "edit_fact",
        ann,
        {"fact_id": stored.fact_id, "content": "the projector invalidates caches", "reason": "x"},
    )
    old: FactView = await _run(
        doors, "get_fact", ann, {"fact_id": stored.fact_id, "min_seq": edited.seq}
    )
    assert old.fact is not None and old.fact.deprecated is not None
    assert old.fact.deprecated.successor_id == edited.fact_id

    gone: WriteResult = await _run(
        doors, "deprecate_fact", ann, {"fact_id": edited.fact_id, "reason": "obsolete"}
    )
    current: SearchResult = await _run(doors, "search_facts", bob, {"min_seq": gone.seq})
    assert current.items == []
    every: SearchResult = await _run(
        doors, "search_facts", bob, {"include_deprecated": True, "limit": 1}
    )
    assert len(every.items) == 1 and every.next_cursor is not None

    agents: AgentList = await _run(doors, "list_agents", bob, {"min_seq": gone.seq})
    assert {a.agent_id for a in agents.agents} == {"ann", "bob"}
    status: StatusResult = await _run(doors, "status", bob, {"min_seq": gone.seq})
    assert (status.tenant, status.agent, status.stats.facts) == ("lab", "bob", 2)

    await doors.checkpoint("lab")
    doc: VerifyDoc = await _run(doors, "cortex_ledger_verify", bob, {"fact_id": stored.fact_id})
    assert doc.ok and doc.problems == [] and doc.seq == stored.seq
    offline = json.loads(json.dumps(msgspec.to_builtins(doc.proof)))  # a file, as saved
    assert check_proof(offline).ok
    by_receipt: VerifyDoc = await _run(doors, "verify", ann, {"event": vote.id})
    assert by_receipt.ok and by_receipt.seq == vote.seq


async def test_agent_id_cannot_be_spoofed(doors: Doors) -> None:
    """The acting agent is the token's: naming another is forbidden, naming itself is fine."""
    ann = doors.principal("lab", "ann")
    with pytest.raises(CortexError) as e:
        await run(OPS["store_fact"], {"content": "x", "agent_id": "bob"}, ann, doors.backend)
    assert e.value.code == "forbidden"
    ok: WriteResult = await _run(doors, "store_fact", ann, {"content": "x", "agent_id": "ann"})
    view: FactView = await _run(doors, "get_fact", ann, {"fact_id": ok.fact_id, "min_seq": ok.seq})
    assert view.fact is not None and view.fact.agent_id == "ann"


BAD: list[tuple[str, dict[str, Any] | bytes, str]] = [
    ("store_fact", {"content": ""}, "invalid_field"),  # as the writer/CLI: content is empty
    ("store_fact", {"content": "x" * (MAX_CONTENT_BYTES + 1)}, "too_large"),
    ("store_fact", {"content": "x", "confidence": 2}, "invalid_field"),
    ("store_fact", {"content": "x", "colour": "red"}, "invalid_field"),
    ("store_fact", {"content": "x", "valid_from": "yesterday"}, "invalid_field"),
    ("store_fact", b"{not json", "malformed"),
    ("store_fact", b"[1, 2]", "malformed"),
    ("vote", {"fact_id": str(uuid.uuid4()), "value": 5}, "invalid_vote"),
    ("vote", {"fact_id": "not-a-uuid", "value": 1}, "invalid_field"),
    ("vote", {"fact_id": str(uuid.uuid4()), "value": 1}, "unknown_fact"),
    ("get_fact", {}, "invalid_query"),
    ("search_facts", {"limit": 0}, "invalid_query"),
    ("verify", {}, "invalid_query"),
    ("verify", {"fact_id": str(uuid.uuid4())}, "not_found"),
]


async def test_bad_input_gets_the_cli_codes_and_appends_nothing(doors: Doors) -> None:
    ann = doors.principal("lab", "ann")
    first: WriteResult = await _run(doors, "store_fact", ann, {"content": "a first fact"})
    before = await _seq(doors, ann)
    assert before == first.seq
    for name, args, code in BAD:
        with pytest.raises(CortexError) as e:
            await run(OPS[name], args, ann, doors.backend)
        assert e.value.code == code, (name, args, e.value.message)
    assert await _seq(doors, ann) == before


def test_every_schema_is_an_object_at_its_root_and_openapi_has_every_route() -> None:
    doc = openapi()
    for op in OPS.values():
        for schema in (input_schema(op), output_schema(op)):
            assert schema["type"] == "object"
            jsonschema.Draft202012Validator.check_schema(schema)
        method, path = op.http
        assert doc["paths"][path][method.lower()]["operationId"] == op.name
    assert "agent_id" not in json.dumps([input_schema(op) for op in OPS.values()])


def test_query_string_values_are_converted() -> None:
    """An HTTP query string gives strings; ``decode`` converts them as JSON would."""
    who = Principal("lab", "ann")
    request = decode(OPS["search_facts"], {"limit": "5", "include_deprecated": "true"}, who)
    assert request == OPS["search_facts"].request(limit=5, include_deprecated=True)


async def test_a_principal_with_a_key_registers_with_it_and_signs(
    doors: Doors, tmp_path: Any
) -> None:
    """A token with a key file: the agent is registered with its public key on its first
    write, and every command after is signed with it (or the writer would refuse it)."""
    key = create_key(tmp_path / "ann.key")
    ann = doors.principal("lab", "ann", tmp_path / "ann.key")
    first: WriteResult = await _run(doors, "store_fact", ann, {"content": "signed"})
    vote: WriteResult = await _run(doors, "vote", ann, {"fact_id": first.fact_id, "value": 1})
    agents: AgentList = await _run(doors, "list_agents", ann, {"min_seq": vote.seq})
    [agent] = agents.agents
    assert agent.public_key == public_hex(key)
