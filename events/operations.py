"""Every query CORTEX answers and every command it takes, described once.

A query is a frozen msgspec Struct; its result type sits beside it in
``QUERIES``, the one table that the read service, the NATS adapter, the
client and (later) MCP tools, HTTP routes and CLI options are derived from:
``schema(op)`` gives the JSON Schema of a request and of its reply. Commands
are the Structs of ``events.commands``, listed in ``COMMANDS`` with the
receipt they get.

On the wire (``cortex.query.<tenant>.<op>``) the op is the subject's last
token and the payload is the query's fields as a JSON object; an empty
payload means every default. ``decode_query`` turns those bytes into the
typed query or a ``QueryFailed`` that says what was wrong.

Adding a query: one Struct here, one line in ``QUERIES``, one ``case`` in
``projections.service.ReadService``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Final

import msgspec

from events.commands import COMMAND_TYPES
from events.errors import QueryFailed
from events.limits import DEFAULT_WAIT_S, MAX_NAME, MAX_QUERY_LIMIT, MAX_SEQ
from events.messages import explain

Limit = Annotated[int, msgspec.Meta(ge=1, le=MAX_QUERY_LIMIT)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)]
TreeSize = Annotated[int, msgspec.Meta(ge=1, le=MAX_SEQ)]
#: Seconds to wait for min_seq; the node waits at most MAX_WAIT_S whatever is asked.
Wait = Annotated[float, msgspec.Meta(ge=0)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME)]
#: Where a page continues, as the page before it gave it (``next_cursor``): opaque to
#: clients. A facts cursor is ``f<seq>`` (keyset: stable while facts are added), a
#: search cursor ``s<offset>`` (a position in the ranking, which new facts can shift).
Cursor = Annotated[str, msgspec.Meta(pattern=r"^[fs][0-9]{1,19}$")]


class Query(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Fields every query takes: read-your-writes.

    With ``min_seq`` (a receipt's seq) the node first waits, at most
    ``timeout`` seconds, until it has applied that event.
    """

    min_seq: Seq | None = None
    timeout: Wait = DEFAULT_WAIT_S


# -- queries -----------------------------------------------------------------


class GetFact(Query, frozen=True, kw_only=True):
    """A fact's current state and consensus (None: no such fact in this tenant)."""

    fact_id: uuid.UUID
    #: Read the ledger as it stood at this seq (every field, as a replay to it shows).
    as_of_seq: Seq | None = None


class GetConsensus(Query, frozen=True, kw_only=True):
    """A fact's consensus alone."""

    fact_id: uuid.UUID
    #: Read the ledger as it stood at this seq (every field, as a replay to it shows).
    as_of_seq: Seq | None = None


class GetHistory(Query, frozen=True, kw_only=True):
    """Everything the ledger says about a fact, in ledger order."""

    fact_id: uuid.UUID
    #: Read the ledger as it stood at this seq (every field, as a replay to it shows).
    as_of_seq: Seq | None = None


class ListFacts(Query, frozen=True, kw_only=True):
    """Facts, newest first: current ones, or as of a seq, or holding at a world time."""

    include_deprecated: bool = False
    valid_at: dt.datetime | None = None
    as_of_seq: Seq | None = None
    agent_id: Name | None = None
    type: Name | None = None
    limit: Limit = 100
    #: Continue after the page that gave this ``next_cursor`` (``facts_page``).
    cursor: Cursor | None = None


class PageFacts(ListFacts, frozen=True, kw_only=True):
    """Facts as ``facts`` lists them, one page at a time, with the cursor to the next."""


class Search(Query, frozen=True, kw_only=True):
    """Full-text search, best match first (BM25), each hit with a snippet."""

    text: str
    limit: Limit = 20
    include_deprecated: bool = False
    as_of_seq: Seq | None = None
    #: Continue after the page that gave this ``next_cursor`` (``search_page``).
    cursor: Cursor | None = None


class PageSearch(Search, frozen=True, kw_only=True):
    """Search hits as ``search`` ranks them, one page at a time, with the cursor to the next."""


