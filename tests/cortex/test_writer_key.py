"""The writer key lives outside the data folder: a copy of the folder cannot re-sign."""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cortex.audit import audit_ledger
from cortex.core.keys import (
    WRITER_KEY_FILE,
    WriterKey,
    default_key_path,
    writer_key,
    writer_key_at,
)
from cortex.errors import CortexError
from cortex.nats import Bus, EmbeddedServer
from cortex.testing import cortex_up, running_writer
from events.codec import decode_event
from events.model import Event, WriterKeyAdded
from events.rotation import problem


def _verifier(out: str) -> str:
    match = re.search(r"checkpoints are signed by (\S+)", out)
    assert match is not None, out
    return match.group(1)


async def test_cortex_up_keeps_its_key_outside_the_data_folder_so_a_copy_cannot_sign(
    tmp_path: Path, config_home: Path
) -> None:
    data = tmp_path / "data"
    async with cortex_up(data) as up:
        assert up.proc.stdout is not None
        first = _verifier(
            (await up.proc.stdout.readline()).decode() + (await up.proc.stdout.readline()).decode()
        )
        await up.stop()
    key = default_key_path(data)
    assert key.is_relative_to(config_home) and key.stat().st_mode & 0o777 == 0o600
    assert not (data / WRITER_KEY_FILE).exists()
    # Whoever copies the folder gets the ledger, not the power to sign as its writer:
    # the copy's writer has another key, which an auditor pinning the first refuses.
    copy = tmp_path / "copy"
    shutil.copytree(data, copy, ignore=shutil.ignore_patterns("*.lock", "served*"))
    async with cortex_up(copy) as up:
        assert up.proc.stdout is not None
        second = _verifier(
            (await up.proc.stdout.readline()).decode() + (await up.proc.stdout.readline()).decode()
        )
        await up.stop()
    assert second != first


def test_a_key_file_others_may_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "writer.key"
    writer_key_at(path)
    path.chmod(0o640)
    with pytest.raises(CortexError) as refused:
        writer_key_at(path)
    assert refused.value.code == "bad_key" and "chmod 600" in str(refused.value)


async def test_a_rotation_is_recorded_signed_by_the_old_key_and_only_that_passes_the_audit(
    server: EmbeddedServer, bus: Bus, tmp_path: Path
) -> None:
    """The old key signs the new one into the ledger; a key "endorsed" by a key the
    ledger never knew is named by the audit."""
    old, new, stranger = (writer_key(tmp_path / n) for n in ("old", "new", "stranger"))
    async with running_writer(server.url, key=old):
        pass
    async with running_writer(server.url, key=new, rotate_from=old) as writer:
        origin = writer.state.first_hash
    added = [e async for e in _events(bus) if isinstance(e, WriterKeyAdded)]
    assert [(e.public_key, e.endorsed_by) for e in added] == [
        (old.public_hex, None),
        (new.public_hex, old.public_hex),
    ]
    assert verify_ok(added[1], origin, old)
    assert (await audit_ledger(bus)).ok
    # An auditor who pinned only the old key follows its endorsement to the new one.
    assert (await audit_ledger(bus, writer_keys=[old.public_hex])).ok
    async with running_writer(server.url, key=writer_key(tmp_path / "third"), rotate_from=stranger):
        pass
    report = await audit_ledger(bus)
    assert [v.type for v in report.violations] == ["checkpoint_signature"]
    assert "no earlier writer key" in report.violations[0].detail
    pinned = await audit_ledger(bus, writer_keys=[old.public_hex])
    assert any(
        "not one of the keys the audit was told to trust" in v.detail for v in pinned.violations
    )


async def _events(bus: Bus) -> AsyncIterator[Event]:
    async for stored in bus.read(1):
        yield decode_event(stored.body)


def verify_ok(event: WriterKeyAdded, origin: bytes, old: WriterKey) -> bool:
    return problem(event, {old.public_hex}, origin) is None
