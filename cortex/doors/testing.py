"""For tests of the front doors: a running CORTEX and what a door needs on it
(the token store and the Backend of its data folder)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cortex.client import Client
from cortex.doors.backend import Backend
from cortex.doors.tokens import Principal, TokenStore
from cortex.nats import EmbeddedServer
from cortex.node import ProjectionNode


@dataclass
class Doors:
    """What a door needs, on a live server: issue tokens, resolve them, run operations."""

    server: EmbeddedServer
    node: ProjectionNode
    #: The data folder of the server (``auth/tokens.json``, ``auth/doors/``).
    data: Path
    tokens: TokenStore
    backend: Backend

    def principal(self, tenant: str, agent: str, key_file: Path | None = None) -> Principal:
        """A token issued for ``agent`` of ``tenant``, resolved as a door resolves it."""
        who = self.tokens.verify(self.tokens.issue(tenant, agent, key_file))
        assert who is not None
        return who

    async def checkpoint(self, tenant: str) -> None:
        """Have the writer sign a checkpoint now (as the operator: admin credentials)."""
        async with await Client.connect(self.server.url, tenant=tenant) as admin:
            await admin.make_checkpoint()
