"""Witnesses, over real HTTP on loopback, and played against an attacker who holds the data folder.

The witness runs as its own process (``python -m cortex.witness``). The
protocol tests sign checkpoints with a key of their own; the attacker tests
use a real ledger, stop its server, restore an older copy of the folder, and
re-sign with the writer key kept in it: the witness, whose state lives
elsewhere, refuses, and ``cortex audit --witness`` names ``witness_missing``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
import structlog
from conftest import AsAdmin
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rollback import LATE, TENANT, rolled_back, write_facts

from cortex.audit import AuditReport, audit_ledger
from cortex.client import Client
from cortex.core.keys import writer_key, writer_key_at
from cortex.cosigner import Cosigner
from cortex.nats import Bus, EmbeddedServer
from cortex.runtime import Runtime
from cortex.testing import Run, cortex_up, run_cli, running_node
from cortex.trust import Head, atomic_write
from cortex.witness.check import WitnessPolicy
from cortex.witnessing import WitnessConflict, request_body, submit
from cortex.writer import LedgerWriter
from events.merkle import consistency_proof, root
from events.model import SYSTEM_TENANT, CheckpointSigned
from events.note import (
    Checkpoint,
    cosigner_verifier_key,
    parse_cosigner_key,
    raw_public,
    sign,
    verifier_key,
    verify_cosignature,
)

WAIT = 30.0
ORIGIN = "cortex.ledger/0000000000000001"
_CHECKPOINT_SUBJECT = f"cortex.ledger.{SYSTEM_TENANT}.checkpoint_signed"


class Running:
    def __init__(self, url: str, verifier: str, process: subprocess.Popen[str]) -> None:
        self.url, self.verifier, self.process = url, verifier, process


@pytest.fixture
def log_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _start(folder: Path, *log_keys: str) -> Running:
    args = [sys.executable, "-m", "cortex.witness", "--data", str(folder)]
    for key in log_keys:
        args += ["--log-key", key]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    url = process.stdout.readline().split(" on ")[-1].strip()
    verifier = process.stdout.readline().removeprefix("verifier key ").strip()
    assert url.startswith("http://127.0.0.1:"), process.stderr.read() if process.stderr else ""
    return Running(url, verifier, process)


def _stop(running: Running) -> None:
    running.process.terminate()
    running.process.wait(WAIT)
    if running.process.stdout:
        running.process.stdout.close()
    if running.process.stderr:
        running.process.stderr.close()


@pytest.fixture
def witness(tmp_path: Path, log_key: Ed25519PrivateKey) -> Iterator[Running]:
    running = _start(
        tmp_path / "witness", f"{ORIGIN}={verifier_key('log', raw_public(log_key.public_key()))}"
    )
    yield running
    _stop(running)


def _note(key: Ed25519PrivateKey, leaves: list[bytes], origin: str = ORIGIN) -> str:
    body = Checkpoint(origin, len(leaves), root(leaves), bytes(32)).body()
    return sign(body, "log", key)


LEAVES = [bytes([i]) * 32 for i in range(12)]


async def _post(url: str, body: bytes) -> httpx.Response:
    async with httpx.AsyncClient(timeout=WAIT) as client:
        return await client.post(url + "/add-checkpoint", content=body)


async def test_a_checkpoint_that_extends_the_last_is_cosigned_and_a_stale_old_size_gets_409(
    witness: Running, log_key: Ed25519PrivateKey
) -> None:
    """The first checkpoint from 0, the next with a proof; a wrong ``old`` is 409 with the size."""
    first = _note(log_key, LEAVES[:5])
    line = await submit(first, 0, [], witness.url)
    name, key = parse_cosigner_key(witness.verifier)
    assert verify_cosignature(first + line, name, key) > 0
    second = _note(log_key, LEAVES)
    response = await _post(witness.url, request_body(second, 0, []))
    assert response.status_code == 409
    assert response.headers["content-type"].startswith("text/x.tlog.size")
    assert response.text == "5\n"
    with pytest.raises(WitnessConflict) as conflict:
        await submit(second, 3, [], witness.url)
    assert conflict.value.size == 5
    proof = consistency_proof(5, 12, LEAVES)
    assert verify_cosignature(second + await submit(second, 5, proof, witness.url), name, key)


async def test_bad_signature_bad_proof_unknown_origin_and_malformed_bodies_are_refused(
    witness: Running, log_key: Ed25519PrivateKey
) -> None:
    """403 for a forged or foreign signature, 404 for an unknown origin, 422 for a
    proof or root that does not hold, 400 for a body that is not the protocol's."""
    await submit(_note(log_key, LEAVES[:4]), 0, [], witness.url)
    other = Ed25519PrivateKey.generate()
    assert (await _post(witness.url, request_body(_note(other, LEAVES), 4, []))).status_code == 403
    good = _note(log_key, LEAVES)
    forged = good[: good.rfind(" ") + 1] + _note(other, LEAVES).rsplit(" ", 1)[1]
    assert (await _post(witness.url, request_body(forged, 4, []))).status_code == 403
    foreign = _note(log_key, LEAVES, origin="cortex.ledger/ffffffffffffffff")
    assert (await _post(witness.url, request_body(foreign, 0, []))).status_code == 404
    bad_proof = [bytes(32)] * len(consistency_proof(4, 12, LEAVES))
    assert (await _post(witness.url, request_body(good, 4, bad_proof))).status_code == 422
    same_size_other_root = _note(log_key, [b"x" * 32, *LEAVES[1:4]])
    response = await _post(witness.url, request_body(same_size_other_root, 4, []))
    assert response.status_code == 422
    assert (await _post(witness.url, b"new 4\n\n" + good.encode())).status_code == 400
    assert (await _post(witness.url, request_body(good, 13, []))).status_code == 400


