"""Write benchmark: what the CORTEX ledger writer costs over plain JetStream.

Run from the repository root::

    python -m ops.bench.write [--events N] [--json]

For each durability mode (``safe``: nats-server ``sync_interval: always``;
``fast``: the lazy ``sync_interval: 2m``) it starts a fresh embedded
nats-server in a temporary folder (loopback, a free port) and measures:

1. **baseline** - N messages the size of an encoded fact event, published
   with plain nats-py ``js.publish_async`` (4,000 pending acks at most) to a
   plain file-storage stream, until every ack is back: messages per second.
2. **writer** - the real writer in its own process (``cortex up --nats``),
   one registered agent, then the same N ``store_fact`` commands sent
   concurrently through ``cortex.client.Client`` (which batches them), until
   every receipt is back: events per second. Every receipt is checked (no
   error, unique seqs) and the stream must hold exactly what was acknowledged.
3. **latency** - 5,000 ``store_fact`` calls per second offered open-loop for
   three seconds: each call starts on its schedule whatever the earlier ones
   do, and its latency runs from that scheduled start to its receipt.

It prints one row per mode and the issue's bars, each PASS or FAIL (with
``--json``, one JSON object holding the same figures and nothing else).

Why ratios and not only absolute numbers: server, writer and benchmark
share the same few cores, and absolute rates move with the machine, its
disk (fsync dominates ``safe``) and whatever else runs on it. The baseline
is measured in the same run, on the same server and disk, with a payload of
the same size, so ``writer / baseline`` says what CORTEX itself costs
(validation, hashing, atomic batches, request/reply) on any machine. The
absolute bars are those of the issue and are meant for comparable hardware.
In ``safe`` mode plain JetStream pays one fsync per message and the writer
one per atomic batch, so there the ratio can well exceed 1.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import nats
import nats.errors
from nats.js.api import StorageType, StreamConfig
from rich.console import Console
from rich.table import Table

from cortex.client import Client, Receipt, new_id
from cortex.errors import Unavailable
from cortex.nats import (
    LEDGER_PREFIX,
    Bus,
    Credentials,
    Durability,
    EmbeddedServer,
    LocalAuth,
    Role,
)
from events.codec import encode
from events.commands import StoreFact, to_event
from events.model import SYSTEM_TENANT
from ops.bench.common import (
    Bar,
    BenchError,
    CortexUp,
    bounded,
    cancel_on_sigterm,
    json_fields,
    parser,
    percentile,
    print_bars,
    run_main,
    stopped_after,
    verdict_json,
)

DEFAULT_EVENTS: Final = 50_000
#: Plain JetStream: most acks outstanding at once (nats-py's default, stated).
BASELINE_PENDING: Final = 4_000
#: Writer run: most store_fact calls outstanding at once.
WRITER_OUTSTANDING: Final = 4_000
LATENCY_RATE: Final = 5_000.0
LATENCY_SECONDS: Final = 3.0

# The bars.
MIN_RATIO: Final = 0.40
MIN_FAST_EVENTS_S: Final = 20_000.0
MIN_SAFE_EVENTS_S: Final = 10_000.0
MAX_P99_MS: Final = 20.0

TENANT: Final = "bench"
AGENT: Final = "bench-agent"
#: A fact like an agent would store; its encoded event is about 390 bytes.
FACT_TAGS: Final = ("physics",)
FACT_CONFIDENCE: Final = 0.9
FACT_SOURCE: Final = "bench"
BASELINE_STREAM: Final = "BENCH_PLAIN"
BASELINE_SUBJECT: Final = "bench.plain"

#: Bounds so the benchmark always stops by itself.
SERVER_START_S: Final = 20.0
WRITER_START_S: Final = 30.0
WRITER_STOP_S: Final = 15.0
PHASE_S: Final = 120.0
LATENCY_DRAIN_S: Final = 30.0


@dataclass(slots=True)
class ModeResult:
    mode: str
    baseline_msgs_s: float = 0.0
    writer_events_s: float = 0.0
    ratio: float = 0.0
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    latency_offered_s: float = LATENCY_RATE
    latency_achieved_s: float = 0.0
    latency_requests: int = 0
    latency_errors: int = 0
    baseline_seconds: float = 0.0
    writer_seconds: float = 0.0
    ledger_events: int = 0


@dataclass(slots=True)
class Report:
    events: int
    event_bytes: int
    cpus: int
    modes: list[ModeResult] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)


# -- helpers ----------------------------------------------------------------


def _content(i: int) -> str:
    return f"Fact {i:07d}: water boils at 100 C at sea level, less on a mountain."


def _meta(i: int) -> dict[str, Any]:
    return {"i": i}


def event_size() -> int:
    """Bytes of one encoded fact event as the benchmark stores it."""
    command = StoreFact(
        id=new_id(),
        fact_id=new_id(),
        agent_id=AGENT,
        content=_content(0),
        tags=FACT_TAGS,
        confidence=FACT_CONFIDENCE,
        source=FACT_SOURCE,
        meta=_meta(0),
    )
    return len(encode(to_event(command, tenant=TENANT, ts=time.time_ns())))


def _store(client: Client, i: int) -> Awaitable[Receipt]:
    return client.store_fact(
        AGENT,
        _content(i),
        tags=FACT_TAGS,
        confidence=FACT_CONFIDENCE,
        source=FACT_SOURCE,
        meta=_meta(i),
    )


# -- 1. plain JetStream -----------------------------------------------------


async def bench_baseline(
    url: str, events: int, payload: bytes, creds: Credentials
) -> tuple[float, float]:
    """(msgs/s, seconds) for ``events`` plain async publishes to a file stream.

    Plain nats-py on purpose, the one place outside ``cortex.nats`` that
    imports it: this is the floor the writer is measured against.
    """
    try:
        return await _baseline(url, events, payload, creds)
    except nats.errors.Error as e:  # e.g. stalled: cancelled while waiting for acks
        raise BenchError(f"plain JetStream publishing failed: {e}") from e


async def _baseline(
    url: str, events: int, payload: bytes, creds: Credentials
) -> tuple[float, float]:
    nc = await nats.connect(
        url, name="bench-baseline", nkeys_seed_str=creds.seed, inbox_prefix=creds.inbox_prefix
    )
    try:
        js = nc.jetstream(publish_async_max_pending=BASELINE_PENDING)
        await js.add_stream(
            StreamConfig(
                name=BASELINE_STREAM, subjects=[BASELINE_SUBJECT], storage=StorageType.FILE
            )
        )
        # Warm-up: the connection, the inbox subscription, the stream's first block.
        warm = [await js.publish_async(BASELINE_SUBJECT, payload) for _ in range(200)]
        await asyncio.gather(*warm)

        async def run() -> list[Any]:
            futures = [await js.publish_async(BASELINE_SUBJECT, payload) for _ in range(events)]
            return list(await asyncio.gather(*futures, return_exceptions=True))

        started = time.perf_counter()
        acks = await bounded("plain JetStream publishing", run(), PHASE_S)
        seconds = time.perf_counter() - started
        failed = [a for a in acks if isinstance(a, BaseException)]
        if failed:
            raise BenchError(f"{len(failed)} plain JetStream publishes failed: {failed[0]!r}")
        info = await js.stream_info(BASELINE_STREAM)
        if info.state.messages != events + len(warm):
            raise BenchError(
                f"plain stream holds {info.state.messages} msgs, expected {events + len(warm)}"
            )
        await js.delete_stream(BASELINE_STREAM)  # keep the disk to the writer alone
        return events / seconds, seconds
    finally:
        await nc.close()


# -- 2. the writer in its own process ---------------------------------------


def writer_process(url: str, log_path: Path, creds: Path) -> CortexUp:
    """``cortex up --nats URL --role writer --creds WRITER`` as a child process."""
    return CortexUp(
        "the writer",
        [
            "--nats",
            url,
            "--role",
            "writer",
            "--data",
            str(log_path.parent / "writer-data"),
            "--creds",
            str(creds),
            # The run's own key, in its temporary folder: no key left behind in ~/.config.
            "--key",
            str(log_path.parent / "writer.key"),
        ],
        log_path,
        start_s=WRITER_START_S,
        stop_s=WRITER_STOP_S,
    )


async def bench_writer(client: Client, events: int) -> tuple[float, float, list[int]]:
    """(events/s, seconds, seqs) for ``events`` store_fact calls, WRITER_OUTSTANDING at once.

    WRITER_OUTSTANDING callers each make their share of the calls one after
    the other, so the window stays full without a task per call (which would
    bill the benchmark's own bookkeeping to the client).
    """
    receipts: list[Receipt | BaseException] = [ValueError("no answer")] * events
    workers = min(WRITER_OUTSTANDING, events)

    async def caller(first: int) -> None:
        for i in range(first, events, workers):
            try:
                receipts[i] = await _store(client, i)
            except Exception as e:
                receipts[i] = e

    async def run() -> None:
        await asyncio.gather(*(caller(w) for w in range(workers)))

    started = time.perf_counter()
    await bounded("the writer run", run(), PHASE_S)
    seconds = time.perf_counter() - started
    failed = [r for r in receipts if isinstance(r, BaseException)]
    if failed:
        raise BenchError(f"{len(failed)} of {events} store_fact calls failed: {failed[0]!r}")
    seqs = [r.seq for r in receipts if isinstance(r, Receipt)]
    if len(set(seqs)) != len(seqs):
        raise BenchError(f"receipts repeat seqs: {len(seqs) - len(set(seqs))} duplicates")
    return events / seconds, seconds, seqs


# -- 3. latency at a fixed offered rate -------------------------------------


@dataclass(slots=True)
class Latency:
    p50_ms: float
    p99_ms: float
    achieved_s: float
    requests: int
    errors: int
    seqs: list[int]


async def bench_latency(client: Client, *, rate: float, seconds: float, first: int) -> Latency:
    """Open loop: call ``i`` starts at ``t0 + i / rate`` whatever the others do."""
    loop = asyncio.get_running_loop()
    count = int(rate * seconds)
    latencies: list[float] = []
    seqs: list[int] = []
    errors = 0
    last_done = 0.0

    async def one(i: int, scheduled: float) -> None:
        nonlocal errors, last_done
        try:
            receipt = await _store(client, first + i)
        except Exception:
            errors += 1
            return
        done = loop.time()
        last_done = max(last_done, done)
        latencies.append(done - scheduled)
        seqs.append(receipt.seq)

    tasks: list[asyncio.Task[None]] = []
    t0 = loop.time() + 0.005
    for i in range(count):
        scheduled = t0 + i / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, scheduled)))
    _, pending = await asyncio.wait(tasks, timeout=LATENCY_DRAIN_S)
    for task in pending:  # bounded: what did not answer in time counts as an error
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
        errors += len(pending)
    latencies.sort()
    span = last_done - t0
    return Latency(
        p50_ms=percentile(latencies, 50) * 1000.0,
        p99_ms=percentile(latencies, 99) * 1000.0,
        achieved_s=len(latencies) / span if span > 0 else 0.0,
        requests=count,
        errors=errors,
        seqs=seqs,
    )


# -- one mode ---------------------------------------------------------------


_OWN_SUBJECTS: Final = f"{LEDGER_PREFIX}.{SYSTEM_TENANT}."


async def _check_ledger(url: str, seqs: Sequence[int], admin: Credentials) -> int:
    """The ledger's length; besides the writer's own events (its key, its
    checkpoints) it must hold exactly the receipted events, once each."""
    if len(set(seqs)) != len(seqs):
        raise BenchError(
            f"receipts of the run repeat seqs: {len(seqs) - len(set(seqs))} duplicates"
        )
    bus = await Bus.connect(url, name="bench-check", creds=admin)
    try:
        last = await bus.last_seq()
        agents = {s.seq async for s in bus.read(1, last) if not s.subject.startswith(_OWN_SUBJECTS)}
    finally:
        await bus.close()
    if agents != set(seqs):
        raise BenchError(
            f"the ledger holds {len(agents)} agents' events (of {last}) but "
            f"{len(seqs)} were receipted"
        )
    return last


async def _register(client: Client) -> Receipt:
    """Register the agent, riding out the writer's subscription reaching the server.

    ``cortex up`` prints its ready line before its subscription is known to
    nats-server, so the very first request can meet "no responders".
    """
    deadline = time.monotonic() + WRITER_START_S
    while True:
        try:
            return await client.register_agent(AGENT)
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def _measure_writer(
    url: str, events: int, result: ModeResult, server: EmbeddedServer, agent: Credentials
) -> None:
    """Phases 2 and 3 against a running writer process, as an agent of TENANT."""
    async with await Client.connect(url, creds=agent) as client:
        seqs = [(await _register(client)).seq]
        # Warm-up, not measured: connections, the stream's first block, caches.
        warm = await asyncio.gather(*(_store(client, -1 - i) for i in range(500)))
        seqs += [r.seq for r in warm]
        result.writer_events_s, result.writer_seconds, run_seqs = await bench_writer(client, events)
        seqs += run_seqs
        latency = await bench_latency(
            client, rate=LATENCY_RATE, seconds=LATENCY_SECONDS, first=events
        )
        seqs += latency.seqs
    result.p50_ms, result.p99_ms = latency.p50_ms, latency.p99_ms
    result.latency_achieved_s = latency.achieved_s
    result.latency_requests, result.latency_errors = latency.requests, latency.errors
    result.ledger_events = await _check_ledger(url, seqs, server.credentials(Role.ADMIN))


async def bench_mode(durability: Durability, events: int, payload: bytes) -> ModeResult:
    """All three measurements on a fresh server and writer, in a temp dir removed after."""
    result = ModeResult(durability.value)
    with tempfile.TemporaryDirectory(
        prefix=f"cortex-bench-{durability.value}-", ignore_cleanup_errors=True
    ) as tmp:
        root = Path(tmp)
        # Authentication on, as `cortex up` runs: the writer, the agent and the
        # baseline's publisher each connect with their own nkey credentials.
        agent = LocalAuth(root / "data").add_agent(TENANT)
        server = EmbeddedServer(root / "data", port=-1, durability=durability)
        url = await server.start(timeout=SERVER_START_S)
        writer = writer_process(url, root / "writer.log", server.auth.path(Role.WRITER))
        async with stopped_after(
            writer,
            server,
            log_label=f"writer log ({durability.value})",
            name=f"the {durability.value} writer",
        ):
            result.baseline_msgs_s, result.baseline_seconds = await bench_baseline(
                url, events, payload, server.credentials(Role.ADMIN)
            )
            await writer.start()
            await _measure_writer(url, events, result, server, agent)
            result.ratio = result.writer_events_s / result.baseline_msgs_s
    return result


def judge(modes: Sequence[ModeResult]) -> list[Bar]:
    bars: list[Bar] = []
    for m in modes:
        bars.append(
            Bar(
                "writer >= 40% of plain JetStream",
                m.ratio,
                MIN_RATIO,
                m.ratio >= MIN_RATIO,
                mode=m.mode,
            )
        )
    for m in modes:
        floor = MIN_FAST_EVENTS_S if m.mode == Durability.FAST.value else MIN_SAFE_EVENTS_S
        bars.append(
            Bar(
                f">= {floor:,.0f} events/s",
                m.writer_events_s,
                floor,
                m.writer_events_s >= floor,
                mode=m.mode,
            )
        )
    for m in modes:
        ok = m.p99_ms < MAX_P99_MS and m.latency_errors == 0
        bars.append(
            Bar(
                f"p99 < {MAX_P99_MS:.0f} ms at {LATENCY_RATE:,.0f} req/s",
                m.p99_ms,
                MAX_P99_MS,
                ok,
                mode=m.mode,
            )
        )
    return bars


async def run(events: int) -> Report:
    """Both modes, one after the other; SIGTERM stops the run cleanly (children too)."""
    cancel_on_sigterm()
    payload_size = event_size()
    # The baseline publishes opaque bytes of an encoded fact event's size.
    payload = b"x" * payload_size
    report = Report(events=events, event_bytes=payload_size, cpus=os.cpu_count() or 0)
    for durability in (Durability.SAFE, Durability.FAST):
        report.modes.append(await bench_mode(durability, events, payload))
    report.bars = judge(report.modes)
    return report


# -- output -----------------------------------------------------------------


def to_json(report: Report) -> dict[str, Any]:
    modes = {m.mode: json_fields(m, exclude=("mode",)) for m in report.modes}
    return {
        "events": report.events,
        "event_bytes": report.event_bytes,
        "cpus": report.cpus,
        "latency": {"offered_per_s": LATENCY_RATE, "seconds": LATENCY_SECONDS},
        "modes": modes,
        **verdict_json(report.bars),
    }


def print_table(report: Report, console: Console) -> None:
    table = Table(
        title=(
            f"CORTEX write benchmark: {report.events:,} events of {report.event_bytes} B, "
            f"{report.cpus} CPUs"
        )
    )
    for name in (
        "mode",
        "baseline msgs/s",
        "writer events/s",
        "writer/baseline",
        "p50 ms",
        "p99 ms",
        "achieved req/s",
    ):
        table.add_column(name, justify="left" if name == "mode" else "right", no_wrap=True)
    for m in report.modes:
        table.add_row(
            m.mode,
            f"{m.baseline_msgs_s:,.0f}",
            f"{m.writer_events_s:,.0f}",
            f"{m.ratio:.0%}",
            f"{m.p50_ms:.1f}",
            f"{m.p99_ms:.1f}",
            f"{m.latency_achieved_s:,.0f}"
            + (f" ({m.latency_errors} err)" if m.latency_errors else ""),
        )
    console.print(table)
    print_bars(console, report.bars, _measured)


def _measured(b: Bar) -> str:
    if "%" in b.name:
        return f"{b.value:.0%}"
    if "p99" in b.name:
        return f"{b.value:.1f} ms"
    return f"{b.value:,.0f}/s"


def main(argv: Sequence[str] | None = None) -> int:
    args_parser = parser(
        "ops.bench.write",
        __doc__,
        "events",
        DEFAULT_EVENTS,
        f"events per run (default {DEFAULT_EVENTS:,})",
    )
    args = args_parser.parse_args(argv)
    if args.events < 1:
        args_parser.error("--events must be at least 1")
    return run_main(
        lambda: asyncio.run(run(args.events)),
        as_json=args.json,
        to_json=to_json,
        print_table=print_table,
        width=120,
    )


if __name__ == "__main__":
    sys.exit(main())
