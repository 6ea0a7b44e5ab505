"""``cortex up --witness``: each new checkpoint cosigned by every witness, in the background.

The writer tells ``Cosigner.checkpointed(seq, tree_size)`` of each checkpoint
once it is stored: a plain call that only notes the newest, so nothing on the
write path ever waits for a witness. One task per witness works toward the
newest checkpoint: it reads the signed note from the node's read side
(waiting until the node has applied it), asks the witness
(``cortex.witnessing.cosign``: from the size it last cosigned, with a
consistency proof the node makes; on a 409 from the size the witness names)
and records the cosigned note under the cosigned folder, where ``cortex
audit --witness`` looks. Checkpoints that come while a witness is busy are
coalesced: only the newest is submitted.

Every request is bounded (``timeout``). A failure is a warning naming the
witness, retried with backoff (``cortex.supervisor.Backoff``), always with
the newest checkpoint: a dead witness is retried for as long as it is down;
one that keeps refusing for a reason nobody foresaw is left alone until the
next checkpoint. The tasks end only when the cosigner stops; one that ends
otherwise is logged as critical. ``stop`` first gives each witness a bounded
moment to cosign the newest checkpoint (a clean stop signs a final one).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import httpx
import structlog

from cortex.supervisor import Backoff, as_cortex_error
from cortex.witnessing import TIMEOUT, cosign, record
from events.model import SYSTEM_TENANT
from events.operations import GetCheckpoint, GetConsistency
from projections.service import ReadService
from projections.tasks import stop_task

log = structlog.get_logger(__name__)

#: How long ``stop`` waits, at most, for the witnesses to cosign the newest checkpoint.
DRAIN_S: Final = 15.0


class ReadSide(Protocol):
    """What the cosigner needs from a node: signed notes and consistency proofs."""

    async def note(self, tree_size: int, seq: int) -> str: ...
    async def proof(self, old_size: int, new_size: int) -> Sequence[bytes]: ...


@dataclass(frozen=True, slots=True)
class NodeReads:
    """A ``ReadSide`` over a node's ``ReadService`` in this process (no NATS round trip)."""

    service: ReadService

    async def note(self, tree_size: int, seq: int) -> str:
        cp = await self.service.run(SYSTEM_TENANT, GetCheckpoint(tree_size=tree_size, min_seq=seq))
        return str(cp.note)

    async def proof(self, old_size: int, new_size: int) -> Sequence[bytes]:
        query = GetConsistency(old_size=old_size, new_size=new_size)
        doc = await self.service.run(SYSTEM_TENANT, query)
        return [bytes.fromhex(p) for p in doc.path]


@dataclass(slots=True)
class _Witness:
    url: str
    wake: asyncio.Event
    #: The size it last cosigned for us (0: not known), and the size last tried.
    cosigned: int = 0
    tried: int = 0
    #: Its last attempt failed: ``stop`` does not wait out its backoff.
    failing: bool = False
    task: asyncio.Task[None] | None = None


class Cosigner:
    """Has every checkpoint the writer signs cosigned by ``witnesses``; see the module doc."""

    def __init__(
        self,
        witnesses: Sequence[str],
        folder: Path,
        reads: ReadSide,
        *,
        timeout: float = TIMEOUT,
        backoff_cap: float = 30.0,
    ) -> None:
        self.folder = folder
        self.reads = reads
        self.timeout = timeout
        self.backoff_cap = backoff_cap
        self._witnesses = [_Witness(url, asyncio.Event()) for url in dict.fromkeys(witnesses)]
        #: The newest checkpoint the writer reported: (seq, tree_size).
        self._latest = (0, 0)
        self._progress = asyncio.Condition()
        self._http: httpx.AsyncClient | None = None
        #: Cosigned notes recorded, and failed attempts (all witnesses).
        self.recorded = 0
        self.failures = 0

    def checkpointed(self, seq: int, tree_size: int) -> None:
        """A checkpoint of ``tree_size`` events is stored at ``seq``. Never blocks."""
        if tree_size <= self._latest[1]:
            return
        self._latest = (seq, tree_size)
        for w in self._witnesses:
            w.wake.set()

    async def cosigned(self, tree_size: int) -> None:
        """Until every witness has cosigned a checkpoint of at least ``tree_size`` events
        (unbounded: the caller bounds it)."""
        async with self._progress:
            await self._progress.wait_for(
                lambda: all(w.cosigned >= tree_size for w in self._witnesses)
            )

    async def start(self) -> None:
        self._http = httpx.AsyncClient(timeout=self.timeout)
        for w in self._witnesses:
            w.task = asyncio.create_task(self._run(w), name=f"cortex-cosign {w.url}")
            w.task.add_done_callback(self._ended)
            if self._latest[1]:
                w.wake.set()

    async def stop(self) -> None:
        """Wait (at most ``DRAIN_S``) for the newest checkpoint to be tried, then stop."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_S), self._progress:
                await self._progress.wait_for(
                    lambda: all(w.failing or w.tried >= self._latest[1] for w in self._witnesses)
                )
        for w in self._witnesses:
            if w.task is not None:
                await stop_task(w.task)
                w.task = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        log.critical("cosigner_ended", task=task.get_name(), error=repr(error))

    async def _run(self, w: _Witness) -> None:
        backoff = Backoff(first=0.5, cap=self.backoff_cap)
        while True:
            await w.wake.wait()
            w.wake.clear()
            seq, size = self._latest
            if size <= w.cosigned:
                await self._tried(w, size)
                continue
            try:
                path = await self._cosign(w, seq, size)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.failures += 1
                delay = backoff.failed(e)
                error = as_cortex_error(e, f"cosigning checkpoint {size}")
                log.warning(
                    "witness_failed",
                    witness=w.url,
                    tree_size=size,
                    code=error.code,
                    error=error.message,
                    retry_in=delay,
                )
                w.failing = True
                await self._tried(w, size)
                if delay is None:  # until the next checkpoint
                    backoff.progressed()
                    continue
                await asyncio.sleep(delay)
                w.wake.set()
                continue
            backoff.progressed()
            w.cosigned, w.failing = size, False
            self.recorded += 1
            log.info("witness_cosigned", witness=w.url, tree_size=size, path=str(path))
            await self._tried(w, size)

    async def _tried(self, w: _Witness, size: int) -> None:
        async with self._progress:
            w.tried = max(w.tried, size)
            self._progress.notify_all()

    async def _cosign(self, w: _Witness, seq: int, size: int) -> Path:
        note = await self.reads.note(size, seq)
        lines = await cosign(
            note,
            w.url,
            self.reads.proof,
            old_size=w.cosigned,
            client=self._http,
            timeout=self.timeout,
        )
        return record(self.folder, note, lines)
