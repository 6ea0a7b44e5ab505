"""Opening and closing a connection to NATS, as one identity.

A connection is made with ``Credentials`` (an nkey seed: nats-py signs the
server's nonce with it) and subscribes only under that user's inbox prefix,
the one its permissions allow. The server reports a subject the permissions
do not allow asynchronously (``-ERR 'Permissions Violation …'``, which
nats-py hands to the error callback and otherwise ignores); ``Guard`` turns
it into a ``Forbidden`` for the request or subscription that caused it,
instead of a request that waits for its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

import nats.errors
import structlog
from nats.aio.client import Client as NatsClient

from cortex.errors import Forbidden, Unavailable
from cortex.nats.auth import Credentials
from cortex.nats.consumer import header_lines
from cortex.nats.errors import translated
from cortex.nats.subjects import parse_urls
from projections.tasks import stop_task

log = structlog.get_logger(__name__)

#: nats-py lower-cases the server's error text before it reaches the callback.
_VIOLATION: Final = re.compile(r'permissions violation for (publish|subscription) to "([^"]*)"')


class Guard:
    """A connection's permission violations, matched to what is waiting on them."""

    __slots__ = ("denied_subscriptions", "refused", "unauthorized", "waiting")

    def __init__(self) -> None:
        #: The server refused the connection's credentials (or their absence).
        self.unauthorized = False
        #: Set with ``unauthorized``, for a first connect to stop trying at once.
        self.refused = asyncio.Event()
        #: lower-cased subject → the tasks whose request to it is in flight.
        self.waiting: dict[str, set[asyncio.Task[Any]]] = {}
        #: Subscriptions the server refused (lower-cased), for ``rpc.serve`` to report.
        self.denied_subscriptions: set[str] = set()

    def violated(self, kind: str, subject: str) -> None:
        if kind == "subscription":
            self.denied_subscriptions.add(subject)
            return
        for task in self.waiting.pop(subject, ()):
            task.cancel(msg=_DENIED)


#: The cancel message that says "the server refused this request's subject".
_DENIED: Final = "cortex: permissions violation"


def denied(e: asyncio.CancelledError) -> bool:
    """Whether a cancellation is ``Guard``'s (the request's subject was refused)."""
    return bool(e.args) and e.args[0] == _DENIED


class _Client(NatsClient):
    """nats-py's client with the lighter header parser of ``consumer.header_lines``
    and a ``Guard``. Should a later nats-py stop calling the parser hook, reads get
    slower, not wrong."""

    _parse_header_lines = staticmethod(header_lines)

    def __init__(self) -> None:
        super().__init__()
        self.guard = Guard()

    async def _log_error(self, e: Exception) -> None:
        # nats-py prints tracebacks for connection trouble by default; a user
        # gets one clear CORTEX error instead, and the detail goes to the log.
        text = str(e) or type(e).__name__
        if (
            isinstance(e, nats.errors.AuthorizationError)
            or "authorization violation" in text.lower()
        ):
            self.guard.unauthorized = True
            self.guard.refused.set()
        if match := _VIOLATION.search(text):
            log.warning("nats_permission_denied", kind=match.group(1), subject=match.group(2))
            self.guard.violated(match.group(1), match.group(2))
            return
        log.debug("nats_error", error=text)


def guard_of(nc: NatsClient) -> Guard | None:
    return nc.guard if isinstance(nc, _Client) else None


#: Between two tries of the same server. nats-py tries the next server of its pool
#: at once; this only spaces out rounds over all of them (loopback fail-over is fast).
RECONNECT_WAIT_S: Final = 0.2


async def connect(
    url: str | Sequence[str], *, name: str, timeout: float, creds: Credentials | None = None
) -> NatsClient:
    """Connect as ``creds`` (anonymously without) to one of the seed servers ``url``
    (a comma-separated list, or a sequence), failing fast with Unavailable when
    nothing listens at any of them and Forbidden when the server refuses the identity.

    Once connected, the connection rides out restarts and cluster fail-overs for
    ever: it reconnects to any server of the pool, the seeds and those the cluster
    announced, and replays its subscriptions.
    """
    servers = parse_urls(url)
    url = ",".join(servers)
    nc = _Client()
    try:
        await _connect(nc, servers, name=name, timeout=timeout, creds=creds)
    except Unavailable as e:
        if nc.guard.unauthorized:
            raise Forbidden(
                f"NATS at {url} refused the connection: no or wrong credentials (give --creds "
                "FILE or CORTEX_CREDS; for a `cortex up` data folder, --data DIR finds its own)",
                code="not_authorized",
            ) from e
        raise
    # …but once connected, ride out restarts and cluster fail-overs.
    nc.options["max_reconnect_attempts"] = -1
    return nc


