"""The shared tier's generation: one counter whose every move retires all values cached before it.

``<prefix>:v2:gen`` is read with every ``MGET``, and a value of another generation is a miss
(``values``). It is bumped whenever revocations may have been missed (a listener reconnected,
Redis came back). It is not signed (it must stay atomic to move), so a process never goes back:
a generation lower than the highest it has seen, or one that is not a number, makes that read a
miss and is set back (a flushed Redis recovers this way; a rolled-back one cannot revive what a
bump retired). A bump is at least Redis's clock in milliseconds, so a process that has seen
nothing yet (just started) still bumps past every generation a value written before it could
carry (unless the counter was pushed ahead of the clock by someone who can write to Redis:
``SECURITY.md``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from gateway.redis.scripts import RAISE_GENERATION

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

log = logging.getLogger("gateway.redis")

_MAX_DIGITS = 15  # below 2**53: exact in Lua's numbers too


def parse_generation(raw: object) -> int | None:
    """The generation as read from Redis (missing is 0); ``None`` if it is not a small non-negative integer."""
    if raw is None:
        return 0
    if isinstance(raw, bytes) and raw.isdigit() and len(raw) <= _MAX_DIGITS:
        return int(raw)
    return None


class Generation:
    """The counter at ``key``, and ``floor``: the highest generation this process has seen."""

    def __init__(self, client: Redis | RedisCluster, key: str) -> None:
        self._client = client
        self.key = key
        self.floor = 0

    def read(self, raw: object) -> int | None:
        """The generation an ``MGET`` read; ``None`` (trust nothing read with it) if below ``floor`` or garbage."""
        generation = parse_generation(raw)
        if generation is None or generation < self.floor:
            return None
        self.floor = generation
        return generation

    async def bump(self) -> None:
        """Move Redis's counter above every generation seen here and above Redis's clock in milliseconds.

        Raises what the client raises: callers run it inside ``client.answering``.
        """
        await self._raise(1)

    async def repair(self) -> None:
        """Set a counter found below ``floor`` (or garbage) back up to it; a valid one at or above is left alone."""
        await self._raise(0)

    async def _raise(self, step: int) -> None:
        floor = self.floor
        now, found, garbage = await self._client.eval(RAISE_GENERATION, 1, self.key, floor, step)
        if garbage or (found < floor and (found >= 0 or floor > 0)):
            # Nothing of ours lowers it: Redis was flushed (or restarted empty), or someone wrote it.
            was = "not a number" if garbage else "missing" if found < 0 else f"{found}"
            log.warning("the Redis generation was %s (the highest seen here: %d); set to %d", was, floor, now)
        self.floor = max(self.floor, int(now))
