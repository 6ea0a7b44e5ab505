"""The ``cortex`` command line: run the ledger, write to it, read it, audit it.

Readable output by default and ``--json`` for scripts. A refused command or
an unreachable server prints one line saying what was wrong and exits
non-zero; it never prints a traceback. The commands live by job in
``write``, ``read``, ``audit`` and ``proof``; this module builds the parser,
dispatches, and turns errors into that one line.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import inspect
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

import structlog
from rich.markup import escape

from cortex.cli import (
    audit,
    cluster,
    connect,
    mcp,
    proof,
    read,
    serve,
    tenant,
    token,
    witness,
    write,
)
from cortex.cli.output import EXIT_FAILED, EXIT_OK, err, print_json
from cortex.errors import CortexError
from cortex.nats import DEFAULT_URL


def _configure_logging(verbose: bool) -> None:
    level = logging.INFO if verbose else logging.WARNING
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


class UsageError(CortexError):
    """The command line is not one ``cortex`` understands."""

    code = "usage"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is CORTEX's one error line and exit 1 (not argparse's 2).

    Sub-command parsers are made of the same class, so this holds for every command.
    """

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _version() -> str:
    try:
        return importlib.metadata.version("cortex-ledger")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--nats",
        default=os.environ.get("CORTEX_NATS_URL"),
        metavar="URL",
        help=f"NATS server or cluster URL (env CORTEX_NATS_URL; default {DEFAULT_URL})",
    )
    common.add_argument(
        "--tenant",
        default=os.environ.get("CORTEX_TENANT"),
        help="tenant to act in (env CORTEX_TENANT; default: the agent credentials' own, "
        "else 'default')",
    )
    connect.add_options(common)
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument("-v", "--verbose", action="store_true", help="log what happens to stderr")

    parser = _Parser(
        prog="cortex", description="CORTEX: shared, tamper-evident memory for AI agents."
    )
    parser.add_argument("--version", action="version", version=f"cortex {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # In the order `cortex --help` lists them.
    write.register(sub, common)
    cluster.register(sub)
    tenant.register(sub, common)
    token.register(sub, common)
    mcp.register(sub, common)
    serve.register(sub)
    read.register_log(sub, common)
    audit.register(sub, common)
    read.register(sub, common)
    proof.register(sub, common)
    witness.register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        if "--json" in argv:
            print_json({"error": {"code": e.code, "message": e.message}})
        err.print(f"[red]error[/] {escape(f'[{e.code}]')}: {escape(e.message)}")
        return EXIT_FAILED
    if args.command is None:
        parser.print_help()
        return EXIT_OK
    _configure_logging(args.verbose or args.func in (write.cmd_up, cluster.cmd_up))
    try:
        result = args.func(args)
        code: int = asyncio.run(result) if inspect.iscoroutine(result) else result
    except CortexError as e:
        if getattr(args, "json", False):
            print_json({"error": {"code": e.code, "message": e.message}})
        err.print(f"[red]error[/] {escape(f'[{e.code}]')}: {escape(e.message)}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    return code
