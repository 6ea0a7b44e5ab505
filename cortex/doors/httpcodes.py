"""The HTTP status of each stable error code (``events.errors.CODES``): one table, so
the HTTP API and the MCP server's HTTP transport answer the same refusal alike."""

from __future__ import annotations

from typing import Final

from events.errors import (
    CODES,
    CommandRejected,
    CortexError,
    Forbidden,
    InvalidCommand,
    QueryFailed,
    RateLimited,
    StateConflict,
    Unavailable,
    UnknownReference,
)

#: Codes whose status is not the one of their class.
_BY_CODE: Final[dict[str, int]] = {
    "unauthenticated": 401,
    "not_authorized": 401,
    "forbidden": 403,
    "wrong_tenant": 403,
    "malformed": 400,
    "too_large": 413,
    "not_found": 404,
    "unknown_op": 404,
    "unknown_fact": 404,
    "unknown_agent": 404,
    "timeout": 504,
    "not_checkpointed": 409,
    "not_yet": 503,
    "not_following": 503,
    "rate_limited": 429,
    "bad_credentials": 503,
    "insecure_permissions": 503,
    "no_key": 409,
    "no_checkpoint": 409,
}

#: By class, most specific first.
_BY_CLASS: Final[tuple[tuple[type[CortexError], int], ...]] = (
    (RateLimited, 429),
    (InvalidCommand, 422),
    (UnknownReference, 404),
    (StateConflict, 409),
    (CommandRejected, 422),
    (QueryFailed, 422),
    (Unavailable, 503),
    (Forbidden, 403),
)


def http_status(code: str) -> int:
    """The HTTP status for an error with ``code`` (500 for a code no table knows)."""
    if code in _BY_CODE:
        return _BY_CODE[code]
    cls = CODES.get(code, (CortexError, ""))[0]
    for base, status in _BY_CLASS:
        if issubclass(cls, base):
            return status
    return 500


#: Every documented code's status, for the OpenAPI document and the tests.
STATUSES: Final[dict[str, int]] = {code: http_status(code) for code in CODES}
