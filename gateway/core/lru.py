"""A bounded, TTL-aware LRU with an injected clock; no asyncio, no I/O.

An ``OrderedDict`` with ``move_to_end`` on every hit: measured here at ~15 ns more than a plain
``dict.get`` per hit (``docs/performance.md`` §6 has the alternatives), so a true LRU costs
nothing worth approximating away.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

V = TypeVar("V")


class LRU(Generic[V]):
    """Map keys to values that expire at a per-entry deadline; evict the least recently used.

    Args:
        max_entries: the bound; 0 turns the cache off (every ``put`` is dropped).
        clock: seconds since the epoch; injected so tests never sleep.
        on_evict: called with ``(key, value)`` whenever an entry leaves (expired, pushed out,
            replaced or popped), but not on ``clear``; lets an owner keep indexes in step.
    """

    __slots__ = ("_data", "_max", "_on_evict", "clock")

    def __init__(
        self,
        max_entries: int,
        clock: Callable[[], float] = time.time,
        on_evict: Callable[[str, V], None] | None = None,
    ) -> None:
        self._data: OrderedDict[str, tuple[float, V]] = OrderedDict()
        self._max = max_entries
        self._on_evict = on_evict
        self.clock = clock

    def get(self, key: str) -> V | None:
        """Return the live value under ``key`` and mark it recently used, else ``None``."""
        item = self._data.get(key)
        if item is None:
            return None
        if item[0] < self.clock():
            self.pop(key)
            return None
        self._data.move_to_end(key)
        return item[1]

    def put(self, key: str, value: V, deadline: float) -> None:
        """Store ``value`` until ``deadline``, evicting the least recently used entry if full."""
        if self._max <= 0 or deadline < self.clock():
            return
        data = self._data
        old = data.get(key)
        data[key] = (deadline, value)
        data.move_to_end(key)
        if old is not None and self._on_evict is not None:
            self._on_evict(key, old[1])
        if len(data) > self._max:
            evicted, (_, gone) = data.popitem(last=False)
            if self._on_evict is not None:
                self._on_evict(evicted, gone)

    def pop(self, key: str) -> V | None:
        """Remove ``key``; return its value if it was present (live or not)."""
        item = self._data.pop(key, None)
        if item is None:
            return None
        if self._on_evict is not None:
            self._on_evict(key, item[1])
        return item[1]

    def peek(self, key: str) -> V | None:
        """Return the value under ``key`` (live or not) without marking it used."""
        item = self._data.get(key)
        return None if item is None else item[1]

    def clear(self) -> None:
        """Drop every entry (``on_evict`` is not called: the owner resets its indexes itself)."""
        self._data.clear()

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)
