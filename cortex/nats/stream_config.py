"""What CORTEX requires of CORTEX_LEDGER's configuration, and how the live one drifts from it.

The stream's configuration is part of the ledger's integrity (DESIGN.md, trust
boundaries): an age or count limit expires events, interest retention drops
them, a narrower subject filter or a subject transform hides or re-labels
them, sources and mirrors let events in around the writer. ``drifts`` lists,
one by one, every way the live configuration and state differ from what a
tamper-evident ledger needs; the writer refuses to append while the list is
not empty, and ``cortex audit`` reports each as a violation.

The live configuration is read as nats-server's own JSON (the
``$JS.API.STREAM.INFO`` reply), not through nats-py's ``StreamConfig``: a
field nats-py does not know yet (``persist_mode``, message schedules) is
still checked. The fields and what they do are those of nats-server's
``StreamConfig`` (server/stream.go); a field left out here can neither drop
nor hide an event (description, metadata, compression, placement, direct
gets, consumer limits, ``max_msg_size``, which refuses a write rather than
losing one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import msgspec
from nats.aio.client import Client as NatsClient

from cortex.core.records import LEDGER_PREFIX
from cortex.errors import LedgerError
from cortex.nats.errors import jetstream_error, translated
from cortex.nats.subjects import DUPLICATE_WINDOW_S, STREAM

__all__ = [
    "ADVISORIES",
    "StreamDrift",
    "LiveCluster",
    "LiveConfig",
    "LiveState",
    "StreamStatus",
    "drifts",
    "read",
    "state_drifts",
]

_NS: Final = 1_000_000_000
_SUBJECTS: Final = [f"{LEDGER_PREFIX}.>"]
#: JetStream's advisories about this stream: created, updated, deleted (and a few
#: others, which only cost a check). Not ``$JS.EVENT.ADVISORY.API``: that one
#: reports every API call, the writer's own checks and every reader's consumer
#: included, and says nothing the stream's own advisories do not.
ADVISORIES: Final = f"$JS.EVENT.ADVISORY.STREAM.*.{STREAM}"
_INFO: Final = f"$JS.API.STREAM.INFO.{STREAM}"
_STREAM_NOT_FOUND: Final = 10059


class _Named(msgspec.Struct):
    name: str = ""


class _Transform(msgspec.Struct):
    src: str = ""
    dest: str = ""


class LiveConfig(msgspec.Struct):
    """The fields of nats-server's StreamConfig that can drop or hide events (JSON names).

    Defaults are what nats-server means when it leaves a field out.
    """

    subjects: list[str] | None = None
    retention: str = "limits"
    max_msgs: int = -1
    max_bytes: int = -1
    max_age: int = 0  # nanoseconds
    max_msgs_per_subject: int = -1
    discard: str = "old"
    storage: str = "file"
    num_replicas: int = 1
    no_ack: bool = False
    duplicate_window: int = 0  # nanoseconds
    mirror: _Named | None = None
    sources: list[_Named] | None = None
    first_seq: int = 0
    subject_transform: _Transform | None = None
    republish: _Transform | None = None
    sealed: bool = False
    deny_delete: bool = False
    deny_purge: bool = False
    allow_rollup_hdrs: bool = False
    allow_msg_ttl: bool = False
    subject_delete_marker_ttl: int = 0
    allow_msg_counter: bool = False
    allow_msg_schedules: bool = False
    allow_atomic: bool = False
    persist_mode: str = "default"


class LiveState(msgspec.Struct):
    messages: int = 0
    first_seq: int = 0
    last_seq: int = 0


class PeerState(msgspec.Struct, frozen=True):
    """A follower of the stream's Raft group: is it current, how far behind."""

    name: str = ""
    current: bool = False
    offline: bool = False
    #: Nanoseconds since the leader last heard from it.
    active: int = 0
    #: Operations it is behind the leader.
    lag: int = 0


class LiveCluster(msgspec.Struct, frozen=True):
    """Where the stream lives in a cluster: its leader (a server name) and followers.

    A single server reports only its own name as leader and no replicas.
    """

    name: str | None = None
    leader: str | None = None
    replicas: list[PeerState] | None = None


class StreamStatus(msgspec.Struct):
    """The stream's configuration and state as nats-server reported them."""

    config: LiveConfig
    state: LiveState
    cluster: LiveCluster | None = None


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _InfoReply(msgspec.Struct):
    error: _ApiError | None = None
    config: LiveConfig | None = None
    state: LiveState | None = None
    cluster: LiveCluster | None = None


_reply: Final = msgspec.json.Decoder(_InfoReply)


@dataclass(frozen=True, slots=True)
class StreamDrift:
    """One way the stream differs from what the ledger needs, and what it would do."""

    field: str
    found: str
    required: str
    why: str

    def __str__(self) -> str:
        return f"{self.field} is {self.found}, must be {self.required} ({self.why})"


async def read(nc: NatsClient, *, timeout: float) -> StreamStatus | None:
    """The stream's live configuration and state; None when there is no such stream.

    Unavailable while the cluster cannot say (no leader, offline: ``jetstream_error``).
    """
    with translated("stream_info", stream=STREAM):
        msg = await nc.request(_INFO, b"", timeout=timeout)
    reply = _reply.decode(msg.data)
    if reply.error is not None:
        if reply.error.err_code == _STREAM_NOT_FOUND:
            return None
        passing = jetstream_error(
            reply.error.err_code,
            reply.error.description,
            status=reply.error.code,
            doing=f"describing {STREAM}",
        )
        if passing is not None:
            raise passing
        raise LedgerError(
            f"JetStream refused to describe {STREAM}: {reply.error.description} "
            f"({reply.error.err_code})"
        )
    if reply.config is None or reply.state is None:
        raise ValueError(f"JetStream's answer about {STREAM} has no config or state")
    return StreamStatus(reply.config, reply.state, reply.cluster)


