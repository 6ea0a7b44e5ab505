"""The projector: turns the ledger, in order, into the node's SQLite read model.

It reads ``(seq, body)`` pairs and knows nothing of NATS. Each batch is
applied in one transaction that also stores the position (last seq and the
chain hash the projector computed itself), so a crash or a kill never
applies an event twice or skips one: on restart the projector resumes from
the stored position, and the transaction it was in is simply gone.

An event it cannot apply (``projections/quarantine.py``) is judged before it
is folded and recorded in the ``quarantine`` table instead, in the same
transaction as the rest of its batch; the projector goes on with the next.

Consensus needs each fact's current votes and each agent's agreement counts;
the projector keeps them in memory (loaded from the database on open) so a
batch costs a handful of ``executemany`` calls, not one query per event.

Fact ids are scoped per tenant, as the writer judges them: two tenants may
each store a fact under the same id, and each sees only its own. In memory a
fact is keyed by ``fact_key(tenant, fact_id)``; in the tables by both columns.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sys
from collections.abc import AsyncIterable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import structlog

from events.chain import GENESIS, link
from events.codec import decode_event
from events.errors import LedgerMismatch
from events.merkle import TILE, perfect_root
from events.model import (
    AgentRegistered,
    CheckpointSigned,
    Event,
    FactDeprecated,
    FactStored,
    VoteCast,
    WriterKeyAdded,
)
from projections.consensus import Consensus, consensus_of
from projections.pool import ConnectionPool
from projections.quarantine import INT64_MAX, INT64_MIN
from projections.schema import DDL, SCHEMA_VERSION
from projections.tasks import stop_task

log = structlog.get_logger(__name__)

Record = tuple[int, bytes]
OnCommit = Callable[[int, set[str]], None]
DEFAULT_BATCH: Final = 10_000
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_json: Final = msgspec.json.Encoder(order="sorted")
#: The events about one fact: their fact id and key are computed once per event.
_FACT_EVENTS: Final = (FactStored, FactDeprecated, VoteCast)


def fact_key(tenant: str, fact_id: str) -> str:
    """A fact's key in the projector's maps: its tenant, a space, its id (one interned
    string: a tenant holds no spaces)."""
    return sys.intern(f"{tenant} {fact_id}")


def world_us(value: dt.datetime | None) -> int | None:
    """World time as exact integer microseconds since the epoch (no float rounding)."""
    return None if value is None else (value - _EPOCH) // dt.timedelta(microseconds=1)


@dataclass(slots=True)
class _Batch:
    """Rows one batch will write, gathered in memory, written in one transaction."""

    agents: list[tuple[Any, ...]] = field(default_factory=list)
    facts: list[tuple[Any, ...]] = field(default_factory=list)
    fts: list[tuple[Any, ...]] = field(default_factory=list)
    deprecations: list[tuple[Any, ...]] = field(default_factory=list)
    history: list[tuple[Any, ...]] = field(default_factory=list)
    hashes: list[tuple[int, bytes, bytes]] = field(default_factory=list)
    tiles: list[tuple[int, bytes]] = field(default_factory=list)
    ledger: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    quarantine: list[tuple[int, str, str]] = field(default_factory=list)
    votes: dict[tuple[str, str], tuple[Any, ...] | None] = field(default_factory=dict)
    consensus: dict[str, tuple[Consensus, int]] = field(default_factory=dict)
    counts: set[tuple[str, str]] = field(default_factory=set)
    touched: set[str] = field(default_factory=set)
    # Filled when the batch is sealed (folded in full): what the writes need of
    # the book as it stood then, so the next batch can fold while this one commits.
    deprecation_rows: list[tuple[Any, ...]] = field(default_factory=list)
    consensus_rows: list[tuple[Any, ...]] = field(default_factory=list)
    count_rows: list[tuple[Any, ...]] = field(default_factory=list)


class Projector:
    """Applies ledger events to one database; see the module doc."""

    def __init__(self, pool: ConnectionPool, *, on_commit: OnCommit | None = None) -> None:
        self.pool = pool
        self.on_commit = on_commit
        self.seq = 0
        self.head = GENESIS
        self.applied = 0
        #: Events set aside so far (the rows of the quarantine table).
        self.quarantined = 0
        #: Whether whoever feeds this projector is following the ledger; when not,
        #: why, and whether it stopped for good (``halted``). Set by the node.
        self.following = True
        self.stopped_reason = ""
        self.halted = False
        self._advanced = asyncio.Condition()
        # The consensus book: current non-zero votes, agreement counts, settled
        # directions; facts by ``fact_key``.
        self._votes: dict[str, dict[str, int]] = {}
        self._fact_row: dict[str, int] = {}  # fact key -> rowid (its stored seq)
        #: Fact keys deprecated so far: the first deprecation holds, as at the writer.
        self._deprecated: set[str] = set()
        self._counts: dict[tuple[str, str], list[int]] = {}
        self._direction: dict[str, int] = {}
        self._tile: list[bytes] = []  # event hashes of the tile being filled

    async def open(self) -> None:
        """Create the schema if needed and load the position and consensus book."""
        async with self.pool.writer() as conn:
            await conn.executescript(DDL)
            await conn.commit()
        await self._load()

    async def _load(self) -> None:
        async with self.pool.writer() as conn:
            async with conn.execute("SELECT seq, hash, schema_version FROM position") as cur:
                row = await cur.fetchone()
            if row is not None and row[2] != SCHEMA_VERSION:
                raise LedgerMismatch(
                    f"database schema {row[2]} is not {SCHEMA_VERSION}: rebuild it with `cortex replay`"
                )
            self.seq, self.head = (int(row[0]), bytes(row[1])) if row else (0, GENESIS)
            async with conn.execute("SELECT count(*) FROM quarantine") as cur:
                counted = await cur.fetchone()
            self.quarantined = int(counted[0]) if counted else 0
            self._votes, self._counts, self._direction, self._fact_row = {}, {}, {}, {}
            self._deprecated = set()
            start = self.seq - self.seq % TILE
            async with conn.execute(
                "SELECT hash FROM event_hashes WHERE seq > ? ORDER BY seq", (start,)
            ) as cur:
                self._tile = [bytes(h) async for (h,) in cur]
            async with conn.execute("SELECT tenant, fact_id, agent_id, value FROM votes") as cur:
                async for tenant, fact_id, agent_id, value in cur:
                    self._votes.setdefault(fact_key(tenant, fact_id), {})[agent_id] = value
            async with conn.execute(
                "SELECT tenant, agent_id, agrees, disagrees FROM agents"
            ) as cur:
                async for tenant, agent_id, agrees, disagrees in cur:
                    self._counts[(tenant, agent_id)] = [agrees, disagrees]
            async with conn.execute(
                "SELECT f.rowid, f.fact_id, f.tenant, c.status"
                " FROM facts f LEFT JOIN consensus c ON c.fact_row = f.rowid"
            ) as cur:
                async for rowid, raw_id, tenant, status in cur:
                    key = fact_key(tenant, raw_id)
                    self._fact_row[key] = rowid
                    if status in ("verified", "rejected"):
                        self._direction[key] = 1 if status == "verified" else -1

    # -- applying ------------------------------------------------------------

    async def apply(self, records: Sequence[Record]) -> None:
        """Apply consecutive events in one transaction, position included."""
        if not records:
            return
        batch = _Batch()
        try:
            seq, head = self._fold_all(records, batch, self.seq, self.head)
            self._seal(batch)
            await self._write(batch, seq, head)
        except BaseException:
            await self._load()  # the book may hold changes the database never got
            raise
        await self._committed(batch, seq, head, len(records))

    async def _committed(self, batch: _Batch, seq: int, head: bytes, count: int) -> None:
        """Advance the position after a commit and tell whoever waits on it."""
        self.seq, self.head = seq, head
        self.applied += count
        self.quarantined += len(batch.quarantine)
        async with self._advanced:
            self._advanced.notify_all()
        if self.on_commit is not None:
            self.on_commit(seq, batch.touched)

    def _seal(self, batch: _Batch) -> None:
        """Snapshot what the batch's writes read from the book, now that it is folded."""
        rows = self._fact_row
        batch.deprecation_rows = [
            (*row[:5], rows[row[5]]) for row in batch.deprecations if row[5] in rows
        ]
        batch.consensus_rows = [
            (c.score, c.weight, c.votes_for, c.votes_against, c.status, seq, rows[key])
            for key, (c, seq) in batch.consensus.items()
            if key in rows
        ]
        counts = self._counts
        batch.count_rows = [(*counts[key], *key) for key in sorted(batch.counts)]

    def _fold_all(
        self, records: Sequence[Record], batch: _Batch, seq: int, head: bytes
    ) -> tuple[int, bytes]:
        """Fold events after (seq, head) into the book and the batch; the new position."""
        for rec_seq, body in records:
            if rec_seq != seq + 1:
                raise LedgerMismatch(
                    f"expected seq {seq + 1} next but got {rec_seq}: the projector must see "
                    "every event once, in order"
                )
            head = link(head, body)
            seq = rec_seq
            tile = self._tile
            tile.append(head)
            if len(tile) == TILE:
                batch.tiles.append((seq // TILE - 1, perfect_root(tile)))
                tile.clear()
            try:
                event = decode_event(body)
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                batch.hashes.append((seq, b"", head))
                self._quarantine(batch, seq, "undecodable", "the body is not a CORTEX event", e)
                continue
            batch.hashes.append((seq, event.id.bytes, head))
            if isinstance(event, _FACT_EVENTS):
                fact_id = str(event.fact_id)
                key = fact_key(event.tenant, fact_id)
            else:
                fact_id = key = ""
            refusal = self._refusal(event, key)
            if refusal is not None:
                self._quarantine(batch, seq, *refusal)
                continue
            self._fold(event, seq, batch, fact_id, key)
        return seq, head

    @staticmethod
    def _quarantine(
        batch: _Batch, seq: int, reason: str, detail: str, error: Exception | None = None
    ) -> None:
        batch.quarantine.append((seq, reason, detail))
        log.warning(
            "event_quarantined", seq=seq, reason=reason, detail=detail, error=error and str(error)
        )

    def _refusal(self, event: Event, key: str) -> tuple[str, str] | None:
        """Why ``event`` cannot be applied to the book as it stands, or None.

        ``key`` is the event's ``fact_key`` if it is about a fact (else unused).

        Pure and with fixed texts: every node and every replay decides the same.
        """
        if not INT64_MIN <= event.ts <= INT64_MAX:
            return "out_of_range", f"ts {event.ts} is not a 64-bit integer"
        if isinstance(event, FactStored):
            if key in self._fact_row:
                return "fact_id_reused", f"fact {event.fact_id} was stored before"
        elif isinstance(event, FactDeprecated | VoteCast):
            if key not in self._fact_row:
                return "unknown_fact", f"no fact {event.fact_id} in tenant {event.tenant}"
            if isinstance(event, VoteCast) and event.value not in (-1, 0, 1):
                return "invalid_vote", f"a vote of {event.value}"
            if isinstance(event, FactDeprecated) and key in self._deprecated:
                return "already_deprecated", f"fact {event.fact_id} was deprecated before"
        elif isinstance(event, CheckpointSigned) and not 0 <= event.tree_size <= INT64_MAX:
            return "out_of_range", f"tree_size {event.tree_size} is not a 64-bit integer"
        return None

    def _fold(self, event: Event, seq: int, batch: _Batch, fact_id: str, key: str) -> None:
        """Fold one event; ``fact_id`` and ``key`` as computed in ``_fold_all``."""
        if isinstance(event, AgentRegistered):
            self._counts.setdefault((event.tenant, event.agent_id), [0, 0])
            batch.agents.append((event.tenant, event.agent_id, event.public_key, seq, event.ts))
        elif isinstance(event, FactStored):
            self._fact_row[key] = seq
            tags = _json.encode(list(event.tags)).decode()
            batch.facts.append(
                (
                    seq,
                    fact_id,
                    event.tenant,
                    event.agent_id,
                    event.content,
                    event.type,
                    tags,
                    event.confidence,
                    event.source,
                    _json.encode(event.meta).decode(),
                    world_us(event.valid_from),
                    world_us(event.valid_until),
                    seq,
                    event.ts,
                )
            )
            batch.fts.append((seq, event.content, " ".join(event.tags)))
            batch.touched.add(fact_id)
        elif isinstance(event, FactDeprecated):
            successor = None if event.successor_id is None else str(event.successor_id)
            batch.deprecations.append(
                (
                    seq,
                    event.ts,
                    event.agent_id,
                    event.reason,
                    successor,
                    key,
                )
            )
            self._deprecated.add(key)
            batch.touched.add(fact_id)
        elif isinstance(event, VoteCast):
            self._vote(event, seq, batch, fact_id, key)
        elif isinstance(event, WriterKeyAdded):
            batch.ledger.append(
                (
                    "INSERT OR IGNORE INTO writer_keys (public_key, name, seq) VALUES (?, ?, ?)",
                    (event.public_key, event.name, seq),
                )
            )
        elif isinstance(event, CheckpointSigned):
            batch.ledger.append(
                (
                    "INSERT INTO checkpoints (seq, tree_size, root, head, public_key, note)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (seq, event.tree_size, event.root, event.head, event.public_key, event.note),
                )
            )

    def _vote(self, event: VoteCast, seq: int, batch: _Batch, fact_id: str, key: str) -> None:
        tenant, agent = event.tenant, event.agent_id
        current = self._votes.setdefault(key, {})
        settled = self._direction.get(key, 0)
        # The counts hold every current voter's agreement with this fact under
        # ``settled``: move the changed voter's, compute without them, and move
        # everyone's only if the settled direction changes.
        old = current.get(agent, 0)
        if event.value == 0:
            current.pop(agent, None)
            batch.votes[(key, agent)] = None
        else:
            current[agent] = event.value
            batch.votes[(key, agent)] = (
                fact_id,
                agent,
                tenant,
                event.value,
                seq,
                event.ts,
                event.reason,
            )
        if settled and old != event.value:
            self._agree((tenant, agent), old, settled, -1, batch)
            self._agree((tenant, agent), event.value, settled, +1, batch)
        result = consensus_of(tenant, current, self._counts, settled)
        direction = result.direction
        if direction != settled:
            self._direction[key] = direction
            for voter, value in current.items():
                self._agree((tenant, voter), value, settled, -1, batch)
                self._agree((tenant, voter), value, direction, +1, batch)
        batch.consensus[key] = (result, seq)
        batch.history.append(
            (
                seq,
                tenant,
                fact_id,
                agent,
                event.value,
                event.ts,
                event.reason,
                result.score,
                result.weight,
                result.votes_for,
                result.votes_against,
                result.status,
            )
        )
        batch.touched.add(fact_id)

    def _agree(
        self, key: tuple[str, str], value: int, direction: int, sign: int, batch: _Batch
    ) -> None:
        """Count (sign +1) or uncount (-1) one vote's agreement with a settled direction."""
        if not value or not direction:
            return
        counts = self._counts.get(key)
        if counts is None:  # not a registered agent (only a forged ledger has those)
            return
        counts[0 if value == direction else 1] += sign
        batch.counts.add(key)

    async def _write(
        self, batch: _Batch, seq: int, head: bytes, committing: asyncio.Event | None = None
    ) -> None:
        """Write the batch and its position in one transaction; set ``committing`` at COMMIT."""
        try:
            await self._transact(batch, seq, head, committing)
        finally:
            if committing is not None:
                committing.set()

    async def _transact(
        self, batch: _Batch, seq: int, head: bytes, committing: asyncio.Event | None
    ) -> None:
        async with self.pool.writer() as conn:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                await self._write_rows(conn, batch)
                await conn.execute(
                    "INSERT INTO position (id, seq, hash, schema_version) VALUES (1, ?, ?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
                    (seq, head, SCHEMA_VERSION),
                )
                if committing is not None:
                    committing.set()  # the rows are written: the next batch may fold meanwhile
                await conn.commit()
            except BaseException:
                with contextlib.suppress(Exception):
                    await conn.rollback()
                raise

    async def _write_rows(self, conn: Any, batch: _Batch) -> None:
        await conn.executemany(
            "INSERT INTO event_hashes (seq, id, hash) VALUES (?, ?, ?)", batch.hashes
        )
        if batch.tiles:
            await conn.executemany(
                "INSERT INTO merkle_tiles (tile, hash) VALUES (?, ?)", batch.tiles
            )
        for sql, row in batch.ledger:
            await conn.execute(sql, row)
        if batch.quarantine:
            await conn.executemany(
                "INSERT INTO quarantine (seq, reason, detail) VALUES (?, ?, ?)", batch.quarantine
            )
        if batch.agents:
            await conn.executemany(
                # OR IGNORE: the first registration holds (see LedgerState.apply).
                "INSERT OR IGNORE INTO agents"
                " (tenant, agent_id, public_key, registered_seq, registered_ts) "
                "VALUES (?, ?, ?, ?, ?)",
                batch.agents,
            )
        if batch.facts:
            await conn.executemany(
                "INSERT INTO facts (rowid, fact_id, tenant, agent_id, content, type, tags, confidence,"
                " source, meta, valid_from, valid_until, stored_seq, stored_ts)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                batch.facts,
            )
            await conn.executemany(
                "INSERT INTO facts_fts (rowid, content, tags) VALUES (?, ?, ?)", batch.fts
            )
        if batch.deprecation_rows:
            await conn.executemany(
                "UPDATE facts SET deprecated_seq = ?, deprecated_ts = ?, deprecated_by = ?,"
                " deprecation_reason = ?, successor_id = ? WHERE rowid = ?",
                batch.deprecation_rows,
            )
        if batch.history:
            await conn.executemany(
                "INSERT INTO vote_history VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                batch.history,
            )
        upserts = [row for row in batch.votes.values() if row is not None]
        deletes = [
            (*key.split(" ", 1), agent) for (key, agent), row in batch.votes.items() if row is None
        ]
        if upserts:
            await conn.executemany(
                "INSERT INTO votes (fact_id, agent_id, tenant, value, seq, ts, reason)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, fact_id, agent_id) DO UPDATE SET"
                " value = excluded.value, seq = excluded.seq, ts = excluded.ts, reason = excluded.reason",
                upserts,
            )
        if deletes:
            await conn.executemany(
                "DELETE FROM votes WHERE tenant = ? AND fact_id = ? AND agent_id = ?", deletes
            )
        if batch.consensus_rows:
            await conn.executemany(
                "INSERT OR REPLACE INTO consensus (score, weight, votes_for, votes_against,"
                " status, consensus_seq, fact_row) VALUES (?, ?, ?, ?, ?, ?, ?)",
                batch.consensus_rows,
            )
        if batch.count_rows:
            await conn.executemany(
                "UPDATE agents SET agrees = ?, disagrees = ? WHERE tenant = ? AND agent_id = ?",
                batch.count_rows,
            )

    # -- streams and waiting -------------------------------------------------

    async def consume(
        self,
        stream: AsyncIterable[Record],
        *,
        batch_size: int = DEFAULT_BATCH,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Apply a stream of events in batches until it ends.

        Reading and writing overlap: a pump task fills a bounded queue while
        the previous batch commits, and each batch takes whatever is waiting
        (up to ``batch_size``), so a live follower applies single events at
        once and a replay writes big transactions.
        """
        queue: asyncio.Queue[Record | None] = asyncio.Queue(maxsize=batch_size * 2)

        async def pump() -> None:
            try:
                async for record in stream:
                    await queue.put(record)
            except BaseException:
                # Never block on the way out: the consumer may be gone. If the
                # queue is full, the consumer drains it and sees the pump done.
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(None)
                raise
            await queue.put(None)

        task = asyncio.create_task(pump(), name="projector-pump")
        try:
            await self._apply_queued(queue, task, batch_size, progress)
        finally:
            if not task.done():
                # Empty the queue so a pump stuck on a full one can see its cancellation.
                while not queue.empty():
                    queue.get_nowait()
                await stop_task(task)
        await task  # re-raises what went wrong in the reader, if anything

    async def _apply_queued(
        self,
        queue: asyncio.Queue[Record | None],
        pump: asyncio.Task[None],
        batch_size: int,
        progress: Callable[[int], None] | None,
    ) -> None:
        """Apply the queue's batches, folding each one while the one before commits.

        At most one batch is in flight, and its commit is recorded (position,
        ``on_commit``, waiters, ``progress``) before the next one is written,
        so all of that happens in commit order; each transaction holds its own
        batch's rows and position and nothing else.
        """
        inflight: tuple[asyncio.Task[None], _Batch, int, bytes, int] | None = None

        async def settle() -> None:
            nonlocal inflight
            if inflight is None:
                return
            write, done, seq, head, count = inflight
            inflight = None
            await write
            await self._committed(done, seq, head, count)
            if progress is not None:
                progress(seq)

        folded_seq, folded_head = self.seq, self.head
        try:
            ended = False
            while not ended:
                if queue.empty():
                    await settle()  # nothing to fold meanwhile: record the commit now
                    if pump.done():
                        break
                records, ended = await _take(queue, batch_size)
                if not records:
                    break
                batch = _Batch()
                seq, head = self._fold_all(records, batch, folded_seq, folded_head)
                self._seal(batch)
                await settle()
                committing = asyncio.Event()
                write = asyncio.create_task(
                    self._write(batch, seq, head, committing), name="projector-write"
                )
                inflight = (write, batch, seq, head, len(records))
                folded_seq, folded_head = seq, head
                # Fold the next batch while this one commits, not while its rows
                # go in: the commit runs without the GIL, the inserts need it.
                await committing.wait()
            await settle()
        except BaseException:
            # The book may be ahead of the database (a batch folded, or one whose
            # commit failed): let the write in flight end, then reload the book.
            with contextlib.suppress(BaseException):
                await settle()
            await self._load()
            raise

    async def wait_for(self, seq: int, *, timeout: float) -> bool:
        """Wait until ``seq`` is applied; False if it is not within ``timeout`` seconds,
        or as soon as the projector has stopped following for good (``halted``)."""
        try:
            async with asyncio.timeout(timeout), self._advanced:
                await self._advanced.wait_for(lambda: self.seq >= seq or self.halted)
        except TimeoutError:
            return False
        return self.seq >= seq

    async def mark_stopped(self, reason: str, *, halted: bool = False) -> None:
        """Say the feed stopped (``halted``: for good), and wake every waiter."""
        self.following, self.stopped_reason = False, reason
        self.halted = self.halted or halted
        async with self._advanced:
            self._advanced.notify_all()

    def mark_following(self) -> None:
        """Say the feed follows the ledger again."""
        if not self.halted:
            self.following, self.stopped_reason = True, ""


async def _take(queue: asyncio.Queue[Record | None], limit: int) -> tuple[list[Record], bool]:
    """The next batch: one record (waiting for it) and whatever else is queued, up to
    ``limit``; and whether the stream ended."""
    first = await queue.get()
    if first is None:
        return [], True
    records = [first]
    while len(records) < limit and not queue.empty():
        record = queue.get_nowait()
        if record is None:
            return records, True
        records.append(record)
    return records, False
