"""An attacker's moves against real files and a real server.

Each test tampers with a running CORTEX the way someone with access to the
machine could: edits a node's SQLite file, flips bytes in JetStream's block
files, calls the JetStream API to delete or purge, replays signed commands,
republishes stored events, forges checkpoints. Each move must either be
refused at the door (the error is asserted, and the ledger is unchanged: same
last seq, same head, still audit-clean) or be caught and *named* by
``cortex audit``: the exact violation types and where they point.

Some moves get past the door, and the tests say what catches them instead:
JetStream lets a config update add a message limit (old events are then
discarded) and lets the whole stream be deleted; nats-server, rebuilding a
stream whose index was removed, cuts it at a damaged record. A cut or a fresh
ledger is internally perfect, so a node's database is the witness there. One
forged event still gets past the writer: that test is marked xfail (strict),
with the bug in its reason.

Every ledger here is written by a signing writer (checkpoint every 10
events) and holds a small, realistic story: three agents (two with keys that
sign everything they send), four facts, votes for and against, a changed
vote and a deprecation.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiosqlite
import msgspec
import nats
import nats.js.errors
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.js.api import DiscardPolicy
from nats.js.client import JetStreamContext
from uuid_utils.compat import uuid7

from cortex.audit import AuditReport, audit_ledger
from cortex.client import Client, Receipt, new_id
from cortex.core.keys import WriterKey, public_hex, writer_key
from cortex.core.sequencer import origin_of
from cortex.errors import CortexError, LedgerError, StreamUnsafe
from cortex.nats import (
    HDR_HASH,
    HDR_PREV,
    STREAM,
    Bus,
    Credentials,
    EmbeddedServer,
    Outgoing,
    ledger_subject,
)
from cortex.node import ProjectionNode
from cortex.testing import run_cli
from cortex.writer import LedgerWriter
from events.chain import link
from events.codec import decode_event, encode
from events.commands import CastVote, to_event
from events.errors import LedgerMismatch
from events.merkle import MerkleAccumulator, leaf_hash
from events.model import (
    SYSTEM_TENANT,
    AgentRegistered,
    CheckpointSigned,
    Event,
    VoteCast,
    WriterKeyAdded,
    kind_of,
)
from events.note import Checkpoint, sign
from events.signing import sign_command

TENANT = "acme"
WAIT = 10.0  # bound on every wait for the server, a node or a CLI run
#: The content of one fact, found as bytes in JetStream's block files.
MARKER = "Mount Erebus is the southernmost active volcano"


# -- the story ------------------------------------------------------------------


@dataclass(frozen=True)
class Story:
    ann: Ed25519PrivateKey
    facts: list[uuid.UUID]
    #: ann's vote, exactly as signed and sent, and its receipt.
    signed: CastVote
    receipt: Receipt
    #: The stream's last seq once the story is told (a checkpoint may close it).
    last: int


async def _story(url: str) -> Story:
    """Agents, facts, votes; ann and bob sign everything, cy has no key."""
    ann, bob = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    async with await Client.connect(url, tenant=TENANT, keys={"ann": ann}) as client:
        await client.register_agent("ann", public_key=public_hex(ann))
        await client.register_agent("bob", public_key=bob)  # the client signs as bob now
        await client.register_agent("cy")
        facts: list[uuid.UUID] = []
        for agent, content in (
            ("ann", "Water boils at 100 °C at sea level."),
            ("bob", MARKER),
            ("cy", "The Moon has no atmosphere to speak of."),
            ("ann", "Light from the Sun takes about eight minutes to reach Earth."),
        ):
            stored = await client.store_fact(agent, content, tags=["science"], source="notes")
            assert stored.fact_id is not None
            facts.append(stored.fact_id)
        for n, fact in enumerate(facts):
            await client.vote("bob", fact, 1, reason="checked")
            await client.vote("cy", fact, -1 if n == 0 else 1)
        signed = sign_command(
            CastVote(id=new_id(), fact_id=facts[1], agent_id="ann", value=1, reason="seen it"),
            TENANT,
            ann,
            origin=await client.origin(),
        )
        receipt = await client.submit(signed)
        await client.vote("ann", facts[2], -1, reason="there is a trace exosphere")
        await client.vote("bob", facts[0], -1, reason="not at altitude")  # a changed vote
        await client.deprecate_fact("cy", facts[2], reason="too loose")
        await client.vote("ann", facts[3], 1)
    async with _bus(url) as bus:
        last = await bus.last_seq()
    return Story(ann, facts, signed, receipt, last)


@contextlib.asynccontextmanager
async def _bus(url: str) -> AsyncIterator[Bus]:
    bus = await Bus.connect(url, name="tamper-test")
    try:
        yield bus
    finally:
        await bus.close()


@contextlib.asynccontextmanager
async def _jetstream(url: str) -> AsyncIterator[JetStreamContext]:
    """A raw nats-py connection, as an attacker with the admin's credentials (an insider)
    would open one: no CORTEX in between."""
    admin = Credentials.load(os.environ["CORTEX_CREDS"])
    nc = await nats.connect(
        url,
        connect_timeout=WAIT,
        max_reconnect_attempts=1,
        nkeys_seed_str=admin.seed,
        inbox_prefix=admin.inbox_prefix,
    )
    try:
        yield nc.jetstream(timeout=WAIT)
    finally:
        await nc.close()


async def _project(url: str, db: Path, until: int) -> None:
    """Run a node until it has applied ``until``, then stop it (its file stays)."""
    async with _bus(url) as bus:
        node = ProjectionNode(bus, db)
        await node.start()
        try:
            assert await node.projector.wait_for(until, timeout=WAIT)
        finally:
            await node.stop()


async def _stop_writer(writer: LedgerWriter) -> None:
    """Stop the fixture's writer before its server goes (its teardown then does nothing)."""
    await asyncio.wait_for(writer.stop(), WAIT)
    await writer.bus.close()


