"""The in-process LRU: bounded, least recently used out first, entries die at their deadline."""

from __future__ import annotations

from gateway.core.lru import LRU


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_entry_expires_at_its_deadline() -> None:
    """An entry is served until its deadline and gone after it, with no sleeping."""
    clock = Clock()
    lru: LRU[str] = LRU(10, clock)
    lru.put("k", "v", deadline=1010)
    clock.now = 1010
    assert lru.get("k") == "v"
    clock.now = 1010.001
    assert lru.get("k") is None
    assert len(lru) == 0


def test_least_recently_used_is_evicted() -> None:
    """At the bound, the entry used least recently goes first."""
    clock = Clock()
    lru: LRU[int] = LRU(2, clock)
    lru.put("a", 1, 2000)
    lru.put("b", 2, 2000)
    assert lru.get("a") == 1  # b is now the least recently used
    lru.put("c", 3, 2000)
    assert lru.get("b") is None
    assert lru.get("a") == 1
    assert lru.get("c") == 3
    assert len(lru) == 2


def test_zero_size_caches_nothing() -> None:
    """max_entries=0 turns the cache off."""
    lru: LRU[int] = LRU(0, Clock())
    lru.put("a", 1, 5000)
    assert lru.get("a") is None


def test_past_deadline_is_not_stored_and_pop_clear_work() -> None:
    """A value already expired is dropped; pop and clear remove entries."""
    clock = Clock()
    lru: LRU[int] = LRU(5, clock)
    lru.put("old", 1, 999)
    assert len(lru) == 0
    lru.put("a", 1, 2000)
    lru.put("b", 2, 2000)
    assert lru.pop("a") == 1
    assert lru.pop("a") is None
    lru.clear()
    assert lru.get("b") is None
