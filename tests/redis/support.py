"""What the shared tier's gateway-level tests share: a movable clock, awaited writes (and ``cred``)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from gateway.credentials.tokens import token_hash

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from gateway.resources import Resources


class Clock:
    """Wall-clock time plus an offset the test moves: TTLs pass without sleeping."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


async def written(res: Resources, redis: aioredis.Redis, token: str) -> bytes:
    """The value the gateway's background write put in Redis for ``token`` (there is one)."""
    assert res.redis is not None
    await res.redis.drain()
    value = await redis.get(res.redis.key(token_hash(token)))
    assert isinstance(value, bytes)
    return value
