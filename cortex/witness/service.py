"""``cortex witness``: the C2SP tlog-witness ``add-checkpoint`` service.

The witness keeps, per log origin, the size and root of the last checkpoint
it cosigned, in ``<folder>/state.json`` (atomic write + fsync), and its own
Ed25519 key in ``<folder>/witness.key`` (0600). ``POST /add-checkpoint``
takes ``old <size>``, the consistency proof lines (base64), an empty line
and the signed checkpoint, and answers as the spec says:

- 404: the origin is not one it witnesses; 403: no good signature by the
  log key configured for it (signatures by other keys are ignored);
- 400: a malformed body, or ``old`` above the checkpoint's size;
- 409 (``text/x.tlog.size``, its size): ``old`` is not the size it recorded;
- 422: the proof does not take its recorded root to the new one;
- 200: one cosignature line (C2SP tlog-cosignature v1, Ed25519), after
  the new state is on disk. Check-and-persist happen under one lock.

``GET /<sha256(origin) hex>/checkpoint`` serves the last cosigned note
(monitor retrieval). The tree is RFC 6962's with BLAKE3 (``events/merkle.py``),
so the empty tree's root is BLAKE3 of the empty string.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import msgspec
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from cortex.core.keys import create_key, load_key
from cortex.listen import listen
from cortex.trust import atomic_write
from events import ed25519
from events.errors import CortexError
from events.merkle import blake3_hash, verify_consistency
from events.note import (
    NoteError,
    cosign,
    cosigner_verifier_key,
    key_id,
    parse_checkpoint,
    parse_verifier_key,
    raw_public,
)

KEY_FILE: Final = "witness.key"
STATE_FILE: Final = "state.json"
URL_FILE: Final = "witness.url"
SIZE_TYPE: Final = "text/x.tlog.size"
MAX_PROOF: Final = 63
MAX_BODY: Final = 64 * 1024
_DASH: Final = "\u2014 "


class _Log(msgspec.Struct):
    size: int
    root: str
    note: str = ""


class _State(msgspec.Struct):
    version: int = 1
    logs: dict[str, _Log] = msgspec.field(default_factory=dict)


_decoder: Final = msgspec.json.Decoder(_State)
_encoder: Final = msgspec.json.Encoder(order="sorted")


class Refused(Exception):
    """A request the witness answers with an HTTP error status."""

    def __init__(self, status: int, reason: str, *, size: int | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.size = status, reason, size

    def response(self) -> Response:
        if self.size is not None:
            return PlainTextResponse(f"{self.size}\n", self.status, media_type=SIZE_TYPE)
        return PlainTextResponse(f"{self.reason}\n", self.status)


@dataclass(frozen=True, slots=True)
class LogKey:
    """A log's verifier key, and the origin it is bound to (None: any origin)."""

    name: str
    public_key: bytes
    origin: str | None = None


def _split_body(raw: bytes) -> tuple[int, list[bytes], str]:
    """``(old size, proof hashes, note)`` of an add-checkpoint body; ``Refused(400)``."""
    try:
        text = raw.decode()
    except UnicodeDecodeError as e:
        raise Refused(400, "the body is not UTF-8") from e
    head, sep, note = text.partition("\n\n")
    if not sep:
        raise Refused(400, "no empty line between the proof and the checkpoint")
    lines = head.split("\n")
    old = lines[0].removeprefix("old ")
    if not lines[0].startswith("old ") or not old.isdigit() or (old != "0" and old[0] == "0"):
        raise Refused(400, "the first line is not `old <size>`")
    if len(lines) - 1 > MAX_PROOF:
        raise Refused(400, f"more than {MAX_PROOF} consistency proof lines")
    proof = []
    for line in lines[1:]:
        try:
            hashed = base64.b64decode(line, validate=True)
        except binascii.Error as e:
            raise Refused(400, "a consistency proof line is not base64") from e
        if len(hashed) != 32:
            raise Refused(400, "a consistency proof line is not a 32-byte hash")
        proof.append(hashed)
    return int(old), proof, note


def _signed_by(note: str, keys: list[LogKey]) -> str:
    """The note's body if a configured key signed it; ``Refused(403)`` otherwise.

    Signature lines by other keys are ignored (C2SP signed-note), a line that
    names a configured key but does not verify is a forgery.
    """
    cut = note.rfind("\n\n")
    if cut < 0 or not note.endswith("\n"):
        raise Refused(400, "the checkpoint is not a signed note")
    body = note[: cut + 1]
    for line in note[cut + 2 : -1].split("\n"):
        name, _, encoded = line.removeprefix(_DASH).partition(" ")
        try:
            blob = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            continue
        for key in keys:
            if name != key.name or blob[:4] != key_id(key.name, key.public_key):
                continue
            if not ed25519.verify(key.public_key, blob[4:], body.encode()):
                raise Refused(403, f"the signature by {name} does not verify")
            return body
    raise Refused(403, "no signature by a log key this witness trusts for the origin")


