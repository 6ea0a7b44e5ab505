"""Asking witnesses to cosign a checkpoint (C2SP tlog-witness ``add-checkpoint``).

``submit`` sends ``old <size>``, the consistency proof from that size and
the signed checkpoint; it returns the witness's cosignature line(s). A 409
carries the size the witness last cosigned (``WitnessConflict.size``): ask
again with a proof from there. Everything else a witness refuses is a
``witness_refused`` error naming its status and reason; an unreachable
witness is ``unavailable``. httpx is the HTTP client (async, keep-alive).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Final

import httpx

from events.errors import CortexError, Unavailable

TIMEOUT: Final = 10.0
_DASH: Final = "\u2014 "


class WitnessConflict(CortexError):
    """The witness last cosigned another size (HTTP 409): resubmit from ``size``."""

    code = "witness_refused"

    def __init__(self, message: str, *, size: int) -> None:
        super().__init__(message)
        self.size = size


def request_body(note: str, old_size: int, proof: Sequence[bytes]) -> bytes:
    """The add-checkpoint body: ``old N``, the proof lines, an empty line, the note."""
    lines = [f"old {old_size}", *(base64.b64encode(h).decode() for h in proof)]
    return ("\n".join(lines) + "\n\n" + note).encode()


async def submit(
    note: str,
    old_size: int,
    proof: Sequence[bytes],
    url: str,
    *,
    client: httpx.AsyncClient | None = None,
    timeout: float = TIMEOUT,
) -> str:
    """The cosignature line(s) a witness at ``url`` gives ``note``."""
    endpoint = url.rstrip("/") + "/add-checkpoint"
    body = request_body(note, old_size, proof)
    try:
        if client is None:
            async with httpx.AsyncClient(timeout=timeout) as own:
                response = await own.post(endpoint, content=body)
        else:
            response = await client.post(endpoint, content=body, timeout=timeout)
    except httpx.HTTPError as e:
        raise Unavailable(f"witness {url} did not answer: {e}") from e
    text = response.text
    if response.status_code == 409:
        try:
            size = int(text.strip())
        except ValueError as e:
            raise CortexError(
                f"witness {url} answered 409 without a size", code="witness_refused"
            ) from e
        raise WitnessConflict(f"witness {url} last cosigned size {size}", size=size)
    if response.status_code != 200:
        raise CortexError(
            f"witness {url} refused ({response.status_code}): {text.strip()}",
            code="witness_refused",
        )
    lines = [line for line in text.splitlines() if line]
    if not lines or not all(line.startswith(_DASH) for line in lines):
        raise CortexError(f"witness {url} answered no signature lines", code="witness_refused")
    return "".join(f"{line}\n" for line in lines)
