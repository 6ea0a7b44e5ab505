"""Supervision of long-lived tasks: when a failure is worth a retry, and how long to wait.

A task that fails because NATS stalled, reconnected or timed out (``Unavailable``)
or because the read model was briefly busy (``PoolError``) can succeed when
run again; so, a few times, can one that failed for a reason nobody foresaw.
A task that failed because the ledger itself is wrong (a chain that does not
link, a database from another ledger, events missing from the store, the
stream gone: ``LedgerError``) cannot: retrying would only repeat it, so the
process must stop and say why. ``Backoff`` spaces the retries out, doubling
up to a cap, and counts how many failed in a row without progress.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from events.errors import CortexError, LedgerError, PoolError, Unavailable

#: Retries in a row, without progress, of a failure no one foresaw before giving up.
MAX_UNFORESEEN: Final = 5


def fatal(error: BaseException) -> bool:
    """Whether running the task again cannot help (see the module doc)."""
    return isinstance(error, LedgerError)


def as_cortex_error(error: BaseException, doing: str) -> CortexError:
    """``error`` as the CortexError a user is shown: its code, and what was being done."""
    code = error.code if isinstance(error, CortexError) else "internal"
    text = str(error) or type(error).__name__
    return CortexError(f"{doing}: {text}", code=code)


@dataclass(slots=True)
class Backoff:
    """Delays between restarts: ``first`` seconds, doubling up to ``cap``.

    ``failed`` returns the next delay, or None to give up: once an unforeseen
    failure has repeated ``MAX_UNFORESEEN`` times without progress in between,
    or any failure ``limit`` times (a stall or an outage is otherwise retried
    for as long as it lasts); ``progressed`` starts over.
    """

    first: float = 0.2
    cap: float = 5.0
    limit: int | None = None
    attempts: int = 0
    unforeseen: int = 0

    def failed(self, error: BaseException) -> float | None:
        if self.limit is not None and self.attempts + 1 >= self.limit:
            return None
        if not isinstance(error, Unavailable | PoolError):
            self.unforeseen += 1
            if self.unforeseen >= MAX_UNFORESEEN:
                return None
        delay: float = min(self.cap, self.first * 2**self.attempts)
        self.attempts += 1
        return delay

    def progressed(self) -> None:
        self.attempts = self.unforeseen = 0
