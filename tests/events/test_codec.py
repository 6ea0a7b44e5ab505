"""Canonical encoding: the bytes the chain hashes must never depend on who wrote them."""

from __future__ import annotations

import datetime as dt
import uuid

import msgspec
import pytest

from events.codec import decode_command, decode_event, encode
from events.commands import (
    CastVote,
    Command,
    DeprecateFact,
    RegisterAgent,
    StoreFact,
    to_command,
    to_event,
)
from events.model import SYSTEM_TENANT, FactStored, VoteCast, WriterKeyAdded

EVENT_ID = uuid.UUID("01900000-0000-7000-8000-000000000001")
FACT_ID = uuid.UUID("01900000-0000-7000-8000-000000000002")


def test_encoding_is_compact_sorted_utf8_and_stable() -> None:
    """A known event encodes to known bytes: sorted keys, no spaces, raw UTF-8, every field."""
    event = VoteCast(
        id=EVENT_ID, tenant="acme", ts=1, fact_id=FACT_ID, agent_id="bob", value=-1, reason="né"
    )
    assert encode(event) == (
        b'{"agent_id":"bob","fact_id":"01900000-0000-7000-8000-000000000002",'
        b'"id":"01900000-0000-7000-8000-000000000001","kind":"vote_cast",'
        b'"reason":"n\xc3\xa9","signature":null,"tenant":"acme","ts":1,"v":1,"value":-1}'
    )


def test_meta_keys_are_sorted_whatever_the_insertion_order() -> None:
    """Two equal meta objects built in different orders give the same bytes."""
    a = FactStored(
        id=EVENT_ID,
        tenant="t",
        ts=0,
        fact_id=FACT_ID,
        agent_id="a",
        content="c",
        meta={"b": 1, "a": {"y": 2, "x": 1}},
    )
    b = FactStored(
        id=EVENT_ID,
        tenant="t",
        ts=0,
        fact_id=FACT_ID,
        agent_id="a",
        content="c",
        meta={"a": {"x": 1, "y": 2}, "b": 1},
    )
    assert encode(a) == encode(b)


def test_world_times_are_stored_in_utc() -> None:
    """The same instant written with different offsets becomes the same event bytes."""
    paris = dt.datetime(2025, 1, 1, 13, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    utc = dt.datetime(2025, 1, 1, 12, 0, tzinfo=dt.UTC)

    def make(when: dt.datetime) -> StoreFact:
        return StoreFact(id=EVENT_ID, fact_id=FACT_ID, agent_id="a", content="c", valid_from=when)

    assert encode(to_event(make(paris), tenant="t", ts=5)) == encode(
        to_event(make(utc), tenant="t", ts=5)
    )
    assert b'"valid_from":"2025-01-01T12:00:00Z"' in encode(to_event(make(paris), tenant="t", ts=5))


def test_events_round_trip_through_the_union() -> None:
    """Stored bytes decode back to an equal event of the right type."""
    event = to_event(
        StoreFact(id=EVENT_ID, fact_id=FACT_ID, agent_id="a", content="c", tags=("x",)),
        tenant="t",
        ts=9,
    )
    assert decode_event(encode(event)) == event


def test_an_older_event_without_newer_fields_still_decodes() -> None:
    """Schema evolution: fields with defaults may be absent from old events."""
    old = (
        b'{"kind":"vote_cast","id":"01900000-0000-7000-8000-000000000001","tenant":"t","ts":1,'
        b'"fact_id":"01900000-0000-7000-8000-000000000002","agent_id":"a","value":1}'
    )
    event = decode_event(old)
    assert isinstance(event, VoteCast)
    assert event.reason == ""
    assert event.v == 1


def test_events_tolerate_unknown_fields_but_commands_refuse_them() -> None:
    """A newer writer's extra field must not break old readers; a client's typo must not pass."""
    event = (
        b'{"kind":"vote_cast","id":"01900000-0000-7000-8000-000000000001","tenant":"t","ts":1,'
        b'"fact_id":"01900000-0000-7000-8000-000000000002","agent_id":"a","value":1,"later":true}'
    )
    assert isinstance(decode_event(event), VoteCast)
    command = (
        b'{"kind":"cast_vote","id":"01900000-0000-7000-8000-000000000001",'
        b'"fact_id":"01900000-0000-7000-8000-000000000002","agent_id":"a","value":1,"valeu":1}'
    )
    with pytest.raises(msgspec.ValidationError, match="unknown field `valeu`"):
        decode_command(command)


@pytest.mark.parametrize(
    "command",
    [
        RegisterAgent(id=uuid.uuid4(), agent_id="ann", public_key="ab" * 32),
        StoreFact(
            id=uuid.uuid4(),
            fact_id=uuid.uuid4(),
            agent_id="ann",
            content="x",
            tags=("a", "b"),
            confidence=0.5,
            source="s",
            meta={"k": [1, 2]},
            valid_from=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
            valid_until=dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
            signature="cd" * 64,
        ),
        DeprecateFact(
            id=uuid.uuid4(),
            fact_id=uuid.uuid4(),
            agent_id="ann",
            reason="r",
            successor_id=uuid.uuid4(),
        ),
        CastVote(id=uuid.uuid4(), fact_id=uuid.uuid4(), agent_id="ann", value=-1, reason="no"),
    ],
    ids=lambda c: type(c).__name__,
)
def test_to_command_inverts_to_event(command: Command) -> None:
    """Each command kind comes back exactly from the event it became."""
    assert to_command(to_event(command, tenant="acme", ts=5)) == command


def test_the_ledgers_own_events_come_from_no_command() -> None:
    key = WriterKeyAdded(
        id=uuid.uuid4(), tenant=SYSTEM_TENANT, ts=1, name="w", public_key="ab" * 32
    )
    assert to_command(key) is None
