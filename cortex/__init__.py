"""CORTEX: shared, tamper-evident memory for teams of AI agents.

The few names a user needs: the client and its receipt, the errors it
raises, and the event types found in the ledger.
"""

from cortex.client import Client, Receipt
from cortex.errors import (
    AppendConflict,
    ChainBroken,
    CommandRejected,
    CortexError,
    InvalidCommand,
    LedgerError,
    QueryFailed,
    ServerError,
    StateConflict,
    Unavailable,
    UnknownReference,
)
from events.model import AgentRegistered, Event, FactDeprecated, FactStored, VoteCast

__all__ = [
    "AgentRegistered",
    "AppendConflict",
    "ChainBroken",
    "Client",
    "CommandRejected",
    "CortexError",
    "Event",
    "FactDeprecated",
    "FactStored",
    "InvalidCommand",
    "LedgerError",
    "QueryFailed",
    "Receipt",
    "ServerError",
    "StateConflict",
    "Unavailable",
    "UnknownReference",
    "VoteCast",
]
