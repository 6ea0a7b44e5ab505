"""Every error CORTEX shows a user, as one tree, and every stable code it can carry.

    CortexError
    ├── CommandRejected          the writer refused a command; nothing appended
    │   ├── InvalidCommand       malformed, unknown kind, bad field, too large, bad vote
    │   ├── UnknownReference     the agent or fact it names does not exist in the tenant
    │   ├── StateConflict        it contradicts the ledger (already registered, deprecated…)
    │   └── RateLimited          its agent or tenant is over its fair share; retry_after seconds
    ├── LedgerError              the ledger itself is unusable (missing, misconfigured, broken)
    │   ├── ChainBroken          a stored event does not link to the one before it
    │   ├── AppendConflict       another writer appended first; re-read the head and retry
    │   ├── LedgerMismatch       a read model does not follow the ledger it is fed
    │   └── StreamUnsafe         the stream's configuration could drop or hide events
    ├── QueryFailed              a read was malformed, unknown, or min_seq was not reached in time
    ├── PoolError                the read model's connection pool cannot serve
    │   ├── PoolTimeout          no connection came free within the acquire timeout
    │   └── PoolClosed           the pool is closed (or was never opened)
    ├── Unavailable              no server, writer or node answered in time
    │   └── LeaseLost            this writer candidate no longer holds the writer lease
    ├── ServerError              the embedded nats-server could not be found or started
    ├── Forbidden                NATS refused this identity: no or wrong credentials, or
    │   │                        a subject its permissions do not allow
    │   └── Unauthenticated      a front door got no token, or one it does not know or revoked
    └── CredentialsError         a credentials file is unreadable, malformed or not private

Each carries a stable ``code`` (and ``seq``, ``in_use`` or ``retry_after`` where they help),
listed with its meaning in ``CODES``: scripts and other front doors match on
codes, never on messages. Errors from nats-py, sqlite3 and the process layer
are translated where they enter, with ``raise … from``. This module is pure
(no I/O) so that every layer, from events/ up, raises from the same tree.
"""

from __future__ import annotations

import uuid
from typing import Final


class CortexError(Exception):
    """Base of every error CORTEX raises on purpose."""

    code: str = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class CommandRejected(CortexError):
    """The writer refused a command; the ledger is unchanged."""

    code = "rejected"


class InvalidCommand(CommandRejected):
    code = "invalid_field"


class UnknownReference(CommandRejected):
    code = "unknown_fact"


class StateConflict(CommandRejected):
    code = "conflict"


class RateLimited(CommandRejected):
    """The agent, its tenant or the writer as a whole is over its share: nothing was
    appended; the same command may be sent again after ``retry_after`` seconds."""

    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float = 0.0, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class LedgerError(CortexError):
    code = "ledger_error"


class ChainBroken(LedgerError):
    code = "chain_break"

    def __init__(self, message: str, *, seq: int) -> None:
        super().__init__(message)
        self.seq = seq


class AppendConflict(LedgerError):
    code = "append_conflict"


class LedgerMismatch(LedgerError):
    """The database was built from another ledger, was altered, or was fed out of order.

    Nothing is applied; the remedy is to rebuild it with ``cortex replay``.
    """

    code = "ledger_mismatch"


class StreamUnsafe(LedgerError):
    """CORTEX_LEDGER's configuration or state could drop or hide events (an age or
    count limit, another retention, other subjects, sealed…), or the stream is gone.

    The writer appends nothing to such a stream and answers every command with
    this error; the message names each drift.
    """

    code = "stream_unsafe"


class Forked(LedgerError):
    """The ledger's checkpoint does not extend one verified before (a remembered head
    or a witness's): another history with the same origin."""

    code = "fork"


class RolledBack(Forked):
    """The ledger is behind a checkpoint verified before: cut or restored from a copy."""

    code = "rollback"


class QueryFailed(CortexError):
    """A query was refused (unknown op, bad parameters) or timed out waiting for min_seq."""

    code = "invalid_query"


