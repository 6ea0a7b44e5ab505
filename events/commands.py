"""What agents ask the writer to do: imperative twins of the events.

A command is what a client sends on ``cortex.cmd.<tenant>.<kind>``; the
writer checks it and, if it holds, appends the matching event. Commands
refuse unknown fields (a typo must not be silently dropped), while events
accept them (an old reader must still read a newer ledger). Tenant and time
are not part of a command: the tenant comes from the subject, which NATS
permissions guard, and the time from the writer's clock.

``to_command`` is ``to_event``'s inverse: the command an agent event would
have come from, so the audit can judge a stored event as the writer did.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Final

import msgspec

from events.model import (
    AgentId,
    AgentRegistered,
    Confidence,
    Event,
    FactDeprecated,
    FactStored,
    FactType,
    PublicKey,
    Reason,
    Signature,
    Source,
    Tags,
    VoteCast,
    WorldTime,
)


class Command(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", forbid_unknown_fields=True
):
    """Fields every command carries: the client-chosen id of the event to append."""

    id: uuid.UUID


class RegisterAgent(Command, frozen=True, tag="register_agent"):
    agent_id: AgentId
    public_key: PublicKey | None = None


class StoreFact(Command, frozen=True, tag="store_fact"):
    fact_id: uuid.UUID
    agent_id: AgentId
    content: str
    type: FactType = "knowledge"
    tags: Tags = ()
    confidence: Confidence = 1.0
    source: Source = ""
    meta: dict[str, Any] = {}
    valid_from: WorldTime | None = None
    valid_until: WorldTime | None = None
    signature: Signature | None = None


class DeprecateFact(Command, frozen=True, tag="deprecate_fact"):
    fact_id: uuid.UUID
    agent_id: AgentId
    reason: Reason = ""
    successor_id: uuid.UUID | None = None
    signature: Signature | None = None


class CastVote(Command, frozen=True, tag="cast_vote"):
    fact_id: uuid.UUID
    agent_id: AgentId
    value: int
    reason: Reason = ""
    signature: Signature | None = None


AnyCommand = RegisterAgent | StoreFact | DeprecateFact | CastVote

COMMAND_TYPES: Final[dict[str, type[Command]]] = {
    str(cls.__struct_config__.tag): cls
    for cls in (RegisterAgent, StoreFact, DeprecateFact, CastVote)
}

_EVENT_FOR: Final[dict[type[Command], type[Event]]] = {
    RegisterAgent: AgentRegistered,
    StoreFact: FactStored,
    DeprecateFact: FactDeprecated,
    CastVote: VoteCast,
}


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    """World times are stored in UTC so equal instants encode to equal bytes."""
    return None if value is None else value.astimezone(dt.UTC)


def to_event(command: Command, *, tenant: str, ts: int) -> Event:
    """The event a valid command becomes, stamped with its tenant and ledger time."""
    fields = msgspec.structs.asdict(command)
    if isinstance(command, StoreFact):
        fields["valid_from"] = _utc(command.valid_from)
        fields["valid_until"] = _utc(command.valid_until)
    return _EVENT_FOR[type(command)](**fields, tenant=tenant, ts=ts)


_COMMAND_FOR: Final[dict[type[Event], type[Command]]] = {e: c for c, e in _EVENT_FOR.items()}
_NOT_COMMANDED: Final = frozenset({"tenant", "ts", "v"})


def to_command(event: Event) -> Command | None:
    """The command ``event`` would have come from (None for the ledger's own events).

    The inverse of ``to_event``: ``to_command(to_event(c, tenant=t, ts=n)) == c``
    for every command ``c`` whose world times are in UTC (``to_event`` stores them
    so). Built without validation, as a stored event may hold what no command
    could (a vote of 7): judging it is ``events.rules``' business.
    """
    kind = _COMMAND_FOR.get(type(event))
    if kind is None:
        return None
    fields = msgspec.structs.asdict(event)
    for name in _NOT_COMMANDED:
        del fields[name]
    return kind(**fields)
