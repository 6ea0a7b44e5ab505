"""Transitional names for the read side's errors, now defined once in ``events.errors``."""

from events.errors import CortexError as ProjectionError
from events.errors import LedgerMismatch, PoolClosed, PoolError, PoolTimeout
from events.errors import QueryFailed as QueryError

__all__ = [
    "LedgerMismatch",
    "PoolClosed",
    "PoolError",
    "PoolTimeout",
    "ProjectionError",
    "QueryError",
]
