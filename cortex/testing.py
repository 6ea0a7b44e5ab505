"""For tests: the ``cortex`` command run as a user runs it (a real process, real exit
codes), and a writer or a node started and stopped around a block."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cortex.node import ProjectionNode
from cortex.runtime import Runtime
from cortex.writer import LedgerWriter


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


async def run_cli(*args: str, timeout: float = 60) -> Run:
    """``python -m cortex.cli ARGS`` in a child process, its output captured, bounded in time."""
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("CORTEX_NATS_URL", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cortex.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


@contextlib.asynccontextmanager
async def running_writer(url: str, **options: Any) -> AsyncIterator[LedgerWriter]:
    """A started writer on its own connection, as `cortex up` runs it; stopped after."""
    async with Runtime(url, name="test") as runtime:
        yield await runtime.add_writer(**options)


@contextlib.asynccontextmanager
async def running_node(url: str, db: Path) -> AsyncIterator[ProjectionNode]:
    """A started node (projector and queries) on its own connection; stopped after."""
    async with Runtime(url, name="test") as runtime:
        yield await runtime.add_node(db)
