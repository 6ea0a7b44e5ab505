"""Every limit CORTEX enforces, in one table: sizes, counts, patterns and waits.

No imports, so the event model, the rules, the read service, the client and
the CLI can all take their numbers from here. Change a limit here and every
door enforces the new one.
"""

from __future__ import annotations

from typing import Final

#: A tenant is one NATS subject token: no dots, no wildcards.
TENANT_PATTERN: Final = r"^[A-Za-z0-9_-]+$"
#: An agent's id: a short, printable name chosen by its operator.
AGENT_PATTERN: Final = r"^[A-Za-z0-9_.@:-]+$"
#: Tenants that start with this belong to the ledger itself (writer keys, checkpoints).
RESERVED_TENANT_PREFIX: Final = "_"
MAX_NAME: Final = 64
"""Longest tenant, agent id, tag or fact type, in characters."""
MAX_TAGS: Final = 32
MAX_TEXT: Final = 1024
"""Longest source or reason, in characters."""
MAX_CONTENT_BYTES: Final = 64 * 1024
"""Largest fact content the writer accepts, in UTF-8 bytes."""
MAX_META_BYTES: Final = 8 * 1024
"""Largest encoded ``meta`` object, in bytes."""
VOTE_VALUES: Final = frozenset({-1, 0, 1})
MAX_BATCH: Final = 1000
"""Most commands in one batch request (and JetStream's atomic batch limit)."""
MAX_ATOMIC: Final = 100
"""Most commands in one atomic request (all appended in one JetStream batch, or none)."""
MAX_REQUEST_BYTES: Final = 768 * 1024
"""Largest request a client sends: well under NATS's default 1 MiB max payload."""
MAX_QUERY_LIMIT: Final = 1000
"""Most rows one query returns."""
DEFAULT_WAIT_S: Final = 5.0
"""How long a read waits for ``min_seq`` unless it says otherwise."""
MAX_WAIT_S: Final = 30.0
"""Longest a read may wait for ``min_seq`` (read-your-writes)."""
MAX_SEARCH_WORDS: Final = 32
MAX_SEQ: Final = 2**63 - 1
"""Largest seq or tree size anything takes: what SQLite and JetStream can hold."""

# Fair share at the writer: token buckets, in commands. A request is refused with
# ``rate_limited`` (and a retry-after) when its agent's or its tenant's bucket is empty.
# Generous by default: one agent may use the whole writer (a benchmark does); an
# operator who wants one agent's flood not to slow the others sets them below what
# the writer appends per second (``cortex up --rate-agent``, ``--rate-tenant``).
RATE_AGENT: Final = 50_000.0
"""Commands per second one agent of one tenant may send, sustained."""
BURST_AGENT: Final = 100_000.0
"""Commands one agent may send at once after being idle."""
RATE_TENANT: Final = 100_000.0
"""Commands per second one tenant (all its agents) may send, sustained."""
BURST_TENANT: Final = 200_000.0
"""Commands one tenant may send at once after being idle."""
MAX_QUEUED: Final = 50_000
"""Most commands the writer holds waiting for a batch; beyond, it answers ``rate_limited``."""
