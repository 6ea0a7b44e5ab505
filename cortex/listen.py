"""A listening socket on loopback for CORTEX's HTTP services (the API, MCP, witnesses).

Created with ``IPPROTO_TCP`` named: asyncio turns TCP_NODELAY on only for
sockets whose protocol says TCP, and accepted connections inherit it. With
protocol 0, every small answer waited about 40 ms for a delayed ACK
(measured on the HTTP API: get p99 40 ms, 5 ms once named).
"""

from __future__ import annotations

import socket
from typing import Final

from events.errors import CortexError

HOST: Final = "127.0.0.1"


def listen(port: int, *, what: str, code: str) -> socket.socket:
    """A socket bound to 127.0.0.1:``port`` (0: a free one); ``CortexError(code)`` naming
    ``what`` if it cannot be bound."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, port))
    except OSError as e:
        sock.close()
        raise CortexError(f"{what} cannot listen on {HOST}:{port}: {e}", code=code) from e
    return sock