async def _audit(bus: Bus, *dbs: Path) -> AuditReport:
    return await asyncio.wait_for(audit_ledger(bus, dbs=list(dbs)), WAIT)


def _found(report: AuditReport) -> list[tuple[str, str]]:
    return [(v.type, v.where) for v in report.violations]


def _assert_ledger_checks_pass(report: AuditReport, story: Story) -> None:
    """Everything the audit recomputes from the stream held, and was really checked."""
    assert report.events == report.last_seq == story.last
    assert report.checkpoints >= 2
    assert report.checkpoint_signatures == report.checkpoints
    assert report.agent_signatures >= 10
    assert report.writer_keys == 1


async def _checkpoint_seqs(bus: Bus) -> list[int]:
    return [s.seq async for s in bus.read(1) if isinstance(decode_event(s.body), CheckpointSigned)]


# -- 1. a node's SQLite file ------------------------------------------------------


async def test_an_edited_vote_and_score_in_a_nodes_database_are_named_by_table_and_row(
    server: EmbeddedServer, signing_writer: LedgerWriter, bus: Bus, tmp_path: Path
) -> None:
    """The read model is rebuilt from the ledger and compared row by row: an UPDATE
    on the node's file is reported as ``projection_mismatch`` at that table and
    row, while every ledger check stays clean. The CLI says the same and exits 1."""
    story = await _story(server.url)
    db = tmp_path / "node.db"
    await _project(server.url, db, story.last)
    clean = await _audit(bus, db)
    assert clean.ok, clean.violations
    _assert_ledger_checks_pass(clean, story)

    # bob voted -1 on facts[0] in the end; the attacker makes it +1.
    async with aiosqlite.connect(db) as conn:
        async with conn.execute(
            "SELECT fact_id, agent_id, value FROM votes ORDER BY fact_id, agent_id"
        ) as cur:
            votes = [tuple(r) for r in await cur.fetchall()]
        vote_row = next(
            i for i, (f, a, _v) in enumerate(votes, 1) if a == "bob" and f == str(story.facts[0])
        )
        assert votes[vote_row - 1][2] == -1
        await conn.execute(
            "UPDATE votes SET value = 1 WHERE fact_id = ? AND agent_id = 'bob'",
            (str(story.facts[0]),),
        )
        await conn.commit()

    report = await _audit(bus, db)
    assert _found(report) == [("projection_mismatch", f"{db}: table votes, row {vote_row}")]
    violation = report.violations[0]
    assert violation.seq == story.last
    assert "'bob', 'acme', -1," in violation.detail.split(", the database has")[0]
    assert "'bob', 'acme', 1," in violation.detail.split(", the database has")[1]
    _assert_ledger_checks_pass(report, story)
    assert not report.projections[0].ok

    # Now also a consensus score: a second table, a second report.
    async with aiosqlite.connect(db) as conn:
        async with conn.execute(
            "SELECT c.fact_row, f.fact_id FROM consensus c JOIN facts f ON f.rowid = c.fact_row "
            "ORDER BY c.fact_row"
        ) as cur:
            rows = [tuple(r) for r in await cur.fetchall()]
        score_row = next(i for i, (_r, f) in enumerate(rows, 1) if f == str(story.facts[1]))
        await conn.execute(
            "UPDATE consensus SET score = 0.123 WHERE fact_row = ?", (rows[score_row - 1][0],)
        )
        await conn.commit()

    report = await _audit(bus, db)
    assert _found(report) == [
        ("projection_mismatch", f"{db}: table consensus, row {score_row}"),
        ("projection_mismatch", f"{db}: table votes, row {vote_row}"),
    ]
    assert "0.123" in report.violations[0].detail
    _assert_ledger_checks_pass(report, story)

    run = await run_cli("audit", "--nats", server.url, "--db", str(db), "--json", timeout=WAIT * 3)
    assert run.code == 1, run.err
    out = run.json()
    assert out["ok"] is False
    assert out["violation_counts"] == {"projection_mismatch": 2}
    assert out["violations"] == report.to_dict()["violations"]


