"""The audit's witness check: k of n witnesses must back the ledger's head.

A witness backs the ledger when the newest checkpoint it cosigned for the
ledger's origin (among the cosigned notes kept, ``<folder>/**/*.note``) is
one the ledger extends: its size is at most the ledger's and the root of the
ledger's first ``size`` event hashes, which the audit recomputes itself, is
its root (what a consistency proof from it would establish). A witness whose
newest cosignature is on a longer or different tree does not back a rolled
back or re-chained ledger, even if it cosigned one of its older checkpoints.
Fewer than ``k`` is one ``witness_missing`` violation naming each witness.

Besides the folder, the policy may name witness URLs: the audit then asks
each for the latest note it cosigned for the origin (``GET
/<sha256(origin)>/checkpoint``) and counts it like a note from the folder.
That catches a rollback even when whoever restored the old copy also
deleted the local notes. A witness that does not answer backs nothing, and
the violation says which one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from cortex.nats import Bus
from cortex.witnessing import fetch_cosigned
from events.chain import Violation
from events.errors import CortexError
from events.merkle import MerkleAccumulator, leaf_hash
from events.note import NoteError, parse_checkpoint, verify_cosignature

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class WitnessPolicy:
    """Whose cosignatures count (``(name, public key)``), how many, and where notes are kept."""

    keys: tuple[tuple[str, bytes], ...]
    min_witnesses: int
    folder: Path
    #: Witnesses asked over HTTP for their latest cosigned note of the origin.
    urls: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Cosigned:
    size: int
    root: bytes
    #: Where the note came from: its file name, or the witness URL.
    source: str


def _kept(folder: Path) -> Iterator[tuple[str, str]]:
    """(file name, note) of every note kept in ``folder``."""
    for path in sorted(folder.glob("**/*.note")) if folder.is_dir() else []:
        try:
            yield path.name, path.read_text()
        except (OSError, UnicodeDecodeError):
            continue


def _newest(
    policy: WitnessPolicy, origin: str, notes: list[tuple[str, str]]
) -> dict[str, _Cosigned]:
    """Per witness name, the largest checkpoint of ``origin`` it validly cosigned."""
    newest: dict[str, _Cosigned] = {}
    for source, note in notes:
        try:
            checkpoint = parse_checkpoint(note[: note.rfind("\n\n") + 1])
        except NoteError:
            continue
        if checkpoint.origin != origin:
            continue
        for name, key in policy.keys:
            try:
                verify_cosignature(note, name, key)
            except NoteError:
                continue
            seen = newest.get(name)
            if seen is None or checkpoint.tree_size > seen.size:
                newest[name] = _Cosigned(checkpoint.tree_size, checkpoint.root, source)
    return newest


async def _roots_at(bus: Bus, sizes: set[int]) -> dict[int, bytes]:
    """The Merkle root of the ledger's first ``size`` event hashes, for each size."""
    roots: dict[int, bytes] = {}
    wanted = {s for s in sizes if s > 0}
    if 0 in sizes:
        roots[0] = MerkleAccumulator().root()
    if not wanted:
        return roots
    tree = MerkleAccumulator()
    async for stored in bus.read(1, max(wanted), partial=True):
        tree.append(leaf_hash(stored.hash))
        if tree.size in wanted:
            roots[tree.size] = tree.root()
    return roots


async def witness_violations(
    bus: Bus, origin: str, last_seq: int, policy: WitnessPolicy
) -> list[Violation]:
    """``witness_missing`` unless ``min_witnesses`` witnesses back a ledger of ``last_seq``."""
    notes = list(_kept(policy.folder))
    unreachable = []
    for url in policy.urls:
        try:
            notes.append((url, await fetch_cosigned(url, origin)))
        except CortexError as e:
            unreachable.append(f"{url}: {e.message} [{e.code}]")
            log.warning("witness_unreachable", witness=url, code=e.code, error=e.message)
    newest = _newest(policy, origin, notes)
    roots = await _roots_at(bus, {c.size for c in newest.values() if c.size <= last_seq})
    backing, why = [], []
    for name, _key in policy.keys:
        cosigned = newest.get(name)
        if cosigned is None:
            where = " or ".join((str(policy.folder), *policy.urls))
            why.append(f"{name}: no cosigned checkpoint of this origin in {where}")
        elif cosigned.size > last_seq:
            why.append(
                f"{name}: cosigned {cosigned.size} events ({cosigned.source}) but the "
                f"ledger has {last_seq}: rolled back"
            )
        elif roots.get(cosigned.size) != cosigned.root:
            why.append(
                f"{name}: cosigned another root at size {cosigned.size} ({cosigned.source}): "
                "the ledger's history differs"
            )
        else:
            backing.append(name)
    if len(backing) >= policy.min_witnesses:
        return []
    detail = (
        f"{len(backing)} of the {policy.min_witnesses} witness cosignatures required back the "
        f"ledger's head; " + "; ".join(why + unreachable)
    )
    return [Violation("witness_missing", 0, detail, location=f"origin {origin}")]
