"""The ledger verifier on ledgers built in memory: each kind of damage, named where it is."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from events.chain import GENESIS, link
from events.codec import decode_event, encode
from events.commands import CastVote, Command, RegisterAgent, StoreFact, to_event
from events.merkle import MerkleAccumulator, leaf_hash
from events.model import SYSTEM_TENANT, CheckpointSigned, Event, WriterKeyAdded, kind_of
from events.note import Checkpoint, raw_public, sign
from events.signing import sign_command
from events.verify import LedgerVerifier

Stored = tuple[int, str, bytes, bytes, bytes]


@dataclass
class Ledger:
    """Events chained as the writer chains them, with signed checkpoints on demand."""

    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    stored: list[Stored] = field(default_factory=list)
    tree: MerkleAccumulator = field(default_factory=MerkleAccumulator)
    n: int = 0

    @property
    def key_hex(self) -> str:
        return raw_public(self.key.public_key()).hex()

    def id(self) -> uuid.UUID:
        self.n += 1
        return uuid.UUID(int=(0x0190 << 112) | self.n)

    def append(self, event: Event) -> int:
        body = encode(event)
        prev = self.stored[-1][4] if self.stored else GENESIS
        seq = len(self.stored) + 1
        h = link(prev, body)
        subject = f"cortex.ledger.{event.tenant}.{kind_of(event)}"
        self.stored.append((seq, subject, body, prev, h))
        self.tree.append(leaf_hash(h))
        return seq

    def command(self, command: Command, tenant: str = "acme") -> int:
        return self.append(to_event(command, tenant=tenant, ts=self.n))

    def writer_key(self) -> None:
        self.append(
            WriterKeyAdded(
                id=self.id(), tenant=SYSTEM_TENANT, ts=0, name="w", public_key=self.key_hex
            )
        )

    def checkpoint(self, *, root: bytes | None = None, key: Ed25519PrivateKey | None = None) -> int:
        signer = key or self.key
        cp = Checkpoint(
            "cortex.ledger/test", self.tree.size, root or self.tree.root(), self.stored[-1][4]
        )
        return self.append(
            CheckpointSigned(
                id=self.id(),
                tenant=SYSTEM_TENANT,
                ts=0,
                tree_size=cp.tree_size,
                root=cp.root.hex(),
                head=cp.head.hex(),
                public_key=raw_public(signer.public_key()).hex(),
                note=sign(cp.body(), "w", signer),
            )
        )


def story() -> tuple[Ledger, Ed25519PrivateKey, uuid.UUID]:
    ledger = Ledger()
    ledger.writer_key()
    agent_key = Ed25519PrivateKey.generate()
    ledger.command(RegisterAgent(id=ledger.id(), agent_id="ann"))
    ledger.command(
        RegisterAgent(
            id=ledger.id(), agent_id="sig", public_key=raw_public(agent_key.public_key()).hex()
        )
    )
    fact = ledger.id()
    ledger.command(StoreFact(id=ledger.id(), fact_id=fact, agent_id="ann", content="x"))
    ledger.checkpoint()
    vote = CastVote(id=ledger.id(), fact_id=fact, agent_id="sig", value=1)
    ledger.command(sign_command(vote, "acme", agent_key))
    ledger.command(CastVote(id=ledger.id(), fact_id=fact, agent_id="ann", value=-1))
    ledger.checkpoint()
    return ledger, agent_key, fact


@dataclass(frozen=True)
class _Event:
    seq: int
    subject: str
    body: bytes
    prev_hash: bytes
    hash: bytes


def run(stored: list[Stored]) -> LedgerVerifier:
    """Feed one event at a time, and all at once: both must find the same."""
    verifier = LedgerVerifier()
    for record in stored:
        verifier.feed(*record)
    many = LedgerVerifier()
    many.feed_many(_Event(*record) for record in stored)
    assert many.violations == verifier.violations
    assert (many.root(), many.size, many.counts) == (
        verifier.root(),
        verifier.size,
        verifier.counts,
    )
    return verifier


def found(verifier: LedgerVerifier) -> list[tuple[str, int]]:
    return [(v.type, v.seq) for v in verifier.violations]


def test_an_intact_ledger_passes_every_check() -> None:
    ledger, _, _ = story()
    v = run(ledger.stored)
    assert found(v) == []
    assert v.counts.checkpoints == v.counts.checkpoint_signatures == 2
    assert v.counts.agent_signatures == 1
    assert v.checkpoint_size == 7


def test_an_altered_body_is_a_hash_mismatch_and_moves_every_later_root() -> None:
    ledger, _, _ = story()
    seq, subject, body, prev, h = ledger.stored[3]
    ledger.stored[3] = (seq, subject, body.replace(b'"content":"x"', b'"content":"y"'), prev, h)
    assert found(run(ledger.stored)) == [
        ("hash_mismatch", 4),
        ("merkle_mismatch", 5),
        ("merkle_mismatch", 8),
    ]


def test_a_deleted_event_is_a_gap_and_a_break() -> None:
    ledger, _, _ = story()
    del ledger.stored[5]
    kinds = found(run(ledger.stored))
    assert ("sequence_gap", 7) in kinds and ("chain_break", 7) in kinds


def test_a_republished_event_is_a_duplicate() -> None:
    ledger, _, _ = story()
    ledger.append(decode_event(ledger.stored[5][2]))
    assert found(run(ledger.stored)) == [("duplicate_event", 9)]


def test_forged_checkpoints_are_named() -> None:
    ledger, _, _ = story()
    ledger.checkpoint(root=bytes(32))
    ledger.checkpoint(key=Ed25519PrivateKey.generate())
    assert found(run(ledger.stored)) == [("merkle_mismatch", 9), ("checkpoint_signature", 10)]


def test_a_tampered_note_signature_is_named() -> None:
    ledger, _, _ = story()
    ledger.checkpoint()
    event = decode_event(ledger.stored[-1][2])
    assert isinstance(event, CheckpointSigned)
    text, signature = event.note.rstrip("\n").rsplit(" ", 1)
    flipped = signature[:10] + ("B" if signature[10] == "A" else "A") + signature[11:]
    del ledger.stored[-1]
    ledger.append(msgspec.structs.replace(event, id=ledger.id(), note=f"{text} {flipped}\n"))
    assert found(run(ledger.stored)) == [("checkpoint_signature", 9)]


def test_agent_signatures_are_required_and_checked() -> None:
    ledger, agent_key, fact = story()
    ledger.command(CastVote(id=ledger.id(), fact_id=fact, agent_id="sig", value=-1))
    vote = CastVote(id=ledger.id(), fact_id=fact, agent_id="sig", value=1)
    signed = sign_command(vote, "acme", agent_key)
    ledger.command(msgspec.structs.replace(signed, value=-1))  # changed after signing
    assert found(run(ledger.stored)) == [("agent_signature", 9), ("agent_signature", 10)]


def test_an_event_filed_under_another_tenant_is_malformed() -> None:
    ledger, _, _ = story()
    seq, subject, body, prev, h = ledger.stored[3]
    ledger.stored[3] = (seq, subject.replace(".acme.", ".rival."), body, prev, h)
    assert found(run(ledger.stored)) == [("malformed_event", 4)]


def test_a_writer_key_recorded_twice_is_named() -> None:
    ledger, _, _ = story()
    ledger.writer_key()
    assert found(run(ledger.stored)) == [("malformed_event", 9)]


def test_an_event_id_is_unique_per_tenant_not_across_tenants() -> None:
    """Ids are scoped per tenant: another tenant's event with the same id is no
    duplicate; the same id twice in one tenant still is."""
    ledger, _, _ = story()
    event = decode_event(ledger.stored[3][2])  # ann's fact, unsigned
    ledger.command(RegisterAgent(id=ledger.id(), agent_id="ann"), "other")
    ledger.append(msgspec.structs.replace(event, tenant="other"))
    assert found(run(ledger.stored)) == []
    ledger.append(msgspec.structs.replace(event, tenant="other"))
    assert found(run(ledger.stored)) == [("duplicate_event", 11)]


def test_events_no_writer_would_append_are_invalid_events_naming_the_rule() -> None:
    """Re-judged by the writer's rules: a vote of 7 (``invalid_vote``), a vote by an
    unregistered agent (``unknown_agent``) and a confidence of 2, which no command
    could even carry (``invalid_field``). Each is one ``invalid_event``."""
    ledger, _, fact = story()
    seven = ledger.command(CastVote(id=ledger.id(), fact_id=fact, agent_id="ann", value=7))
    eve = ledger.command(CastVote(id=ledger.id(), fact_id=fact, agent_id="eve", value=1))
    sure = ledger.command(
        StoreFact(id=ledger.id(), fact_id=ledger.id(), agent_id="ann", content="x", confidence=2.0)
    )
    v = run(ledger.stored)
    assert found(v) == [("invalid_event", seven), ("invalid_event", eve), ("invalid_event", sure)]
    codes = [x.detail.split(":")[0] for x in v.violations]
    assert codes == ["invalid_vote", "unknown_agent", "invalid_field"]
    assert v.counts.rejudged == 8  # every agent event, decodable or not


def test_after_a_gap_nothing_is_re_judged() -> None:
    """The events a rule needs may be among the missing: the gap is named, not every
    event after it."""
    ledger, _, fact = story()
    ledger.command(CastVote(id=ledger.id(), fact_id=fact, agent_id="ann", value=1))
    del ledger.stored[0:3]
    kinds = {kind for kind, _ in found(run(ledger.stored))}
    assert "invalid_event" not in kinds and "sequence_gap" in kinds


def test_without_re_judging_the_verifier_checks_what_it_did_before() -> None:
    """The benchmark's baseline: the same hashes, checkpoints and signatures, and no
    ``invalid_event``."""
    ledger, _, fact = story()
    ledger.command(CastVote(id=ledger.id(), fact_id=fact, agent_id="ann", value=7))
    ledger.command(CastVote(id=ledger.id(), fact_id=fact, agent_id="sig", value=1))  # unsigned
    verifier = LedgerVerifier(rejudging=False)
    for record in ledger.stored:
        verifier.feed(*record)
    assert found(verifier) == [("agent_signature", 10)]
    assert verifier.counts.rejudged == 0 and verifier.counts.checkpoint_signatures == 2
