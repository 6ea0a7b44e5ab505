"""Audit benchmark: what ``cortex audit`` costs over reading the ledger at all.

Run from the repository root::

    python -m ops.bench.audit [--events N] [--json]

It builds a ledger of N events (default 1,000,000) as the writer writes it:
the synthetic agents, facts, votes and deprecations of ``ops.bench.synth``
(fixed seed), every tenth agent registered with an Ed25519 key and each of
its commands signed with ``events.signing.sign_command``, all of them judged,
linked and staged by the writer's own ``Sequencer.stage`` (so the writer's key
comes first as a ``WriterKeyAdded`` event and a signed ``CheckpointSigned``
rides in every batch of 999 commands: one checkpoint per 1,000 events, as
``cortex up`` writes them). The ledger is the first N events of that; the
staged batches go to an embedded nats-server (``sync_interval`` lazy) with
``Bus.append``, one atomic batch each. Then it measures:

1. **plain read** - ``Bus.read(1, last)`` over the whole stream doing nothing
   per message: the floor any audit over nats-py stands on.
2. **audit** - ``cortex.audit.audit_ledger(bus)`` over the same stream: it
   must report ok, N events, every checkpoint and signature it was given, and
   every agent event re-judged by the writer's rules; its time against the
   plain read's (bar: at most 1.5 times). Beside it, in the same run, the
   audit without re-judging (``rejudge=False``: the audit as it was before),
   and the ratio of the two: what re-judging costs end to end.
3. **verification alone** - ``LedgerVerifier.feed`` over the events already
   in memory (seq, subject, body, previous and own hash): hashes, links,
   Merkle roots, checkpoint signatures, re-judging. Once over everything (agent
   signatures included), once with the agent-signed events' time taken out
   and those events counted apart (bar: 500,000 events/s without them), and
   once without re-judging: the difference is **re-judging alone** (the full
   decode, ``to_command``, the rules and the fold), per agent event.
4. **agent signatures** - the signed events' time inside that feed, against
   a plain loop of the same Ed25519 verifications (``events.ed25519.verify``,
   libsodium, on payloads built beforehand; the same loop with
   ``cryptography``'s ``Ed25519PublicKey.verify`` beside it, for reference);
   ``signing.verify_event`` alone on decoded events for reference (bar: the
   verifier at 80% of the plain loop or better).
5. **10,000 events** - a 10,000-event ledger built the same way on a fresh
   server, audited end to end (``audit_ledger`` on a connected bus), median
   of five runs, beside a plain read of it (design mark: under 100 ms).

Every phase over JetStream is bounded in time; the in-memory phases are
finite loops over what was built (SIGTERM stops the run between phases).
It prints the measurements and the bars, each PASS or FAIL (with ``--json``,
one JSON object holding the same figures and nothing else). The audit's
ratio to the plain read is measured in the same run, on the same server and
stream, so it says what auditing costs over reading on any machine; the
absolute rates move with the machine and whatever else shares its cores.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cortex.audit import AuditReport, audit_ledger
from cortex.core.keys import WriterKey, public_hex
from cortex.core.records import msg_id
from cortex.core.sequencer import (
    DEFAULT_CHECKPOINT_EVERY,
    JETSTREAM_BATCH_LIMIT,
    Item,
    Sequencer,
)
from cortex.nats import Bus, Durability, EmbeddedServer, Outgoing
from events import ed25519, signing
from events.codec import decode_event
from events.commands import RegisterAgent
from events.model import AgentRegistered, Event
from events.verify import LedgerVerifier
from ops.bench import synth
from ops.bench.common import (
    Bar,
    BenchError,
    bounded,
    cancel_on_sigterm,
    json_fields,
    json_float,
    parser,
    print_bars,
    run_main,
    verdict_json,
)

DEFAULT_EVENTS: Final = 1_000_000
SMALL_EVENTS: Final = 10_000
SMALL_RUNS: Final = 5
#: The writer's default: one checkpoint per 1,000 events.
CHECKPOINT_EVERY: Final = DEFAULT_CHECKPOINT_EVERY
#: Commands per staged batch: with its checkpoint, one full atomic batch.
COMMANDS_PER_BATCH: Final = JETSTREAM_BATCH_LIMIT - 1
#: Every KEYED_EVERY-th agent registers a key and signs everything it sends
#: (``--keyed-every``; 0: no agent signs).
KEYED_EVERY: Final = 10
_keyed_every = KEYED_EVERY

# The bars.
MAX_AUDIT_RATIO: Final = 1.5
MIN_VERIFY_EVENTS_S: Final = 500_000.0
MIN_SIGNATURE_RATIO: Final = 0.80
#: A design mark, not expected to hold with nats-py's per-message reads.
MAX_SMALL_MS: Final = 100.0

#: Bounds so the benchmark always stops by itself.
SERVER_START_S: Final = 20.0
GENERATE_S: Final = 1800.0
PHASE_S: Final = 900.0
SMALL_PHASE_S: Final = 60.0

#: A verifier's feed input: seq, subject, body, previous hash, recorded hash.
Stored = tuple[int, str, bytes, bytes, bytes]


@dataclass(slots=True)
class Phase:
    name: str
    events: int = 0
    seconds: float = 0.0
    events_s: float = 0.0

    @classmethod
    def of(cls, name: str, events: int, seconds: float) -> Phase:
        return cls(name, events, seconds, events / seconds if seconds > 0 else math.nan)


@dataclass(slots=True)
class Built:
    """A ledger staged by the writer, in the atomic batches it would append."""

    batches: list[list[Outgoing]]
    count: int
    agents: int
    keyed_agents: int
    #: Event ids (as stored) of the events an agent signed.
    signed_ids: set[str]
    checkpoints: int
    writer_keys: int
    kinds: dict[str, int]
    body_bytes: int
    seconds: float

    def stored(self) -> list[Stored]:
        """What the verifier is fed, in order, as ``Bus.read`` would give it."""
        result: list[Stored] = []
        seq = 0
        for batch in self.batches:
            for o in batch:
                seq += 1
                result.append((seq, o.subject, o.body, o.prev_hash, o.hash))
        return result

    @property
    def agent_events(self) -> int:
        """Events an agent's command became: what the audit re-judges."""
        return self.count - self.checkpoints - self.writer_keys

    def signed_seqs(self) -> set[int]:
        seqs: set[int] = set()
        seq = 0
        for batch in self.batches:
            for o in batch:
                seq += 1
                if o.event_id in self.signed_ids:
                    seqs.add(seq)
        return seqs


