"""The front doors' shared core: the MCP server and the HTTP API are thin adapters over it.

ops        OPS: every door operation (request/result Structs, hints, HTTP route)
results    the result envelopes and the error body
schemas    input/output JSON Schemas per op, and the OpenAPI document
run        run(op, args, who, backend): validate, act as the principal, call the client
tokens     bearer tokens (hashed, revocable) → Principal(tenant, agent, key)
backend    one cortex.Client per tenant, on that tenant's own NATS credentials
httpcodes  error code → HTTP status
"""

from __future__ import annotations

from cortex.doors.backend import Backend
from cortex.doors.httpcodes import http_status
from cortex.doors.ops import BY_NAME, OPS, DoorOp
from cortex.doors.results import ErrorBody, error_body
from cortex.doors.run import decode, run
from cortex.doors.schemas import input_schema, openapi, output_schema
from cortex.doors.tokens import Principal, TokenStore

__all__ = [
    "BY_NAME",
    "OPS",
    "Backend",
    "DoorOp",
    "ErrorBody",
    "Principal",
    "TokenStore",
    "decode",
    "error_body",
    "http_status",
    "input_schema",
    "openapi",
    "output_schema",
    "run",
]
