"""Loaded engines under a memory budget (engine_lru.py): the policy TensorRTRunner keeps its engines by."""

from __future__ import annotations

import pytest

from engines.runtime.engine_lru import EngineLRU


def loader(log: list[str], name: str, size: int):
    def load():
        log.append(name)
        return f"engine-{name}", size

    return load


def test_least_recently_used_engines_go_first_and_come_back_by_loading_again():
    evicted, loads = [], []
    lru = EngineLRU(100, on_evict=lambda key, item: evicted.append(key))
    assert lru.get("a", loader(loads, "a", 40)) == "engine-a"
    lru.get("b", loader(loads, "b", 40))
    lru.get("a", loader(loads, "a", 40))  # a hit: a is now the most recent, no load
    lru.get("c", loader(loads, "c", 40))  # 120 > 100: b (least recent) goes
    assert loads == ["a", "b", "c"] and evicted == ["b"]
    assert "b" not in lru and len(lru) == 2 and lru.total_bytes == 80
    lru.get("b", loader(loads, "b", 40))  # back: loaded again, and now a is the oldest
    assert loads[-1] == "b" and evicted == ["b", "a"]


def test_an_engine_over_the_budget_alone_still_serves_and_no_budget_keeps_everything():
    lru = EngineLRU(10)
    lru.get("small", lambda: ("s", 5))
    assert lru.get("huge", lambda: ("h", 50)) == "h"
    assert list(lru.values()) == ["h"] and lru.evictions == 1
    unbounded = EngineLRU(None)
    for i in range(20):
        unbounded.get(i, lambda i=i: (i, 10**9))
    assert len(unbounded) == 20 and unbounded.evictions == 0


def test_a_budget_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        EngineLRU(0)
