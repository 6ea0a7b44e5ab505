"""Bearer tokens: issued once, kept hashed and private, revocable, bound to one tenant."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest

from cortex.core.keys import create_key
from cortex.doors import OPS, Backend, TokenStore, run
from cortex.doors.testing import Doors
from cortex.doors.tokens import creds_path
from cortex.errors import CortexError, Forbidden
from cortex.nats import Credentials
from cortex.testing import run_cli


def test_issue_verify_revoke_list(doors: Doors, tmp_path: Path) -> None:
    key_file = tmp_path / "ann.key"
    key = create_key(key_file)
    token = doors.tokens.issue("lab", "ann", key_file)
    assert token.startswith("ctx_")
    who = doors.tokens.verify(token)
    assert who is not None and (who.tenant, who.agent) == ("lab", "ann")
    assert who.key is not None and who.key.public_key() == key.public_key()

    other = TokenStore(doors.data)  # a second reader (another server) sees it too
    again = other.verify(token)
    assert again is not None and (again.tenant, again.agent) == (who.tenant, who.agent)
    assert doors.tokens.verify(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert doors.tokens.verify("ctx_0000000000000000_" + "A" * 43) is None
    assert doors.tokens.verify("nonsense") is None

    [row] = doors.tokens.list()
    assert doors.tokens.revoke(row.id)
    assert not doors.tokens.revoke(row.id)
    assert other.verify(token) is None  # re-read on change: revoked without a restart
    assert doors.tokens.list()[0].revoked is not None


def test_only_hashes_are_on_disk_in_a_private_file(doors: Doors) -> None:
    token = doors.tokens.issue("lab", "ann")
    secret = token.split("_", 2)[2]
    text = doors.tokens.path.read_text()
    assert secret not in text and hashlib.sha256(secret.encode()).hexdigest() in text
    assert stat.S_IMODE(doors.tokens.path.stat().st_mode) == 0o600
    creds = creds_path(doors.data, "lab")
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert Credentials.load(creds).tenant == "lab"


async def test_a_token_of_tenant_a_cannot_act_in_tenant_b(doors: Doors) -> None:
    """The principal's tenant picks the client, and that client's credentials are tenant
    a's: NATS itself refuses it b's subjects."""
    a = doors.principal("a", "ann")
    doors.principal("b", "bob")
    stored = await run(OPS["store_fact"], {"content": "a's fact"}, a, doors.backend)
    client = await doors.backend.client("a")
    assert client.tenant == "a"
    with pytest.raises(Forbidden):
        await client.bus.request("cortex.query.b.facts", b"{}", timeout=5)
    with pytest.raises(Forbidden):
        await client.bus.request("cortex.cmd.b.store_fact", b"{}", timeout=5)
    b = doors.tokens.verify(doors.tokens.issue("b", "bob"))
    assert b is not None
    seen = await run(OPS["search_facts"], {"min_seq": stored.seq}, b, doors.backend)  # type: ignore[attr-defined]
    assert seen.items == []  # type: ignore[attr-defined]


async def test_a_backend_refuses_a_tenant_with_no_token(doors: Doors) -> None:
    async with Backend(doors.data, url=doors.server.url) as backend:
        with pytest.raises(CortexError, match="issue a token") as e:
            await backend.client("nobody")
    assert e.value.code == "bad_credentials"


async def test_the_cli_issues_lists_and_revokes(doors: Doors) -> None:
    data = str(doors.data)
    issued = await run_cli("token", "issue", "--agent", "ann", "--tenant", "lab", "--data", data)
    assert issued.code == 0, issued.err
    token = issued.out.strip()
    assert doors.tokens.verify(token) is not None
    listed = await run_cli("token", "list", "--data", data, "--json")
    [row] = listed.json()
    assert row["agent"] == "ann" and "sha256" not in row and token not in listed.out
    revoked = await run_cli("token", "revoke", row["id"], "--data", data)
    assert revoked.code == 0
    assert doors.tokens.verify(token) is None
    again = await run_cli("token", "revoke", row["id"], "--data", data)
    assert again.code == 1
