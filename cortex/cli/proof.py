"""The proof side of the ``cortex`` command line: checkpoint, proof, verify-proof.

``cortex checkpoint`` asks the writer for a signed checkpoint now and
prints it with the writer's verifier key; ``cortex proof EVENT`` and
``cortex proof --consistency OLD NEW`` print (or ``--out`` save) proof
documents; ``cortex verify-proof FILE`` checks one with no server at all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from cortex.cli.connect import open_client
from cortex.cli.output import EXIT_FAILED, EXIT_OK, print_json
from cortex.errors import CortexError
from cortex.receipts import load_receipt, verify_receipt
from events.proof import check_proof


def _print(value: Any) -> None:
    print_json(value)  # one compact JSON document, as every command prints (files: indented)


async def cmd_checkpoint(args: argparse.Namespace) -> int:
    async with await open_client(args) as c:
        cp = await c.make_checkpoint()
    if args.json:
        _print(cp)
    else:
        sys.stdout.write(
            f"checkpoint at seq {cp['seq']}: {cp['tree_size']} events, root {cp['root']}\n\n"
            f"{cp['note']}\nverifier key: {cp['verifier']}\n"
        )
    return EXIT_OK


async def _fetch_proof(args: argparse.Namespace) -> dict[str, Any]:
    async with await open_client(args) as c:
        if args.consistency:
            old, new = args.consistency
            return await c.consistency_proof(old, new)
        if args.event is None:
            raise CortexError("name an EVENT (seq or id), or use --consistency OLD NEW")
        event: Any = int(args.event) if args.event.isdigit() else args.event
        return await c.proof(event, tree_size=args.tree_size)


def cmd_proof(args: argparse.Namespace) -> int:
    """Synchronous around the query, so the file is written outside the event loop."""
    doc = asyncio.run(_fetch_proof(args))
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
        if not args.json:
            sys.stdout.write(f"proof written to {args.out}\n")
    if args.json or not args.out:
        _print(doc)
    return EXIT_OK


def cmd_verify_proof(args: argparse.Namespace) -> int:
    try:
        doc = json.loads(Path(args.file).read_text())
    except (OSError, ValueError) as e:
        raise CortexError(f"cannot read a proof from {args.file}: {e}", code="invalid_proof") from e
    if not isinstance(doc, dict):
        raise CortexError(f"{args.file} does not hold a proof document", code="invalid_proof")
    check = check_proof(doc, verifier=args.key)
    if args.json:
        _print(check.to_dict())
    else:
        verdict = "VALID" if check.ok else "INVALID"
        what = (
            f"seq {check.facts.get('seq')} is in the tree of {check.facts.get('tree_size')} events"
            if check.kind.startswith("cortex.inclusion")
            else f"the tree of {check.facts.get('new_size')} events extends that of "
            f"{check.facts.get('old_size')}"
        )
        sys.stdout.write(f"{verdict}: {what}\n")
        if not check.pinned:
            sys.stdout.write(
                "note: checked with the key named in the file; pass --key VERIFIER to pin "
                "the writer's key\n"
            )
        for problem in check.problems:
            sys.stdout.write(f"  - {problem}\n")
    return EXIT_OK if check.ok else EXIT_FAILED


async def cmd_verify_receipt(args: argparse.Namespace) -> int:
    """Hold a saved receipt against the ledger now: exit 1 if the ledger lost the event."""
    doc = load_receipt(Path(args.file))
    async with await open_client(args) as c:
        check = await verify_receipt(c, doc, verifier=args.key)
    if args.json:
        _print(check.to_dict())
    elif check.ok:
        sys.stdout.write(
            f"VALID: seq {check.seq} is in the ledger with its receipt's hash, "
            f"under the checkpoint of {check.tree_size} events\n"
        )
    else:
        sys.stdout.write(f"missing_acknowledged_event: seq {check.seq}\n")
        for problem in check.problems:
            sys.stdout.write(f"  - {problem}\n")
    return EXIT_OK if check.ok else EXIT_FAILED


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the proof commands to the ``cortex`` parser."""
    p = sub.add_parser("checkpoint", parents=[common], help="have the writer sign a checkpoint now")
    p.set_defaults(func=cmd_checkpoint)

    p = sub.add_parser(
        "proof", parents=[common], help="an inclusion or consistency proof, checkable offline"
    )
    p.add_argument("event", nargs="?", help="the event's seq or id")
    p.add_argument("--tree-size", type=int, help="against this checkpoint (default: the latest)")
    p.add_argument(
        "--consistency",
        nargs=2,
        type=int,
        metavar=("OLD", "NEW"),
        help="prove the checkpoint of NEW events extends that of OLD",
    )
    p.add_argument("--out", help="write the proof document to this file")
    p.set_defaults(func=cmd_proof)

    p = sub.add_parser(
        "verify-proof", parents=[common], help="check a proof document offline, no server"
    )
    p.add_argument("file")
    p.add_argument(
        "--key",
        action="append",
        help="a writer's verifier key (name+id+key) to trust; repeatable (each writer has one)",
    )
    p.set_defaults(func=cmd_verify_proof)

    p = sub.add_parser(
        "verify-receipt",
        parents=[common],
        help="check a saved receipt (--receipt-out) against the ledger as it is now",
    )
    p.add_argument("file")
    p.add_argument("--key", action="append", help="a writer's verifier key to trust; repeatable")
    p.set_defaults(func=cmd_verify_receipt)
