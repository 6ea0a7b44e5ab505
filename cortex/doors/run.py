"""Running one door operation: validate, act as the principal, call the tenant's client.

``run`` is the whole of what a door does between its transport and CORTEX:
the arguments are decoded into the operation's request Struct (a refusal
carries the code the CLI and the writer give for the same mistake, and
nothing is sent), the acting agent is the principal's (an ``agent_id``
argument naming anyone else is ``forbidden``), commands are signed with the
principal's key when it has one, and the call goes to the ``cortex.Client``
of the principal's tenant, connected with that tenant's credentials only.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypedDict

import msgspec

from cortex.client import Client, Receipt
from cortex.doors.backend import Backend
from cortex.doors.ops import (
    DeprecateFactRequest,
    DoorOp,
    EditFactRequest,
    FactFields,
    GetFactRequest,
    ListAgentsRequest,
    Request,
    SearchFactsRequest,
    StatusRequest,
    StoreFactRequest,
    VerifyRequest,
    VoteRequest,
)
from cortex.doors.results import (
    AgentList,
    FactView,
    SearchResult,
    StatusResult,
    VerifyDoc,
    WriteResult,
)
from cortex.doors.tokens import Principal
from cortex.errors import CortexError, Forbidden, InvalidCommand, QueryFailed, UnknownReference
from events.messages import explain
from events.operations import (
    Agent,
    Fact,
    FactHistory,
    FactPage,
    GetFact,
    GetHistory,
    GetProof,
    GetStats,
    GetStatus,
    InclusionProof,
    ListAgents,
    NodeStatus,
    PageFacts,
    PageSearch,
    SearchPage,
    Stats,
)
from events.proof import check_proof

_json_any: Final = msgspec.json.Decoder()


def _bad(op: DoorOp, message: str) -> CortexError:
    """A bad argument: ``invalid_field`` for a command (as the writer and CLI say),
    ``invalid_query`` for a read (as a node says)."""
    if op.read_only:
        return QueryFailed(message, code="invalid_query")
    return InvalidCommand(message, code="invalid_field")


def decode(op: DoorOp, args: dict[str, Any] | bytes | None, who: Principal) -> Request:
    """``args`` (JSON bytes, or an object already parsed: MCP arguments, an HTTP query
    string's values) as ``op``'s request, or the CortexError that says what is wrong."""
    if isinstance(args, bytes | bytearray | memoryview):
        raw = bytes(args)
        try:
            args = _json_any.decode(raw) if raw.strip() else {}
        except msgspec.DecodeError as e:
            raise InvalidCommand(f"the arguments are not JSON: {e}", code="malformed") from e
        except RecursionError as e:
            raise InvalidCommand("the arguments nest JSON too deeply", code="malformed") from e
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise InvalidCommand("the arguments are a JSON object", code="malformed")
    if "agent_id" in args:
        if args["agent_id"] != who.agent:
            raise Forbidden(
                f"this token acts as agent {who.agent!r} only, not {args['agent_id']!r}",
                code="forbidden",
            )
        args = {k: v for k, v in args.items() if k != "agent_id"}
    try:
        return msgspec.convert(args, op.request, strict=False)
    except msgspec.ValidationError as e:
        raise _bad(op, f"bad arguments for {op.name}: {explain(e)}") from e


async def run(
    op: DoorOp, args: dict[str, Any] | bytes | None, who: Principal, backend: Backend
) -> msgspec.Struct:
    """Run ``op`` as ``who``: its result Struct, or a CortexError with a stable code."""
    request = decode(op, args, who)
    client = await backend.client(who.tenant)
    return await _HANDLERS[type(request)](request, who, client)


# -- the operations -----------------------------------------------------------


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    """Without a zone, UTC (as the CLI reads times)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=dt.UTC)


def _written(receipt: Receipt) -> WriteResult:
    fact_id = None if receipt.fact_id is None else str(receipt.fact_id)
    return WriteResult(seq=receipt.seq, hash=receipt.hash, id=str(receipt.id), fact_id=fact_id)


async def _as_agent(
    who: Principal, client: Client, write: Callable[[], Awaitable[Receipt]]
) -> WriteResult:
    """``write``; an agent the ledger does not know yet is registered first (with the
    public half of its key, if it has one), once, and the write made again."""
    try:
        return _written(await write())
    except UnknownReference as e:
        if e.code != "unknown_agent":
            raise
    try:
        await client.register_agent(who.agent, public_key=who.key)
    except CortexError as e:
        if e.code != "agent_exists":  # registered meanwhile, by another door or call
            raise
    return _written(await write())


class _FactArgs(TypedDict):
    type: str
    tags: list[str]
    confidence: float
    source: str
    meta: dict[str, Any]
    valid_from: dt.datetime | None
    valid_until: dt.datetime | None


def _fact_args(r: FactFields) -> _FactArgs:
    """What ``store_fact`` and ``edit_fact`` take of a request beside its content."""
    return _FactArgs(
        type=r.type,
        tags=r.tags,
        confidence=r.confidence,
        source=r.source,
        meta=r.meta,
        valid_from=_utc(r.valid_from),
        valid_until=_utc(r.valid_until),
    )


