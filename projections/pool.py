"""One bounded pool of aiosqlite connections to a node's read-model file.

SQLite takes one writer at a time and, in WAL mode, any number of readers that
never block it. The pool mirrors that: one writer connection, held by one task
at a time, and a fixed set of read-only connections. The old CORTEX opened a
connection per request and leaked them; here every connection is opened once,
every wait is bounded, every connection comes back (cleaned, or replaced if it
died) and ``close()`` leaves nothing open.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import aiosqlite
import structlog

from events.errors import PoolClosed, PoolError, PoolTimeout

log = structlog.get_logger(__name__)

# How sqlite3 and aiosqlite say that the connection itself, not the statement, is gone.
_DEAD_MARKERS: Final = ("closed database", "connection closed", "no active connection")

_Probe = Callable[[aiosqlite.Connection], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of the pool's counters, as ``cortex status`` shows them."""

    readers_total: int
    readers_in_use: int
    writer_in_use: bool
    acquisitions: int
    waits: int  # acquisitions that found no idle connection and had to queue
    timeouts: int
    replaced: int  # dead connections swapped for fresh ones


@dataclass(eq=False)
class _Slots:
    """A fixed number of interchangeable connections, each held by at most one task."""

    kind: str
    size: int
    connect: Callable[[], Awaitable[aiosqlite.Connection]]
    # Idle connections, FIFO so waiters are served in order; None is the "closed" sentinel.
    idle: asyncio.Queue[aiosqlite.Connection | None]
    in_use: set[aiosqlite.Connection]


def _is_dead(exc: BaseException | None) -> bool:
    if not isinstance(exc, ValueError | sqlite3.ProgrammingError | sqlite3.OperationalError):
        return False
    return any(marker in str(exc).lower() for marker in _DEAD_MARKERS)


def _in_transaction(conn: aiosqlite.Connection) -> bool | None:
    """Whether conn has a transaction open, or None if it is closed; no I/O."""
    try:
        return conn.in_transaction
    except (ValueError, sqlite3.ProgrammingError):
        return None


async def _rollback(conn: aiosqlite.Connection) -> None:
    await conn.rollback()


async def _select_one(conn: aiosqlite.Connection) -> None:
    await conn.execute_fetchall("SELECT 1")


async def _pragma(conn: aiosqlite.Connection, sql: str) -> object:
    rows = list(await conn.execute_fetchall(sql))
    return rows[0][0] if rows else None