class PoolError(CortexError):
    """The connection pool cannot hand out a working connection."""

    code = "pool_error"


class PoolTimeout(PoolError):
    """Every connection of the kind asked for stayed busy for the whole acquire timeout."""

    code = "pool_timeout"

    def __init__(self, message: str, *, in_use: int, size: int) -> None:
        super().__init__(message)
        self.in_use = in_use
        self.size = size


class PoolClosed(PoolError):
    """The pool was closed (or not yet opened); it hands out nothing."""

    code = "pool_closed"


class Unavailable(CortexError):
    code = "unavailable"


class LeaseLost(Unavailable):
    """Another writer candidate holds the writer lease now: this one appends nothing
    more; a command sent again (same id) reaches the writer that holds it."""

    code = "lease_lost"


class ServerError(CortexError):
    code = "server_error"


class Forbidden(CortexError):
    """NATS (or the client, knowing its credentials) refused what this identity tried."""

    code = "forbidden"


class Unauthenticated(Forbidden):
    """A network door (HTTP API, MCP over HTTP) got no bearer token, or one that is
    malformed, unknown or revoked: nothing was read or appended."""

    code = "unauthenticated"


class CredentialsError(CortexError):
    """A credentials or key file cannot be used: unreadable, malformed, or readable by others."""

    code = "bad_credentials"


