"""What the MCP tests do through the SDK's own client, whatever the transport: list the
tools, call every one of them (aliases included) and check what comes back.

The SDK client validates each non-error result's structured content against the tool's
output schema, so every call here also proves a result matches its schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx2
import uvicorn
from mcp import Client, types
from mcp.client.streamable_http import streamable_http_client

from cortex.doors import OPS
from cortex.doors.mcp import mcp_asgi
from cortex.doors.testing import Doors


async def call(client: Client, name: str, args: dict[str, Any]) -> dict[str, Any]:
    """A tool call that must succeed: its structured content."""
    result = await client.call_tool(name, args)
    assert not result.is_error, (name, result.content)
    assert result.structured_content is not None
    text = result.content[0]
    assert isinstance(text, types.TextContent) and text.text
    content: dict[str, Any] = result.structured_content
    return content


async def refused(client: Client, name: str, args: dict[str, Any]) -> str:
    """A tool call that must be refused: its stable code (checked in text and structure)."""
    result = await client.call_tool(name, args)
    assert result.is_error, (name, result.structured_content)
    assert result.structured_content is not None
    error = result.structured_content["error"]
    text = result.content[0]
    assert isinstance(text, types.TextContent)
    assert text.text == f"[{error['code']}] {error['message']}"
    code: str = error["code"]
    return code


async def check_tools(client: Client) -> None:
    """Every operation is listed under its name and aliases, with its schemas and hints."""
    listed = {t.name: t for t in (await client.list_tools()).tools}
    assert set(listed) == {n for op in OPS.values() for n in op.names}
    assert {"cortex_store", "cortex_search", "cortex_status", "cortex_ledger_verify"} <= set(listed)
    for op in OPS.values():
        for name in op.names:
            tool = listed[name]
            assert tool.input_schema["type"] == "object"
            assert tool.output_schema is not None and tool.output_schema["type"] == "object"
            hints = tool.annotations
            assert hints is not None
            assert (hints.read_only_hint, hints.destructive_hint, hints.idempotent_hint) == (
                op.read_only,
                op.destructive,
                op.idempotent,
            )
    assert listed["search_facts"].annotations.read_only_hint is True  # type: ignore[union-attr]
    assert listed["deprecate_fact"].annotations.destructive_hint is True  # type: ignore[union-attr]
    assert listed["store_fact"].annotations.idempotent_hint is False  # type: ignore[union-attr]


async def every_tool(
    client: Client, agent: str, tenant: str, checkpoint: Callable[[], Awaitable[None]]
) -> dict[str, Any]:
    """Call every tool once at least (every alias too), as ``agent`` of ``tenant``;
    ``checkpoint`` has the writer sign one (for verify). The tool names called, by op."""
    await check_tools(client)
    stored = await call(
        client, "store_fact", {"content": "the projector invalidates the cache", "tags": ["cache"]}
    )
    fact_id = stored["fact_id"]
    aliased = await call(client, "cortex_store", {"content": "an alias stores too"})
    assert aliased["seq"] > stored["seq"] and aliased["fact_id"] != fact_id

    found = await call(
        client, "search_facts", {"text": "projector cache", "min_seq": aliased["seq"]}
    )
    assert [f["fact_id"] for f in found["items"]] == [fact_id]
    listed = await call(client, "cortex_search", {"tags": ["cache"], "agent": agent})
    assert [f["fact_id"] for f in listed["items"]] == [fact_id]

    view = await call(client, "get_fact", {"fact_id": fact_id})
    assert view["fact"]["agent_id"] == agent
    assert [e["kind"] for e in view["history"]["events"]] == ["fact_stored"]

    voted = await call(client, "vote", {"fact_id": fact_id, "value": 1, "reason": "seen it"})
    after = await call(
        client, "get_fact", {"fact_id": fact_id, "min_seq": voted["seq"], "history": False}
    )
    assert after["fact"]["consensus"]["votes_for"] == 1 and after["history"] is None

    edited = await call(
        client, "edit_fact", {"fact_id": fact_id, "content": "the projector drops cache entries"}
    )
    old = await call(client, "get_fact", {"fact_id": fact_id, "min_seq": edited["seq"]})
    assert old["fact"]["deprecated"]["successor_id"] == edited["fact_id"]
    gone = await call(client, "deprecate_fact", {"fact_id": aliased["fact_id"], "reason": "old"})

    agents = await call(client, "list_agents", {"min_seq": gone["seq"]})
    assert agent in {a["agent_id"] for a in agents["agents"]}
    for name in ("status", "cortex_status"):
        status = await call(client, name, {"min_seq": gone["seq"]})
        assert (status["tenant"], status["agent"]) == (tenant, agent)
        assert status["stats"]["facts"] == 3 and status["stats"]["deprecated"] == 2

    await checkpoint()
    proof = await call(client, "verify", {"fact_id": edited["fact_id"]})
    assert proof["ok"] and proof["seq"] == edited["seq"] and proof["problems"] == []
    by_event = await call(client, "cortex_ledger_verify", {"event": voted["id"]})
    assert by_event["ok"] and by_event["seq"] == voted["seq"]
    return {"fact_id": edited["fact_id"], "seq": gone["seq"]}


@contextlib.asynccontextmanager
async def serving(doors: Doors) -> AsyncIterator[str]:
    """The MCP door over streamable HTTP on a real uvicorn, on a free 127.0.0.1 port, with
    the doors' tokens and backend: its base URL (``/mcp`` is the endpoint)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    # Listening before uvicorn starts: a client's first connection waits in the backlog
    # until the server (its lifespan done) accepts it, so nothing needs to poll for "ready".
    sock.listen(64)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    app, _ = mcp_asgi(doors.backend, doors.tokens, base)
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield base
    finally:
        server.should_exit = True
        await task
        sock.close()


@contextlib.asynccontextmanager
async def connected(base: str, token: str) -> AsyncIterator[Client]:
    """The SDK's client on ``base``/mcp with ``token`` as its bearer token."""
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=headers) as http,
        Client(streamable_http_client(f"{base}/mcp", http_client=http)) as client,
    ):
        yield client
