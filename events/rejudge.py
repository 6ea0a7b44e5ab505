"""The audit's second opinion: would the writer have appended this stored event?

A writer appends an agent event only for a command that passed every rule of
``events.rules``, judged against the ledger folded so far (``events.
ledger_state.LedgerState``). ``Rejudge`` turns each stored agent event back
into that command (``events.commands.to_command``) and judges it with the same
functions, in the writer's order: the tenant (``check_tenant``), the shape
(``check_shape``: sizes, vote values, times), then the ledger's state
(``judge``: agent registered, fact in this tenant, not yet deprecated, who may
deprecate, successor). The refusal's code names the rule.

Two rules are left to ``events.verify``, which checks them on the stored
bytes already and would otherwise report them twice: agent signatures
(``agent_signature``) and repeated event ids (``duplicate_event``). The fold
then goes on as the writer's catch-up does (``LedgerState.fold``: the first
registration and the first fact with an id hold), so one forged event is
named once and does not make its honest successors look wrong.

The timestamp is the writer's clock, never a command's: one outside SQLite's
64-bit integers is refused here as the projector quarantines it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from events import rules
from events.commands import to_command
from events.ledger_state import LedgerState
from events.model import Event
from events.rules import Refusal

#: The writer stamps events with ``time.time_ns()``; nodes store it as a 64-bit integer.
TS_MIN: Final = -(2**63)
TS_MAX: Final = 2**63 - 1


@dataclass(slots=True)
class Rejudge:
    """Judges stored events in ledger order, folding each into ``state`` after."""

    state: LedgerState = field(default_factory=LedgerState)
    #: ``check_tenant``'s answer per tenant seen: it depends on the name alone.
    tenants: dict[str, Refusal | None] = field(default_factory=dict)

    def judge(self, event: Event) -> Refusal | None:
        """The writer's refusal of ``event`` as the ledger stood before it, or None.

        The ledger's own events (writer keys, checkpoints) are not commands:
        ``events.verify`` checks them by the sequencer's rules."""
        if not TS_MIN <= event.ts <= TS_MAX:
            return Refusal("invalid_field", f"ts {event.ts} is not a 64-bit integer")
        command = to_command(event)
        if command is None:
            return None
        tenant = event.tenant
        tenants = self.tenants
        if tenant not in tenants:
            tenants[tenant] = rules.check_tenant(tenant)
        return (
            tenants[tenant]
            or rules.check_shape(command)
            or rules.judge(self.state, command, tenant, signatures=False)
        )

    def fold(self, event: Event, seq: int) -> None:
        """Fold ``event`` in, accepted or not, as the writer's catch-up would."""
        self.state.fold(event, seq)
