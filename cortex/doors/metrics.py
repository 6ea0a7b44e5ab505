"""The HTTP door's Prometheus metrics: one ``CollectorRegistry`` per app (tests run several
servers in one process; the global registry would refuse the second one's series).

Requests are labelled by route template (``/v1/facts/{fact_id}``), never the raw path,
so a client cannot grow the series without bound. The ledger gauges are set when
``/metrics`` is scraped, from the node's status (``cortex.doors.http``).
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Seconds: 0.5 ms to 1 s (a read answers in about a millisecond, a write in a few).
BUCKETS: Final = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class Metrics:
    """Every series the HTTP door exports, on its own registry."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "cortex_http_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "cortex_http_request_duration_seconds",
            "Time from a request's arrival to its answer's start",
            ["route", "method"],
            buckets=BUCKETS,
            registry=r,
        )
        self.rejections = Counter(
            "cortex_rejections",
            "Requests refused, by stable error code and door",
            ["code", "door"],
            registry=r,
        )
        self.auth_failures = Counter(
            "cortex_auth_failures",
            "Requests refused before any operation: no token, a bad one, another tenant",
            ["reason"],
            registry=r,
        )
        self.ledger_seq = Gauge(
            "cortex_ledger_seq",
            "The highest ledger seq this server knows of: the node's, or a receipt's if later",
            registry=r,
        )
        self.applied_seq = Gauge(
            "cortex_projector_applied_seq",
            "The seq the answering node's projector has applied",
            registry=r,
        )
        self.lag = Gauge(
            "cortex_projector_lag_events",
            "cortex_ledger_seq minus cortex_projector_applied_seq",
            registry=r,
        )
        self.following = Gauge(
            "cortex_projector_following",
            "1 while the answering node's projector follows the ledger, else 0",
            registry=r,
        )