@dataclass(slots=True)
class AuditCheck:
    """What an audit reported against what the ledger holds."""

    ok: bool
    detail: str


@dataclass(slots=True)
class Report:
    events: int
    cpus: int
    agents: int = 0
    keyed_agents: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    checkpoints: int = 0
    agent_signed: int = 0
    ledger_mb: float = 0.0
    generate: Phase = field(default_factory=lambda: Phase("generate"))
    append: Phase = field(default_factory=lambda: Phase("append"))
    plain_read: Phase = field(default_factory=lambda: Phase("plain read"))
    audit: Phase = field(default_factory=lambda: Phase("audit"))
    audit_check: AuditCheck = field(default_factory=lambda: AuditCheck(False, "not run"))
    audit_ratio: float = math.nan
    audit_before: Phase = field(default_factory=lambda: Phase("audit, no re-judging"))
    #: The audit with re-judging against the audit without, end to end.
    rejudge_ratio: float = math.nan
    verify_all: Phase = field(default_factory=lambda: Phase("verify, all"))
    verify_before: Phase = field(default_factory=lambda: Phase("verify, no re-judging"))
    rejudge: Phase = field(default_factory=lambda: Phase("re-judging alone"))
    verify_unsigned: Phase = field(default_factory=lambda: Phase("verify, no agent sigs"))
    verify_signed: Phase = field(default_factory=lambda: Phase("verify, agent-signed"))
    verify_event: Phase = field(default_factory=lambda: Phase("verify_event"))
    ed25519: Phase = field(default_factory=lambda: Phase("plain Ed25519"))
    ed25519_openssl: Phase = field(default_factory=lambda: Phase("plain Ed25519, OpenSSL"))
    signature_ratio: float = math.nan
    verify_event_ratio: float = math.nan
    small_plain_read: Phase = field(default_factory=lambda: Phase("10k plain read"))
    small_audit: Phase = field(default_factory=lambda: Phase("10k audit"))
    small_audit_best_ms: float = math.nan
    small_plain_best_ms: float = math.nan
    small_check: AuditCheck = field(default_factory=lambda: AuditCheck(False, "not run"))
    bars: list[Bar] = field(default_factory=list)


