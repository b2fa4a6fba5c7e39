"""Coalesce concurrent lookups into few bulk calls: one ``MGET``, one ``= ANY($1)`` query.

A cache miss costs a round trip; a round trip per key is what makes a Redis or Postgres client
the bottleneck (``docs/performance.md`` §2: ~66 µs of client CPU per redis-py GET). Keys asked
for in the same loop tick go out together; and while ``max_inflight`` bulk calls are already on
their way, new keys wait for one of them to come back and then go out together. Under light load
every key leaves at once (no added latency); under heavy load batches grow by themselves, so the
cost per key falls exactly when it matters ("natural batching").
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

K = TypeVar("K")
V = TypeVar("V")


class Batcher(Generic[K, V]):
    """Hand out futures for keys; resolve them from bulk calls of up to ``max_size`` keys.

    Args:
        bulk: fetches many keys at once; a key missing from its result resolves to ``None``.
            If it raises, every future of that batch gets the exception.
        max_size: the most keys sent in one call.
        max_inflight: the most bulk calls on their way at once; more keys wait for one to end.
    """

    __slots__ = ("_bulk", "_inflight", "_max", "_max_inflight", "_pending", "_scheduled", "_tasks", "batches")

    def __init__(
        self, bulk: Callable[[Sequence[K]], Awaitable[Mapping[K, V]]], max_size: int = 256, max_inflight: int = 2
    ) -> None:
        self._bulk = bulk
        self._max = max_size
        self._max_inflight = max_inflight
        self._pending: list[tuple[K, asyncio.Future[V | None]]] = []
        self._scheduled = False
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()  # asyncio keeps only weak references
        self.batches = 0  # bulk calls made, for tests and metrics

    def get(self, key: K) -> asyncio.Future[V | None]:
        """Return a future for ``key``'s value, sent with the other keys waiting."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[V | None] = loop.create_future()
        self._pending.append((key, future))
        if not self._scheduled and self._inflight < self._max_inflight:
            self._scheduled = True
            loop.call_soon(self._flush)  # after the rest of this tick has asked too
        return future

    def _flush(self) -> None:
        self._scheduled = False
        while self._pending and self._inflight < self._max_inflight:
            batch, self._pending = self._pending[: self._max], self._pending[self._max :]
            self._inflight += 1
            task = asyncio.ensure_future(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._inflight -= 1
        if not self._scheduled:
            self._flush()

    async def _run(self, batch: list[tuple[K, asyncio.Future[V | None]]]) -> None:
        self.batches += 1
        try:
            found = await self._bulk([key for key, _ in batch])
        except asyncio.CancelledError:  # shutting down: nobody may wait forever
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001  (handed to every waiter, which applies the policy)
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
                    future.exception()  # a waiter that went away must not leave it unretrieved
            return
        for key, future in batch:
            if not future.done():
                future.set_result(found.get(key))
