"""Credentials: who a connection is, and the data folder's own users.

A credentials file is a small JSON document, readable by its owner only::

    {"cortex_credentials": 1, "role": "agent", "tenant": "lab",
     "seed": "SUA…", "url": "nats://127.0.0.1:4222"}

The seed is an nkey (Ed25519) user seed; the server knows only its public
key, so it holds no secret that could be stolen from its configuration.
Connecting proves possession of the seed (nats-py signs the server's nonce).

The embedded server's data folder keeps its users in ``<data>/auth/``
(mode 0700): ``admin.creds``, ``writer.creds`` and ``node.creds``, created
on first start, ``agents.json`` (the public keys of issued agent
credentials, by tenant: their seeds are handed out, never kept) and
``users.conf``, the nats-server ``authorization`` block written from them.
Files readable by group or others are refused at start: whoever can read a
seed is that user. A cluster (``cortex.nats.cluster``) keeps one such folder
for all its servers, so users and permissions are the same on each, plus the
route password (``route.secret``); ``reload`` signals every server of the
folder (``nats.pid``, ``n*/nats.pid``).

Nothing here prints a seed: ``Credentials`` leaves it out of its ``repr``,
and every error names the file, never its content.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import nkeys

from cortex.nats.permissions import Role, User, authorization, inbox_prefix
from events.errors import CredentialsError
from events.rules import check_tenant

#: Where the data folder's users live, and the files in it.
AUTH_DIR: Final = "auth"
AGENTS_FILE: Final = "agents.json"
USERS_CONF: Final = "users.conf"
#: Where the embedded nats-server writes its pid (``pid_file``), for reloads.
PID_FILE: Final = "nats.pid"
#: The cluster's route password (``cortex.nats.cluster``): one for all members.
ROUTE_SECRET: Final = "route.secret"  # noqa: S105 - a file name, not a password
#: Credentials in the environment, for agents and tools away from the data folder.
ENV_CREDS: Final = "CORTEX_CREDS"
_VERSION: Final = 1
_LOCAL_ROLES: Final = (Role.ADMIN, Role.WRITER, Role.NODE)


@dataclass(frozen=True)
class Credentials:
    """One NATS identity: role, tenant (agents), nkey seed, and the server it was issued by."""

    role: Role
    seed: str = field(repr=False)
    tenant: str = ""
    url: str = ""

    @classmethod
    def generate(cls, role: Role, *, tenant: str = "", url: str = "") -> Credentials:
        seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
        return cls(role=role, seed=seed, tenant=tenant, url=url)

    @property
    def public_key(self) -> str:
        """The user's public nkey (``U…``): what the server's configuration lists."""
        keypair = nkeys.from_seed(bytearray(self.seed.encode()))
        try:
            return str(keypair.public_key.decode())
        finally:
            keypair.wipe()

    @property
    def inbox_prefix(self) -> str:
        return inbox_prefix(self.public_key)

    @property
    def user(self) -> User:
        return User(self.public_key, self.role, self.tenant)

    def to_json(self) -> bytes:
        doc = {
            "cortex_credentials": _VERSION,
            "role": self.role.value,
            "tenant": self.tenant,
            "seed": self.seed,
            "url": self.url,
        }
        return json.dumps(doc, indent=2).encode() + b"\n"

    def save(self, path: Path) -> None:
        """Write to a new file, owner-only from its first byte; never overwrite one."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError as e:
            raise CredentialsError(
                f"{path} already exists: credentials are never overwritten", code="bad_credentials"
            ) from e
        except OSError as e:
            raise CredentialsError(f"cannot write credentials to {path}: {e.strerror}") from e
        with os.fdopen(fd, "wb") as f:
            f.write(self.to_json())

    @classmethod
    def load(cls, path: Path | str) -> Credentials:
        """Read a credentials file; refuse one that group or others can read."""
        path = Path(path)
        check_private(path)
        try:
            doc = json.loads(path.read_bytes())
            role = Role(doc["role"])
            seed = str(doc["seed"])
            tenant = str(doc.get("tenant") or "")
            url = str(doc.get("url") or "")
            nkeys.from_seed(bytearray(seed.encode())).wipe()
        except OSError as e:
            raise CredentialsError(f"cannot read credentials {path}: {e.strerror}") from e
        except (ValueError, KeyError, TypeError, nkeys.NkeysError) as e:
            # Never the content: it may hold a seed.
            raise CredentialsError(
                f"{path} is not a CORTEX credentials file ({type(e).__name__})"
            ) from None
        if role is Role.AGENT and check_tenant(tenant) is not None:
            raise CredentialsError(f"{path} names no valid tenant for its agent")
        return cls(role=role, seed=seed, tenant=tenant, url=url)