def _ratio(a: float, b: float) -> float:
    """a / b, nan when b is 0 or nan (nothing of that kind was measured)."""
    return a / b if b > 0 else math.nan


# -- the ledger, as the writer stages it ------------------------------------


def _key(label: str) -> Ed25519PrivateKey:
    """A fixed Ed25519 key per label, so two runs sign with the same keys."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(label.encode()).digest())


def _kind(subject: str) -> str:
    return subject.rsplit(".", 1)[1]


async def build(events: int) -> Built:
    """The first ``events`` events the writer stages for the synthetic commands.

    Registrations of every KEYED_EVERY-th agent carry its public key, and
    each command of such an agent is signed, exactly as a client with
    ``--key`` sends it. Every command goes through ``Sequencer.stage``
    (judged by ``LedgerState.check``, signature included, then linked), and
    that same method adds the writer's key and the checkpoints. It gives
    the loop a turn after each batch, so the connection stays served and
    SIGTERM stops it.
    """
    started = time.perf_counter()
    sequencer = Sequencer(key=WriterKey(_key("bench-writer")), checkpoint_every=CHECKPOINT_EVERY)
    gen = synth._Generator(synth.Mix())
    registrations = gen.registrations(events)
    keys: dict[tuple[str, str], Ed25519PrivateKey] = {
        (tenant.name, agent): _key(f"bench-agent/{tenant.name}/{agent}")
        for n, (tenant, agent) in enumerate(registrations)
        if _keyed_every and n % _keyed_every == _keyed_every // 2
    }
    signed_ids: set[str] = set()
    batches: list[list[Outgoing]] = []
    count = 0
    n = 0

    def command() -> Item[None]:
        nonlocal n
        n += 1
        cmd, tenant_index = gen.command(n, registrations)
        tenant = gen.tenants[tenant_index].name
        key = keys.get((tenant, str(getattr(cmd, "agent_id", ""))))
        if key is not None:
            if isinstance(cmd, RegisterAgent):
                cmd = msgspec.structs.replace(cmd, public_key=public_hex(key))
            else:
                cmd = signing.sign_command(cmd, tenant, key, origin=sequencer.state.first_hash)
                signed_ids.add(msg_id(tenant, str(cmd.id)))  # as Outgoing.event_id holds it
        return Item(cmd, tenant, None)

    items: list[Item[None]] = []  # the first batch is empty: the writer records its key
    while count < events:
        if time.perf_counter() - started > GENERATE_S:
            raise BenchError(f"building the ledger did not finish within {GENERATE_S:.0f}s")
        await asyncio.sleep(0)
        staged = sequencer.stage(items, synced=False)
        refused = [r for r in staged.results if isinstance(r, int) or "error" in r]
        if staged.behind or refused:
            raise BenchError(f"the writer refused a synthetic command: {refused[:1]}")
        # kept, as after an acknowledged append (no rollback)
        outgoing = staged.outgoing[
            : events - count
        ]  # the ledger is a prefix of what it would write
        batches.append(outgoing)
        count += len(outgoing)
        want = min(COMMANDS_PER_BATCH, events - count)
        items = [command() for _ in range(want)]
    kinds: dict[str, int] = {}
    body_bytes = 0
    for batch in batches:
        for o in batch:
            kind = _kind(o.subject)
            kinds[kind] = kinds.get(kind, 0) + 1
            body_bytes += len(o.body)
    in_ledger = {o.event_id for batch in batches for o in batch}
    return Built(
        batches=batches,
        count=count,
        agents=kinds.get("agent_registered", 0),
        keyed_agents=len(keys),
        signed_ids=signed_ids & in_ledger,
        checkpoints=kinds.get("checkpoint_signed", 0),
        writer_keys=kinds.get("writer_key_added", 0),
        kinds=kinds,
        body_bytes=body_bytes,
        seconds=time.perf_counter() - started,
    )


async def append(bus: Bus, built: Built) -> Phase:
    """Each staged batch as one atomic ``Bus.append``, as the writer commits it."""

    async def run() -> None:
        last = 0
        for batch in built.batches:
            last = await bus.append(batch, expected_last_seq=last)

    started = time.perf_counter()
    await bounded("appending the ledger to JetStream", run(), PHASE_S)
    seconds = time.perf_counter() - started
    stored = await bus.last_seq()
    if stored != built.count:
        raise BenchError(f"the stream holds {stored} events, not {built.count}")
    return Phase.of("append", built.count, seconds)


# -- reading and auditing over JetStream ------------------------------------


async def plain_read(bus: Bus, last: int, limit_s: float) -> float:
    """Seconds to read seq 1 .. ``last`` doing nothing per message."""

    async def run() -> int:
        n = 0
        async for _ in bus.read(1, last):
            n += 1
        return n

    started = time.perf_counter()
    n = await bounded("the plain read", run(), limit_s)
    seconds = time.perf_counter() - started
    if n != last:
        raise BenchError(f"the plain read gave {n} events, not {last}")
    return seconds


async def timed_audit(
    bus: Bus, limit_s: float, *, rejudge: bool = True
) -> tuple[float, AuditReport]:
    started = time.perf_counter()
    report = await bounded("the audit", audit_ledger(bus, rejudge=rejudge), limit_s)
    return time.perf_counter() - started, report


def check_audit(report: AuditReport, built: Built, *, rejudged: bool = True) -> AuditCheck:
    """Whether the audit found the ledger sound and counted what it holds."""
    want = {
        "events": built.count,
        "checkpoints": built.checkpoints,
        "checkpoint_signatures": built.checkpoints,
        "agent_signatures": len(built.signed_ids),
        "writer_keys": built.writer_keys,
        "rejudged": built.agent_events if rejudged else 0,
    }
    got = {name: int(getattr(report, name)) for name in want}
    wrong = [f"{name} {got[name]} != {value}" for name, value in want.items() if got[name] != value]
    if not report.ok:
        wrong.insert(0, f"violations {report.counts()}")
    if wrong:
        return AuditCheck(False, "; ".join(wrong))
    return AuditCheck(
        True,
        f"ok: {got['checkpoints']:,} checkpoints and signatures, "
        f"{got['agent_signatures']:,} agent signatures, {got['writer_keys']} writer key, "
        f"{got['rejudged']:,} events re-judged",
    )


async def bench_stream(events: int, root: Path, report: Report) -> Built:
    """Build the ledger, append it to a fresh server, read it plainly, then audit it."""
    server = EmbeddedServer(root / "nats", port=-1, durability=Durability.FAST)
    url = await server.start(timeout=SERVER_START_S)
    # The server admits no one anonymously: this run (and its child processes) is
    # its operator.
    os.environ["CORTEX_CREDS"] = str(server.admin_creds)
    try:
        bus = await Bus.connect(url, name="bench-audit")
        try:
            await bus.ensure_stream()
            built = await build(events)
            report.generate = Phase.of("generate", built.count, built.seconds)
            report.append = await append(bus, built)
            seconds = await plain_read(bus, built.count, PHASE_S)
            report.plain_read = Phase.of("plain read", built.count, seconds)
            seconds, before = await timed_audit(bus, PHASE_S, rejudge=False)
            report.audit_before = Phase.of("audit, no re-judging", before.events, seconds)
            seconds, audited = await timed_audit(bus, PHASE_S)
            report.audit = Phase.of("audit", audited.events, seconds)
            report.audit_check = check_audit(audited, built)
            if report.audit_check.ok:
                checked = check_audit(before, built, rejudged=False)
                report.audit_check = checked if not checked.ok else report.audit_check
        finally:
            await bus.close()
    finally:
        await server.stop()
    report.audit_ratio = _ratio(report.audit.seconds, report.plain_read.seconds)
    report.rejudge_ratio = _ratio(report.audit.seconds, report.audit_before.seconds)
    return built


async def bench_small(root: Path, report: Report) -> None:
    """A 10,000-event ledger on a fresh server: plain read and audit, SMALL_RUNS times each."""
    server = EmbeddedServer(root / "nats-small", port=-1, durability=Durability.FAST)
    url = await server.start(timeout=SERVER_START_S)
    # The server admits no one anonymously: this run (and its child processes) is
    # its operator.
    os.environ["CORTEX_CREDS"] = str(server.admin_creds)
    try:
        bus = await Bus.connect(url, name="bench-audit-small")
        try:
            await bus.ensure_stream()
            built = await build(SMALL_EVENTS)
            await append(bus, built)
            reads: list[float] = []
            audits: list[float] = []
            checks: list[AuditCheck] = []
            for _ in range(SMALL_RUNS):
                reads.append(await plain_read(bus, built.count, SMALL_PHASE_S))
                seconds, audited = await timed_audit(bus, SMALL_PHASE_S)
                audits.append(seconds)
                checks.append(check_audit(audited, built))
        finally:
            await bus.close()
    finally:
        await server.stop()
    report.small_plain_read = Phase.of("10k plain read", built.count, statistics.median(reads))
    report.small_audit = Phase.of("10k audit", built.count, statistics.median(audits))
    report.small_plain_best_ms = min(reads) * 1e3
    report.small_audit_best_ms = min(audits) * 1e3
    failed = [c for c in checks if not c.ok]
    report.small_check = failed[0] if failed else checks[0]


# -- verification in memory -------------------------------------------------


def _check_verifier(verifier: LedgerVerifier, built: Built, what: str) -> None:
    counts = verifier.counts
    if (
        verifier.violations
        or counts.events != built.count
        or counts.checkpoint_signatures != built.checkpoints
        or counts.agent_signatures != len(built.signed_ids)
        or counts.rejudged != (built.agent_events if verifier.rejudging else 0)
    ):
        found = [f"{v.type} at {v.where}" for v in verifier.violations[:3]]
        raise BenchError(f"{what}: the verifier did not pass the ledger: {counts} {found}")


def verify_all(events: list[Stored], built: Built, *, rejudging: bool = True) -> float:
    """Seconds to feed every event to a fresh verifier, nothing else in the loop."""
    verifier = LedgerVerifier(rejudging=rejudging)
    feed = verifier.feed
    started = time.perf_counter()
    for seq, subject, body, prev, recorded in events:
        feed(seq, subject, body, prev, recorded)
    seconds = time.perf_counter() - started
    _check_verifier(verifier, built, "verification, all events")
    return seconds


def verify_split(events: list[Stored], signed: set[int], built: Built) -> tuple[float, float]:
    """(seconds of the whole feed, seconds of the agent-signed events in it)."""
    verifier = LedgerVerifier()
    feed = verifier.feed
    clock = time.perf_counter
    in_signed = 0.0
    started = clock()
    for seq, subject, body, prev, recorded in events:
        if seq in signed:
            t = clock()
            feed(seq, subject, body, prev, recorded)
            in_signed += clock() - t
        else:
            feed(seq, subject, body, prev, recorded)
    seconds = clock() - started
    _check_verifier(verifier, built, "verification, signed events apart")
    return seconds, in_signed


@dataclass(slots=True)
class SignedSet:
    """The agent-signed events, prepared outside any clock."""

    events: list[tuple[Event, str]]  # decoded event, its agent's key (hex)
    plain: list[tuple[bytes, bytes, bytes]]  # raw key, signature, signed payload
    openssl: list[Ed25519PublicKey]  # the same keys as ``cryptography`` objects
    origin: bytes  # the ledger's first event's hash, which agents sign into their commands


def prepare_signed(events: list[Stored], signed: set[int]) -> SignedSet:
    """Each signed event decoded, with its agent's key and the exact bytes it signed."""
    agent_keys: dict[tuple[str, str], str] = {}
    for _, subject, body, _, _ in events:
        if _kind(subject) == "agent_registered":
            registered = decode_event(body)
            assert isinstance(registered, AgentRegistered)
            if registered.public_key is not None:
                agent_keys[(registered.tenant, registered.agent_id)] = registered.public_key
    key_objects = {
        hex_key: Ed25519PublicKey.from_public_bytes(bytes.fromhex(hex_key))
        for hex_key in agent_keys.values()
    }
    origin = events[0][4] if events else b""
    prepared = SignedSet([], [], [], origin)
    for seq, _, body, _, _ in events:
        if seq not in signed:
            continue
        event = decode_event(body)
        hex_key = agent_keys[(event.tenant, str(getattr(event, "agent_id", "")))]
        signature = getattr(event, "signature", None)
        assert signature is not None
        prepared.events.append((event, hex_key))
        prepared.plain.append(
            (bytes.fromhex(hex_key), bytes.fromhex(signature), signing.signed_bytes(event, origin))
        )
        prepared.openssl.append(key_objects[hex_key])
    return prepared


