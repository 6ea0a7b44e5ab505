"""Reading the command line's values: times, ids, counts. A bad value is a CortexError
(or an ``argparse`` type error), never a traceback."""

from __future__ import annotations

import argparse
import datetime as dt
import uuid

from cortex.errors import CortexError


def parse_time(value: str | None) -> dt.datetime | None:
    """An ISO 8601 date-time; one without a zone is taken as UTC."""
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as e:
        raise CortexError(f"{value!r} is not an ISO 8601 date-time", code="invalid_field") from e
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


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
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError("JetStream takes 1 to 1000 events per atomic batch")
    return value
