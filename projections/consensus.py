"""Reputation-weighted consensus: the formula, as a pure function.

Votes. An agent's current vote on a fact is +1 or -1; a later vote replaces
it and a 0 withdraws it (the ledger keeps every one).

Reputation. ``rep = (1 + agrees) / (2 + agrees + disagrees)``: the agent's
rate of agreement with *settled* facts, with one imagined agreement and one
imagined disagreement so a newcomer starts at 1/2 and no one reaches 0 or 1.
An agent agrees with a settled fact when its current vote points the way
the fact settled.

Score. ``score = Σ rep_i · v_i / Σ rep_i`` over the fact's current votes,
in [-1, 1]; ``weight = Σ rep_i``. Computed exactly with fractions and
rounded once to a float, so every node gets the same bits.

Status. ``unvoted`` (no current vote); ``verified`` when score >= +1/2 with
at least 2 voters; ``rejected`` when score <= -1/2 with at least 2 voters;
``disputed`` otherwise. Verified and rejected are *settled*.

When. A fact's consensus is recomputed when a vote on it is applied, with
the reputations as they stand then; when its settled direction changes,
each of its voters' agreement counts move with it. A reputation change does
not recompute other facts until their next vote. All of it is a function of
the event order alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Final

SETTLE_THRESHOLD: Final = Fraction(1, 2)
MIN_VOTERS: Final = 2


def reputation(agrees: int, disagrees: int) -> Fraction:
    return Fraction(1 + agrees, 2 + agrees + disagrees)


@dataclass(frozen=True, slots=True)
class Consensus:
    score: float
    weight: float
    votes_for: int
    votes_against: int
    status: str

    @property
    def direction(self) -> int:
        """+1 verified, -1 rejected, 0 not settled."""
        return {"verified": 1, "rejected": -1}.get(self.status, 0)


UNVOTED: Final = Consensus(0.0, 0.0, 0, 0, "unvoted")


def consensus(votes: Iterable[tuple[int, Fraction]]) -> Consensus:
    """The consensus of ``(value, voter reputation)`` pairs; zero values are ignored."""
    total = Fraction(0)
    weighted = Fraction(0)
    pro = con = 0
    for value, rep in votes:
        if value == 0:
            continue
        total += rep
        weighted += rep * value
        if value > 0:
            pro += 1
        else:
            con += 1
    if pro + con == 0:
        return UNVOTED
    score = weighted / total
    if pro + con >= MIN_VOTERS and score >= SETTLE_THRESHOLD:
        status = "verified"
    elif pro + con >= MIN_VOTERS and score <= -SETTLE_THRESHOLD:
        status = "rejected"
    else:
        status = "disputed"
    return Consensus(float(score), float(total), pro, con, status)