def time_verify_event(prepared: SignedSet) -> float:
    verify = signing.verify_event
    started = time.perf_counter()
    origin = prepared.origin
    good = sum(verify(event, key, origin) for event, key in prepared.events)
    seconds = time.perf_counter() - started
    if good != len(prepared.events):
        raise BenchError(f"verify_event passed {good} of {len(prepared.events)} signatures")
    return seconds


def time_plain_ed25519(prepared: SignedSet) -> float:
    verify = ed25519.verify
    started = time.perf_counter()
    good = sum(verify(key, signature, payload) for key, signature, payload in prepared.plain)
    seconds = time.perf_counter() - started
    if good != len(prepared.plain):
        raise BenchError("a signature the writer accepted does not verify")
    return seconds


def time_plain_openssl(prepared: SignedSet) -> float:
    started = time.perf_counter()
    try:
        for key, (_, signature, payload) in zip(prepared.openssl, prepared.plain, strict=True):
            key.verify(signature, payload)
    except InvalidSignature as e:
        raise BenchError("a signature the writer accepted does not verify") from e
    return time.perf_counter() - started


def bench_memory(built: Built, report: Report) -> None:
    events = built.stored()
    signed = built.signed_seqs()
    seconds = verify_all(events, built)
    report.verify_all = Phase.of("verify, all", built.count, seconds)
    before = verify_all(events, built, rejudging=False)
    report.verify_before = Phase.of("verify, no re-judging", built.count, before)
    report.rejudge = Phase.of("re-judging alone", built.agent_events, seconds - before)
    seconds, in_signed = verify_split(events, signed, built)
    report.verify_unsigned = Phase.of(
        "verify, no agent sigs", built.count - len(signed), seconds - in_signed
    )
    report.verify_signed = Phase.of("verify, agent-signed", len(signed), in_signed)
    prepared = prepare_signed(events, signed)
    report.verify_event = Phase.of("verify_event", len(signed), time_verify_event(prepared))
    report.ed25519 = Phase.of("plain Ed25519", len(signed), time_plain_ed25519(prepared))
    report.ed25519_openssl = Phase.of(
        "plain Ed25519, OpenSSL", len(signed), time_plain_openssl(prepared)
    )
    report.signature_ratio = _ratio(report.verify_signed.events_s, report.ed25519.events_s)
    report.verify_event_ratio = _ratio(report.verify_event.events_s, report.ed25519.events_s)


