"""nats-py's errors translated into CORTEX's, where they enter: one table, one mapper.

Every call into nats-py runs inside ``translated(op, **context)``. ``_TABLE``
says, per operation, which nats-py exception becomes which CORTEX error with
which message (formatted with the call's context); whatever an operation
does not name falls through to ``_COMMON``. CORTEX errors pass untouched, and
so does anything that is not a nats-py or socket error. A JetStream publish
acknowledgement reports its error as JSON, not as an exception:
``ack_error`` reads it with the same codes.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Final, Literal, NamedTuple

import nats.errors
import nats.js.errors

from cortex.errors import (
    AppendConflict,
    CortexError,
    InvalidCommand,
    LedgerError,
    Unavailable,
)

#: The kinds of call into nats-py; each has its rows in ``_TABLE``.
Op = Literal["connect", "create_stream", "stream_info", "get", "append", "read", "serve", "request"]


class _Row(NamedTuple):
    """One translation: what nats-py raised, what CORTEX raises instead, and with what."""

    caught: type[Exception] | tuple[type[Exception], ...]
    raised: type[CortexError]
    #: A format string over the call's context and ``error``, ``description``, ``err_code``.
    message: str
    #: None: the raised class's own code.
    code: str | None = None


_NO_ANSWER: Final = (nats.errors.TimeoutError, nats.errors.NoRespondersError)

# JetStream error codes (nats-server errors.json).
STREAM_NAME_IN_USE: Final = 10058
_WRONG_LAST_SEQUENCE: Final = 10071
_BATCH_DUPLICATE_MSG_ID: Final = 10201

_TABLE: Final[dict[Op, tuple[_Row, ...]]] = {
    "connect": (
        _Row(
            (TimeoutError, OSError, nats.errors.Error),
            Unavailable,
            "cannot reach NATS at {url}: {error}",
        ),
    ),
    "create_stream": (
        _Row(nats.js.errors.APIError, LedgerError, "cannot create stream {stream}: {description}"),
        _Row(_NO_ANSWER, Unavailable, "JetStream did not answer: is it enabled on this server?"),
    ),
    "stream_info": (
        _Row(nats.js.errors.NotFoundError, LedgerError, "stream {stream} does not exist"),
    ),
    "get": (
        _Row(
            nats.js.errors.NotFoundError,
            LedgerError,
            "the ledger has no event at seq {seq}",
            code="not_found",
        ),
    ),
    "append": (
        _Row(
            nats.errors.NoRespondersError,
            LedgerError,
            "no stream accepts {subject}: is {stream} created?",
        ),
        _Row(
            nats.errors.TimeoutError, Unavailable, "JetStream did not acknowledge the batch in time"
        ),
    ),
    "read": (),
    "serve": (),
    "request": (
        _Row(
            nats.errors.NoRespondersError,
            Unavailable,
            "no CORTEX writer is serving {subject}: is `cortex up` running?",
        ),
        _Row(nats.errors.TimeoutError, Unavailable, "no reply on {subject} within {timeout}s"),
        _Row(
            nats.errors.MaxPayloadError,
            InvalidCommand,
            "request of {size} bytes exceeds the server max payload",
            code="too_large",
        ),
    ),
}

#: What every operation falls back to.
_COMMON: Final[tuple[_Row, ...]] = (
    _Row(_NO_ANSWER, Unavailable, "JetStream did not answer"),
    _Row(nats.js.errors.APIError, LedgerError, "JetStream refused: {description} ({err_code})"),
    _Row(nats.errors.Error, Unavailable, "NATS failed: {error}"),
)


def translate(e: BaseException, op: Op, **context: Any) -> CortexError | None:
    """The CORTEX error for ``e`` raised by nats-py during ``op``; None to let it pass."""
    if isinstance(e, CortexError) or not isinstance(e, Exception):
        return None
    for caught, raised, message, code in _TABLE[op] + _COMMON:
        if isinstance(e, caught):
            details = {
                "error": str(e) or type(e).__name__,
                "description": getattr(e, "description", None) or str(e),
                "err_code": getattr(e, "err_code", None),
            }
            return raised(message.format(**details, **context), code=code)
    return None


class translated:
    """``with translated("get", seq=seq):`` raises the CORTEX error for a nats-py one.

    A class rather than a ``contextlib.contextmanager``: entered on every
    call, it costs two method calls and no generator.
    """

    __slots__ = ("_context", "_op")

    def __init__(self, op: Op, **context: Any) -> None:
        self._op = op
        self._context = context

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        e: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if e is None:
            return
        error = translate(e, self._op, **self._context)
        if error is not None:
            raise error from e


def ack_error(error: dict[str, Any]) -> CortexError:
    """The CORTEX error for a JetStream publish acknowledgement's ``error`` object."""
    err_code = error.get("err_code")
    description = error.get("description")
    if err_code in (_WRONG_LAST_SEQUENCE, _BATCH_DUPLICATE_MSG_ID):
        return AppendConflict(f"stream moved on: {description}")
    return LedgerError(f"JetStream refused the batch: {description} ({err_code})")
