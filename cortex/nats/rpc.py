"""Requests and replies on core NATS: serve a subject in a queue group, or ask one.

Handlers see an ``Inbound``, CORTEX's own view of a request, never a
nats-py type. nats-py's ``Msg`` already has that shape, so it is handed over
as it is: no wrapper object and no extra call per request. nats-py awaits
each handler before it delivers the next message of the subscription, in
order; a handler that must not hold up the others spawns a task.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from nats.aio.client import Client as NatsClient
from nats.aio.subscription import Subscription

from cortex.nats.errors import translated


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
    with translated("serve", subject=subject):
        sub = await nc.subscribe(subject, queue=queue, cb=handler)
        # Round-trip to the server so the subscription is live before we say we serve.
        await nc.flush(timeout=max(1, int(timeout)))
    return Serving(sub)


async def request(nc: NatsClient, subject: str, payload: bytes, *, timeout: float) -> bytes:
    """Send ``payload`` to ``subject`` and return the first reply's bytes."""
    with translated("request", subject=subject, timeout=timeout, size=len(payload)):
        reply = await nc.request(subject, payload, timeout=timeout)
    return bytes(reply.data)