# -- the run ----------------------------------------------------------------


def judge(report: Report) -> list[Bar]:
    small_ms = report.small_audit.seconds * 1e3
    return [
        Bar(
            f"audit <= {MAX_AUDIT_RATIO:.1f}x the plain read",
            report.audit_ratio,
            MAX_AUDIT_RATIO,
            report.audit_ratio <= MAX_AUDIT_RATIO,
            "x",
        ),
        Bar(
            f"verification >= {MIN_VERIFY_EVENTS_S:,.0f} events/s (no agent sigs)",
            report.verify_unsigned.events_s,
            MIN_VERIFY_EVENTS_S,
            report.verify_unsigned.events_s >= MIN_VERIFY_EVENTS_S,
            "/s",
        ),
        Bar(
            f"agent signatures >= {MIN_SIGNATURE_RATIO:.0%} of plain Ed25519",
            report.signature_ratio,
            MIN_SIGNATURE_RATIO,
            report.signature_ratio >= MIN_SIGNATURE_RATIO,
            "%",
        ),
        Bar(
            f"{SMALL_EVENTS:,} events audited < {MAX_SMALL_MS:.0f} ms (design mark)",
            small_ms,
            MAX_SMALL_MS,
            small_ms < MAX_SMALL_MS,
            "ms",
        ),
        Bar(
            "audits ok, counts as built",
            1.0 if report.audit_check.ok and report.small_check.ok else 0.0,
            1.0,
            report.audit_check.ok and report.small_check.ok,
            "bool",
        ),
    ]