#: Every stable code an error can carry: its class (what a client raises for
#: it) and what it means. ``tests/test_codes.py`` checks that the code base
#: produces exactly these.
CODES: Final[dict[str, tuple[type[CortexError], str]]] = {
    # commands, refused by the writer (or the client, before sending)
    "malformed": (InvalidCommand, "not JSON, or not the shape a command or query has"),
    "unknown_kind": (InvalidCommand, "no command of that kind"),
    "invalid_field": (InvalidCommand, "a field has the wrong type, pattern or range"),
    "too_large": (InvalidCommand, "content, meta, a batch or a request is over its limit"),
    "invalid_vote": (InvalidCommand, "a vote is +1, -1 or 0"),
    "reserved_tenant": (InvalidCommand, "tenants starting with _ belong to the ledger"),
    "signature_required": (InvalidCommand, "the agent (or the ledger) requires a signature"),
    "bad_signature": (InvalidCommand, "the signature does not hold for this command"),
    "bad_key": (InvalidCommand, "a key file cannot be read or written"),
    "key_exists": (StateConflict, "a key file is already there: it is never overwritten"),
    "invalid_proof": (InvalidCommand, "a proof file is not a proof document"),
    "unknown_agent": (UnknownReference, "the agent is not registered in this tenant"),
    "unknown_fact": (UnknownReference, "no such fact in this tenant"),
    "agent_exists": (StateConflict, "the agent is already registered in this tenant"),
    "fact_exists": (StateConflict, "a fact with this id already exists in this tenant"),
    "already_deprecated": (StateConflict, "the fact is already deprecated"),
    "reason_required": (InvalidCommand, "only a fact's author may deprecate it without a reason"),
    "id_reused": (StateConflict, "the event id was used in this tenant for a different command"),
    "aborted": (StateConflict, "another command of the same atomic request was refused"),
    "no_key": (StateConflict, "the writer has no key to sign checkpoints with"),
    "no_checkpoint": (StateConflict, "the ledger is empty: nothing to checkpoint"),
    "data_locked": (ServerError, "another process holds the data folder"),
    "busy": (Unavailable, "the writer's batch was full; ask again"),
    "rate_limited": (
        RateLimited,
        "the agent, its tenant or the writer is over its rate: retry after `retry_after` s",
    ),
    # the ledger
    "ledger_error": (LedgerError, "the ledger stream is missing, misconfigured or refused"),
    "chain_break": (ChainBroken, "a stored event does not link to the one before it"),
    "missing_acknowledged_event": (
        LedgerError,
        "a saved receipt's event (or its checkpoint) is no longer in the ledger as acknowledged",
    ),
    "append_conflict": (AppendConflict, "another writer appended first"),
    "ledger_mismatch": (LedgerMismatch, "a database does not follow this ledger"),
    "fork": (Forked, "the ledger does not extend the checkpoint remembered for its origin"),
    "rollback": (RolledBack, "the ledger is behind the checkpoint remembered for its origin"),
    "witness_refused": (
        CortexError,
        "a witness refused to cosign the checkpoint (its HTTP status and reason say why)",
    ),
    "witness_error": (CortexError, "the witness service cannot start, listen or keep its state"),
    "stream_unsafe": (
        StreamUnsafe,
        "the ledger stream's configuration could drop or hide events, or the stream is gone: "
        "nothing is appended until an operator restores it",
    ),
    "too_few_servers": (
        Unavailable,
        "the stream asks for more replicas than the JetStream cluster has servers up "
        "(the message says how many it needs)",
    ),
    "not_clustered": (
        LedgerError,
        "replicas above 1 asked of a nats-server that is not in a JetStream cluster",
    ),
    "missing_events": (
        LedgerError,
        "the stream's state counts events its store no longer holds (cut or damaged)",
    ),
    # queries
    "invalid_query": (QueryFailed, "a query parameter is missing, unknown or out of range"),
    "unknown_op": (QueryFailed, "no query of that name"),
    "not_found": (CortexError, "no such event or fact (in this tenant, or in the ledger)"),
    "not_checkpointed": (QueryFailed, "the event is after the latest checkpoint"),
    "timeout": (QueryFailed, "the node did not reach min_seq in time"),
    "not_following": (
        QueryFailed,
        "the node's projector is not following the ledger (restarting, or stopped for good)",
    ),
    "not_yet": (QueryFailed, "the node has not applied that many events yet"),
    # the read model and the process
    "pool_error": (PoolError, "the read model's connections cannot serve"),
    "pool_timeout": (PoolTimeout, "no read model connection came free in time"),
    "pool_closed": (PoolClosed, "the read model is closed"),
    "unavailable": (Unavailable, "no server, writer or node answered in time"),
    "lease_lost": (LeaseLost, "this writer lost the writer lease to another: ask again"),
    "server_error": (ServerError, "the embedded nats-server could not start"),
    "usage": (CortexError, "the command line is not one `cortex` understands (see --help)"),
    "server_exited": (ServerError, "the embedded nats-server ended while CORTEX ran on it"),
    "internal": (CortexError, "a bug: the reply says what failed"),
    "forbidden": (Forbidden, "the server's permissions do not let this identity do that"),
    "not_authorized": (Forbidden, "the server refused the connection: no or wrong credentials"),
    "unauthenticated": (
        Unauthenticated,
        "a front door got no bearer token, or one it does not know or that was revoked",
    ),
    "wrong_tenant": (Forbidden, "the credentials belong to another tenant than the one asked"),
    "bad_credentials": (CredentialsError, "a credentials file cannot be read or is not one"),
    "insecure_permissions": (
        CredentialsError,
        "a key or credentials file (or its folder) is readable by other users",
    ),
}


class InternalError(CortexError):
    """A bug, as a user sees it: the reply names a trace id that the log holds with the traceback."""

    code = "internal"

    def __init__(self, cause: BaseException) -> None:
        self.trace = uuid.uuid4().hex[:12]
        super().__init__(
            f"internal error (trace {self.trace}): {type(cause).__name__}: {cause}; "
            "this is a bug, the log has its traceback"
        )


def error_for(code: str, message: str, *, retry_after: float | None = None) -> CortexError:
    """The exception for an error reply with ``code``, as any front door raises it
    (``retry_after``: the reply's field of that name, for ``rate_limited``)."""
    cls, _meaning = CODES.get(code, (CortexError, ""))
    if cls is RateLimited:
        return RateLimited(message, retry_after=retry_after or 0.0, code=code)
    if cls in (ChainBroken, PoolTimeout):  # their extra fields are not on the wire
        cls = LedgerError if cls is ChainBroken else PoolError
    return cls(message, code=code)
