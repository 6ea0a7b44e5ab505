"""Where the process that owns a data folder serves its ledger: ``<data>/nats.url``.

The data-folder lock (``cortex.datalock``) says *whether* a process owns the
folder; this file says where it can be reached, so that ``cortex log``,
``audit`` and ``replay`` run beside a live ``cortex up`` use its server
instead of starting a second one on the same store. Whoever holds the lock
and serves (or uses an external server) writes it after the server is up and
removes it on the way out; a stale file left by a killed process is harmless,
because a reader only trusts it while the lock is held.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Final

URL_FILE: Final = "nats.url"


def announce(data: Path, url: str) -> None:
    """Record ``url`` as the server of the data folder (atomically: no half-written file)."""
    path = data / URL_FILE
    partial = path.with_name(f"{URL_FILE}.{os.getpid()}")
    partial.write_text(url + "\n")
    os.replace(partial, path)


def withdraw(data: Path) -> None:
    """Forget the folder's server (its owner is stopping)."""
    (data / URL_FILE).unlink(missing_ok=True)


def served_url(data: Path) -> str | None:
    """The URL the folder's owner recorded, if any."""
    with contextlib.suppress(OSError):
        url = (data / URL_FILE).read_text().strip()
        if url.startswith(("nats://", "tls://", "ws://", "wss://")):
            return url
    return None