# -- 2. JetStream's files on disk -------------------------------------------------


def _flip_marker(data_dir: Path) -> Path:
    """Change one character of MARKER in the one block file that holds it, keeping
    the length; return that file."""
    store = data_dir / "store" / "jetstream"
    needle = MARKER.encode()
    hits = [p for p in store.rglob("*.blk") if needle in p.read_bytes()]
    assert len(hits) == 1, hits
    block = hits[0]
    data = block.read_bytes()
    assert data.count(needle) == 1
    block.write_bytes(data.replace(needle, needle.replace(b"Erebus", b"Erebuz")))
    return block


async def _seq_of_marker(bus: Bus) -> int:
    seqs = [s.seq async for s in bus.read(1) if MARKER.encode() in s.body]
    assert len(seqs) == 1
    return seqs[0]


async def test_a_flipped_byte_in_a_block_file_drops_the_event_and_the_audit_names_the_gap(
    server: EmbeddedServer, signing_writer: LedgerWriter
) -> None:
    """Every record in a JetStream block file carries a HighwayHash checksum.

    nats-server 2.15 restores the stream from its index (``index.db``) on a
    clean restart, so it still reports the same last seq; the altered record
    fails its checksum when it is read and the server serves it as missing
    (``get`` says not found, a consumer skips it), without a word in its log.
    The body never comes through altered, so there is no ``hash_mismatch``:
    the audit sees a hole. It names the gap and the broken link at the next
    seq, and every checkpoint after the hole, whose size no longer matches the
    events before it.
    """
    await _story(server.url)
    async with _bus(server.url) as bus:
        damaged = await _seq_of_marker(bus)
        checkpoints = await _checkpoint_seqs(bus)
        assert (await _audit(bus)).ok
    await _stop_writer(signing_writer)
    async with _bus(server.url) as bus:
        end = await bus.last_seq()  # the stop's checkpoint covers the story
        checkpoints = await _checkpoint_seqs(bus)
    await server.stop()

    _flip_marker(server.data_dir)

    async with EmbeddedServer(server.data_dir, port=-1) as restarted, _bus(restarted.url) as bus:
        assert await bus.last_seq() == end  # the server still claims every event
        with pytest.raises(LedgerError) as missing:
            await bus.get(damaged)
        assert missing.value.code == "not_found"
        report = await _audit(bus)
    later = [c for c in checkpoints if c > damaged]
    assert later  # the story is long enough to have a checkpoint after the damage
    assert _found(report) == [
        ("sequence_gap", f"seq {damaged + 1}"),
        ("chain_break", f"seq {damaged + 1}"),
        *(("merkle_mismatch", f"seq {c}") for c in later),
    ]
    gap = report.violations[0]
    assert f"events {damaged}..{damaged} are missing" in gap.detail
    assert report.last_seq == end
    assert report.events == end - 1


