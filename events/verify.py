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
  of its events, with that key, over exactly that event (``agent_signature``,
  naming the writer's rule: ``signature_required`` or ``bad_signature``);
- every agent event re-judged by the writer's own rules against the ledger
  folded before it (``events.rejudge``): one the writer would have refused is
  ``invalid_event``, its detail opening with the refusal's code (``unknown_agent``,
  ``invalid_vote``, ``fact_exists``…); one whose fields no command could hold
  (a confidence of 2, too many tags) is ``invalid_event`` ``invalid_field``.
  After a gap the history it needs is gone, so re-judging stops there (the gap
  is named); a repeated id is ``duplicate_event`` only, as the writer would
  have answered the retry, not judged it.

The Merkle tree is recomputed from the hashes the verifier computed itself,
not from the recorded ones, so an altered body moves every later root. Most
events cost a BLAKE3 link, a Merkle append and a light decode of a few
fields and a full decode, and agent events a fold and the writer's rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Protocol

import msgspec

from events import rotation, signing
from events.chain import ChainVerifier, StoredRecord, Violation
from events.codec import decode_event
from events.ledger_state import LedgerState
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
from events.rejudge import Rejudge

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
    #: Agent events judged again by the writer's rules.
    rejudged: int = 0


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
    #: The writer's fold and rules, re-applied (``events.rejudge``); its agents are
    #: the keys agent signatures are checked with (the first registration holds).
    rejudge: Rejudge = field(default_factory=Rejudge)
    writer_keys: dict[str, str] = field(default_factory=dict)
    #: False once a seq is missing: the history the rules need is gone from there.
    whole: bool = True
    #: Re-judge agent events (``events.rejudge``). False gives the verifier as it was
    #: before re-judging (unsigned events only lightly decoded, no fold of facts), which
    #: the audit benchmark measures beside it; a duplicate registration then goes unnamed.
    rejudging: bool = True
    checkpoint_size: int = 0
    first_hash: bytes = b""
    #: Writer keys (public key hex) the auditor trusts; None trusts any key the
    #: ledger recorded, which anyone able to append to the stream could have added.
    pinned: frozenset[str] | None = None

    @property
    def state(self) -> LedgerState:
        """The ledger as the writer would have folded it so far."""
        return self.rejudge.state

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
            self.whole = self.whole and seq == chain.last_seq + 1
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
            if not self.rejudging and kind not in _OWN and env.signature is None:
                if kind == "agent_registered":
                    self._full(seq, body, env, judge=False)
                elif self.state.agents.get((tenant, env.agent_id)):
                    self._unsigned(seq, env.agent_id)
            elif kind in _KINDS:
                self._full(seq, body, env, judge=first == seq and self.whole and self.rejudging)
        # A checkpoint covers the events before it: this one joins the tree after.
        pending = self.pending
        pending.append(own)
        if len(pending) == TILE and self.tree.size % TILE == 0:
            self.tree.append_subtree(perfect_root(pending), TILE_HEIGHT)
            pending.clear()

    def _unsigned(self, seq: int, agent_id: str) -> None:
        self._found(
            "agent_signature",
            seq,
            f"agent {agent_id!r} has a registered key but this event is unsigned "
            "(signature_required)",
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

    def _full(self, seq: int, body: bytes, env: _Envelope, *, judge: bool) -> None:
        if judge and env.kind not in _OWN:
            self.counts.rejudged += 1
        try:
            event = decode_event(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            if env.kind in _OWN:
                self._found("malformed_event", seq, f"not a valid {env.kind} event: {e}")
            else:  # the same check as the writer's decoding of the command
                self._invalid(seq, "invalid_field", f"not a valid {env.kind} event: {e}")
            return  # the writer's catch-up skips it too
        if isinstance(event, WriterKeyAdded):
            self._writer_key(seq, event)
        elif isinstance(event, CheckpointSigned):
            self._checkpoint(seq, event)
        elif env.signature is not None and signing.is_signable(event):
            self._agent_signature(seq, event)
        elif not isinstance(event, AgentRegistered) and self.state.agents.get(
            (env.tenant, env.agent_id)
        ):
            self._unsigned(seq, env.agent_id)
        rejudge = self.rejudge
        if judge:
            refusal = rejudge.judge(event)
            if refusal is not None:
                self._invalid(seq, refusal.code, refusal.message)
        rejudge.fold(event, seq)

    def _invalid(self, seq: int, code: str, message: str) -> None:
        self._found("invalid_event", seq, f"{code}: {message} (the writer would have refused it)")

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
        rotation.audit_key(event, seq, self.writer_keys, self.first_hash, self._found)
        if (
            self.pinned is not None
            and event.endorsed_by in self.pinned
            and rotation.problem(event, self.writer_keys, self.first_hash) is None
        ):
            # Trust follows the ledger's own chain of keys: a key the pinned one endorsed.
            self.pinned = self.pinned | {event.public_key}
        self.writer_keys[event.public_key] = event.name
        self.counts.writer_keys += 1

    def _agent_signature(self, seq: int, event: Event) -> None:
        agent_id = str(getattr(event, "agent_id", ""))
        key = self.state.agents.get((event.tenant, agent_id))
        if key is None:
            self._found(
                "agent_signature",
                seq,
                f"signed by agent {agent_id!r}, which has no registered key to check it with "
                "(bad_signature)",
            )
            return
        self.counts.agent_signatures += 1
        if not signing.verify_event(event, key, self.first_hash):
            self._found(
                "agent_signature",
                seq,
                f"the signature is not agent {agent_id!r}'s signature of this event "
                "(bad_signature)",
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