def _seconds(ns: int) -> str:
    return f"{ns / _NS:g} s"


def _limit(value: int) -> str:
    return "unlimited" if value <= 0 else f"{value:,}"


def drifts(
    status: StreamStatus | None, *, replicas: int = 1, appended: int = 0
) -> list[StreamDrift]:
    """Every drift of ``status`` from what CORTEX requires; empty when the stream is safe.

    ``replicas``: as many as the operator asked for (fewer is drift, more is not).
    ``appended``: the last seq this process appended or read; a stream that ends
    before it lost events (it was deleted and recreated, or cut).
    """
    if status is None:
        return [StreamDrift("stream", "missing", STREAM, "deleted while CORTEX ran on it")]
    c, s = status.config, status.state
    found: list[StreamDrift] = []

    def require(ok: bool, name: str, have: object, want: str, why: str) -> None:
        if not ok:
            found.append(StreamDrift(name, str(have), want, why))

    subjects = c.subjects or []
    require(
        subjects == _SUBJECTS,
        "subjects",
        subjects,
        str(_SUBJECTS),
        "a narrower filter refuses tenants' events, a wider one stores what the writer did not",
    )
    require(
        c.retention == "limits",
        "retention",
        c.retention,
        "limits",
        "interest and work-queue retention remove events once read",
    )
    require(c.max_age == 0, "max_age", _seconds(c.max_age), "0 (none)", "events would expire")
    for name, value in (
        ("max_msgs", c.max_msgs),
        ("max_bytes", c.max_bytes),
        ("max_msgs_per_subject", c.max_msgs_per_subject),
    ):
        require(value <= 0, name, _limit(value), "unlimited", "old events would be dropped")
    require(
        c.discard == "new",
        "discard",
        c.discard,
        "new",
        "under any limit, discard old drops events where discard new refuses a write",
    )
    require(c.storage == "file", "storage", c.storage, "file", "memory storage loses everything")
    require(
        c.num_replicas >= replicas,
        "num_replicas",
        c.num_replicas,
        f"at least {replicas}",
        "fewer copies than the operator asked for",
    )
    require(
        not c.no_ack, "no_ack", c.no_ack, "false", "appends would go unacknowledged, unverified"
    )
    require(
        c.duplicate_window == int(DUPLICATE_WINDOW_S * _NS),
        "duplicate_window",
        _seconds(c.duplicate_window),
        _seconds(int(DUPLICATE_WINDOW_S * _NS)),
        "the window CORTEX was set up with",
    )
    require(
        c.mirror is None,
        "mirror",
        c.mirror and c.mirror.name,
        "none",
        "a mirror holds another stream's events",
    )
    require(
        not c.sources,
        "sources",
        [src.name for src in c.sources or []],
        "none",
        "sourced messages enter the ledger around the writer",
    )
    require(
        c.first_seq <= 1,
        "first_seq",
        c.first_seq,
        "1",
        "a stream starting later hides the events before it",
    )
    require(
        c.subject_transform is None,
        "subject_transform",
        c.subject_transform and f"{c.subject_transform.src} -> {c.subject_transform.dest}",
        "none",
        "events would be stored under other subjects (tenants) than appended",
    )
    require(
        c.republish is None,
        "republish",
        c.republish and f"{c.republish.src} -> {c.republish.dest}",
        "none",
        "every event would be copied to subjects outside the ledger",
    )
    flags: tuple[tuple[str, bool, bool, str], ...] = (
        ("sealed", c.sealed, False, "a sealed stream takes no more events"),
        ("deny_delete", c.deny_delete, True, "events could be deleted"),
        ("deny_purge", c.deny_purge, True, "the stream could be purged"),
        ("allow_rollup_hdrs", c.allow_rollup_hdrs, False, "a rollup message purges events"),
        ("allow_msg_ttl", c.allow_msg_ttl, False, "a Nats-TTL header makes an event expire"),
        (
            "allow_msg_counter",
            c.allow_msg_counter,
            False,
            "a counter stream sums messages instead of storing events",
        ),
        (
            "allow_msg_schedules",
            c.allow_msg_schedules,
            False,
            "scheduled messages publish into the ledger around the writer",
        ),
        ("allow_atomic", c.allow_atomic, True, "the writer appends atomic batches"),
    )
    for name, have, want, why in flags:
        require(have == want, name, str(have).lower(), str(want).lower(), why)
    require(
        c.subject_delete_marker_ttl == 0,
        "subject_delete_marker_ttl",
        _seconds(c.subject_delete_marker_ttl),
        "0 (none)",
        "delete markers are messages the writer did not append",
    )
    require(
        c.persist_mode in ("", "default"),
        "persist_mode",
        c.persist_mode,
        "default",
        "async persistence acknowledges events before they are on disk",
    )
    found.extend(state_drifts(s, appended=appended))
    return found


def state_drifts(s: LiveState, *, appended: int = 0) -> list[StreamDrift]:
    """What the stream's state says was removed: its start, or its end."""
    found: list[StreamDrift] = []
    if s.last_seq > 0 and s.first_seq != 1:
        gone = f"1-{s.first_seq - 1}" if s.first_seq > 2 else "1"
        found.append(
            StreamDrift(
                "state.first_seq",
                f"{s.first_seq} (events {gone} gone)",
                "1",
                "the stream was purged, or deleted and recreated",
            )
        )
    if appended > s.last_seq:
        found.append(
            StreamDrift(
                "state.last_seq",
                str(s.last_seq),
                f"at least {appended}",
                "events this process saw appended are gone: deleted and recreated, or cut",
            )
        )
    return found