async def test_a_flipped_byte_and_a_deleted_index_truncate_the_stream_and_a_node_witnesses_it(
    server: EmbeddedServer, signing_writer: LedgerWriter, tmp_path: Path
) -> None:
    """Without ``index.db`` nats-server rebuilds the stream from the block files and
    stops at the first record whose checksum fails: everything from the damaged
    event on is gone, and the stream now simply ends earlier.

    A cut-off tail is a shorter but internally perfect ledger: the stream alone
    cannot show it (the audit's ledger checks all pass). A node's database is
    the witness: it was projected further than the ledger now goes, so
    ``cortex audit --db`` names its position, and the node refuses to start.
    """
    story = await _story(server.url)
    db = tmp_path / "node.db"
    await _project(server.url, db, story.last)
    async with _bus(server.url) as bus:
        damaged = await _seq_of_marker(bus)
    await _stop_writer(signing_writer)
    await server.stop()

    block = _flip_marker(server.data_dir)
    (block.parent / "index.db").unlink()

    async with EmbeddedServer(server.data_dir, port=-1) as restarted, _bus(restarted.url) as bus:
        assert await bus.last_seq() == damaged - 1
        alone = await _audit(bus)
        assert alone.ok  # the known limit: a clean cut leaves nothing to see in the stream
        assert alone.last_seq == alone.events == damaged - 1
        report = await _audit(bus, db)
        node = ProjectionNode(bus, db)
        with pytest.raises(LedgerMismatch, match=f"is at seq {story.last} but the ledger ends at"):
            await node.start()
    assert _found(report) == [("projection_mismatch", f"{db}: position")]
    assert report.violations[0].detail == (
        f"at seq {story.last}, beyond the ledger's {damaged - 1}"
    )


# -- 3. the JetStream API --------------------------------------------------------


async def test_deleting_purging_and_unlocking_the_stream_are_refused(
    server: EmbeddedServer, signing_writer: LedgerWriter, bus: Bus
) -> None:
    """The stream denies deletes, purges and roll-ups, and JetStream will not let
    a config update take those denials back. Each attempt raises; afterwards the
    stream holds exactly what it held and the audit is exactly as clean."""
    story = await _story(server.url)
    before = await _audit(bus)
    assert before.ok
    vote = story.receipt.seq
    subject = ledger_subject(TENANT, "vote_cast")
    async with _jetstream(server.url) as js:
        config = (await js.stream_info(STREAM)).config
        attempts: list[tuple[Callable[[], Awaitable[object]], int, str]] = [
            (lambda: js.delete_msg(STREAM, vote), 10057, "message delete not permitted"),
            (lambda: js.purge_stream(STREAM), 10110, "stream purge not permitted"),
            (lambda: js.purge_stream(STREAM, subject=subject), 10110, "stream purge not permitted"),
            (lambda: js.purge_stream(STREAM, seq=vote), 10110, "stream purge not permitted"),
            (lambda: js.purge_stream(STREAM, keep=1), 10110, "stream purge not permitted"),
            (
                lambda: js.update_stream(dataclasses.replace(config, deny_delete=False)),
                10052,
                "can not cancel deny message deletes",
            ),
            (
                lambda: js.update_stream(dataclasses.replace(config, deny_purge=False)),
                10052,
                "can not cancel deny purge",
            ),
            (
                lambda: js.update_stream(dataclasses.replace(config, allow_rollup_hdrs=True)),
                10052,
                "roll-ups require the purge permission",
            ),
            (
                lambda: js.publish(subject, b"{}", headers={"Nats-Rollup": "all"}),
                10111,
                "rollup not permitted",
            ),
        ]
        for call, code, message in attempts:
            with pytest.raises(nats.js.errors.APIError) as refused:
                await asyncio.wait_for(call(), WAIT)
            assert refused.value.err_code == code, refused.value
            assert message in (refused.value.description or ""), refused.value
        state = (await js.stream_info(STREAM)).state
    assert (state.first_seq, state.last_seq, state.messages) == (1, story.last, story.last)
    after = await _audit(bus)
    assert after.ok
    assert (after.last_seq, after.head, after.events) == (before.last_seq, before.head, story.last)
    assert (await bus.get(vote)).hash.hex() == story.receipt.hash


