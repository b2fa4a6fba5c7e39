"""Coalesce lookups made in the same event-loop tick into one bulk call.

A cache miss costs a round trip; a round trip per key is what makes a Redis or Postgres client
the bottleneck (``reference/performance.md``: ~66 µs of client CPU per redis-py GET). Keys asked
for while the loop is busy are sent together as one ``MGET`` or one ``= ANY($1)`` query.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

K = TypeVar("K")
V = TypeVar("V")


class Batcher(Generic[K, V]):
    """Hand out futures for keys; resolve them from one ``bulk`` call per tick (and per ``max_size`` keys).

    Args:
        bulk: fetches many keys at once; a key missing from its result resolves to ``None``.
            If it raises, every future of that batch gets the exception.
        max_size: the most keys sent in one call.
    """

    __slots__ = ("_bulk", "_max", "_pending", "_tasks", "batches")

    def __init__(self, bulk: Callable[[Sequence[K]], Awaitable[Mapping[K, V]]], max_size: int = 256) -> None:
        self._bulk = bulk
        self._max = max_size
        self._pending: list[tuple[K, asyncio.Future[V | None]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0  # bulk calls made, for tests and metrics

    def get(self, key: K) -> asyncio.Future[V | None]:
        """Return a future for ``key``'s value, sent with the other keys of this tick."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[V | None] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((key, future))
        return future

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), self._max):
            task = asyncio.ensure_future(self._run(pending[start : start + self._max]))
            self._tasks.add(task)  # keep a reference until done (asyncio holds only weak ones)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[K, asyncio.Future[V | None]]]) -> None:
        self.batches += 1
        try:
            found = await self._bulk([key for key, _ in batch])
        except Exception as exc:  # noqa: BLE001  (handed to every waiter, which applies the policy)
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
                    future.exception()  # a waiter that went away must not leave it unretrieved
            return
        for key, future in batch:
            if not future.done():
                future.set_result(found.get(key))
