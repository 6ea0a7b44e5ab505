"""Who a ``cortex`` command connects as, and where: credentials and server URL.

In order:

- ``--creds FILE`` (or ``CORTEX_CREDS``): an agent's or operator's credentials,
  issued by ``cortex tenant add`` or found in a data folder's ``auth/``;
- else the data folder's own admin credentials (``--data DIR``, default
  ``./.cortex``): whoever can read that folder runs the ledger anyway, so
  ``cortex up`` and then any command in the same folder need no set-up;
- else none (a server that admits anonymous clients, as an external one may).

The server is ``--nats`` (or ``CORTEX_NATS_URL``), else the URL written in
the credentials file given, else the one the data folder's ``cortex up``
announced (``<data>/nats.url``), else the default. Each may name several
servers of a cluster, comma-separated: the client connects to one that is up
and fails over to the others (and to those the cluster announces).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Final

from cortex import served
from cortex.client import Client
from cortex.nats import DEFAULT_URL, Credentials, LocalAuth, Role
from cortex.nats.auth import ENV_CREDS
from cortex.nats.subjects import parse_urls

DEFAULT_DATA: Final = Path(".cortex")
#: How long a command typed by hand is tried before it fails: through a fail-over
#: (a few seconds), not the library's 30 s in front of a ledger that is not running.
CLI_DEADLINE: Final = 10.0


def data_of(args: argparse.Namespace) -> Path:
    given: str | None = getattr(args, "data", None)
    return Path(given) if given else DEFAULT_DATA


def credentials(args: argparse.Namespace, folder: Path | None = None) -> Credentials | None:
    """``--creds``; else the admin credentials of the data folder, if it has them."""
    given: str | None = getattr(args, "creds", None)
    if given:
        return Credentials.load(given)
    admin = LocalAuth(folder or data_of(args)).path(Role.ADMIN)
    return Credentials.load(admin) if admin.exists() else None


def server_url(args: argparse.Namespace, creds: Credentials | None) -> str:
    """The seed servers to connect to, comma-separated (see the module doc)."""
    if args.nats:
        given = str(args.nats)
    elif getattr(args, "creds", None) and creds is not None and creds.url:
        given = creds.url
    else:
        given = served.served_url(data_of(args)) or DEFAULT_URL
    return ",".join(parse_urls(given))


async def open_client(args: argparse.Namespace) -> Client:
    """A client as the command line asks for; ``args.tenant`` becomes the client's own
    (an agent's credentials name it)."""
    creds = credentials(args)
    client = await Client.connect(
        server_url(args, creds), tenant=args.tenant, creds=creds, deadline=CLI_DEADLINE
    )
    args.tenant = client.tenant
    return client


def add_options(common: argparse.ArgumentParser) -> None:
    """``--creds`` and ``--data``, for every command that connects."""
    common.add_argument(
        "--creds",
        metavar="FILE",
        default=os.environ.get(ENV_CREDS) or None,
        help="credentials file to connect with (env CORTEX_CREDS; default: the data "
        "folder's own, for the operator)",
    )
    common.add_argument(
        "--data",
        metavar="DIR",
        help="data folder of a `cortex up` (default ./.cortex, or the --db's folder for "
        "log/audit/replay): its credentials and server are used unless --creds/--nats say "
        "otherwise; log, audit and replay start its server if nothing runs there",
    )
