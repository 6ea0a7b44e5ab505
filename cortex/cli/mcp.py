"""``cortex mcp``: the MCP server, over stdio (for a desktop agent) or streamable HTTP.

Over stdio (the default) the process acts as one agent, ``--agent A``, in the
tenant of its credentials (``--creds FILE`` / ``CORTEX_CREDS``, as every
command connects), signing each command with ``--key FILE`` if given (that
agent's key; no other is ever used). Over HTTP (``--http``) each request acts
as the agent of its bearer token (``cortex token issue``), with its tenant's
own credentials; the server listens on 127.0.0.1 only.

``mcp`` (the SDK) is imported when the command runs, not when ``cortex`` starts.
"""

from __future__ import annotations

import argparse
import socket
import sys
from typing import Any, Final

from cortex.cli.connect import data_of, open_client
from cortex.cli.output import EXIT_OK
from cortex.cli.write import _read_key
from cortex.doors.backend import Backend
from cortex.doors.tokens import Principal, TokenStore
from cortex.errors import CortexError

DEFAULT_PORT: Final = 8787


async def cmd_mcp(args: argparse.Namespace) -> int:
    if args.http:
        if args.agent or args.key:
            raise CortexError(
                "--agent and --key are for stdio: over --http each request acts as the agent "
                "of its bearer token (`cortex token issue --agent A --tenant T [--key FILE]`)",
                code="usage",
            )
        return await _serve_http(args)
    if not args.agent:
        raise CortexError(
            "name the agent this MCP server acts as: --agent A (its tenant is the credentials')",
            code="usage",
        )
    return await _serve_stdio(args)


async def _serve_stdio(args: argparse.Namespace) -> int:
    from cortex.doors.mcp import serve_stdio  # noqa: PLC0415 - the SDK loads only here

    key = _read_key(args.key)
    client = await open_client(args)
    async with Backend.of(client, data_of(args)) as backend:
        await serve_stdio(backend, Principal(client.tenant, args.agent, key))
    return EXIT_OK


async def _serve_http(args: argparse.Namespace) -> int:
    import uvicorn  # noqa: PLC0415 - loaded by the command that serves only

    from cortex.doors.mcp import mcp_asgi  # noqa: PLC0415 - the SDK loads only here

    data = data_of(args)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", args.port))
    except OSError as e:
        sock.close()
        raise CortexError(f"cannot listen on 127.0.0.1:{args.port}: {e}", code="unavailable") from e
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    async with Backend(data, url=args.nats or None) as backend:
        # Served alone, the app's own lifespan runs the MCP session manager.
        app, _ = mcp_asgi(backend, TokenStore(data), base)
        server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
        )
        print(f"MCP on {base}/mcp (tokens: {data}/auth/tokens.json)", file=sys.stderr, flush=True)
        try:
            await server.serve(sockets=[sock])
        except SystemExit as e:  # uvicorn exits on a failed start-up
            raise CortexError(
                f"the MCP HTTP server failed to start ({e})", code="unavailable"
            ) from e
        finally:
            sock.close()
    return EXIT_OK


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "mcp",
        parents=[common],
        help="MCP server for agents: stdio as --agent A (default), or --http with bearer tokens",
    )
    p.add_argument("--agent", help="stdio: the agent every tool call acts as")
    p.add_argument(
        "--key",
        metavar="FILE",
        help="stdio: that agent's key file; each command is signed with it",
    )
    p.add_argument(
        "--http",
        action="store_true",
        help="serve streamable HTTP at /mcp on 127.0.0.1 (bearer tokens from `cortex token "
        "issue`, in the --data folder)",
    )
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"--http port (default {DEFAULT_PORT})"
    )
    p.set_defaults(func=cmd_mcp)
