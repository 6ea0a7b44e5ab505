"""The ledger verifier: everything ``cortex audit`` checks of the stored events, pure.

Fed the stored events in order (seq, body, and the previous and own hash
recorded beside each), it checks:

- every chain link and event hash, and that no seq is missing
  (``chain_break``, ``hash_mismatch``, ``sequence_gap``, via ``ChainVerifier``);
- that each body is an event of a known kind under the right tenant
  (``malformed_event``) and that no event id appears twice in one tenant (``duplicate_event``);
- every checkpoint: its root recomputed over the event hashes before it, its
  size, chain head and note agreeing with each other (``merkle_mismatch``);
  its signature by a writer key recorded earlier in the ledger and, when the
  auditor pins writer keys, one of those (``checkpoint_signature``); sizes that only grow, so each checkpoint
  extends the one before (both roots are recomputed from the same leaves,
  which is what a consistency proof would show);
- every agent signature: an agent registered with a key must have signed each
  of its events, with that key, over exactly that event (``agent_signature``);
  the first registration of an agent holds, a second is ``malformed_event``.

The Merkle tree is recomputed from the hashes the verifier computed itself,
not from the recorded ones, so an altered body moves every later root. Most
events cost a BLAKE3 link, a Merkle append and a light decode of a few
fields; only checkpoints and signed events are decoded in full.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Protocol

import msgspec

from events import signing
from events.chain import ChainVerifier, StoredRecord, Violation
from events.codec import decode_event
from events.merkle import TILE, TILE_HEIGHT, MerkleAccumulator, leaf_hash, perfect_root
from events.model import (
    EVENT_TYPES,
    SYSTEM_TENANT,
    AgentRegistered,
    CheckpointSigned,
    Event,
    WriterKeyAdded,
)
from events.note import NoteError, parse_checkpoint, verify

_KINDS: Final = frozenset(str(t.__struct_config__.tag) for t in EVENT_TYPES)
_OWN: Final = frozenset({"writer_key_added", "checkpoint_signed"})


class Stored(StoredRecord, Protocol):
    """A stored event with the subject it was stored under (``cortex.nats.StoredEvent``)."""

    @property
    def subject(self) -> str: ...


class _Envelope(msgspec.Struct):
    """The few fields every event is checked on; the rest is skipped unparsed."""

    id: str  # compared as text (a canonical body holds the canonical UUID form)
    kind: str
    tenant: str
    agent_id: str = ""
    signature: str | None = None


_envelope: Final = msgspec.json.Decoder(_Envelope)


@dataclass(slots=True)
class Counts:
    """What was checked, for the audit's summary."""

    events: int = 0
    checkpoints: int = 0
    checkpoint_signatures: int = 0
    agent_signatures: int = 0
    writer_keys: int = 0


