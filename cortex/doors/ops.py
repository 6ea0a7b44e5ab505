"""Every operation the front doors offer, described once: ``OPS``.

A ``DoorOp`` names an operation, its request Struct (what an agent may send:
never ``agent_id``, which is the authenticated principal's), its result Struct
(always a JSON object), what it promises (read-only, destructive, idempotent:
the MCP tool hints) and its HTTP route. The MCP server lists tools from this
table, the HTTP API routes from it, and ``cortex.doors.schemas`` derives the
tool schemas and the OpenAPI document from it; ``cortex.doors.run`` executes
one against a tenant's ``cortex.Client``.

Requests reuse the ledger's own field types (``events.model``), so a value the
writer would refuse is refused here with the same code, before anything is sent.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

import msgspec

from cortex.doors.results import (
    AgentList,
    FactView,
    SearchResult,
    StatusResult,
    VerifyDoc,
    WriteResult,
)
from events.limits import MAX_TAGS
from events.model import Confidence, FactType, Reason, Source, Tag
from events.operations import Cursor, Limit, Name, Seq, TreeSize

Method = Literal["GET", "POST"]
#: Tags as a door takes them (a list; the ledger keeps a tuple).
TagList = Annotated[list[Tag], msgspec.Meta(max_length=MAX_TAGS)]


class Request(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every door request: unknown fields are refused, not ignored."""


class FactFields(Request, frozen=True, kw_only=True):
    """What a stored or edited fact says: the fields ``store_fact`` and ``edit_fact`` share."""

    content: str
    type: FactType = "knowledge"
    tags: TagList = []
    confidence: Confidence = 1.0
    source: Source = ""
    meta: dict[str, Any] = {}
    valid_from: dt.datetime | None = None
    valid_until: dt.datetime | None = None


class StoreFactRequest(FactFields, frozen=True, kw_only=True):
    """Store a fact as the calling agent. Times are ISO 8601 (without a zone: UTC)."""


class SearchFactsRequest(Request, frozen=True, kw_only=True):
    """Find facts: full-text (``text``, best match first) or a listing (newest first),
    filtered by author, type, tags and world time, as of a ledger seq, one page at a time.

    Without ``text`` the node filters by author, type and valid time itself; tags (and,
    with ``text``, author, type and valid time) are applied to each page it returns,
    so a page may hold fewer than ``limit`` items while ``next_cursor`` goes on.
    """

    text: str | None = None
    tags: TagList = []
    type: Name | None = None
    #: Only facts stored by this agent.
    agent: Name | None = None
    #: Only facts whose validity window holds at this world time.
    valid_at: dt.datetime | None = None
    #: Read the ledger as it stood at this seq.
    as_of_seq: Seq | None = None
    include_deprecated: bool = False
    limit: Limit = 20
    cursor: Cursor | None = None
    #: Wait until the node has applied this seq (a write's receipt) before answering.
    min_seq: Seq | None = None


class GetFactRequest(Request, frozen=True, kw_only=True):
    """A fact with its consensus and (unless ``history`` is false) everything the
    ledger says about it."""

    fact_id: uuid.UUID
    history: bool = True
    as_of_seq: Seq | None = None
    min_seq: Seq | None = None


class VoteRequest(Request, frozen=True, kw_only=True):
    """Vote on a fact as the calling agent: +1, -1, or 0 to withdraw; a later vote
    replaces the earlier one."""

    fact_id: uuid.UUID
    value: int
    reason: Reason = ""


class EditFactRequest(FactFields, frozen=True, kw_only=True):
    """Replace a fact: its successor is stored and it is deprecated, atomically."""

    fact_id: uuid.UUID
    reason: Reason = ""


class DeprecateFactRequest(Request, frozen=True, kw_only=True):
    """Deprecate a fact (another agent's needs a reason), optionally naming its successor."""

    fact_id: uuid.UUID
    reason: Reason = ""
    successor_id: uuid.UUID | None = None


class ListAgentsRequest(Request, frozen=True, kw_only=True):
    """The tenant's agents with their reputation."""

    min_seq: Seq | None = None


class StatusRequest(Request, frozen=True, kw_only=True):
    """Who the caller is, what the tenant holds, and the node's position."""

    min_seq: Seq | None = None


class VerifyRequest(Request, frozen=True, kw_only=True):
    """Prove an event is in the ledger: a fact (its store event) or a receipt's event (by
    seq or event id), against the latest signed checkpoint (or that of ``tree_size``).
    Give exactly one of ``fact_id`` and ``event``."""

    fact_id: uuid.UUID | None = None
    event: TreeSize | uuid.UUID | None = None
    tree_size: TreeSize | None = None
    #: A writer verifier key (name+id+key) to pin the check to; default: the document's.
    verifier: str | None = None


@dataclass(frozen=True, slots=True)
class DoorOp:
    """One operation of the front doors (see the module doc)."""

    name: str
    aliases: tuple[str, ...]
    request: type[Request]
    result: type[msgspec.Struct]
    doc: str
    read_only: bool
    destructive: bool
    idempotent: bool
    #: HTTP method and path template (``{fact_id}``: a field of the request).
    http: tuple[Method, str]

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


def _doc(request: type[Request]) -> str:
    return " ".join((request.__doc__ or "").split("\n\n")[0].split())


def _op(
    name: str,
    request: type[Request],
    result: type[msgspec.Struct],
    http: tuple[Method, str],
    *,
    aliases: tuple[str, ...] = (),
    read_only: bool = False,
    destructive: bool = False,
    idempotent: bool = False,
) -> DoorOp:
    return DoorOp(
        name=name,
        aliases=aliases,
        request=request,
        result=result,
        doc=_doc(request),
        read_only=read_only,
        destructive=destructive,
        idempotent=read_only or idempotent,
        http=http,
    )


#: Every door operation by its name (aliases are in ``BY_NAME``).
OPS: Final[dict[str, DoorOp]] = {
    op.name: op
    for op in (
        _op(
            "store_fact",
            StoreFactRequest,
            WriteResult,
            ("POST", "/v1/facts"),
            aliases=("cortex_store",),
        ),
        _op(
            "search_facts",
            SearchFactsRequest,
            SearchResult,
            ("GET", "/v1/facts"),
            aliases=("cortex_search",),
            read_only=True,
        ),
        _op("get_fact", GetFactRequest, FactView, ("GET", "/v1/facts/{fact_id}"), read_only=True),
        # The same vote again changes nothing the consensus counts.
        _op(
            "vote", VoteRequest, WriteResult, ("POST", "/v1/facts/{fact_id}/votes"), idempotent=True
        ),
        _op(
            "edit_fact",
            EditFactRequest,
            WriteResult,
            ("POST", "/v1/facts/{fact_id}/edit"),
            destructive=True,
        ),
        _op(
            "deprecate_fact",
            DeprecateFactRequest,
            WriteResult,
            ("POST", "/v1/facts/{fact_id}/deprecate"),
            destructive=True,
        ),
        _op("list_agents", ListAgentsRequest, AgentList, ("GET", "/v1/agents"), read_only=True),
        _op(
            "status",
            StatusRequest,
            StatusResult,
            ("GET", "/v1/status"),
            aliases=("cortex_status",),
            read_only=True,
        ),
        _op(
            "verify",
            VerifyRequest,
            VerifyDoc,
            ("GET", "/v1/verify"),
            aliases=("cortex_ledger_verify",),
            read_only=True,
        ),
    )
}

#: Every name an operation answers to, aliases included.
BY_NAME: Final[dict[str, DoorOp]] = {name: op for op in OPS.values() for name in op.names}
