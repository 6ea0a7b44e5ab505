"""Re-judging stored events: each event no writer would have appended is refused with
the writer's own code, and the fold goes on as the writer's catch-up does."""

from __future__ import annotations

import itertools
import uuid

import pytest

from events.commands import (
    CastVote,
    Command,
    DeprecateFact,
    RegisterAgent,
    StoreFact,
    to_event,
)
from events.limits import MAX_CONTENT_BYTES
from events.model import SYSTEM_TENANT, Event, WriterKeyAdded
from events.rejudge import TS_MAX, Rejudge

T = "acme"
KEY = "ab" * 32
_n = itertools.count(1)


def _id() -> uuid.UUID:
    return uuid.UUID(int=(0x0190 << 112) | next(_n))


class Book:
    """A rejudge fed events as a ledger would hold them; ``add`` returns the refusal code."""

    def __init__(self) -> None:
        self.rejudge = Rejudge()
        self.seq = 0

    def add(self, command: Command | Event, tenant: str = T) -> str | None:
        event = to_event(command, tenant=tenant, ts=1) if isinstance(command, Command) else command
        refusal = self.rejudge.judge(event)
        self.seq += 1
        self.rejudge.fold(event, self.seq)
        return None if refusal is None else refusal.code


def _book() -> tuple[Book, uuid.UUID]:
    book = Book()
    assert book.add(RegisterAgent(id=_id(), agent_id="ann")) is None
    assert book.add(RegisterAgent(id=_id(), agent_id="bob")) is None
    assert book.add(RegisterAgent(id=_id(), agent_id="kay", public_key=KEY)) is None
    assert book.add(RegisterAgent(id=_id(), agent_id="ann"), "rival") is None
    fact = _id()
    assert book.add(StoreFact(id=_id(), fact_id=fact, agent_id="ann", content="x")) is None
    return book, fact


def _vote(fact: uuid.UUID, value: int = 1, agent: str = "bob") -> CastVote:
    return CastVote(id=_id(), fact_id=fact, agent_id=agent, value=value)


def test_a_ledger_the_writer_built_is_refused_nothing() -> None:
    book, fact = _book()
    other = _id()
    assert book.add(StoreFact(id=_id(), fact_id=other, agent_id="bob", content="y")) is None
    assert book.add(_vote(fact)) is None
    assert book.add(_vote(fact, 0)) is None
    deprecation = DeprecateFact(id=_id(), fact_id=fact, agent_id="ann", successor_id=other)
    assert book.add(deprecation) is None


@pytest.mark.parametrize(
    ("make", "tenant", "code"),
    [
        (lambda f: _vote(f, agent="eve"), T, "unknown_agent"),
        (lambda f: _vote(f, 7), T, "invalid_vote"),
        (_vote, "rival", "unknown_agent"),
        (lambda f: CastVote(id=_id(), fact_id=f, agent_id="ann", value=1), "rival", "unknown_fact"),
        (
            lambda f: StoreFact(
                id=_id(), fact_id=_id(), agent_id="ann", content="x" * (MAX_CONTENT_BYTES + 1)
            ),
            T,
            "too_large",
        ),
        (
            lambda f: StoreFact(id=_id(), fact_id=f, agent_id="bob", content="again"),
            T,
            "fact_exists",
        ),
        (lambda f: RegisterAgent(id=_id(), agent_id="eve"), SYSTEM_TENANT, "reserved_tenant"),
        (lambda f: DeprecateFact(id=_id(), fact_id=f, agent_id="bob"), T, "reason_required"),
        (lambda f: DeprecateFact(id=_id(), fact_id=_id(), agent_id="ann"), T, "unknown_fact"),
        (lambda f: RegisterAgent(id=_id(), agent_id="ann"), T, "agent_exists"),
        (
            lambda f: DeprecateFact(id=_id(), fact_id=f, agent_id="ann", successor_id=f),
            T,
            "invalid_field",
        ),
    ],
    ids=[
        "unregistered",
        "vote_of_7",
        "other_tenants_agent",
        "other_tenants_fact",
        "900kb",
        "reused_fact_id",
        "system_tenant",
        "non_author_without_reason",
        "unknown_fact",
        "duplicate_registration",
        "successor_itself",
    ],
)
def test_events_no_writer_would_append_are_refused_with_the_writers_code(
    make: object, tenant: str, code: str
) -> None:
    book, fact = _book()
    assert callable(make)
    assert book.add(make(fact), tenant) == code


def test_a_successor_in_another_tenant_is_an_unknown_fact() -> None:
    book, fact = _book()
    theirs = _id()
    assert (
        book.add(StoreFact(id=_id(), fact_id=theirs, agent_id="ann", content="r"), "rival") is None
    )
    move = DeprecateFact(id=_id(), fact_id=fact, agent_id="ann", successor_id=theirs)
    assert book.add(move) == "unknown_fact"


def test_a_second_deprecation_is_already_deprecated() -> None:
    book, fact = _book()
    assert book.add(DeprecateFact(id=_id(), fact_id=fact, agent_id="ann")) is None
    assert book.add(DeprecateFact(id=_id(), fact_id=fact, agent_id="ann")) == "already_deprecated"


def test_the_first_owner_holds_after_a_refused_event() -> None:
    """A forged re-store of ann's fact by bob is refused and takes nothing over: bob still
    needs a reason to deprecate it. (That refused deprecation is folded all the same,
    as the writer's catch-up folds it: the fact now counts as deprecated.)"""
    book, fact = _book()
    assert book.add(StoreFact(id=_id(), fact_id=fact, agent_id="bob", content="mine")) == (
        "fact_exists"
    )
    assert book.add(DeprecateFact(id=_id(), fact_id=fact, agent_id="bob")) == "reason_required"
    assert book.add(DeprecateFact(id=_id(), fact_id=fact, agent_id="ann")) == ("already_deprecated")


def test_signature_rules_are_left_to_the_verifier() -> None:
    """kay has a key and this vote is unsigned: the verifier names it (agent_signature),
    so re-judging does not report it a second time."""
    book, fact = _book()
    assert book.add(_vote(fact, agent="kay")) is None


def test_the_ledgers_own_events_are_not_commands_but_their_time_is_checked() -> None:
    book, _ = _book()
    key = WriterKeyAdded(id=_id(), tenant=SYSTEM_TENANT, ts=1, name="w", public_key=KEY)
    assert book.add(key) is None
    late = WriterKeyAdded(id=_id(), tenant=SYSTEM_TENANT, ts=TS_MAX + 1, name="w", public_key=KEY)
    assert book.add(late) == "invalid_field"
