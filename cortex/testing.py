"""For tests: the ``cortex`` command run as a user runs it (a real process, real exit
codes), and a writer or a node started and stopped around a block."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cortex.errors import Unavailable
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


async def spawn_cli(*args: str, **options: Any) -> asyncio.subprocess.Process:
    """``python -m cortex.cli ARGS`` started as a child process; ``options`` are
    ``asyncio.create_subprocess_exec``'s (its pipes, ``env``)."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cortex.cli", *args, **options
    )


async def run_cli(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> Run:
    """``python -m cortex.cli ARGS`` in a child process, its output captured, bounded in time
    (``env``: variables set for it; CORTEX_NATS_URL is unset unless given there)."""
    child = {**os.environ, "COLUMNS": "200"}
    child.pop("CORTEX_NATS_URL", None)
    child.update(env or {})
    proc = await spawn_cli(
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=child,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


@dataclass
class Up:
    """A ``cortex up`` child process and the URL it said it serves."""

    proc: asyncio.subprocess.Process
    url: str
    #: Where its stderr (the log, and the one-line error it exits with) goes.
    log: Path

    def err(self) -> str:
        """What it wrote to stderr so far."""
        return _text(self.log)

    async def exited(self, timeout: float = 30) -> int:
        """Wait, bounded, for it to exit on its own; the exit code."""
        async with asyncio.timeout(timeout):
            return await self.proc.wait()

    async def stop(self, timeout: float = 30) -> int:
        """SIGTERM, as a user's Ctrl-C or service manager sends; the exit code."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(timeout):
            return await self.proc.wait()


@contextlib.asynccontextmanager
async def cortex_up(
    data: Path, *args: str, timeout: float = 30, env: dict[str, str] | None = None
) -> AsyncIterator[Up]:
    """``cortex up --data DATA --port -1 ARGS`` until it says it is up; killed after if
    still running. Its stderr goes to a file (``Up.err``), so a chatty log never
    fills a pipe and blocks it."""
    with tempfile.TemporaryDirectory(prefix="cortex-up-") as tmp:
        log = Path(tmp) / "stderr.log"
        with log.open("wb") as stderr:
            async with _up(
                data, args, stderr=stderr, log=log, timeout=timeout, env=env or {}
            ) as up:
                yield up


@contextlib.asynccontextmanager
async def _up(
    data: Path,
    args: tuple[str, ...],
    *,
    stderr: Any,
    log: Path,
    timeout: float,
    env: dict[str, str],
) -> AsyncIterator[Up]:
    proc = await spawn_cli(
        "up",
        "--data",
        str(data),
        "--port",
        "-1",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
        env={**os.environ, "CORTEX_NATS_URL": "", "COLUMNS": "200", **env},
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(timeout):
            line = (await proc.stdout.readline()).decode()
        match = re.search(r"serving (nats://127\.0\.0\.1:\d+)", line)
        if match is None:
            raise AssertionError(
                f"cortex up did not come up: {line!r}; stderr: {_text(log)[-2000:]}"
            )
        yield Up(proc, match.group(1), log)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


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


def _text(path: Path) -> str:
    return path.read_text(errors="replace")


T = TypeVar("T")


async def eventually(
    attempt: Callable[[], Awaitable[T | None]],
    *,
    timeout: float,
    every: float = 0.05,
    retry_on: tuple[type[BaseException], ...] = (Unavailable,),
) -> T:
    """``attempt()``'s first result that is not None, tried again every ``every`` seconds
    (after None, or one of ``retry_on``) for at most ``timeout`` seconds (TimeoutError).

    The one poll in the tests, for conditions nothing announces: a cluster's
    election, a row another process commits, a server we do not control.
    """
    async with asyncio.timeout(timeout):
        while True:
            try:
                result = await attempt()
            except retry_on:
                result = None
            if result is not None:
                return result
            await asyncio.sleep(every)
