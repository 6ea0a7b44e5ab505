"""JSON Schemas of the door operations and the OpenAPI document, from ``OPS``.

``msgspec.json.schema`` puts a Struct's schema under ``$defs`` and answers a
bare ``$ref``; MCP wants ``type: object`` at the root of a tool's input and
output schemas, so the root definition is inlined and the other definitions
stay beside it. The OpenAPI document shares one ``components.schemas`` for all.
"""

from __future__ import annotations

import functools
from typing import Any, Final

import msgspec

from cortex.doors.httpcodes import STATUSES
from cortex.doors.ops import OPS, DoorOp
from cortex.doors.results import ErrorBody

_COMPONENTS: Final = "#/components/schemas/{name}"
_PATH_PARAM: Final = "{"


def _root_object(tp: Any) -> dict[str, Any]:
    schema = msgspec.json.schema(tp)
    defs: dict[str, Any] = dict(schema.pop("$defs", {}))
    ref = schema.get("$ref", "")
    if ref.startswith("#/$defs/"):
        name = ref.removeprefix("#/$defs/")
        root = dict(defs[name])
        if not _referenced(name, defs, skip=name) and not _referenced(name, root):
            defs.pop(name)
        schema = root
    if defs:
        schema["$defs"] = defs
    return schema


def _referenced(name: str, node: Any, skip: str | None = None) -> bool:
    """Whether ``#/$defs/name`` is referred to anywhere in ``node``."""
    target = f"#/$defs/{name}"
    if isinstance(node, dict):
        return any(
            (k == "$ref" and v == target) or (k != skip and _referenced(name, v))
            for k, v in node.items()
        )
    if isinstance(node, list):
        return any(_referenced(name, v) for v in node)
    return False


@functools.cache
def _input(op: DoorOp) -> dict[str, Any]:
    return _root_object(op.request)


@functools.cache
def _output(op: DoorOp) -> dict[str, Any]:
    return _root_object(op.result)


def input_schema(op: DoorOp) -> dict[str, Any]:
    """The JSON Schema of ``op``'s arguments: an object at the root, ``$defs`` beside it."""
    return _input(op)


def output_schema(op: DoorOp) -> dict[str, Any]:
    """The JSON Schema of ``op``'s result: an object at the root, ``$defs`` beside it."""
    return _output(op)


def _error_responses() -> dict[str, Any]:
    statuses = sorted(set(STATUSES.values()) | {401, 403})
    body = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
    return {
        str(s): {"description": f"refused (error code: see {_codes_for(s)})", **body}
        for s in statuses
    }


def _codes_for(status: int) -> str:
    return ", ".join(sorted(c for c, s in STATUSES.items() if s == status)) or "unauthenticated"


def _operation(op: DoorOp, refs: dict[str, Any]) -> dict[str, Any]:
    method, path = op.http
    request_name = op.request.__name__
    doc: dict[str, Any] = {
        "operationId": op.name,
        "summary": op.doc,
        "description": (op.request.__doc__ or "").strip(),
        "responses": {
            "200": {
                "description": op.result.__doc__.strip().splitlines()[0]
                if op.result.__doc__
                else "ok",
                "content": {"application/json": {"schema": refs[op.result.__name__]}},
            },
            **_error_responses(),
        },
        "security": [{"bearer": []}],
        "x-mcp-tool": op.name,
        "x-aliases": list(op.aliases),
    }
    in_path = {p.strip("{}") for p in path.split("/") if p.startswith(_PATH_PARAM)}
    props: dict[str, Any] = _input(op).get("properties", {})
    required = set(_input(op).get("required", []))
    params = [
        {"name": n, "in": "path", "required": True, "schema": props[n]} for n in sorted(in_path)
    ]
    if method == "GET":
        params += [
            {"name": n, "in": "query", "required": n in required, "schema": s}
            for n, s in props.items()
            if n not in in_path
        ]
    else:
        doc["requestBody"] = {
            "required": bool(required - in_path),
            "content": {"application/json": {"schema": refs[request_name]}},
        }
    if params:
        doc["parameters"] = params
    return doc


@functools.cache
def _openapi(title: str, version: str) -> dict[str, Any]:
    types: list[Any] = [ErrorBody]
    for op in OPS.values():
        types += [op.request, op.result]
    refs_list, components = msgspec.json.schema_components(types, ref_template=_COMPONENTS)
    refs = {t.__name__: r for t, r in zip(types, refs_list, strict=True)}
    paths: dict[str, dict[str, Any]] = {}
    for op in OPS.values():
        method, path = op.http
        paths.setdefault(path, {})[method.lower()] = _operation(op, refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a token from `cortex token issue --agent A --tenant T`",
                }
            },
        },
        "security": [{"bearer": []}],
    }


def openapi(title: str = "CORTEX", version: str = "1") -> dict[str, Any]:
    """The OpenAPI 3.1 document of the doors' HTTP routes (one per op, under /v1/).

    In a path that a request field also names (``{fact_id}``), the path's value
    is the field's; a GET's other fields are query parameters, a POST's the JSON body.
    """
    return _openapi(title, version)
