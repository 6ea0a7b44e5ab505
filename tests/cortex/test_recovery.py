"""The recovery commands (log, audit, replay) work with nothing running, and never beside
a live `cortex up` on its own store."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from conftest import AsAdmin

from cortex import served
from cortex.client import Client
from cortex.runtime import Runtime
from cortex.testing import cortex_up, run_cli


async def _told(url: str) -> int:
    async with await Client.connect(url, tenant="lab") as client:
        await client.register_agent("ada")
        receipt = await client.store_fact("ada", "Water boils at 100 °C")
    return receipt.seq


async def test_after_cortex_up_exits_log_audit_and_replay_start_the_server_themselves(
    tmp_path: Path, as_admin: AsAdmin
) -> None:
    """What ledger_mismatch and chain_break advise must be runnable once `cortex up` is gone
    (it took its embedded server with it): before, each failed with `unavailable`."""
    data = tmp_path / "data"
    as_admin(data)  # for the client; the commands find the folder's credentials themselves
    async with cortex_up(data) as up:
        last = await _told(up.url)
        assert await up.stop() == 0

    log = await run_cli("log", "--data", str(data), "--json")
    assert log.code == 0, log.err
    # The clean stop covered the tail with a checkpoint, one event after the last told.
    assert [json.loads(line)["seq"] for line in log.out.splitlines()][-1] == last + 1

    db = data / "projection.db"
    audit = await run_cli("audit", "--db", str(db), "--json")  # the data folder: the db's
    assert audit.code == 0, audit.err + audit.out
    assert audit.json()["projections"][0]["ok"] is True

    replayed = await run_cli("replay", "--db", str(db), "--json")
    assert replayed.code == 0, replayed.err
    assert replayed.json()["seq"] == last + 1
    assert not (data / served.URL_FILE).exists()  # the server it started is gone again


async def test_beside_a_live_owner_they_use_its_server_and_replay_refuses_its_database(
    tmp_path: Path, as_admin: AsAdmin
) -> None:
    data = tmp_path / "data"
    as_admin(data)
    async with Runtime(name="test") as owner:  # holds the data folder's lock, as cortex up
        url = await owner.serve(data, port=-1)
        await owner.add_writer()
        served.announce(data, url)
        last = await _told(url)

        log = await run_cli("log", "--data", str(data), "--json")
        assert log.code == 0, log.err
        assert len(log.out.splitlines()) == last

        run = await run_cli("replay", "--db", str(data / "projection.db"))
        assert run.code == 1
        assert "error [data_locked]" in run.err
        assert "cortex replay --db" in run.err
        assert not (data / "projection.db").exists()

        elsewhere = await run_cli("replay", "--data", str(data), "--db", str(tmp_path / "x.db"))
        assert elsewhere.code == 0, elsewhere.err


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def test_with_no_ledger_anywhere_the_error_says_what_to_run(tmp_path: Path) -> None:
    if _listening(4222):
        pytest.skip("something listens on the default port")
    run = await run_cli("log", "--data", str(tmp_path / "nothing"))
    assert run.code == 1
    assert "error [unavailable]" in run.err
    assert "cortex log --data DIR" in " ".join(run.err.split())
