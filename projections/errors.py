"""Every error the projections package raises on purpose, as one tree.

    ProjectionError              base of them all
    ├── PoolError                the read model's connection pool cannot serve
    │   ├── PoolTimeout          no connection came free within the acquire timeout
    │   └── PoolClosed           the pool is closed (or was never opened)
    ├── LedgerMismatch           the database does not follow the ledger it is fed
    └── QueryError               a query is malformed, or cannot be answered in time

Each class carries a stable ``code`` (and fields such as ``in_use``
where they help) so the node and the CLI need not parse messages. sqlite3 and
aiosqlite errors are translated where they enter, with ``raise … from``.
"""

from __future__ import annotations


class ProjectionError(Exception):
    """Base of every error the projections package raises on purpose."""

    code: str = "projection_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class PoolError(ProjectionError):
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


class LedgerMismatch(ProjectionError):
    """The database was built from another ledger, was altered, or was fed out of order.

    Nothing is applied; the remedy is to rebuild it with ``cortex replay``.
    """

    code = "ledger_mismatch"


class QueryError(ProjectionError):
    """A query the read model cannot answer: malformed, unknown, or not reached in time."""

    code = "invalid_query"
