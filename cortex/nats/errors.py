"""nats-py's errors translated into CORTEX's, where they enter: one table, one mapper.

Every call into nats-py runs inside ``translated(op, **context)``. ``_TABLE``
says, per operation, which nats-py exception becomes which CORTEX error with
which message (formatted with the call's context); whatever an operation
does not name falls through to ``_COMMON``. CORTEX errors pass untouched, and
so does anything that is not a nats-py or socket error. A JetStream publish
acknowledgement reports its error as JSON, not as an exception:
``ack_error`` reads it with the same codes.

In a JetStream cluster a leader election, a server restarting or a stream
short of peers is a passing state, not a broken ledger: every reply with
HTTP code 503, and the codes in ``TRANSIENT``, become ``Unavailable`` (retry
with backoff), never ``LedgerError`` (stop). ``jetstream_error`` is the one
place that decides, for exceptions and JSON replies alike:

    JetStream reply                                   CORTEX error
    10008 temporarily unavailable (503)               Unavailable
    10041 raft ("not leader": a leader change)        Unavailable
    10118 stream offline, 10163 per-subject CAS       Unavailable
    10176 atomic batch incomplete (leader changed)    Unavailable
    any other 503                                     Unavailable
    10023 insufficient resources, 10005 no peers      Unavailable  too_few_servers ("need N servers")
    10074 replicas > 1 on a server not clustered      LedgerError  not_clustered ("need N servers")
    10071 wrong last seq, 10201 duplicate id in batch AppendConflict
    anything else                                     LedgerError

An append that meets no responder is ``Unavailable`` too (only the stream
leader listens, so an election looks like that); ``store.append`` asks the
stream whether it exists before saying it does not.
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
JS_UNAVAILABLE: Final = 10008
_NO_SUITABLE_PEERS: Final = 10005
_INSUFFICIENT_RESOURCES: Final = 10023
_REPLICAS_NOT_CLUSTERED: Final = 10074
_STREAM_OFFLINE: Final = 10118
_SUBJECT_SEQUENCE_UNAVAILABLE: Final = 10163
_BATCH_INCOMPLETE: Final = 10176
_RAFT: Final = 10041
#: Codes of a passing cluster state (besides every HTTP 503): retry, do not stop.
TRANSIENT: Final = frozenset(
    {JS_UNAVAILABLE, _RAFT, _STREAM_OFFLINE, _SUBJECT_SEQUENCE_UNAVAILABLE, _BATCH_INCOMPLETE}
)
_TOO_FEW_PEERS: Final = frozenset({_NO_SUITABLE_PEERS, _INSUFFICIENT_RESOURCES})

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
            Unavailable,
            "no stream leader accepts {subject} now (an election, or {stream} is missing)",
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
    if isinstance(e, nats.js.errors.APIError):
        mapped = jetstream_error(
            e.err_code,
            e.description or str(e),
            status=e.code,
            replicas=context.get("replicas"),
            doing=context.get("doing", ""),
        )
        if mapped is not None:
            return mapped
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


def jetstream_error(
    err_code: int | None,
    description: str,
    *,
    status: int | None = None,
    replicas: int | None = None,
    doing: str = "",
) -> CortexError | None:
    """The CORTEX error for a JetStream API error that is a cluster's passing state or
    a cluster too small; None for the others (each caller has its own message).

    ``status`` is the reply's HTTP-like code; ``replicas`` what was asked for, to say
    how many servers are needed; ``doing`` what was tried, for the message.
    """
    what = f"{doing}: " if doing else ""
    need = f"need {replicas} servers" if replicas else "need as many servers as replicas"
    if err_code in _TOO_FEW_PEERS:
        return Unavailable(
            f"{what}{need} in the JetStream cluster, fewer are up ({description}, {err_code})",
            code="too_few_servers",
        )
    if err_code == _REPLICAS_NOT_CLUSTERED:
        return LedgerError(
            f"{what}{need}: this nats-server is not in a JetStream cluster, so streams have "
            f"one replica ({description}); give --replicas 1 or connect to a cluster",
            code="not_clustered",
        )
    if err_code in TRANSIENT or status == 503:
        return Unavailable(f"{what}JetStream is not available now: {description} ({err_code})")
    return None


def ack_error(error: dict[str, Any]) -> CortexError:
    """The CORTEX error for a JetStream publish acknowledgement's ``error`` object."""
    err_code = error.get("err_code")
    description = str(error.get("description"))
    if err_code in (_WRONG_LAST_SEQUENCE, _BATCH_DUPLICATE_MSG_ID):
        return AppendConflict(f"stream moved on: {description}")
    status = error.get("code")
    passing = jetstream_error(
        err_code if isinstance(err_code, int) else None,
        description,
        status=status if isinstance(status, int) else None,
        doing="JetStream did not store the batch",
    )
    if passing is not None:
        return passing
    return LedgerError(f"JetStream refused the batch: {description} ({err_code})")
