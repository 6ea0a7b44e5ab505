"""The ledger's event types: what happened, in the past tense.

Every write to CORTEX becomes one of these frozen msgspec Structs, tagged by
``kind`` so one union decodes them all. Schema evolution follows msgspec's
rules: a field added later always gets a default, so an event stored by an
older writer still decodes; ``v`` says which shape the writer meant.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Final

import msgspec

from events import limits

SCHEMA_VERSION: Final = 1

#: An agent's id: a short, printable name chosen by its operator.
AgentId = Annotated[
    str, msgspec.Meta(min_length=1, max_length=limits.MAX_NAME, pattern=limits.AGENT_PATTERN)
]
#: A tenant is a NATS subject token, so it may not contain dots or wildcards.
Tenant = Annotated[
    str, msgspec.Meta(min_length=1, max_length=limits.MAX_NAME, pattern=limits.TENANT_PATTERN)
]
Tag = Annotated[str, msgspec.Meta(min_length=1, max_length=limits.MAX_NAME)]
Tags = Annotated[tuple[Tag, ...], msgspec.Meta(max_length=limits.MAX_TAGS)]
FactType = Annotated[str, msgspec.Meta(min_length=1, max_length=limits.MAX_NAME)]
Confidence = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Source = Annotated[str, msgspec.Meta(max_length=limits.MAX_TEXT)]
Reason = Annotated[str, msgspec.Meta(max_length=limits.MAX_TEXT)]
#: An Ed25519 public key, 32 bytes as lowercase hex.
PublicKey = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
WorldTime = Annotated[dt.datetime, msgspec.Meta(tz=True)]
#: An Ed25519 signature, 64 bytes as lowercase hex.
Signature = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{128}$")]
#: A 32-byte hash as lowercase hex.
HashHex = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
#: A signed-note key name: no spaces, no '+'.
KeyName = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[^\s+]+$")]

#: The tenant of the ledger's own events (writer keys, checkpoints). Agents'
#: commands can never name it: tenants that start with "_" are reserved.
SYSTEM_TENANT: Final = limits.RESERVED_TENANT_PREFIX + "cortex"


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind"):
    """Fields every event carries.

    ``id`` is chosen by the client (a UUIDv7) and is unique in the whole
    ledger: a retried command with the same id appends nothing. ``tenant``
    and ``ts`` (ledger time, nanoseconds since the epoch) are set by the
    writer, never trusted from the client.
    """

    id: uuid.UUID
    tenant: Tenant
    ts: int
    v: int = SCHEMA_VERSION


class AgentRegistered(Event, frozen=True, tag="agent_registered"):
    """An agent joined a tenant, optionally with the key it signs with."""

    agent_id: AgentId
    public_key: PublicKey | None = None


class FactStored(Event, frozen=True, tag="fact_stored"):
    """An agent asserted a fact; ``valid_from``/``valid_until`` bound it in world time."""

    fact_id: uuid.UUID
    agent_id: AgentId
    content: str
    type: FactType = "knowledge"
    tags: Tags = ()
    confidence: Confidence = 1.0
    source: Source = ""
    meta: dict[str, Any] = {}
    valid_from: WorldTime | None = None
    valid_until: WorldTime | None = None
    signature: Signature | None = None


class FactDeprecated(Event, frozen=True, tag="fact_deprecated"):
    """A fact stopped being current, possibly replaced by ``successor_id``."""

    fact_id: uuid.UUID
    agent_id: AgentId
    reason: Reason = ""
    successor_id: uuid.UUID | None = None
    signature: Signature | None = None


class VoteCast(Event, frozen=True, tag="vote_cast"):
    """An agent voted +1 or -1 on a fact; 0 withdraws its earlier vote."""

    fact_id: uuid.UUID
    agent_id: AgentId
    value: int
    reason: Reason = ""
    signature: Signature | None = None


class WriterKeyAdded(Event, frozen=True, tag="writer_key_added"):
    """A writer's checkpoint-signing key, recorded before the first checkpoint it signs."""

    name: KeyName
    public_key: PublicKey
    #: A rotation (``events.rotation``): the earlier writer key that endorsed this
    #: one, and its signature naming this ledger and this key. None: a key of its own.
    endorsed_by: PublicKey | None = None
    endorsement: Signature | None = None


class CheckpointSigned(Event, frozen=True, tag="checkpoint_signed"):
    """A signed tree head: the Merkle root over the hashes of events 1..tree_size.

    ``note`` is the C2SP signed note (see ``events/note.py``); the other
    fields repeat what it says, for queries. ``public_key`` names the
    writer key that signed it.
    """

    tree_size: int
    root: HashHex
    head: HashHex
    public_key: PublicKey
    note: str


AnyEvent = (
    AgentRegistered | FactStored | FactDeprecated | VoteCast | WriterKeyAdded | CheckpointSigned
)

EVENT_TYPES: Final[tuple[type[Event], ...]] = (
    AgentRegistered,
    FactStored,
    FactDeprecated,
    VoteCast,
    WriterKeyAdded,
    CheckpointSigned,
)


def kind_of(event: Event) -> str:
    """The event's tag, as stored in its ``kind`` field and ledger subject."""
    return str(type(event).__struct_config__.tag)
