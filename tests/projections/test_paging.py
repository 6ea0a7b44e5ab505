"""`facts` and `search` say when more exist and page through all of them with a cursor."""

from __future__ import annotations

from pathlib import Path

import pytest

from events.errors import QueryFailed
from projections import queries
from projections.testing import LedgerBuilder, open_projector


async def test_facts_and_search_page_through_everything_once(
    ledger: LedgerBuilder, tmp_path: Path
) -> None:
    ledger.agent("ada")
    for i in range(7):
        ledger.fact("ada", f"water fact {i}")
    pool, projector = await open_projector(tmp_path / "node.db")
    try:
        await projector.apply(ledger.records)
        everything = [f.fact_id for f in await queries.list_facts(pool, "acme")]
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            page = await queries.facts_page(pool, "acme", limit=3, cursor=cursor)
            seen += [f.fact_id for f in page.items]
            pages += 1
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == everything
        assert pages == 3

        ranked = [h.fact_id for h in await queries.search(pool, "acme", "water", limit=100)]
        hits: list[str] = []
        cursor = None
        while True:
            found = await queries.search_page(pool, "acme", "water", limit=3, cursor=cursor)
            hits += [h.fact_id for h in found.items]
            cursor = found.next_cursor
            if cursor is None:
                break
        assert hits == ranked
        assert len(hits) == 7

        exact = await queries.facts_page(pool, "acme", limit=7)
        assert exact.next_cursor is None  # no promise of more when there is none
        with pytest.raises(QueryFailed) as caught:
            await queries.search_page(pool, "acme", "water", cursor="f3")
        assert caught.value.code == "invalid_query"
    finally:
        await pool.close()