def test_the_witness_exits_non_zero_saying_why(tmp_path: Path) -> None:
    """A port it cannot bind is one error line and exit 1, not a silent death."""
    key = verifier_key("log", raw_public(Ed25519PrivateKey.generate().public_key()))
    running = _start(tmp_path / "a", key)
    try:
        port = running.url.rsplit(":", 1)[1]
        done = subprocess.run(
            [
                *(sys.executable, "-m", "cortex.witness", "--data", str(tmp_path / "b")),
                *("--log-key", key, "--port", port),
            ],
            capture_output=True,
            text=True,
            timeout=WAIT,
            check=False,
        )
    finally:
        _stop(running)
    assert done.returncode == 1
    assert "witness_error" in done.stderr and "cannot listen" in done.stderr
    assert ((tmp_path / "a" / "witness.key").stat().st_mode & 0o777) == 0o600


# -- an attacker holding the ledger's data folder ------------------------------------


async def _ledger(url: str) -> tuple[str, list[bytes]]:
    """The latest checkpoint note and every event hash."""
    bus = await Bus.connect(url, name="witness-test")
    try:
        note, hashes = "", []
        async for stored in bus.read(1, await bus.last_seq()):
            hashes.append(stored.hash)
            if stored.subject == _CHECKPOINT_SUBJECT:
                note = msgspec.json.decode(stored.body, type=CheckpointSigned).note
        return note, hashes
    finally:
        await bus.close()


async def _cosign(note: str, hashes: list[bytes], url: str, keep: Path) -> None:
    """Cosign as ``cortex cosign`` does (0 first; on 409 a proof from the witness's size)."""
    head = Head.from_note(note)
    try:
        line = await submit(note, 0, [], url)
    except WitnessConflict as e:
        line = await submit(note, e.size, consistency_proof(e.size, head.tree_size, hashes), url)
    atomic_write(keep / f"{head.tree_size}.note", (note + line).encode())


async def _audit(url: str, policy: WitnessPolicy) -> AuditReport:
    bus = await Bus.connect(url, name="audit-test")
    try:
        return await asyncio.wait_for(audit_ledger(bus, witnesses=policy), WAIT)
    finally:
        await bus.close()


@pytest.fixture
async def ledger_witness(
    server: EmbeddedServer, signing_writer: LedgerWriter, tmp_path: Path
) -> AsyncIterator[Running]:
    running = _start(tmp_path / "witness", writer_key(server.data_dir).verifier)
    yield running
    _stop(running)


