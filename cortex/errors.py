"""The error tree users catch, re-exported from ``events.errors`` where it is defined once."""

from events.errors import (
    CODES,
    AppendConflict,
    ChainBroken,
    CommandRejected,
    CortexError,
    CredentialsError,
    Forbidden,
    InternalError,
    InvalidCommand,
    LedgerError,
    LedgerMismatch,
    PoolClosed,
    PoolError,
    PoolTimeout,
    QueryFailed,
    ServerError,
    StateConflict,
    StreamUnsafe,
    Unavailable,
    UnknownReference,
    error_for,
)

#: The exception for an error reply, by its stable code (the old name of ``error_for``).
rejection = error_for

__all__ = [
    "CODES",
    "AppendConflict",
    "ChainBroken",
    "CommandRejected",
    "CortexError",
    "CredentialsError",
    "Forbidden",
    "InternalError",
    "InvalidCommand",
    "LedgerError",
    "LedgerMismatch",
    "PoolClosed",
    "PoolError",
    "PoolTimeout",
    "QueryFailed",
    "ServerError",
    "StateConflict",
    "StreamUnsafe",
    "Unavailable",
    "UnknownReference",
    "error_for",
    "rejection",
]