async def test_a_message_limit_added_to_the_stream_drops_old_events_and_the_audit_names_it(
    server: EmbeddedServer, signing_writer: LedgerWriter, bus: Bus
) -> None:
    """What the denials do not cover: JetStream accepts a config update that adds
    a message limit with the discard policy old, and then discards the oldest
    events to meet it, deny_delete notwithstanding (a limit alone, under the
    discard new CORTEX sets, refuses writes instead: test_stream_config.py). The
    door does not hold here; the audit does: it names the configuration, the
    missing first events (a gap and a broken link at the new first seq), and a
    writer will not start again on a stream with a limit."""
    story = await _story(server.url)
    events = [(s.seq, decode_event(s.body)) async for s in bus.read(1)]
    keep = 6
    first = story.last - keep + 1
    async with _jetstream(server.url) as js:
        config = (await js.stream_info(STREAM)).config
        info = await js.update_stream(
            dataclasses.replace(config, max_msgs=keep, discard=DiscardPolicy.OLD)
        )
    assert info.state is not None
    assert (info.state.first_seq, info.state.last_seq) == (first, story.last)
    report = await _audit(bus)
    # After the gap the verifier has lost the history the rest is checked
    # against: each signed event's agent key, and the events a checkpoint covers.
    consequences = [
        ("merkle_mismatch" if isinstance(event, CheckpointSigned) else "agent_signature", seq)
        for seq, event in events
        if seq >= first
        and (isinstance(event, CheckpointSigned) or getattr(event, "signature", None))
    ]
    assert any(kind == "merkle_mismatch" for kind, _ in consequences)
    stream = f"stream {STREAM}"
    assert _found(report) == [
        ("stream_config", f"{stream}: max_msgs"),
        ("stream_config", f"{stream}: discard"),
        ("stream_truncated", f"{stream}: state.first_seq"),
        ("sequence_gap", f"seq {first}"),
        ("chain_break", f"seq {first}"),
        *((kind, f"seq {seq}") for kind, seq in consequences),
    ]
    assert f"events 1-{first - 1} gone" in report.violations[2].detail
    assert f"events 1..{first - 1} are missing" in report.violations[3].detail
    assert report.violations[4].detail.endswith(f"hashes to {'0' * 16}…")  # the genesis
    await _stop_writer(signing_writer)
    again = LedgerWriter(await Bus.connect(server.url), key=writer_key(server.data_dir))
    try:
        with pytest.raises(StreamUnsafe, match="max_msgs is 6, must be unlimited"):
            await asyncio.wait_for(again.start(), WAIT)
    finally:
        await again.bus.close()


async def test_a_deleted_stream_is_caught_by_the_audit_and_by_a_nodes_database(
    server: EmbeddedServer, signing_writer: LedgerWriter, tmp_path: Path
) -> None:
    """Deleting the whole stream is not a message delete: JetStream allows it. The
    audit then fails outright (exit 1, ``ledger_error``); and once a writer has
    started a fresh, clean ledger in its place, only a node's database can tell:
    ``--db`` names its position and the node refuses to start on the new ledger."""
    story = await _story(server.url)
    db = tmp_path / "node.db"
    await _project(server.url, db, story.last)
    async with _jetstream(server.url) as js:
        assert await js.delete_stream(STREAM)

    gone = await run_cli("audit", "--nats", server.url, "--json", timeout=WAIT * 3)
    assert gone.code == 1
    assert gone.json()["error"]["code"] == "ledger_error"

    await _stop_writer(signing_writer)
    fresh = LedgerWriter(
        await Bus.connect(server.url), key=writer_key(server.data_dir), checkpoint_every=10
    )
    await asyncio.wait_for(fresh.start(), WAIT)  # a new stream, the key recorded at seq 1
    try:
        async with _bus(server.url) as bus:
            assert await bus.last_seq() == 1
            assert (await _audit(bus)).ok
            report = await _audit(bus, db)
            with pytest.raises(LedgerMismatch, match="it was built from another ledger"):
                await ProjectionNode(bus, db).start()
    finally:
        await fresh.stop()
        await fresh.bus.close()
    assert _found(report) == [("projection_mismatch", f"{db}: position")]
    assert report.violations[0].detail == f"at seq {story.last}, beyond the ledger's 1"


