"""All of CORTEX's NATS access, and the only package that imports nats-py.

    connection  connect (to one server or seeds of a cluster) and close, with a lighter
                header parser
    store       the ledger stream: create and check it, append atomic batches, get, last seq;
                in a cluster its leader and replicas, stepdown, scaling
    stream_config  what the stream's configuration must be, and its live drifts from it
    consumer    read the ledger in order, to a seq or followed live (the hot path)
    rpc         serve a subject / send a request; handlers see an ``Inbound``
    server      the embedded nats-server process
    cluster     N embedded servers on loopback as one JetStream cluster (cortex cluster up)
    auth        credentials (nkeys) and the data folder's users
    permissions the roles' subject permissions, as nats-server configuration
    errors      nats-py's errors translated into ``cortex.errors``, one table
    bus         ``Bus``, the facade over all of it

nats-py's maintainers call it legacy and are building a successor; a switch
should touch this package and nothing else. Absolute imports mean ``import
nats`` in here is nats-py, never this package.
"""

from __future__ import annotations

from cortex.core.records import Outgoing, StoredEvent
from cortex.nats.auth import Credentials, LocalAuth
from cortex.nats.bus import Bus
from cortex.nats.permissions import Role
from cortex.nats.rpc import Handler, Inbound, Serving
from cortex.nats.server import Durability, EmbeddedServer
from cortex.nats.stream_config import StreamDrift
from cortex.nats.subjects import (
    CHECKPOINT_SUBJECT,
    COMMAND_PREFIX,
    DEFAULT_URL,
    DUPLICATE_WINDOW_S,
    HDR_HASH,
    HDR_PREV,
    LEDGER_PREFIX,
    STREAM,
    command_subject,
    ledger_subject,
    parse_urls,
)

__all__ = [
    "Bus",
    "CHECKPOINT_SUBJECT",
    "COMMAND_PREFIX",
    "Credentials",
    "DEFAULT_URL",
    "DUPLICATE_WINDOW_S",
    "Durability",
    "EmbeddedServer",
    "HDR_HASH",
    "HDR_PREV",
    "Handler",
    "Inbound",
    "LEDGER_PREFIX",
    "LocalAuth",
    "Outgoing",
    "Role",
    "STREAM",
    "Serving",
    "StoredEvent",
    "StreamDrift",
    "command_subject",
    "ledger_subject",
    "parse_urls",
]
