"""Loaded engines under a memory budget: least recently used ones are dropped first.

A worker that serves several shapes (view counts, resolutions) would otherwise keep every engine it ever
deserialized on the GPU. `EngineLRU` holds loaded engines by key with a byte size each (for TensorRT the
serialized plan's size, which is the engine's weights); loading one that takes the total over the budget
evicts the least recently used others until it fits again. The engine just loaded is never evicted, so
a single engine bigger than the budget still serves (with a warning). Evicted engines stay in the
on-disk engine cache: using one again deserializes it (seconds), it is not rebuilt.

`budget_bytes=None` keeps everything (the behaviour before budgets existed).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class EngineLRU(Generic[T]):
    def __init__(
        self, budget_bytes: int | None, on_evict: Callable[[Hashable, T], None] | None = None
    ) -> None:
        if budget_bytes is not None and budget_bytes <= 0:
            raise ValueError(f"an engine memory budget must be positive, got {budget_bytes}")
        self.budget_bytes = budget_bytes
        self._on_evict = on_evict
        self._items: OrderedDict[Hashable, tuple[T, int]] = OrderedDict()
        self.evictions = 0

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def values(self) -> Iterator[T]:
        return (item for item, _ in self._items.values())

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self._items.values())

    def get(self, key: Hashable, load: Callable[[], tuple[T, int]]) -> T:
        """The engine for `key`, marked most recently used; `load()` -> (engine, bytes) when absent."""
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key][0]
        item, size = load()
        self._items[key] = (item, int(size))
        self._evict_over_budget(keep=key)
        return item

    def _evict_over_budget(self, keep: Hashable) -> None:
        if self.budget_bytes is None:
            return
        for key in list(self._items):
            if self.total_bytes <= self.budget_bytes:
                return
            if key == keep:
                continue
            item, size = self._items.pop(key)
            self.evictions += 1
            log.info("engine %s evicted (%d bytes) to stay within %d bytes", key, size, self.budget_bytes)
            if self._on_evict is not None:
                self._on_evict(key, item)
        if self.total_bytes > self.budget_bytes:
            log.warning(
                "engine %s alone (%d bytes) is over the engine memory budget (%d bytes)",
                keep,
                self.total_bytes,
                self.budget_bytes,
            )
