"""Asking witnesses to cosign a checkpoint (C2SP tlog-witness ``add-checkpoint``).

``submit`` sends ``old <size>``, the consistency proof from that size and
the signed checkpoint; it returns the witness's cosignature line(s). A 409
carries the size the witness last cosigned (``WitnessConflict.size``): ask
again with a proof from there. Everything else a witness refuses is a
``witness_refused`` error naming its status and reason; an unreachable
witness is ``unavailable``. httpx is the HTTP client (async, keep-alive).

``cosign`` is the whole exchange ``cortex cosign`` and ``cortex up --witness``
share: submit from the size the witness is believed to hold (0 at first),
and on a 409 once more with a consistency proof from the size it names.
``record`` keeps a cosigned note as ``<folder>/<origin>/<size>.note``
(cosignatures by several witnesses on one checkpoint are merged into one
file), where ``cortex audit --witness`` looks; ``fetch_cosigned`` reads a
witness's latest cosigned note of an origin (``GET /<sha256(origin)>/checkpoint``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Final

import httpx

from cortex.trust import Head, atomic_write
from events.errors import CortexError, Unavailable

#: ``(old_size, new_size)`` → the consistency proof's hashes (from the read side).
ProofSource = Callable[[int, int], Awaitable[Sequence[bytes]]]

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


async def cosign(
    note: str,
    url: str,
    proof: ProofSource,
    *,
    old_size: int = 0,
    client: httpx.AsyncClient | None = None,
    timeout: float = TIMEOUT,
) -> str:
    """The cosignature line(s) of the witness at ``url`` on ``note``.

    Submits from ``old_size`` (what the witness last cosigned, as far as the
    caller knows); on a 409, once more from the size the witness names, with a
    proof from ``proof``. A witness ahead of the checkpoint is refused: it has
    cosigned a longer tree, and a shorter one is never asked of it.
    """
    head = Head.from_note(note)

    async def attempt(size: int) -> str:
        path = await proof(size, head.tree_size) if 0 < size < head.tree_size else []
        return await submit(note, size, path, url, client=client, timeout=timeout)

    try:
        return await attempt(min(old_size, head.tree_size))
    except WitnessConflict as e:
        if e.size == old_size or e.size > head.tree_size:
            raise CortexError(
                f"witness {url} cosigned {e.size} events of {head.origin}; the checkpoint "
                f"has {head.tree_size}: not cosigning a shorter tree",
                code="witness_refused",
            ) from e
        return await attempt(e.size)


def _safe(origin: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in origin)


def cosigned_path(folder: Path, head: Head) -> Path:
    """Where the cosigned note of ``head`` is kept under ``folder``."""
    return folder / _safe(head.origin) / f"{head.tree_size}.note"


def record(folder: Path, note: str, lines: str) -> Path:
    """Keep ``note`` with the cosignature ``lines`` (merged with those already kept for
    the same checkpoint); the file's path. Synchronous: no other task interleaves."""
    path = cosigned_path(folder, Head.from_note(note))
    kept = ""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        kept = path.read_text()
    if not kept.startswith(note):
        kept = note
    known = set(kept.splitlines())
    kept += "".join(f"{line}\n" for line in lines.splitlines() if line and line not in known)
    atomic_write(path, kept.encode(), mode=0o644)
    return path


def checkpoint_url(url: str, origin: str) -> str:
    """Where a witness serves its latest cosigned note of ``origin``."""
    return f"{url.rstrip('/')}/{hashlib.sha256(origin.encode()).hexdigest()}/checkpoint"


async def fetch_cosigned(url: str, origin: str, *, timeout: float = TIMEOUT) -> str:
    """The latest note the witness at ``url`` cosigned for ``origin``.

    ``unavailable`` if it does not answer, ``witness_refused`` if it has none.
    """
    where = checkpoint_url(url, origin)
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.get(where)
    except httpx.HTTPError as e:
        raise Unavailable(f"witness {url} did not answer: {e or type(e).__name__}") from e
    if response.status_code != 200:
        raise CortexError(
            f"witness {url} has no cosigned checkpoint of {origin} "
            f"({response.status_code}: {response.text.strip()[:200]})",
            code="witness_refused",
        )
    return response.text
