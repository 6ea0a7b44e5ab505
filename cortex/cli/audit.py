"""``cortex audit``: the summary table, each violation with its type and place, ``--json``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from cortex.audit import AuditReport, audit_ledger
from cortex.cli.ledger import open_ledger
from cortex.cli.output import EXIT_FAILED, EXIT_OK, out, print_json, progress_bar
from cortex.cli.witness import add_audit_options, witness_policy
from cortex.errors import CortexError
from cortex.trust import TrustStore
from events.note import NoteError, parse_verifier_key

SHOWN = 50
CHECKED = (
    "chain_break",
    "hash_mismatch",
    "sequence_gap",
    "duplicate_event",
    "malformed_event",
    "merkle_mismatch",
    "checkpoint_signature",
    "agent_signature",
    "invalid_event",
    "projection_mismatch",
    "rollback",
    "fork",
    "witness_missing",
)


def print_audit(report: AuditReport, as_json: bool) -> int:
    """Print the report; the exit code (0 only when everything holds)."""
    if as_json:
        print_json(report.to_dict())
        return EXIT_OK if report.ok else EXIT_FAILED
    table = Table(title="cortex audit")
    table.add_column("checked")
    table.add_column("count", justify="right")
    table.add_column("violations", justify="right")
    counts = report.counts()

    def row(what: str, count: Any, *kinds: str) -> None:
        bad = sum(counts.get(k, 0) for k in kinds)
        table.add_row(what, f"{count:,}", f"[red]{bad:,}[/]" if bad else "[green]0[/]")

    row(
        "events: hash, chain link, seq",
        report.events,
        "chain_break",
        "hash_mismatch",
        "sequence_gap",
    )
    row("event ids and bodies", report.events, "duplicate_event", "malformed_event")
    row("checkpoint roots recomputed", report.checkpoints, "merkle_mismatch")
    row("checkpoint signatures", report.checkpoint_signatures, "checkpoint_signature")
    row("agent signatures", report.agent_signatures, "agent_signature")
    row("events re-judged by the writer's rules", report.rejudged, "invalid_event")
    for p in report.projections:
        row(f"{p.db} (rows vs a fresh replay to seq {p.seq})", p.rows, "projection_mismatch")
    out.print(table)
    trust = "pinned" if report.pinned else "recorded in the ledger, not pinned (--writer-key)"
    for name, key in report.keys.items():
        out.print(f"writer key {name} {key[:16]}… ({trust})")
    out.print(
        f"last seq {report.last_seq}, head {report.head[:16]}…, latest checkpoint "
        f"{report.latest_checkpoint} events, {report.seconds:.2f} s"
    )
    if report.trust:
        out.print(escape(report.trust))
    for v in report.violations[:SHOWN]:
        out.print(f"[red]{v.type}[/] at {escape(v.where)}: {escape(v.detail)}")
    if len(report.violations) > SHOWN:
        out.print(f"… and {len(report.violations) - SHOWN} more (use --json for all)")
    out.print("[green]intact[/]" if report.ok else f"[red]{len(report.violations)} violation(s)[/]")
    return EXIT_OK if report.ok else EXIT_FAILED


async def cmd_audit(args: argparse.Namespace) -> int:
    dbs = [Path(db) for db in args.db or ()]
    pinned = None
    if args.writer_key:
        try:
            pinned = [parse_verifier_key(k)[1].hex() for k in args.writer_key]
        except NoteError as e:
            raise CortexError(str(e), code="invalid_field") from e
    trust = None if args.no_trust else TrustStore.load(Path(args.trust) if args.trust else None)
    witnesses = witness_policy(args)
    async with open_ledger(args, name="cortex-audit", dbs=dbs) as bus:
        with progress_bar("auditing", enabled=not args.json) as update:
            report = await audit_ledger(
                bus,
                dbs=dbs,
                writer_keys=pinned,
                progress=update,
                trust=trust,
                witnesses=witnesses,
                origin=args.origin,
            )
    return print_audit(report, args.json)


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "audit",
        parents=[common],
        help="check every hash, link, checkpoint and signature (and --db against a replay); "
        "exit 1 on any violation",
    )
    p.add_argument(
        "--db",
        action="append",
        metavar="PATH",
        help="also compare this projection database with a fresh replay (repeatable)",
    )
    p.add_argument(
        "--writer-key",
        action="append",
        metavar="VERIFIER",
        help="trust only checkpoints signed by this writer key (as `cortex checkpoint` "
        "prints it; repeatable)",
    )
    p.add_argument(
        "--origin",
        metavar="ORIGIN",
        help="the ledger's origin (`cortex.ledger/…`, as `cortex audit` prints it): a ledger "
        "whose first event was rewritten has another origin and fails with origin_mismatch",
    )
    p.add_argument(
        "--trust",
        metavar="FILE",
        help="the remembered heads: the ledger must extend the checkpoint remembered for its "
        "origin, and its latest is remembered when the audit holds (default "
        "$XDG_CONFIG_HOME/cortex/trust.json)",
    )
    p.add_argument(
        "--no-trust",
        action="store_true",
        help="neither check nor update remembered heads",
    )
    add_audit_options(p)
    p.set_defaults(func=cmd_audit)
