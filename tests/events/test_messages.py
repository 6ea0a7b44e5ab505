"""Decoding errors say what was sent and what is allowed, never msgspec's own words."""

from __future__ import annotations

import msgspec
import pytest

from events.commands import AnyCommand, StoreFact
from events.messages import explain
from events.operations import Search

ID = "0190a000-0000-7000-8000-000000000001"


def _fact(**fields: object) -> bytes:
    return msgspec.json.encode(
        {"id": ID, "fact_id": ID, "agent_id": "ada", "content": "x", **fields}
    )


def _explained(data: bytes, type_: object = StoreFact) -> str:
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.json.decode(data, type=type_)
    return explain(caught.value, data)


@pytest.mark.parametrize(
    ("data", "want"),
    [
        (
            _fact(agent_id="bad name!"),
            "agent_id 'bad name!' is not allowed: use only letters, digits and _ . @ : -",
        ),
        (_fact(agent_id="a" * 70), "agent_id 'aaaa"),
        (_fact(agent_id=5), "agent_id 5 is not allowed: it must be a string, not a whole number"),
        (_fact(confidence=2), "confidence 2 is not allowed: it must be a number at most 1.0"),
        (_fact(tags=["a", ""]), "tags[1] '' is not allowed: it must not be empty"),
        (
            _fact(valid_from="2020-01-01T00:00:00"),
            "valid_from '2020-01-01T00:00:00' is not allowed: it needs a time zone",
        ),
        (_fact(id="x"), "id 'x' is not allowed: it must be a UUID"),
        (_fact(bogus=1), "there is no field 'bogus' (a typo?)"),
        (
            msgspec.json.encode({"id": ID, "fact_id": ID, "agent_id": "a"}),
            "field 'content' is required but was not sent",
        ),
    ],
)
def test_command_errors_name_the_field_the_value_and_the_rule(data: bytes, want: str) -> None:
    text = _explained(data)
    assert want in text
    assert "Expected" not in text
    assert "$." not in text
    assert "regex" not in text


def test_a_batch_entry_is_named_by_its_number() -> None:
    data = msgspec.json.encode([{"kind": "register_agent", "id": ID, "agent_id": "no way"}])
    text = _explained(data, list[AnyCommand])
    assert text.startswith("command 1: agent_id 'no way' is not allowed")


def test_query_errors_too() -> None:
    text = _explained(b'{"text": "x", "limit": 0}', Search)
    assert text == "limit 0 is not allowed: it must be a whole number at least 1"