# -- 4. replayed signatures ------------------------------------------------------


async def test_a_replayed_signed_vote_appends_nothing_and_its_signature_fits_nothing_else(
    server: EmbeddedServer, signing_writer: LedgerWriter, bus: Bus
) -> None:
    """A captured signed vote, sent again as it is, is recognised by its id: the
    original receipt, nothing appended. Its signature lifted onto a new command
    (new id; or another fact; or another agent) is refused ``bad_signature``: it
    signs the id and every field. The ledger and its audit do not move."""
    story = await _story(server.url)
    before = await _audit(bus)
    assert before.ok
    async with await Client.connect(server.url, tenant=TENANT) as client:
        # The exact signed command again: the original receipt, nothing appended.
        again = await client.submit(story.signed)
        assert (again.seq, again.hash, again.id) == (
            story.receipt.seq,
            story.receipt.hash,
            story.receipt.id,
        )
        assert await bus.last_seq() == story.last
        # Its signature on a new command: a new id, another fact, another voter.
        for forged in (
            msgspec.structs.replace(story.signed, id=new_id()),
            msgspec.structs.replace(story.signed, id=new_id(), fact_id=story.facts[0]),
            msgspec.structs.replace(story.signed, id=new_id(), agent_id="bob"),
        ):
            with pytest.raises(CortexError) as refused:
                await asyncio.wait_for(client.submit(forged), WAIT)
            assert refused.value.code == "bad_signature", refused.value.message
            assert await bus.last_seq() == story.last
    after = await _audit(bus)
    assert after.ok
    assert (after.last_seq, after.head, after.agent_signatures) == (
        before.last_seq,
        before.head,
        before.agent_signatures,
    )


# -- 5. republished events -------------------------------------------------------


async def test_republished_events_are_named_at_their_new_seq(
    server: EmbeddedServer, signing_writer: LedgerWriter, bus: Bus
) -> None:
    """An attacker copies the stored bytes of ann's signed vote back onto the ledger
    subject, bypassing the writer. With its Nats-Msg-Id, JetStream deduplicates it
    (within the 120 s window). Without, it lands at a new seq, where the stream
    denies deleting it; the audit names each copy there:

    - links forged to extend the chain properly: only the repeated id gives it
      away (``duplicate_event``); filed under another tenant's subject it is
      also ``malformed_event``;
    - no chain headers: ``hash_mismatch`` and ``chain_break`` too;
    - the original's chain headers: the hash fits the body, the link does not
      (``chain_break``).

    The agent signature is genuine, so there is no ``agent_signature``. The
    writer, finding the chain broken, then refuses every command.
    """
    story = await _story(server.url)
    original = await bus.get(story.receipt.seq)
    seq = story.last
    async with _jetstream(server.url) as js:
        stored = await js.get_msg(STREAM, story.receipt.seq)
        assert stored.headers is not None
        dup = await js.publish(
            original.subject,
            original.body,
            headers={"Nats-Msg-Id": stored.headers["Nats-Msg-Id"]},
        )
        assert (dup.duplicate, dup.seq) == (True, story.receipt.seq)
        assert await bus.last_seq() == seq

        async def forge(subject: str, headers: dict[str, str] | None) -> int:
            ack = await js.publish(subject, original.body, headers=headers)
            assert not ack.duplicate
            return ack.seq

        head = (await bus.get(seq)).hash
        chained = await forge(
            original.subject,
            {HDR_PREV: head.hex(), HDR_HASH: link(head, original.body).hex()},
        )
        head = link(head, original.body)
        elsewhere = await forge(
            ledger_subject("rival", "vote_cast"),
            {HDR_PREV: head.hex(), HDR_HASH: link(head, original.body).hex()},
        )
        bare = await forge(original.subject, None)
        copied = await forge(
            original.subject,
            {HDR_PREV: stored.headers[HDR_PREV], HDR_HASH: stored.headers[HDR_HASH]},
        )
    assert [chained, elsewhere, bare, copied] == list(range(seq + 1, seq + 5))

    report = await _audit(bus)
    assert _found(report) == [
        ("duplicate_event", f"seq {chained}"),
        ("malformed_event", f"seq {elsewhere}"),
        ("duplicate_event", f"seq {elsewhere}"),
        ("hash_mismatch", f"seq {bare}"),
        ("chain_break", f"seq {bare}"),
        ("duplicate_event", f"seq {bare}"),
        ("chain_break", f"seq {copied}"),
        ("duplicate_event", f"seq {copied}"),
    ]
    first = f"already appended at seq {story.receipt.seq}"
    assert all(first in v.detail for v in report.violations if v.type == "duplicate_event")
    assert "filed under cortex.ledger.rival.vote_cast" in report.violations[1].detail
    assert report.last_seq == seq + 4

    async with await Client.connect(server.url, tenant=TENANT) as client:
        with pytest.raises(CortexError) as refused:
            await asyncio.wait_for(client.vote("cy", story.facts[3], 1), WAIT)
    assert refused.value.code == "chain_break"
    assert await bus.last_seq() == seq + 4


