"""The ledger's messages as CORTEX sees them, whatever client carries them.

An event on its way to the stream (``Outgoing``), one read back from it
(``StoredEvent``), and the subject each is stored under. Plain data: the
sequencer builds the first without knowing NATS, the audit and the node read
the second without importing nats-py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import msgspec

LEDGER_PREFIX: Final = "cortex.ledger"


class StoredEvent(msgspec.Struct, frozen=True, gc=False):
    """One ledger message as JetStream holds it: position, bytes and chain links.

    A msgspec Struct, not a frozen dataclass: built once per event read, and a
    frozen dataclass's ``__init__`` costs a million-event read about a second.
    """

    seq: int
    subject: str
    body: bytes
    prev_hash: bytes
    hash: bytes


@dataclass(frozen=True, slots=True)
class Outgoing:
    """An event ready to append: its subject, canonical bytes and chain links."""

    subject: str
    body: bytes
    #: What JetStream deduplicates it by (``Nats-Msg-Id``): ``msg_id(tenant, event id)``.
    event_id: str
    prev_hash: bytes
    hash: bytes


def msg_id(tenant: str, event_id: str) -> str:
    """An event's ``Nats-Msg-Id``: ids are scoped per tenant, so another tenant's
    event with the same id is not a duplicate (JetStream would drop it, or refuse its
    whole batch)."""
    return f"{tenant}:{event_id}"


def ledger_subject(tenant: str, kind: str) -> str:
    """Where an event of ``kind`` for ``tenant`` is stored: ``cortex.ledger.<tenant>.<kind>``."""
    return f"{LEDGER_PREFIX}.{tenant}.{kind}"
