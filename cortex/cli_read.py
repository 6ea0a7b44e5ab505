"""The read side of the ``cortex`` command line: facts, search, show, agents, status,
replay and digest. Registered on the parser built in ``cortex.cli``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cortex.bus import DEFAULT_URL, Bus
from cortex.client import Client
from cortex.errors import CortexError
from cortex.progress import progress_bar
from projections.digest import digest
from projections.pool import ConnectionPool
from projections.projector import Projector
from projections.replay import replay

# Piped output keeps whole table rows: scripts and logs read wider than 80 columns.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False)


def _json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, default=str) + "\n")


async def _client(args: argparse.Namespace) -> Client:
    return await Client.connect(args.nats or DEFAULT_URL, tenant=args.tenant)


def _facts_table(rows: list[dict[str, Any]], title: str, *, rank: bool = False) -> None:
    table = Table(title=title)
    table.add_column("fact", no_wrap=True)
    table.add_column("content", overflow="fold")
    table.add_column("agent", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("score", justify="right", no_wrap=True)
    table.add_column("votes", justify="right", no_wrap=True)
    for f in rows:
        c = f["consensus"]
        content = str(f.get("snippet") if rank else f["content"])
        if f.get("deprecated"):
            content = f"[dim]{escape(content)} (deprecated)[/]"
        else:
            content = escape(content)
        table.add_row(
            f["fact_id"],
            content,
            f["agent_id"],
            c["status"],
            f"{c['score']:+.3f}",
            f"+{c['votes_for']} -{c['votes_against']}",
        )
    out.print(table)


async def cmd_facts(args: argparse.Namespace) -> int:
    filters: dict[str, Any] = {"limit": args.limit, "include_deprecated": args.all}
    if args.valid_at:
        filters["valid_at"] = args.valid_at
    if args.as_of is not None:
        filters["as_of_seq"] = args.as_of
    if args.agent:
        filters["agent_id"] = args.agent
    async with await _client(args) as c:
        rows = await c.facts(**filters)
    if args.json:
        _json(rows)
    else:
        _facts_table(rows, f"facts in {args.tenant}")
    return 0


async def cmd_search(args: argparse.Namespace) -> int:
    async with await _client(args) as c:
        hits = await c.search(args.text, limit=args.limit)
    if args.json:
        _json(hits)
    else:
        _facts_table(hits, f"search {args.text!r} in {args.tenant}", rank=True)
    return 0


async def cmd_show(args: argparse.Namespace) -> int:
    async with await _client(args) as c:
        history = await c.history(args.fact_id)
    if history is None:
        raise CortexError(f"no fact {args.fact_id} in tenant {args.tenant!r}", code="not_found")
    if args.json:
        _json(history)
        return 0
    fact = history["fact"]
    c = fact["consensus"]
    out.print(f"[bold]{escape(fact['content'])}[/]")
    out.print(
        f"fact {fact['fact_id']} by {fact['agent_id']} at seq {fact['stored_seq']} · type {fact['type']}"
        f" · tags {', '.join(fact['tags']) or '-'} · confidence {fact['confidence']}"
    )
    out.print(
        f"consensus: {c['status']} score {c['score']:+.3f} weight {c['weight']:.3f}"
        f" (+{c['votes_for']} / -{c['votes_against']})"
    )
    if fact["deprecated"]:
        d = fact["deprecated"]
        out.print(
            f"deprecated at seq {d['seq']} by {d['by']}: {escape(d['reason'] or '-')}"
            + (f" → {d['successor_id']}" if d["successor_id"] else "")
        )
    table = Table(title="history")
    for column in ("seq", "event", "agent", "detail"):
        table.add_column(column)
    for e in history["events"]:
        detail = {"vote_cast": f"{e.get('value', 0):+d} {e.get('reason') or ''}"}.get(
            e["kind"], e.get("reason") or ""
        )
        table.add_row(str(e["seq"]), e["kind"], e["agent_id"], escape(str(detail)))
    out.print(table)
    return 0


async def cmd_agents(args: argparse.Namespace) -> int:
    async with await _client(args) as c:
        rows = await c.agents()
    if args.json:
        _json(rows)
        return 0
    table = Table(title=f"agents in {args.tenant}")
    for column in ("agent", "reputation", "agrees", "disagrees", "registered at seq", "signs"):
        table.add_column(column)
    for a in rows:
        table.add_row(
            a["agent_id"],
            f"{a['reputation']:.3f}",
            str(a["agrees"]),
            str(a["disagrees"]),
            str(a["registered_seq"]),
            "yes" if a["public_key"] else "no",
        )
    out.print(table)
    return 0


async def cmd_status(args: argparse.Namespace) -> int:
    async with await _client(args) as c:
        status = await c.query("status")
        status["ledger_last_seq"] = await c.bus.last_seq()
    if args.json:
        _json(status)
        return 0
    table = Table(title="cortex status", show_header=False)
    table.add_row("ledger ends at seq", str(status["ledger_last_seq"]))
    table.add_row("this node applied up to", str(status["seq"]))
    table.add_row("read model", status["db"])
    pool, cache = status["pool"], status["cache"]
    table.add_row(
        "pool",
        f"{pool['readers_in_use']}/{pool['readers_total']} readers in use, writer "
        f"{'busy' if pool['writer_in_use'] else 'idle'}; {pool['acquisitions']} acquisitions, "
        f"{pool['waits']} waits, {pool['timeouts']} timeouts, {pool['replaced']} replaced",
    )
    table.add_row(
        "cache",
        f"{cache['size']}/{cache['capacity']} entries; {cache['hits']} hits, "
        f"{cache['misses']} misses, {cache['invalidations']} invalidations",
    )
    out.print(table)
    return 0


async def cmd_replay(args: argparse.Namespace) -> int:
    bus = await Bus.connect(args.nats or DEFAULT_URL, name="cortex-replay")
    try:
        with progress_bar("replaying", enabled=not args.json) as update:
            result = (await replay(bus, Path(args.db), until=args.until, progress=update)).to_dict()
    finally:
        await bus.close()
    if args.json:
        _json(result)
    else:
        out.print(
            f"rebuilt {result['db']} up to seq {result['seq']} in {result['seconds']} s "
            f"({result['events_per_s']} events/s)\ndigest {result['digest']}"
        )
    return 0


async def cmd_digest(args: argparse.Namespace) -> int:
    if args.db:
        path = Path(args.db)
        if not path.is_file():  # noqa: ASYNC240 - one stat of a local file
            raise CortexError(f"no database at {path}", code="not_found")
        async with ConnectionPool(path, readers=1) as pool:
            projector = Projector(pool)
            await projector.open()
            result = {"db": str(path), "seq": projector.seq, "digest": await digest(pool)}
    else:
        async with await _client(args) as c:
            result = await c.query("digest")
    if args.json:
        _json(result)
    else:
        out.print(f"seq {result['seq']}  digest {result['digest']}")
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the read-side commands to the ``cortex`` parser."""
    p = sub.add_parser(
        "facts", parents=[common], help="list facts (current, or as of a seq / world time)"
    )
    p.add_argument("--all", action="store_true", help="include deprecated facts")
    p.add_argument("--valid-at", help="only facts holding at this ISO 8601 world time")
    p.add_argument("--as-of", type=int, help="as the ledger stood at this seq")
    p.add_argument("--agent", help="only facts stored by this agent")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_facts)

    p = sub.add_parser("search", parents=[common], help="full-text search, best match first")
    p.add_argument("text")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("show", parents=[common], help="a fact with its consensus and full history")
    p.add_argument("fact_id")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("agents", parents=[common], help="the tenant's agents and their reputation")
    p.set_defaults(func=cmd_agents)

    p = sub.add_parser(
        "status", parents=[common], help="a node's position, pool and cache counters"
    )
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "replay", parents=[common], help="rebuild a read model from the ledger, with a progress bar"
    )
    p.add_argument(
        "--db",
        default="cortex-replay.db",
        help="database to (re)build (default ./cortex-replay.db)",
    )
    p.add_argument("--until", type=int, help="stop at this seq: the state as of then")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser(
        "digest", parents=[common], help="digest of a read model's contents (a node's, or --db)"
    )
    p.add_argument("--db", help="a database file instead of asking a node")
    p.set_defaults(func=cmd_digest)
