"""Witness commands: ``cortex witness`` (the service), ``cortex cosign`` (ask witnesses),
and the ``cortex audit --witness`` options.

``cortex cosign --witness URL…`` takes the latest checkpoint from a node,
asks each witness to cosign it (from size 0 first; on 409 once more with a
consistency proof from the size the witness last cosigned) and stores the
cosigned note in ``<data>/cosigned/<origin>/<size>.note``, or prints it
with ``--out -``. Keep cosigned notes outside the ledger's data folder too:
whoever restores an old copy of the folder restores old notes with it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Final

from cortex.cli.connect import data_of, open_client
from cortex.cli.output import EXIT_FAILED, EXIT_OK, print_json
from cortex.trust import Head
from cortex.witness.check import WitnessPolicy
from cortex.witness.service import Witness, parse_log_key, serve
from cortex.witnessing import cosign, record
from events.errors import CortexError
from events.note import NoteError, parse_cosigner_key

COSIGNED: Final = "cosigned"
DEFAULT_WITNESS_DATA: Final = Path(".cortex-witness")


async def cmd_witness(args: argparse.Namespace) -> int:
    try:
        log_keys = [parse_log_key(k) for k in args.log_key]
    except NoteError as e:
        raise CortexError(f"--log-key: {e}", code="invalid_field") from e
    witness = Witness.open(Path(args.data), args.name, log_keys)
    await serve(witness, args.port)
    return EXIT_OK


async def cmd_cosign(args: argparse.Namespace) -> int:
    async with await open_client(args) as c:
        checkpoint = await c.checkpoint()
        note = str(checkpoint["note"])
        head = Head.from_note(note)

        async def proof(old_size: int, new_size: int) -> list[bytes]:
            doc = await c.consistency_proof(old_size, new_size)
            return [bytes.fromhex(p) for p in doc.get("path", [])]

        lines, failed = "", []
        for url in args.witness:
            try:
                lines += await cosign(note, url, proof)
            except CortexError as e:
                failed.append({"witness": url, "code": e.code, "message": e.message})
    cosigned = note + lines
    where = "-"
    if args.out == "-":
        sys.stdout.write(cosigned)
    else:
        folder = Path(args.out) if args.out else data_of(args) / COSIGNED
        where = str(record(folder, note, lines))
    if args.json:
        print_json(
            {"tree_size": head.tree_size, "note": cosigned, "saved": where, "failed": failed}
        )
    elif where != "-":
        sys.stdout.write(f"checkpoint {head.tree_size} of {head.origin} cosigned: {where}\n")
    for f in failed:
        sys.stderr.write(f"witness {f['witness']} did not cosign [{f['code']}]: {f['message']}\n")
    return EXIT_FAILED if failed else EXIT_OK


def witness_policy(args: argparse.Namespace) -> WitnessPolicy | None:
    """The ``cortex audit --witness`` options as the audit's policy (None without them)."""
    if not args.witness:
        if args.witness_url:
            raise CortexError(
                "--witness-url needs --witness: the keys its cosignatures must verify with",
                code="invalid_field",
            )
        return None
    try:
        keys = tuple(parse_cosigner_key(k) for k in args.witness)
    except NoteError as e:
        raise CortexError(f"--witness: {e}", code="invalid_field") from e
    k = len(keys) if args.min_witnesses is None else args.min_witnesses
    if not 1 <= k <= len(keys):
        raise CortexError(
            "--min-witnesses is between 1 and the number of --witness keys", code="invalid_field"
        )
    folder = Path(args.cosigned) if args.cosigned else data_of(args) / COSIGNED
    return WitnessPolicy(keys, k, folder, tuple(args.witness_url or ()))


def add_audit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--witness",
        action="append",
        metavar="VERIFIER",
        help="require a cosignature by this witness (its verifier key, as `cortex witness` "
        "prints it) on the latest checkpoint or one the ledger extends (repeatable)",
    )
    p.add_argument(
        "--min-witnesses",
        type=int,
        metavar="K",
        help="how many of the --witness keys must back the ledger (default: all)",
    )
    p.add_argument(
        "--cosigned",
        metavar="DIR",
        help="where the cosigned notes are (default <data>/cosigned; keep a copy outside "
        "the data folder)",
    )
    p.add_argument(
        "--witness-url",
        action="append",
        metavar="URL",
        help="also ask this witness for the latest note it cosigned for the ledger's origin "
        "(counted like a note in --cosigned; one that does not answer backs nothing; "
        "repeatable)",
    )


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    w = sub.add_parser(
        "witness",
        help="run a witness: cosign checkpoints that extend the last one it cosigned "
        "(C2SP tlog-witness, on 127.0.0.1)",
    )
    w.add_argument(
        "--data",
        default=str(DEFAULT_WITNESS_DATA),
        metavar="DIR",
        help=f"the witness's folder: its key and state (default ./{DEFAULT_WITNESS_DATA})",
    )
    w.add_argument(
        "--log-key",
        action="append",
        required=True,
        metavar="[ORIGIN=]VERIFIER",
        help="a log's verifier key (as `cortex checkpoint` prints it), optionally bound to one "
        "origin; repeatable",
    )
    w.add_argument("--name", default="cortex-witness", help="the witness's key name")
    w.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    w.add_argument("-v", "--verbose", action="store_true", help="log what happens to stderr")
    w.set_defaults(func=cmd_witness)

    c = sub.add_parser(
        "cosign",
        parents=[common],
        help="have witnesses cosign the latest checkpoint and keep the cosigned note",
    )
    c.add_argument("--witness", action="append", required=True, metavar="URL")
    c.add_argument(
        "--out",
        metavar="DIR",
        help="save under this folder instead of <data>/cosigned; `-` prints the note",
    )
    c.set_defaults(func=cmd_cosign)
