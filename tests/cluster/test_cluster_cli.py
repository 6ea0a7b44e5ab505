"""`cortex cluster up` and `cortex cluster status` as a user runs them: real processes."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path
from typing import Any

from cortex.nats.auth import PID_FILE
from cortex.testing import run_cli, spawn_cli


def _is_nats_server(pid: int) -> bool:
    try:
        return b"nats-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


async def test_cluster_up_status_and_a_clean_stop(tmp_path: Path) -> None:
    data = tmp_path / "cluster"
    log = tmp_path / "stderr.log"
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("CORTEX_CREDS", None)
    env.pop("CORTEX_NATS_URL", None)
    with log.open("wb") as stderr:
        proc = await spawn_cli(
            "cluster",
            "up",
            "--data",
            str(data),
            "--port",
            "-1",
            "--key",
            str(tmp_path / "writer.key"),
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env=env,
        )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(60):
            line = (await proc.stdout.readline()).decode()
        urls = re.search(r"serving (\S+) ", line)
        assert urls is not None, f"{line!r}; stderr: {log.read_text()[-2000:]}"
        assert len(urls.group(1).split(",")) == 3
        pids = [int((data / f"n{n}" / PID_FILE).read_text()) for n in (1, 2, 3)]
        assert all(_is_nats_server(pid) for pid in pids)

        report: dict[str, Any] = {}
        for _ in range(20):  # each try is a whole `cortex` process: followers catch up
            status = await run_cli("cluster", "status", "--data", str(data), "--json")
            assert status.code == 0, status.err
            report = status.json()
            if report["writer"] and all(r["current"] for r in report["stream"]["replicas"]):
                break
        assert [s["up"] for s in report["servers"]] == [True, True, True]
        assert report["stream"]["leader"].startswith("cortex-n")
        assert len(report["stream"]["replicas"]) == 2
        assert all(r["current"] for r in report["stream"]["replicas"])
        # Exactly one active writer, read live from the lease: a candidate on some node,
        # connected to that node's server.
        writer = report["writer"]
        assert writer["node"] in {s["name"] for s in report["servers"]}
        assert writer["server"] == writer["node"] and writer["since"] > 0
        # Each node answered for itself, at the ledger's end (the writer's key is in it).
        assert all(s["projector"] is not None for s in report["servers"])
        assert all(s["projector"]["following"] for s in report["servers"])
        text = await run_cli("cluster", "status", "--data", str(data))
        assert text.code == 0, text.err
        assert f"active writer: {writer['node']}" in text.out
        assert text.out.count("active") == 2  # its row, and the line naming it

        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await proc.wait() == 0, log.read_text()[-2000:]
        assert not any(_is_nats_server(pid) for pid in pids)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
