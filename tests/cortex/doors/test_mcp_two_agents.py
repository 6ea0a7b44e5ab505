"""Two agents sharing memory through MCP (one stores, the other finds it and votes, and
the consensus moves), and bad input through MCP refused with the CLI's codes."""

from __future__ import annotations

import json

from cortex.doors.testing import Doors
from cortex.testing import run_cli
from doors.mcp_calls import call, connected, refused, serving
from events.limits import MAX_CONTENT_BYTES


async def test_two_agents_share_memory_through_mcp(doors: Doors) -> None:
    alice, bob = doors.tokens.issue("lab", "alice"), doors.tokens.issue("lab", "bob")
    async with serving(doors) as base, connected(base, alice) as a, connected(base, bob) as b:
        stored = await call(
            a, "store_fact", {"content": "the staging database restarts at 03:00 UTC"}
        )
        found = await call(
            b, "search_facts", {"text": "staging restarts", "min_seq": stored["seq"]}
        )
        assert [(f["fact_id"], f["agent_id"]) for f in found["items"]] == [
            (stored["fact_id"], "alice")
        ]
        before = await call(b, "get_fact", {"fact_id": stored["fact_id"]})
        voted = await call(
            b, "vote", {"fact_id": stored["fact_id"], "value": 1, "reason": "saw it"}
        )
        after = await call(a, "get_fact", {"fact_id": stored["fact_id"], "min_seq": voted["seq"]})
        was, now = before["fact"]["consensus"], after["fact"]["consensus"]
        assert (was["votes_for"], now["votes_for"]) == (0, 1)
        assert now["score"] > was["score"]
        assert [e["kind"] for e in after["history"]["events"]][-1] == "vote_cast"


async def test_bad_input_through_mcp_gets_the_cli_codes_and_appends_nothing(
    doors: Doors,
) -> None:
    token = doors.tokens.issue("lab", "alice")
    async with serving(doors) as base, connected(base, token) as c:
        fact = await call(c, "store_fact", {"content": "a fact to vote on"})
        before = await call(c, "status", {"min_seq": fact["seq"]})
        too_long = "x" * (MAX_CONTENT_BYTES + 1)
        mcp_codes = [
            await refused(c, "vote", {"fact_id": fact["fact_id"], "value": 7}),
            await refused(c, "store_fact", {"content": too_long}),
            await refused(c, "store_fact", {"content": ""}),
            await refused(c, "store_fact", {"content": "x", "colour": "red"}),
            await refused(c, "search_facts", {"limit": 0}),
        ]
        assert mcp_codes == [
            "invalid_vote",
            "too_large",
            "invalid_field",
            "invalid_field",
            "invalid_query",
        ]
        after = await call(c, "status", {})
        assert after["node"]["seq"] == before["node"]["seq"]
        assert after["stats"] == before["stats"]

    # The CLI says the same for the same mistakes (as the operator, in the same tenant).
    env = {"CORTEX_NATS_URL": doors.server.url}
    vote = await run_cli(
        "vote", fact["fact_id"], "7", "--agent", "alice", "--tenant", "lab", "--json", env=env
    )
    store = await run_cli(
        "fact", "add", too_long, "--agent", "alice", "--tenant", "lab", "--json", env=env
    )
    cli_codes = [json.loads(r.out)["error"]["code"] for r in (vote, store)]
    assert cli_codes == mcp_codes[:2]
