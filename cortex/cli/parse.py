"""Reading the command line's values: times, ids, counts. A bad value is a CortexError
(or an ``argparse`` type error), never a traceback."""

from __future__ import annotations

import argparse
import datetime as dt
import uuid

from cortex.errors import CortexError
from events import rules
from events.limits import MAX_BATCH


def parse_time(value: str | None) -> dt.datetime | None:
    """An ISO 8601 date-time (``events.rules.parse_time``: without a zone, UTC)."""
    return None if value is None else rules.parse_time(value)


def parse_uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as e:
        raise CortexError(f"{what} {value!r} is not a UUID", code="invalid_field") from e


def positive(text: str) -> int:
    """An ``argparse`` type: a whole number from 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def batch_size(text: str) -> int:
    """An ``argparse`` type: events per atomic batch."""
    value = int(text)
    if not 1 <= value <= MAX_BATCH:
        raise argparse.ArgumentTypeError(
            f"JetStream takes 1 to {MAX_BATCH} events per atomic batch"
        )
    return value
