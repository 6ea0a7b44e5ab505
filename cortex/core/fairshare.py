"""Fair share at the writer's door: a token bucket per agent and per tenant.

A request is charged one token per command, to the bucket of each agent it
speaks for (its ``agent_id`` within the tenant of the subject) and to its
tenant's bucket, before anything is queued. A bucket refills at ``rate``
tokens per second up to ``burst``. A request that finds too few tokens is
refused whole for that agent (the caller gets ``rate_limited`` and how many
seconds until it would pass), and takes nothing from any bucket: a refused
flood does not dig its own agent deeper.

A request larger than a bucket's burst still passes from a full bucket and
leaves it in debt (negative), so no batch size is refused for ever and the
sustained rate holds all the same.

Memory stays bounded however many distinct agents appear: a bucket that has
refilled completely is the same as no bucket, so such buckets are dropped
whenever the table has doubled since the last sweep. Pure: the clock is a
parameter, so tests step time instead of sleeping.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from events.limits import BURST_AGENT, BURST_TENANT, RATE_AGENT, RATE_TENANT

#: The table is swept once it holds this many buckets, and again each time it doubles.
_SWEEP_FROM: Final = 1024


@dataclass(frozen=True, slots=True)
class Rate:
    """A sustained rate (commands per second) and the burst allowed after idling."""

    per_second: float
    burst: float

    def __post_init__(self) -> None:
        for name in ("per_second", "burst"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"a rate's {name} must be a positive number, not {value}")

    @classmethod
    def parse(cls, text: str) -> Rate:
        """``"RATE"`` (burst: two seconds' worth, at least 1,000) or ``"RATE:BURST"``."""
        rate_text, _, burst_text = text.partition(":")
        per_second = float(rate_text)
        burst = float(burst_text) if burst_text else max(2 * per_second, 1000.0)
        return cls(per_second, burst)

    def __str__(self) -> str:
        return f"{self.per_second:g}/s (burst {self.burst:g})"


DEFAULT_AGENT_RATE: Final = Rate(RATE_AGENT, BURST_AGENT)
DEFAULT_TENANT_RATE: Final = Rate(RATE_TENANT, BURST_TENANT)


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp

    def refill(self, rate: Rate, now: float) -> float:
        if now > self.stamp:
            self.tokens = min(rate.burst, self.tokens + (now - self.stamp) * rate.per_second)
            self.stamp = now
        return self.tokens

    def wait(self, rate: Rate, cost: float) -> float:
        """0 if ``cost`` may pass now (after ``refill``), else the seconds until it may."""
        short = min(cost, rate.burst) - self.tokens
        if short <= 1e-9:  # what a clock step of exactly 1/rate refills, give or take a bit
            return 0.0
        return short / rate.per_second


@dataclass(frozen=True, slots=True)
class Refused:
    """Why a request (or one agent's share of it) was refused, in words and seconds."""

    message: str
    retry_after: float


class _Table:
    """Buckets by key, swept of full (idle) ones as the table grows."""

    def __init__(self, rate: Rate) -> None:
        self.rate = rate
        self.buckets: dict[tuple[str, str], _Bucket] = {}
        self._sweep_at = _SWEEP_FROM

    def get(self, key: tuple[str, str], now: float) -> _Bucket:
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= self._sweep_at:
                self._sweep(now)
            bucket = self.buckets[key] = _Bucket(self.rate.burst, now)
        else:
            bucket.refill(self.rate, now)
        return bucket

    def peek(self, key: tuple[str, str], now: float) -> _Bucket | None:
        bucket = self.buckets.get(key)
        if bucket is not None:
            bucket.refill(self.rate, now)
        return bucket

    def _sweep(self, now: float) -> None:
        burst = self.rate.burst
        self.buckets = {k: b for k, b in self.buckets.items() if b.refill(self.rate, now) < burst}
        self._sweep_at = max(_SWEEP_FROM, 2 * len(self.buckets))


def _seconds(wait: float) -> float:
    """A retry-after as sent: rounded up to the millisecond, never 0."""
    return max(0.001, math.ceil(wait * 1000) / 1000)


class FairShare:
    """The agent and tenant buckets of one writer; see the module doc."""

    def __init__(
        self,
        agent: Rate = DEFAULT_AGENT_RATE,
        tenant: Rate = DEFAULT_TENANT_RATE,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.agent_rate = agent
        self.tenant_rate = tenant
        self.clock = clock
        self._agents = _Table(agent)
        self._tenants = _Table(tenant)
        #: Commands refused so far (for status and tests).
        self.refused = 0

    def __len__(self) -> int:
        """Buckets held (agents and tenants): what this costs in memory."""
        return len(self._agents.buckets) + len(self._tenants.buckets)

    def tenant_empty(self, tenant: str) -> Refused | None:
        """A refusal if ``tenant`` has not even one token: checked before a request is
        decoded, so a tenant's flood costs the writer as little as possible."""
        bucket = self._tenants.peek((tenant, ""), self.clock())
        if bucket is None or bucket.tokens >= 1:
            return None
        return self._tenant_refusal(tenant, bucket.wait(self.tenant_rate, 1))

    def over(self, tenant: str, costs: Mapping[str, int]) -> Refused | None:
        """A refusal if ``admit`` would refuse every command of a request of ``costs``
        (its tenant, or each of its agents, is over): checked on a cheap first read of
        the request, before it is decoded in full. Takes nothing."""
        now = self.clock()
        tenant_bucket = self._tenants.peek((tenant, ""), now)
        if tenant_bucket is not None:
            wait = tenant_bucket.wait(self.tenant_rate, sum(costs.values()))
            if wait:
                return self._tenant_refusal(tenant, wait)
        first: Refused | None = None
        for agent_id, cost in costs.items():
            bucket = self._agents.peek((tenant, agent_id), now)
            wait = 0.0 if bucket is None else bucket.wait(self.agent_rate, cost)
            if not wait:
                return None
            first = first or self._agent_refusal(tenant, agent_id, wait)
        return first

    def admit(
        self, tenant: str, costs: Mapping[str, int], *, whole: bool = False
    ) -> dict[str, Refused]:
        """Charge a request of ``costs`` (agent id → commands) to its buckets.

        Returns the agents whose commands are refused (none: all passed). An
        agent over its rate is refused alone, unless ``whole`` (an atomic
        request): then every agent is. A tenant over its rate refuses all.
        Nothing refused takes any token.
        """
        now = self.clock()
        refused: dict[str, Refused] = {}
        passing: list[tuple[_Bucket, int]] = []
        for agent_id, cost in costs.items():
            bucket = self._agents.get((tenant, agent_id), now)
            wait = bucket.wait(self.agent_rate, cost)
            if wait:
                refused[agent_id] = self._agent_refusal(tenant, agent_id, wait)
            else:
                passing.append((bucket, cost))
        if refused and whole:
            first = next(iter(refused.values()))
            refused = dict.fromkeys(costs, first)
            passing = []
        total = sum(cost for _bucket, cost in passing)
        if total:
            tenant_bucket = self._tenants.get((tenant, ""), now)
            wait = tenant_bucket.wait(self.tenant_rate, total)
            if wait:
                refusal = self._tenant_refusal(tenant, wait)
                refused = dict.fromkeys(costs, refusal)
            else:
                tenant_bucket.tokens -= total
                for bucket, cost in passing:
                    bucket.tokens -= cost
        self.refused += sum(costs[a] for a in refused)
        return refused

    def _agent_refusal(self, tenant: str, agent_id: str, wait: float) -> Refused:
        return Refused(
            f"agent {agent_id!r} of tenant {tenant!r} is over its rate of {self.agent_rate}: "
            f"nothing was appended; retry after {_seconds(wait)} s",
            _seconds(wait),
        )

    def _tenant_refusal(self, tenant: str, wait: float) -> Refused:
        return Refused(
            f"tenant {tenant!r} is over its rate of {self.tenant_rate}: nothing was "
            f"appended; retry after {_seconds(wait)} s",
            _seconds(wait),
        )
