"""Agents' receipts as evidence: saved, then held against the ledger later.

A receipt names an event by its seq and hash and, once one is signed, the
checkpoint covering it. ``verify_receipt`` checks a saved receipt against
the ledger as it is now: the event at that seq still has that hash, and
the ledger's current checkpoint extends the receipt's (a consistency proof
from a node, checked here). A ledger cut, rolled back or rewritten since
fails with ``missing_acknowledged_event``.

Agents reach the writer only through their tenant's command subjects, so
the two small asks of this module travel there: ``<tenant>.origin`` (the
ledger's origin, which agents sign into their commands) and
``<tenant>.covering`` (the first checkpoint covering a seq).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from cortex.errors import CortexError
from events.proof import check_proof

if TYPE_CHECKING:
    from cortex.client import Client, Receipt

#: Command-subject kinds the writer answers itself (no event is appended).
ORIGIN_KIND: Final = "origin"
COVERING_KIND: Final = "covering"
RECEIPT_KIND: Final = "cortex.receipt.v1"


@dataclass(slots=True)
class ReceiptCheck:
    """The outcome of holding a receipt against the ledger: ``ok`` or ``problems``."""

    seq: int
    problems: list[str] = field(default_factory=list)
    tree_size: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def code(self) -> str | None:
        return None if self.ok else self.failure().code

    def failure(self) -> CortexError:
        """The error a failed check stands for."""
        return CortexError(
            f"seq {self.seq}: " + "; ".join(self.problems), code="missing_acknowledged_event"
        )

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "code": self.code, **asdict(self)}


def receipt_doc(receipt: Receipt, tenant: str) -> dict[str, Any]:
    """The JSON document a receipt is saved as."""
    doc: dict[str, Any] = {
        "kind": RECEIPT_KIND,
        "tenant": tenant,
        "seq": receipt.seq,
        "hash": receipt.hash,
        "id": str(receipt.id),
    }
    if receipt.fact_id is not None:
        doc["fact_id"] = str(receipt.fact_id)
    if receipt.checkpoint is not None:
        doc["checkpoint"] = asdict(receipt.checkpoint)
    return doc


def save_receipt(receipt: Receipt, tenant: str, path: Path) -> None:
    path.write_text(json.dumps(receipt_doc(receipt, tenant), indent=2) + "\n")


def load_receipt(path: Path) -> dict[str, Any]:
    """A saved receipt document; a clear error if it is not one."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CortexError(f"cannot read a receipt from {path}: {e}", code="invalid_proof") from e
    if not isinstance(doc, dict) or doc.get("kind") != RECEIPT_KIND:
        raise CortexError(f"{path} does not hold a CORTEX receipt", code="invalid_proof")
    try:
        int(doc["seq"]), bytes.fromhex(str(doc["hash"])), uuid.UUID(str(doc["id"]))
    except (KeyError, ValueError) as e:
        raise CortexError(f"{path} is not a complete receipt: {e}", code="invalid_proof") from e
    return doc


async def verify_receipt(
    client: Client, doc: dict[str, Any], *, verifier: list[str] | None = None
) -> ReceiptCheck:
    """Hold a saved receipt against the ledger as the client's node serves it now.

    The event at the receipt's seq must have the receipt's hash and be included in
    the current signed checkpoint; the receipt's own checkpoint (if any) must be a
    checkpoint of the ledger, and the current one must extend it.
    """
    seq = int(doc["seq"])
    check = ReceiptCheck(seq)
    try:
        current = await client.checkpoint()
    except CortexError as e:
        check.problems.append(f"the ledger has no checkpoint to check against: {e}")
        return check
    size = int(current["tree_size"])
    check.tree_size = size
    if size < seq:
        check.problems.append(f"the ledger's checkpoint covers {size} events, not seq {seq}")
    else:
        try:
            proof = await client.proof(seq, tree_size=size)
        except CortexError as e:
            check.problems.append(f"no event at seq {seq} in this ledger: {e}")
        else:
            included = check_proof(proof, verifier=verifier)
            check.problems += [f"inclusion: {p}" for p in included.problems]
            if included.facts.get("hash") != doc["hash"]:
                check.problems.append(
                    f"the event at seq {seq} has hash {included.facts.get('hash')}, "
                    f"the receipt says {doc['hash']}"
                )
    held = doc.get("checkpoint")
    if isinstance(held, dict) and not check.problems:
        old = int(held["tree_size"])
        try:
            extends = await client.consistency_proof(old, size) if old < size else None
            same = await client.checkpoint(old)
        except CortexError as e:
            check.problems.append(f"the receipt's checkpoint of {old} events is gone: {e}")
            return check
        if same["root"] != held["root"]:
            check.problems.append(
                f"the ledger's checkpoint of {old} events has root {same['root']}, "
                f"the receipt's {held['root']}"
            )
        if extends is not None:
            consistent = check_proof(extends, verifier=verifier)
            check.problems += [f"consistency: {p}" for p in consistent.problems]
    return check


__all__ = [
    "COVERING_KIND",
    "ORIGIN_KIND",
    "RECEIPT_KIND",
    "ReceiptCheck",
    "load_receipt",
    "receipt_doc",
    "save_receipt",
    "verify_receipt",
]