@dataclass(slots=True)
class Witness:
    """The witness's key, the logs it trusts and its state; ``add_checkpoint`` is the protocol."""

    folder: Path
    name: str
    key: Ed25519PrivateKey
    log_keys: list[LogKey]
    logs: dict[str, _Log] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @classmethod
    def open(cls, folder: Path, name: str, log_keys: list[LogKey]) -> Witness:
        """The witness in ``folder``: its key (created 0600 on first use) and its state."""
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = folder / KEY_FILE
        key = load_key(path) if path.exists() else create_key(path)
        if path.stat().st_mode & 0o077:
            raise CortexError(f"{path} is readable by others: chmod 600 it", code="witness_error")
        try:
            state = _decoder.decode((folder / STATE_FILE).read_bytes())
        except FileNotFoundError:
            state = _State()
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as e:
            raise CortexError(
                f"cannot read the witness state {folder / STATE_FILE}: {e}", code="witness_error"
            ) from e
        return cls(folder, name, key, log_keys, dict(state.logs))

    @property
    def verifier(self) -> str:
        """The witness's verifier key, as ``cortex audit --witness`` takes it."""
        return cosigner_verifier_key(self.name, raw_public(self.key.public_key()))

    def _save(self) -> None:
        atomic_write(self.folder / STATE_FILE, _encoder.encode(_State(logs=self.logs)) + b"\n")

    async def add_checkpoint(self, raw: bytes) -> str:
        """The cosignature line for an add-checkpoint body; ``Refused`` with the status."""
        old, proof, note = _split_body(raw)
        body = note[: note.rfind("\n\n") + 1] if "\n\n" in note else note
        try:
            checkpoint = parse_checkpoint(body)
        except NoteError as e:
            raise Refused(400, f"not a checkpoint: {e}") from e
        keys = [k for k in self.log_keys if k.origin in (None, checkpoint.origin)]
        if not keys:
            raise Refused(404, f"unknown origin {checkpoint.origin}")
        _signed_by(note, keys)
        if old > checkpoint.tree_size:
            raise Refused(400, f"old size {old} is above the checkpoint's {checkpoint.tree_size}")
        async with self.lock:
            recorded = self.logs.get(checkpoint.origin)
            size = recorded.size if recorded else 0
            if old != size:
                raise Refused(409, f"the last cosigned size is {size}", size=size)
            root = bytes.fromhex(recorded.root) if recorded else blake3_hash(b"")
            if checkpoint.tree_size == 0 and checkpoint.root != blake3_hash(b""):
                raise Refused(422, "a tree of size 0 has the empty tree's root")
            if not verify_consistency(old, checkpoint.tree_size, root, checkpoint.root, proof):
                raise Refused(422, "the consistency proof does not hold")
            line = cosign(body, self.name, self.key, int(time.time()))
            self.logs[checkpoint.origin] = _Log(
                checkpoint.tree_size, checkpoint.root.hex(), note + line
            )
            try:
                await asyncio.to_thread(self._save)
            except OSError:
                if recorded is None:
                    del self.logs[checkpoint.origin]
                else:
                    self.logs[checkpoint.origin] = recorded
                raise
        return line

    def latest(self, origin_hash: str) -> str | None:
        """The last cosigned note of the origin whose SHA-256 is ``origin_hash``."""
        for origin, log in self.logs.items():
            if hashlib.sha256(origin.encode()).hexdigest() == origin_hash:
                return log.note
        return None


def app(witness: Witness, on_fatal: Callable[[str], None]) -> Starlette:
    """The HTTP interface; a state that cannot be saved stops the service (``on_fatal``)."""

    async def add_checkpoint(request: Request) -> Response:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            return PlainTextResponse("the body is too large\n", 400)
        try:
            line = await witness.add_checkpoint(raw)
        except Refused as e:
            return e.response()
        except OSError as e:
            on_fatal(f"cannot save the witness state in {witness.folder}: {e}")
            return PlainTextResponse("the witness cannot save its state\n", 500)
        return PlainTextResponse(line)

    async def checkpoint(request: Request) -> Response:
        note = witness.latest(request.path_params["origin_hash"])
        if note is None:
            return PlainTextResponse("no checkpoint cosigned for that origin\n", 404)
        return PlainTextResponse(note)

    return Starlette(
        routes=[
            Route("/add-checkpoint", add_checkpoint, methods=["POST"]),
            Route("/{origin_hash}/checkpoint", checkpoint, methods=["GET"]),
        ]
    )


def parse_log_key(text: str) -> LogKey:
    """``[ORIGIN=]VERIFIER``: a log key, bound to one origin or to any."""
    origin, _, verifier = text.partition("=") if "=" in text.split("+", 1)[0] else ("", "", text)
    name, public_key = parse_verifier_key(verifier)
    return LogKey(name, public_key, origin or None)


async def serve(witness: Witness, port: int) -> None:
    """Serve on 127.0.0.1:``port`` until a signal; ``CortexError`` saying why it stopped."""
    sock = listen(port, what="the witness", code="witness_error")
    fatal: list[str] = []

    def stop(reason: str) -> None:
        fatal.append(reason)
        server.should_exit = True

    config = uvicorn.Config(app(witness, stop), log_level="warning", access_log=False)
    server = uvicorn.Server(config)

    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    atomic_write(witness.folder / URL_FILE, f"{url}\n".encode(), mode=0o644)
    print(f"witness {witness.name} on {url}", flush=True)
    print(f"verifier key {witness.verifier}", flush=True)
    try:
        await server.serve(sockets=[sock])
    except SystemExit as e:  # uvicorn exits on a failed startup
        raise CortexError(
            f"the witness HTTP server failed to start ({e})", code="witness_error"
        ) from e
    finally:
        sock.close()
        (witness.folder / URL_FILE).unlink(missing_ok=True)
    if fatal:
        raise CortexError(fatal[0], code="witness_error")
    print("witness stopped", file=sys.stderr, flush=True)


__all__ = ["LogKey", "Refused", "Witness", "app", "parse_log_key", "serve"]
