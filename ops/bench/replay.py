"""Replay benchmark: how fast a read model is rebuilt from the ledger, and at what cost.

Run from the repository root::

    python -m ops.bench.replay [--events N] [--json]

It generates a realistic ledger of N events (default 1,000,000) with a fixed
seed (``ops.bench.synth``: ~1,000 agents in four tenants, ~20% facts, ~78%
votes with re-votes and withdrawals, ~1.5% deprecations; every event encoded
and hash-linked exactly as the writer does it), then measures:

1. **projector** - the events, read from memory (an mmap of the generated
   file), fed to ``Projector.consume()`` over a fresh SQLite file (the real
   ``ConnectionPool``): events per second, decode, chain hashing, consensus
   and every table write included. Its digest is kept for step 3.
2. **baseline** - in a separate process with plain ``sqlite3``: one row per
   event (agents, facts, votes, deprecations; facts with the read model's
   columns and a unique ``fact_id``) inserted with ``executemany``, one
   transaction per 2,000 rows, the same pragmas as the pool (WAL,
   ``synchronous=NORMAL``). Decoding the events into rows happens outside
   the clock: the baseline is the bare cost of putting N rows into SQLite.
3. **cortex replay** - the same events appended to JetStream (an embedded
   nats-server, ``sync_interval`` lazy, atomic batches of 1,000 through
   ``Bus.append``), then ``cortex replay --db PATH --json`` run as a child
   process: its wall time (process start to exit), the rate it reports
   itself, and its peak RSS (``VmHWM``, polled, and the children's
   ``ru_maxrss``). Its digest must equal the projector's from step 1: the
   same events must give the same rows, bit for bit; a mismatch is a
   determinism bug and fails the run.

It prints the measurements and the issue's bars, each PASS or FAIL (with
``--json``, one JSON object holding the same figures and nothing else).

Why a ratio beside the absolute rates: the projector, SQLite, the server
and the benchmark share the same few cores and disk, and absolute rates move
with the machine. The baseline runs in the same run on the same disk with
the same row count, so ``projector / baseline`` says what the projector
itself costs (decoding, hashing, consensus, full-text indexing, upserts)
over writing the rows at all, on any machine. The absolute bars are the
issue's and are meant for comparable hardware.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import resource
import sqlite3
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cortex.nats import Bus, Durability, EmbeddedServer
from events.codec import decode_event
from events.model import AgentRegistered, FactDeprecated, FactStored, VoteCast
from ops.bench import synth
from ops.bench.common import (
    Bar,
    BenchError,
    bounded,
    cancel_on_sigterm,
    json_fields,
    json_float,
    on_ledger,
    parser,
    print_bars,
    run_main,
    verdict_json,
)
from projections.digest import digest
from projections.pool import ConnectionPool
from projections.projector import DEFAULT_BATCH, Projector, world_us

DEFAULT_EVENTS: Final = 1_000_000
#: Rows per transaction in the baseline: the projector's own batch size.
BASELINE_BATCH: Final = DEFAULT_BATCH
#: Events per ``Bus.append`` (JetStream's atomic batch limit).
APPEND_BATCH: Final = 1000

# The bars.
MIN_EVENTS_S: Final = 50_000.0
MIN_RATIO: Final = 0.40
MAX_RSS_MB: Final = 300.0

#: Bounds so the benchmark always stops by itself.
SERVER_START_S: Final = 20.0
PHASE_S: Final = 900.0
CHILD_STOP_S: Final = 10.0
RSS_POLL_S: Final = 0.02

_json_tags: Final = msgspec.json.Encoder(order="sorted")

BASELINE_DDL: Final = """
PRAGMA journal_mode=WAL;
PRAGMA synchronous=NORMAL;
CREATE TABLE agents (
    tenant TEXT NOT NULL, agent_id TEXT NOT NULL, public_key TEXT,
    registered_seq INTEGER NOT NULL, registered_ts INTEGER NOT NULL,
    PRIMARY KEY (tenant, agent_id)
) WITHOUT ROWID;
CREATE TABLE facts (
    rowid INTEGER PRIMARY KEY, fact_id TEXT NOT NULL UNIQUE, tenant TEXT NOT NULL,
    agent_id TEXT NOT NULL, content TEXT NOT NULL, type TEXT NOT NULL, tags TEXT NOT NULL,
    confidence REAL NOT NULL, source TEXT NOT NULL, meta TEXT NOT NULL, valid_from INTEGER,
    valid_until INTEGER, stored_seq INTEGER NOT NULL, stored_ts INTEGER NOT NULL
);
CREATE TABLE votes (
    seq INTEGER PRIMARY KEY, tenant TEXT NOT NULL, fact_id TEXT NOT NULL,
    agent_id TEXT NOT NULL, value INTEGER NOT NULL, ts INTEGER NOT NULL, reason TEXT NOT NULL
);
CREATE TABLE deprecations (
    seq INTEGER PRIMARY KEY, tenant TEXT NOT NULL, fact_id TEXT NOT NULL,
    agent_id TEXT NOT NULL, reason TEXT NOT NULL, successor_id TEXT, ts INTEGER NOT NULL
);
"""
_BASELINE_INSERTS: Final = {
    "agents": "INSERT INTO agents VALUES (?, ?, ?, ?, ?)",
    "facts": "INSERT INTO facts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "votes": "INSERT INTO votes VALUES (?, ?, ?, ?, ?, ?, ?)",
    "deprecations": "INSERT INTO deprecations VALUES (?, ?, ?, ?, ?, ?, ?)",
}


@dataclass(slots=True)
class Phase:
    name: str
    events: int = 0
    seconds: float = 0.0
    events_s: float = 0.0


@dataclass(slots=True)
class Report:
    events: int
    cpus: int
    kinds: dict[str, int]
    ledger_mb: float
    generate_seconds: float
    projector: Phase = field(default_factory=lambda: Phase("projector"))
    projector_digest: str = ""
    digest_seconds: float = 0.0
    baseline: Phase = field(default_factory=lambda: Phase("baseline"))
    #: Decoding the events into the baseline's rows (not part of the baseline's rate).
    baseline_decode_seconds: float = 0.0
    append: Phase = field(default_factory=lambda: Phase("append"))
    replay: Phase = field(default_factory=lambda: Phase("replay"))
    replay_reported_events_s: float = 0.0
    replay_peak_rss_mb: float = math.nan
    replay_digest: str = ""
    replay_error: str = ""
    ratio: float = 0.0
    digests_match: bool = False
    bars: list[Bar] = field(default_factory=list)


def _remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


# -- 1. the projector alone -------------------------------------------------


async def bench_projector(ledger: synth.Ledger, db: Path, report: Report) -> None:
    pool = ConnectionPool(db)
    await pool.open()
    try:
        projector = Projector(pool)
        await projector.open()
        started = time.perf_counter()
        await bounded("the projector replay", projector.consume(ledger.stream()), PHASE_S)
        seconds = time.perf_counter() - started
        if projector.seq != ledger.count or projector.head != ledger.head:
            raise BenchError(
                f"the projector stopped at seq {projector.seq} of {ledger.count} "
                "or with another chain head"
            )
        started = time.perf_counter()
        report.projector_digest = await digest(pool)
        report.digest_seconds = time.perf_counter() - started
    finally:
        await pool.close()
    report.projector = Phase("projector", ledger.count, seconds, ledger.count / seconds)


# -- 2. plain SQLite, in a child process ------------------------------------


def _baseline_rows(bodies: Iterable[bytes], first_seq: int) -> dict[str, list[tuple[Any, ...]]]:
    """One row per event, shaped like the read model's rows (decoding is not timed)."""
    rows: dict[str, list[tuple[Any, ...]]] = {name: [] for name in _BASELINE_INSERTS}
    for seq, body in enumerate(bodies, first_seq):
        event = decode_event(body)
        if isinstance(event, AgentRegistered):
            rows["agents"].append((event.tenant, event.agent_id, event.public_key, seq, event.ts))
        elif isinstance(event, FactStored):
            rows["facts"].append(
                (
                    seq,
                    str(event.fact_id),
                    event.tenant,
                    event.agent_id,
                    event.content,
                    event.type,
                    _json_tags.encode(list(event.tags)).decode(),
                    event.confidence,
                    event.source,
                    _json_tags.encode(event.meta).decode(),
                    world_us(event.valid_from),
                    world_us(event.valid_until),
                    seq,
                    event.ts,
                )
            )
        elif isinstance(event, VoteCast):
            rows["votes"].append(
                (
                    seq,
                    event.tenant,
                    str(event.fact_id),
                    event.agent_id,
                    event.value,
                    event.ts,
                    event.reason,
                )
            )
        elif isinstance(event, FactDeprecated):
            successor = None if event.successor_id is None else str(event.successor_id)
            rows["deprecations"].append(
                (
                    seq,
                    event.tenant,
                    str(event.fact_id),
                    event.agent_id,
                    event.reason,
                    successor,
                    event.ts,
                )
            )
    return rows


