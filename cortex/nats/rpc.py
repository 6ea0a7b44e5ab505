"""Requests and replies on core NATS: serve a subject in a queue group, or ask one.

Handlers see an ``Inbound``, CORTEX's own view of a request, never a
nats-py type. nats-py's ``Msg`` already has that shape, so it is handed over
as it is: no wrapper object, and one extra call per request, which drops a
request whose reply subject is not an inbox (see ``INBOX_PREFIX``). nats-py awaits
each handler before it delivers the next message of the subscription, in
order; a handler that must not hold up the others spawns a task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

from nats.aio.client import Client as NatsClient
from nats.aio.subscription import Subscription

from cortex.errors import Forbidden
from cortex.nats.connection import denied, guard_of
from cortex.nats.errors import translated

#: Replies go to inboxes only. A requester chooses its reply subject freely; one
#: that names a ledger or JetStream API subject would have the writer (allowed to
#: publish there) or a node publish its answer onto it for the requester.
INBOX_PREFIX: Final = "_INBOX."


class Inbound(Protocol):
    """One request as a handler receives it."""

    @property
    def subject(self) -> str:
        """The subject it was sent to."""
        ...

    @property
    def data(self) -> bytes:
        """Its payload."""
        ...

    @property
    def reply(self) -> str:
        """Where the answer goes; empty when the sender expects none."""
        ...

    async def respond(self, data: bytes) -> None:
        """Send ``data`` to ``reply``."""
        ...


Handler = Callable[[Inbound], Awaitable[None]]


class Serving:
    """A subject being served; ``close`` stops taking requests."""

    __slots__ = ("_sub",)

    def __init__(self, sub: Subscription) -> None:
        self._sub = sub

    async def close(self) -> None:
        with translated("serve"):
            await self._sub.unsubscribe()


async def serve(
    nc: NatsClient, subject: str, handler: Handler, *, queue: str, timeout: float
) -> Serving:
    """Call ``handler`` for each request on ``subject``, once live on the server."""

    async def answer_inboxes_only(msg: Inbound) -> None:
        if msg.reply.startswith(INBOX_PREFIX):
            await handler(msg)

    with translated("serve", subject=subject):
        sub = await nc.subscribe(subject, queue=queue, cb=answer_inboxes_only)
        # Round-trip to the server so the subscription is live before we say we serve
        # (and so that the server has said so if its permissions refuse it).
        await nc.flush(timeout=max(1, int(timeout)))
    guard = guard_of(nc)
    if guard is not None and subject.lower() not in guard.denied_subscriptions:
        # nats-server's refusal sometimes arrives just after the pong (measured: 1 in 20);
        # a second round trip has always carried it. A later one is still logged.
        with translated("serve", subject=subject):
            await nc.flush(timeout=max(1, int(timeout)))
    if guard is not None and subject.lower() in guard.denied_subscriptions:
        with translated("serve"):
            await sub.unsubscribe()
        where = f" in queue group {queue}" if queue else ""
        raise Forbidden(
            f"the server does not let this identity serve {subject}{where}: "
            "its credentials lack the role"
        )
    return Serving(sub)


async def request(nc: NatsClient, subject: str, payload: bytes, *, timeout: float) -> bytes:
    """Send ``payload`` to ``subject`` and return the first reply's bytes; Forbidden at
    once when the server's permissions refuse the subject."""
    guard = guard_of(nc)
    task = asyncio.current_task()
    if guard is None or task is None:
        with translated("request", subject=subject, timeout=timeout, size=len(payload)):
            reply = await nc.request(subject, payload, timeout=timeout)
        return bytes(reply.data)
    key = subject.lower()
    waiting = guard.waiting.setdefault(key, set())
    waiting.add(task)
    try:
        with translated("request", subject=subject, timeout=timeout, size=len(payload)):
            reply = await nc.request(subject, payload, timeout=timeout)
    except asyncio.CancelledError as e:
        if not denied(e):
            raise
        task.uncancel()
        raise Forbidden(
            f"the server does not let this identity publish to {subject}: its credentials "
            "are for another tenant or role"
        ) from None
    finally:
        waiting.discard(task)
        if not waiting and guard.waiting.get(key) is waiting:
            del guard.waiting[key]
    return bytes(reply.data)


async def watch_advisories(
    nc: NatsClient, subject: str, notify: Callable[[], None], *, timeout: float
) -> Serving:
    """Call ``notify`` on every message on ``subject`` (JetStream advisories).

    A connection without permission to subscribe gets none (nats-server says so
    in its log); whoever watches polls as well.
    """

    async def on_advisory(_msg: object) -> None:
        notify()

    with translated("serve", subject=subject):
        sub = await nc.subscribe(subject, cb=on_advisory)
        await nc.flush(timeout=max(1, int(timeout)))
    return Serving(sub)
