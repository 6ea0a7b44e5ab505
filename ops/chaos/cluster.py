"""Longer chaos runs on a real three-server CORTEX cluster on loopback.

Run from the repository root::

    python -m ops.chaos.cluster [--kind leader|writer|node|stop] [--kills N] [--seconds S]

Starts three nats-servers and beside each a writer candidate and a projector
(``cortex up`` processes) in a temporary folder, runs a bounded write load
(a few ``cortex.Client`` writers plus a new write every 50 ms), and inflicts
``--kills`` faults of ``--kind`` one after the other, restoring the cluster
after each. After every fault it checks that every acknowledged write is in
the ledger exactly once, the audit is clean, and every node's projection
reaches the ledger's end with the same digest. It prints one row per fault
and exits 0 when every check held, 1 when one did not, 2 when it could not run.
It stops by itself: the load after ``--seconds``, everything within
``--seconds`` plus a bounded margin.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import structlog
from rich.console import Console
from rich.table import Table

from ops.chaos.harness import KIND_HELP, KINDS, ChaosCluster, Fault, fault, load

#: Per fault: the kill, the failover, the restart and the checks.
FAULT_BUDGET_S = 90.0


async def run(kind: str, kills: int, seconds: float, workers: int, data: Path) -> list[Fault]:
    faults: list[Fault] = []
    acked: dict[uuid.UUID, int] = {}  # every receipt of the run, checked after every fault
    async with ChaosCluster(data) as cluster:
        started = time.monotonic()
        for round_ in range(kills):
            left = seconds - (time.monotonic() - started)
            if left <= 0:
                break
            async with load(
                cluster.urls, cluster.admin(), workers=workers, seconds=left
            ) as running:
                async with asyncio.timeout(FAULT_BUDGET_S):
                    done = await fault(cluster, running, kind, round_)
            acked.update(running.acked)
            done.check = await cluster.check(acked)
            faults.append(done)
            print(_row_text(len(faults), done), file=sys.stderr)
    return faults


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:,.0f}"


def _row_text(i: int, f: Fault) -> str:
    ok = "ok" if f.check is not None and f.check.ok else "FAILED"
    return f"fault {i}: {f.kind} n{f.victim}: first ack {_ms(f.failover_s)} ms, {ok}"


def table(faults: list[Fault], kind: str) -> Table:
    t = Table(title=f"chaos: {KIND_HELP[kind]}")
    for name in (
        "#",
        "victim",
        "first ack after (ms)",
        "longest gap (ms)",
        "acked",
        "ledger",
        "lost",
        "doubled",
        "audit",
        "projections",
    ):
        t.add_column(name, justify="right")
    for i, f in enumerate(faults, 1):
        c = f.check
        assert c is not None
        t.add_row(
            str(i),
            f"n{f.victim}",
            _ms(f.failover_s),
            _ms(f.gap_s),
            str(c.acked),
            str(c.ledger_events),
            str(len(c.missing) + len(c.misplaced)),
            str(len(c.doubled)),
            "clean" if not c.violations else f"{len(c.violations)} violations",
            "same digest" if c.converged else "DIVERGED",
        )
    times = [f.failover_s for f in faults if f.failover_s is not None]
    if times:
        t.caption = (
            f"first ack after the fault: median {statistics.median(times) * 1000:,.0f} ms, "
            f"max {max(times) * 1000:,.0f} ms over {len(times)} faults"
        )
    return t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ops.chaos.cluster", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--kind",
        choices=KINDS,
        default="leader",
        help="; ".join(f"{k}: {v}" for k, v in KIND_HELP.items()),
    )
    p.add_argument("--kills", type=int, default=5, help="faults to inflict, one after the other")
    p.add_argument(
        "--seconds", type=float, default=300.0, help="stop starting faults after this long"
    )
    p.add_argument(
        "--workers", type=int, default=4, help="concurrent writers besides the 50 ms ticker"
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    args = p.parse_args(argv)
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    data = Path(tempfile.mkdtemp(prefix="cortex-chaos-"))
    limit = args.seconds + args.kills * FAULT_BUDGET_S + 120
    try:
        faults = asyncio.run(
            _bounded(run(args.kind, args.kills, args.seconds, args.workers, data), limit)
        )
    except (TimeoutError, Exception) as e:
        print(f"chaos run failed: {e!r} (logs in {data})", file=sys.stderr)
        return 2
    finally:
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)
    Console(highlight=False, width=None if sys.stdout.isatty() else 140).print(
        table(faults, args.kind)
    )
    return 0 if all(f.check is not None and f.check.ok for f in faults) else 1


async def _bounded(work: object, limit: float) -> list[Fault]:
    async with asyncio.timeout(limit):
        return await work  # type: ignore[misc,no-any-return]


if __name__ == "__main__":
    sys.exit(main())
