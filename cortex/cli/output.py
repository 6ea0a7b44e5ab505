"""What every ``cortex`` command prints with: the consoles, JSON lines, tables, progress bars.

Readable output goes to ``out`` (rich, wide when piped so scripts and logs
keep whole rows), errors to ``err``; ``--json`` output is one JSON document
per line written straight to stdout.
"""

from __future__ import annotations

import contextlib
import json
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from events.model import (
    AgentRegistered,
    CheckpointSigned,
    Event,
    FactDeprecated,
    FactStored,
    VoteCast,
    WriterKeyAdded,
)

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
# Piped output keeps whole table rows: scripts and logs read wider than 80 columns.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False)

Update = Callable[[int, int | None], None]


def print_json(value: Any, *, indent: int | None = None) -> None:
    """``value`` as one JSON document on stdout (anything unknown as its ``str``)."""
    sys.stdout.write(json.dumps(value, default=str, indent=indent) + "\n")


@contextlib.contextmanager
def progress_bar(label: str, *, total: int | None = None, enabled: bool = True) -> Iterator[Update]:
    """Yield ``update(done, total)``; a no-op when disabled or stderr is not a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield lambda _done, _total: None
        return
    with Progress(
        TextColumn(label),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda done, new_total: bar.update(task, completed=done, total=new_total or total)


# -- tables -------------------------------------------------------------------


def _short(value: uuid.UUID) -> str:
    """The random tail of a UUIDv7 (its head is a timestamp, alike for neighbours)."""
    return "…" + str(value)[-8:]


def summary(event: Event) -> tuple[str, str]:
    """(agent, what) for a row of the events table."""
    if isinstance(event, AgentRegistered):
        return event.agent_id, "registered" + (" with a signing key" if event.public_key else "")
    if isinstance(event, FactStored):
        text = event.content if len(event.content) <= 48 else event.content[:47] + "…"
        return event.agent_id, f"fact {_short(event.fact_id)}: {text}"
    if isinstance(event, FactDeprecated):
        return event.agent_id, f"deprecated {_short(event.fact_id)}" + (
            f": {event.reason}" if event.reason else ""
        )
    if isinstance(event, VoteCast):
        sign = {1: "+1", -1: "-1", 0: "withdrew"}.get(event.value, str(event.value))
        signed = ", signed" if event.signature else ""
        return event.agent_id, f"vote {sign} on {_short(event.fact_id)}{signed}"
    if isinstance(event, WriterKeyAdded):
        return "", f"writer key {event.name}"
    if isinstance(event, CheckpointSigned):
        return "", f"checkpoint: {event.tree_size} events, root {event.root[:12]}…"
    return "", ""


def print_events(rows: Sequence[dict[str, Any]], *, title: str) -> None:
    """Ledger events (as ``cortex log`` and the demo list them), one row each."""
    table = Table(title=title)
    for column in ("seq", "kind", "tenant", "agent"):
        table.add_column(column, no_wrap=True)
    table.add_column("what", overflow="fold")
    table.add_column("hash", no_wrap=True)
    for row in rows:
        table.add_row(
            str(row["seq"]),
            row["kind"],
            row["tenant"],
            row.get("agent", ""),
            row.get("what", ""),
            row["hash"][:12] + "…",
        )
    out.print(table)


def print_facts(rows: list[dict[str, Any]], title: str, *, rank: bool = False) -> None:
    """Facts with their consensus (``rank``: search hits, showing the matching snippet)."""
    if not rows:
        out.print(f"{escape(title)}: nothing " + ("matches" if rank else "to show"))
        return
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
