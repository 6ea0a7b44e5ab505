"""An LRU for hot reads, invalidated by the projector as it applies events.

Keys name the fact they were read from; when a batch touches a fact, every
cached answer about it goes. A read that started before an invalidation
does not store its (possibly stale) answer: each read notes the generation
it began at, and ``put`` refuses if anything was invalidated since.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class CacheStats:
    size: int
    capacity: int
    hits: int
    misses: int
    invalidations: int


class ReadCache:
    """Least-recently-used answers keyed by (op, tenant, fact_id)."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, str, str], Any] = OrderedDict()
        self._by_fact: dict[str, set[tuple[str, str, str]]] = {}
        self.generation = 0
        self.hits = self.misses = self.invalidations = 0

    def get(self, key: tuple[str, str, str]) -> Any | None:
        value = self._items.get(key)
        if value is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: tuple[str, str, str], value: Any, *, read_at: int) -> None:
        """Store ``value``, read when ``generation`` was ``read_at``, unless it may be stale."""
        if read_at != self.generation or value is None or self.capacity <= 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        self._by_fact.setdefault(key[2], set()).add(key)
        while len(self._items) > self.capacity:
            old, _ = self._items.popitem(last=False)
            keys = self._by_fact.get(old[2])
            if keys is not None:
                keys.discard(old)
                if not keys:
                    del self._by_fact[old[2]]

    def invalidate(self, fact_ids: Iterable[str]) -> None:
        """Forget every answer about these facts (called after each applied batch)."""
        self.generation += 1
        for fact_id in fact_ids:
            for key in self._by_fact.pop(fact_id, ()):
                self._items.pop(key, None)
                self.invalidations += 1

    def stats(self) -> CacheStats:
        return CacheStats(
            len(self._items), self.capacity, self.hits, self.misses, self.invalidations
        )
