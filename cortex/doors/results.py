"""What the front doors answer: one JSON object per operation (MCP wants an object at the
root of a tool's structured output, and so does a clean OpenAPI response).

The node's typed results (``events.operations``) are reused inside them; nothing
here is new data, only the envelope a door needs.
"""

from __future__ import annotations

from typing import Any

import msgspec

from events.operations import Agent, Fact, FactHistory, InclusionProof, NodeStatus, Stats


class WriteResult(msgspec.Struct, frozen=True, kw_only=True):
    """The receipt of an appended command: where it is in the ledger (``fact_id``: the
    stored fact's, for store_fact and edit_fact)."""

    seq: int
    hash: str
    id: str
    fact_id: str | None = None


class FactView(msgspec.Struct, frozen=True, kw_only=True):
    """A fact with its consensus (``fact.consensus``) and, if asked, its history;
    ``fact`` is null when the tenant has no such fact."""

    fact: Fact | None
    history: FactHistory | None = None


class SearchResult(msgspec.Struct, frozen=True, kw_only=True):
    """One page of facts, newest first, or best match first when ``text`` was given (then
    each item also has ``rank`` and ``snippet``); pass ``next_cursor`` for the next page."""

    items: list[Fact]
    next_cursor: str | None


class AgentList(msgspec.Struct, frozen=True, kw_only=True):
    """The tenant's agents with their reputation."""

    agents: list[Agent]


class StatusResult(msgspec.Struct, frozen=True, kw_only=True):
    """Who is asking, what the tenant holds, and the answering node's position."""

    tenant: str
    agent: str
    stats: Stats
    node: NodeStatus


class VerifyDoc(msgspec.Struct, frozen=True, kw_only=True):
    """An inclusion proof of one event against the latest signed checkpoint, and the
    outcome of checking it here. ``proof`` is the offline-checkable document
    (``cortex verify-proof FILE`` or ``cortex.check_proof`` check it with no server)."""

    ok: bool
    problems: list[str]
    #: Whether the writer's key was pinned for the check (False: the key in the document).
    key_pinned: bool
    seq: int
    tree_size: int
    proof: InclusionProof


class ErrorDetail(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    code: str
    message: str
    retry_after: float | None = None


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    """What every door answers for a refusal: the stable code of ``events.errors.CODES``."""

    error: ErrorDetail


def error_body(code: str, message: str, retry_after: float | None = None) -> dict[str, Any]:
    """``ErrorBody`` as plain JSON-ready data."""
    detail = ErrorDetail(code=code, message=message, retry_after=retry_after)
    result: dict[str, Any] = msgspec.to_builtins(ErrorBody(error=detail))
    return result