# -- 6. events forged behind the writer's back ----------------------------------


async def _inject(bus: Bus, event: Event) -> int:
    """Append ``event`` straight onto the stream, bypassing the writer, linked
    correctly after the real head (the chain has no secret); return its seq."""
    last = await bus.last_seq()
    head = (await bus.get(last)).hash
    body = encode(event)
    out = Outgoing(
        ledger_subject(event.tenant, kind_of(event)), body, str(event.id), head, link(head, body)
    )
    return await bus.append([out], expected_last_seq=last)


async def _checkpoint(bus: Bus, key: WriterKey, *, root: bytes | None = None) -> CheckpointSigned:
    """A checkpoint over the whole ledger as it stands, signed by ``key``; with
    ``root``, claiming that root instead of the true one."""
    last = await bus.last_seq()
    tree = MerkleAccumulator()
    first = b""
    async for stored in bus.read(1, last):
        first = first or stored.hash
        tree.append(leaf_hash(stored.hash))
    head = (await bus.get(last)).hash
    summary = Checkpoint(origin_of(first), last, root or tree.root(), head)
    return CheckpointSigned(
        id=uuid7(),
        tenant=SYSTEM_TENANT,
        ts=1,
        tree_size=last,
        root=summary.root.hex(),
        head=head.hex(),
        public_key=key.public_hex,
        note=sign(summary.body(), key.name, key.private),
    )


async def test_forged_checkpoints_are_named(
    server: EmbeddedServer, signing_writer: LedgerWriter, bus: Bus, tmp_path: Path
) -> None:
    """Checkpoints that extend the chain correctly but lie: a wrong root signed with
    the writer's own key (``merkle_mismatch``), and the right root signed by a key
    the ledger never recorded (``checkpoint_signature``)."""
    await _story(server.url)
    assert (await _audit(bus)).ok
    await _stop_writer(signing_writer)  # the forger appends; no writer races it
    end = await bus.last_seq()  # the stop's checkpoint covers the story

    real = writer_key(server.data_dir)
    true = await _checkpoint(bus, real)
    lying = await _inject(bus, await _checkpoint(bus, real, root=bytes(32)))
    stranger = writer_key(tmp_path / "elsewhere")
    unknown = await _inject(bus, await _checkpoint(bus, stranger))
    assert (lying, unknown) == (end + 1, end + 2)

    report = await _audit(bus)
    assert _found(report) == [
        ("merkle_mismatch", f"seq {lying}"),
        ("checkpoint_signature", f"seq {unknown}"),
    ]
    assert f"the events give root {true.root[:16]}" in report.violations[0].detail
    assert f"signed with key {stranger.public_hex[:16]}" in report.violations[1].detail
    assert "never recorded" in report.violations[1].detail


