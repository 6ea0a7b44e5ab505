"""The read model's connection pool: bounded, exclusive, self-healing, closed for good."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from pathlib import Path

import aiosqlite
import pytest

from events.errors import PoolClosed, PoolError, PoolTimeout
from projections.pool import ConnectionPool

READERS = 3
# How aiosqlite refuses a closed connection.
CLOSED = "no active connection|Connection closed"
Lease = AbstractAsyncContextManager[aiosqlite.Connection]


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[ConnectionPool]:
    async with ConnectionPool(tmp_path / "read.db", readers=READERS, acquire_timeout=0.2) as p:
        async with p.writer() as conn:
            await conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            await conn.commit()
        yield p


async def hold(
    lease: Callable[[], Lease],
    acquired: asyncio.Event,
    release: asyncio.Event,
    asking: asyncio.Event | None = None,
) -> None:
    """Hold a connection from ``lease()`` until ``release`` is set.

    ``asking`` is set just before the lease is asked for: whoever waits on it
    runs again only once this task is queued in the pool (or holds a connection).
    """
    if asking is not None:
        asking.set()
    async with lease():
        acquired.set()
        await asyncio.wait_for(release.wait(), 10)


async def one(conn: aiosqlite.Connection, sql: str) -> object:
    rows = list(await conn.execute_fetchall(sql))
    return rows[0][0]


async def test_every_connection_is_wal_with_foreign_keys(pool: ConnectionPool) -> None:
    """Readers never block the writer (WAL) and references are enforced, on every connection."""
    async with AsyncExitStack() as stack:
        conns = [await stack.enter_async_context(pool.writer())]
        conns += [await stack.enter_async_context(pool.reader()) for _ in range(READERS)]
        assert len({id(c) for c in conns}) == READERS + 1
        for conn in conns:
            assert await one(conn, "PRAGMA journal_mode") == "wal"
            assert await one(conn, "PRAGMA foreign_keys") == 1
            assert await one(conn, "PRAGMA busy_timeout") == 5000
        assert await one(conns[0], "PRAGMA synchronous") == 1  # NORMAL


async def test_readers_see_committed_rows(pool: ConnectionPool) -> None:
    """A query answered by any reader reflects what the projector committed."""
    async with pool.writer() as conn:
        await conn.executemany("INSERT INTO t (v) VALUES (?)", [("a",), ("b",)])
        await conn.commit()
    async with pool.reader() as conn:
        rows = list(await conn.execute_fetchall("SELECT v FROM t ORDER BY id"))
    assert [tuple(r) for r in rows] == [("a",), ("b",)]


async def test_reader_cannot_write(pool: ConnectionPool) -> None:
    """A query path can never change the read model: SQLite refuses writes on readers."""
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        async with pool.reader() as conn:
            await conn.execute("INSERT INTO t (v) VALUES ('x')")
    async with pool.writer() as conn:
        assert await one(conn, "SELECT count(*) FROM t") == 0
    assert pool.stats().replaced == 0  # a refused statement does not kill the connection


async def test_readers_run_at_once_up_to_the_limit_then_wait_then_time_out(
    pool: ConnectionPool,
) -> None:
    """N readers serve N queries at once; one more waits its turn, and gives up in bounded time."""
    release = asyncio.Event()
    acquired = [asyncio.Event() for _ in range(READERS)]
    holders = [asyncio.create_task(hold(pool.reader, a, release)) for a in acquired]
    await asyncio.wait_for(asyncio.gather(*(a.wait() for a in acquired)), 5)
    assert pool.stats().readers_in_use == READERS
    assert pool.stats().waits == 0

    asking = asyncio.Event()
    late = asyncio.create_task(
        hold(lambda: pool.reader(timeout=5), asyncio.Event(), release, asking)
    )
    await asyncio.wait_for(asking.wait(), 5)
    assert pool.stats().waits == 1
    assert not late.done()

    with pytest.raises(
        PoolTimeout, match=r"no reader connection free after 0.2s \(3/3 in use\)"
    ) as ei:
        async with pool.reader():
            pass
    assert (ei.value.in_use, ei.value.size, ei.value.code) == (READERS, READERS, "pool_timeout")
    assert str(pool.path) in str(ei.value)

    release.set()
    await asyncio.wait_for(asyncio.gather(*holders, late), 5)
    stats = pool.stats()
    assert (stats.readers_in_use, stats.waits, stats.timeouts) == (0, 2, 1)
    assert stats.acquisitions == 1 + READERS + 1  # the fixture's writer, the holders, late


async def test_writer_is_exclusive(pool: ConnectionPool) -> None:
    """Two projector batches never share the writer, so transactions never interleave."""
    holding = 0
    most = 0

    async def write(i: int) -> None:
        nonlocal holding, most
        async with pool.writer(timeout=10) as conn:
            holding += 1
            most = max(most, holding)
            await conn.execute("INSERT INTO t (v) VALUES (?)", (str(i),))
            await one(conn, "SELECT count(*) FROM t")
            await conn.commit()
            holding -= 1

    await asyncio.wait_for(asyncio.gather(*(write(i) for i in range(20))), 10)
    assert most == 1
    async with pool.reader() as conn:
        assert await one(conn, "SELECT count(*) FROM t") == 20
    assert pool.stats().waits >= 1  # they really did contend


async def test_connection_closed_under_a_holder_is_replaced(pool: ConnectionPool) -> None:
    """A connection that dies in use is swapped for a fresh one; the pool keeps serving."""

    async def use_after_death() -> None:
        async with pool.reader() as conn:
            await conn.close()
            await conn.execute("SELECT 1")

    with pytest.raises(ValueError, match=CLOSED):
        await use_after_death()
    async with pool.writer() as conn:
        await conn.close()  # the body does not even notice
    assert pool.stats().replaced == 2

    async with AsyncExitStack() as stack:
        conns = [await stack.enter_async_context(pool.writer())]
        conns += [await stack.enter_async_context(pool.reader()) for _ in range(READERS)]
        for c in conns:
            assert await one(c, "SELECT 1") == 1
    async with pool.writer() as conn:
        await conn.execute("INSERT INTO t (v) VALUES ('after')")
        await conn.commit()


async def test_check_replaces_dead_idle_connections(pool: ConnectionPool) -> None:
    """The health check finds connections that died while idle, before a query does."""
    assert await pool.check() == 0
    async with pool.reader() as conn:
        dead = conn
    await dead.close()  # dies while idle in the pool

    assert await pool.check() == 1
    assert pool.stats().replaced == 1
    assert pool.stats().readers_in_use == 0
    async with AsyncExitStack() as stack:
        for _ in range(READERS):
            conn = await stack.enter_async_context(pool.reader())
            assert conn is not dead
            assert await one(conn, "SELECT 1") == 1


async def test_close_closes_every_connection_and_refuses_more(pool: ConnectionPool) -> None:
    """After close nothing is left open, and asking for a connection fails clearly."""
    async with AsyncExitStack() as stack:
        conns = [await stack.enter_async_context(pool.writer())]
        conns += [await stack.enter_async_context(pool.reader()) for _ in range(READERS)]
    await pool.close()
    await pool.close()  # idempotent
    assert pool.closed
    for conn in conns:
        with pytest.raises(ValueError, match=CLOSED):
            await conn.execute("SELECT 1")
    with pytest.raises(PoolClosed, match="closed"):
        async with pool.reader():
            pass
    with pytest.raises(PoolClosed):
        async with pool.writer():
            pass
    with pytest.raises(PoolClosed):
        await pool.open()


async def test_close_waits_for_holders_and_wakes_waiters(pool: ConnectionPool) -> None:
    """Shutdown lets a running query finish, and whoever still waits is told the pool closed."""
    release = asyncio.Event()
    held = asyncio.Event()
    holder = asyncio.create_task(hold(pool.writer, held, release))
    await asyncio.wait_for(held.wait(), 5)
    asking = [asyncio.Event(), asyncio.Event()]
    waiters = [
        asyncio.create_task(hold(lambda: pool.writer(timeout=10), asyncio.Event(), release, a))
        for a in asking
    ]
    await asyncio.wait_for(asyncio.gather(*(a.wait() for a in asking)), 5)
    assert pool.stats().waits == 2

    closing = asyncio.create_task(pool.close(timeout=10))
    for waiter in waiters:
        with pytest.raises(PoolClosed, match="while waiting"):
            await asyncio.wait_for(waiter, 5)
    assert not closing.done()  # still waiting for the holder
    release.set()
    await asyncio.wait_for(asyncio.gather(holder, closing), 5)
    assert pool.stats().writer_in_use is False


async def test_close_gives_up_on_a_stuck_holder_and_closes_anyway(pool: ConnectionPool) -> None:
    """A holder that never returns cannot keep the node from shutting down."""
    got: list[aiosqlite.Connection] = []
    holding, never = asyncio.Event(), asyncio.Event()

    async def stuck() -> None:
        async with pool.reader() as conn:
            got.append(conn)
            holding.set()
            await asyncio.wait_for(never.wait(), 30)

    task = asyncio.create_task(stuck())
    await asyncio.wait_for(holding.wait(), 5)
    await asyncio.wait_for(pool.close(timeout=0.1), 5)
    with pytest.raises(ValueError, match=CLOSED):
        await got[0].execute("SELECT 1")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.stats().readers_in_use == 0


async def test_cancelled_holder_returns_its_connection_rolled_back(pool: ConnectionPool) -> None:
    """A cancelled request neither leaks its connection nor leaves half a transaction behind."""
    inserted = asyncio.Event()

    async def cancelled_batch() -> None:
        async with pool.writer() as conn:
            await conn.execute("INSERT INTO t (v) VALUES ('half')")
            inserted.set()
            await asyncio.wait_for(asyncio.Event().wait(), 30)

    async def cancelled_query(queried: asyncio.Event) -> None:
        async with pool.reader() as conn:
            await conn.execute_fetchall("SELECT * FROM t")
            queried.set()
            await asyncio.wait_for(asyncio.Event().wait(), 30)

    batch = asyncio.create_task(cancelled_batch())
    queried = [asyncio.Event() for _ in range(READERS)]
    queries = [asyncio.create_task(cancelled_query(q)) for q in queried]
    await asyncio.wait_for(inserted.wait(), 5)
    await asyncio.wait_for(asyncio.gather(*(q.wait() for q in queried)), 5)
    assert pool.stats().readers_in_use == READERS
    for task in (batch, *queries):
        task.cancel()
    results = await asyncio.gather(batch, *queries, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)

    stats = pool.stats()
    assert (stats.writer_in_use, stats.readers_in_use, stats.replaced) == (False, 0, 0)
    async with pool.writer(timeout=0) as conn:
        assert not conn.in_transaction
        assert await one(conn, "SELECT count(*) FROM t") == 0
    async with AsyncExitStack() as stack:
        for _ in range(READERS):
            await stack.enter_async_context(pool.reader(timeout=0))


async def test_failed_batch_leaves_no_transaction_for_the_next(pool: ConnectionPool) -> None:
    """An error mid-batch rolls back its rows instead of letting the next batch commit them."""

    async def failing_batch() -> None:
        async with pool.writer() as conn:
            await conn.execute("INSERT INTO t (v) VALUES ('half')")
            raise RuntimeError("projector bug")

    with pytest.raises(RuntimeError, match="projector bug"):
        await failing_batch()
    async with pool.writer() as conn:
        await conn.execute("INSERT INTO t (v) VALUES ('next')")
        await conn.commit()
    async with pool.reader() as conn:
        assert await one(conn, "SELECT group_concat(v) FROM t") == "next"


async def test_open_refuses_a_database_that_cannot_be_wal() -> None:
    """A read model that cannot run in WAL fails loudly at start, not slowly under load."""
    pool = ConnectionPool(":memory:", readers=1)
    with pytest.raises(PoolError, match="not WAL"):
        await pool.open()
    assert pool.stats().readers_in_use == 0
    await pool.close()
