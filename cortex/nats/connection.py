"""Opening and closing a connection to NATS."""

from __future__ import annotations

import contextlib
from typing import Any

import nats.errors
import structlog
from nats.aio.client import Client as NatsClient

from cortex.nats.consumer import header_lines
from cortex.nats.errors import translated

log = structlog.get_logger(__name__)


class _Client(NatsClient):
    """nats-py's client with the lighter header parser of ``consumer.header_lines``.
    Should a later nats-py stop calling this hook, reads get slower, not wrong."""

    _parse_header_lines = staticmethod(header_lines)


async def _log_nats_error(e: Exception) -> None:
    # nats-py prints tracebacks for connection trouble by default; a user
    # gets one clear CORTEX error instead, and the detail goes to the log.
    log.debug("nats_error", error=str(e) or type(e).__name__)


async def connect(url: str, *, name: str, timeout: float) -> NatsClient:
    """Connect, failing fast with Unavailable when nothing listens at ``url``."""
    with translated("connect", url=url):
        nc = _Client()
        # nats-py types these seconds as int; it takes (and uses) floats.
        options: dict[str, Any] = {
            "connect_timeout": timeout,
            # Fail fast when nothing listens at first…
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": 0.5,
            "allow_reconnect": True,
        }
        await nc.connect(url, name=name, error_cb=_log_nats_error, **options)
    # …but once connected, ride out restarts and cluster fail-overs.
    nc.options["max_reconnect_attempts"] = -1
    return nc


async def close(nc: NatsClient) -> None:
    """Drain (finish what is in flight), then close; with the server gone, just close."""
    if nc.is_connected:
        with contextlib.suppress(nats.errors.Error, OSError):
            await nc.drain()
    if not nc.is_closed:
        with contextlib.suppress(nats.errors.Error, OSError):
            await nc.close()
