"""Names on NATS: the ledger stream, its headers, and the subjects CORTEX serves."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from cortex.core.records import LEDGER_PREFIX, ledger_subject
from cortex.errors import InvalidCommand

__all__ = [
    "CHECKPOINT_SUBJECT",
    "COMMAND_PREFIX",
    "DEFAULT_URL",
    "DUPLICATE_WINDOW_S",
    "HDR_HASH",
    "HDR_PREV",
    "LEDGER_PREFIX",
    "STREAM",
    "command_subject",
    "ledger_subject",
    "parse_urls",
]

STREAM: Final = "CORTEX_LEDGER"
COMMAND_PREFIX: Final = "cortex.cmd"
#: Where ``cortex checkpoint`` asks the writer for a checkpoint now.
CHECKPOINT_SUBJECT: Final = "cortex.admin.checkpoint"
HDR_PREV: Final = "Cortex-Prev"
HDR_HASH: Final = "Cortex-Hash"
DEFAULT_URL: Final = "nats://127.0.0.1:4222"
#: How long JetStream remembers a Nats-Msg-Id; the writer's own index covers all time.
DUPLICATE_WINDOW_S: Final = 120.0


def command_subject(tenant: str, kind: str) -> str:
    """Where a command of ``kind`` for ``tenant`` is sent: ``cortex.cmd.<tenant>.<kind>``."""
    return f"{COMMAND_PREFIX}.{tenant}.{kind}"


def hash_header(headers: dict[str, str] | None, name: str) -> bytes:
    """A hex hash header's bytes; empty when it is missing or not hex."""
    value = (headers or {}).get(name, "")
    try:
        return bytes.fromhex(value)
    except ValueError:
        return b""


def parse_urls(urls: str | Sequence[str]) -> list[str]:
    """Seed server URLs from ``"nats://a:4222,nats://b:4222"`` (or a list of such
    strings): split on commas, stripped, duplicates dropped, order kept.

    A client needs one live seed: the servers of a cluster tell it the others.
    """
    parts = [urls] if isinstance(urls, str) else list(urls)
    found: list[str] = []
    for part in parts:
        for raw in part.split(","):
            url = raw.strip()
            if url and url not in found:
                found.append(url)
    if not found:
        raise InvalidCommand(f"no NATS server URL in {urls!r}", code="invalid_field")
    return found
