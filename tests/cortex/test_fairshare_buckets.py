"""The token buckets behind fair share, with a clock the tests step (no sleeping)."""

from __future__ import annotations

import pytest

from cortex.core.fairshare import FairShare, Rate


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _share(agent: Rate, tenant: Rate) -> tuple[FairShare, Clock]:
    clock = Clock()
    return FairShare(agent, tenant, clock=clock), clock


def test_an_agent_gets_its_burst_then_its_rate() -> None:
    share, clock = _share(Rate(10, 5), Rate(1000, 1000))
    assert share.admit("t", {"a": 5}) == {}
    refused = share.admit("t", {"a": 1})
    assert refused["a"].retry_after == pytest.approx(0.1)
    clock.now += 0.1
    assert share.admit("t", {"a": 1}) == {}


def test_a_refused_request_takes_no_tokens() -> None:
    """Resending at once does not push the agent further back."""
    share, clock = _share(Rate(10, 5), Rate(1000, 1000))
    share.admit("t", {"a": 5})
    for _ in range(100):
        assert "a" in share.admit("t", {"a": 1})
    clock.now += 0.1
    assert share.admit("t", {"a": 1}) == {}
    assert share.refused == 100


def test_agents_and_tenants_are_separate_buckets() -> None:
    share, _clock = _share(Rate(10, 5), Rate(100, 8))
    assert share.admit("t", {"a": 5}) == {}
    assert share.admit("t", {"b": 3}) == {}  # b has its own bucket
    assert share.admit("u", {"a": 5}) == {}  # so has a of another tenant
    refused = share.admit("t", {"c": 1})  # tenant t spent its 8
    assert "tenant 't' is over its rate" in refused["c"].message
    assert share.over("t", {"c": 1}) is not None
    assert share.tenant_empty("t") is not None and share.tenant_empty("u") is None


def test_one_agent_over_refuses_only_its_commands_unless_atomic() -> None:
    share, _clock = _share(Rate(10, 2), Rate(1000, 1000))
    share.admit("t", {"a": 2})
    assert set(share.admit("t", {"a": 1, "b": 1})) == {"a"}
    assert set(share.admit("t", {"a": 1, "c": 1}, whole=True)) == {"a", "c"}
    assert share.over("t", {"a": 1, "d": 1}) is None  # d may pass: decode it in full


def test_a_request_larger_than_the_burst_passes_from_a_full_bucket_and_owes_the_rest() -> None:
    share, clock = _share(Rate(10, 5), Rate(1000, 1000))
    assert share.admit("t", {"a": 8}) == {}
    refused = share.admit("t", {"a": 1})
    assert refused["a"].retry_after == pytest.approx(0.4)  # 3 owed + 1 needed, at 10/s
    clock.now += 0.4
    assert share.admit("t", {"a": 1}) == {}


def test_idle_buckets_are_dropped_so_many_agents_cost_bounded_memory() -> None:
    share, clock = _share(Rate(1000, 1), Rate(1e9, 1e9))
    for n in range(100_000):
        share.admit("t", {f"agent{n}": 1})
        clock.now += 0.0001
    assert len(share) < 5000


def test_rates_parse_and_refuse_nonsense() -> None:
    assert Rate.parse("200") == Rate(200, 1000)
    assert Rate.parse("5000:20000") == Rate(5000, 20000)
    for bad in ("0", "-1", "x", "1:0", "nan", "inf"):
        with pytest.raises(ValueError):  # noqa: PT011 - float's message or ours
            Rate.parse(bad)