def baseline_child(ledger_path: Path, db: Path) -> dict[str, Any]:
    """Insert one row per event of the ledger file into a fresh database; time the inserts."""
    _remove_database(db)
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.executescript(BASELINE_DDL)
        bodies = synth.iter_bodies(ledger_path)
        seq, rows_total, seconds, decode_seconds = 1, 0, 0.0, 0.0
        while True:
            chunk = [body for _, body in zip(range(BASELINE_BATCH), bodies, strict=False)]
            if not chunk:
                break
            started = time.perf_counter()
            rows = _baseline_rows(chunk, seq)
            decode_seconds += time.perf_counter() - started
            seq += len(chunk)
            started = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            for table, sql in _BASELINE_INSERTS.items():
                if rows[table]:
                    conn.executemany(sql, rows[table])
            conn.execute("COMMIT")
            seconds += time.perf_counter() - started
            rows_total += sum(len(r) for r in rows.values())
    finally:
        conn.close()
    return {"rows": rows_total, "seconds": seconds, "decode_seconds": decode_seconds}


def _peak_rss_kb(pid: int) -> int:
    """A live process's peak RSS so far (VmHWM, in KiB); 0 if it cannot be read."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


@dataclass(frozen=True, slots=True)
class ChildRun:
    stdout: bytes
    seconds: float
    peak_rss_mb: float
    #: None when the child exited 0; else the tail of its stderr.
    failure: str | None


async def _run_child(args: Sequence[str], *, what: str, cwd: Path, limit_s: float) -> ChildRun:
    """Run a child to completion: its output, wall seconds, peak RSS and failure if any."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *args,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    peak_kb = 0

    async def poll() -> None:
        nonlocal peak_kb
        while proc.returncode is None:
            peak_kb = max(peak_kb, _peak_rss_kb(proc.pid))
            await asyncio.sleep(RSS_POLL_S)

    poller = asyncio.create_task(poll())
    try:
        stdout, stderr = await bounded(what, proc.communicate(), limit_s)
    finally:
        if proc.returncode is None:
            proc.kill()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CHILD_STOP_S):
                    await proc.wait()
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if after > before:  # this child is the largest so far: its own peak, exactly
        peak_kb = max(peak_kb, after)
    failure = None
    if proc.returncode != 0:
        tail = " | ".join(stderr.decode(errors="replace").strip().splitlines()[-3:])
        failure = f"{what} exited with {proc.returncode}: {tail}"
    return ChildRun(stdout, seconds, peak_kb / 1024.0, failure)