async def test_a_restored_older_copy_is_refused_by_the_witness_and_fails_the_audit(
    server: EmbeddedServer,
    signing_writer: LedgerWriter,
    ledger_witness: Running,
    tmp_path: Path,
) -> None:
    """Snapshot rollback: the old checkpoint gets 409 (the witness cosigned a longer
    tree), and the audit with the witness key says ``witness_missing``."""
    kept = tmp_path / "cosigned"  # outside the data folder
    policy = WitnessPolicy((parse_cosigner_key(ledger_witness.verifier),), 1, kept)
    await write_facts(server.url, "one", "two")
    await _cosign(*await _ledger(server.url), ledger_witness.url, kept)
    assert (await _audit(server.url, policy)).ok

    async def cosign_late(url: str) -> None:
        await _cosign(*await _ledger(url), ledger_witness.url, kept)
        assert (await _audit(url, policy)).ok

    async with rolled_back(server, signing_writer, tmp_path / "snapshot", cosign_late) as url:
        note, hashes = await _ledger(url)
        with pytest.raises(WitnessConflict) as refused:
            await submit(note, 0, [], ledger_witness.url)
        assert refused.value.size > Head.from_note(note).tree_size == len(hashes) - 1
        report = await _audit(url, policy)
    assert [v.type for v in report.violations] == ["witness_missing"]
    assert "rolled back" in report.violations[0].detail


async def test_a_checkpoint_re_signed_with_the_writer_key_from_the_folder_is_refused(
    server: EmbeddedServer,
    signing_writer: LedgerWriter,
    ledger_witness: Running,
    tmp_path: Path,
) -> None:
    """Re-chaining: another history under the same origin and size, signed with the
    writer key the folder holds, is 422 (same size, other root) or refused from any
    size the witness did not cosign; the audit with no cosignature says so."""
    await write_facts(server.url, "one", "two")
    note, hashes = await _ledger(server.url)
    await _cosign(note, hashes, ledger_witness.url, tmp_path / "cosigned")
    head = Head.from_note(note)
    stolen = writer_key(server.data_dir)
    body = note[: note.rfind("\n\n") + 1]
    rechained = sign(
        Checkpoint(head.origin, head.tree_size, bytes(32), bytes(32)).body(),
        stolen.name,
        stolen.private,
    )
    assert body != rechained[: rechained.rfind("\n\n") + 1]
    response = await _post(ledger_witness.url, request_body(rechained, head.tree_size, []))
    assert response.status_code == 422
    response = await _post(ledger_witness.url, request_body(rechained, 0, []))
    assert response.status_code == 409
    empty = WitnessPolicy((parse_cosigner_key(ledger_witness.verifier),), 1, tmp_path / "none")
    report = await _audit(server.url, empty)
    assert [v.type for v in report.violations] == ["witness_missing"]


async def test_cortex_cosign_saves_the_cosigned_note_and_audit_witness_counts_it(
    server: EmbeddedServer,
    signing_writer: LedgerWriter,
    ledger_witness: Running,
    tmp_path: Path,
) -> None:
    """``cortex cosign`` (from 0, then on 409 from the witness's size with the node's
    proof) keeps ``<out>/<origin>/<size>.note``; ``cortex audit --witness`` then holds,
    and with a key of a witness that never cosigned it fails with ``witness_missing``."""
    url = ("--nats", server.url, "--tenant", TENANT)
    kept = tmp_path / "cosigned"
    async with running_node(server.url, tmp_path / "node.db"):
        await write_facts(server.url, "one")
        first = await run_cli("cosign", "--witness", ledger_witness.url, "--out", str(kept), *url)
        assert first.code == 0, first.err
        await write_facts(server.url, "two", "three")
        again = await run_cli("cosign", "--witness", ledger_witness.url, "--out", str(kept), *url)
        assert again.code == 0, again.err
    assert len(list(kept.glob("*/*.note"))) == 2
    audit = ("audit", "--no-trust", "--cosigned", str(kept), *url)
    held = await run_cli(*audit, "--witness", ledger_witness.verifier)
    assert held.code == 0, held.out + held.err
    stranger = Ed25519PrivateKey.generate()
    other = cosigner_verifier_key("stranger", raw_public(stranger.public_key()))
    refused = await run_cli(*audit, "--witness", other, "--json")
    assert refused.code == 1
    assert json.loads(refused.out)["violation_counts"] == {"witness_missing": 1}


# -- witnessing while the ledger runs (cortex up --witness, audit --witness-url) --------


