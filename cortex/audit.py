"""``cortex audit``: recompute the ledger from the stream and trust nothing else.

First it checks the stream itself (``cortex.nats.stream_config``): each way its
configuration could drop or hide events is a ``stream_config`` violation, and
a stream that no longer starts at seq 1 (a limit dropped its first events, or
it was purged, or deleted and recreated) is ``stream_truncated``. Then it reads every stored event in order and hands it to ``events.verify.
LedgerVerifier`` (hashes, links, gaps, duplicate ids, checkpoint roots and
signatures, agent signatures, and every agent event re-judged by the writer's
own rules: ``invalid_event``). Then, for each projection database given,
replays the ledger into a scratch database up to that database's position
and compares the two (``projections.integrity.compare``: the schema, every
table, the full-text index), naming the first differing row of each table
(``projection_mismatch``). The audited databases are opened read-only.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec

from cortex.core.sequencer import origin_of
from cortex.nats import STREAM, Bus, StoredEvent
from cortex.trust import Head, TrustStore, compare_heads
from cortex.witness.check import WitnessPolicy, witness_violations
from events.chain import Violation
from events.errors import CortexError, LedgerMismatch
from events.model import SYSTEM_TENANT, CheckpointSigned
from events.verify import LedgerVerifier
from projections.integrity import compare
from projections.quarantine import quarantined
from projections.replay import Progress, replay
from projections.schema import SCHEMA_VERSION

_CHUNK = 1000  # events verified at a time, between progress reports
_CHECKPOINT_SUBJECT = f"cortex.ledger.{SYSTEM_TENANT}.checkpoint_signed"
_checkpoint_decoder = msgspec.json.Decoder(CheckpointSigned)


@dataclass(slots=True)
class ProjectionCheck:
    """One audited database: its position and how many rows matched."""

    db: str
    seq: int = 0
    rows: int = 0
    ok: bool = False


@dataclass(slots=True)
class AuditReport:
    """What the audit checked and what it found."""

    events: int = 0
    last_seq: int = 0
    head: str = ""
    seconds: float = 0.0
    checkpoints: int = 0
    checkpoint_signatures: int = 0
    latest_checkpoint: int = 0
    agent_signatures: int = 0
    #: Agent events judged again by the writer's rules (``invalid_event`` if refused).
    rejudged: int = 0
    writer_keys: int = 0
    #: The writer keys the ledger recorded (name -> public key hex), and whether pinned.
    keys: dict[str, str] = field(default_factory=dict)
    pinned: bool = False
    projections: list[ProjectionCheck] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    #: The ledger's origin, and what the remembered head said (empty without a trust store).
    origin: str = ""
    trust: str = ""

    @property
    def ok(self) -> bool:
        return not self.violations

    def counts(self) -> dict[str, int]:
        """Violations per type."""
        found: dict[str, int] = {}
        for v in self.violations:
            found[v.type] = found.get(v.type, 0) + 1
        return found

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "last_seq": self.last_seq,
            "head": self.head,
            "seconds": round(self.seconds, 3),
            "checkpoints": self.checkpoints,
            "checkpoint_signatures": self.checkpoint_signatures,
            "latest_checkpoint": self.latest_checkpoint,
            "agent_signatures": self.agent_signatures,
            "rejudged": self.rejudged,
            "writer_keys": self.writer_keys,
            "origin": self.origin,
            "trust": self.trust,
            "keys": self.keys,
            "keys_pinned": self.pinned,
            "projections": [
                {"db": p.db, "seq": p.seq, "rows": p.rows, "ok": p.ok} for p in self.projections
            ],
            "violation_counts": self.counts(),
            "violations": [
                {"type": v.type, "seq": v.seq, "where": v.where, "detail": v.detail}
                for v in self.violations
            ],
        }


async def audit_ledger(
    bus: Bus,
    *,
    dbs: Sequence[Path] = (),
    writer_keys: Sequence[str] | None = None,
    progress: Progress | None = None,
    trust: TrustStore | None = None,
    rejudge: bool = True,
    witnesses: WitnessPolicy | None = None,
    origin: str | None = None,
) -> AuditReport:
    """Check the whole ledger, then each projection database against a fresh replay.

    ``writer_keys`` (public keys, hex) pins the keys checkpoints may be signed
    with; without it any writer key the ledger recorded is accepted, and the
    report lists them for a person to recognise.

    ``trust``: the remembered heads; the ledger's latest checkpoint must extend
    the one remembered for its origin (``rollback``, ``fork``), and when the
    whole audit holds it is remembered in its place (saved to the store's file).
    ``rejudge=False`` leaves out re-judging each event by the writer's rules
    (for the benchmark's comparison). ``origin`` pins the ledger's origin: a
    rewritten first event makes a new origin, which a trust store would meet as
    a first use (``origin_mismatch``).
    """
    started = time.perf_counter()
    report = AuditReport(pinned=writer_keys is not None)
    total = await bus.last_seq()
    report.violations.extend(await stream_violations(bus))
    verifier = LedgerVerifier(
        pinned=None if writer_keys is None else frozenset(writer_keys), rejudging=rejudge
    )
    chunk: list[StoredEvent] = []
    heads = _Heads()
    # partial: a store missing its last events ends the read early; the check below names it.
    async for stored in bus.read(1, total, partial=True):
        chunk.append(stored)
        if stored.subject == _CHECKPOINT_SUBJECT:
            heads.saw(stored.body)
        if stored.seq == 1:
            report.origin = origin_of(stored.hash)
            heads.remembered = trust.get(report.origin) if trust is not None else None
        if heads.remembered is not None and stored.seq == heads.remembered.tree_size:
            verifier.feed_many(chunk)  # the root over exactly the remembered size
            chunk.clear()
            heads.root_at_remembered = verifier.root()
        if len(chunk) == _CHUNK:
            verifier.feed_many(chunk)
            chunk.clear()
            if progress is not None:
                progress(stored.seq, total)
    verifier.feed_many(chunk)
    if progress is not None:
        progress(verifier.chain.last_seq, total)
    chain = verifier.chain
    report.violations.extend(verifier.violations)
    if chain.last_seq != total:
        report.violations.append(
            Violation(
                "sequence_gap",
                total,
                f"the stream ends at seq {total} but events after "
                f"{chain.last_seq} could not be read",
            )
        )
    counts = verifier.counts
    report.events = chain.count
    report.last_seq = chain.last_seq
    report.head = chain.head.hex()
    report.checkpoints = counts.checkpoints
    report.checkpoint_signatures = counts.checkpoint_signatures
    report.latest_checkpoint = verifier.checkpoint_size
    report.agent_signatures = counts.agent_signatures
    report.rejudged = counts.rejudged
    report.writer_keys = counts.writer_keys
    report.keys = {name: key for key, name in verifier.writer_keys.items()}
    report.violations.extend(  # what state outside the ledger says of its head
        _origin_violations(report, origin)
        + (trust_violations(heads, report) if trust is not None else [])
    )
    report.violations.extend(  # k-of-n witnesses back the head (cortex.witness.check)
        await witness_violations(bus, report.origin, chain.last_seq, witnesses) if witnesses else []
    )
    for db in dbs:
        report.projections.append(await _check_projection(bus, db, report))
        await _report_quarantine(db, report)
    if trust is not None and report.ok and heads.latest is not None:
        trust.remember(heads.latest)
        trust.save()
    report.seconds = time.perf_counter() - started
    return report


@dataclass(slots=True)
class _Heads:
    """What the audit gathers for the remembered-head check while it reads."""

    remembered: Head | None = None
    root_at_remembered: bytes | None = None
    latest: Head | None = None
    sizes: set[int] = field(default_factory=set)

    def saw(self, body: bytes) -> None:
        try:
            event = _checkpoint_decoder.decode(body)
            self.latest = Head.from_note(event.note)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
            return  # a malformed checkpoint: the verifier names it
        self.sizes.add(self.latest.tree_size)


def trust_violations(heads: _Heads, report: AuditReport) -> list[Violation]:
    """``rollback``/``fork`` if the ledger does not extend the head remembered for its origin.

    The check needs no proof from anyone: the audit recomputed the root of the
    ledger's first ``tree_size`` event hashes itself, which is what a
    consistency proof from the remembered checkpoint would establish.
    """
    latest, remembered = heads.latest, heads.remembered
    if remembered is None:
        report.trust = (
            f"first audit of origin {report.origin}: remembering checkpoint "
            f"{latest.tree_size} root {latest.root.hex()}"
            if latest is not None
            else f"first audit of origin {report.origin}: no checkpoint yet to remember"
        )
        return []
    found = compare_heads(
        remembered,
        latest,
        root_at_remembered=heads.root_at_remembered,
        has_remembered_checkpoint=remembered.tree_size in heads.sizes,
    )
    if found is None:
        size = latest.tree_size if latest is not None else 0
        report.trust = (
            f"checkpoint {size} of origin {report.origin} extends the remembered "
            f"checkpoint {remembered.tree_size}"
        )
        return []
    kind, why = found
    report.trust = f"origin {report.origin}: {kind}"
    return [Violation(kind, 0, why, location=f"origin {report.origin}")]


async def stream_violations(bus: Bus) -> list[Violation]:
    """One violation per way the stream's configuration or state can drop or hide events."""
    return [
        Violation(
            "stream_truncated" if drift.field.startswith("state.") else "stream_config",
            0,
            str(drift),
            location=f"stream {STREAM}: {drift.field}",
        )
        for drift in await bus.stream_drifts()
    ]


def _origin_violations(report: AuditReport, origin: str | None) -> list[Violation]:
    """``origin_mismatch`` when a pinned origin is not the ledger's."""
    if origin is None or report.origin == origin:
        return []
    return [
        Violation(
            "origin_mismatch",
            1,
            f"the ledger's origin is {report.origin or 'none (it is empty)'}, not the pinned "
            f"{origin}: its first event was rewritten, or this is another ledger",
        )
    ]


async def _report_quarantine(db: Path, report: AuditReport) -> None:
    """Events the database set aside because no writer could have appended them."""
    try:
        held = await quarantined(db)
    except (aiosqlite.Error, OSError):
        return  # an old or broken database: the projection check has said so already
    report.violations.extend(
        Violation(
            "quarantined_event",
            q.seq,
            f"the read model could not apply it ({q.reason}: {q.detail})",
            location=f"{db}: quarantine",
        )
        for q in held
    )


def _read_only(db: Path) -> str:
    return f"file:{db.resolve()}?mode=ro"


async def _check_projection(bus: Bus, db: Path, report: AuditReport) -> ProjectionCheck:
    check = ProjectionCheck(str(db))

    def mismatch(where: str, detail: str) -> ProjectionCheck:
        report.violations.append(
            Violation("projection_mismatch", check.seq, detail, location=f"{db}: {where}")
        )
        return check

    try:
        async with aiosqlite.connect(_read_only(db), uri=True) as have:
            # One read transaction for the position and every table: a node
            # that goes on projecting meanwhile cannot make them disagree.
            await have.execute("BEGIN")
            async with have.execute("SELECT seq, schema_version FROM position") as cur:
                row = await cur.fetchone()
            if row is None:
                return mismatch("position", "the database has no position: never projected")
            check.seq = int(row[0])
            if int(row[1]) != SCHEMA_VERSION:
                return mismatch(
                    "position",
                    f"schema {row[1]}, not {SCHEMA_VERSION}: rebuild it with `cortex replay --db {db}`",
                )
            if check.seq > report.last_seq and check.seq > await bus.last_seq():
                return mismatch(
                    "position", f"at seq {check.seq}, beyond the ledger's {report.last_seq}"
                )
            with tempfile.TemporaryDirectory(prefix="cortex-audit-") as tmp:
                fresh = Path(tmp) / "replay.db"
                try:
                    await replay(bus, fresh, until=check.seq)
                except LedgerMismatch as e:
                    return mismatch("replay", f"cannot replay a broken ledger to compare: {e}")
                except (CortexError, aiosqlite.Error) as e:
                    return mismatch("replay", f"the ledger does not replay: {e}")
                async with aiosqlite.connect(_read_only(fresh), uri=True) as want:
                    found = await compare(want, have)
                check.rows = found.rows
                check.ok = found.ok
                for difference in found.differences:
                    mismatch(difference.where, difference.detail)
    except aiosqlite.Error as e:
        return mismatch("database", f"cannot read it as a CORTEX read model: {e}")
    return check
