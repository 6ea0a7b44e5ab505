"""Credentials: private files, no secret in any log, error or output, and agents added to
a running server without a restart."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import AsAdmin

from cortex.client import Client
from cortex.errors import CredentialsError
from cortex.nats import Credentials, EmbeddedServer, LocalAuth, Role
from cortex.nats.permissions import QUERY_PREFIX, QUERY_QUEUE, WRITER_QUEUE, roles_table
from cortex.node import QUERY_PREFIX as NODE_QUERY_PREFIX
from cortex.node import QUEUE_GROUP as NODE_QUEUE
from cortex.testing import cortex_up, run_cli
from cortex.writer import QUEUE_GROUP as WRITER_GROUP

#: An nkey user seed, as it would show if it leaked.
SEED = re.compile(r"SU[A-Z2-7]{56}")


def _seeds_in(folder: Path) -> list[str]:
    return [
        str(p) for p in folder.rglob("*") if p.is_file() and SEED.search(p.read_text("latin-1"))
    ]


def test_the_permission_table_names_the_groups_and_subjects_the_roles_use() -> None:
    assert (WRITER_QUEUE, QUERY_QUEUE, QUERY_PREFIX) == (
        WRITER_GROUP,
        NODE_QUEUE,
        NODE_QUERY_PREFIX,
    )


def test_credentials_files_are_private_and_never_shown(tmp_path: Path) -> None:
    """0600 from the first byte, in a 0700 folder; the seed is in no repr, and a
    damaged file's error does not quote it."""
    auth = LocalAuth(tmp_path / "data")
    auth.ensure()
    assert auth.folder.stat().st_mode & 0o777 == 0o700
    for role in (Role.ADMIN, Role.WRITER, Role.NODE):
        assert auth.path(role).stat().st_mode & 0o777 == 0o600
    admin = auth.credentials(Role.ADMIN)
    assert admin.seed not in repr(admin)
    assert admin.public_key.startswith("U")
    damaged = tmp_path / "damaged.creds"
    damaged.write_text('{"role": "nobody", "seed": "' + admin.seed + '"}')
    damaged.chmod(0o600)
    with pytest.raises(CredentialsError) as e:
        Credentials.load(damaged)
    assert e.value.code == "bad_credentials"
    assert admin.seed not in str(e.value)
    with pytest.raises(CredentialsError, match="never overwritten"):
        admin.save(auth.path(Role.ADMIN))


async def test_a_server_refuses_to_start_with_secrets_others_can_read(tmp_path: Path) -> None:
    """Whoever reads a seed is that user: a group- or world-readable credentials file
    (or writer key, or folder) stops the start, naming the file and the fix."""
    data = tmp_path / "data"
    auth = LocalAuth(data)
    auth.ensure()
    auth.path(Role.WRITER).chmod(0o640)
    with pytest.raises(CredentialsError) as e:
        await EmbeddedServer(data, port=-1).start()
    assert e.value.code == "insecure_permissions"
    assert "writer.creds" in e.value.message
    assert "chmod 600" in e.value.message
    auth.path(Role.WRITER).chmod(0o600)
    auth.folder.chmod(0o755)
    with pytest.raises(CredentialsError, match="chmod 700"):
        await EmbeddedServer(data, port=-1).start()


async def test_the_servers_configuration_holds_public_keys_only(server: EmbeddedServer) -> None:
    """nkeys: the server's configuration names users by public key; no seed is in any
    configuration file, and agent seeds are not kept in the data folder at all."""
    agent = server.auth.add_agent("lab")
    config = (server.data_dir / "auth" / "users.conf").read_text()
    assert server.credentials(Role.WRITER).public_key in config
    assert agent.public_key in config
    assert not SEED.search(config)
    assert not SEED.search((server.data_dir / "nats-server.conf").read_text())
    assert agent.seed not in (server.data_dir / "auth" / "agents.json").read_text()


async def test_tenant_add_admits_an_agent_to_a_running_server_without_a_restart(
    tmp_path: Path, as_admin: AsAdmin
) -> None:
    """`cortex tenant add` beside `cortex up`: the server reloads its users (SIGHUP) and
    the new credentials work when the command returns; the agent's commands run in its
    tenant with `--creds` alone. No seed shows in any output or log."""
    data = tmp_path / "data"
    as_admin(data)
    creds_file = tmp_path / "lab.creds"
    async with cortex_up(data) as up:
        issued = await run_cli(
            "tenant", "add", "lab", "--data", str(data), "--out", str(creds_file), "--json"
        )
        assert issued.code == 0, issued.err
        done = issued.json()
        assert done["reloaded"] is True
        assert done["server"] == up.url
        assert creds_file.stat().st_mode & 0o777 == 0o600
        creds = Credentials.load(creds_file)
        assert (creds.role, creds.tenant, creds.url) == (Role.AGENT, "lab", up.url)

        # Away from the data folder: the credentials file says who and where.
        added = await run_cli("agent", "add", "ada", "--creds", str(creds_file), "--json")
        assert added.code == 0, added.err
        stored = await run_cli(
            "fact", "add", "a lab fact", "--agent", "ada", "--creds", str(creds_file), "--json"
        )
        assert stored.code == 0, stored.err
        wrong = await run_cli("facts", "--tenant", "other", "--creds", str(creds_file), "--json")
        assert wrong.code == 1
        assert wrong.json()["error"]["code"] == "wrong_tenant"
        async with await Client.connect(creds=creds_file) as lab:
            assert lab.tenant == "lab"
            facts = await lab.facts(min_seq=stored.json()["seq"])
        assert [f["content"] for f in facts] == ["a lab fact"]
        assert await up.stop() == 0
        outputs = issued.out + issued.err + added.out + stored.out + wrong.out + up.err()
    assert creds.seed not in outputs
    assert not SEED.search(outputs)
    # The folder keeps its own three seeds and no agent's.
    assert sorted(_seeds_in(data / "auth")) == [
        str(data / "auth" / f"{r}.creds") for r in ("admin", "node", "writer")
    ]


async def test_the_cli_uses_the_data_folders_own_credentials_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the folder where `cortex up` runs, commands need no set-up: they find its
    server (nats.url) and its admin credentials."""
    data = tmp_path / "data"
    monkeypatch.delenv("CORTEX_CREDS", raising=False)
    async with cortex_up(data):
        added = await run_cli("agent", "add", "ada", "--data", str(data), "--json")
        assert added.code == 0, added.err
        listed = await run_cli("agents", "--data", str(data), "--json", "--min-seq", "2")
        assert [a["agent_id"] for a in listed.json()["items"]] == ["ada"]


def test_the_external_server_snippet_is_the_permission_table() -> None:
    """ops/nats-auth.conf, what an operator of an external server copies, is exactly
    what the embedded server is given (for placeholder keys)."""
    snippet = Path(__file__).parents[2] / "ops" / "nats-auth.conf"
    assert snippet.read_text().endswith(roles_table())