async def run(events: int, root: Path) -> Report:
    """Build, append, read and audit; verify in memory; then the 10,000-event run."""
    cancel_on_sigterm()
    report = Report(events=events, cpus=os.cpu_count() or 0)
    built = await bench_stream(events, root, report)
    report.agents = built.agents
    report.keyed_agents = built.keyed_agents
    report.kinds = built.kinds
    report.checkpoints = built.checkpoints
    report.agent_signed = len(built.signed_ids)
    report.ledger_mb = built.body_bytes / 1e6
    # In memory, with no server running beside it.
    bench_memory(built, report)
    del built
    await bench_small(root, report)
    for name, check in (("the audit", report.audit_check), ("the 10k audit", report.small_check)):
        if not check.ok:
            print(f"{name} FAILED: {check.detail}", file=sys.stderr)
    report.bars = judge(report)
    return report


def measure(events: int) -> Report:
    """The run in a temp dir, removed after; SIGTERM stops it cleanly."""
    signal.signal(signal.SIGTERM, _stop_on_sigterm)  # until the loop takes over
    with tempfile.TemporaryDirectory(prefix="cortex-bench-audit-") as tmp:
        return asyncio.run(run(events, Path(tmp)))


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


# -- output -----------------------------------------------------------------


_PHASES: Final = (
    "generate",
    "append",
    "plain_read",
    "audit_before",
    "audit",
    "verify_all",
    "verify_before",
    "rejudge",
    "verify_unsigned",
    "verify_signed",
    "verify_event",
    "ed25519",
    "ed25519_openssl",
    "small_plain_read",
    "small_audit",
)


