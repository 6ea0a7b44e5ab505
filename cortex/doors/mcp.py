"""The MCP door: every ``OPS`` operation as an MCP tool, over stdio or streamable HTTP.

Built on the official SDK's low-level ``mcp.server.Server`` (2.x), which takes
the JSON Schemas of ``cortex.doors.schemas`` as they are: a tool's input and
output schemas, its description and its hints (read-only, destructive,
idempotent) all come from its ``DoorOp``. Each tool is listed under its name
and under its aliases (``cortex_store``, ``cortex_search``, ``cortex_status``,
``cortex_ledger_verify``: the names the CORTEX this replaces used).

A call is ``cortex.doors.run`` as the caller's principal: the result Struct is
the tool's structured content, with a one-line text for a model to read; a
refusal is a tool error (``is_error``) whose text reads ``[code] message`` and
whose structured content is ``{"error": {"code", "message"}}`` with the stable
code the CLI gives for the same mistake.

Who the caller is depends on the transport. Over stdio (``cortex mcp``) it is
the agent the process was started as, with that agent's key if one was given.
Over HTTP (``mcp_asgi``) it is the agent of the bearer token the request
carries (``cortex token issue``), in that token's tenant only: the SDK's
resource-server support answers a request without a valid token with 401 and
a ``WWW-Authenticate`` header naming the protected-resource metadata it serves.

This is the only module that imports ``mcp`` (pydantic and friends): ``cortex``
commands other than ``cortex mcp`` never load it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import msgspec
from mcp import MCPError, types
from mcp.server import Server, ServerRequestContext
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.stdio import stdio_server
from starlette.applications import Starlette

from cortex.doors.backend import Backend
from cortex.doors.ops import BY_NAME, OPS, DoorOp
from cortex.doors.results import (
    AgentList,
    FactView,
    SearchResult,
    StatusResult,
    VerifyDoc,
    WriteResult,
    error_body,
)
from cortex.doors.run import run
from cortex.doors.schemas import input_schema, output_schema
from cortex.doors.tokens import Principal, TokenStore
from cortex.errors import CortexError, Unauthenticated

NAME: Final = "cortex"
#: JSON-RPC "invalid params": a tool name the server does not have.
_INVALID_PARAMS: Final = -32602
#: How much of a fact's content the human text of a result shows.
_SHOWN: Final = 80

INSTRUCTIONS: Final = (
    "CORTEX: shared, tamper-evident memory for AI agents. Store what you learn with "
    "store_fact, find what others learned with search_facts, read a fact with its "
    "consensus and history with get_fact, vote on facts, replace (edit_fact) or retire "
    "(deprecate_fact) them. Every write is appended to a signed ledger; verify proves one is in it."
)


def tools() -> list[types.Tool]:
    """Every tool: each operation under its name and under each of its aliases."""
    return [_tool(op, name) for op in OPS.values() for name in op.names]


def _tool(op: DoorOp, name: str) -> types.Tool:
    doc = op.doc if name == op.name else f"{op.doc} (the same as {op.name})"
    return types.Tool(
        name=name,
        title=op.name.replace("_", " "),
        description=doc,
        input_schema=input_schema(op),
        output_schema=output_schema(op),
        annotations=types.ToolAnnotations(
            title=op.name.replace("_", " "),
            read_only_hint=op.read_only,
            destructive_hint=op.destructive,
            idempotent_hint=op.idempotent,
            open_world_hint=False,
        ),
    )


def _short(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _SHOWN else line[: _SHOWN - 1] + "…"


def summary(op: DoorOp, result: msgspec.Struct) -> str:
    """One line (a few for a page of facts) saying what ``result`` is, for a model to read;
    the structured content carries everything."""
    if isinstance(result, WriteResult):
        fact = f", fact {result.fact_id}" if result.fact_id else ""
        return f"{op.name}: appended at seq {result.seq}{fact}"
    if isinstance(result, SearchResult):
        lines = [
            f"{len(result.items)} fact(s)"
            + (", more after next_cursor" if result.next_cursor else "")
        ]
        lines += [
            f"- {f.fact_id} [{f.agent_id}, score {f.consensus.score:.2f}] {_short(f.content)}"
            for f in result.items
        ]
        return "\n".join(lines)
    if isinstance(result, FactView):
        if result.fact is None:
            return "no such fact"
        f, c = result.fact, result.fact.consensus
        gone = " (deprecated)" if f.deprecated is not None else ""
        told = f", {len(result.history.events)} event(s)" if result.history is not None else ""
        return (
            f"fact {f.fact_id} by {f.agent_id}{gone}: {_short(f.content)} — consensus {c.status} "
            f"score {c.score:.2f} ({c.votes_for} for, {c.votes_against} against){told}"
        )
    if isinstance(result, AgentList):
        names = ", ".join(f"{a.agent_id} ({a.reputation:.2f})" for a in result.agents)
        return f"{len(result.agents)} agent(s): {names}"
    if isinstance(result, StatusResult):
        s = result.stats
        return (
            f"{result.agent} in tenant {result.tenant}: {s.facts} facts ({s.deprecated} "
            f"deprecated), {s.agents} agents, {s.votes} votes; node at seq {result.node.seq}"
        )
    if isinstance(result, VerifyDoc):
        verdict = "proof checks" if result.ok else "proof FAILS: " + "; ".join(result.problems)
        return f"seq {result.seq} in tree of {result.tree_size}: {verdict}"
    return op.name  # pragma: no cover - every result type is above


def refusal(e: CortexError) -> types.CallToolResult:
    """A CORTEX refusal as a tool error: the model reads ``[code] message``."""
    retry_after = getattr(e, "retry_after", None)
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=f"[{e.code}] {e.message}")],
        structured_content=error_body(e.code, e.message, retry_after),
        is_error=True,
    )


def build_server(backend: Backend, principal: Callable[[], Principal]) -> Server[Any]:
    """An MCP server running every tool call as ``principal()`` (which raises
    ``Unauthenticated`` when the request has no one to act as) against ``backend``."""
    listed = types.ListToolsResult(tools=tools())

    async def on_list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return listed

    async def on_call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        op = BY_NAME.get(params.name)
        if op is None:
            raise MCPError(_INVALID_PARAMS, f"no tool {params.name!r}")
        try:
            result = await run(op, params.arguments, principal(), backend)
        except CortexError as e:
            return refusal(e)
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=summary(op, result))],
            structured_content=msgspec.to_builtins(result),
        )

    def tool_input_schema(name: str) -> dict[str, Any] | None:
        op = BY_NAME.get(name)
        return None if op is None else input_schema(op)

    return Server(
        NAME,
        version=_version(),
        instructions=INSTRUCTIONS,
        get_tool_input_schema=tool_input_schema,
        on_list_tools=on_list_tools,
        on_call_tool=on_call_tool,
    )


def _version() -> str:
    try:
        return importlib.metadata.version("cortex-ledger")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source tree
        return "0"


# -- stdio --------------------------------------------------------------------


async def serve_stdio(backend: Backend, who: Principal) -> None:
    """Serve MCP on this process's stdin/stdout as ``who`` until the client hangs up."""
    server = build_server(backend, lambda: who)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