def _last_json(stdout: bytes, what: str) -> dict[str, Any]:
    lines = stdout.decode(errors="replace").strip().splitlines()
    try:
        value = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError) as e:
        raise BenchError(f"{what} printed no JSON result") from e
    if not isinstance(value, dict) or "error" in value:
        raise BenchError(f"{what} failed: {value}")
    return value


async def bench_baseline(ledger: synth.Ledger, root: Path, report: Report) -> None:
    db = root / "baseline.db"
    child = await _run_child(
        [
            sys.executable,
            "-m",
            "ops.bench.replay",
            "--baseline-of",
            str(ledger.path),
            "--baseline-db",
            str(db),
        ],
        what="the plain SQLite baseline",
        cwd=root,
        limit_s=PHASE_S,
    )
    _remove_database(db)
    if child.failure:
        raise BenchError(child.failure)
    result = _last_json(child.stdout, "the plain SQLite baseline")
    rows, seconds = int(result["rows"]), float(result["seconds"])
    if rows != ledger.count:
        raise BenchError(f"the baseline inserted {rows} rows for {ledger.count} events")
    report.baseline = Phase("baseline", rows, seconds, rows / seconds)
    report.baseline_decode_seconds = float(result["decode_seconds"])


# -- 3. JetStream and `cortex replay` ---------------------------------------


