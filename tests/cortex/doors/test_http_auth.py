"""Bearer tokens on the HTTP API, tenant isolation, and bad input through HTTP: the codes
``run`` (and so the CLI and the writer) gives, and nothing appended."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from cortex.doors import OPS
from cortex.doors.httpcodes import http_status
from cortex.doors.serve import HttpServer
from cortex.doors.testing import Doors
from doors.test_http_routes import bearer, serving
from doors.test_ops import BAD
from events.limits import MAX_CONTENT_BYTES, MAX_REQUEST_BYTES


@pytest.fixture
async def http(doors: Doors) -> AsyncIterator[tuple[HttpServer, httpx.AsyncClient]]:
    async with serving(doors) as pair:
        yield pair


async def _lab_seq(c: httpx.AsyncClient, token: dict[str, str]) -> int:
    status = await c.get("/v1/status", headers=token)
    assert status.status_code == 200, status.text
    seq: int = status.json()["node"]["seq"]
    return seq


def _refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


async def test_no_bad_or_revoked_token_is_401_with_a_challenge(
    doors: Doors, http: tuple[HttpServer, httpx.AsyncClient]
) -> None:
    _, c = http
    token = doors.tokens.issue("lab", "ann")
    seq = await _lab_seq(c, bearer(token))
    for headers in (
        {},
        {"Authorization": "Basic YW5uOnB3"},
        {"Authorization": "Bearer"},
        bearer("ctx_0123456789abcdef_" + "A" * 43),
        bearer(token + "x"),
    ):
        for method, path in (("GET", "/v1/status"), ("POST", "/v1/facts")):
            r = await c.request(method, path, json={"content": "x"}, headers=headers)
            _refused(r, 401, "unauthenticated")
            assert r.headers["www-authenticate"].startswith("Bearer")
    [row] = doors.tokens.list()
    assert doors.tokens.revoke(row.id)
    r = await c.post("/v1/facts", json={"content": "after revoke"}, headers=bearer(token))
    _refused(r, 401, "unauthenticated")
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    # Nothing was appended by any of them.
    assert await _lab_seq(c, bearer(doors.tokens.issue("lab", "bob"))) == seq
    # The probes and documents need no token.
    for path in ("/healthz", "/openapi.json", "/docs", "/metrics"):
        assert (await c.get(path)).status_code == 200, path


async def test_another_tenants_token_neither_reads_nor_writes_this_tenant(
    doors: Doors, http: tuple[HttpServer, httpx.AsyncClient]
) -> None:
    _, c = http
    ann = bearer(doors.tokens.issue("lab", "ann"))
    eve = bearer(doors.tokens.issue("rival", "eve"))
    stored = (await c.post("/v1/facts", json={"content": "lab secret"}, headers=ann)).json()
    fact_id, seq = stored["fact_id"], stored["seq"]
    await c.get("/v1/status", params={"min_seq": seq}, headers=ann)

    # Naming the lab tenant is refused before anything runs.
    for method, path, body in (
        ("GET", f"/v1/facts/{fact_id}", None),
        ("GET", "/v1/facts", None),
        ("POST", "/v1/facts", {"content": "planted"}),
        ("POST", f"/v1/facts/{fact_id}/votes", {"value": -1}),
        ("POST", f"/v1/facts/{fact_id}/deprecate", {"reason": "mine now"}),
    ):
        r = await c.request(method, path, json=body, headers={**eve, "X-Cortex-Tenant": "lab"})
        _refused(r, 403, "wrong_tenant")

    # Without naming it, the token reaches its own tenant only: the lab's fact is not there.
    view = await c.get(f"/v1/facts/{fact_id}", headers=eve)
    assert view.status_code == 200 and view.json()["fact"] is None
    found = await c.get("/v1/facts", params={"text": "secret"}, headers=eve)
    assert found.json()["items"] == []
    _refused(
        await c.post(f"/v1/facts/{fact_id}/votes", json={"value": -1}, headers=eve),
        404,
        "unknown_fact",
    )
    _refused(
        await c.post(f"/v1/facts/{fact_id}/deprecate", json={"reason": "x"}, headers=eve),
        404,
        "unknown_fact",
    )
    planted = (await c.post("/v1/facts", json={"content": "planted"}, headers=eve)).json()
    rival = (await c.get("/v1/status", params={"min_seq": planted["seq"]}, headers=eve)).json()
    assert rival["tenant"] == "rival" and rival["stats"]["facts"] == 1

    # The lab's ledger holds what ann wrote and nothing else.
    lab = (await c.get("/v1/status", headers=ann)).json()
    assert lab["stats"]["facts"] == 1 and lab["stats"]["votes"] == 0
    lab_view = (await c.get(f"/v1/facts/{fact_id}", headers=ann)).json()
    assert lab_view["fact"]["deprecated"] is None
    assert [e["kind"] for e in lab_view["history"]["events"]] == ["fact_stored"]


def _request(name: str, args: dict[str, Any] | bytes) -> tuple[str, str, dict[str, Any]] | None:
    """``args`` of ``name`` as an HTTP request (method, url, httpx keywords); None when the
    path cannot be built (a path parameter missing: no such route)."""
    method, path = OPS[name].http
    fields = {} if isinstance(args, bytes) else dict(args)
    for part in path.split("/"):
        if part.startswith("{"):
            field = part.strip("{}")
            if field not in fields:
                return None
            path = path.replace(part, str(fields.pop(field)))
    if method == "GET":
        return method, path, {"params": fields}
    if isinstance(args, bytes):
        return method, path, {"content": args}
    return method, path, {"json": fields}


CASES = [
    *BAD,
    ("vote", {"fact_id": str(uuid.uuid4()), "value": 7}, "invalid_vote"),
    ("store_fact", {"content": "x" * (MAX_CONTENT_BYTES + 1)}, "too_large"),
    ("store_fact", b"{not json", "malformed"),
]


async def test_bad_input_gets_the_cli_codes_and_appends_nothing(
    doors: Doors, http: tuple[HttpServer, httpx.AsyncClient]
) -> None:
    _, c = http
    ann = bearer(doors.tokens.issue("lab", "ann"))
    first = (await c.post("/v1/facts", json={"content": "a first fact"}, headers=ann)).json()
    before = (await c.get("/v1/status", params={"min_seq": first["seq"]}, headers=ann)).json()
    assert before["node"]["seq"] == first["seq"]
    tried = 0
    for name, args, code in CASES:
        request = _request(name, args)
        if request is None:
            continue
        method, url, kw = request
        r = await c.request(method, url, headers=ann, **kw)
        _refused(r, http_status(code), code)
        tried += 1
    assert tried >= len(CASES) - 2
    assert http_status("invalid_vote") == 422
    assert http_status("too_large") == 413
    assert http_status("malformed") == 400
    # A body over the request limit is refused before it is read whole.
    huge = await c.post("/v1/facts", content=b"x" * (MAX_REQUEST_BYTES + 1), headers=ann)
    _refused(huge, 413, "too_large")
    # A path and a body that disagree.
    other = str(uuid.uuid4())
    clash = await c.post(
        f"/v1/facts/{first['fact_id']}/votes", json={"fact_id": other, "value": 1}, headers=ann
    )
    _refused(clash, 422, "invalid_field")
    after = (await c.get("/v1/status", headers=ann)).json()
    assert after["node"]["seq"] == before["node"]["seq"]
    assert after["stats"] == before["stats"]
