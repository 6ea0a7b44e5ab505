"""The HTTP API end to end: httpx against a real uvicorn on a free loopback port, on a
real nats-server, writer and node. Every route, the OpenAPI document, the probes, metrics."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import structlog
import structlog.testing

from cortex.doors import OPS, output_schema
from cortex.doors.serve import HttpServer
from cortex.doors.testing import Doors
from cortex.testing import spawn_cli


@asynccontextmanager
async def serving(doors: Doors) -> AsyncIterator[tuple[HttpServer, httpx.AsyncClient]]:
    """The HTTP API of ``doors``' data folder, and an httpx client on it."""
    server = HttpServer(doors.data, url=doors.server.url, port=0, mcp=False)
    try:
        base = await server.start()
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            yield server, client
    finally:
        await server.stop()


@pytest.fixture
async def http(doors: Doors) -> AsyncIterator[tuple[HttpServer, httpx.AsyncClient]]:
    async with serving(doors) as pair:
        yield pair


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def ok(response: httpx.Response, op: str) -> Any:
    """The JSON of a 200 answer, checked against ``op``'s output schema."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    jsonschema.validate(body, output_schema(OPS[op]))
    return body


async def test_every_route(doors: Doors, http: tuple[HttpServer, httpx.AsyncClient]) -> None:
    """store → search (text and tags) → get with consensus and history → vote moves the
    consensus → edit → deprecate → agents → status → verify, each over HTTP."""
    _, c = http
    ann = bearer(doors.tokens.issue("lab", "ann"))
    bob = bearer(doors.tokens.issue("lab", "bob"))
    stored = ok(
        await c.post(
            "/v1/facts",
            json={"content": "the projector invalidates the cache", "tags": ["cache", "design"]},
            headers=ann,
        ),
        "store_fact",
    )
    fact_id, seq = stored["fact_id"], stored["seq"]
    found = ok(
        await c.get("/v1/facts", params={"text": "projector cache", "min_seq": seq}, headers=bob),
        "search_facts",
    )
    assert [f["fact_id"] for f in found["items"]] == [fact_id]
    tagged = ok(
        await c.get(
            "/v1/facts",
            params=[("tags", "cache"), ("tags", "design"), ("agent", "ann"), ("min_seq", seq)],
            headers=bob,
        ),
        "search_facts",
    )
    assert [f["fact_id"] for f in tagged["items"]] == [fact_id]
    none = ok(await c.get("/v1/facts", params={"tags": "nope"}, headers=bob), "search_facts")
    assert none["items"] == []

    view = ok(await c.get(f"/v1/facts/{fact_id}", headers=bob), "get_fact")
    assert view["fact"]["agent_id"] == "ann"
    assert view["fact"]["consensus"]["votes_for"] == 0
    assert [e["kind"] for e in view["history"]["events"]] == ["fact_stored"]

    vote = ok(await c.post(f"/v1/facts/{fact_id}/votes", json={"value": 1}, headers=bob), "vote")
    after = ok(
        await c.get(
            f"/v1/facts/{fact_id}",
            params={"min_seq": vote["seq"], "history": "false"},
            headers=ann,
        ),
        "get_fact",
    )
    assert after["fact"]["consensus"]["votes_for"] == 1 and after["history"] is None
    assert after["fact"]["consensus"]["score"] != view["fact"]["consensus"]["score"]

    edited = ok(
        await c.post(
            f"/v1/facts/{fact_id}/edit",
            json={"content": "the projector invalidates the read cache", "reason": "precise"},
            headers=ann,
        ),
        "edit_fact",
    )
    old = ok(
        await c.get(f"/v1/facts/{fact_id}", params={"min_seq": edited["seq"]}, headers=ann),
        "get_fact",
    )
    assert old["fact"]["deprecated"]["reason"] == "precise"
    new_id = edited["fact_id"]
    assert new_id != fact_id
    gone = ok(
        await c.post(f"/v1/facts/{new_id}/deprecate", json={"reason": "superseded"}, headers=ann),
        "deprecate_fact",
    )

    agents = ok(
        await c.get("/v1/agents", params={"min_seq": gone["seq"]}, headers=ann), "list_agents"
    )
    assert sorted(a["agent_id"] for a in agents["agents"]) == ["ann", "bob"]
    status = ok(await c.get("/v1/status", params={"min_seq": gone["seq"]}, headers=bob), "status")
    assert (status["tenant"], status["agent"]) == ("lab", "bob")
    assert status["stats"]["facts"] == 2 and status["node"]["seq"] >= gone["seq"]

    await doors.checkpoint("lab")
    proof = ok(await c.get("/v1/verify", params={"fact_id": fact_id}, headers=bob), "verify")
    assert proof["ok"] is True and proof["problems"] == []


async def test_openapi_docs_and_probes(
    doors: Doors, http: tuple[HttpServer, httpx.AsyncClient]
) -> None:
    _, c = http
    doc = (await c.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    assert {"title", "version"} <= doc["info"].keys()
    assert "schemas" in doc["components"] and "bearer" in doc["components"]["securitySchemes"]
    for op in OPS.values():
        method, path = op.http
        entry = doc["paths"][path][method.lower()]
        assert entry["operationId"] == op.name
        assert "200" in entry["responses"] and "401" in entry["responses"]
    # Every reference points into components (the document stands alone).
    refs = [v for v in _walk(doc) if isinstance(v, str) and v.startswith("#/")]
    for ref in refs:
        assert ref.removeprefix("#/components/schemas/") in doc["components"]["schemas"], ref
    for schema in doc["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    docs = await c.get("/docs")
    assert docs.status_code == 200 and "/openapi.json" in docs.text

    assert (await c.get("/healthz")).json() == {"ok": True}
    # No tenant has door credentials yet: nothing to look at the ledger with.
    early = await c.get("/readyz")
    assert early.status_code == 503 and "token" in early.json()["reason"]
    doors.tokens.issue("lab", "ann")
    ready = await c.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["ready"] is True

    await doors.node.stop()
    down = await c.get("/readyz")
    assert down.status_code == 503
    assert down.json()["ready"] is False and down.json()["reason"]
    assert (await c.get("/healthz")).status_code == 200


def _walk(node: Any) -> Any:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


async def test_metrics_count_requests_latency_rejections_and_the_ledger(
    doors: Doors, http: tuple[HttpServer, httpx.AsyncClient]
) -> None:
    _, c = http
    ann = bearer(doors.tokens.issue("lab", "ann"))
    stored = (await c.post("/v1/facts", json={"content": "counted"}, headers=ann)).json()
    await c.get(f"/v1/facts/{stored['fact_id']}", headers=ann)
    await c.post("/v1/facts", content=b"{nope", headers=ann)
    await c.get("/v1/status")  # no token
    await c.get("/v1/status", params={"min_seq": stored["seq"]}, headers=ann)
    text = (await c.get("/metrics")).text
    assert 'cortex_http_requests_total{method="POST",route="/v1/facts",status="200"} 1.0' in text
    assert (
        'cortex_http_requests_total{method="GET",route="/v1/facts/{fact_id}",status="200"} 1.0'
        in text
    )
    assert 'cortex_http_requests_total{method="POST",route="/v1/facts",status="400"} 1.0' in text
    assert 'cortex_http_request_duration_seconds_bucket{le="0.01",method="GET"' in text
    assert 'cortex_rejections_total{code="malformed",door="http"} 1.0' in text
    assert 'cortex_rejections_total{code="unauthenticated",door="http"} 1.0' in text
    assert 'cortex_auth_failures_total{reason="no_token"} 1.0' in text
    assert f"cortex_ledger_seq {float(stored['seq'])}" in text
    assert "cortex_projector_lag_events 0.0" in text
    assert "cortex_projector_following 1.0" in text


async def test_cortex_serve_command(doors: Doors) -> None:
    """``cortex serve`` as a process: it listens, answers with a token, stops on SIGTERM."""
    token = doors.tokens.issue("lab", "ann")
    env = {**os.environ, "COLUMNS": "300", "NO_COLOR": "1"}
    proc = await spawn_cli(
        "serve", "--port", "0", "--no-mcp",
        "--data", str(doors.data), "--nats", doors.server.url,
        stdout=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            line = (await proc.stdout.readline()).decode()
        url = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert url is not None, line
        async with httpx.AsyncClient(base_url=url.group(0)) as c:
            status = await c.get("/v1/status", headers=bearer(token))
            assert status.status_code == 200, status.text
            assert status.json()["agent"] == "ann"
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_answers_are_not_held_back_by_delayed_acks(tmp_path: Path) -> None:
    """The listening socket says TCP, so asyncio sets TCP_NODELAY on each connection: an
    answer's body does not wait ~40 ms for the ACK of its headers (50 calls took 2.2 s)."""
    server = HttpServer(tmp_path, port=0, mcp=False)
    try:
        base = await server.start()
        async with httpx.AsyncClient(base_url=base) as c:
            await c.get("/healthz")
            start = time.perf_counter()
            for _ in range(50):
                assert (await c.get("/healthz")).status_code == 200
            assert time.perf_counter() - start < 1.0
    finally:
        await server.stop()


