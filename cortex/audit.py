"""``cortex audit``: recompute the ledger from the stream and trust nothing else.

Reads every stored event in order and checks, for each: that its sequence
follows the last one (``sequence_gap``), that it links to the hash of the
event before it (``chain_break``), that its bytes hash to the hash recorded
for it (``hash_mismatch``), that its body is a valid event filed under the
right subject (``malformed_event``), and that its id was never used before
(``duplicate_event``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from cortex.bus import Bus, ledger_subject
from events.chain import ChainVerifier, Violation
from events.codec import decode_event
from events.model import kind_of

Progress = Callable[[int, int], None]


@dataclass(slots=True)
class AuditReport:
    """What the audit checked and what it found."""

    events: int = 0
    last_seq: int = 0
    head: str = ""
    seconds: float = 0.0
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "last_seq": self.last_seq,
            "head": self.head,
            "seconds": round(self.seconds, 3),
            "violations": [
                {"type": v.type, "seq": v.seq, "detail": v.detail} for v in self.violations
            ],
        }


async def audit_ledger(bus: Bus, *, progress: Progress | None = None) -> AuditReport:
    """Check the whole ledger; ``progress(done, total)`` is called as it goes."""
    started = time.perf_counter()
    report = AuditReport()
    total = await bus.last_seq()
    verifier = ChainVerifier()
    seen: dict[bytes, int] = {}
    async for stored in bus.read(1, total):
        found = verifier.check(stored.seq, stored.body, stored.prev_hash, stored.hash)
        try:
            event = decode_event(stored.body)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            found.append(Violation("malformed_event", stored.seq, f"not a valid event: {e}"))
        else:
            expected = ledger_subject(event.tenant, kind_of(event))
            if stored.subject != expected:
                found.append(
                    Violation(
                        "malformed_event",
                        stored.seq,
                        f"filed under {stored.subject} but its body says {expected}",
                    )
                )
            first = seen.setdefault(event.id.bytes, stored.seq)
            if first != stored.seq:
                found.append(
                    Violation(
                        "duplicate_event",
                        stored.seq,
                        f"event id {event.id} was already appended at seq {first}",
                    )
                )
        report.violations.extend(found)
        if progress is not None and (stored.seq % 1000 == 0 or stored.seq == total):
            progress(stored.seq, total)
    if verifier.last_seq != total:
        report.violations.append(
            Violation(
                "sequence_gap",
                total,
                f"the stream ends at seq {total} but events after "
                f"{verifier.last_seq} could not be read",
            )
        )
    report.events = verifier.count
    report.last_seq = verifier.last_seq
    report.head = verifier.head.hex()
    report.seconds = time.perf_counter() - started
    return report