# -- streamable HTTP, bearer tokens -------------------------------------------


class CortexTokenVerifier:
    """The SDK's ``TokenVerifier`` over CORTEX tokens (``cortex token issue``): a valid,
    unrevoked token is an ``AccessToken`` naming its agent (``client_id``, ``subject``)
    and tenant (``claims``)."""

    def __init__(self, tokens: TokenStore) -> None:
        self.tokens = tokens

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            who = self.tokens.verify(token)
        except CortexError:  # a damaged token file admits no one
            return None
        if who is None:
            return None
        return AccessToken(
            token=token,
            client_id=who.agent,
            subject=who.agent,
            scopes=[],
            claims={"tenant": who.tenant},
        )


def _token_principal(tokens: TokenStore) -> Callable[[], Principal]:
    def principal() -> Principal:
        access = get_access_token()
        # Looked up again, not trusted from the request's start: a token revoked meanwhile
        # acts no more, and the agent's key is never carried through the SDK.
        who = None if access is None else tokens.verify(access.token)
        if who is None:
            raise Unauthenticated("no valid bearer token", code="unauthenticated")
        return who

    return principal


def mcp_asgi(
    backend: Backend, tokens: TokenStore, base_url: str
) -> tuple[Starlette, contextlib.AbstractAsyncContextManager[None]]:
    """The MCP door over streamable HTTP, for an ASGI server at ``base_url`` (e.g.
    ``http://127.0.0.1:8787``): a Starlette app serving ``/mcp`` (bearer tokens) and
    ``/.well-known/oauth-protected-resource/mcp``, and the context manager its host
    must enter for as long as it serves (the session manager's task group).

    Mount the app at ``/`` (last, after the host's own routes) and enter the context
    manager in the host's lifespan: a mounted app's own lifespan never runs. Run alone,
    the app's lifespan enters it itself; then do not enter it again.
    """
    base = base_url.rstrip("/")
    server = build_server(backend, _token_principal(tokens))
    app = server.streamable_http_app(
        streamable_http_path="/mcp",
        json_response=True,
        stateless_http=True,
        host="127.0.0.1",
        token_verifier=CortexTokenVerifier(tokens),
        auth=AuthSettings(
            # There is no OAuth authorization server: tokens come from `cortex token issue`;
            # the metadata names this server as the one that issues them.
            issuer_url=base,  # type: ignore[arg-type]  # pydantic converts the str
            resource_server_url=f"{base}/mcp",  # type: ignore[arg-type]
            # A CORTEX token is not bound to a resource URL (one token serves the HTTP API and
            # MCP, at any address): the verifier checks the token itself.
            validate_token_resource=False,
        ),
    )
    return app, _session_manager(server)


@contextlib.asynccontextmanager
async def _session_manager(server: Server[Any]) -> AsyncIterator[None]:
    async with server.session_manager.run():
        yield


__all__ = [
    "INSTRUCTIONS",
    "CortexTokenVerifier",
    "build_server",
    "mcp_asgi",
    "refusal",
    "serve_stdio",
    "summary",
    "tools",
]
