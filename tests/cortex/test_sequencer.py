"""The writer's pure core without a server: judge, link, sign, stage, roll back."""

from __future__ import annotations

import uuid

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cortex.core.keys import WriterKey
from cortex.core.sequencer import CHECKPOINT, Item, Sequencer
from events.chain import GENESIS, link
from events.commands import DeprecateFact, RegisterAgent, StoreFact
from events.merkle import MerkleAccumulator, leaf_hash
from events.model import SYSTEM_TENANT
from events.rules import scoped

NOW = 1_700_000_000_000_000_000


def _register(agent: str, event_id: uuid.UUID | None = None) -> Item[str]:
    return Item(RegisterAgent(id=event_id or uuid.uuid4(), agent_id=agent), "acme", agent)


def test_stage_links_accepted_commands_into_the_chain() -> None:
    """Accepted commands get receipts in order, and their events chain from genesis."""
    seq = Sequencer()
    staged = seq.stage([_register("ann"), _register("bob")], synced=False, now=NOW)
    assert (staged.base, staged.behind) == (0, False)
    assert [r["seq"] for r in staged.results if isinstance(r, dict)] == [1, 2]
    first, second = staged.outgoing
    assert first.prev_hash == GENESIS and first.hash == link(GENESIS, first.body)
    assert second.prev_hash == first.hash
    assert first.subject == "cortex.ledger.acme.agent_registered"
    assert seq.state.seq == 2


def test_a_retry_within_the_batch_gets_the_first_receipt_or_id_reused() -> None:
    """The same id twice in one batch: the same command is answered with the first
    receipt, a different one with id_reused; only one event is staged."""
    same = uuid.uuid4()
    staged = Sequencer().stage(
        [_register("ann", same), _register("ann", same), _register("eve", same)],
        synced=True,
        now=NOW,
    )
    assert len(staged.outgoing) == 1
    first, again, other = staged.results
    assert first == again
    assert isinstance(other, dict) and other["error"]["code"] == "id_reused"


def test_a_retry_of_an_earlier_batch_is_left_to_look_up() -> None:
    """An id already appended before this batch comes back as its seq, for the caller to read."""
    seq = Sequencer()
    same = uuid.uuid4()
    seq.stage([_register("ann", same)], synced=False, now=NOW)
    assert seq.stage([_register("ann", same)], synced=False, now=NOW).results == [1]


def test_rollback_puts_the_state_back() -> None:
    """A batch the stream refused leaves no trace: seq, head and ids are as before."""
    seq = Sequencer()
    seq.stage([_register("ann")], synced=False, now=NOW)
    before = (seq.state.seq, seq.state.head, dict(seq.state.ids), seq.state.tree.root())
    staged = seq.stage([_register("bob"), _register("cy")], synced=False, now=NOW)
    Sequencer.rollback(staged)
    assert (seq.state.seq, seq.state.head, dict(seq.state.ids), seq.state.tree.root()) == before


def test_a_stateful_refusal_before_catching_up_means_behind() -> None:
    """A fact by an agent this state has not seen may only mean another writer registered
    it: unsynced, the batch is behind; once caught up, the refusal is final."""
    seq = Sequencer()
    fact = StoreFact(id=uuid.uuid4(), fact_id=uuid.uuid4(), agent_id="ann", content="x")
    assert seq.stage([Item(fact, "acme", None)], synced=False, now=NOW).behind
    refused = seq.stage([Item(fact, "acme", None)], synced=True, now=NOW)
    assert not refused.behind and not refused.outgoing
    assert isinstance(refused.results[0], dict) and "error" in refused.results[0]


def test_a_keyed_sequencer_records_its_key_and_signs_checkpoints_on_request() -> None:
    """The key comes first; a checkpoint request is answered with the checkpoint's receipt."""
    key = WriterKey(Ed25519PrivateKey.generate())
    seq = Sequencer(key=key, checkpoint_every=1000)
    staged = seq.stage(
        [_register("ann"), Item(CHECKPOINT, SYSTEM_TENANT, "checkpoint")], synced=False, now=NOW
    )
    kinds = [o.subject.rsplit(".", 1)[1] for o in staged.outgoing]
    assert kinds == ["agent_registered", "writer_key_added", "checkpoint_signed"]
    answer = staged.results[1]
    assert isinstance(answer, dict) and answer["seq"] == 3 and answer["tree_size"] == 2


def test_without_a_key_a_checkpoint_request_is_no_key() -> None:
    staged = Sequencer().stage([Item(CHECKPOINT, SYSTEM_TENANT, None)], synced=False, now=NOW)
    answer = staged.results[0]
    assert isinstance(answer, dict) and answer["error"]["code"] == "no_key"


def test_an_atomic_group_is_appended_whole_or_not_at_all() -> None:
    """One refused member aborts the group; the rest of the batch still lands, and the chain
    and the Merkle tree carry on exactly as if the group had never been staged."""
    seq = Sequencer()
    ann = seq.stage([_register("ann")], synced=True, now=NOW).outgoing[0]
    fact = uuid.uuid4()
    store = StoreFact(id=uuid.uuid4(), fact_id=fact, agent_id="ann", content="x")
    twice = StoreFact(id=uuid.uuid4(), fact_id=fact, agent_id="ann", content="y")  # fact_exists
    staged = seq.stage(
        [
            Item(store, "acme", "a", group=1),
            Item(twice, "acme", "b", group=1),
            _register("bob"),
        ],
        synced=True,
        now=NOW,
    )
    aborted, refused, bob = staged.results
    assert isinstance(aborted, dict) and aborted["error"]["code"] == "aborted"
    assert "command 2" in aborted["error"]["message"]
    assert isinstance(refused, dict) and refused["error"]["code"] == "fact_exists"
    assert isinstance(bob, dict) and bob["seq"] == 2
    assert [o.subject.rsplit(".", 1)[1] for o in staged.outgoing] == ["agent_registered"]
    assert scoped("acme", fact) not in seq.state.facts
    # The chain and the tree hold exactly the two appended events.
    assert staged.outgoing[0].prev_hash == ann.hash == link(GENESIS, ann.body)
    expected = MerkleAccumulator()
    for appended in (ann, staged.outgoing[0]):
        expected.append(leaf_hash(appended.hash))
    assert (seq.state.seq, seq.state.tree.root()) == (2, expected.root())


def test_an_atomic_group_that_holds_is_appended_together() -> None:
    seq = Sequencer()
    seq.stage([_register("ann")], synced=True, now=NOW)
    old, new = uuid.uuid4(), uuid.uuid4()
    seq.stage(
        [Item(StoreFact(id=uuid.uuid4(), fact_id=old, agent_id="ann", content="v1"), "acme", "")],
        synced=True,
        now=NOW,
    )
    staged = seq.stage(
        [
            Item(
                StoreFact(id=uuid.uuid4(), fact_id=new, agent_id="ann", content="v2"),
                "acme",
                "",
                group=7,
            ),
            Item(
                DeprecateFact(id=uuid.uuid4(), fact_id=old, agent_id="ann", successor_id=new),
                "acme",
                "",
                group=7,
            ),
        ],
        synced=True,
        now=NOW,
    )
    assert [r["seq"] for r in staged.results if isinstance(r, dict)] == [3, 4]
    assert scoped("acme", old) in seq.state.deprecated
