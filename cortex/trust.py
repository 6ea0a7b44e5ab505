"""Remembered heads: the latest checkpoint an auditor or client verified, per ledger origin.

Someone who holds the whole data folder can cut the ledger's tail, restore an
older copy, or re-chain it and re-sign every checkpoint with the writer key
kept beside it; every check made from the folder alone then passes. What
catches it is state kept elsewhere: here, the last checkpoint this user saw
verified, per origin (``cortex.ledger/<first event hash>``), in a small JSON
file in the user's config folder (``$XDG_CONFIG_HOME/cortex/trust.json``,
default ``~/.config/cortex/trust.json``)::

    {"version": 1, "heads": {"cortex.ledger/5f0c9e1d2a7b3c44":
        {"tree_size": 1000, "root": "<hex>", "note": "<signed note>"}}}

A later checkpoint is accepted only if it extends the remembered one: a
smaller tree or a missing checkpoint of the remembered size is a
``rollback``, the same size with another root (or a tree whose first
``tree_size`` leaves give another root) a ``fork``. The first sighting of an
origin is trusted and said so (trust on first use). Writes are atomic
(a temporary file, fsync, rename) and the file is private (0600).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import msgspec

from events.errors import CortexError, Forked, RolledBack
from events.merkle import verify_consistency
from events.note import NoteError, parse_checkpoint

VERSION: Final = 1


class _Head(msgspec.Struct):
    tree_size: int
    root: str
    note: str = ""


class _File(msgspec.Struct):
    version: int = VERSION
    heads: dict[str, _Head] = msgspec.field(default_factory=dict)


_decoder: Final = msgspec.json.Decoder(_File)
_encoder: Final = msgspec.json.Encoder(order="sorted")


@dataclass(frozen=True, slots=True)
class Head:
    """A checkpoint someone verified: its origin, size, root and signed note."""

    origin: str
    tree_size: int
    root: bytes
    note: str = ""

    @classmethod
    def from_note(cls, note: str) -> Head:
        """The head a signed checkpoint note states (its signature is not checked here)."""
        body = note[: note.rfind("\n\n") + 1] if "\n\n" in note else note
        cp = parse_checkpoint(body)
        return cls(cp.origin, cp.tree_size, cp.root, note)


def default_path() -> Path:
    """``$XDG_CONFIG_HOME/cortex/trust.json``, or ``~/.config/cortex/trust.json``."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "cortex" / "trust.json"


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file, whole."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclass(slots=True)
class TrustStore:
    """The remembered heads in one file; ``save`` writes them back."""

    path: Path
    heads: dict[str, Head] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None = None) -> TrustStore:
        """The store at ``path`` (default ``default_path()``); empty if the file does not exist."""
        path = path or default_path()
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls(path)
        except OSError as e:
            raise CortexError(f"cannot read the trust store {path}: {e}", code="bad_key") from e
        try:
            doc = _decoder.decode(raw)
            heads = {
                origin: Head(origin, h.tree_size, bytes.fromhex(h.root), h.note)
                for origin, h in doc.heads.items()
            }
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as e:
            raise CortexError(f"the trust store {path} is not one: {e}", code="bad_key") from e
        return cls(path, heads)

    def get(self, origin: str) -> Head | None:
        return self.heads.get(origin)

    def remember(self, head: Head) -> None:
        self.heads[head.origin] = head

    def save(self) -> None:
        doc = _File(
            heads={
                o: _Head(h.tree_size, h.root.hex(), h.note) for o, h in sorted(self.heads.items())
            }
        )
        atomic_write(self.path, _encoder.encode(doc) + b"\n")


def compare_heads(
    remembered: Head,
    latest: Head | None,
    *,
    root_at_remembered: bytes | None,
    has_remembered_checkpoint: bool,
) -> tuple[str, str] | None:
    """``(code, why)`` if ``latest`` does not extend ``remembered``, else None.

    ``root_at_remembered``: the root of the ledger's first ``remembered.tree_size``
    event hashes as the caller recomputed them (None if it has fewer events);
    ``has_remembered_checkpoint``: whether the ledger still holds a checkpoint of
    that size.
    """
    was = f"the remembered checkpoint of {remembered.tree_size} events (root {remembered.root.hex()[:16]}…)"
    if latest is None:
        return "rollback", f"the ledger has no checkpoint at all, but {was} was verified before"
    if latest.tree_size < remembered.tree_size:
        return "rollback", (
            f"the ledger's latest checkpoint covers {latest.tree_size} events, fewer than {was}"
        )
    if latest.tree_size == remembered.tree_size and latest.root != remembered.root:
        return (
            "fork",
            f"the checkpoint of {latest.tree_size} events has root {latest.root.hex()[:16]}…, not {was}",
        )
    if root_at_remembered is None:
        return "rollback", f"the ledger holds fewer events than {was}"
    if root_at_remembered != remembered.root:
        return "fork", (
            f"the ledger's first {remembered.tree_size} events give root "
            f"{root_at_remembered.hex()[:16]}…: it does not extend {was}"
        )
    if not has_remembered_checkpoint:
        return "rollback", f"the ledger no longer holds {was}"
    return None


def check_consistency(remembered: Head, latest: Head, proof: list[bytes]) -> None:
    """Raise ``RolledBack``/``Forked`` unless ``proof`` shows ``latest`` extends ``remembered``."""
    found = compare_heads(
        remembered,
        latest,
        root_at_remembered=remembered.root,
        has_remembered_checkpoint=True,
    )
    if found is None and latest.tree_size > remembered.tree_size:
        ok = verify_consistency(
            remembered.tree_size, latest.tree_size, remembered.root, latest.root, proof
        )
        if not ok:
            found = (
                "fork",
                f"the node's checkpoint of {latest.tree_size} events does not extend the "
                f"remembered one of {remembered.tree_size}: the consistency proof fails",
            )
    if found is not None:
        code, why = found
        raise (RolledBack if code == "rollback" else Forked)(f"{remembered.origin}: {why}")


__all__ = [
    "Head",
    "NoteError",
    "TrustStore",
    "atomic_write",
    "check_consistency",
    "compare_heads",
    "default_path",
]
