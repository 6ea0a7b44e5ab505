"""Bearer tokens for the network doors: one token, one tenant, one agent.

A token reads ``ctx_<id>_<secret>``: ``id`` (16 hex digits) finds its row,
``secret`` carries 256 random bits. Only the secret's SHA-256 is kept, in
``<data>/auth/tokens.json`` (0600, replaced atomically), with the tenant and
agent it stands for, the agent's key file (its commands are signed with it)
and when it was revoked. SHA-256 is enough: the secret is uniformly random,
so a slow password hash would buy nothing. The file is read again whenever
its modification time changes, so a ``cortex token revoke`` takes effect on
a running server at its next request.

The first token issued for a tenant also issues that tenant's NATS agent
credentials (``<data>/auth/doors/<tenant>.creds``, as ``cortex tenant add``
does): the doors act in a tenant with its own credentials only, so NATS
itself confines a token to its tenant.
"""

from __future__ import annotations

import builtins
import datetime as dt
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cortex import served
from cortex.core.keys import load_key
from cortex.errors import CortexError, CredentialsError
from cortex.nats import LocalAuth
from cortex.nats.auth import AUTH_DIR, check_private
from cortex.trust import atomic_write
from events.limits import AGENT_PATTERN, MAX_NAME
from events.rules import check_tenant

TOKENS_FILE: Final = "tokens.json"
#: Where the doors' per-tenant NATS credentials live, under ``<data>/auth/``.
DOORS_DIR: Final = "doors"
PREFIX: Final = "ctx"
_TOKEN: Final = re.compile(r"ctx_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_AGENT: Final = re.compile(AGENT_PATTERN)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as: an agent of one tenant, and the key it signs with (if any)."""

    tenant: str
    agent: str
    key: Ed25519PrivateKey | None = None


class TokenRow(msgspec.Struct, kw_only=True):
    """One issued token as the file keeps it (never the secret)."""

    id: str
    sha256: str
    tenant: str
    agent: str
    key_file: str | None = None
    created: str = ""
    revoked: str | None = None


_rows_decoder: Final = msgspec.json.Decoder(list[TokenRow])


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def creds_path(data: Path, tenant: str) -> Path:
    """The doors' NATS credentials for ``tenant`` in the data folder ``data``."""
    return data / AUTH_DIR / DOORS_DIR / f"{tenant}.creds"


class TokenStore:
    """The tokens of one data folder (see the module doc)."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.path = data / AUTH_DIR / TOKENS_FILE
        self._rows: dict[str, TokenRow] = {}
        self._stamp: tuple[int, int] | None = None
        self._keys: dict[str, Ed25519PrivateKey | None] = {}

    # -- reading ------------------------------------------------------------

    def _load(self) -> dict[str, TokenRow]:
        """The rows, read again only when the file changed."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._rows, self._stamp = {}, None
            return self._rows
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            check_private(self.path)
            try:
                rows = _rows_decoder.decode(self.path.read_bytes())
            except (OSError, msgspec.DecodeError, msgspec.ValidationError) as e:
                raise CredentialsError(f"{self.path} is damaged ({type(e).__name__})") from e
            self._rows = {r.id: r for r in rows}
            self._stamp = stamp
            self._keys.clear()
        return self._rows

    def list(self) -> list[TokenRow]:
        """Every token issued, revoked ones included, oldest first."""
        return list(self._load().values())

    def verify(self, token: str) -> Principal | None:
        """The principal ``token`` stands for; None if it is malformed, unknown or revoked."""
        m = _TOKEN.fullmatch(token.strip())
        if m is None:
            return None
        row = self._load().get(m.group(1))
        if row is None or not hmac.compare_digest(row.sha256, _digest(m.group(2))):
            return None
        if row.revoked is not None:
            return None
        return Principal(row.tenant, row.agent, self._key(row))

    def _key(self, row: TokenRow) -> Ed25519PrivateKey | None:
        if row.key_file is None:
            return None
        if row.id not in self._keys:
            self._keys[row.id] = load_key(Path(row.key_file))
        return self._keys[row.id]

    # -- changing -----------------------------------------------------------

    def _save(self, rows: builtins.list[TokenRow]) -> None:
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        check_private(folder)
        atomic_write(self.path, json.dumps(msgspec.to_builtins(rows), indent=2).encode() + b"\n")

    def issue(self, tenant: str, agent: str, key_file: Path | str | None = None) -> str:
        """A new token for ``agent`` of ``tenant`` (signing with ``key_file``, if given).
        The token is returned once; only its hash is kept."""
        refused = check_tenant(tenant)
        if refused is not None:
            raise refused.error()
        if not (0 < len(agent) <= MAX_NAME and _AGENT.search(agent)):
            raise CortexError(f"{agent!r} is not an agent id", code="invalid_field")
        key_path = None
        if key_file is not None:
            key_path = Path(key_file).resolve()
            check_private(key_path)
            load_key(key_path)  # refuse a file that is not a key now, not at first use
        self.tenant_credentials(tenant)
        token_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        row = TokenRow(
            id=token_id,
            sha256=_digest(secret),
            tenant=tenant,
            agent=agent,
            key_file=None if key_path is None else str(key_path),
            created=_now(),
        )
        self._save([*self.list(), row])
        return f"{PREFIX}_{token_id}_{secret}"

    def revoke(self, token_id: str) -> bool:
        """Revoke the token with this id; False if there is none (or it was revoked)."""
        rows = self.list()
        hit = next((r for r in rows if r.id == token_id and r.revoked is None), None)
        if hit is None:
            return False
        hit.revoked = _now()
        self._save(rows)
        return True

    def tenant_credentials(self, tenant: str) -> Path:
        """The doors' NATS credentials for ``tenant``, issued (and admitted by the folder's
        running servers) the first time."""
        path = creds_path(self.data, tenant)
        if path.exists():
            check_private(path)
            return path
        auth = LocalAuth(self.data)
        if not auth.folder.is_dir():
            raise CortexError(
                f"{self.data} has no credentials yet: run `cortex up --data {self.data}` once first",
                code="bad_credentials",
            )
        path.parent.mkdir(exist_ok=True, mode=0o700)
        check_private(path.parent)
        creds = auth.add_agent(tenant, url=served.served_url(self.data) or "")
        creds.save(path)
        auth.reload()
        return path


def describe(row: TokenRow) -> dict[str, Any]:
    """A row as ``cortex token list`` shows it."""
    out: dict[str, Any] = msgspec.to_builtins(row)
    out.pop("sha256", None)
    return out
