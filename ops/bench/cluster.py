"""Cluster benchmark: CORTEX on a three-server R3 JetStream cluster vs plain JetStream.

Run from the repository root::

    python -m ops.bench.cluster [--quick] [--kills N] [--json]

It starts three real nats-servers on loopback and beside each a writer
candidate and a projector (``cortex up`` processes; ``ops.chaos.harness``),
and a scratch R3 stream on the same cluster for plain nats-py publishing:

1. **throughput**: N ``store_fact`` calls through ``cortex.Client`` (many
   outstanding) vs N plain ``js.publish_async`` of a payload of the same size
   to the scratch stream: events (messages) per second.
2. **latency**: the same offered rate, open loop, for both: p50 and p99 from
   each call's scheduled start to its receipt (ack).
3. **failover**: ``--kills`` faults of each kind under a continuous load of
   both CORTEX writes and plain publishes (a new one every 50 ms, each resent
   until acknowledged): kill -9 of the stream leader's server (the scratch
   stream's leadership is moved to the same server first, so one kill fails
   both over), kill -9 of the active writer process (plain JetStream has no
   writer: its engine failover is 0), and SIGTERM of a whole node (writer,
   projector, then server). A kill is measured from the kill to the first
   receipt of a write sent after it; a graceful stop by the longest time
   without any receipt while it stops. After every fault the cluster is
   restored and checked: every acknowledged write in the ledger exactly once,
   a clean audit, every projection at the same position and digest.

It prints the tables and the issue's bars, PASS or FAIL (``--json``: one JSON
object). Plain nats-py on purpose, as in ``ops/bench/write.py``: that is the
engine CORTEX is measured against.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js.api import StorageType, StreamConfig
from nats.js.client import JetStreamContext
from rich.console import Console
from rich.table import Table

from cortex.client import Client, Receipt
from cortex.nats import Credentials
from cortex.nats.cluster import node_name
from ops.bench.common import (
    Bar,
    bars_json,
    bounded,
    cancel_on_sigterm,
    json_fields,
    percentile,
    print_bars,
    run_main,
)
from ops.bench.write import AGENT, _store, event_size
from ops.chaos.harness import ChaosCluster, Fault, fault, load

PLAIN_STREAM: Final = "BENCH_PLAIN_R3"
PLAIN_SUBJECT: Final = "bench.plain.r3"
DEFAULT_EVENTS: Final = 5_000
QUICK_EVENTS: Final = 1_000
DEFAULT_KILLS: Final = 5
QUICK_KILLS: Final = 2
OUTSTANDING: Final = 1_000
LATENCY_RATE: Final = 300.0
LATENCY_SECONDS: Final = 3.0
TICK_S: Final = 0.05
PHASE_S: Final = 120.0
FAULT_S: Final = 120.0
#: The kinds measured, and what the table calls them.
KINDS: Final = {
    "leader": "kill -9 stream leader",
    "writer": "kill -9 writer",
    "stop": "SIGTERM node",
}

# The bars.
MIN_RATIO: Final = 0.40
MAX_ADDED_S: Final = 1.0
MAX_CRASH_S: Final = 10.0
MAX_GRACEFUL_S: Final = 1.0


@dataclass(slots=True)
class Measured:
    kind: str
    victim: int
    cortex_s: float | None
    plain_s: float | None
    ok: bool
    aligned: bool = True


@dataclass(slots=True)
class Report:
    events: int
    event_bytes: int
    kills: int
    cortex_events_s: float = 0.0
    plain_msgs_s: float = 0.0
    ratio: float = 0.0
    cortex_p50_ms: float = math.nan
    cortex_p99_ms: float = math.nan
    plain_p50_ms: float = math.nan
    plain_p99_ms: float = math.nan
    latency_rate: float = LATENCY_RATE
    acked: int = 0
    lost: int = 0
    faults: list[Measured] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)


# -- plain JetStream ----------------------------------------------------------


async def _quiet(_e: Exception) -> None:
    """A server killed under the plain publisher is expected: it reconnects."""


async def _plain_connect(urls: list[str], creds: Credentials) -> NatsClient:
    return await nats.connect(
        urls,
        name="bench-plain",
        error_cb=_quiet,
        nkeys_seed_str=creds.seed,
        inbox_prefix=creds.inbox_prefix,
        reconnect_time_wait=0.05,
        max_reconnect_attempts=-1,
    )


async def _plain_stream(js: JetStreamContext) -> None:
    await js.add_stream(
        StreamConfig(
            name=PLAIN_STREAM,
            subjects=[PLAIN_SUBJECT],
            storage=StorageType.FILE,
            num_replicas=3,
            duplicate_window=120.0,
        )
    )


async def _plain_leader(nc: NatsClient) -> str:
    raw = await nc.request(f"$JS.API.STREAM.INFO.{PLAIN_STREAM}", b"", timeout=2.0)
    info = json.loads(raw.data)
    return str(info.get("cluster", {}).get("leader", ""))


async def align(nc: NatsClient, leader: str, timeout: float = 30.0) -> bool:
    """Move the scratch stream's leadership to ``leader`` (a preferred stepdown), so one
    kill fails both streams over; False if it would not go there in time."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    if await _plain_leader(nc) == leader:
                        return True
                    body = json.dumps({"placement": {"preferred": leader}}).encode()
                    await nc.request(
                        f"$JS.API.STREAM.LEADER.STEPDOWN.{PLAIN_STREAM}", body, timeout=2.0
                    )
                except nats.errors.Error:
                    pass
                await asyncio.sleep(0.2)  # a poll: the new leader is elected meanwhile
    except TimeoutError:
        return False


