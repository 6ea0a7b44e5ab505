"""``cortex tenant add``: issue an agent's credentials for one tenant, and let them in.

The data folder of a ``cortex up`` keeps the public key of every credential
it issues (``auth/agents.json``; the seed goes to the file handed to the
agent and nowhere else). When a ``cortex up`` runs on the folder, its
nats-server re-reads its users on SIGHUP: the command signals it and waits
until the new credentials really connect, so they work when it returns.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Final

from rich.markup import escape

from cortex import served
from cortex.cli.connect import data_of
from cortex.cli.output import EXIT_OK, out, print_json
from cortex.client import DEFAULT_TENANT
from cortex.errors import CortexError
from cortex.nats import Bus, Credentials, LocalAuth
from cortex.nats.connection import until_admitted

#: How long a running server may take to admit a new user after SIGHUP.
RELOAD_TIMEOUT_S: Final = 10.0


async def issue(args: argparse.Namespace, tenant: str, out_file: Path) -> dict[str, Any]:
    """Issue agent credentials for ``tenant`` into ``out_file``, admitted by the folder's
    running server when it returns; what was done."""
    done, creds = _issue(args, tenant, out_file)
    if done["reloaded"] and done["server"]:
        await _admitted(done["server"], creds)
    return done


def _issue(
    args: argparse.Namespace, tenant: str, out_file: Path
) -> tuple[dict[str, Any], Credentials]:
    if getattr(args, "nats", None):
        raise CortexError(
            "credentials are issued by the data folder of a `cortex up` (--data DIR); for an "
            "external server, add the user to its configuration (ops/nats-auth.conf)",
            code="usage",
        )
    folder = data_of(args)
    if not (folder / "auth").is_dir():
        raise CortexError(
            f"{folder} has no credentials yet: run `cortex up --data {folder}` once first",
            code="bad_credentials",
        )
    if out_file.exists():
        raise CortexError(
            f"{out_file} already exists: credentials are never overwritten",
            code="bad_credentials",
        )
    url = served.served_url(folder) or ""
    auth = LocalAuth(folder)
    creds = auth.add_agent(tenant, url=url)
    creds.save(out_file)
    done = {
        "file": str(out_file),
        "tenant": tenant,
        "public_key": creds.public_key,
        "server": url or None,
        "reloaded": auth.reload(),
    }
    return done, creds


async def _admitted(url: str, creds: Credentials) -> None:
    """Until the reloaded server lets ``creds`` connect (it reloads asynchronously)."""
    bus = await until_admitted(
        lambda: Bus.connect(url, name="cortex-tenant-check", creds=creds),
        RELOAD_TIMEOUT_S,
        f"the server at {url} did not admit the new credentials within "
        f"{RELOAD_TIMEOUT_S:.0f}s; restart `cortex up` to load them",
    )
    await bus.close()


async def cmd_tenant_add(args: argparse.Namespace) -> int:
    tenant = args.tenant_name
    done = await issue(args, tenant, Path(args.out or f"{tenant}.creds"))
    if args.json:
        print_json(done)
        return EXIT_OK
    out.print(
        f"credentials for tenant {escape(tenant)} in {escape(done['file'])} (readable by you "
        "only): give them to the agent, as --creds FILE or CORTEX_CREDS"
    )
    if done["reloaded"]:
        out.print("the running server admits them now")
    return EXIT_OK


def default_tenant(args: argparse.Namespace) -> str:
    return str(args.tenant or DEFAULT_TENANT)


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    tenant = sub.add_parser(
        "tenant", help="issue credentials for a tenant's agents"
    ).add_subparsers(dest="sub", required=True, metavar="ACTION")
    p = tenant.add_parser(
        "add",
        parents=[common],
        help="issue agent credentials for TENANT (a `cortex up` data folder, --data)",
    )
    p.add_argument("tenant_name", metavar="TENANT")
    p.add_argument(
        "--out",
        metavar="FILE",
        help="where to write them (0600, never overwritten; default ./TENANT.creds)",
    )
    p.set_defaults(func=cmd_tenant_add)
