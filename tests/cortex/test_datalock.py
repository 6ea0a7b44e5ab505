"""A data folder is owned by one process at a time, and a crash never leaves it locked."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from cortex.datalock import DataFolderLocked, DataLock

_HOLD = """
import sys, time
from pathlib import Path
from cortex.datalock import DataLock
lock = DataLock(Path(sys.argv[1]), purpose="holder test").acquire()
print("held", flush=True)
sys.stdin.read()  # hold until the test closes stdin or kills us
"""


async def _holder(data: Path) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _HOLD,
        str(data),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None

    async def held() -> None:
        assert proc.stdout is not None
        while (line := await proc.stdout.readline()) and line.strip() != b"held":
            pass  # structlog's line about the lock comes first
        assert line, "the holder exited before taking the lock"

    await asyncio.wait_for(held(), timeout=20)
    return proc


async def test_a_second_process_is_refused_with_the_holder_named(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = await _holder(data)
    try:
        with pytest.raises(DataFolderLocked, match=f"pid {proc.pid} .*holder test") as e:
            DataLock(data).acquire()
        assert e.value.code == "data_locked"
    finally:
        proc.kill()
        await proc.wait()


async def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = await _holder(data)
    os.kill(proc.pid, signal.SIGKILL)
    await proc.wait()
    with DataLock(data) as lock:  # the kernel released it with the process
        assert lock.held
        assert str(os.getpid()) in (data / "LOCK").read_text()


def test_one_process_cannot_take_its_own_folder_twice(tmp_path: Path) -> None:
    """Two runtimes in one process (flock is per open file) are refused too."""
    with DataLock(tmp_path), pytest.raises(DataFolderLocked):
        DataLock(tmp_path).acquire()
    DataLock(tmp_path).acquire().release()
