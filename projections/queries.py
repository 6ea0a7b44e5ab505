"""Queries over the read model: plain async functions, every one scoped to a tenant.

A fact id from another tenant is answered exactly like an unknown one, so
no query reveals anything across tenants. Results are the typed Structs of
``events.operations``.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Any, Final

import msgspec

from events.errors import QueryFailed
from events.limits import MAX_QUERY_LIMIT, MAX_SEARCH_WORDS, MAX_SEQ
from events.operations import (
    Agent,
    ConsensusView,
    CurrentVote,
    Deprecation,
    Fact,
    FactConsensus,
    FactHistory,
    FactPage,
    HistoryEntry,
    SearchHit,
    SearchPage,
    Stats,
)
from projections.consensus import reputation
from projections.pool import ConnectionPool
from projections.projector import world_us

_FACT_COLUMNS: Final = (
    "f.fact_id, f.tenant, f.agent_id, f.content, f.type, f.tags, f.confidence, f.source,"
    " f.meta, f.valid_from, f.valid_until, f.stored_seq, f.stored_ts, f.deprecated_seq,"
    " f.deprecated_ts, f.deprecated_by, f.deprecation_reason, f.successor_id,"
    " coalesce(c.score, 0.0), coalesce(c.weight, 0.0), coalesce(c.votes_for, 0),"
    " coalesce(c.votes_against, 0), coalesce(c.status, 'unvoted'), c.consensus_seq"
)
#: Facts with their consensus (no consensus row: unvoted).
_FACTS: Final = "facts f LEFT JOIN consensus c ON c.fact_row = f.rowid"

# As the ledger stood at seq ``a.n`` (bound as the statement's first parameter):
# a deprecation counts only if it came by then, and the consensus is the one
# recorded with the fact's last vote by then (consensus changes only when a
# vote on the fact is applied, so that is exactly what a replay to n holds).
_DEPRECATED_THEN: Final = "f.deprecated_seq <= a.n"
_AS_OF_COLUMNS: Final = (
    "f.fact_id, f.tenant, f.agent_id, f.content, f.type, f.tags, f.confidence, f.source,"
    " f.meta, f.valid_from, f.valid_until, f.stored_seq, f.stored_ts,"
    + ",".join(
        f" iif({_DEPRECATED_THEN}, f.{column}, NULL)"
        for column in (
            "deprecated_seq",
            "deprecated_ts",
            "deprecated_by",
            "deprecation_reason",
            "successor_id",
        )
    )
    + ", coalesce(h.score, 0.0), coalesce(h.weight, 0.0), coalesce(h.votes_for, 0),"
    " coalesce(h.votes_against, 0), coalesce(h.status, 'unvoted'), h.seq"
)
_AS_OF_CONSENSUS: Final = (
    " LEFT JOIN vote_history h ON h.seq = (SELECT max(v.seq) FROM vote_history v"
    " WHERE v.tenant = f.tenant AND v.fact_id = f.fact_id AND v.seq <= a.n)"
)
_AS_OF_FACTS: Final = "(SELECT ? AS n) a JOIN facts f ON f.stored_seq <= a.n" + _AS_OF_CONSENSUS


def _source(as_of_seq: int | None) -> tuple[str, str, list[object]]:
    """(columns, FROM clause, its leading parameters): now, or as of a seq."""
    if as_of_seq is None:
        return _FACT_COLUMNS, _FACTS, []
    return _AS_OF_COLUMNS, _AS_OF_FACTS, [as_of_seq]


_json: Final = msgspec.json.Decoder()
_TOKEN: Final = re.compile(r"\w+", re.UNICODE)


def _iso_us(value: int | None) -> str | None:
    if value is None:
        return None
    instant = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=value)
    return instant.isoformat().replace("+00:00", "Z")


def _iso_ns(value: int | None) -> str | None:
    return None if value is None else _iso_us(value // 1000)


def _fact(row: tuple[Any, ...]) -> Fact:
    (
        fact_id,
        tenant,
        agent_id,
        content,
        type_,
        tags,
        confidence,
        source,
        meta,
        valid_from,
        valid_until,
        stored_seq,
        stored_ts,
        deprecated_seq,
        deprecated_ts,
        deprecated_by,
        reason,
        successor_id,
        score,
        weight,
        votes_for,
        votes_against,
        status,
        consensus_seq,
    ) = row
    return Fact(
        fact_id=fact_id,
        tenant=tenant,
        agent_id=agent_id,
        content=content,
        type=type_,
        tags=_json.decode(tags),
        confidence=confidence,
        source=source,
        meta=_json.decode(meta),
        valid_from=_iso_us(valid_from),
        valid_until=_iso_us(valid_until),
        stored_seq=stored_seq,
        stored_at=_iso_ns(stored_ts),
        deprecated=None
        if deprecated_seq is None
        else Deprecation(
            seq=deprecated_seq,
            at=_iso_ns(deprecated_ts),
            by=deprecated_by,
            reason=reason,
            successor_id=successor_id,
        ),
        consensus=ConsensusView(
            score=score,
            weight=weight,
            votes_for=votes_for,
            votes_against=votes_against,
            status=status,
            as_of_seq=consensus_seq,
        ),
    )


def canonical_fact_id(value: str | uuid.UUID) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError as e:
        raise QueryFailed(f"{value!r} is not a fact id (a UUID)", code="invalid_query") from e


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_QUERY_LIMIT:
        raise QueryFailed(f"limit must be between 1 and {MAX_QUERY_LIMIT}", code="invalid_query")
    return limit


async def get_fact(
    pool: ConnectionPool,
    tenant: str,
    fact_id: str | uuid.UUID,
    *,
    as_of_seq: int | None = None,
) -> Fact | None:
    """A fact with its consensus, now or as of a seq; None if this tenant has no such fact
    (then)."""
    columns, source, args = _source(as_of_seq)
    async with (
        pool.reader() as conn,
        conn.execute(
            f"SELECT {columns} FROM {source} WHERE f.fact_id = ? AND f.tenant = ?",
            (*args, canonical_fact_id(fact_id), tenant),
        ) as cur,
    ):
        row = await cur.fetchone()
    return None if row is None else _fact(tuple(row))


def _cursor(cursor: str | None, kind: str) -> int | None:
    """The number in a page cursor of ``kind`` (``f``: facts, ``s``: search)."""
    if cursor is None:
        return None
    if not (cursor[:1] == kind and cursor[1:].isdigit() and int(cursor[1:]) <= MAX_SEQ):
        raise QueryFailed(
            f"{cursor!r} is not a cursor this query gave (pass the next_cursor of its last page)",
            code="invalid_query",
        )
    return int(cursor[1:])


async def list_facts(pool: ConnectionPool, tenant: str, **filters: Any) -> list[Fact]:
    """Facts, newest first (``facts_page`` without the cursor to the next page)."""
    return (await facts_page(pool, tenant, **filters)).items


async def facts_page(
    pool: ConnectionPool,
    tenant: str,
    *,
    include_deprecated: bool = False,
    valid_at: dt.datetime | None = None,
    as_of_seq: int | None = None,
    agent_id: str | None = None,
    type: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> FactPage:
    """Facts, newest first: current ones, or as the ledger stood at ``as_of_seq``, or
    those holding at world time ``valid_at`` — the two times combine. A page of ``limit``
    and, when more follow, the cursor after it (facts stored before its last one)."""
    columns, source, args = _source(as_of_seq)
    where: list[str] = ["f.tenant = ?"]
    args.append(tenant)
    before = _cursor(cursor, "f")
    if before is not None:
        where.append("f.stored_seq < ?")
        args.append(before)
    if not include_deprecated:
        where.append(
            "f.deprecated_seq IS NULL"
            if as_of_seq is None
            else f"(f.deprecated_seq IS NULL OR NOT {_DEPRECATED_THEN})"
        )
    if valid_at is not None:
        if valid_at.tzinfo is None:
            raise QueryFailed("valid_at needs a time zone", code="invalid_query")
        moment = world_us(valid_at)
        where.append(
            "(f.valid_from IS NULL OR f.valid_from <= ?)"
            " AND (f.valid_until IS NULL OR f.valid_until > ?)"
        )
        args += [moment, moment]
    if agent_id is not None:
        where.append("f.agent_id = ?")
        args.append(agent_id)
    if type is not None:
        where.append("f.type = ?")
        args.append(type)
    sql = (
        f"SELECT {columns} FROM {source} WHERE {' AND '.join(where)}"
        " ORDER BY f.stored_seq DESC LIMIT ?"
    )
    limit = _limit(limit)
    async with pool.reader() as conn, conn.execute(sql, (*args, limit + 1)) as cur:
        facts = [_fact(tuple(row)) for row in await cur.fetchall()]
    more = len(facts) > limit
    del facts[limit:]
    return FactPage(items=facts, next_cursor=f"f{facts[-1].stored_seq}" if more else None)


def fts_query(text: str) -> str:
    """User text as a safe FTS5 query: any word may match, each as a quoted term.

    The index stems (Porter), so "boiling" finds "boils"; BM25 ranks a fact
    that matches more of the words, and rarer ones, first. Quoting keeps
    FTS5 syntax in the text (OR, NEAR, *, ") from being obeyed.
    """
    tokens = _TOKEN.findall(text)
    if not tokens:
        raise QueryFailed("search text has no words to look for", code="invalid_query")
    return " OR ".join(f'"{token}"' for token in tokens[:MAX_SEARCH_WORDS])


async def search(pool: ConnectionPool, tenant: str, text: str, **options: Any) -> list[SearchHit]:
    """Full-text search, best match first (``search_page`` without the next cursor)."""
    return (await search_page(pool, tenant, text, **options)).items


async def search_page(
    pool: ConnectionPool,
    tenant: str,
    text: str,
    *,
    limit: int = 20,
    include_deprecated: bool = False,
    as_of_seq: int | None = None,
    cursor: str | None = None,
) -> SearchPage:
    """Full-text search, best match first (BM25), each hit with its rank and a snippet;
    now, or among the facts as they stood at ``as_of_seq``. A page of ``limit`` and, when
    more follow, the cursor after it (its place in the ranking)."""
    offset = _cursor(cursor, "s") or 0
    args: list[object]
    if as_of_seq is None:
        columns = _FACT_COLUMNS
        source = "facts_fts JOIN facts f ON f.rowid = facts_fts.rowid LEFT JOIN consensus c ON c.fact_row = f.rowid"
        deprecated = " AND f.deprecated_seq IS NULL"
        args = []
    else:
        columns = _AS_OF_COLUMNS
        source = (
            "(SELECT ? AS n) a JOIN facts_fts JOIN facts f"
            " ON f.rowid = facts_fts.rowid AND f.stored_seq <= a.n" + _AS_OF_CONSENSUS
        )
        deprecated = f" AND (f.deprecated_seq IS NULL OR NOT {_DEPRECATED_THEN})"
        args = [as_of_seq]
    sql = (
        f"SELECT {columns}, bm25(facts_fts) AS rank,"
        " snippet(facts_fts, 0, '[', ']', '…', 12)"
        f" FROM {source}"
        f" WHERE facts_fts MATCH ? AND f.tenant = ?{'' if include_deprecated else deprecated}"
        " ORDER BY rank, f.stored_seq LIMIT ? OFFSET ?"
    )
    limit = _limit(limit)
    async with (
        pool.reader() as conn,
        conn.execute(sql, (*args, fts_query(text), tenant, limit + 1, offset)) as cur,
    ):
        rows = list(await cur.fetchall())
    hits = [
        SearchHit(**msgspec.structs.asdict(_fact(tuple(row[:-2]))), rank=row[-2], snippet=row[-1])
        for row in rows[:limit]
    ]
    return SearchPage(items=hits, next_cursor=f"s{offset + limit}" if len(rows) > limit else None)


async def consensus_of(
    pool: ConnectionPool, tenant: str, fact_id: str | uuid.UUID, *, as_of_seq: int | None = None
) -> FactConsensus | None:
    fact = await get_fact(pool, tenant, fact_id, as_of_seq=as_of_seq)
    if fact is None:
        return None
    return FactConsensus(fact_id=fact.fact_id, **msgspec.structs.asdict(fact.consensus))


async def history(
    pool: ConnectionPool, tenant: str, fact_id: str | uuid.UUID, *, as_of_seq: int | None = None
) -> FactHistory | None:
    """Everything the ledger says about a fact, in ledger order: its storing, every vote
    (current and replaced), its deprecation, and the facts it replaced or that replaced it;
    with ``as_of_seq``, only what the ledger held at that seq."""
    fact = await get_fact(pool, tenant, fact_id, as_of_seq=as_of_seq)
    if fact is None:
        return None
    key = fact.fact_id
    until = MAX_SEQ if as_of_seq is None else as_of_seq
    async with pool.reader() as conn:
        async with conn.execute(
            "SELECT seq, agent_id, value, ts, reason FROM vote_history"
            " WHERE fact_id = ? AND tenant = ? AND seq <= ? ORDER BY seq",
            (key, tenant, until),
        ) as cur:
            past = [tuple(r) for r in await cur.fetchall()]
        latest: dict[str, tuple[int, int]] = {}
        for seq, agent, value, _ts, _reason in past:
            latest[agent] = (value, seq)  # in seq order: the last one stays
        current = [
            CurrentVote(agent_id=agent, value=value, seq=seq)
            for agent, (value, seq) in sorted(latest.items())
            if value != 0
        ]
        async with conn.execute(
            "SELECT fact_id FROM facts WHERE successor_id = ? AND tenant = ?"
            " AND deprecated_seq <= ? ORDER BY stored_seq",
            (key, tenant, until),
        ) as cur:
            replaces = [r[0] for r in await cur.fetchall()]
    events = [
        HistoryEntry(
            seq=fact.stored_seq, kind="fact_stored", at=fact.stored_at, agent_id=fact.agent_id
        )
    ]
    events += [
        HistoryEntry(seq=s, kind="vote_cast", at=_iso_ns(ts), agent_id=a, value=v, reason=r)
        for s, a, v, ts, r in past
    ]
    if fact.deprecated:
        d = fact.deprecated
        events.append(
            HistoryEntry(
                seq=d.seq,
                kind="fact_deprecated",
                at=d.at,
                agent_id=d.by,
                reason=d.reason,
                successor_id=d.successor_id,
            )
        )
    events.sort(key=lambda e: e.seq)
    return FactHistory(fact=fact, events=events, current_votes=current, replaces=replaces)


async def agents(pool: ConnectionPool, tenant: str) -> list[Agent]:
    """The tenant's agents with their reputation (see projections.consensus)."""
    async with (
        pool.reader() as conn,
        conn.execute(
            "SELECT agent_id, public_key, registered_seq, registered_ts, agrees, disagrees"
            " FROM agents WHERE tenant = ? ORDER BY agent_id",
            (tenant,),
        ) as cur,
    ):
        rows = await cur.fetchall()
    return [
        Agent(
            agent_id=agent_id,
            public_key=public_key,
            registered_seq=seq,
            registered_at=_iso_ns(ts),
            agrees=agrees,
            disagrees=disagrees,
            reputation=float(reputation(agrees, disagrees)),
        )
        for agent_id, public_key, seq, ts, agrees, disagrees in rows
    ]


async def stats(pool: ConnectionPool, tenant: str, seq: int) -> Stats:
    """How much the tenant holds, as of the node's position ``seq``."""
    async with pool.reader() as conn:
        async with conn.execute(
            "SELECT count(*), count(deprecated_seq) FROM facts WHERE tenant = ?", (tenant,)
        ) as cur:
            facts, deprecated = tuple(await cur.fetchone() or (0, 0))
        async with conn.execute("SELECT count(*) FROM agents WHERE tenant = ?", (tenant,)) as cur:
            (agent_count,) = tuple(await cur.fetchone() or (0,))
        async with conn.execute("SELECT count(*) FROM votes WHERE tenant = ?", (tenant,)) as cur:
            (votes,) = tuple(await cur.fetchone() or (0,))
    return Stats(seq=seq, facts=facts, deprecated=deprecated, agents=agent_count, votes=votes)