async def _connect(
    nc: _Client, servers: list[str], *, name: str, timeout: float, creds: Credentials | None
) -> None:
    with translated("connect", url=",".join(servers)):
        # nats-py types these seconds as int; it takes (and uses) floats.
        options: dict[str, Any] = {
            "connect_timeout": timeout,
            # Fail fast when nothing listens at first…
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": RECONNECT_WAIT_S,
            "allow_reconnect": True,
        }
        if creds is not None:
            options["nkeys_seed_str"] = creds.seed
            options["inbox_prefix"] = creds.inbox_prefix
        # A refusal by one member of a cluster puts the members it announces back into
        # nats-py's pool, so its attempts never run out: stop at the first refusal,
        # and in any case after one round's worth of connect timeouts.
        connecting = asyncio.create_task(
            nc.connect(servers, name=name, error_cb=nc._log_error, **options)
        )
        refused = asyncio.create_task(nc.guard.refused.wait())
        try:
            await asyncio.wait(
                {connecting, refused},
                timeout=timeout * (len(servers) + 1),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            await stop_task(refused)
        if not connecting.done():
            await stop_task(connecting)
            await _abandon(nc)
            if not nc.guard.unauthorized:
                raise TimeoutError(f"no server of {','.join(servers)} answered in time")
            raise nats.errors.NoServersError
        await connecting  # what nats-py raised, if it gave up by itself


T = TypeVar("T")


async def until_admitted(connect: Callable[[], Awaitable[T]], timeout: float, refused: str) -> T:
    """``connect()``, again while the server refuses the credentials (``Forbidden``), for up
    to ``timeout`` seconds: credentials issued a moment ago are admitted once the server's
    reload ends (it reloads asynchronously). Then ``Unavailable(refused)``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await connect()
        except Forbidden:
            if time.monotonic() > deadline:
                raise Unavailable(refused) from None
            await asyncio.sleep(0.05)


async def _abandon(nc: NatsClient) -> None:
    """Close a connection that never came up, without waiting on a server."""
    with contextlib.suppress(nats.errors.Error, OSError, asyncio.CancelledError):
        await nc.close()


async def close(nc: NatsClient) -> None:
    """Drain (finish what is in flight), then close; with the server gone, just close.

    A server that goes away during the drain can leave nats-py awaiting a
    socket-close future that asyncio cancels: a CancelledError nobody asked
    for (this task is not being cancelled). It means the socket is closed,
    so it ends the drain; a real cancellation of this task still goes through.
    """
    if nc.is_connected:
        with contextlib.suppress(nats.errors.Error, OSError):
            await _not_spuriously_cancelled(nc.drain())
    if not nc.is_closed:
        with contextlib.suppress(nats.errors.Error, OSError):
            await _not_spuriously_cancelled(nc.close())


async def _not_spuriously_cancelled(step: Awaitable[object]) -> None:
    try:
        await step
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise
        log.warning("nats_close_interrupted", reason="the socket closed under the drain")


def server_count(nc: NatsClient) -> int:
    """How many servers are in the cluster the connection is on (1 alone): the client
    URLs its server announces (INFO ``connect_urls``, itself included)."""
    info: dict[str, Any] = getattr(nc, "_server_info", None) or {}
    urls = info.get("connect_urls") or []
    return max(1, len(set(urls)))


def server_name(nc: NatsClient) -> str:
    """The name of the server ``nc`` is connected to, as its INFO says ("" if none)."""
    info: dict[str, Any] = getattr(nc, "_server_info", None) or {}
    name = info.get("server_name") or ""
    return name if isinstance(name, str) and nc.is_connected else ""


def connected_url(nc: NatsClient) -> str:
    """``nats://host:port`` of the server ``nc`` is connected to ("" while it is not)."""
    url = nc.connected_url
    if url is None or not nc.is_connected:
        return ""
    return f"{url.scheme}://{url.hostname}:{url.port}"
