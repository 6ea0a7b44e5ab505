"""Every error CORTEX shows a user, as one tree.

    CortexError
    ├── CommandRejected          the writer refused a command; nothing appended
    │   ├── InvalidCommand       malformed, unknown kind, bad field, too large, bad vote
    │   ├── UnknownReference     the agent or fact it names does not exist in the tenant
    │   └── StateConflict        it contradicts the ledger (already registered, deprecated…)
    ├── LedgerError              the ledger itself is unusable (missing, misconfigured, broken)
    │   ├── ChainBroken          a stored event does not link to the one before it
    │   └── AppendConflict       another writer appended first; re-read the head and retry
    ├── QueryFailed              a read was malformed, or min_seq was not reached in time
    ├── Unavailable              no server or no writer answered in time
    └── ServerError              the embedded nats-server could not be found or started

Each carries machine-readable fields (``code``, and ``seq`` where it has a
position) so scripts need not parse messages. Errors from nats-py and the
process layer are translated where they enter, with ``raise … from``.
"""

from __future__ import annotations

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


class LedgerError(CortexError):
    code = "ledger_error"


class ChainBroken(LedgerError):
    code = "chain_break"

    def __init__(self, message: str, *, seq: int) -> None:
        super().__init__(message)
        self.seq = seq


class AppendConflict(LedgerError):
    code = "append_conflict"


class QueryFailed(CortexError):
    """A query was refused (unknown op, bad parameters) or timed out waiting for min_seq."""

    code = "invalid_query"


class Unavailable(CortexError):
    code = "unavailable"


class ServerError(CortexError):
    code = "server_error"


#: The stable error codes a command can be refused with, and the class for each.
REJECTION_CODES: Final[dict[str, type[CommandRejected]]] = {
    "malformed": InvalidCommand,
    "unknown_kind": InvalidCommand,
    "invalid_field": InvalidCommand,
    "too_large": InvalidCommand,
    "invalid_vote": InvalidCommand,
    "tenant_mismatch": InvalidCommand,
    "reserved_tenant": InvalidCommand,
    "signature_required": InvalidCommand,
    "bad_signature": InvalidCommand,
    "unknown_agent": UnknownReference,
    "unknown_fact": UnknownReference,
    "agent_exists": StateConflict,
    "fact_exists": StateConflict,
    "already_deprecated": StateConflict,
    "id_reused": StateConflict,
}


def rejection(code: str, message: str) -> CortexError:
    """The exception for an error reply from the writer, by its stable code."""
    cls = REJECTION_CODES.get(code)
    if cls is None:
        return (
            Unavailable(message, code=code)
            if code == "unavailable"
            else CortexError(message, code=code)
        )
    return cls(message, code=code)
