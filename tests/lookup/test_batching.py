"""The batcher: keys asked in one loop tick share one bulk call, up to a size; its outcome reaches every waiter."""

from __future__ import annotations

import asyncio
import gc
from typing import TYPE_CHECKING

import pytest

from gateway.core.errors import StoreUnavailable
from gateway.lookup.batching import Batcher
from tests.support.memory import Gate

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


class Bulk:
    """A bulk call recording its batches; squares the keys it knows; held at a gate when told."""

    def __init__(self, known: set[int] | None = None) -> None:
        self.batches: list[list[int]] = []
        self.known = known
        self.gate = Gate()
        self.error: BaseException | None = None

    async def __call__(self, keys: Sequence[int]) -> Mapping[int, int]:
        self.batches.append(list(keys))
        await self.gate()
        if self.error is not None:
            raise self.error
        return {k: k * k for k in keys if self.known is None or k in self.known}


async def test_keys_asked_in_one_tick_go_out_in_one_call() -> None:
    """Ten keys asked before the loop turns cost one bulk call; each future gets its own value."""
    bulk = Bulk()
    batcher = Batcher(bulk)
    futures = [batcher.get(k) for k in range(10)]
    assert bulk.batches == []  # nothing sent before the rest of the tick has asked
    assert await asyncio.gather(*futures) == [k * k for k in range(10)]
    assert bulk.batches == [list(range(10))]
    assert batcher.batches == 1


async def test_a_key_missing_from_the_result_is_none() -> None:
    """A key the bulk call does not answer resolves to None, not an error."""
    batcher = Batcher(Bulk(known={1}))
    assert list(await asyncio.gather(batcher.get(1), batcher.get(2))) == [1, None]


async def test_batches_never_exceed_max_size() -> None:
    """Seven keys with a max size of three go out as 3 + 3 + 1, in order."""
    bulk = Bulk()
    batcher = Batcher(bulk, max_size=3, max_inflight=10)
    assert await asyncio.gather(*(batcher.get(k) for k in range(7))) == [k * k for k in range(7)]
    assert bulk.batches == [[0, 1, 2], [3, 4, 5], [6]]


async def test_keys_wait_while_max_inflight_calls_are_out_then_go_together() -> None:
    """With one call on its way (max_inflight=1), later keys wait for it, then go out as one batch."""
    bulk = Bulk()
    bulk.gate.close()
    batcher = Batcher(bulk, max_inflight=1)
    first = batcher.get(1)
    await bulk.gate.arrived()
    later = [batcher.get(k) for k in (2, 3, 4)]
    await asyncio.sleep(0)  # a loop step: the later keys must not leave while the first call is out
    assert bulk.batches == [[1]]
    bulk.gate.open()
    assert await asyncio.gather(first, *later) == [1, 4, 9, 16]
    assert bulk.batches == [[1], [2, 3, 4]]


async def test_an_error_reaches_every_waiter_of_its_batch() -> None:
    """A bulk call that raises fails every future of its batch with that very exception."""
    bulk = Bulk()
    bulk.error = error = StoreUnavailable("down")
    batcher = Batcher(bulk)
    results = await asyncio.gather(*(batcher.get(k) for k in range(3)), return_exceptions=True)
    assert results == [error, error, error]


async def test_an_error_in_one_batch_spares_the_next() -> None:
    """After a failed batch, the next keys are fetched normally."""
    bulk = Bulk()
    bulk.error = StoreUnavailable("down")
    batcher = Batcher(bulk)
    with pytest.raises(StoreUnavailable):
        await batcher.get(1)
    bulk.error = None
    assert await batcher.get(2) == 4


async def test_a_waiter_gone_away_leaves_no_unretrieved_exception() -> None:
    """A failed future nobody awaits is still retrieved: no 'exception was never retrieved' when it is collected."""
    bulk = Bulk()
    bulk.error = StoreUnavailable("down")
    batcher = Batcher(bulk)
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        abandoned, kept = batcher.get(1), batcher.get(2)
        await asyncio.wait([kept])
        assert isinstance(kept.exception(), StoreUnavailable)
        assert abandoned.done()
        # Everything holding the exception (and, through its traceback, the batch) goes.
        bulk.error = None
        del abandoned, kept
        gc.collect()
    finally:
        loop.set_exception_handler(previous)
    assert reported == []


async def test_cancelling_the_bulk_call_cancels_its_waiters() -> None:
    """Shutting down (the bulk call cancelled): every waiter is cancelled, none waits for ever."""
    bulk = Bulk()
    bulk.gate.close()
    batcher = Batcher(bulk)
    futures = [batcher.get(k) for k in range(2)]
    await bulk.gate.arrived()
    for task in list(batcher._tasks):
        task.cancel()
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