async def test_mcp_is_mounted_beside_the_api(doors: Doors) -> None:
    """With ``cortex.doors.mcp`` present, one server answers /v1 and MCP at /mcp; MCP checks
    its own tokens (401 with a challenge without one) and serves its resource metadata."""
    token = doors.tokens.issue("lab", "ann")
    server = HttpServer(doors.data, url=doors.server.url, port=0)
    try:
        base = await server.start()
        assert server.mcp_mounted
        async with httpx.AsyncClient(base_url=base) as c:
            assert (await c.get("/v1/status", headers=bearer(token))).status_code == 200
            bare = await c.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
            assert bare.status_code == 401
            assert bare.headers["www-authenticate"].startswith("Bearer")
            meta = await c.get("/.well-known/oauth-protected-resource/mcp")
            assert meta.status_code == 200, meta.text
            assert meta.json()["resource"].rstrip("/") == f"{base}/mcp"
            assert (await c.get("/healthz")).status_code == 200
            assert 'route="/mcp"' in (await c.get("/metrics")).text
    finally:
        await server.stop()


async def test_a_server_that_ends_on_its_own_says_so(tmp_path: Path) -> None:
    """Nothing dies silently: uvicorn ending without a stop is logged as critical."""
    server = HttpServer(tmp_path, port=0, mcp=False)
    try:
        await server.start()
        assert server._server is not None and server._task is not None
        told = asyncio.Event()  # a done callback after the server's own: it has run
        server._task.add_done_callback(lambda _task: told.set())
        with structlog.testing.capture_logs() as logs:
            server._server.should_exit = True  # as if it had failed under us
            async with asyncio.timeout(10):
                await told.wait()
        assert [e["event"] for e in logs if e["log_level"] == "critical"] == ["http_server_ended"]
    finally:
        await server.stop()