@pytest.fixture
async def writer_witness(server: EmbeddedServer, tmp_path: Path) -> AsyncIterator[Running]:
    """A witness of the ledger the ``server`` fixture holds (no writer started yet)."""
    running = _start(tmp_path / "witness", writer_key(server.data_dir).verifier)
    yield running
    _stop(running)


def _newest_note(kept: Path) -> tuple[Head, str]:
    path = max(kept.glob("*/*.note"), key=lambda p: int(p.stem))
    note = path.read_text()
    return Head.from_note(note[: note.rfind("\n\n") + 1] + "\n"), note


async def test_the_runtime_has_each_new_checkpoint_cosigned_while_it_runs(
    server: EmbeddedServer, writer_witness: Running, tmp_path: Path
) -> None:
    """With a cosigner, the writer's checkpoints reach the witness without anyone asking:
    the first from size 0, the next with the node's consistency proof; each cosigned
    note is kept, and ``cortex audit --witness`` counts the newest."""
    kept = tmp_path / "cosigned"
    name, key = parse_cosigner_key(writer_witness.verifier)
    async with Runtime(server.url, name="test") as runtime:
        await runtime.add_writer(key=writer_key(server.data_dir))
        await runtime.add_node(tmp_path / "node.db")
        cosigner = await runtime.add_cosigner([writer_witness.url], kept)
        async with await Client.connect(server.url, tenant=TENANT) as client:
            await client.register_agent("ann")
            first = await client.store_fact("ann", "one")
            async with asyncio.timeout(WAIT):
                await cosigner.cosigned(first.seq)
            head, note = _newest_note(kept)
            assert head.tree_size >= first.seq
            assert verify_cosignature(note, name, key) > 0
            second = await client.store_fact("ann", "two")
            async with asyncio.timeout(WAIT):
                await cosigner.cosigned(second.seq)
        head, note = _newest_note(kept)
        assert head.tree_size >= second.seq
        assert verify_cosignature(note, name, key) > 0
    assert cosigner.failures == 0
    audit = await run_cli(
        *("audit", "--no-trust", "--nats", server.url, "--tenant", TENANT),
        *("--cosigned", str(kept), "--witness", writer_witness.verifier),
    )
    assert audit.code == 0, audit.out + audit.err


@pytest.fixture
async def hanging_witness() -> AsyncIterator[str]:
    """A witness that takes the connection and never answers."""
    release = asyncio.Event()

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.close()

    listening = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        release.set()
        listening.close()
        await listening.wait_closed()


async def test_a_witness_that_never_answers_does_not_hold_up_writes_and_is_logged(
    server: EmbeddedServer, hanging_witness: str, tmp_path: Path
) -> None:
    """Writes are acknowledged and checkpointed at their usual pace while the witness
    hangs; its timeout is a warning naming it, and the stop is not held up."""
    with structlog.testing.capture_logs() as logs:
        async with Runtime(server.url, name="test") as runtime:
            await runtime.add_writer(key=writer_key(server.data_dir))
            await runtime.add_node(tmp_path / "node.db")
            await runtime.add_cosigner([hanging_witness], tmp_path / "cosigned", timeout=0.5)
            async with await Client.connect(server.url, tenant=TENANT) as client:
                await client.register_agent("ann")
                async with asyncio.timeout(WAIT / 3):
                    receipts = [await client.store_fact("ann", f"fact {i}") for i in range(20)]
                    covered = await client.wait_checkpoint(receipts[-1])
            assert covered.checkpoint is not None
    failed = [e for e in logs if e["event"] == "witness_failed"]
    assert failed and failed[0]["witness"] == hanging_witness
    assert failed[0]["log_level"] == "warning" and failed[0]["code"] == "unavailable"
    assert not list((tmp_path / "cosigned").glob("*/*.note"))


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


async def test_cortex_up_with_a_dead_witness_acknowledges_writes_and_says_which_failed(
    tmp_path: Path, as_admin: AsAdmin
) -> None:
    data, dead = tmp_path / "data", _dead_url()
    as_admin(data)
    async with cortex_up(data, "--witness", dead) as up:
        async with await Client.connect(up.url, tenant=TENANT) as client:
            await client.register_agent("ann")
            receipt = await client.store_fact("ann", "one")
            assert (await client.wait_checkpoint(receipt)).checkpoint is not None
        assert await up.stop() == 0
        log = up.err()
    assert "witness_failed" in log and dead in log


