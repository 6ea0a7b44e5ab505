"""What the writer must know of the ledger to judge the next command.

A fold over the events in order: the chain head, every event id ever
appended (JetStream's duplicate window forgets; this does not), the agents
of each tenant and their keys, the facts of each tenant, the Merkle tree of
every event hash (its O(log n) frontier) and the last checkpoint. Changes made for a batch that
is not yet acknowledged are recorded in an undo log, so a batch JetStream
refuses leaves the state exactly as it was.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import msgspec

from events import signing
from events.chain import GENESIS
from events.commands import (
    MAX_CONTENT_BYTES,
    MAX_META_BYTES,
    VOTE_VALUES,
    CastVote,
    Command,
    DeprecateFact,
    RegisterAgent,
    StoreFact,
)
from events.merkle import MerkleAccumulator, leaf_hash
from events.model import (
    AgentRegistered,
    CheckpointSigned,
    Event,
    FactDeprecated,
    FactStored,
    WriterKeyAdded,
)

_meta_encoder: Final = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a command cannot be appended: a stable code and a sentence for people."""

    code: str
    message: str
    #: True when the refusal depends on the ledger's state, so a writer that
    #: is behind the stream must catch up and judge again before answering.
    stateful: bool = False


def check_shape(command: Command) -> Refusal | None:
    """Checks that need no ledger state: sizes and vote values."""
    if isinstance(command, StoreFact):
        size = len(command.content.encode())
        if size > MAX_CONTENT_BYTES:
            return Refusal(
                "too_large", f"content is {size} bytes; the limit is {MAX_CONTENT_BYTES} bytes"
            )
        if not command.content.strip():
            return Refusal("invalid_field", "content is empty")
        meta_size = len(_meta_encoder.encode(command.meta))
        if meta_size > MAX_META_BYTES:
            return Refusal("too_large", f"meta is {meta_size} bytes; the limit is {MAX_META_BYTES}")
        for name in ("valid_from", "valid_until"):
            value = getattr(command, name)
            try:
                value is None or value.astimezone(dt.UTC)
            except (OverflowError, ValueError):
                return Refusal("invalid_field", f"{name} {value} cannot be expressed in UTC")
        if command.valid_from and command.valid_until and command.valid_until < command.valid_from:
            return Refusal("invalid_field", "valid_until is before valid_from")
    elif isinstance(command, CastVote) and command.value not in VOTE_VALUES:
        return Refusal(
            "invalid_vote",
            f"a vote is +1, -1 or 0 (to withdraw), not {command.value}",
        )
    return None


Undo = list[Callable[[], object]]


@dataclass(slots=True)
class LedgerState:
    """The ledger folded into what validation needs; see the module doc."""

    seq: int = 0
    head: bytes = GENESIS
    ids: dict[bytes, int] = field(default_factory=dict)
    agents: dict[tuple[str, str], str | None] = field(default_factory=dict)
    #: fact id → tenant; plain strings, so the garbage collector has nothing to track.
    facts: dict[bytes, str] = field(default_factory=dict)
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

    def seq_of(self, event_id: uuid.UUID) -> int | None:
        return self.ids.get(event_id.bytes)

    def check(self, command: Command, tenant: str) -> Refusal | None:
        """Whether ``command`` may be appended for ``tenant`` given the ledger so far."""
        if isinstance(command, RegisterAgent):
            if (tenant, command.agent_id) in self.agents:
                return Refusal(
                    "agent_exists",
                    f"agent {command.agent_id!r} is already registered in tenant {tenant!r}",
                )
            if self.require_signatures and command.public_key is None:
                return Refusal(
                    "signature_required",
                    "this ledger requires signatures: register the agent with a public key",
                )
            return None
        agent_id: str = getattr(command, "agent_id", "")
        if (tenant, agent_id) not in self.agents:
            return Refusal(
                "unknown_agent",
                f"agent {agent_id!r} is not registered in tenant {tenant!r}",
                stateful=True,
            )
        return self._check_signature(command, tenant, agent_id) or self._check_target(
            command, tenant
        )

    def _check_signature(self, command: Command, tenant: str, agent_id: str) -> Refusal | None:
        key = self.agents[(tenant, agent_id)]
        signature: str | None = getattr(command, "signature", None)
        if key is None:
            if signature is not None:
                return Refusal(
                    "bad_signature",
                    f"agent {agent_id!r} has no registered key to check a signature against",
                )
            if self.require_signatures:
                return Refusal(
                    "signature_required",
                    f"this ledger requires signatures and agent {agent_id!r} has no key",
                )
            return None
        if signature is None:
            return Refusal(
                "signature_required", f"agent {agent_id!r} has a key: its commands must be signed"
            )
        if not signing.check(key, signature, signing.command_bytes(command, tenant)):
            return Refusal(
                "bad_signature",
                f"the signature is not agent {agent_id!r}'s signature of this command "
                "(a signature binds the tenant, the id and every field)",
            )
        return None

    def _check_target(self, command: Command, tenant: str) -> Refusal | None:
        if isinstance(command, StoreFact):
            if command.fact_id.bytes in self.facts:
                return Refusal("fact_exists", f"fact {command.fact_id} already exists")
            return None
        if isinstance(command, DeprecateFact | CastVote):
            refusal = self._check_fact(command.fact_id, tenant)
            if refusal is not None:
                return refusal
        if isinstance(command, DeprecateFact):
            if command.fact_id.bytes in self.deprecated:
                return Refusal(
                    "already_deprecated", f"fact {command.fact_id} is already deprecated"
                )
            if command.successor_id is not None:
                if command.successor_id == command.fact_id:
                    return Refusal("invalid_field", "a fact cannot succeed itself")
                return self._check_fact(command.successor_id, tenant)
        return None

    def _check_fact(self, fact_id: uuid.UUID, tenant: str) -> Refusal | None:
        # Another tenant's fact is reported exactly like a missing one: its
        # existence is not this tenant's business.
        if self.facts.get(fact_id.bytes) != tenant:
            return Refusal("unknown_fact", f"no fact {fact_id} in tenant {tenant!r}", stateful=True)
        return None

    def apply(self, event: Event, seq: int, event_hash: bytes, undo: Undo | None = None) -> None:
        """Fold one appended (or about to be appended) event into the state."""
        prev_seq, prev_head = self.seq, self.head
        key = event.id.bytes
        self.ids.setdefault(key, seq)  # a forged duplicate never moves the original
        self.seq, self.head = seq, event_hash
        if undo is not None:
            undo.append(lambda: self._restore(key, prev_seq, prev_head))
        self.tree.append(leaf_hash(event_hash))
        if seq == 1:
            self.first_hash = event_hash
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
            fact = event.fact_id.bytes
            self.facts[fact] = event.tenant
            if undo is not None:
                undo.append(lambda: self.facts.pop(fact, None))
        elif isinstance(event, FactDeprecated):
            fact = event.fact_id.bytes
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
