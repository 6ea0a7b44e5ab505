"""``cortex serve``: the HTTP API (``cortex.doors.http``) on 127.0.0.1, until SIGINT/SIGTERM.

Requests act with bearer tokens (``cortex token issue``) of the data folder; the
server reaches CORTEX with each tenant's door credentials only. When the MCP
server is installed (``cortex.doors.mcp.mcp_asgi``) it is served at ``/mcp`` too.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import signal
from typing import Any

from rich.markup import escape

from cortex import served
from cortex.cli.connect import data_of
from cortex.cli.output import EXIT_OK, out
from cortex.doors.serve import HttpServer


def cmd_serve(args: argparse.Namespace) -> int:
    """On uvloop when it is installed (about half the event loop's CPU per request)."""
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return asyncio.run(_serve(args))
    code: int = uvloop.run(_serve(args))
    return code


async def _serve(args: argparse.Namespace) -> int:
    data = data_of(args)
    server = HttpServer(
        data, url=args.nats or served.served_url(data), port=args.port, mcp=not args.no_mcp
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        url = await server.start()
        mcp = f", MCP at {url}/mcp" if server.mcp_mounted else ""
        out.print(
            f"CORTEX HTTP API on {escape(url)}/v1 (docs {escape(url)}/docs{escape(mcp)}; "
            f"tokens of {escape(str(data))}). Ctrl-C to stop."
        )
        await stop.wait()
        out.print("stopping…")
    finally:
        await server.stop()
    return EXIT_OK


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve", help="serve the HTTP API (and MCP at /mcp) on 127.0.0.1, with bearer tokens"
    )
    p.add_argument(
        "--port", type=int, default=8080, help="port on 127.0.0.1 (default 8080; 0: any)"
    )
    p.add_argument(
        "--data", metavar="DIR", help="data folder of a `cortex up`: its tokens (default ./.cortex)"
    )
    p.add_argument(
        "--nats",
        default=os.environ.get("CORTEX_NATS_URL"),
        metavar="URL",
        help="NATS server (env CORTEX_NATS_URL; default: the data folder's running one)",
    )
    p.add_argument("--no-mcp", action="store_true", help="do not serve MCP at /mcp")
    p.add_argument("-v", "--verbose", action="store_true", help="log what happens to stderr")
    p.set_defaults(func=cmd_serve)
