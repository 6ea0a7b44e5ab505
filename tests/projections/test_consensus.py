"""The consensus formula computed in integers gives the exact rational answer, bit for bit."""

from __future__ import annotations

import random
from fractions import Fraction

from projections.consensus import UNVOTED, consensus, reputation


def _reference(votes: list[tuple[int, int, int]]) -> tuple[float, float, str]:
    live = [(v, reputation(a, d)) for v, a, d in votes if v]
    total = sum((r for _, r in live), Fraction(0))
    score = sum((r * v for v, r in live), Fraction(0)) / total
    settled = len(live) >= 2
    status = (
        "verified"
        if settled and score >= Fraction(1, 2)
        else "rejected"
        if settled and score <= -Fraction(1, 2)
        else "disputed"
    )
    return float(score), float(total), status


def test_integer_arithmetic_matches_exact_fractions() -> None:
    """Every node must compute the same bits: compare with Fraction on 2,000 random vote sets."""
    rng = random.Random(7)
    for _ in range(2000):
        votes = [
            (rng.choice((-1, 0, 1)), rng.randrange(40), rng.randrange(40))
            for _ in range(rng.randrange(1, 12))
        ]
        if not any(v for v, _, _ in votes):
            assert consensus(votes) == UNVOTED
            continue
        c = consensus(votes)
        assert (c.score, c.weight, c.status) == _reference(votes)


def test_thresholds_are_inclusive_and_need_two_voters() -> None:
    """Score exactly +1/2 with two voters is verified; one voter never settles a fact."""
    assert consensus([(1, 0, 0)]).status == "disputed"
    # reps 3/4 (+1) and 1/4 (-1): score (3/4 - 1/4) / 1 = 1/2
    exactly_half = consensus([(1, 2, 0), (-1, 0, 2)])
    assert (exactly_half.score, exactly_half.status) == (0.5, "verified")
    assert consensus([(-1, 2, 0), (1, 0, 2)]).status == "rejected"
    assert consensus([]) == UNVOTED
