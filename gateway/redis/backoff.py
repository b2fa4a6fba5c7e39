"""Capped exponential back-off with full jitter, for every reconnect to Redis.

After an outage every worker of every instance notices at about the same moment. With a plain
exponential back-off they would all retry in lockstep, each wave landing on a Redis that is just
coming back; full jitter spreads each retry uniformly over its whole window instead (the "Full
Jitter" scheme of the AWS Architecture Blog's "Exponential Backoff And Jitter", 2015).
"""

from __future__ import annotations

import asyncio
import random as _random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable


class Backoff:
    """The n-th wait (counting from 0 since the last ``reset``) is uniform in ``[0, min(cap_s, first_s * 2**n))``.

    ``random`` returns a float in ``[0, 1)`` (``random.random`` unless a test injects its own).
    """

    def __init__(self, first_s: float, cap_s: float, random: Callable[[], float] = _random.random) -> None:
        self._first_s = first_s
        self._cap_s = max(cap_s, first_s)
        self._random = random
        self._window_s = first_s

    def next(self) -> float:
        """How long to wait before the next attempt; each call doubles the window, up to the cap."""
        delay = self._window_s * self._random()
        self._window_s = min(self._window_s * 2, self._cap_s)
        return delay

    def reset(self) -> None:
        """An attempt succeeded: the next failure starts again from the first window."""
        self._window_s = self._first_s

    async def wait(self) -> float:
        """Sleep for ``next()`` seconds; return how long that was (for the log)."""
        delay = self.next()
        await asyncio.sleep(delay)
        return delay
