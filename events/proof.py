"""Proof documents: what ``cortex proof`` writes and ``cortex verify-proof`` checks offline.

An inclusion proof carries the event's stored bytes and the hash of the
event before it, so the verifier recomputes the event's hash itself
(``link(prev, body)``) rather than trusting one; then the audit path up to
the root of a signed checkpoint, and the checkpoint's signed note. A
consistency proof carries two signed checkpoints and the path showing the
newer tree extends the older one.

Which keys may sign checkpoints is the verifier's decision: pass the
writers' verifier keys (``cortex checkpoint`` prints them) to pin them.
Without them, the keys named in the document are used and the result says
so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from events.chain import link
from events.merkle import verify_consistency, verify_inclusion
from events.note import NoteError, parse_checkpoint, parse_verifier_key, verify

INCLUSION = "cortex.inclusion-proof.v1"
CONSISTENCY = "cortex.consistency-proof.v1"


@dataclass(slots=True)
class ProofCheck:
    """The outcome: ``ok`` only if every step held; ``problems`` says which did not."""

    kind: str
    problems: list[str] = field(default_factory=list)
    pinned: bool = False
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "kind": self.kind,
            "key_pinned": self.pinned,
            "problems": self.problems,
            **self.facts,
        }


def _checkpoint(note: str, keys: Sequence[str], check: ProofCheck) -> tuple[int, bytes] | None:
    """Size and root of a signed checkpoint, if it carries a good signature by one of ``keys``."""
    problems = []
    for key in keys:
        try:
            name, public_key = parse_verifier_key(key)
            cp = parse_checkpoint(verify(note, name, public_key))
        except NoteError as e:
            problems.append(str(e))
            continue
        return cp.tree_size, cp.root
    check.problems.append(f"checkpoint: {'; '.join(problems) or 'no key to check it with'}")
    return None


def _hex(value: Any, what: str) -> bytes:
    try:
        return bytes.fromhex(str(value))
    except ValueError as e:
        raise NoteError(f"{what} is not hex") from e


def check_proof(doc: dict[str, Any], *, verifier: str | Sequence[str] | None = None) -> ProofCheck:
    """Check a proof document completely, with no server.

    ``verifier``: the writer key(s) to trust, as C2SP verifier keys; each
    checkpoint must be signed by one of them (writers each have their own
    key, so two checkpoints may be signed by two). Without it, each note is
    checked with the key the document names for it.
    """
    kind = str(doc.get("kind", ""))
    check = ProofCheck(kind, pinned=verifier is not None)
    pinned = (
        [verifier] if isinstance(verifier, str) else None if verifier is None else list(verifier)
    )

    def keys(field_name: str) -> list[str]:
        return pinned if pinned is not None else [str(doc.get(field_name, ""))]

    try:
        if kind == INCLUSION:
            _check_inclusion(doc, keys("verifier"), check)
        elif kind == CONSISTENCY:
            _check_consistency(doc, keys("old_verifier"), keys("new_verifier"), check)
        else:
            check.problems.append(f"not a CORTEX proof document (kind {kind!r})")
    except (NoteError, KeyError, TypeError, ValueError) as e:
        check.problems.append(f"malformed proof document: {e}")
    return check


def _check_inclusion(doc: dict[str, Any], key: Sequence[str], check: ProofCheck) -> None:
    seq, size = int(doc["seq"]), int(doc["tree_size"])
    body = str(doc["body"]).encode()
    event_hash = link(_hex(doc["prev_hash"], "prev_hash"), body)
    path = [_hex(p, "a path entry") for p in doc["path"]]
    check.facts.update(seq=seq, tree_size=size, hash=event_hash.hex())
    try:
        check.facts["event"] = msgspec.json.decode(body)
    except msgspec.DecodeError:
        check.problems.append("the event body is not JSON")
    signed = _checkpoint(str(doc["checkpoint"]), key, check)
    if signed is None:
        return
    signed_size, root = signed
    if signed_size != size:
        check.problems.append(f"the proof is for {size} events, the checkpoint for {signed_size}")
        return
    if not 1 <= seq <= size:
        check.problems.append(f"seq {seq} is outside a tree of {size} events")
        return
    if not verify_inclusion(event_hash, seq - 1, size, path, root):
        check.problems.append("the audit path does not lead to the checkpoint's root")


def _check_consistency(
    doc: dict[str, Any], old_keys: Sequence[str], new_keys: Sequence[str], check: ProofCheck
) -> None:
    old = _checkpoint(str(doc["old"]), old_keys, check)
    new = _checkpoint(str(doc["new"]), new_keys, check)
    if old is None or new is None:
        return
    (old_size, old_root), (new_size, new_root) = old, new
    check.facts.update(old_size=old_size, new_size=new_size)
    path = [_hex(p, "a path entry") for p in doc["path"]]
    if old_size > new_size:
        check.problems.append(f"the old tree ({old_size}) is larger than the new ({new_size})")
    elif not verify_consistency(old_size, new_size, old_root, new_root, path):
        check.problems.append("the path does not show the new tree extends the old one")