def to_json(report: Report) -> dict[str, Any]:
    return {
        "events": report.events,
        "cpus": report.cpus,
        "ledger": {
            "kinds": report.kinds,
            "agents": report.agents,
            "keyed_agents": report.keyed_agents,
            "checkpoints": report.checkpoints,
            "agent_signed": report.agent_signed,
            "body_mb": json_float(report.ledger_mb),
        },
        "phases": {name: json_fields(getattr(report, name)) for name in _PHASES},
        "audit": {"ok": report.audit_check.ok, "detail": report.audit_check.detail},
        "audit_ratio": json_float(report.audit_ratio),
        "rejudge_ratio": json_float(report.rejudge_ratio),
        "signature_ratio": json_float(report.signature_ratio),
        "verify_event_ratio": json_float(report.verify_event_ratio),
        "small": {
            "events": SMALL_EVENTS,
            "runs": SMALL_RUNS,
            "audit_ms_median": json_float(report.small_audit.seconds * 1e3),
            "audit_ms_best": json_float(report.small_audit_best_ms),
            "plain_read_ms_median": json_float(report.small_plain_read.seconds * 1e3),
            "plain_read_ms_best": json_float(report.small_plain_best_ms),
            "ok": report.small_check.ok,
            "detail": report.small_check.detail,
        },
        **verdict_json(report.bars),
    }