async def test_cortex_up_witness_and_audit_witness_url_catch_a_rollback_without_local_notes(
    tmp_path: Path, as_admin: AsAdmin
) -> None:
    """``cortex up --witness`` has its checkpoints cosigned (the last on its clean stop);
    with the cosigned folder gone, ``cortex audit --witness-url`` asks the witness itself:
    the ledger passes, a restored older copy of its folder is ``witness_missing``
    (rolled back), and a witness that does not answer is named."""
    data, key, kept = tmp_path / "data", tmp_path / "writer.key", tmp_path / "cosigned"
    as_admin(data)
    running = _start(tmp_path / "witness", writer_key_at(key).verifier)
    up_args = ("--key", str(key), "--witness", running.url, "--cosigned", str(kept))
    try:
        async with cortex_up(data, *up_args) as up:
            await write_facts(up.url, "one", "two")
            assert await up.stop() == 0
        name, public = parse_cosigner_key(running.verifier)
        head, note = _newest_note(kept)
        assert verify_cosignature(note, name, public) > 0
        snapshot = tmp_path / "snapshot"
        shutil.copytree(data, snapshot, ignore=shutil.ignore_patterns("*.lock", "served*"))
        async with cortex_up(data, *up_args) as up:
            await write_facts(up.url, LATE)
            assert await up.stop() == 0
        assert _newest_note(kept)[0].tree_size > head.tree_size
        shutil.rmtree(kept)

        def audit(folder: Path, *urls: str) -> Awaitable[Run]:
            witness_urls = [a for url in urls for a in ("--witness-url", url)]
            return run_cli(
                *("audit", "--no-trust", "--data", str(folder), "--json"),
                *("--cosigned", str(kept), "--witness", running.verifier, *witness_urls),
            )

        held = await audit(data, running.url)
        assert held.code == 0, held.out + held.err
        without = await audit(data)
        assert without.code == 1
        assert without.json()["violation_counts"] == {"witness_missing": 1}
        gone = _dead_url()
        unreachable = await audit(data, gone)
        assert unreachable.code == 1
        detail = unreachable.json()["violations"][0]["detail"]
        assert f"{gone}: witness {gone} did not answer" in detail

        shutil.rmtree(data)
        shutil.copytree(snapshot, data)
        rolled_back = await audit(data, running.url)
    finally:
        _stop(running)
    assert rolled_back.code == 1
    violations = rolled_back.json()["violations"]
    assert [v["type"] for v in violations] == ["witness_missing"]
    assert "rolled back" in violations[0]["detail"] and running.url in violations[0]["detail"]


class _Leaves:
    """A read side over ``LEAVES``, signed with ``key``; it records the sizes asked for."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self.key, self.asked = key, list[int]()

    async def note(self, tree_size: int, seq: int) -> str:
        self.asked.append(tree_size)
        return _note(self.key, LEAVES[:tree_size])

    async def proof(self, old_size: int, new_size: int) -> list[bytes]:
        return consistency_proof(old_size, new_size, LEAVES)


async def test_checkpoints_that_come_while_a_witness_is_busy_are_coalesced_into_the_newest(
    witness: Running, log_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """Only the newest checkpoint is submitted; the next goes with a proof from the size
    the witness cosigned, and each cosigned note is kept by size."""
    reads, kept = _Leaves(log_key), tmp_path / "kept"
    cosigner = Cosigner([witness.url], kept, reads)
    cosigner.checkpointed(3, 3)
    cosigner.checkpointed(5, 5)  # before the cosigner runs: 3 is never asked for
    await cosigner.start()
    try:
        async with asyncio.timeout(WAIT):
            await cosigner.cosigned(5)
        cosigner.checkpointed(9, 9)
        cosigner.checkpointed(12, 12)
        async with asyncio.timeout(WAIT):
            await cosigner.cosigned(12)
    finally:
        await cosigner.stop()
    assert reads.asked == [5, 12]
    assert sorted(int(p.stem) for p in kept.glob("*/*.note")) == [5, 12]
    assert cosigner.failures == 0