async def _store(r: StoreFactRequest, who: Principal, client: Client) -> WriteResult:
    return await _as_agent(
        who,
        client,
        lambda: client.store_fact(
            who.agent,
            r.content,
            **_fact_args(r),
            key=who.key,
        ),
    )


def _holds(fact: Fact, at: dt.datetime) -> bool:
    start = dt.datetime.fromisoformat(fact.valid_from) if fact.valid_from else None
    end = dt.datetime.fromisoformat(fact.valid_until) if fact.valid_until else None
    return (start is None or start <= at) and (end is None or at < end)


async def _search(r: SearchFactsRequest, who: Principal, client: Client) -> SearchResult:
    at = _utc(r.valid_at)
    page: SearchPage | FactPage
    if r.text is not None:
        page = await client.ask(
            PageSearch(
                text=r.text,
                limit=r.limit,
                include_deprecated=r.include_deprecated,
                as_of_seq=r.as_of_seq,
                cursor=r.cursor,
                min_seq=r.min_seq,
            )
        )
    else:
        page = await client.ask(
            PageFacts(
                include_deprecated=r.include_deprecated,
                valid_at=at,
                as_of_seq=r.as_of_seq,
                agent_id=r.agent,
                type=r.type,
                limit=r.limit,
                cursor=r.cursor,
                min_seq=r.min_seq,
            )
        )
    items: list[Fact] = [
        f
        for f in page.items
        if set(r.tags) <= set(f.tags)
        and (r.agent is None or f.agent_id == r.agent)
        and (r.type is None or f.type == r.type)
        and (at is None or _holds(f, at))
    ]
    return SearchResult(items=items, next_cursor=page.next_cursor)


async def _get(r: GetFactRequest, who: Principal, client: Client) -> FactView:
    if not r.history:
        fact: Fact | None = await client.ask(
            GetFact(fact_id=r.fact_id, as_of_seq=r.as_of_seq, min_seq=r.min_seq)
        )
        return FactView(fact=fact)
    history: FactHistory | None = await client.ask(
        GetHistory(fact_id=r.fact_id, as_of_seq=r.as_of_seq, min_seq=r.min_seq)
    )
    return FactView(fact=None if history is None else history.fact, history=history)


async def _vote(r: VoteRequest, who: Principal, client: Client) -> WriteResult:
    return await _as_agent(
        who,
        client,
        lambda: client.vote(who.agent, r.fact_id, r.value, reason=r.reason, key=who.key),
    )


async def _edit(r: EditFactRequest, who: Principal, client: Client) -> WriteResult:
    return await _as_agent(
        who,
        client,
        lambda: client.edit_fact(
            who.agent,
            r.fact_id,
            r.content,
            reason=r.reason,
            **_fact_args(r),
            key=who.key,
        ),
    )


async def _deprecate(r: DeprecateFactRequest, who: Principal, client: Client) -> WriteResult:
    return await _as_agent(
        who,
        client,
        lambda: client.deprecate_fact(
            who.agent, r.fact_id, reason=r.reason, successor_id=r.successor_id, key=who.key
        ),
    )


async def _agents(r: ListAgentsRequest, who: Principal, client: Client) -> AgentList:
    agents: list[Agent] = await client.ask(ListAgents(min_seq=r.min_seq))
    return AgentList(agents=agents)


async def _status(r: StatusRequest, who: Principal, client: Client) -> StatusResult:
    stats: Stats = await client.ask(GetStats(min_seq=r.min_seq))
    node: NodeStatus = await client.ask(GetStatus())
    return StatusResult(tenant=who.tenant, agent=who.agent, stats=stats, node=node)


async def _verify(r: VerifyRequest, who: Principal, client: Client) -> VerifyDoc:
    if (r.fact_id is None) == (r.event is None):
        raise QueryFailed("give exactly one of fact_id and event", code="invalid_query")
    event: int | str
    if r.fact_id is not None:
        fact: Fact | None = await client.ask(GetFact(fact_id=r.fact_id))
        if fact is None:
            raise CortexError(f"no fact {r.fact_id} in tenant {who.tenant}", code="not_found")
        event = fact.stored_seq
    else:
        event = r.event if isinstance(r.event, int) else str(r.event)
    proof: InclusionProof = await client.ask(GetProof(event=event, tree_size=r.tree_size))
    check = check_proof(msgspec.to_builtins(proof), verifier=r.verifier)
    return VerifyDoc(
        ok=check.ok,
        problems=list(check.problems),
        key_pinned=check.pinned,
        seq=proof.seq,
        tree_size=proof.tree_size,
        proof=proof,
    )


_Handler = Callable[[Any, Principal, Client], Awaitable[msgspec.Struct]]
_HANDLERS: Final[dict[type[Request], _Handler]] = {
    StoreFactRequest: _store,
    SearchFactsRequest: _search,
    GetFactRequest: _get,
    VoteRequest: _vote,
    EditFactRequest: _edit,
    DeprecateFactRequest: _deprecate,
    ListAgentsRequest: _agents,
    StatusRequest: _status,
    VerifyRequest: _verify,
}
