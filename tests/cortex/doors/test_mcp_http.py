"""The MCP door over streamable HTTP on a real uvicorn, through the SDK's own client:
every tool with a valid bearer token; 401 with ``WWW-Authenticate`` (and the
protected-resource metadata it names) without one or with a revoked one; a token of
another tenant neither reads nor writes this tenant."""

from __future__ import annotations

import json

import httpx

from cortex.doors.testing import Doors
from doors.mcp_calls import call, connected, every_tool, refused, serving

STORE_CALL = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "tools/call",
    "params": {"name": "store_fact", "arguments": {"content": "let me in"}},
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


async def test_every_tool_over_http_with_a_token(doors: Doors) -> None:
    token = doors.tokens.issue("lab", "alice")
    async with serving(doors) as base, connected(base, token) as c:
        await every_tool(c, "alice", "lab", lambda: doors.checkpoint("lab"))
        assert await refused(c, "vote", {"fact_id": "x", "value": 1, "agent_id": "bob"}) == (
            "forbidden"
        )


async def _status(base: str, token: str) -> dict[str, object]:
    async with connected(base, token) as c:
        return await call(c, "status", {})


async def test_no_token_or_a_revoked_one_is_401_and_appends_nothing(doors: Doors) -> None:
    token = doors.tokens.issue("lab", "alice")
    async with serving(doors) as base, httpx.AsyncClient(base_url=base) as h:
        before = await _status(base, token)
        body = json.dumps(STORE_CALL)
        metadata = f"{base}/.well-known/oauth-protected-resource/mcp"
        for headers in (
            {},
            {"Authorization": "Bearer ctx_0123456789abcdef_" + "x" * 43},
            {"Authorization": "Basic YWxpY2U6c2VjcmV0"},
        ):
            r = await h.post("/mcp", content=body, headers={**MCP_HEADERS, **headers})
            assert r.status_code == 401, headers
            challenge = r.headers["www-authenticate"]
            assert (
                challenge.startswith("Bearer ") and f'resource_metadata="{metadata}"' in challenge
            )

        doc = (await h.get(metadata)).json()
        assert doc["resource"] == f"{base}/mcp"
        assert "header" in doc["bearer_methods_supported"]

        # The token works until it is revoked; from the next request on it is refused.
        async with connected(base, token) as c:
            await call(c, "status", {})
        token_id = token.split("_")[1]
        assert doors.tokens.revoke(token_id)
        r = await h.post(
            "/mcp", content=body, headers={**MCP_HEADERS, "Authorization": f"Bearer {token}"}
        )
        assert r.status_code == 401 and "resource_metadata=" in r.headers["www-authenticate"]

        after = await _status(base, doors.tokens.issue("lab", "alice"))
        assert after["stats"] == before["stats"]  # nothing appended, no agent registered


async def test_a_token_of_another_tenant_cannot_read_or_write_this_one(doors: Doors) -> None:
    alice, eve = doors.tokens.issue("lab", "alice"), doors.tokens.issue("other", "eve")
    async with serving(doors) as base:
        async with connected(base, alice) as a:
            stored = await call(a, "store_fact", {"content": "lab secret: the door code"})
            fact_id = stored["fact_id"]
            await call(a, "get_fact", {"fact_id": fact_id, "min_seq": stored["seq"]})
        async with connected(base, eve) as e:
            seen = await call(e, "search_facts", {"text": "secret", "min_seq": stored["seq"]})
            assert seen["items"] == []
            assert (await call(e, "search_facts", {}))["items"] == []
            assert (await call(e, "get_fact", {"fact_id": fact_id}))["fact"] is None
            assert await refused(e, "vote", {"fact_id": fact_id, "value": -1}) == "unknown_fact"
            assert (
                await refused(e, "edit_fact", {"fact_id": fact_id, "content": "pwned"})
                == "unknown_fact"
            )
            assert (
                await refused(e, "deprecate_fact", {"fact_id": fact_id, "reason": "x"})
                == "unknown_fact"
            )
            assert await refused(e, "verify", {"fact_id": fact_id}) == "not_found"
            own = await call(e, "store_fact", {"content": "eve's own fact"})
            status = await call(e, "status", {"min_seq": own["seq"]})
            assert (status["tenant"], status["agent"], status["stats"]["facts"]) == (
                "other",
                "eve",
                1,
            )
            assert {x["agent_id"] for x in (await call(e, "list_agents", {}))["agents"]} == {"eve"}
        async with connected(base, alice) as a:
            lab = await call(a, "status", {"min_seq": own["seq"]})
            assert lab["tenant"] == "lab"
            assert (lab["stats"]["facts"], lab["stats"]["votes"], lab["stats"]["deprecated"]) == (
                1,
                0,
                0,
            )
            view = await call(a, "get_fact", {"fact_id": fact_id})
            assert view["fact"]["content"] == "lab secret: the door code"
            assert view["fact"]["deprecated"] is None
