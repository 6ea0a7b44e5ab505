"""Every rule a command must pass, in one place: the writer, the client and the CLI judge by it.

Three kinds of rule, cheapest first:

- ``check_tenant``: the tenant a command or query names (a subject token, not reserved);
- ``check_shape``: what needs no ledger state (sizes, vote values, times UTC can hold);
  field types and patterns are the msgspec types of ``events.commands``;
- ``judge``: what needs the ledger so far (the agent is registered, the fact
  exists *in this tenant*, the signature holds…), over any ``LedgerView``.

Ids are scoped per tenant: a fact id or an event id another tenant used is,
to this tenant, a fresh id (``scoped`` is the key every index holds them
under), so no answer reveals what another tenant stored.

Who may deprecate: the fact's author at will; any other agent of the tenant
only with a reason, which the ledger records with its name (a fact someone
merely disagrees with is voted down, not deprecated).

The numbers come from ``events.limits``; the codes are those of
``events.errors.CODES``. A refusal is data (``Refusal``), not an exception,
so a batch can refuse one command and append the rest.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

import msgspec

from events import signing
from events.commands import CastVote, Command, DeprecateFact, RegisterAgent, StoreFact
from events.errors import CortexError, InvalidCommand, error_for
from events.limits import (
    MAX_CONTENT_BYTES,
    MAX_META_BYTES,
    MAX_NAME,
    RESERVED_TENANT_PREFIX,
    TENANT_PATTERN,
    VOTE_VALUES,
)

_meta_encoder: Final = msgspec.json.Encoder()
_tenant: Final = re.compile(TENANT_PATTERN)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a command cannot be appended: a stable code and a sentence for people."""

    code: str
    message: str
    #: True when the refusal depends on the ledger's state, so a writer that
    #: is behind the stream must catch up and judge again before answering.
    stateful: bool = False

    def error(self) -> CortexError:
        """The exception a client raises for this refusal."""
        return error_for(self.code, self.message)


def check_tenant(tenant: str) -> Refusal | None:
    """A tenant is 1-64 of A-Z a-z 0-9 _ -, and not one of the ledger's own."""
    if len(tenant) > MAX_NAME or not _tenant.match(tenant):
        return Refusal("invalid_field", f"tenant {tenant!r} must be 1-64 of A-Z a-z 0-9 _ -")
    if tenant.startswith(RESERVED_TENANT_PREFIX):
        return Refusal("reserved_tenant", f"tenant {tenant!r} is reserved for the ledger itself")
    return None


def check_shape(command: Command) -> Refusal | None:
    """Checks that need no ledger state: sizes, empty content, times and vote values."""
    if isinstance(command, StoreFact):
        size = len(command.content.encode())
        if size > MAX_CONTENT_BYTES:
            return Refusal(
                "too_large", f"content is {size} bytes; the limit is {MAX_CONTENT_BYTES} bytes"
            )
        if not command.content.strip():
            return Refusal("invalid_field", "content is empty")
        meta_size = len(_meta_encoder.encode(command.meta))
        if meta_size > MAX_META_BYTES:
            return Refusal("too_large", f"meta is {meta_size} bytes; the limit is {MAX_META_BYTES}")
        for name in ("valid_from", "valid_until"):
            value = getattr(command, name)
            try:
                value is None or value.astimezone(dt.UTC)
            except (OverflowError, ValueError):
                return Refusal("invalid_field", f"{name} {value} cannot be expressed in UTC")
        if command.valid_from and command.valid_until and command.valid_until < command.valid_from:
            return Refusal("invalid_field", "valid_until is before valid_from")
    elif isinstance(command, CastVote) and command.value not in VOTE_VALUES:
        return Refusal(
            "invalid_vote",
            f"a vote is +1, -1 or 0 (to withdraw), not {command.value}",
        )
    return None


def scoped(tenant: str, id_: uuid.UUID) -> bytes:
    """The key of a fact or event id within its tenant: the id's 16 bytes, then the
    tenant's (the id has a fixed length, so no two pairs share a key)."""
    return id_.bytes + tenant.encode()


class LedgerView(Protocol):
    """What ``judge`` reads of the ledger so far (``LedgerState`` is one)."""

    @property
    def agents(self) -> Mapping[tuple[str, str], str | None]:
        """(tenant, agent id) → the agent's public key (hex), or None."""
        ...

    @property
    def facts(self) -> Mapping[bytes, str]:
        """``scoped(tenant, fact id)`` → the agent that stored it."""
        ...

    @property
    def deprecated(self) -> Container[bytes]:
        """``scoped(tenant, fact id)`` of every deprecated fact."""
        ...

    @property
    def require_signatures(self) -> bool: ...

    @property
    def first_hash(self) -> bytes:
        """The ledger's origin: its first event's hash (b"" before it has one)."""
        ...

    @property
    def accept_unbound_signatures(self) -> bool:
        """Whether a signature in the older form, which names no ledger, still counts."""
        ...


