"""Waiting for a condition the tests cannot await directly (another process's state)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")


# A truthy result is never None: ``check`` returning ``X | None`` gives an ``X``.
@overload
async def eventually(check: Callable[[], Awaitable[T | None]], within: float = 5.0, interval: float = 0.02) -> T: ...
@overload
async def eventually(check: Callable[[], T | None], within: float = 5.0, interval: float = 0.02) -> T: ...
async def eventually(check: Callable[[], object], within: float = 5.0, interval: float = 0.02) -> object:
    """Poll ``check()`` (sync or async) until it returns something truthy, and return that.

    Raises ``AssertionError`` after ``within`` seconds: a condition that never holds fails the test.
    """
    deadline = time.monotonic() + within
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)