@dataclass(slots=True)
class LedgerVerifier:
    """Checks stored events fed in order; ``violations`` holds what was found."""

    chain: ChainVerifier = field(default_factory=ChainVerifier)
    #: The Merkle tree of the event hashes: whole tiles here, the rest in ``pending``.
    tree: MerkleAccumulator = field(default_factory=MerkleAccumulator)
    pending: list[bytes] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)
    violations: list[Violation] = field(default_factory=list)
    #: "<tenant> <event id>" → the seq it was first appended at.
    ids: dict[str, int] = field(default_factory=dict)
    agents: dict[tuple[str, str], str | None] = field(default_factory=dict)
    writer_keys: dict[str, str] = field(default_factory=dict)
    registered: dict[tuple[str, str], int] = field(default_factory=dict)
    checkpoint_size: int = 0
    first_hash: bytes = b""
    #: Writer keys (public key hex) the auditor trusts; None trusts any key the
    #: ledger recorded, which anyone able to append to the stream could have added.
    pinned: frozenset[str] | None = None

    @property
    def size(self) -> int:
        """Events in the tree so far."""
        return self.tree.size + len(self.pending)

    def root(self) -> bytes:
        """The Merkle root over every event hash so far."""
        if not self.pending:
            return self.tree.root()
        restore = self.tree.snapshot()
        try:
            for event_hash in self.pending:
                self.tree.append(leaf_hash(event_hash))
            return self.tree.root()
        finally:
            restore()

    def feed_many(self, stored: Iterable[Stored]) -> None:
        """``feed`` each of ``stored``, in order."""
        feed = self.feed
        for event in stored:
            feed(event.seq, event.subject, event.body, event.prev_hash, event.hash)

    def feed(self, seq: int, subject: str, body: bytes, prev: bytes, recorded: bytes) -> None:
        """Check one stored event (its subject is ``cortex.ledger.<tenant>.<kind>``)."""
        chain = self.chain
        if not chain.follows(seq, body, prev, recorded):
            self.violations.extend(chain.check(seq, body, prev, recorded))
        own = chain.computed
        if seq == 1:
            self.first_hash = own
        self.counts.events += 1
        try:
            env = _envelope.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            self._found("malformed_event", seq, f"not a valid event: {e}")
        else:
            kind, tenant = env.kind, env.tenant
            if subject != f"cortex.ledger.{tenant}.{kind}" or kind not in _KINDS:
                self._misfiled(seq, subject, env)
            # Ids are scoped per tenant (``events.rules.scoped``): another tenant's
            # event may carry the same id.
            first = self.ids.setdefault(f"{tenant} {env.id}", seq)
            if first != seq:
                self._found(
                    "duplicate_event",
                    seq,
                    f"event id {env.id} was already appended at seq {first} (tenant {tenant!r})",
                )
            if kind in _OWN or env.signature is not None or env.kind == "agent_registered":
                self._full(seq, body, env)
            elif env.agent_id and self.agents.get((env.tenant, env.agent_id)):
                self._unsigned(seq, env)
        # A checkpoint covers the events before it: this one joins the tree after.
        pending = self.pending
        pending.append(own)
        if len(pending) == TILE and self.tree.size % TILE == 0:
            self.tree.append_subtree(perfect_root(pending), TILE_HEIGHT)
            pending.clear()

    def _unsigned(self, seq: int, env: _Envelope) -> None:
        self._found(
            "agent_signature",
            seq,
            f"agent {env.agent_id!r} has a registered key but this event is unsigned",
        )

    def _found(self, kind: str, seq: int, detail: str) -> None:
        self.violations.append(Violation(kind, seq, detail))

    def _misfiled(self, seq: int, subject: str, env: _Envelope) -> None:
        if env.kind not in _KINDS:
            self._found("malformed_event", seq, f"unknown event kind {env.kind!r}")
        expected = f"cortex.ledger.{env.tenant}.{env.kind}"
        if subject != expected:
            self._found(
                "malformed_event", seq, f"filed under {subject} but its body says {expected}"
            )

    def _full(self, seq: int, body: bytes, env: _Envelope) -> None:
        try:
            event = decode_event(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            self._found("malformed_event", seq, f"not a valid {env.kind} event: {e}")
            return
        if isinstance(event, AgentRegistered):
            agent = (event.tenant, event.agent_id)
            first = self.registered.setdefault(agent, seq)
            if first != seq:
                self._found(
                    "malformed_event",
                    seq,
                    f"agent {event.agent_id!r} was already registered at seq {first}; the writer "
                    "never appends a second registration",
                )
            else:
                self.agents[agent] = event.public_key
        elif isinstance(event, WriterKeyAdded):
            self._writer_key(seq, event)
        elif isinstance(event, CheckpointSigned):
            self._checkpoint(seq, event)
        elif signing.is_signable(event):
            self._agent_signature(seq, event)

    def _writer_key(self, seq: int, event: WriterKeyAdded) -> None:
        if event.tenant != SYSTEM_TENANT:
            self._found("malformed_event", seq, f"a writer key filed under tenant {event.tenant}")
            return
        if event.public_key in self.writer_keys:
            self._found(
                "malformed_event",
                seq,
                f"writer key {event.public_key[:16]}… was already recorded; a writer records "
                "its key once",
            )
            return
        self.writer_keys[event.public_key] = event.name
        self.counts.writer_keys += 1

    def _agent_signature(self, seq: int, event: Event) -> None:
        agent_id = str(getattr(event, "agent_id", ""))
        key = self.agents.get((event.tenant, agent_id))
        if key is None:
            self._found(
                "agent_signature",
                seq,
                f"signed by agent {agent_id!r}, which has no registered key to check it with",
            )
            return
        self.counts.agent_signatures += 1
        if not signing.verify_event(event, key):
            self._found(
                "agent_signature",
                seq,
                f"the signature is not agent {agent_id!r}'s signature of this event",
            )

    def _checkpoint(self, seq: int, event: CheckpointSigned) -> None:
        self.counts.checkpoints += 1
        if event.tenant != SYSTEM_TENANT:
            self._found("malformed_event", seq, f"a checkpoint filed under tenant {event.tenant}")
        if event.tree_size != self.size:
            self._found(
                "merkle_mismatch",
                seq,
                f"the checkpoint covers {event.tree_size} events but stands after {self.size}",
            )
            return
        if event.tree_size <= self.checkpoint_size:
            self._found(
                "merkle_mismatch",
                seq,
                f"the checkpoint of {event.tree_size} events does not extend the one of "
                f"{self.checkpoint_size}",
            )
        self.checkpoint_size = event.tree_size
        root = self.root()
        if event.root != root.hex() or event.head != self.chain.computed_before.hex():
            self._found(
                "merkle_mismatch",
                seq,
                f"it says root {event.root[:16]}… / head {event.head[:16]}…, the events give "
                f"root {root.hex()[:16]}… / head {self.chain.computed_before.hex()[:16]}…",
            )
        name = self.writer_keys.get(event.public_key)
        if name is None:
            self._found(
                "checkpoint_signature",
                seq,
                f"signed with key {event.public_key[:16]}…, which the ledger never recorded",
            )
            return
        if self.pinned is not None and event.public_key not in self.pinned:
            self._found(
                "checkpoint_signature",
                seq,
                f"signed with writer key {name} ({event.public_key[:16]}…), which is not one "
                "of the keys the audit was told to trust",
            )
            return
        try:
            body = verify(event.note, name, bytes.fromhex(event.public_key))
            signed = parse_checkpoint(body)
        except NoteError as e:
            self._found("checkpoint_signature", seq, str(e))
            return
        self.counts.checkpoint_signatures += 1
        if (signed.tree_size, signed.root.hex(), signed.head.hex()) != (
            event.tree_size,
            event.root,
            event.head,
        ):
            self._found(
                "merkle_mismatch", seq, "the signed note and the checkpoint's fields disagree"
            )