@dataclass
class PlainLoad:
    """A plain publish every TICK_S, each resent with its msg id until acknowledged."""

    js: JetStreamContext
    payload: bytes
    writes: list[tuple[float, float]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    failed: int = 0

    async def one(self, give_up: float) -> None:
        msg_id, sent = uuid.uuid4().hex, time.monotonic()
        while time.monotonic() < give_up:
            try:
                await self.js.publish(
                    PLAIN_SUBJECT, self.payload, timeout=1.0, headers={"Nats-Msg-Id": msg_id}
                )
                self.writes.append((sent, time.monotonic()))
                return
            except (nats.errors.Error, TimeoutError):
                await asyncio.sleep(0.05)  # a publisher's retry pause
        self.failed += 1

    async def run(self, seconds: float) -> None:
        tasks: set[asyncio.Task[None]] = set()
        deadline = time.monotonic() + seconds
        while not self.stop.is_set() and time.monotonic() < deadline:
            task = asyncio.create_task(self.one(deadline + 30))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            try:
                async with asyncio.timeout(TICK_S):  # pacing, not synchronisation
                    await self.stop.wait()
            except TimeoutError:
                pass
        if tasks:
            await asyncio.gather(*tasks)

    def first_ack_after(self, moment: float) -> float | None:
        after = [acked for sent, acked in self.writes if sent >= moment]
        return min(after) - moment if after else None

    def longest_gap(self, start: float, end: float) -> float:
        times = sorted(a for _, a in self.writes if start <= a <= end)
        edges = [start, *times, end]
        return max(b - a for a, b in itertools.pairwise(edges))


# -- throughput and latency -----------------------------------------------------


async def cortex_throughput(client: Client, events: int) -> tuple[float, dict[uuid.UUID, int]]:
    receipts: list[Receipt | None] = [None] * events
    workers = min(OUTSTANDING, events)

    async def caller(first: int) -> None:
        for i in range(first, events, workers):
            receipts[i] = await _store(client, i)

    started = time.perf_counter()
    await bounded("the CORTEX run", asyncio.gather(*(caller(w) for w in range(workers))), PHASE_S)
    seconds = time.perf_counter() - started
    acked = {r.id: r.seq for r in receipts if r is not None}
    return events / seconds, acked


async def plain_throughput(js: JetStreamContext, events: int, payload: bytes) -> float:
    async def run() -> list[Any]:
        futures = [await js.publish_async(PLAIN_SUBJECT, payload) for _ in range(events)]
        return list(await asyncio.gather(*futures))

    started = time.perf_counter()
    await bounded("plain publishing", run(), PHASE_S)
    return events / (time.perf_counter() - started)


async def open_loop(
    call: Callable[[int], Awaitable[Any]], rate: float, seconds: float
) -> list[float]:
    """Sorted latencies (s) of calls started on a fixed schedule, whatever the others do."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []

    async def one(i: int, scheduled: float) -> None:
        await call(i)
        latencies.append(loop.time() - scheduled)

    tasks = []
    t0 = loop.time() + 0.005
    for i in range(int(rate * seconds)):
        scheduled = t0 + i / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)  # the schedule, not synchronisation
        tasks.append(asyncio.create_task(one(i, scheduled)))
    await bounded("the latency run", asyncio.gather(*tasks), PHASE_S)
    return sorted(latencies)


# -- the run ----------------------------------------------------------------------


async def run(events: int, kills: int, data: Path) -> Report:
    cancel_on_sigterm()
    payload = b"x" * event_size()
    report = Report(events=events, event_bytes=len(payload), kills=kills)
    acked: dict[uuid.UUID, int] = {}
    async with ChaosCluster(data, checkpoint_every=1000) as cluster:
        nc = await _plain_connect(cluster.urls, cluster.admin())
        try:
            js = nc.jetstream(publish_async_max_pending=OUTSTANDING)
            await _plain_stream(js)
            await _throughput(cluster, js, payload, report, acked)
            for kind in KINDS:
                for round_ in range(kills):
                    measured = await bounded(
                        f"the {kind} fault",
                        _one_fault(
                            cluster,
                            nc=nc,
                            js=js,
                            payload=payload,
                            kind=kind,
                            round_=round_,
                            acked=acked,
                        ),
                        FAULT_S,
                    )
                    report.faults.append(measured)
                    print(
                        f"{KINDS[kind]} n{measured.victim}: CORTEX {_ms(measured.cortex_s)} ms, "
                        f"plain {_ms(measured.plain_s)} ms, {'ok' if measured.ok else 'CHECK FAILED'}",
                        file=sys.stderr,
                    )
            final = await cluster.check(acked)
            report.acked = len(acked)
            report.lost = len(final.missing) + len(final.misplaced) + len(final.doubled)
            if not final.ok:
                print(f"final check: {final.problems()}", file=sys.stderr)
        finally:
            await nc.close()
    report.bars = _bars(report)
    return report


async def _throughput(
    cluster: ChaosCluster,
    js: JetStreamContext,
    payload: bytes,
    report: Report,
    acked: dict[uuid.UUID, int],
) -> None:
    async with await Client.connect(cluster.urls, creds=cluster.admin()) as client:
        await client.register_agent(AGENT)
        # Warm-up for both: connections, subscriptions, the streams' first blocks.
        await asyncio.gather(*(_store(client, i) for i in range(200)))
        await asyncio.gather(*[await js.publish_async(PLAIN_SUBJECT, payload) for _ in range(200)])
        report.plain_msgs_s = await plain_throughput(js, report.events, payload)
        report.cortex_events_s, got = await cortex_throughput(client, report.events)
        acked.update(got)
        report.ratio = report.cortex_events_s / report.plain_msgs_s
        cortex = await open_loop(lambda i: _store(client, 10**6 + i), LATENCY_RATE, LATENCY_SECONDS)
        plain = await open_loop(
            lambda i: js.publish(PLAIN_SUBJECT, payload), LATENCY_RATE, LATENCY_SECONDS
        )
    report.cortex_p50_ms, report.cortex_p99_ms = (percentile(cortex, q) * 1000 for q in (50, 99))
    report.plain_p50_ms, report.plain_p99_ms = (percentile(plain, q) * 1000 for q in (50, 99))


async def _one_fault(
    cluster: ChaosCluster,
    *,
    nc: NatsClient,
    js: JetStreamContext,
    payload: bytes,
    kind: str,
    round_: int,
    acked: dict[uuid.UUID, int],
) -> Measured:
    aligned = True
    if kind != "writer":
        async with asyncio.timeout(30):
            leader = await cluster.leader()
        aligned = await align(nc, node_name(leader))
    plain = PlainLoad(js, payload)
    plain_task = asyncio.create_task(plain.run(FAULT_S))
    try:
        async with load(cluster.urls, cluster.admin(), workers=4, seconds=FAULT_S) as running:
            # "stop" hits the node of the stream leader (so the plain stream is hit too).
            done: Fault = await fault(cluster, running, kind, 1 if kind == "stop" else round_)
    finally:
        plain.stop.set()
        await plain_task
    acked.update(running.acked)
    check = await cluster.check(acked)
    if kind == "stop":  # unavailability: the longest time without a receipt
        cortex_s: float | None = done.gap_s
        plain_s: float | None = plain.longest_gap(done.began, done.ended)
    elif kind == "writer":  # no engine fault: plain JetStream publishes on
        cortex_s, plain_s = done.failover_s, 0.0
    else:
        cortex_s, plain_s = done.failover_s, plain.first_ack_after(done.began)
    return Measured(kind, done.victim, cortex_s, plain_s, check.ok, aligned)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:,.0f}"


def _median(values: Sequence[float | None]) -> float:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else math.nan


def _bars(r: Report) -> list[Bar]:
    bars = [Bar("acknowledged writes lost", r.lost, 0, r.lost == 0 and r.acked > 0, "writes")]
    for kind in ("leader", "writer"):
        rows = [f for f in r.faults if f.kind == kind]
        added = _median(
            [
                None if f.cortex_s is None or f.plain_s is None else f.cortex_s - f.plain_s
                for f in rows
            ]
        )
        bars.append(
            Bar(
                f"CORTEX adds to the engine's failover, median ({KINDS[kind]})",
                added,
                MAX_ADDED_S,
                added < MAX_ADDED_S,
                "s",
            )
        )
    crashes = [f.cortex_s for f in r.faults if f.kind in ("leader", "writer")]
    worst = max((c if c is not None else math.inf for c in crashes), default=math.nan)
    bars.append(Bar("every crash failover", worst, MAX_CRASH_S, worst < MAX_CRASH_S, "s"))
    stops = [f.cortex_s for f in r.faults if f.kind == "stop"]
    worst_stop = max((c if c is not None else math.inf for c in stops), default=math.nan)
    bars.append(
        Bar(
            "graceful stop, write unavailability (max)",
            worst_stop,
            MAX_GRACEFUL_S,
            worst_stop < MAX_GRACEFUL_S,
            "s",
        )
    )
    bars.append(
        Bar("cluster writer / plain R3 publish", r.ratio, MIN_RATIO, r.ratio >= MIN_RATIO, "ratio")
    )
    return bars


def _measured(b: Bar) -> str:
    if b.unit == "s":
        return f"{b.value:.2f} s (bar {b.threshold:g} s)"
    if b.unit == "ratio":
        return f"{b.value:.2f} (bar >= {b.threshold:.2f})"
    return f"{b.value:g} {b.unit}"


def print_table(r: Report, console: Console) -> None:
    t = Table(title=f"3-node R3 cluster: {r.events:,} writes of {r.event_bytes} bytes")
    for name in ("", "writes/s", f"p50 ms @{r.latency_rate:g}/s", f"p99 ms @{r.latency_rate:g}/s"):
        t.add_column(name, justify="right" if name else "left")
    t.add_row(
        "plain JetStream publish (R3)",
        f"{r.plain_msgs_s:,.0f}",
        f"{r.plain_p50_ms:.1f}",
        f"{r.plain_p99_ms:.1f}",
    )
    t.add_row(
        "CORTEX writer (R3)",
        f"{r.cortex_events_s:,.0f}",
        f"{r.cortex_p50_ms:.1f}",
        f"{r.cortex_p99_ms:.1f}",
    )
    console.print(t)
    f = Table(title="failover: time to the first acknowledged write (SIGTERM: longest gap)")
    for name in (
        "fault",
        "runs",
        "CORTEX median ms",
        "CORTEX max ms",
        "plain median ms",
        "plain max ms",
        "checks",
    ):
        f.add_column(name, justify="left" if name == "fault" else "right")
    for kind, label in KINDS.items():
        rows = [m for m in r.faults if m.kind == kind]
        if not rows:
            continue
        cortex = [m.cortex_s for m in rows if m.cortex_s is not None]
        plain = [m.plain_s for m in rows if m.plain_s is not None]
        f.add_row(
            label,
            str(len(rows)),
            _ms(_median(cortex)),
            _ms(max(cortex, default=None)),
            _ms(_median(plain)) if kind != "writer" else "0 (no engine fault)",
            _ms(max(plain, default=None)) if kind != "writer" else "-",
            "all ok" if all(m.ok for m in rows) else "FAILED",
        )
    console.print(f)
    each = Table(title="each fault (ms)")
    for name in ("fault", "victim", "CORTEX", "plain", "same leader", "check"):
        each.add_column(name, justify="left" if name == "fault" else "right")
    for m in r.faults:
        each.add_row(
            KINDS[m.kind],
            f"n{m.victim}",
            _ms(m.cortex_s),
            _ms(m.plain_s),
            "yes" if m.aligned else "no",
            "ok" if m.ok else "FAILED",
        )
    console.print(each)
    print_bars(console, r.bars, _measured)


def to_json(r: Report) -> dict[str, Any]:
    doc = json_fields(r, exclude=("faults", "bars"))
    doc["faults"] = [json_fields(m) for m in r.faults]
    doc["bars"] = bars_json(r.bars)
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ops.bench.cluster", description=(__doc__ or "").split("\n")[0]
    )
    p.add_argument(
        "--events",
        type=int,
        help=f"writes per throughput run (default {DEFAULT_EVENTS:,}; --quick {QUICK_EVENTS:,})",
    )
    p.add_argument(
        "--kills",
        type=int,
        help=f"faults of each kind (default {DEFAULT_KILLS}; --quick {QUICK_KILLS})",
    )
    p.add_argument("--quick", action="store_true", help="fewer writes and faults: a smoke run")
    p.add_argument("--json", action="store_true", help="print one JSON object and nothing else")
    args = p.parse_args(argv)
    events = args.events or (QUICK_EVENTS if args.quick else DEFAULT_EVENTS)
    kills = args.kills or (QUICK_KILLS if args.quick else DEFAULT_KILLS)
    if events < 1 or kills < 1:
        p.error("--events and --kills must be at least 1")

    def measure() -> Report:
        data = Path(tempfile.mkdtemp(prefix="cortex-bench-cluster-"))
        try:
            return asyncio.run(run(events, kills, data))
        finally:
            shutil.rmtree(data, ignore_errors=True)

    return run_main(measure, as_json=args.json, to_json=to_json, print_table=print_table, width=120)


if __name__ == "__main__":
    sys.exit(main())