def _notes(report: Report) -> dict[str, str]:
    r = report
    split = r.plain_read.seconds + r.verify_all.seconds
    small_ms = r.small_audit.seconds * 1e3
    return {
        "generate": (
            f"Sequencer.stage: synth commands, {r.keyed_agents} of {r.agents} agents keyed "
            "and signing; not a bar"
        ),
        "append": "Bus.append, one atomic batch per staged batch (not a bar)",
        "plain_read": "Bus.read(1, last), nothing per message: the floor",
        "audit": (
            f"audit_ledger(bus), {r.audit_ratio:.2f}x the plain read; "
            f"read + verify alone = {split:.2f} s; "
            + (
                escape(r.audit_check.detail)
                if r.audit_check.ok
                else f"[red]{escape(r.audit_check.detail)}[/]"
            )
        ),
        "audit_before": (
            f"audit_ledger(bus, rejudge=False): the audit before re-judging; with it, "
            f"{r.rejudge_ratio:.2f}x this"
        ),
        "verify_all": "LedgerVerifier.feed from memory, agent signatures and re-judging included",
        "verify_before": "the same feed without re-judging (LedgerVerifier(rejudging=False))",
        "rejudge": (
            "the difference, per agent event: full decode, to_command, rules, fold "
            f"({r.rejudge.seconds / r.verify_all.seconds:.0%} of the feed)"
            if r.verify_all.seconds > 0
            else "not measured"
        ),
        "verify_unsigned": "the same feed, the agent-signed events' time taken out",
        "verify_signed": (
            f"agent-signed events inside that feed: {r.signature_ratio:.0%} of plain Ed25519"
        ),
        "verify_event": (
            f"signing.verify_event on decoded events: {r.verify_event_ratio:.0%} of plain Ed25519"
        ),
        "ed25519": "events.ed25519.verify (libsodium), payloads built beforehand",
        "ed25519_openssl": (
            "cryptography's Ed25519PublicKey.verify, same payloads (not used; "
            f"libsodium is {_ratio(r.ed25519.events_s, r.ed25519_openssl.events_s):.2f}x)"
        ),
        "small_plain_read": (
            f"fresh server; median of {SMALL_RUNS}, best {r.small_plain_best_ms:.0f} ms"
        ),
        "small_audit": (
            f"median of {SMALL_RUNS}, best {r.small_audit_best_ms:.0f} ms: "
            f"{small_ms / MAX_SMALL_MS:.1f}x the {MAX_SMALL_MS:.0f} ms mark; "
            f"the plain read alone is {r.small_plain_read.seconds * 1e3 / MAX_SMALL_MS:.1f}x"
        ),
    }


def print_table(report: Report, console: Console) -> None:
    kinds = ", ".join(f"{n:,} {k}" for k, n in report.kinds.items())
    table = Table(
        title=(
            f"CORTEX audit benchmark: {report.events:,} events ({kinds}; "
            f"{report.agent_signed:,} agent-signed; {report.ledger_mb:,.0f} MB), "
            f"{report.cpus} CPUs"
        )
    )
    for name in ("phase", "events", "seconds", "events/s", "note"):
        table.add_column(name, justify="left" if name in ("phase", "note") else "right")
    notes = _notes(report)
    for name in _PHASES:
        phase: Phase = getattr(report, name)
        table.add_row(
            phase.name,
            f"{phase.events:,}",
            f"{phase.seconds:.3f}" if phase.seconds < 1 else f"{phase.seconds:.2f}",
            f"{phase.events_s:,.0f}",
            notes[name],
        )
    console.print(table)
    print_bars(console, report.bars)


def main(argv: Sequence[str] | None = None) -> int:
    args_parser = parser(
        "ops.bench.audit",
        __doc__,
        "events",
        DEFAULT_EVENTS,
        f"events in the generated ledger (default {DEFAULT_EVENTS:,})",
    )
    args_parser.add_argument(
        "--keyed-every",
        type=int,
        default=KEYED_EVERY,
        help=f"every K-th agent signs what it writes (default {KEYED_EVERY}; 0: none)",
    )
    args = args_parser.parse_args(argv)
    if args.events < 1:
        args_parser.error("--events must be at least 1")
    if args.keyed_every < 0:
        args_parser.error("--keyed-every must be 0 or more")
    global _keyed_every  # noqa: PLW0603 - one setting for the whole run
    _keyed_every = args.keyed_every
    return run_main(
        lambda: measure(args.events),
        as_json=args.json,
        to_json=to_json,
        print_table=print_table,
        width=160,
    )


if __name__ == "__main__":
    sys.exit(main())
