"""The writer's pure core: judge each command, link the accepted ones, sign checkpoints.

``Sequencer.stage`` takes a batch of ``Item``s and returns a ``Staged``: the
events to append (linked into the hash chain, with the writer's key and a
signed checkpoint when one is due) and one result per item. It folds them
into the ``LedgerState`` as it goes, with an undo log, so a batch the stream
refuses is rolled back with ``Sequencer.rollback``. No I/O and no asyncio:
the NATS loop (``cortex.writer``) appends and answers, a benchmark can stage
a million commands without a server, and each item carries a ``payload`` of
the caller's (the writer's reply future) that the core never touches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

import msgspec
from uuid_utils.compat import uuid7

from cortex.commands_wire import Result, error, receipt
from cortex.core.keys import WriterKey
from cortex.core.ledger_state import LedgerState, Undo
from cortex.core.records import Outgoing, ledger_subject, msg_id
from events.chain import link
from events.codec import decode_event, encode
from events.commands import Command, to_event
from events.model import SYSTEM_TENANT, CheckpointSigned, Event, WriterKeyAdded, kind_of
from events.note import Checkpoint, sign
from events.rotation import endorse

#: JetStream accepts at most 1,000 messages in one atomic batch.
JETSTREAM_BATCH_LIMIT: Final = 1000
DEFAULT_CHECKPOINT_EVERY: Final = 1000
#: At most this long (seconds) between an event and a checkpoint covering it, while
#: events arrive: a quiet or small ledger is checkpointed too, not only every N events.
DEFAULT_CHECKPOINT_INTERVAL: Final = 1.0

P = TypeVar("P")


class CheckpointRequest:
    """Stands in a batch for ``cortex checkpoint``: answered with the checkpoint's receipt."""


#: The one checkpoint request; put it in an ``Item`` with the system tenant.
CHECKPOINT: Final = CheckpointRequest()


@dataclass(slots=True)
class Item(Generic[P]):
    """One command to judge (or a checkpoint request), its tenant, and the caller's payload."""

    command: Command | CheckpointRequest
    tenant: str
    payload: P
    #: Consecutive items with the same non-zero group are appended all together or not at
    #: all (an atomic request: an edit is a deprecation and its successor, never half).
    group: int = 0


@dataclass(slots=True)
class Staged:
    """A staged batch: what to append after ``base``, and one result per item.

    A result is a reply (a receipt or an error), or an int: the seq of an
    earlier event, before ``base``, with the same id — look it up and answer
    with ``same_or_reused``. When ``behind``, some refusal may only reflect a
    stale view of the ledger: roll back, catch up and stage again.
    """

    base: int
    outgoing: list[Outgoing]
    results: list[Result | int]
    behind: bool
    undo: Undo = field(repr=False)


def origin_of(first_hash: bytes) -> str:
    """The checkpoints' origin line: this ledger, named by the hash of its first event."""
    return f"cortex.ledger/{first_hash.hex()[:16]}"


def same_or_reused(
    command: Command, tenant: str, seq: int, body: bytes, event_hash: bytes
) -> Result:
    """The original receipt if ``command`` repeats the event stored at ``seq``, else ``id_reused``."""
    original = msgspec.structs.replace(decode_event(body), ts=0)
    again = to_event(command, tenant=tenant, ts=0)
    if original != again:
        return error(
            "id_reused",
            f"id {command.id} was already used for a different command (seq {seq})",
        )
    return receipt(seq, event_hash, str(command.id))


