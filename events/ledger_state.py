"""What the writer must know of the ledger to judge the next command.

A fold over the events in order: the chain head, every event id ever
appended (JetStream's duplicate window forgets; this does not), the agents
of each tenant and their keys, the facts of each tenant (event and fact ids
are keyed within their tenant, ``events.rules.scoped``: another tenant's ids
are fresh ones here), the Merkle tree of
every event hash (its O(log n) frontier) and the last checkpoint. Changes made for a batch that
is not yet acknowledged are recorded in an undo log, so a batch JetStream
refuses leaves the state exactly as it was.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from events import rules
from events.chain import GENESIS
from events.commands import Command
from events.merkle import MerkleAccumulator, leaf_hash
from events.model import (
    AgentRegistered,
    CheckpointSigned,
    Event,
    FactDeprecated,
    FactStored,
    WriterKeyAdded,
)
from events.rules import Refusal, scoped

Undo = list[Callable[[], object]]


@dataclass(slots=True)
class LedgerState:
    """The ledger folded into what validation needs; see the module doc."""

    seq: int = 0
    head: bytes = GENESIS
    #: ``scoped(tenant, event id)`` → its seq.
    ids: dict[bytes, int] = field(default_factory=dict)
    agents: dict[tuple[str, str], str | None] = field(default_factory=dict)
    #: ``scoped(tenant, fact id)`` → its author; one shared string per author
    #: (``_authors``), so a million facts cost a pointer each for it.
    facts: dict[bytes, str] = field(default_factory=dict)
    _authors: dict[str, str] = field(default_factory=dict)
    deprecated: set[bytes] = field(default_factory=set)
    #: Leaves are the event hashes, in seq order: leaf i is seq i + 1.
    tree: MerkleAccumulator = field(default_factory=MerkleAccumulator)
    first_hash: bytes = b""
    #: Writer keys recorded in the ledger: public key (hex) → key name.
    writer_keys: dict[str, str] = field(default_factory=dict)
    #: The last checkpoint: its tree size and its own seq (0 if none yet).
    checkpoint_size: int = 0
    checkpoint_seq: int = 0
    checkpoint_root: str = ""
    #: Refuse commands from agents without a registered key.
    require_signatures: bool = False
    #: Take agent signatures in the older form that names no ledger (replayable
    #: on another deployment); off unless the writer is told otherwise.
    accept_unbound_signatures: bool = False

    def seq_of(self, event_id: uuid.UUID, tenant: str) -> int | None:
        """The seq of ``tenant``'s event with this id (another tenant's is not seen)."""
        return self.ids.get(scoped(tenant, event_id))

    def check(self, command: Command, tenant: str) -> Refusal | None:
        """Whether ``command`` may be appended for ``tenant`` given the ledger so far."""
        return rules.judge(self, command, tenant)

    def skip(self, seq: int, event_hash: bytes) -> None:
        """Fold in an event nobody can read (only forged onto the stream): it stays in the
        chain and the tree, and means nothing else — as every node quarantines it."""
        self.seq, self.head = seq, event_hash
        self.tree.append(leaf_hash(event_hash))
        if seq == 1:
            self.first_hash = event_hash

    def apply(self, event: Event, seq: int, event_hash: bytes, undo: Undo | None = None) -> None:
        """Fold one appended (or about to be appended) event into the state."""
        prev_seq, prev_head = self.seq, self.head
        key = scoped(event.tenant, event.id)
        self.ids.setdefault(key, seq)  # a forged duplicate never moves the original
        self.seq, self.head = seq, event_hash
        if undo is not None:
            undo.append(lambda: self._restore(key, prev_seq, prev_head))
        self.tree.append(leaf_hash(event_hash))
        if seq == 1:
            self.first_hash = event_hash
        self.fold(event, seq, undo)

    def fold(self, event: Event, seq: int, undo: Undo | None = None) -> None:
        """Fold what ``event`` means (agents, facts, deprecations, writer keys,
        checkpoints) without the chain and the tree: ``apply`` without the hashing,
        for the audit, which links and builds the tree itself."""
        if isinstance(event, AgentRegistered):
            # The first registration holds, as in every node and the audit: a
            # second one can only have been forged onto the stream, and must
            # not hand the agent (and its signing key) to whoever forged it.
            agent = (event.tenant, event.agent_id)
            if agent not in self.agents:
                self.agents[agent] = event.public_key
                if undo is not None:
                    undo.append(lambda: self.agents.pop(agent, None))
        elif isinstance(event, FactStored):
            fact = scoped(event.tenant, event.fact_id)
            if fact not in self.facts:  # the first holds: a forged re-store takes nothing over
                self.facts[fact] = self._authors.setdefault(event.agent_id, event.agent_id)
                if undo is not None:
                    undo.append(lambda: self.facts.pop(fact, None))
        elif isinstance(event, FactDeprecated):
            fact = scoped(event.tenant, event.fact_id)
            if fact not in self.deprecated:
                self.deprecated.add(fact)
                if undo is not None:
                    undo.append(lambda: self.deprecated.discard(fact))
        else:
            self._apply_own(event, seq, undo)

    def _apply_own(self, event: Event, seq: int, undo: Undo | None) -> None:
        """The ledger's own events: writer keys and checkpoints."""
        if isinstance(event, WriterKeyAdded):
            public_key = event.public_key
            self.writer_keys[public_key] = event.name
            if undo is not None:
                undo.append(lambda: self.writer_keys.pop(public_key, None))
        elif isinstance(event, CheckpointSigned):
            before = (self.checkpoint_size, self.checkpoint_seq, self.checkpoint_root)
            self._checkpointed(event.tree_size, seq, event.root)
            if undo is not None:
                undo.append(lambda: self._checkpointed(*before))

    def _checkpointed(self, size: int, seq: int, root: str) -> None:
        self.checkpoint_size, self.checkpoint_seq, self.checkpoint_root = size, seq, root

    def begin(self, undo: Undo) -> None:
        """Start an undo log: the tree is put back once, as it is now (``apply``
        records everything else, event by event)."""
        undo.append(self.tree.snapshot())

    def _restore(self, key: bytes, seq: int, head: bytes) -> None:
        self.ids.pop(key, None)
        self.seq, self.head = seq, head

    @staticmethod
    def rollback(undo: Undo) -> None:
        """Undo a refused batch's changes, newest first."""
        for step in reversed(undo):
            step()
        undo.clear()