async def append_ledger(url: str, ledger: synth.Ledger) -> Phase:
    """Put the ledger on CORTEX_LEDGER in atomic batches, as the writer does."""
    bus = await Bus.connect(url, name="bench-append")
    try:
        await bus.ensure_stream()

        async def run() -> None:
            last = 0
            for first in range(1, ledger.count + 1, APPEND_BATCH):
                stop = min(first + APPEND_BATCH - 1, ledger.count)
                last = await bus.append(ledger.outgoing(first, stop), expected_last_seq=last)

        started = time.perf_counter()
        await bounded("appending the ledger to JetStream", run(), PHASE_S)
        seconds = time.perf_counter() - started
        stored = await bus.last_seq()
        if stored != ledger.count:
            raise BenchError(f"the stream holds {stored} events, not {ledger.count}")
        tail = await bus.get(ledger.count)
        if tail.hash != ledger.head:
            raise BenchError("the stream's last chain hash is not the ledger's head")
    finally:
        await bus.close()
    return Phase("append", ledger.count, seconds, ledger.count / seconds)


async def bench_replay(url: str, ledger: synth.Ledger, root: Path, report: Report) -> None:
    db = root / "replay.db"
    child = await _run_child(
        [sys.executable, "-m", "cortex.cli", "replay", "--nats", url, "--db", str(db), "--json"],
        what="cortex replay",
        cwd=root,
        limit_s=PHASE_S,
    )
    _remove_database(db)
    report.replay_peak_rss_mb = child.peak_rss_mb
    # A failed replay is a measurement (every replay bar fails), not a broken benchmark.
    if child.failure:
        report.replay_error = child.failure
        report.replay = Phase("replay", 0, child.seconds, 0.0)
        return
    result = _last_json(child.stdout, "cortex replay")
    if int(result["seq"]) != ledger.count or result["head"] != ledger.head.hex():
        report.replay_error = f"cortex replay stopped at seq {result['seq']} of {ledger.count}"
    report.replay = Phase("replay", int(result["seq"]), child.seconds, ledger.count / child.seconds)
    report.replay_reported_events_s = float(result["events_per_s"])
    report.replay_digest = str(result["digest"])


async def bench_jetstream(ledger: synth.Ledger, root: Path, report: Report) -> None:
    server = EmbeddedServer(root / "nats", port=-1, durability=Durability.FAST)
    url = await server.start(timeout=SERVER_START_S)
    # The server admits no one anonymously: this run (and its child processes) is
    # its operator.
    os.environ["CORTEX_CREDS"] = str(server.admin_creds)
    try:
        report.append = await append_ledger(url, ledger)
        await bench_replay(url, ledger, root, report)
    finally:
        await server.stop()


# -- the run ----------------------------------------------------------------


def judge(report: Report) -> list[Bar]:
    p, r = report.projector, report.replay
    return [
        Bar(
            f"projector >= {MIN_EVENTS_S:,.0f} events/s",
            p.events_s,
            MIN_EVENTS_S,
            p.events_s >= MIN_EVENTS_S,
            "/s",
        ),
        Bar(
            f"cortex replay >= {MIN_EVENTS_S:,.0f} events/s (wall)",
            r.events_s,
            MIN_EVENTS_S,
            r.events_s >= MIN_EVENTS_S and not report.replay_error,
            "/s",
        ),
        Bar(
            f"projector >= {MIN_RATIO:.0%} of plain insert",
            report.ratio,
            MIN_RATIO,
            report.ratio >= MIN_RATIO,
            "%",
        ),
        Bar(
            f"cortex replay peak RSS < {MAX_RSS_MB:.0f} MB",
            report.replay_peak_rss_mb,
            MAX_RSS_MB,
            report.replay_peak_rss_mb < MAX_RSS_MB,
            "MB",
        ),
        Bar(
            "replay digest == projector digest",
            1.0 if report.digests_match else 0.0,
            1.0,
            report.digests_match,
            "bool",
        ),
    ]


async def run(ledger: synth.Ledger, root: Path) -> Report:
    """The three measurements, one after the other; SIGTERM stops the run cleanly."""
    cancel_on_sigterm()
    report = Report(
        events=ledger.count,
        cpus=os.cpu_count() or 0,
        kinds=ledger.kind_counts(),
        ledger_mb=ledger.body_bytes / 1e6,
        generate_seconds=ledger.generate_seconds,
    )
    db = root / "projector.db"
    await bench_projector(ledger, db, report)
    _remove_database(db)
    await bench_baseline(ledger, root, report)
    report.ratio = report.projector.events_s / report.baseline.events_s
    await bench_jetstream(ledger, root, report)
    report.digests_match = report.replay_digest == report.projector_digest
    if report.replay_error:
        print(f"cortex replay FAILED: {report.replay_error}", file=sys.stderr)
    elif not report.digests_match:
        print(
            "DETERMINISM BUG: cortex replay built a read model with digest "
            f"{report.replay_digest} from the same events the projector turned into "
            f"{report.projector_digest}",
            file=sys.stderr,
        )
    report.bars = judge(report)
    return report