class Sequencer:
    """Judges, links, signs and stages batches over one ``LedgerState``; see the module doc."""

    def __init__(
        self,
        state: LedgerState | None = None,
        *,
        key: WriterKey | None = None,
        checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
        checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL,
        rotate_from: WriterKey | None = None,
    ) -> None:
        if checkpoint_every < 1:
            raise ValueError("checkpoint_every must be at least 1")
        if checkpoint_interval <= 0:
            raise ValueError("checkpoint_interval must be more than 0 seconds")
        self.state = state if state is not None else LedgerState()
        #: Signs checkpoints; without one the sequencer stages no checkpoints.
        self.key = key
        self.checkpoint_every = checkpoint_every
        #: An earlier writer key that endorses ``key`` when it is recorded (a rotation).
        self.rotate_from = rotate_from
        self.checkpoint_interval_ns = int(checkpoint_interval * 1e9)
        #: When (the events' clock, ns) this sequencer last staged a checkpoint (at
        #: first: when it was made, so an interval passes before the first one).
        self.checkpointed_at = time.time_ns()

    def checkpoint_due(self, now: int) -> bool:
        """Whether events are uncovered and the interval since the last checkpoint has passed."""
        state = self.state
        return (
            self.key is not None
            and state.seq > state.checkpoint_seq
            and now - self.checkpointed_at >= self.checkpoint_interval_ns
        )

    def stage(self, items: list[Item[P]], *, synced: bool, now: int | None = None) -> Staged:
        """Judge each item and link the accepted ones into the chain, in memory.

        ``synced``: the state has just caught up with the stream, so a
        stateful refusal is final. ``now``: the events' timestamp (ns;
        default the clock). Should staging fail, the state is rolled back
        before the error propagates.
        """
        state = self.state
        undo: Undo = []
        base = state.seq
        try:
            state.begin(undo)
            staged = self._stage(items, undo, base, synced, time.time_ns() if now is None else now)
        except BaseException:
            LedgerState.rollback(undo)
            raise
        return staged

    @staticmethod
    def rollback(staged: Staged) -> None:
        """Undo ``staged``'s changes to the state: the stream did not take it."""
        LedgerState.rollback(staged.undo)

    def _stage(self, items: list[Item[P]], undo: Undo, base: int, synced: bool, now: int) -> Staged:
        outgoing: list[Outgoing] = []
        results: list[Result | int] = []
        behind = False
        asked: list[int] = []  # where checkpoint requests sit in ``results``
        index = 0
        while index < len(items):
            item = items[index]
            if isinstance(item.command, CheckpointRequest):
                asked.append(len(results))
                results.append(error("internal", "no checkpoint"))
                index += 1
                continue
            end = index + 1
            if item.group:
                while end < len(items) and items[end].group == item.group:
                    end += 1
            stale = self._stage_run(
                items[index:end], undo, outgoing, results, synced=synced, now=now
            )
            behind = behind or stale
            index = end
        if not behind:
            checkpoint = self._stage_own(outgoing, undo, now, forced=bool(asked))
            for index in asked:
                results[index] = checkpoint
            for index, result in enumerate(results):
                if isinstance(result, int) and result > base:  # a retry within this very batch
                    item = items[index]
                    assert isinstance(item.command, Command)  # only commands have ids
                    stored = outgoing[result - base - 1]
                    results[index] = same_or_reused(
                        item.command, item.tenant, result, stored.body, stored.hash
                    )
        return Staged(base, outgoing, results, behind, undo)

    def _stage_run(
        self,
        run: list[Item[P]],
        undo: Undo,
        outgoing: list[Outgoing],
        results: list[Result | int],
        *,
        synced: bool,
        now: int,
    ) -> bool:
        """Judge and link one command, or one atomic group all-or-nothing; True when a
        refusal may only reflect a stale view of the ledger."""
        state = self.state
        undo_mark, out_mark, first, group_base = len(undo), len(outgoing), len(results), state.seq
        if len(run) > 1:
            undo.append(state.tree.snapshot())  # the group's own way back
        stale = False
        for item in run:
            command = item.command
            assert isinstance(command, Command)  # checkpoint requests never join a run
            seen = state.seq_of(command.id, item.tenant)
            if seen is not None:
                results.append(seen)
                continue
            refusal = state.check(command, item.tenant)
            if refusal is not None:
                stale = stale or (refusal.stateful and not synced)
                results.append(error(refusal.code, refusal.message))
                continue
            try:
                event = to_event(command, tenant=item.tenant, ts=now)
            except (ValueError, OverflowError) as e:  # one bad command, not the whole batch
                results.append(error("invalid_field", f"cannot record this command: {e}"))
                continue
            results.append(self._link(event, outgoing, undo))
        refused = [
            (n, r["error"]["code"])
            for n, r in enumerate(results[first:], 1)
            if isinstance(r, dict) and "error" in r
        ]
        if len(run) > 1 and refused:
            while len(undo) > undo_mark:
                undo.pop()()
            del outgoing[out_mark:]
            n, code = refused[0]
            aborted = error(
                "aborted",
                f"nothing of this atomic request was appended: its command {n} was refused ({code})",
            )
            for i in range(first, len(results)):
                result = results[i]
                if (isinstance(result, int) and result > group_base) or (
                    isinstance(result, dict) and "error" not in result
                ):
                    results[i] = aborted
        return stale

    def _link(self, event: Event, outgoing: list[Outgoing], undo: Undo) -> Result:
        """Chain ``event`` after the head, queue it and fold it into the state."""
        state = self.state
        body = encode(event)
        prev = state.head
        event_hash = link(prev, body)
        event_id = str(event.id)
        subject = ledger_subject(event.tenant, kind_of(event))
        outgoing.append(Outgoing(subject, body, msg_id(event.tenant, event_id), prev, event_hash))
        state.apply(event, state.seq + 1, event_hash, undo)
        return receipt(state.seq, event_hash, event_id)

    def _stage_own(self, outgoing: list[Outgoing], undo: Undo, now: int, *, forced: bool) -> Result:
        """Append the writer's own events: its key if new, and a checkpoint when one is due.

        A checkpoint covers every event before it, this batch's included, so
        it rides in the same atomic batch. Returns the latest checkpoint's
        receipt (for ``cortex checkpoint``).
        """
        key, state = self.key, self.state
        if key is None:
            return error("no_key", "this writer has no key to sign with")
        if key.public_hex not in state.writer_keys:
            endorsed_by = endorsement = None
            if self.rotate_from is not None and state.first_hash:
                endorsed_by, endorsement = endorse(
                    self.rotate_from.private, state.first_hash, key.public_hex
                )
            added = WriterKeyAdded(
                id=uuid7(),
                tenant=SYSTEM_TENANT,
                ts=now,
                name=key.name,
                public_key=key.public_hex,
                endorsed_by=endorsed_by,
                endorsement=endorsement,
            )
            self._link(added, outgoing, undo)
        due = (
            state.seq - state.checkpoint_size >= self.checkpoint_every
            or now - self.checkpointed_at >= self.checkpoint_interval_ns
        )
        new = state.seq > state.checkpoint_seq  # something since the last checkpoint
        room = len(outgoing) < JETSTREAM_BATCH_LIMIT
        if room and new and (due or forced):
            summary = Checkpoint(
                origin_of(state.first_hash), state.seq, state.tree.root(), state.head
            )
            event = CheckpointSigned(
                id=uuid7(),
                tenant=SYSTEM_TENANT,
                ts=now,
                tree_size=summary.tree_size,
                root=summary.root.hex(),
                head=summary.head.hex(),
                public_key=key.public_hex,
                note=sign(summary.body(), key.name, key.private),
            )
            result = self._link(event, outgoing, undo)
            before = self.checkpointed_at
            undo.append(lambda: setattr(self, "checkpointed_at", before))
            self.checkpointed_at = now
            return {**result, "tree_size": summary.tree_size, "root": summary.root.hex()}
        if forced and not room:
            return error("busy", "the batch was full; ask for the checkpoint again")
        if not state.checkpoint_seq:
            return error("no_checkpoint", "the ledger is empty: nothing to checkpoint")
        return {
            "seq": state.checkpoint_seq,
            "tree_size": state.checkpoint_size,
            "root": state.checkpoint_root,
        }