def from_env() -> Credentials | None:
    """The credentials ``CORTEX_CREDS`` names, if it is set."""
    path = os.environ.get(ENV_CREDS)
    return Credentials.load(path) if path else None


def check_private(path: Path) -> None:
    """Refuse a file (or folder) that group or others may read, write or enter."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as e:
        raise CredentialsError(f"no credentials at {path}") from e
    except OSError as e:
        raise CredentialsError(f"cannot read {path}: {e.strerror}") from e
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CredentialsError(
            f"{path} is accessible to other users (mode {stat.filemode(mode)}): whoever reads "
            f"it can act as its user; run `chmod {'700' if path.is_dir() else '600'} {path}`",
            code="insecure_permissions",
        )


class LocalAuth:
    """The users of one data folder's embedded server (see the module doc)."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.folder = data / AUTH_DIR

    def path(self, role: Role) -> Path:
        return self.folder / f"{role.value}.creds"

    def ensure(self) -> None:
        """Create the folder's admin, writer and node credentials if missing, and check
        that every secret in the folder is private (also the writer's checkpoint key)."""
        self.data.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.folder.exists():
            self.folder.mkdir(mode=0o700)
        check_private(self.folder)
        for role in _LOCAL_ROLES:
            path = self.path(role)
            if not path.exists():
                Credentials.generate(role).save(path)
            check_private(path)
        for secret in (self.data / "writer.key", self.folder / ROUTE_SECRET):
            if secret.exists():
                check_private(secret)

    def credentials(self, role: Role) -> Credentials:
        return Credentials.load(self.path(role))

    def agents(self) -> list[User]:
        """The agent users issued so far (public keys only)."""
        path = self.folder / AGENTS_FILE
        if not path.exists():
            return []
        check_private(path)
        try:
            rows = json.loads(path.read_bytes())
            return [User(r["public_key"], Role.AGENT, r["tenant"]) for r in rows]
        except (ValueError, KeyError, TypeError) as e:
            raise CredentialsError(f"{path} is damaged ({type(e).__name__})") from e

    def users(self) -> list[User]:
        return [self.credentials(role).user for role in _LOCAL_ROLES] + self.agents()

    def write_config(self) -> Path:
        """(Re)write ``users.conf`` from the folder's users; its path."""
        path = self.folder / USERS_CONF
        partial = path.with_name(f"{USERS_CONF}.{os.getpid()}")
        partial.write_text(authorization(self.users()))
        os.replace(partial, path)
        return path

    def add_agent(self, tenant: str, *, url: str = "") -> Credentials:
        """Issue new agent credentials for ``tenant`` and admit them (``write_config``;
        a running server must still ``reload``). Only the public key is kept here."""
        refused = check_tenant(tenant)
        if refused is not None:
            raise refused.error()
        self.ensure()
        creds = Credentials.generate(Role.AGENT, tenant=tenant, url=url)
        path = self.folder / AGENTS_FILE
        rows = [{"public_key": u.public_key, "tenant": u.tenant} for u in self.agents()]
        rows.append(
            {
                "public_key": creds.public_key,
                "tenant": tenant,
                "added": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
        )
        partial = path.with_name(f"{AGENTS_FILE}.{os.getpid()}")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(rows, f, indent=2)
        os.replace(partial, path)
        self.write_config()
        return creds

    def route_password(self) -> str:
        """The cluster's route password, created (0600) on first use: every member
        of a cluster on this folder proves it to the others (``cortex.nats.cluster``)."""
        self.ensure()
        path = self.folder / ROUTE_SECRET
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(os.urandom(32).hex() + "\n")
        check_private(path)
        return path.read_text().strip()

    def pid_files(self) -> list[Path]:
        """Where the folder's servers write their pids: the embedded server's, and each
        cluster member's (``n1/nats.pid``…), which all share this folder's users."""
        return [self.data / PID_FILE, *sorted(self.data.glob(f"n*/{PID_FILE}"))]

    def reload(self) -> bool:
        """Have every running nats-server of the folder re-read its users (SIGHUP, as
        ``nats-server --signal reload`` sends); False when none runs."""
        reloaded = False
        for path in self.pid_files():
            try:
                pid = int(path.read_text().strip())
            except (OSError, ValueError):
                continue
            if not _is_nats_server(pid):
                continue  # a stale pid file: nothing of ours runs there
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)
                reloaded = True
        return reloaded


def _is_nats_server(pid: int) -> bool:
    """Whether ``pid`` is a nats-server (never signal a process that reused a stale pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"nats-server" in cmdline.split(b"\0", 1)[0]
