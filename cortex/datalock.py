"""One process owns a data folder: an OS lock held for the process's life.

Two ``cortex up`` on one folder would each run a writer over its own
nats-server store and each acknowledge its own seq 2; after a restart one
side's acknowledged events are gone. So whoever runs on a folder first takes
an exclusive ``flock`` on ``<data>/LOCK`` and keeps the descriptor open. The
kernel releases it when the process ends, however it ends, so a crash never
leaves a stale lock behind; the file's text (pid, host, start time, what is
running) only names the holder for the error a second start gets.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import socket
from pathlib import Path
from typing import Final, Self

import structlog

from events.errors import ServerError

log = structlog.get_logger(__name__)

LOCK_FILE: Final = "LOCK"


class DataFolderLocked(ServerError):
    """Another process holds the data folder."""

    code = "data_locked"


class DataLock:
    """The exclusive lock on one data folder; see the module doc."""

    def __init__(self, data: Path, *, purpose: str = "cortex up") -> None:
        self.data = data
        self.path = data / LOCK_FILE
        self.purpose = purpose
        self._fd: int | None = None

    def acquire(self) -> Self:
        """Take the lock now or raise DataFolderLocked naming the holder (never waits)."""
        self.data.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise DataFolderLocked(
                f"data folder {self.data} is in use by another process ({holder or 'unknown'}); "
                "stop it first, or give this one another --data folder"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        os.pwrite(
            fd,
            f"pid {os.getpid()} on {socket.gethostname()}, {self.purpose}, since {started}\n".encode(),
            0,
        )
        self._fd = fd
        log.info("data_folder_locked", data=str(self.data), pid=os.getpid())
        return self

    def release(self) -> None:
        """Let go (the kernel does the same when the process dies)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the descriptor releases the flock
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read(fd: int) -> str:
    with contextlib.suppress(OSError):
        return os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
    return ""
