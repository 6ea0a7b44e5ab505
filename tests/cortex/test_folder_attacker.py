"""The strongest attacker: the data folder and the writer key, the server stopped.

Each test writes a real ledger, stops the server and rewrites nats-server's
block files (``blockfiles``): events edited or forged in the middle of the
stream, every following chain link re-linked (the chain is keyless), every
checkpoint from there on re-signed with the writer key, every record checksum
recomputed, so that nats-server starts and serves the edited stream as its own.

The ledger-only audit cannot tell a re-signed history from the real one: that
is asserted, it is why state kept outside the folder exists. A remembered head
(``cortex audit --trust FILE``) names the fork; a witness that cosigned the
real head refuses the forged one and ``--witness`` names ``witness_missing``.
Events no writer would append are still re-judged by the writer's rules and
named ``invalid_event`` with the rule, however well they are chained and signed.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import msgspec
import pytest
from blockfiles import Record, rechain
from conftest import AsAdmin
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cortex.audit import AuditReport, audit_ledger
from cortex.client import Client, Receipt, new_id
from cortex.core.keys import default_key_path, public_hex, writer_key_at
from cortex.errors import CortexError
from cortex.nats import Bus, EmbeddedServer, ledger_subject
from cortex.testing import run_cli, running_writer
from cortex.trust import Head, TrustStore
from cortex.witnessing import WitnessConflict, submit
from events.codec import decode_event, encode
from events.commands import CastVote, Command, DeprecateFact, RegisterAgent, StoreFact, to_event
from events.limits import MAX_TAGS
from events.model import SYSTEM_TENANT, CheckpointSigned, Event, FactStored, VoteCast, kind_of
from events.note import parse_cosigner_key

TENANT = "acme"
WAIT = 30.0
TRUE = "The Moon has no atmosphere to speak of."
LIE = "The Moon has a thick, breathable atmosphere."


@contextlib.asynccontextmanager
async def _bus(url: str) -> AsyncIterator[Bus]:
    bus = await Bus.connect(url, name="folder-attacker-test")
    try:
        yield bus
    finally:
        await bus.close()


async def _audit(url: str, **options: object) -> AuditReport:
    async with _bus(url) as bus, asyncio.timeout(WAIT):
        return await audit_ledger(bus, **options)  # type: ignore[arg-type]


def _found(report: AuditReport) -> list[tuple[str, int]]:
    return [(v.type, v.seq) for v in report.violations]


async def _checkpoint_notes(url: str) -> list[tuple[int, str]]:
    """(seq, note) of every checkpoint on the ledger."""
    async with _bus(url) as bus:
        return [
            (s.seq, event.note)
            async for s in bus.read(1)
            if isinstance(event := decode_event(s.body), CheckpointSigned)
        ]


# -- a witness process, as test_witness.py runs it -------------------------------


@dataclass(frozen=True)
class Witness:
    url: str
    verifier: str


@contextlib.contextmanager
def _witness(folder: Path, log_key: str) -> Iterator[Witness]:
    args = [sys.executable, "-m", "cortex.witness", "--data", str(folder), "--log-key", log_key]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().split(" on ")[-1].strip()
        verifier = process.stdout.readline().removeprefix("verifier key ").strip()
        assert url.startswith("http://127.0.0.1:"), process.stderr.read() if process.stderr else ""
        yield Witness(url, verifier)
    finally:
        process.terminate()
        process.wait(WAIT)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


# -- 1. re-chained and re-signed ---------------------------------------------------


async def test_a_re_chained_re_signed_folder_fools_the_ledger_audit_not_a_head_or_witness(
    server: EmbeddedServer, tmp_path: Path
) -> None:
    """The writer key where ``cortex up`` keeps it (the user's config folder), which
    the attacker reads too. In the middle of the stream a fact's text becomes a lie
    and bob's changed vote is turned back; every later link and checkpoint is redone.

    The server serves the edited stream, the ledger audit (even pinned to the real
    writer key) finds nothing; the trust store remembered before says ``fork`` at
    the remembered size; the witness refuses to cosign the forged head (422 at the
    same size) and ``--witness`` says ``witness_missing``."""
    data = server.data_dir
    key = writer_key_at(default_key_path(data))
    trust, kept = tmp_path / "trust.json", tmp_path / "cosigned"
    async with (
        running_writer(server.url, key=key, checkpoint_every=10),
        await Client.connect(server.url, tenant=TENANT) as client,
    ):
        for agent in ("ann", "bob", "cy"):
            await client.register_agent(agent)
        fact = (await client.store_fact("ann", TRUE)).fact_id
        assert fact is not None
        await client.vote("bob", fact, 1)
        changed = await client.vote("bob", fact, -1, reason="it has an exosphere")
        for n in range(25):  # enough for checkpoints after the edit
            await client.store_fact("cy", f"Filler fact number {n}.")
    # The writer's stop signed a checkpoint over everything.
    notes = await _checkpoint_notes(server.url)
    assert len(notes) >= 3
    async with _bus(server.url) as bus:
        last = await bus.last_seq()
    assert notes[-1][0] == last
    real = Head.from_note(notes[-1][1])

    first = await _audit(server.url, trust=TrustStore.load(trust), writer_keys=[key.public_hex])
    assert first.ok, first.violations
    assert first.latest_checkpoint == real.tree_size
    with _witness(tmp_path / "witness", key.verifier) as witness:
        line = await submit(notes[-1][1], 0, [], witness.url)
        kept.mkdir()
        (kept / f"{real.tree_size}.note").write_text(notes[-1][1] + line)
        policy = ("--witness", witness.verifier, "--cosigned", str(kept))
        held = await run_cli("audit", "--nats", server.url, "--no-trust", *policy, "--json")
        assert held.code == 0, held.out + held.err

        await server.stop()

        def edit(record: Record) -> list[Record]:
            event = decode_event(record.body)
            if isinstance(event, FactStored) and event.content == TRUE:
                event = msgspec.structs.replace(event, content=LIE)
            elif isinstance(event, VoteCast) and record.seq == changed.seq:
                event = msgspec.structs.replace(event, value=1, reason="")
            else:
                return [record]
            return [replace(record, body=encode(event))]

        rechain(data, key, edit)

        async with EmbeddedServer(data, port=-1) as forged:
            async with _bus(forged.url) as bus:
                assert await bus.last_seq() == last  # served, every record accepted
                stored = [decode_event(s.body) async for s in bus.read(1)]
            assert any(isinstance(e, FactStored) and e.content == LIE for e in stored)
            assert not any(isinstance(e, FactStored) and e.content == TRUE for e in stored)
            flipped = stored[changed.seq - 1]
            assert isinstance(flipped, VoteCast) and flipped.value == 1
            fake = (await _checkpoint_notes(forged.url))[-1][1]
            assert Head.from_note(fake).tree_size == real.tree_size
            assert Head.from_note(fake).root != real.root

            # The attack works against everything the folder holds.
            alone = await _audit(forged.url, writer_keys=[key.public_hex])
            assert alone.ok, alone.violations
            assert alone.checkpoint_signatures == alone.checkpoints == len(notes)
            assert alone.origin == first.origin

            # Remembered head: a fork at the remembered size.
            remembered = await run_cli(
                "audit", "--nats", forged.url, "--trust", str(trust), "--json"
            )
            assert remembered.code == 1, remembered.out + remembered.err
            out = remembered.json()
            assert [(v["type"], v["where"]) for v in out["violations"]] == [
                ("fork", f"origin {first.origin}")
            ]
            assert (
                f"the checkpoint of {real.tree_size} events has root"
                in (out["violations"][0]["detail"])
            )
            kept_head = TrustStore.load(trust).get(first.origin)  # not overwritten
            assert kept_head is not None
            assert (kept_head.tree_size, kept_head.root) == (real.tree_size, real.root)

            # The witness: same size, another root: 422; from 0: 409 with its size.
            with pytest.raises(WitnessConflict) as conflict:
                await submit(fake, 0, [], witness.url)
            assert conflict.value.size == real.tree_size
            with pytest.raises(CortexError, match=r"refused \(422\)"):
                await submit(fake, real.tree_size, [], witness.url)
            witnessed = await run_cli(
                "audit", "--nats", forged.url, "--no-trust", *policy, "--json"
            )
            assert witnessed.code == 1, witnessed.out + witnessed.err
            out = witnessed.json()
            assert [v["type"] for v in out["violations"]] == ["witness_missing"]
            assert (
                f"cosigned another root at size {real.tree_size}"
                in (out["violations"][0]["detail"])
            )
            assert parse_cosigner_key(witness.verifier)[0] in out["violations"][0]["detail"]


async def test_a_tail_cut_at_a_checkpoint_with_valid_checksums_is_a_rollback_and_no_witness_backs_it(
    server: EmbeddedServer, tmp_path: Path
) -> None:
    """Tail truncation without a damaged record: every event after an earlier
    checkpoint is removed from the blocks, the rest keeps valid checksums, so the
    stream simply ends there, internally perfect. The remembered head says
    ``rollback``; the witness that cosigned the longer head says ``witness_missing``."""
    key = writer_key_at(default_key_path(server.data_dir))
    trust, kept = tmp_path / "trust.json", tmp_path / "cosigned"
    async with (
        running_writer(server.url, key=key, checkpoint_every=5),
        await Client.connect(server.url, tenant=TENANT) as client,
    ):
        await client.register_agent("ann")
        for n in range(12):
            await client.store_fact("ann", f"Fact number {n}.")
    notes = await _checkpoint_notes(server.url)
    cut = notes[-2][0]  # the stream will end with this checkpoint
    assert (await _audit(server.url, trust=TrustStore.load(trust))).ok
    with _witness(tmp_path / "witness", key.verifier) as witness:
        real = Head.from_note(notes[-1][1])
        kept.mkdir()
        line = await submit(notes[-1][1], 0, [], witness.url)
        (kept / f"{real.tree_size}.note").write_text(notes[-1][1] + line)
        await server.stop()

        rechain(server.data_dir, key, lambda r: [r] if r.seq <= cut else [])

        async with EmbeddedServer(server.data_dir, port=-1) as restarted:
            async with _bus(restarted.url) as bus:
                assert await bus.last_seq() == cut
            alone = await _audit(restarted.url, writer_keys=[key.public_hex])
            assert alone.ok, alone.violations
            remembered = await _audit(restarted.url, trust=TrustStore.load(trust))
            assert [v.type for v in remembered.violations] == ["rollback"]
            assert f"fewer than the remembered checkpoint of {real.tree_size}" in (
                remembered.violations[0].detail
            )
            policy = ("--witness", witness.verifier, "--cosigned", str(kept))
            run = await run_cli("audit", "--nats", restarted.url, "--no-trust", *policy, "--json")
            assert run.code == 1, run.out + run.err
            out = run.json()
            assert [v["type"] for v in out["violations"]] == ["witness_missing"]
            assert "rolled back" in out["violations"][0]["detail"]


# -- 2. forged events of every kind, written into the block files -----------------


@dataclass(frozen=True)
class Template:
    """A stopped ledger folder to copy, its writer key file (outside it), the ids of its
    facts and the seq of the harmless fact each forgery takes the place of."""

    data: Path
    key_file: Path
    ids: dict[str, uuid.UUID]
    victim: int


async def _tell(root: Path, env: pytest.MonkeyPatch) -> Template:
    kay = Ed25519PrivateKey.generate()
    ids: dict[str, uuid.UUID] = {}
    async with EmbeddedServer(root / "data", port=-1) as srv:
        env.setenv("CORTEX_CREDS", str(srv.admin_creds))
        key = writer_key_at(root / "writer.key")
        async with running_writer(srv.url, key=key, checkpoint_every=5):
            async with await Client.connect(srv.url, tenant="rival") as client:
                await client.register_agent("rex")
                theirs = (await client.store_fact("rex", "Granite is intrusive.")).fact_id
            async with await Client.connect(srv.url, tenant=TENANT) as client:
                for agent in ("ann", "bob"):
                    await client.register_agent(agent)
                await client.register_agent("kay", public_key=public_hex(kay))
                for name, content in (
                    ("fact", "Basalt is an igneous rock."),
                    ("sevens", "Obsidian is volcanic glass."),
                    ("gone", "Pumice sinks."),
                ):
                    ids[name] = _fact_id(await client.store_fact("ann", content))
                await client.deprecate_fact("ann", ids["gone"], reason="it floats")
                fillers = [await client.store_fact("ann", f"Filler {n}.") for n in range(8)]
        ids["theirs"] = _fact_id_of(theirs)
        # The victim is followed by more events and by re-signed checkpoints.
        return Template(root / "data", root / "writer.key", ids, fillers[2].seq)


def _fact_id(receipt: Receipt) -> uuid.UUID:
    return _fact_id_of(receipt.fact_id)


def _fact_id_of(fact_id: uuid.UUID | None) -> uuid.UUID:
    assert fact_id is not None
    return fact_id


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    root = tmp_path_factory.mktemp("template")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("XDG_CONFIG_HOME", str(root / "config"))
        return asyncio.run(_tell(root, env))


Forgery = Callable[[dict[str, uuid.UUID], int], Event]


def _cmd(command: Command, tenant: str = TENANT) -> Forgery:
    return lambda _ids, ts: to_event(command, tenant=tenant, ts=ts)


def _fact(**fields: Any) -> Forgery:
    def make(ids: dict[str, uuid.UUID], ts: int) -> Event:
        values = {"fact_id": uuid.uuid4(), "agent_id": "ann", "content": "Sure.", **fields}
        return FactStored(id=new_id(), tenant=TENANT, ts=ts, **values)

    return make


def _with(make: Callable[[dict[str, uuid.UUID]], Command], tenant: str = TENANT) -> Forgery:
    return lambda ids, ts: to_event(make(ids), tenant=tenant, ts=ts)


#: (name, forgery, the violation, the rule its detail names): issue 11's kinds.
KINDS: list[tuple[str, Forgery, str, str]] = [
    (
        "vote-by-unregistered-agent",
        _with(lambda i: CastVote(id=new_id(), fact_id=i["fact"], agent_id="eve", value=1)),
        "invalid_event",
        "unknown_agent",
    ),
    (
        "vote-value-7",
        _with(lambda i: CastVote(id=new_id(), fact_id=i["sevens"], agent_id="bob", value=7)),
        "invalid_event",
        "invalid_vote",
    ),
    (
        "vote-on-another-tenants-fact",
        _with(lambda i: CastVote(id=new_id(), fact_id=i["theirs"], agent_id="bob", value=1)),
        "invalid_event",
        "unknown_fact",
    ),
    (
        "900-kb-fact",
        _cmd(StoreFact(id=new_id(), fact_id=uuid.uuid4(), agent_id="ann", content="x" * 900_000)),
        "invalid_event",
        "too_large",
    ),
    (
        "reused-fact-id",
        _with(lambda i: StoreFact(id=new_id(), fact_id=i["fact"], agent_id="bob", content="Mine.")),
        "invalid_event",
        "fact_exists",
    ),
    (
        "registration-in-the-system-tenant",
        _cmd(RegisterAgent(id=new_id(), agent_id="eve"), SYSTEM_TENANT),
        "invalid_event",
        "reserved_tenant",
    ),
    (
        "deprecation-by-another-agent-without-reason",
        _with(lambda i: DeprecateFact(id=new_id(), fact_id=i["fact"], agent_id="bob")),
        "invalid_event",
        "reason_required",
    ),
    (
        "second-deprecation",
        _with(lambda i: DeprecateFact(id=new_id(), fact_id=i["gone"], agent_id="ann", reason="x")),
        "invalid_event",
        "already_deprecated",
    ),
    (
        "timestamp-beyond-64-bits",
        lambda _ids, _ts: _fact()(_ids, 2**63),
        "invalid_event",
        "invalid_field",
    ),
    (
        "deprecation-of-an-unknown-fact",
        _cmd(DeprecateFact(id=new_id(), fact_id=uuid.uuid4(), agent_id="ann", reason="x")),
        "invalid_event",
        "unknown_fact",
    ),
    (
        "successor-in-another-tenant",
        _with(
            lambda i: DeprecateFact(
                id=new_id(), fact_id=i["fact"], agent_id="ann", reason="x", successor_id=i["theirs"]
            )
        ),
        "invalid_event",
        "unknown_fact",
    ),
    (
        "second-registration",
        _cmd(RegisterAgent(id=new_id(), agent_id="ann")),
        "invalid_event",
        "agent_exists",
    ),
    (
        "too-many-tags",
        _fact(tags=tuple(f"t{i}" for i in range(MAX_TAGS + 1))),
        "invalid_event",
        "invalid_field",
    ),
    ("confidence-2", _fact(confidence=2.0), "invalid_event", "invalid_field"),
    (
        "unsigned-vote-by-an-agent-with-a-key",
        _with(lambda i: CastVote(id=new_id(), fact_id=i["fact"], agent_id="kay", value=1)),
        "agent_signature",
        "signature_required",
    ),
]


@pytest.mark.parametrize(
    ("forgery", "violation", "rule"),
    [pytest.param(*kind[1:], id=kind[0]) for kind in KINDS],
)
async def test_a_forged_event_written_into_the_block_files_is_named_by_the_writers_rule(
    template: Template,
    tmp_path: Path,
    as_admin: AsAdmin,
    forgery: Forgery,
    violation: str,
    rule: str,
) -> None:
    """A harmless fact in the middle of the stream becomes an event no writer would
    append (filed under its own subject, with its own message id); every later link
    is re-linked and every later checkpoint re-signed with the writer key; the server
    serves it. The audit, pinned to the real key, re-judges it and names it, and
    nothing else: the re-chaining itself is perfect."""
    data = tmp_path / "data"
    shutil.copytree(template.data, data)
    key = writer_key_at(template.key_file)

    def edit(record: Record) -> list[Record]:
        if record.seq != template.victim:
            return [record]
        forged = forgery(template.ids, decode_event(record.body).ts)
        headers = {**record.headers, "Nats-Msg-Id": str(forged.id)}
        subject = ledger_subject(forged.tenant, kind_of(forged))
        return [replace(record, subject=subject, headers=headers, body=encode(forged))]

    rechain(data, key, edit)
    as_admin(data)
    async with EmbeddedServer(data, port=-1) as server:
        report = await _audit(server.url, writer_keys=[key.public_hex])
    assert _found(report) == [(violation, template.victim)]
    detail = report.violations[0].detail
    assert detail.startswith(f"{rule}:") if violation == "invalid_event" else rule in detail
    assert report.checkpoints >= 3
    assert report.checkpoint_signatures == report.checkpoints
