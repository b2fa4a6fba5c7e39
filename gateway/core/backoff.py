"""Jittered exponential back-off for reconnects ("full jitter").

After an outage every worker of every instance reconnects: with fixed delays they would all knock
at the same moments. Each delay is instead drawn uniformly between 0 and an exponentially growing
ceiling (``first_s * 2**attempt``, capped at ``max_s``), which spreads the reconnects out while
keeping the expected wait short.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable


class Backoff:
    """The delays before successive reconnects; ``reset`` after a connection that worked.

    ``uniform`` is the random source (``random.uniform``); tests pass their own.
    """

    def __init__(self, first_s: float, max_s: float, uniform: Callable[[float, float], float] = random.uniform) -> None:
        self._first_s, self._max_s, self._uniform = first_s, max_s, uniform
        self.attempt = 0

    def ceiling(self) -> float:
        """The longest the next delay can be."""
        return min(self._max_s, self._first_s * 2.0 ** min(self.attempt, 32))

    def next(self) -> float:
        """The next delay, in seconds: anywhere in ``[0, ceiling()]``."""
        delay = self._uniform(0.0, self.ceiling())
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """Start again from the first delay."""
        self.attempt = 0

    async def wait(self) -> float:
        """Sleep for ``next()`` seconds; return how long that was (for the log)."""
        delay = self.next()
        await asyncio.sleep(delay)
        return delay


def jitter(random: Callable[[], float]) -> Callable[[float, float], float]:
    """``uniform`` from a source of floats in ``[0, 1)`` (``random.random``, or a test's own)."""
    return lambda lo, hi: lo + (hi - lo) * random()