async def test_a_forger_s_own_writer_key_is_caught_when_the_audit_pins_the_real_one(
    server: EmbeddedServer, signing_writer: LedgerWriter, bus: Bus, tmp_path: Path
) -> None:
    """Whoever can append to the stream can also record a writer key of their own and
    sign checkpoints with it. The unpinned audit cannot tell it from a second writer
    and lists both keys for a person to recognise; pinned to the real key (as
    ``cortex checkpoint`` prints it), it names the forged checkpoint."""
    await _story(server.url)
    await _stop_writer(signing_writer)
    real = writer_key(server.data_dir)
    eve = writer_key(tmp_path / "eve")
    await _inject(
        bus,
        WriterKeyAdded(
            id=uuid7(), tenant=SYSTEM_TENANT, ts=1, name=eve.name, public_key=eve.public_hex
        ),
    )
    forged = await _inject(bus, await _checkpoint(bus, eve))

    loose = await audit_ledger(bus)
    assert loose.ok and set(loose.keys) == {real.name, eve.name} and not loose.pinned
    pinned = await audit_ledger(bus, writer_keys=[real.public_hex])
    assert [(v.type, v.seq) for v in pinned.violations] == [("checkpoint_signature", forged)]
    assert "not one of the keys the audit was told to trust" in pinned.violations[0].detail
    cli = await run_cli("audit", "--nats", server.url, "--writer-key", real.verifier, "--json")
    assert cli.code == 1 and cli.json()["violation_counts"] == {"checkpoint_signature": 1}


async def test_forged_agent_events_are_named_by_their_signatures(
    server: EmbeddedServer, signing_writer: LedgerWriter, bus: Bus
) -> None:
    """Votes put on the stream directly, chained correctly, so only the agents'
    signatures can tell: ann's vote signed by eve's key, ann's vote unsigned,
    cy's (keyless) vote signed anyway, and ann's genuine signed vote with its
    value turned. Each is ``agent_signature`` at its seq, and nothing else."""
    story = await _story(server.url)
    await _stop_writer(signing_writer)
    end = await bus.last_seq()  # the stop's checkpoint covers the story
    eve = Ed25519PrivateKey.generate()
    fact = story.facts[3]

    def vote(agent: str, value: int, key: Ed25519PrivateKey | None) -> Event:
        command = CastVote(id=new_id(), fact_id=fact, agent_id=agent, value=value)
        if key is not None:
            command = sign_command(command, TENANT, key)
        return to_event(command, tenant=TENANT, ts=1)

    genuine = decode_event((await bus.get(story.receipt.seq)).body)
    assert isinstance(genuine, VoteCast)
    seqs = [
        await _inject(bus, event)
        for event in (
            vote("ann", -1, eve),
            vote("ann", -1, None),
            vote("cy", -1, eve),
            msgspec.structs.replace(genuine, id=new_id(), value=-1),
        )
    ]
    assert seqs == list(range(end + 1, end + 5))
    report = await _audit(bus)
    assert _found(report) == [("agent_signature", f"seq {s}") for s in seqs]
    details = [v.detail for v in report.violations]
    assert "is not agent 'ann''s signature of this event" in details[0]
    assert "has a registered key but this event is unsigned" in details[1]
    assert "signed by agent 'cy', which has no registered key" in details[2]
    assert "is not agent 'ann''s signature of this event" in details[3]


async def test_a_forged_re_registration_does_not_hand_an_agent_to_the_forger(
    server: EmbeddedServer, signing_writer: LedgerWriter, bus: Bus
) -> None:
    """eve injects a correctly chained second registration of ann with eve's key.
    The writer must go on taking ann's signatures and refusing eve's."""
    story = await _story(server.url)
    eve = Ed25519PrivateKey.generate()
    forged = await _inject(
        bus,
        AgentRegistered(
            id=uuid7(), tenant=TENANT, ts=1, agent_id="ann", public_key=public_hex(eve)
        ),
    )
    async with await Client.connect(server.url, tenant=TENANT) as client:
        # The writer catches up over the forged registration here: the first one holds.
        await asyncio.wait_for(client.vote("ann", story.facts[0], 1, key=story.ann), WAIT)
        with pytest.raises(CortexError) as refused:
            await asyncio.wait_for(client.vote("ann", story.facts[0], -1, key=eve), WAIT)
        assert refused.value.code == "bad_signature"
    report = await audit_ledger(bus)
    assert [(v.type, v.seq) for v in report.violations] == [("invalid_event", forged)]
    assert report.violations[0].detail.startswith("agent_exists: agent 'ann' is already registered")