# -- output -----------------------------------------------------------------


def to_json(report: Report) -> dict[str, Any]:
    return {
        "events": report.events,
        "cpus": report.cpus,
        "ledger": {
            "kinds": report.kinds,
            "body_mb": json_float(report.ledger_mb),
            "generate_seconds": json_float(report.generate_seconds),
        },
        "projector": {
            **json_fields(report.projector),
            "digest": report.projector_digest,
            "digest_seconds": json_float(report.digest_seconds),
        },
        "baseline": {
            **json_fields(report.baseline),
            "decode_seconds": json_float(report.baseline_decode_seconds),
        },
        "ratio": json_float(report.ratio),
        "append": json_fields(report.append),
        "replay": {
            **json_fields(report.replay),
            "reported_events_s": json_float(report.replay_reported_events_s),
            "peak_rss_mb": json_float(report.replay_peak_rss_mb),
            "digest": report.replay_digest,
            "error": report.replay_error or None,
        },
        "digests_match": report.digests_match,
        **verdict_json(report.bars),
    }


def print_table(report: Report, console: Console) -> None:
    kinds = ", ".join(f"{n:,} {k}" for k, n in report.kinds.items())
    table = Table(
        title=(
            f"CORTEX replay benchmark: {report.events:,} events ({kinds}; "
            f"{report.ledger_mb:,.0f} MB), {report.cpus} CPUs"
        )
    )
    for name in ("phase", "events", "seconds", "events/s", "note"):
        table.add_column(name, justify="left" if name in ("phase", "note") else "right")
    rows = (
        (report.projector, f"from memory; digest {report.projector_digest[:16]}…"),
        (
            report.baseline,
            "plain sqlite3 executemany, child process; decoding into rows took "
            f"{report.baseline_decode_seconds:.2f} s more (untimed)",
        ),
        (report.append, "Bus.append, atomic batches of 1,000 (not a bar)"),
        (
            report.replay,
            f"[red]FAILED[/]: {escape(report.replay_error)}; peak RSS {report.replay_peak_rss_mb:,.0f} MB"
            if report.replay_error
            else f"cortex replay child, wall; reports {report.replay_reported_events_s:,.0f}/s; "
            f"peak RSS {report.replay_peak_rss_mb:,.0f} MB; "
            f"digest {report.replay_digest[:16]}…",
        ),
    )
    for phase, note in rows:
        table.add_row(
            phase.name,
            f"{phase.events:,}",
            f"{phase.seconds:.2f}",
            f"{phase.events_s:,.0f}",
            note,
        )
    console.print(table)
    if report.replay_error:
        verdict = "[red bold]not compared: the replay failed[/]"
    elif report.digests_match:
        verdict = "[green]match[/]"
    else:
        verdict = "[red bold]DIFFER: determinism bug[/]"
    console.print(f"projector / baseline = {report.ratio:.0%}; digests {verdict}")
    print_bars(console, report.bars)


def main(argv: Sequence[str] | None = None) -> int:
    args_parser = parser(
        "ops.bench.replay",
        __doc__,
        "events",
        DEFAULT_EVENTS,
        f"events in the generated ledger (default {DEFAULT_EVENTS:,})",
    )
    # The baseline's child process (internal).
    args_parser.add_argument("--baseline-of", type=Path, help=argparse.SUPPRESS)
    args_parser.add_argument("--baseline-db", type=Path, help=argparse.SUPPRESS)
    args = args_parser.parse_args(argv)
    if args.baseline_of is not None:
        if args.baseline_db is None:
            args_parser.error("--baseline-of needs --baseline-db")
        sys.stdout.write(json.dumps(baseline_child(args.baseline_of, args.baseline_db)) + "\n")
        return 0
    if args.events < 1:
        args_parser.error("--events must be at least 1")
    return run_main(
        lambda: on_ledger("replay", args.events, None, run),
        as_json=args.json,
        to_json=to_json,
        print_table=print_table,
        width=140,
    )


if __name__ == "__main__":
    sys.exit(main())
