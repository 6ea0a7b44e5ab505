"""The hash chain: every change, gap or reordering of stored events is found and located."""

from __future__ import annotations

import blake3

from events.chain import DOMAIN, GENESIS, ChainVerifier, link


def _ledger(n: int) -> list[tuple[int, bytes, bytes, bytes]]:
    """n well-formed (seq, body, prev_hash, hash) records."""
    rows, head = [], GENESIS
    for seq in range(1, n + 1):
        body = f'{{"n":{seq}}}'.encode()
        h = link(head, body)
        rows.append((seq, body, head, h))
        head = h
    return rows


def _verify(rows: list[tuple[int, bytes, bytes, bytes]]) -> list[tuple[str, int]]:
    v = ChainVerifier()
    return [(x.type, x.seq) for row in rows for x in v.check(*row)]


def test_link_is_domain_separated_blake3_over_prev_and_body() -> None:
    """The documented formula, so any third party can recompute it."""
    assert link(GENESIS, b"x") == blake3.blake3(DOMAIN + bytes(32) + b"x").digest()
    assert bytes(32) == GENESIS
    assert link(GENESIS, b"x") != blake3.blake3(bytes(32) + b"x").digest()


def test_an_intact_ledger_has_no_violations() -> None:
    assert _verify(_ledger(50)) == []


def test_an_edited_body_is_a_hash_mismatch_at_its_seq_only() -> None:
    """Changing one stored event's bytes is reported once, where it happened."""
    rows = _ledger(10)
    seq, body, prev, h = rows[4]
    rows[4] = (seq, body.replace(b"5", b"6"), prev, h)
    assert _verify(rows) == [("hash_mismatch", 5)]


def test_a_rehashed_edit_breaks_the_link_of_the_next_event() -> None:
    """An attacker who also recomputes the edited event's hash is caught by the next link."""
    rows = _ledger(10)
    seq, body, prev, _ = rows[4]
    forged = body.replace(b"5", b"6")
    rows[4] = (seq, forged, prev, link(prev, forged))
    assert _verify(rows) == [("chain_break", 6)]


def test_a_missing_event_is_a_gap_and_a_break() -> None:
    rows = _ledger(10)
    del rows[3]
    assert _verify(rows) == [("sequence_gap", 5), ("chain_break", 5)]


def test_swapped_events_break_the_chain() -> None:
    """Reordering: the events keep their own hashes but no longer link in order."""
    rows = _ledger(6)
    a, b = rows[2], rows[3]
    rows[2] = (3, b[1], b[2], b[3])
    rows[3] = (4, a[1], a[2], a[3])
    found = _verify(rows)
    assert ("chain_break", 3) in found
    assert all(kind == "chain_break" for kind, _ in found)
