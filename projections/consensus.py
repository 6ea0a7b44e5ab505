"""Reputation-weighted consensus: the formula, as a pure function.

Votes. An agent's current vote on a fact is +1 or -1; a later vote replaces
it and a 0 withdraws it (the ledger keeps every one).

Reputation. ``rep = (1 + agrees) / (2 + agrees + disagrees)``: the agent's
rate of agreement with *settled* facts, with one imagined agreement and one
imagined disagreement so a newcomer starts at 1/2 and no one reaches 0 or 1.
An agent agrees with a settled fact when its current vote points the way
the fact settled.

Score. ``score = Σ rep_i · v_i / Σ rep_i`` over the fact's current votes,
in [-1, 1]; ``weight = Σ rep_i``. Computed exactly — in integers over the
common denominator of the reputations — and rounded once to a float, so
every node gets the same bits.

Status. ``unvoted`` (no current vote); ``verified`` when score >= +1/2 with
at least 2 voters; ``rejected`` when score <= -1/2 with at least 2 voters;
``disputed`` otherwise. Verified and rejected are *settled*.

When. A fact's consensus is recomputed when a vote on it is applied, with
the reputations as they stand then, leaving out each voter's agreement
with this very fact; when its settled direction changes, each of its
voters' agreement counts move with it. A reputation change does
not recompute other facts until their next vote. All of it is a function of
the event order alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Final

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
        return _DIRECTION.get(self.status, 0)


_DIRECTION: Final = {"verified": 1, "rejected": -1}
UNVOTED: Final = Consensus(0.0, 0.0, 0, 0, "unvoted")


def consensus(votes: Iterable[tuple[int, int, int]]) -> Consensus:
    """The consensus of ``(value, agrees, disagrees)`` per current voter; zeros are ignored.

    The formula by itself, for tests and readers; the projector calls
    ``consensus_of`` on its own maps, which does the arithmetic.
    """
    values: dict[str, int] = {}
    counts: dict[tuple[str, str], tuple[int, int]] = {}
    for n, (value, agrees, disagrees) in enumerate(votes):
        values[str(n)] = value
        counts[("", str(n))] = (agrees, disagrees)
    return consensus_of("", values, counts)


def consensus_of(
    tenant: str,
    votes: Mapping[str, int],
    counts: Mapping[tuple[str, str], Sequence[int]],
    settled: int = 0,
) -> Consensus:
    """The consensus of an agent -> vote mapping, agreement counts per ``(tenant, agent)``.

    ``settled`` is the direction this fact was settled in when ``counts``
    include each voter's agreement with the fact itself: that agreement is
    taken out, so a fact's own verdict never weighs in on it (see "When").

    Each reputation is ``p/q = (1 + agrees) / (2 + agrees + disagrees)``.
    Over the common denominator ``L`` of the ``q``, every weight is the
    integer ``p·L/q``, so the sums are exact integers and each float is one
    correctly rounded division — the same bits as exact rational arithmetic,
    several times faster than ``Fraction``. ``L`` grows as the votes come
    (the sums scaled with it), so one pass does it.
    """
    common = 1
    total = weighted = pro = voters = 0
    for agent, value in votes.items():
        if not value:
            continue
        agreement = counts.get((tenant, agent))
        if agreement is None:
            p, q = 1, 2
        else:
            p = 1 + agreement[0]
            q = p + 1 + agreement[1]
            if settled:
                q -= 1
                if value == settled:
                    p -= 1
                if p < 1 or q <= p:  # counts that never held this fact (a forged order)
                    p, q = 1, 2
        if common % q:
            grown = math.lcm(common, q)
            scale = grown // common
            total *= scale
            weighted *= scale
            common = grown
        weight = p * (common // q)
        total += weight
        voters += 1
        if value > 0:
            weighted += weight
            pro += 1
        else:
            weighted -= weight
    return _settle(weighted, total, common, pro, voters)


def _settle(weighted: int, total: int, common: int, pro: int, voters: int) -> Consensus:
    if not voters:
        return UNVOTED
    # score >= 1/2  <=>  2·weighted >= total (total > 0), exactly.
    if voters >= MIN_VOTERS and 2 * weighted >= total:
        status = "verified"
    elif voters >= MIN_VOTERS and 2 * weighted <= -total:
        status = "rejected"
    else:
        status = "disputed"
    return Consensus(weighted / total, total / common, pro, voters - pro, status)
