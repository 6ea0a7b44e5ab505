"""The doors' way into CORTEX: one ``cortex.Client`` per tenant, on that tenant's own
NATS credentials (``<data>/auth/doors/<tenant>.creds``, issued with its first token).

Never the admin's, writer's or node's credentials: a request can reach nothing
its tenant's agent credentials do not allow, whatever a door gets wrong. One
client per tenant also lets its batching coalesce concurrent writes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Final

from cortex.client import Client
from cortex.doors.tokens import creds_path
from cortex.errors import CortexError
from cortex.nats import Credentials
from cortex.nats.auth import check_private
from cortex.nats.connection import until_admitted

#: How long a running server may take to admit a tenant's new credentials (SIGHUP reload).
ADMIT_TIMEOUT_S: Final = 10.0


class Backend:
    """Tenant → connected Client, opened on first use, closed by ``close``."""

    def __init__(self, data: Path, *, url: str | None = None, **client_options: Any) -> None:
        self.data = data
        #: The server to connect to; default: the one each credentials file names.
        self.url = url
        self._options = client_options
        self._clients: dict[str, Client] = {}
        self._lock = asyncio.Lock()

    @classmethod
    def of(cls, client: Client, data: Path) -> Backend:
        """A backend of one tenant: ``client``'s, already connected with whatever credentials
        its process was given (``cortex mcp`` over stdio); ``close`` closes it."""
        backend = cls(data)
        backend._clients[client.tenant] = client
        return backend

    async def client(self, tenant: str) -> Client:
        """The connected client of ``tenant`` (``bad_credentials`` if no token was ever
        issued for it: its credentials do not exist)."""
        found = self._clients.get(tenant)
        if found is not None:
            return found
        async with self._lock:
            found = self._clients.get(tenant)
            if found is None:
                found = self._clients[tenant] = await self._connect(tenant)
            return found

    async def _connect(self, tenant: str) -> Client:
        path = creds_path(self.data, tenant)
        if not path.exists():
            raise CortexError(
                f"no door credentials for tenant {tenant!r}: issue a token for it first "
                "(`cortex token issue`)",
                code="bad_credentials",
            )
        check_private(path)
        creds = Credentials.load(path)
        return await until_admitted(
            lambda: Client.connect(self.url, tenant=tenant, creds=creds, **self._options),
            ADMIT_TIMEOUT_S,
            f"the server did not admit the door credentials of tenant {tenant!r} "
            f"within {ADMIT_TIMEOUT_S:.0f}s; restart `cortex up` to load them",
        )

    async def close(self) -> None:
        """Close every tenant's client (calls already made finish first)."""
        clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            await c.close()

    async def __aenter__(self) -> Backend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
