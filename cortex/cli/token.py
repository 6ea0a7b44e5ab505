"""``cortex token issue|list|revoke``: the bearer tokens of the network doors.

A token stands for one agent of one tenant (``cortex.doors.tokens``); it is
printed once, when issued, and only its hash is kept in the data folder.
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.markup import escape

from cortex.cli.connect import data_of
from cortex.cli.output import EXIT_FAILED, EXIT_OK, out, print_json
from cortex.doors.tokens import TokenStore, describe
from cortex.errors import CortexError


def cmd_issue(args: argparse.Namespace) -> int:
    if not args.tenant:
        raise CortexError("name the token's tenant: --tenant T", code="usage")
    store = TokenStore(data_of(args))
    token = store.issue(args.tenant, args.agent, args.key)
    if args.json:
        print_json({"token": token, "tenant": args.tenant, "agent": args.agent})
    else:
        print(token)  # alone on stdout, for scripts: shown this once, never stored
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    rows = [describe(r) for r in TokenStore(data_of(args)).list()]
    if args.json:
        print_json(rows)
        return EXIT_OK
    for r in rows:
        state = f"revoked {r['revoked']}" if r["revoked"] else "active"
        key = f" key {r['key_file']}" if r["key_file"] else ""
        out.print(
            escape(f"{r['id']}  {r['tenant']}/{r['agent']}  {state}  created {r['created']}{key}")
        )
    return EXIT_OK


def cmd_revoke(args: argparse.Namespace) -> int:
    done = TokenStore(data_of(args)).revoke(args.token_id)
    if args.json:
        print_json({"id": args.token_id, "revoked": done})
    elif done:
        out.print(f"token {escape(args.token_id)} revoked")
    else:
        out.print(f"no active token {escape(args.token_id)}")
    return EXIT_OK if done else EXIT_FAILED


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    token = sub.add_parser(
        "token", help="bearer tokens for the HTTP API and MCP over HTTP"
    ).add_subparsers(dest="sub", required=True, metavar="ACTION")
    p = token.add_parser(
        "issue",
        parents=[common],
        help="issue a token for AGENT of --tenant T (printed once; only its hash is kept)",
    )
    p.add_argument("--agent", required=True, help="the agent the token acts as")
    p.add_argument("--key", metavar="FILE", help="the agent's key file: its commands are signed")
    p.set_defaults(func=cmd_issue)
    p = token.add_parser("list", parents=[common], help="the tokens issued (never the secrets)")
    p.set_defaults(func=cmd_list)
    p = token.add_parser("revoke", parents=[common], help="revoke a token by its id")
    p.add_argument("token_id", metavar="ID")
    p.set_defaults(func=cmd_revoke)
