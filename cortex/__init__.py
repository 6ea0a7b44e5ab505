"""CORTEX: shared, tamper-evident memory for teams of AI agents.

The few names a user needs: the client and its receipt, the errors it
raises, the event types found in the ledger, and the offline proof check.
"""

from cortex.client import Client, Receipt
from cortex.errors import (
    AppendConflict,
    ChainBroken,
    CommandRejected,
    CortexError,
    CredentialsError,
    Forbidden,
    Forked,
    InternalError,
    InvalidCommand,
    LedgerError,
    LedgerMismatch,
    PoolClosed,
    PoolError,
    PoolTimeout,
    QueryFailed,
    RateLimited,
    RolledBack,
    ServerError,
    StateConflict,
    StreamUnsafe,
    Unauthenticated,
    Unavailable,
    UnknownReference,
)
from events.model import (
    AgentRegistered,
    CheckpointSigned,
    Event,
    FactDeprecated,
    FactStored,
    VoteCast,
    WriterKeyAdded,
)
from events.proof import ProofCheck, check_proof

__all__ = [
    "AgentRegistered",
    "AppendConflict",
    "ChainBroken",
    "CheckpointSigned",
    "Client",
    "CommandRejected",
    "CortexError",
    "CredentialsError",
    "Event",
    "FactDeprecated",
    "FactStored",
    "Forbidden",
    "Forked",
    "InternalError",
    "InvalidCommand",
    "LedgerError",
    "LedgerMismatch",
    "PoolClosed",
    "PoolError",
    "PoolTimeout",
    "ProofCheck",
    "QueryFailed",
    "RateLimited",
    "Receipt",
    "RolledBack",
    "ServerError",
    "StateConflict",
    "StreamUnsafe",
    "Unauthenticated",
    "Unavailable",
    "UnknownReference",
    "VoteCast",
    "WriterKeyAdded",
    "check_proof",
]