class ListAgents(Query, frozen=True, kw_only=True):
    """The tenant's agents with their reputation."""


class GetStatus(Query, frozen=True, kw_only=True):
    """This node's position, pool and cache counters."""


class GetDigest(Query, frozen=True, kw_only=True):
    """A digest of this node's read model: equal positions, equal digests."""


class GetStats(Query, frozen=True, kw_only=True):
    """How much the tenant holds: facts, agents, votes."""


class GetCheckpoint(Query, frozen=True, kw_only=True):
    """The latest signed checkpoint (or the one of ``tree_size``) with its verifier key."""

    tree_size: TreeSize | None = None


class GetProof(Query, frozen=True, kw_only=True):
    """An inclusion proof of one of the tenant's events (by seq or id) against a checkpoint."""

    event: TreeSize | str
    tree_size: TreeSize | None = None


class GetConsistency(Query, frozen=True, kw_only=True):
    """Proof that the checkpoint of ``new_size`` events extends that of ``old_size``."""

    old_size: TreeSize
    new_size: TreeSize


# -- results -----------------------------------------------------------------


class Deprecation(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    at: str | None
    by: str
    reason: str
    successor_id: str | None


class ConsensusView(msgspec.Struct, frozen=True, kw_only=True):
    """A fact's score (reputation-weighted mean of current votes) and verdict."""

    score: float
    weight: float
    votes_for: int
    votes_against: int
    status: str
    as_of_seq: int | None


class FactConsensus(ConsensusView, frozen=True, kw_only=True):
    fact_id: str


class Fact(msgspec.Struct, frozen=True, kw_only=True):
    """A fact as a node holds it; times are ISO 8601 in UTC."""

    fact_id: str
    tenant: str
    agent_id: str
    content: str
    type: str
    tags: list[str]
    confidence: float
    source: str
    meta: dict[str, Any]
    valid_from: str | None
    valid_until: str | None
    stored_seq: int
    stored_at: str | None
    deprecated: Deprecation | None
    consensus: ConsensusView


class SearchHit(Fact, frozen=True, kw_only=True):
    rank: float
    snippet: str


class FactPage(msgspec.Struct, frozen=True, kw_only=True):
    """One page of facts; ``next_cursor`` is None on the last one."""

    items: list[Fact]
    next_cursor: str | None


class SearchPage(msgspec.Struct, frozen=True, kw_only=True):
    """One page of search hits; ``next_cursor`` is None on the last one."""

    items: list[SearchHit]
    next_cursor: str | None


class HistoryEntry(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One event about a fact; only the fields its kind has are present."""

    seq: int
    kind: str
    at: str | None
    agent_id: str
    value: int | None = None
    reason: str | None = None
    successor_id: str | None = None


class CurrentVote(msgspec.Struct, frozen=True, kw_only=True):
    agent_id: str
    value: int
    seq: int


class FactHistory(msgspec.Struct, frozen=True, kw_only=True):
    fact: Fact
    events: list[HistoryEntry]
    current_votes: list[CurrentVote]
    #: The facts this one replaced (their successor is this fact).
    replaces: list[str]


class Agent(msgspec.Struct, frozen=True, kw_only=True):
    agent_id: str
    public_key: str | None
    registered_seq: int
    registered_at: str | None
    agrees: int
    disagrees: int
    reputation: float


class NodeStatus(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    head: str
    applied: int
    db: str
    pool: dict[str, int | bool]
    cache: dict[str, int]
    #: False while the node's projector is not following the ledger (restarting
    #: after a stall, or stopped for good); then ``stopped_reason`` says why.
    following: bool = True
    stopped_reason: str = ""
    #: Events this read model set aside as impossible to apply (its quarantine table).
    quarantined: int = 0


class Digest(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    digest: str


class Stats(msgspec.Struct, frozen=True, kw_only=True):
    """Counts for one tenant, as of ``seq``."""

    seq: int
    facts: int
    deprecated: int
    agents: int
    votes: int


class Checkpoint(msgspec.Struct, frozen=True, kw_only=True):
    """A signed tree head as a node holds it, with the writer key that signed it."""

    seq: int
    tree_size: int
    root: str
    head: str
    public_key: str
    note: str
    verifier: str


class InclusionProof(msgspec.Struct, frozen=True, kw_only=True):
    """A document ``events.proof.check_proof`` verifies offline."""

    kind: str
    seq: int
    body: str
    prev_hash: str
    hash: str
    tree_size: int
    root: str
    path: list[str]
    checkpoint: str
    verifier: str


class ConsistencyProof(msgspec.Struct, frozen=True, kw_only=True):
    """A document ``events.proof.check_proof`` verifies offline."""

    kind: str
    old_size: int
    new_size: int
    old: str
    new: str
    path: list[str]
    old_verifier: str
    new_verifier: str


class Receipt(msgspec.Struct, frozen=True, kw_only=True):
    """Where an appended event is in the ledger: the reply to a command."""

    seq: int
    hash: str
    id: str


# -- the table ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Operation:
    """One query: its wire name, request and result types, and what it promises."""

    name: str
    request: type[Query]
    result: Any
    #: Answers depend only on the fact id: cached (unless read as of a seq), and
    #: invalidated as events touch it.
    cached: bool = False

    @property
    def doc(self) -> str:
        return (self.request.__doc__ or "").strip().splitlines()[0]


QUERIES: Final[dict[str, Operation]] = {
    op.name: op
    for op in (
        Operation("get_fact", GetFact, Fact | None, cached=True),
        Operation("consensus", GetConsensus, FactConsensus | None, cached=True),
        Operation("history", GetHistory, FactHistory | None),
        Operation("facts", ListFacts, list[Fact]),
        Operation("search", Search, list[SearchHit]),
        Operation("facts_page", PageFacts, FactPage),
        Operation("search_page", PageSearch, SearchPage),
        Operation("agents", ListAgents, list[Agent]),
        Operation("status", GetStatus, NodeStatus),
        Operation("digest", GetDigest, Digest),
        Operation("stats", GetStats, Stats),
        Operation("checkpoint", GetCheckpoint, Checkpoint),
        Operation("proof", GetProof, InclusionProof),
        Operation("consistency", GetConsistency, ConsistencyProof),
    )
}

#: Every command kind, with the reply it gets when appended.
COMMANDS: Final[dict[str, type[msgspec.Struct]]] = dict(COMMAND_TYPES)

_decoders: Final = {name: msgspec.json.Decoder(op.request) for name, op in QUERIES.items()}


def decode_query(op: str, data: bytes) -> Query:
    """The typed query for ``op`` from its wire payload, or QueryFailed saying what was wrong."""
    decoder = _decoders.get(op)
    if decoder is None:
        raise QueryFailed(f"unknown query {op!r}; known: {sorted(QUERIES)}", code="unknown_op")
    try:
        return decoder.decode(data if data.strip() else b"{}")
    except msgspec.ValidationError as e:
        if str(e).startswith("Expected `object`") and " - at `" not in str(e):
            raise QueryFailed(f"a query is a JSON object: {e}", code="malformed") from e
        raise QueryFailed(f"bad parameters for {op}: {explain(e, data)}") from e
    except msgspec.DecodeError as e:
        raise QueryFailed(f"a query is a JSON object: {e}", code="malformed") from e
    except RecursionError as e:
        raise QueryFailed("a query nests JSON too deeply", code="malformed") from e


def op_name(query: Query) -> str:
    """The wire name of a query, from the table."""
    return _names[type(query)]


_names: Final = {op.request: name for name, op in QUERIES.items()}


def schema(name: str) -> dict[str, Any]:
    """JSON Schemas of the request and the result of query or command ``name``."""
    if name in QUERIES:
        op = QUERIES[name]
        request: Any = op.request
        result: Any = op.result
    else:
        request, result = COMMANDS[name], Receipt
    return {
        "request": msgspec.json.schema(request),
        "result": msgspec.json.schema(result),
    }
