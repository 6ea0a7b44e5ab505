"""One active writer among candidates: a lease on a key of a JetStream KV bucket.

Every writer candidate runs a ``WriterLease`` on its own connection. The key
``active`` names the candidate that holds the lease; it is only ever changed
by compare-and-set on its revision, so of two candidates that try at once,
one wins and the other learns that it lost:

- **acquire**: write the key if it is absent or released (a delete marker),
  or take it over from a holder that looks dead, by writing it on the
  revision last observed. No clock is compared between machines: "looks
  dead" means that this candidate saw the same revision for a while by its
  own clock *and* the holder fails a liveness probe. A probe answered with
  "no responders" means the holder's connection is gone (kill -9 closes its
  socket); then a quarter of the period is enough. A probe that times out
  (the holder may be busy or cut off) takes more than a whole period.
- **renew**: the holder rewrites the key on its revision every ``period / 4``.
  If the write is refused because the revision moved (another candidate took
  over), the lease is lost for sure: ``lost`` is set and the writer stops
  appending at once. If the KV store is only unreachable (a timeout, a
  JetStream 503 during an election), nothing is decided: the holder retries
  fast and keeps writing. Either way, correctness never rests on the lease:
  every append names the sequence it expects to follow, so two writers can
  never fork the chain; the lease only makes one of them serve at a time.
- **release**: a holder that stops cleanly deletes the key (on its revision);
  the standbys, watching the key, take over at once instead of after a period.

A candidate serves ``cortex.writer.alive.<its id>`` from the moment it starts
trying (``cortex.nats.lease_bucket``), so a probe never mistakes a new holder
for a dead one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Final

import msgspec
import structlog

from cortex.errors import CortexError, Unavailable
from cortex.nats.bus import Bus
from cortex.nats.lease_bucket import LeaseBucket, LeaseEntry
from events.errors import LeaseLost
from projections.tasks import stop_task

log = structlog.get_logger(__name__)

KEY: Final = "active"
#: The lease's period, in seconds: renewed four times in it; taken over after it.
DEFAULT_PERIOD: Final = 1.0
#: The first retry after NATS did not answer; doubled up to a quarter of the period.
_FIRST_RETRY: Final = 0.05

__all__ = ["DEFAULT_PERIOD", "KEY", "LeaseHolder", "WriterLease", "current_holder"]


class WriterLease:
    """This candidate's claim to be the one writer; see the module doc.

    ``acquire`` waits until it holds the lease; ``held`` says whether it still
    does; ``lost`` is set when another candidate took it (and cleared by the
    next ``acquire``); ``release`` gives it up for a standby to take at once.
    """

    def __init__(
        self,
        bus: Bus,
        *,
        replicas: int = 1,
        period: float = DEFAULT_PERIOD,
        name: str = "",
    ) -> None:
        if not 0.1 <= period <= 60:
            raise ValueError("the lease period must be between 0.1 and 60 seconds")
        self.bus = bus
        self.replicas = replicas
        self.period = period
        #: This candidate, as the key and the probes name it (new for each lease).
        self.candidate = uuid.uuid4().hex
        self.name = name or self.candidate[:8]
        self.lost = asyncio.Event()
        self.revision = 0
        self.renewals = 0
        self._held = False
        self._bucket: LeaseBucket | None = None
        self._changed = asyncio.Event()
        self._renew_now = asyncio.Event()
        #: Set each time a standby read the key (whoever waits clears it first).
        self.looked = asyncio.Event()
        self._renewer: asyncio.Task[None] | None = None
        self._value = b""

    @property
    def held(self) -> bool:
        """Whether this candidate holds the lease (as far as it knows: see the module doc)."""
        return self._held

    async def acquire(self) -> None:
        """Wait until this candidate holds the lease. Each step is bounded; the wait as
        a whole is not (a standby waits for as long as another holder lives)."""
        if self._held:
            return
        seen: int | None = None
        seen_at = time.monotonic()
        delay = _FIRST_RETRY
        while True:
            self._changed.clear()
            try:
                bucket = await self._open()
                entry = await bucket.get(KEY)
                self.looked.set()
                if entry is not None and entry.revision != seen:
                    seen, seen_at = entry.revision, time.monotonic()
                if await self._try(bucket, entry, time.monotonic() - seen_at):
                    return
                delay = _FIRST_RETRY
            except Unavailable as e:
                log.warning("lease_unavailable", error=e.message, retry_in=delay)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._changed.wait()
                delay = min(self.period / 4, delay * 2)
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.period / 4):
                    await self._changed.wait()

    async def _try(self, bucket: LeaseBucket, entry: LeaseEntry | None, stale: float) -> bool:
        """One look at the key: take the lease if it is free or its holder is dead."""
        if entry is None or entry.deleted:
            return await self._take(bucket, entry.revision if entry else 0, "free")
        holder = _holder(entry.value)
        if holder == self.candidate:  # ours: a write whose answer was lost
            self._won(entry.revision)
            return True
        if stale < self.period / 4:
            return False
        alive = await bucket.probe(holder, timeout=self.period / 2) if holder else None
        if alive is False or (alive is None and stale > self.period):
            why = "holder gone" if alive is False else "holder silent"
            return await self._take(bucket, entry.revision, why, holder=holder)
        return False

    async def _take(self, bucket: LeaseBucket, last: int, why: str, holder: str = "") -> bool:
        # Who holds it, where, since when: what `cortex cluster status` shows.
        self._value = msgspec.json.encode(
            LeaseHolder(self.candidate, self.name, self.bus.server_name, time.time())
        )
        try:
            revision = await bucket.put(KEY, self._value, last=last)
        except LeaseLost:
            return False  # another candidate was faster: look again
        log.info("lease_acquired", candidate=self.name, why=why, previous=holder[:8])
        self._won(revision)
        return True

    def _won(self, revision: int) -> None:
        self.revision = revision
        self._held = True
        self.lost.clear()
        self._renewer = asyncio.create_task(self._renew(), name="cortex-lease-renew")
        self._renewer.add_done_callback(self._renewer_ended)

    async def _open(self) -> LeaseBucket:
        if self._bucket is None:
            bucket = await LeaseBucket.open(
                self.bus, replicas=self.replicas, timeout=max(1.0, self.period)
            )
            try:
                await bucket.serve_alive(self.candidate)
                try:
                    await bucket.watch(KEY, self._changed.set)
                except CortexError as e:  # only a wake-up: polling still sees every change
                    log.warning("lease_watch_failed", error=e.message)
            except BaseException:
                await bucket.close()
                raise
            self._bucket = bucket
        return self._bucket

    async def _renew(self) -> None:
        """Rewrite the key every quarter period while held; see the module doc."""
        assert self._bucket is not None
        bucket = self._bucket
        delay = self.period / 4
        failing = 0  # renewals in a row that got no answer: logged once, and when it ends
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._renew_now.wait()
            self._renew_now.clear()
            try:
                try:
                    self.revision = await bucket.put(KEY, self._value, last=self.revision)
                    self.renewals += 1
                except LeaseLost:
                    # Ours still, if our last write landed but its answer was lost.
                    entry = await bucket.get(KEY)
                    if entry is None or entry.deleted or _holder(entry.value) != self.candidate:
                        self._lose("another candidate took the lease")
                        return
                    self.revision = entry.revision
                delay = self.period / 4
                if failing:
                    log.info("lease_renew_answered", after_failures=failing)
                    failing = 0
            except Unavailable as e:  # undecided: keep the lease, retry soon
                delay = min(self.period / 4, max(_FIRST_RETRY, delay / 2))
                failing += 1
                if failing == 1:
                    log.warning("lease_renew_unavailable", error=e.message, retry_in=delay)

    def _lose(self, why: str) -> None:
        if self._held:
            log.warning("lease_lost", candidate=self.name, why=why)
        self._held = False
        self.lost.set()

    def _renewer_ended(self, task: asyncio.Task[None]) -> None:
        """The renewal ended: fine if lost or stopped; a failure loses the lease, loudly."""
        if task.cancelled() or task.exception() is None:
            return
        log.critical("lease_renew_failed", error=repr(task.exception()))
        self._lose(f"its renewal failed: {task.exception()!r}")

    async def release(self) -> None:
        """Give the lease up (a clean stop): a standby takes it over at once. Bounded."""
        if self._renewer is not None:
            await stop_task(self._renewer)
            self._renewer = None
        if not self._held or self._bucket is None:
            return
        self._held = False
        try:
            async with asyncio.timeout(max(1.0, self.period)):
                try:
                    await self._bucket.delete(KEY, last=self.revision)
                except LeaseLost:
                    # A renewal stopped after its write landed, before its answer came:
                    # the key is still ours at a later revision.
                    entry = await self._bucket.get(KEY)
                    if entry is None or entry.deleted or _holder(entry.value) != self.candidate:
                        return
                    await self._bucket.delete(KEY, last=entry.revision)
            log.info("lease_released", candidate=self.name)
        except (CortexError, TimeoutError) as e:  # a standby takes over once it looks dead
            log.warning("lease_release_failed", error=str(e) or type(e).__name__)

    async def serving(self) -> None:
        """Say in the key that this holder now serves (a predecessor handing over waits
        for it): the renewal writes it at once, and again if that write fails."""
        holder = _parse(self._value)
        if holder is None or holder.serving or self._bucket is None or not self._held:
            return
        self._value = msgspec.json.encode(msgspec.structs.replace(holder, serving=True))
        self._renew_now.set()  # the renewal writes it now (one writer of the key: no race)

    async def successor(self, timeout: float, *, serving: bool = False) -> LeaseHolder | None:
        """After ``release``: the candidate that took the lease over (with ``serving``:
        once it serves), as soon as the key says so (it watches the key), or None if
        none did within ``timeout``."""
        if self._bucket is None:
            return None
        deadline = time.monotonic() + timeout
        while True:
            self._changed.clear()
            try:
                entry = await self._bucket.get(KEY)
            except Unavailable:
                entry = None
            if entry is not None and not entry.deleted:
                found = _parse(entry.value)
                if (
                    found is not None
                    and found.holder != self.candidate
                    and (found.serving or not serving)
                ):
                    return found
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._changed.wait()

    async def close(self) -> None:
        """Stop renewing (without releasing) and stop answering probes."""
        if self._renewer is not None:
            await stop_task(self._renewer)
            self._renewer = None
        self._held = False
        if self._bucket is not None:
            await self._bucket.close()
            self._bucket = None


class LeaseHolder(msgspec.Struct, frozen=True):
    """The lease key's value: the candidate holding it, its name (the node it runs on),
    the server it is connected to, and since when (Unix time) it holds it."""

    holder: str
    name: str = ""
    server: str = ""
    since: float = 0.0
    #: The writer serves commands (set once it recovered the head and subscribed).
    serving: bool = False


def _parse(value: bytes) -> LeaseHolder | None:
    try:
        found = msgspec.json.decode(value, type=LeaseHolder)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return found if found.holder.isalnum() else None


def _holder(value: bytes) -> str:
    """The candidate a lease value names ("" if it names none)."""
    found = _parse(value)
    return "" if found is None else found.holder


async def current_holder(bus: Bus, *, timeout: float = 2.0) -> LeaseHolder | None:
    """Who holds the writer lease now, as the key says (None: nobody, or no candidate
    ever ran). Unavailable if NATS cannot say. The key may name a holder that just
    died: its successor rewrites it within a period."""
    bucket = await LeaseBucket.existing(bus, timeout=timeout)
    if bucket is None:
        return None
    entry = await bucket.get(KEY)
    if entry is None or entry.deleted:
        return None
    return _parse(entry.value)