def judge(
    view: LedgerView, command: Command, tenant: str, *, signatures: bool = True
) -> Refusal | None:
    """Whether ``command`` may be appended for ``tenant`` given the ledger so far.

    ``signatures=False`` leaves out the signature rules, for the audit, whose
    verifier has checked each agent signature over the stored event already."""
    if isinstance(command, RegisterAgent):
        if (tenant, command.agent_id) in view.agents:
            return Refusal(
                "agent_exists",
                f"agent {command.agent_id!r} is already registered in tenant {tenant!r}",
            )
        if view.require_signatures and command.public_key is None:
            return Refusal(
                "signature_required",
                "this ledger requires signatures: register the agent with a public key",
            )
        return None
    agent_id: str = getattr(command, "agent_id", "")
    if (tenant, agent_id) not in view.agents:
        return Refusal(
            "unknown_agent",
            f"agent {agent_id!r} is not registered in tenant {tenant!r}",
            stateful=True,
        )
    if signatures:
        refusal = _check_signature(view, command, tenant, agent_id)
        if refusal is not None:
            return refusal
    return _check_target(view, command, tenant)


def _check_signature(
    view: LedgerView, command: Command, tenant: str, agent_id: str
) -> Refusal | None:
    key = view.agents[(tenant, agent_id)]
    signature: str | None = getattr(command, "signature", None)
    if key is None:
        if signature is not None:
            return Refusal(
                "bad_signature",
                f"agent {agent_id!r} has no registered key to check a signature against",
            )
        if view.require_signatures:
            return Refusal(
                "signature_required",
                f"this ledger requires signatures and agent {agent_id!r} has no key",
            )
        return None
    if signature is None:
        return Refusal(
            "signature_required", f"agent {agent_id!r} has a key: its commands must be signed"
        )
    origin, unbound = view.first_hash, view.accept_unbound_signatures
    if not signing.check_command(key, signature, command, tenant, origin, unbound=unbound):
        if signing.is_unbound(key, signature, command, tenant):
            return Refusal(
                "bad_signature",
                "the signature is in the older form that names no ledger, so it could "
                f"have been made for another deployment: sign for this ledger, origin "
                f"{origin.hex()} (cortex.Client does); a writer started with "
                "--accept-unbound-signatures still takes the older form",
            )
        return Refusal(
            "bad_signature",
            f"the signature is not agent {agent_id!r}'s signature of this command "
            "(a signature binds the tenant, the id and every field)",
        )
    return None


def _check_target(view: LedgerView, command: Command, tenant: str) -> Refusal | None:
    if isinstance(command, StoreFact):
        if scoped(tenant, command.fact_id) in view.facts:
            return Refusal(
                "fact_exists", f"fact {command.fact_id} already exists in tenant {tenant!r}"
            )
        return None
    if isinstance(command, DeprecateFact | CastVote):
        refusal = _check_fact(view, command.fact_id, tenant)
        if refusal is not None:
            return refusal
    if isinstance(command, DeprecateFact):
        key = scoped(tenant, command.fact_id)
        if key in view.deprecated:
            return Refusal("already_deprecated", f"fact {command.fact_id} is already deprecated")
        author = view.facts[key]
        if author != command.agent_id and not command.reason.strip():
            return Refusal(
                "reason_required",
                f"fact {command.fact_id} is {author!r}'s: another agent may deprecate it only "
                "with a reason (recorded with the deprecation)",
            )
        if command.successor_id is not None:
            if command.successor_id == command.fact_id:
                return Refusal("invalid_field", "a fact cannot succeed itself")
            return _check_fact(view, command.successor_id, tenant)
    return None


def _check_fact(view: LedgerView, fact_id: uuid.UUID, tenant: str) -> Refusal | None:
    # Another tenant's fact is not even looked at: its existence is not this
    # tenant's business.
    if scoped(tenant, fact_id) not in view.facts:
        return Refusal("unknown_fact", f"no fact {fact_id} in tenant {tenant!r}", stateful=True)
    return None


def parse_time(value: str, *, what: str = "time") -> dt.datetime:
    """An ISO 8601 date-time as the CLI and queries take it; without a zone, UTC."""
    try:
        parsed = dt.datetime.fromisoformat(value)
    except (TypeError, ValueError) as e:
        raise InvalidCommand(
            f"{what} {value!r} is not an ISO 8601 date-time", code="invalid_field"
        ) from e
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def utc(value: dt.datetime | None, *, what: str = "time") -> dt.datetime | None:
    """A zoned time in UTC, as the ledger keeps it: the wire format rounds offsets to
    the minute, so a signature over a local time with an odd offset would not hold.
    A naive time is given back as it is, for the writer to refuse."""
    if value is None or value.tzinfo is None:
        return value
    try:
        return value.astimezone(dt.UTC)
    except (OverflowError, ValueError) as e:
        raise InvalidCommand(f"{what} {value} cannot be expressed in UTC") from e
