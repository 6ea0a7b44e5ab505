"""Reaching the ledger for the recovery commands: log, audit, replay.

They must work when nothing runs (``cortex up`` exited, taking its embedded
server with it: exactly when ``ledger_mismatch`` or ``chain_break`` tell a
user to run them). So, without ``--nats``:

- the data folder (``--data``, else the folder of the ``--db`` given when it
  holds a ledger, else ``./.cortex`` as ``cortex up`` uses) is free: take its
  lock through a ``Runtime`` and start the embedded server on it, on a free
  port, for as long as the command runs;
- a live ``cortex up`` holds it: use that process's server (the URL it wrote
  to ``<data>/nats.url``, else the default URL), never a second server on the
  same store;
- it holds no ledger at all: the default URL, as before.

Every failure says what to run instead.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Final

from cortex import served
from cortex.cli.connect import credentials
from cortex.datalock import LOCK_FILE, DataFolderLocked
from cortex.errors import Unavailable
from cortex.nats import DEFAULT_URL, Bus
from cortex.runtime import Runtime

DEFAULT_DATA: Final = Path(".cortex")
#: What an embedded server keeps in the data folder: a folder with it holds a ledger.
STORE: Final = "store"


def holds_ledger(folder: Path) -> bool:
    return (folder / STORE).is_dir()


def data_folder(args: argparse.Namespace, dbs: Sequence[Path] = ()) -> Path:
    """``--data``; else the folder of a ``--db`` that sits in a data folder; else ./.cortex."""
    given: str | None = getattr(args, "data", None)
    if given:
        return Path(given)
    for db in dbs:
        if holds_ledger(db.parent):
            return db.parent
    return DEFAULT_DATA


def holder(folder: Path) -> str:
    """Who holds the folder's lock, as its lock file names it."""
    with contextlib.suppress(OSError):
        text = (folder / LOCK_FILE).read_text().strip()
        if text:
            return text
    return "another process"


def _option(folder: Path) -> str:
    return "" if folder == DEFAULT_DATA else f" --data {folder}"


@contextlib.asynccontextmanager
async def open_ledger(
    args: argparse.Namespace,
    *,
    name: str,
    dbs: Sequence[Path] = (),
    writes: Path | None = None,
) -> AsyncIterator[Bus]:
    """A connection to the ledger (see the module doc), closed on exit with any server
    started for it. ``writes``: a database the command (re)builds, refused if a running
    process's node may use it (``refuse_if_in_use``)."""
    runtime = Runtime(name=f"cortex-{args.command}")
    try:
        async with runtime:
            if writes is not None:
                refuse_if_in_use(writes, runtime)
            folder = data_folder(args, dbs)
            if args.nats:
                bus = await Bus.connect(args.nats, name=name, creds=credentials(args, folder))
            else:
                bus = await _local(args, name, folder, runtime)
            try:
                yield bus
            finally:
                await bus.close()
    finally:
        if runtime.server is not None:
            served.withdraw(runtime.server.data_dir)


async def _local(args: argparse.Namespace, name: str, folder: Path, runtime: Runtime) -> Bus:
    command = f"cortex {args.command}"
    if not holds_ledger(folder):
        try:
            return await Bus.connect(DEFAULT_URL, name=name, creds=credentials(args, folder))
        except Unavailable as e:
            raise Unavailable(
                f"no ledger in {folder} and nothing answers at {DEFAULT_URL}: run this in the "
                "folder where you ran `cortex up`, or give its data folder "
                f"(`{command} --data DIR`) or its server (`{command} --nats URL`)"
            ) from e
    try:
        runtime.lock(folder, purpose=command)
    except DataFolderLocked:
        url = served.served_url(folder) or DEFAULT_URL
        try:
            return await Bus.connect(url, name=name, creds=credentials(args, folder))
        except Unavailable as e:
            raise Unavailable(
                f"{folder} is held by {holder(folder)} but nothing answers at {url}: stop that "
                f"process and run `{command}{_option(folder)}` again (it then starts the "
                f"server itself), or give the server with `{command} --nats URL`"
            ) from e
    url = await runtime.serve(folder, port=-1)
    served.announce(folder, url)
    return await Bus.connect(url, name=name, creds=credentials(args, folder))


def refuse_if_in_use(db: Path, runtime: Runtime) -> None:
    """Hold the data folder ``db`` sits in (if it is one) for the command's life, so no
    ``cortex up`` starts a node on the file meanwhile; refuse if one runs there now."""
    folder = db.parent
    if not (folder / LOCK_FILE).exists():
        return  # not a data folder: nothing but this command uses the file
    try:
        runtime.lock(folder, purpose=f"cortex replay --db {db}")
    except DataFolderLocked as e:
        raise DataFolderLocked(
            f"{db} is in the data folder of a running process ({holder(folder)}), whose "
            f"node may be using it: stop that process first, or rebuild into another file "
            f"(`cortex replay --db rebuilt.db`)"
        ) from e
