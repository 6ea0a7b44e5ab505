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

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.subscription import Subscription

from cortex.errors import CortexError, Forbidden
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


#: How long ``Serving.drain`` waits by default for the requests already delivered.
DRAIN_S: Final = 2.0


class Serving:
    """A subject being served; ``close`` stops taking requests at once, ``drain`` after
    handling those the server already delivered."""

    __slots__ = ("_sub",)

    def __init__(self, sub: Subscription) -> None:
        self._sub = sub

    async def close(self) -> None:
        """Stop taking requests now: those delivered but not yet handled are dropped (their
        senders wait out their own timeout)."""
        with translated("serve"):
            await self._sub.unsubscribe()

    async def drain(self, timeout: float = DRAIN_S) -> bool:
        """Stop taking requests, but hand every request the server already delivered to
        the handler first, so that none is dropped unanswered: the server is told to
        stop sending, a round trip makes sure nothing more is on its way, then the
        handler works through what arrived. True if it did within ``timeout``; else
        (or with the connection away) the rest is dropped as by ``close``, and False."""
        sub = self._sub
        try:
            async with asyncio.timeout(timeout):
                with translated("serve"):
                    await sub.drain()  # type: ignore[no-untyped-call]
            return True
        except (TimeoutError, CortexError):
            # nats-py marks the subscription closed once its drain began: stop its
            # delivery task and forget it by hand, as its unsubscribe would.
            sub._stop_processing()
            sub._conn._remove_sub(sub._id)
            return False


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


async def probe(nc: NatsClient, subject: str, *, timeout: float) -> bool | None:
    """Whether anyone answers on ``subject``: True; False when nobody serves it (the
    server says so at once: the serving connection is gone); None when no answer came
    within ``timeout`` or NATS is away (the server cannot say)."""
    try:
        async with asyncio.timeout(timeout):
            await nc.request(subject, b"", timeout=timeout)
    except nats.errors.NoRespondersError:
        return False
    except (TimeoutError, nats.errors.Error, OSError):
        return None
    return True


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
