"""Witnesses, over real HTTP on loopback, and played against an attacker who holds the data folder.

The witness runs as its own process (``python -m cortex.witness``). The
protocol tests sign checkpoints with a key of their own; the attacker tests
use a real ledger, stop its server, restore an older copy of the folder, and
re-sign with the writer key kept in it: the witness, whose state lives
elsewhere, refuses, and ``cortex audit --witness`` names ``witness_missing``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cortex.audit import AuditReport, audit_ledger
from cortex.client import Client
from cortex.core.keys import writer_key
from cortex.errors import StateConflict
from cortex.nats import CHECKPOINT_SUBJECT, Bus, EmbeddedServer
from cortex.testing import run_cli, running_node, running_writer
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
TENANT = "lab"
LATE = "A late fact that the attacker wants gone."
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


async def _write(url: str, *contents: str) -> None:
    """Store facts and have the writer sign a checkpoint (as test_remembered_heads does)."""
    async with await Client.connect(url, tenant=TENANT) as client:
        with contextlib.suppress(StateConflict):  # registered on an earlier call
            await client.register_agent("ann")
        for content in contents:
            await client.store_fact("ann", content)
        await client.bus.request(CHECKPOINT_SUBJECT, b"", timeout=WAIT)


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
    await _write(server.url, "one", "two")
    await _cosign(*await _ledger(server.url), ledger_witness.url, kept)
    assert (await _audit(server.url, policy)).ok
    await asyncio.wait_for(signing_writer.stop(), WAIT)
    await signing_writer.bus.close()
    await server.stop()
    snapshot = tmp_path / "snapshot"
    shutil.copytree(server.data_dir, snapshot)

    async with EmbeddedServer(server.data_dir, port=-1) as again:
        async with running_writer(again.url, key=writer_key(server.data_dir)):
            await _write(again.url, LATE)
        await _cosign(*await _ledger(again.url), ledger_witness.url, kept)
        assert (await _audit(again.url, policy)).ok

    shutil.rmtree(server.data_dir)
    shutil.copytree(snapshot, server.data_dir)
    async with EmbeddedServer(server.data_dir, port=-1) as restored:
        note, hashes = await _ledger(restored.url)
        with pytest.raises(WitnessConflict) as refused:
            await submit(note, 0, [], ledger_witness.url)
        assert refused.value.size > Head.from_note(note).tree_size == len(hashes) - 1
        report = await _audit(restored.url, policy)
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
    await _write(server.url, "one", "two")
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
        await _write(server.url, "one")
        first = await run_cli("cosign", "--witness", ledger_witness.url, "--out", str(kept), *url)
        assert first.code == 0, first.err
        await _write(server.url, "two", "three")
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
