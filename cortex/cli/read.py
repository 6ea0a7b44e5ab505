"""The read side of the ``cortex`` command line: facts, search, show, agents, status and
digest ask a node; log reads the ledger itself; replay rebuilds a read model from it.

Every command that asks a node takes ``--min-seq N`` (a receipt's seq): the node first
waits until it has applied that event, so a read sees the write before it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import msgspec
from rich.markup import escape
from rich.table import Table

from cortex.cli.connect import open_client
from cortex.cli.ledger import open_ledger
from cortex.cli.output import (
    EXIT_OK,
    out,
    print_events,
    print_facts,
    print_json,
    progress_bar,
    summary,
)
from cortex.cli.parse import positive
from cortex.client import Client
from cortex.errors import CortexError
from events.codec import decode_event
from events.model import kind_of
from projections.digest import file_digest
from projections.replay import replay


async def _client(args: argparse.Namespace) -> Client:
    return await open_client(args)


def _print_page(page: dict[str, Any], args: argparse.Namespace, title: str, *, rank: bool) -> None:
    """A page of facts or hits: one JSON object ``{"items", "next_cursor"}``, or the table
    and, when more follow, the command that shows them."""
    if args.json:
        print_json(page)
        return
    print_facts(page["items"], title, rank=rank)
    if page["next_cursor"]:
        out.print(
            f"{len(page['items'])} shown, more follow: add [bold]--cursor {page['next_cursor']}[/]"
            " for the next page"
        )


async def cmd_facts(args: argparse.Namespace) -> int:
    filters: dict[str, Any] = {"limit": args.limit, "include_deprecated": args.all}
    if args.cursor:
        filters["cursor"] = args.cursor
    if args.valid_at:
        filters["valid_at"] = args.valid_at
    if args.as_of is not None:
        filters["as_of_seq"] = args.as_of
    if args.agent:
        filters["agent_id"] = args.agent
    async with await _client(args) as c:
        page = await c.facts_page(min_seq=args.min_seq, **filters)
    _print_page(page, args, f"facts in {args.tenant}", rank=False)
    return EXIT_OK


async def cmd_search(args: argparse.Namespace) -> int:
    async with await _client(args) as c:
        page = await c.search_page(
            args.text,
            limit=args.limit,
            cursor=args.cursor,
            min_seq=args.min_seq,
            as_of_seq=args.as_of,
        )
    _print_page(page, args, f"search {args.text!r} in {args.tenant}", rank=True)
    return EXIT_OK


async def cmd_show(args: argparse.Namespace) -> int:
    async with await _client(args) as c:
        history = await c.history(args.fact_id, min_seq=args.min_seq, as_of_seq=args.as_of)
    if history is None:
        raise CortexError(f"no fact {args.fact_id} in tenant {args.tenant!r}", code="not_found")
    if args.json:
        print_json(history)
        return EXIT_OK
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
    return EXIT_OK


async def cmd_agents(args: argparse.Namespace) -> int:
    async with await _client(args) as c:
        rows = await c.agents(min_seq=args.min_seq)
    if args.json:
        print_json({"items": rows, "next_cursor": None})  # a list read, shaped as the others
        return EXIT_OK
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
    return EXIT_OK


async def cmd_status(args: argparse.Namespace) -> int:
    async with await _client(args) as c:
        status = await c.query("status", min_seq=args.min_seq)
        status["ledger_last_seq"] = await c.bus.last_seq()
    if args.json:
        print_json(status)
        return EXIT_OK
    table = Table(title="cortex status", show_header=False)
    table.add_row("ledger ends at seq", str(status["ledger_last_seq"]))
    table.add_row("this node applied up to", str(status["seq"]))
    following = status.get("following", True)
    table.add_row(
        "following the ledger",
        "yes" if following else f"[bold red]no[/]: {escape(status.get('stopped_reason', ''))}",
    )
    if status.get("quarantined"):
        table.add_row(
            "quarantined events",
            f"{status['quarantined']} (events no writer could have appended; `cortex audit --db`)",
        )
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
    return EXIT_OK


async def cmd_replay(args: argparse.Namespace) -> int:
    db = Path(args.db)
    async with open_ledger(args, name="cortex-replay", dbs=[db], writes=db) as bus:
        with progress_bar("replaying", enabled=not args.json) as update:
            result = (await replay(bus, db, until=args.until, progress=update)).to_dict()
    if args.json:
        print_json(result)
    else:
        out.print(
            f"rebuilt {result['db']} up to seq {result['seq']} in {result['seconds']} s "
            f"({result['events_per_s']} events/s)\ndigest {result['digest']}"
        )
    return EXIT_OK


async def cmd_digest(args: argparse.Namespace) -> int:
    if args.db:
        if args.min_seq is not None:
            raise CortexError(
                "--min-seq waits for a node; a --db file is read as it is", code="invalid_field"
            )
        path = Path(args.db)
        if not path.is_file():  # noqa: ASYNC240 - one stat of a local file
            raise CortexError(f"no database at {path}", code="not_found")
        seq, value = await file_digest(path)
        result = {"db": str(path), "seq": seq, "digest": value}
    else:
        async with await _client(args) as c:
            result = await c.query("digest", min_seq=args.min_seq)
    if args.json:
        print_json(result)
    else:
        out.print(f"seq {result['seq']}  digest {result['digest']}")
    return EXIT_OK


async def cmd_log(args: argparse.Namespace) -> int:
    if args.start < 1 or (args.limit is not None and args.limit < 1):
        raise CortexError("--from and --limit count from 1", code="invalid_field")
    async with open_ledger(args, name="cortex-log") as bus:
        last = await bus.last_seq()
        end = last if args.limit is None else min(last, args.start + args.limit - 1)
        rows: list[dict[str, Any]] = []
        async for stored in bus.read(args.start, end):
            row: dict[str, Any] = {
                "seq": stored.seq,
                "subject": stored.subject,
                "hash": stored.hash.hex(),
            }
            try:
                event = decode_event(stored.body)
            except (msgspec.DecodeError, msgspec.ValidationError):
                row.update(kind="?", tenant="?", agent="", what="(undecodable body)")
            else:
                agent, what = summary(event)
                row.update(
                    kind=kind_of(event),
                    tenant=event.tenant,
                    id=str(event.id),
                    agent=agent,
                    what=what,
                )
                if args.json:
                    row["event"] = msgspec.to_builtins(event)
            rows.append(row)
    if args.json:
        for row in rows:
            print_json(row)
        return EXIT_OK
    print_events(rows, title=f"CORTEX_LEDGER seq {args.start}..{end} of {last}")
    return EXIT_OK


def register_log(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``cortex log`` (in its place among the write commands, as ``--help`` lists it)."""
    p = sub.add_parser("log", parents=[common], help="list the ledger's events")
    p.add_argument("--from", dest="start", type=int, default=1, help="first seq (default 1)")
    p.add_argument("--limit", type=int, help="at most this many events")
    p.set_defaults(func=cmd_log)


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the read-side commands to the ``cortex`` parser."""
    reads = argparse.ArgumentParser(add_help=False)
    reads.add_argument(
        "--min-seq",
        type=positive,
        metavar="SEQ",
        help="first wait (up to 5 s) until the node has applied this seq, e.g. a write's",
    )
    node = [common, reads]
    p = sub.add_parser(
        "facts", parents=node, help="list facts (current, or as of a seq / world time)"
    )
    p.add_argument("--all", action="store_true", help="include deprecated facts")
    p.add_argument("--valid-at", help="only facts holding at this ISO 8601 world time")
    p.add_argument("--as-of", type=int, help="as the ledger stood at this seq")
    p.add_argument("--agent", help="only facts stored by this agent")
    p.add_argument("--limit", type=positive, default=50, help="facts per page (default 50)")
    p.add_argument("--cursor", help="the next page: the cursor the page before printed")
    p.set_defaults(func=cmd_facts)

    p = sub.add_parser("search", parents=node, help="full-text search, best match first")
    p.add_argument("text")
    p.add_argument("--limit", type=positive, default=20, help="hits per page (default 20)")
    p.add_argument("--cursor", help="the next page: the cursor the page before printed")
    p.add_argument("--as-of", type=int, help="among the facts as the ledger stood at this seq")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("show", parents=node, help="a fact with its consensus and full history")
    p.add_argument("fact_id")
    p.add_argument("--as-of", type=int, help="as the ledger stood at this seq")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("agents", parents=node, help="the tenant's agents and their reputation")
    p.set_defaults(func=cmd_agents)

    p = sub.add_parser("status", parents=node, help="a node's position, pool and cache counters")
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
        "digest", parents=node, help="digest of a read model's contents (a node's, or --db)"
    )
    p.add_argument("--db", help="a database file instead of asking a node")
    p.set_defaults(func=cmd_digest)