class ConnectionPool:
    """One writer and ``readers`` read-only connections to one SQLite file, in WAL mode."""

    def __init__(
        self,
        path: Path | str,
        *,
        readers: int = 4,
        acquire_timeout: float = 5.0,
        busy_timeout_ms: int = 5000,
    ) -> None:
        if readers < 1:
            raise ValueError("a pool needs at least one reader")
        self.path = Path(path)
        self.acquire_timeout = acquire_timeout
        self._busy_timeout_ms = busy_timeout_ms
        self._writer = _Slots("writer", 1, partial(self._open, writer=True), asyncio.Queue(), set())
        self._readers = _Slots(
            "reader", readers, partial(self._open, writer=False), asyncio.Queue(), set()
        )
        self._all: set[aiosqlite.Connection] = set()  # every connection the pool must close
        self._tasks: set[asyncio.Task[Any]] = set()
        self._drained = asyncio.Event()  # set while no connection is held
        self._drained.set()
        self._state = "new"  # new -> open -> closed; a closed pool stays closed
        self._acquisitions = self._waits = self._timeouts = self._replaced = 0

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        return self._state == "closed"

    async def open(self) -> None:
        """Open the writer first (it creates the file and turns WAL on), then the readers."""
        if self._state != "new":
            if self.closed:
                raise PoolClosed(f"pool {self.path} is closed; open a new one")
            return
        try:
            for slots in (self._writer, self._readers):
                for _ in range(slots.size):
                    slots.idle.put_nowait(await self._connect(slots))
        except BaseException as exc:
            for slots in (self._writer, self._readers):  # leave the pool as new, so open can retry
                while not slots.idle.empty():
                    slots.idle.get_nowait()
            await self._close_all(self.acquire_timeout)
            if isinstance(exc, sqlite3.Error | ValueError):
                raise PoolError(f"cannot open pool {self.path}: {exc}") from exc
            raise
        self._state = "open"
        log.info("pool_opened", path=str(self.path), readers=self._readers.size)

    async def _connect(self, slots: _Slots) -> aiosqlite.Connection:
        conn = await slots.connect()
        self._all.add(conn)
        return conn

    async def _open(self, *, writer: bool) -> aiosqlite.Connection:
        if writer:
            conn = await aiosqlite.connect(self.path)
        else:  # mode=ro: SQLite itself refuses writes, whatever a query tries
            conn = await aiosqlite.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            await self._configure(conn, writer=writer)
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _configure(self, conn: aiosqlite.Connection, *, writer: bool) -> None:
        await _pragma(conn, f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
        await _pragma(conn, "PRAGMA foreign_keys=ON")
        if writer:
            await _pragma(conn, "PRAGMA journal_mode=WAL")  # kept in the file: set once
            # NORMAL cannot corrupt a WAL database; a power cut may lose the last commits,
            # which the projector re-applies from the ledger (its position is in the rows).
            await _pragma(conn, "PRAGMA synchronous=NORMAL")
        mode = await _pragma(conn, "PRAGMA journal_mode")
        if mode != "wal":
            raise PoolError(f"{self.path} is in journal mode {mode!r}, not WAL")

    def stats(self) -> PoolStats:
        return PoolStats(
            readers_total=self._readers.size,
            readers_in_use=len(self._readers.in_use),
            writer_in_use=bool(self._writer.in_use),
            acquisitions=self._acquisitions,
            waits=self._waits,
            timeouts=self._timeouts,
            replaced=self._replaced,
        )

    def writer(
        self, *, timeout: float | None = None
    ) -> AbstractAsyncContextManager[aiosqlite.Connection]:
        """The writer, for one task at a time: waiting here is cheaper than SQLITE_BUSY."""
        return self._lease(self._writer, timeout)

    def reader(
        self, *, timeout: float | None = None
    ) -> AbstractAsyncContextManager[aiosqlite.Connection]:
        """A read-only connection; readers see the last commit and never block the writer."""
        return self._lease(self._readers, timeout)

    @asynccontextmanager
    async def _lease(
        self, slots: _Slots, timeout: float | None
    ) -> AsyncIterator[aiosqlite.Connection]:
        conn = await self._acquire(slots, self.acquire_timeout if timeout is None else timeout)
        failure: BaseException | None = None
        try:
            yield conn
        except BaseException as exc:
            failure = exc
            raise
        finally:
            await self._release(slots, conn, failure)

    async def _acquire(self, slots: _Slots, timeout: float) -> aiosqlite.Connection:
        if self._state != "open":
            raise PoolClosed(f"pool {self.path} is {'closed' if self.closed else 'not open'}")
        if slots.idle.empty():
            self._waits += 1
        try:
            async with asyncio.timeout(timeout):
                conn = await slots.idle.get()
        except TimeoutError:
            self._timeouts += 1
            in_use = len(slots.in_use)
            raise PoolTimeout(
                f"pool {self.path}: no {slots.kind} connection free after {timeout:g}s "
                f"({in_use}/{slots.size} in use)",
                in_use=in_use,
                size=slots.size,
            ) from None
        if conn is None:
            slots.idle.put_nowait(None)  # hand the sentinel on to the next waiter
            raise PoolClosed(f"pool {self.path} was closed while waiting for a {slots.kind}")
        slots.in_use.add(conn)
        self._drained.clear()
        self._acquisitions += 1
        return conn

    async def _release(
        self, slots: _Slots, conn: aiosqlite.Connection, failure: BaseException | None
    ) -> None:
        """Give conn back; roll back or replace it first when its holder left it unclean."""
        in_tx = _in_transaction(conn)
        if failure is None and in_tx is False:
            self._give_back(slots, conn, conn)
            return
        # After an error or a cancellation, statements may still be queued on conn: the
        # rollback queues behind them. It runs in its own task so that a second cancellation
        # of the holder cannot strand the connection.
        alive = in_tx is not None and not _is_dead(failure)
        await self._detached(self._recycle(slots, conn, alive=alive, probe=_rollback))

    async def _detached(self, coro: Coroutine[Any, Any, bool]) -> bool:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(task)

    async def _recycle(
        self, slots: _Slots, conn: aiosqlite.Connection, *, alive: bool, probe: _Probe
    ) -> bool:
        """Probe a connection no task holds, replace it if that fails; True if replaced."""
        if alive:
            try:
                async with asyncio.timeout(self.acquire_timeout):
                    await probe(conn)
            except Exception as exc:  # whatever failed, the connection is not reused
                log.warning("connection_probe_failed", kind=slots.kind, error=repr(exc))
                alive = False
        fresh = conn if alive else await self._replace(slots, conn)
        self._give_back(slots, conn, fresh)
        return fresh is not conn

    async def _replace(self, slots: _Slots, dead: aiosqlite.Connection) -> aiosqlite.Connection:
        """A fresh connection for dead's slot; dead itself if none can be opened now."""
        if self.closed:
            return dead
        try:
            fresh = await self._connect(slots)
        except (sqlite3.Error, ValueError, PoolError):
            # Keep the slot (the pool never shrinks); the next release or check() retries.
            log.exception("connection_reopen_failed", kind=slots.kind, path=str(self.path))
            return dead
        self._all.discard(dead)
        await self._close_quietly(dead, self.acquire_timeout)
        if self.closed:  # close() ran while we were opening: do not leak the newcomer
            await self._close_quietly(fresh, self.acquire_timeout)
            return dead
        self._replaced += 1
        log.warning("connection_replaced", kind=slots.kind, path=str(self.path))
        return fresh

    def _give_back(
        self, slots: _Slots, held: aiosqlite.Connection, conn: aiosqlite.Connection
    ) -> None:
        slots.in_use.discard(held)
        if not self.closed:
            slots.idle.put_nowait(conn)
        if not self._writer.in_use and not self._readers.in_use:
            self._drained.set()

    async def check(self) -> int:
        """Run ``SELECT 1`` on every idle connection, replace the dead; returns how many.

        Held connections are skipped: their holders find out, and release replaces them.
        """
        probes: list[Awaitable[bool]] = []
        for slots in (self._writer, self._readers):
            for _ in range(slots.idle.qsize()):
                if self._state != "open":
                    break
                conn = slots.idle.get_nowait()
                if conn is None:  # the sentinel; only there once closed
                    break
                slots.in_use.add(conn)
                self._drained.clear()
                alive = _in_transaction(conn) is not None
                probes.append(
                    self._detached(self._recycle(slots, conn, alive=alive, probe=_select_one))
                )
        return sum(await asyncio.gather(*probes))

    async def close(self, timeout: float = 5.0) -> None:
        """Close every connection, waiting up to ``timeout`` for holders to give theirs back.

        Later (and pending) acquisitions raise PoolClosed. Calling it again does nothing.
        """
        if self.closed:
            return
        self._state = "closed"
        for slots in (self._writer, self._readers):
            while not slots.idle.empty():
                slots.idle.get_nowait()  # still in self._all, closed below
            slots.idle.put_nowait(None)  # wakes waiters, one after another, with PoolClosed
        try:
            async with asyncio.timeout(timeout):
                await self._drained.wait()
        except TimeoutError:
            held = len(self._writer.in_use) + len(self._readers.in_use)
            log.warning("pool_close_forced", path=str(self.path), held=held)
        await self._close_all(timeout)
        log.info("pool_closed", path=str(self.path))

    async def _close_all(self, timeout: float) -> None:
        conns, self._all = self._all, set()
        await asyncio.gather(*(self._close_quietly(c, timeout) for c in conns))

    async def _close_quietly(self, conn: aiosqlite.Connection, timeout: float) -> None:
        # A close queues behind any statement still running on the connection's thread;
        # waiting in a separate task bounds that wait without abandoning the close.
        task = asyncio.create_task(conn.close())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            log.warning("connection_close_timed_out", path=str(self.path))
        elif (exc := task.exception()) is not None:
            log.warning("connection_close_failed", path=str(self.path), error=repr(exc))
