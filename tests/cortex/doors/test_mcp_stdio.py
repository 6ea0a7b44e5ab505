"""``cortex mcp`` over stdio, as a desktop agent runs it: a subprocess driven by the SDK's
own client, acting as the agent named on its command line, signing with its key."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from cortex.core.keys import create_key, public_hex
from cortex.doors.testing import Doors
from doors.mcp_calls import call, every_tool, refused


@contextlib.asynccontextmanager
async def _stdio(doors: Doors, tmp_path: Path, *extra: str) -> AsyncIterator[Client]:
    """The SDK's client on a `cortex mcp` subprocess (its stderr in tmp_path/mcp.stderr)."""
    creds = doors.tokens.tenant_credentials("lab")  # the tenant's agent credentials
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "cortex.cli", "mcp", "--creds", str(creds), *extra],
        # The SDK gives the child a minimal environment: say where the server is.
        env={"CORTEX_NATS_URL": doors.server.url, "PATH": os.environ.get("PATH", "")},
        cwd=tmp_path,
    )
    with (tmp_path / "mcp.stderr").open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog)) as client:
            yield client


async def test_every_tool_over_stdio_signed_with_the_agents_key(
    doors: Doors, tmp_path: Path
) -> None:
    key = create_key(tmp_path / "alice.key")
    signing = ("--agent", "alice", "--key", str(tmp_path / "alice.key"))
    async with _stdio(doors, tmp_path, *signing) as c:
        done = await every_tool(c, "alice", "lab", lambda: doors.checkpoint("lab"))
        # alice was registered with her key on her first write; every command after was
        # signed with it (the writer refuses an unsigned command of a keyed agent).
        agents = await call(c, "list_agents", {"min_seq": done["seq"]})
        assert [(a["agent_id"], a["public_key"]) for a in agents["agents"]] == [
            ("alice", public_hex(key))
        ]
        # The process acts as alice only.
        assert await refused(c, "store_fact", {"content": "x", "agent_id": "bob"}) == "forbidden"
