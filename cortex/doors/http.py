"""The HTTP API: every door operation (``OPS``) as a JSON route under ``/v1/``.

Starlette with msgspec, not FastAPI: measured in-process, a GET costs about 11 µs
here against about 90 µs through FastAPI and pydantic, and the requests are the
same msgspec Structs the NATS side validates, so a mistake gets the same code
through every door (see README, "HTTP API").

A route's path parameters (``{fact_id}``) and, for a GET, its query parameters
(a list field repeats: ``?tags=a&tags=b``), or for a POST its JSON body, are the
operation's arguments; ``cortex.doors.run`` does the rest. A result is answered
200 with its Struct as JSON; a refusal with ``http_status(code)`` and the error
body every door shares (``{"error": {"code", "message"}}``).

Every ``/v1`` request carries ``Authorization: Bearer <token>``
(``cortex token issue``): no token, an unknown or a revoked one is 401 with
``WWW-Authenticate: Bearer``. The token decides the tenant and the agent; an
``X-Cortex-Tenant`` header naming another tenant is 403 ``wrong_tenant``, and the
tenant's ``cortex.Client`` holds that tenant's NATS credentials only, so no
request reaches another tenant's ledger whatever it names.

Unauthenticated: ``/healthz`` (the process answers), ``/readyz`` (the node
follows the ledger and is caught up, and the writer answers), ``/metrics``
(Prometheus), ``/openapi.json`` and ``/docs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any, Final

import msgspec
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from cortex.doors.backend import Backend
from cortex.doors.httpcodes import http_status
from cortex.doors.metrics import Metrics
from cortex.doors.ops import OPS, DoorOp
from cortex.doors.results import WriteResult, error_body
from cortex.doors.run import run
from cortex.doors.schemas import input_schema, openapi
from cortex.doors.tokens import DOORS_DIR, Principal, TokenStore
from cortex.errors import CortexError, InvalidCommand, RateLimited
from cortex.nats.auth import AUTH_DIR
from cortex.nats.subjects import command_subject
from cortex.receipts import ORIGIN_KIND
from events.limits import MAX_REQUEST_BYTES
from events.operations import GetStatus, NodeStatus

log = structlog.get_logger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON: Final = "application/json"
#: Where the authenticated principal of a ``/v1`` request is kept in its ASGI scope.
PRINCIPAL: Final = "cortex.principal"
#: A request naming a tenant must name the token's (``wrong_tenant`` otherwise).
TENANT_HEADER: Final = "x-cortex-tenant"
TENANT_HEADER_B: Final = TENANT_HEADER.encode()
#: How long /readyz and /metrics wait for the node and the writer.
PROBE_S: Final = 2.0
#: Events the node may be behind the highest receipt this server saw and still be ready.
READY_LAG: Final = 1000

_encode: Final = msgspec.json.Encoder().encode
_decode_any: Final = msgspec.json.Decoder().decode


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_encode(data), status_code=status, media_type=JSON, headers=headers)


def _body_args(raw: bytes) -> dict[str, Any]:
    """A POST body as arguments: ``malformed`` if it is not a JSON object (as ``run`` says)."""
    if not raw.strip():
        return {}
    try:
        args = _decode_any(raw)
    except msgspec.DecodeError as e:
        raise InvalidCommand(f"the body is not JSON: {e}", code="malformed") from e
    except RecursionError as e:
        raise InvalidCommand("the body nests JSON too deeply", code="malformed") from e
    if not isinstance(args, dict):
        raise InvalidCommand("the body is a JSON object", code="malformed")
    return args


async def _read_body(request: Request) -> bytes:
    """The body, refused (``too_large``) as soon as it passes ``MAX_REQUEST_BYTES``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_REQUEST_BYTES:
        raise CortexError(f"the body is over {MAX_REQUEST_BYTES} bytes", code="too_large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_REQUEST_BYTES:
            raise CortexError(f"the body is over {MAX_REQUEST_BYTES} bytes", code="too_large")
        chunks.append(chunk)
    return b"".join(chunks)


class HttpDoor:
    """The HTTP API over one data folder's tokens and one Backend (see the module doc)."""

    def __init__(
        self,
        backend: Backend,
        tokens: TokenStore,
        *,
        mcp: tuple[ASGIApp, Any] | None = None,
    ) -> None:
        self.backend = backend
        self.tokens = tokens
        self.metrics = Metrics()
        #: The highest seq of a receipt this server handed out: a lower bound of the ledger's
        #: head (tenant credentials cannot read the stream's own; see ``_position``).
        self.receipt_seq = 0
        self._mcp = mcp
        self.app = Starlette(routes=self._routes(), lifespan=self._lifespan)
        self.asgi: ASGIApp = _Guard(self, self.app)

    @property
    def mcp_mounted(self) -> bool:
        """Whether MCP is served at ``/mcp`` too."""
        return self._mcp is not None

    # -- routes -------------------------------------------------------------

    def _routes(self) -> list[BaseRoute]:
        routes: list[BaseRoute] = [
            Route(op.http[1], self._endpoint(op), methods=[op.http[0]], name=op.name)
            for op in OPS.values()
        ]
        routes += [
            Route("/healthz", self._healthz, methods=["GET"]),
            Route("/readyz", self._readyz, methods=["GET"]),
            Route("/metrics", self._metrics, methods=["GET"]),
            Route("/openapi.json", self._openapi, methods=["GET"]),
            Route("/docs", self._docs, methods=["GET"]),
        ]
        if self._mcp is not None:
            # Last, at the root: the MCP app serves /mcp and its protected-resource metadata
            # (/.well-known/oauth-protected-resource/mcp) and checks its own bearer tokens.
            routes.append(Mount("/", app=self._mcp[0]))
        return routes

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        if self._mcp is None or self._mcp[1] is None:
            yield
            return
        lifespan = self._mcp[1]
        # A context manager (the contract), or a Starlette lifespan function taking the app.
        cm = lifespan if hasattr(lifespan, "__aenter__") else lifespan(app)
        async with cm:
            yield

    def _endpoint(self, op: DoorOp) -> Callable[[Request], Awaitable[Response]]:
        method = op.http[0]
        props: dict[str, Any] = input_schema(op).get("properties", {})
        lists = {n for n, s in props.items() if s.get("type") == "array"}

        async def endpoint(request: Request) -> Response:
            who: Principal = request.scope[PRINCIPAL]
            try:
                if method == "GET":
                    q = request.query_params
                    args: dict[str, Any] = {k: q.getlist(k) if k in lists else q[k] for k in q}
                else:
                    args = _body_args(await _read_body(request))
                for name, value in request.path_params.items():
                    if name in args and str(args[name]) != value:
                        raise InvalidCommand(
                            f"{name} is {value} in the path but {args[name]} in the body",
                            code="invalid_field",
                        )
                    args[name] = value
                result = await run(op, args, who, self.backend)
            except CortexError as e:
                return self.refused(e)
            if isinstance(result, WriteResult) and result.seq > self.receipt_seq:
                self.receipt_seq = result.seq
            return Response(_encode(result), media_type=JSON)

        return endpoint

    def refused(self, e: CortexError) -> Response:
        """The answer to a refusal: its code's status and the doors' error body."""
        retry = e.retry_after if isinstance(e, RateLimited) else None
        self.metrics.rejections.labels(e.code, "http").inc()
        headers = {"Retry-After": str(max(1, round(retry)))} if retry else None
        return _json(error_body(e.code, e.message, retry), http_status(e.code), headers)

    # -- probes -------------------------------------------------------------

    def probe_tenant(self) -> str | None:
        """A tenant whose door credentials this server holds (the first by name): the
        probes see the node and the writer as that tenant's agents do."""
        folder = self.backend.data / AUTH_DIR / DOORS_DIR
        names = sorted(p.stem for p in folder.glob("*.creds")) if folder.is_dir() else []
        return names[0] if names else None

    async def _position(self, tenant: str) -> NodeStatus:
        client = await self.backend.client(tenant)
        node: NodeStatus = await client.ask(GetStatus())
        self.metrics.applied_seq.set(node.seq)
        self.metrics.following.set(1 if node.following else 0)
        head = max(node.seq, self.receipt_seq)
        self.metrics.ledger_seq.set(head)
        self.metrics.lag.set(head - node.seq)
        return node

    async def _writer_answers(self, tenant: str) -> None:
        """The writer answers its cheapest ask (the ledger's origin), or CortexError."""
        client = await self.backend.client(tenant)
        raw = await client.bus.request(command_subject(tenant, ORIGIN_KIND), b"", timeout=PROBE_S)
        reply = _decode_any(raw)
        if not isinstance(reply, dict) or "origin" not in reply:
            raise CortexError(f"the writer answered {raw[:200]!r}", code="unavailable")

    async def _healthz(self, request: Request) -> Response:
        return _json({"ok": True})

    async def _readyz(self, request: Request) -> Response:
        tenant = self.probe_tenant()
        if tenant is None:
            return _json(
                {
                    "ready": False,
                    "reason": "no tenant has door credentials yet: issue a token "
                    "(`cortex token issue --agent A --tenant T`)",
                },
                503,
            )
        try:
            async with asyncio.timeout(PROBE_S):
                node = await self._position(tenant)
                if not node.following:
                    reason = f"the node is not following the ledger: {node.stopped_reason}"
                    return _json({"ready": False, "reason": reason, "seq": node.seq}, 503)
                lag = self.receipt_seq - node.seq
                if lag > READY_LAG:
                    reason = f"the node is {lag} events behind the ledger"
                    return _json({"ready": False, "reason": reason, "seq": node.seq}, 503)
                await self._writer_answers(tenant)
        except TimeoutError:
            reason = f"the node or the writer did not answer within {PROBE_S:.0f}s"
            return _json({"ready": False, "reason": reason}, 503)
        except CortexError as e:
            return _json({"ready": False, "reason": f"[{e.code}] {e.message}"}, 503)
        return _json({"ready": True, "seq": node.seq, "lag": max(lag, 0)})

    async def _metrics(self, request: Request) -> Response:
        tenant = self.probe_tenant()
        if tenant is not None:
            try:
                async with asyncio.timeout(PROBE_S):
                    await self._position(tenant)
            except (TimeoutError, CortexError) as e:
                self.metrics.following.set(0)
                log.warning("metrics_status_failed", error=str(e) or type(e).__name__)
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def _openapi(self, request: Request) -> Response:
        return _json(openapi())

    async def _docs(self, request: Request) -> Response:
        return HTMLResponse(DOCS_HTML)


class _Guard:
    """Pure ASGI middleware: bearer tokens on ``/v1``, and the request metrics."""

    def __init__(self, door: HttpDoor, app: ASGIApp) -> None:
        self.door = door
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        path: str = scope["path"]
        try:
            if path.startswith("/v1/") or path == "/v1":
                refusal = self._authenticate(scope)
                if refusal is not None:
                    await refusal(scope, receive, sending)
                    return
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or _unrouted(path)
            method = scope.get("method", "")
            m = self.door.metrics
            m.requests.labels(label, method, str(status)).inc()
            m.latency.labels(label, method).observe(time.perf_counter() - start)

    def _authenticate(self, scope: Scope) -> Response | None:
        """Put the request's principal in its scope; or the 401/403 to answer instead."""
        authorization = named = None
        for key, value in scope["headers"]:  # lower-case names (ASGI)
            if key == b"authorization":
                authorization = value.decode("latin-1")
            elif key == TENANT_HEADER_B:
                named = value.decode("latin-1")
        scheme, _, token = (authorization or "").partition(" ")
        m = self.door.metrics
        if scheme.lower() != "bearer" or not token.strip():
            m.auth_failures.labels("no_token").inc()
            return self._unauthenticated("send Authorization: Bearer <token>", error=None)
        try:
            who = self.door.tokens.verify(token)
        except CortexError as e:
            log.warning("token_store_unreadable", error=e.message)
            return self.door.refused(e)
        if who is None:
            m.auth_failures.labels("bad_token").inc()
            return self._unauthenticated("the token is unknown or revoked", error="invalid_token")
        if named is not None and named != who.tenant:
            m.auth_failures.labels("wrong_tenant").inc()
            return self.door.refused(
                CortexError(
                    f"this token acts in tenant {who.tenant!r} only, not {named!r}",
                    code="wrong_tenant",
                )
            )
        scope[PRINCIPAL] = who
        return None

    def _unauthenticated(self, message: str, *, error: str | None) -> Response:
        self.door.metrics.rejections.labels("unauthenticated", "http").inc()
        challenge = 'Bearer realm="cortex"'
        if error is not None:
            challenge += f', error="{error}"'
        return _json(
            error_body("unauthenticated", message), 401, headers={"WWW-Authenticate": challenge}
        )


def _unrouted(path: str) -> str:
    """A bounded label for a path no route template names (the mounted MCP app, a 404)."""
    if path.startswith("/v1"):
        return "/v1/*"
    if path.startswith("/mcp"):
        return "/mcp"
    if path.startswith("/.well-known/"):
        return "/.well-known/*"
    return "*"


#: /docs: Swagger UI from a CDN (jsDelivr), reading /openapi.json; offline, read that directly.
DOCS_HTML: Final = """<!doctype html>
<html><head><meta charset="utf-8"><title>CORTEX HTTP API</title>
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css">
</head><body><div id="ui"></div>
<noscript>The API is described in <a href="/openapi.json">/openapi.json</a>.</noscript>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui"});</script>
</body></html>
"""


def http_app(
    backend: Backend, tokens: TokenStore, *, mcp: tuple[ASGIApp, Any] | None = None
) -> HttpDoor:
    """The HTTP door; serve its ``asgi`` (``cortex.doors.serve`` does, on uvicorn)."""
    return HttpDoor(backend, tokens, mcp=mcp)
