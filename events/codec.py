"""Canonical bytes for events and commands.

The ledger hashes the exact bytes it stores, so those bytes must not depend
on the machine or the Python version that wrote them: compact JSON, UTF-8,
keys sorted, every field present, world times in UTC, floats in their
shortest round-trip form. One encoder and one decoder per type, reused.
"""

from __future__ import annotations

from typing import Final

import msgspec

from events.commands import AnyCommand, Command
from events.model import AnyEvent, Event

_encoder: Final = msgspec.json.Encoder(order="sorted")
_event_decoder: Final = msgspec.json.Decoder(AnyEvent)
_command_decoder: Final = msgspec.json.Decoder(AnyCommand)


def encode(value: Event | Command) -> bytes:
    """The canonical encoding of an event or command."""
    return _encoder.encode(value)


def decode_event(data: bytes) -> Event:
    """Decode stored event bytes; raises msgspec.DecodeError/ValidationError."""
    event: Event = _event_decoder.decode(data)
    return event


def decode_command(data: bytes) -> Command:
    """Decode one tagged command; raises msgspec.DecodeError/ValidationError."""
    command: Command = _command_decoder.decode(data)
    return command
