"""The writer key lives outside the data folder: a copy of the folder cannot re-sign."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from cortex.core.keys import WRITER_KEY_FILE, default_key_path, writer_key_at
from cortex.errors import CortexError
from cortex.testing import cortex_up


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
