"""Fixtures of the shared tier's tests: the gateway's resources on a Redis prefix of the test's own."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio as aioredis

from tests.support.redis import PATIENT_REDIS_S
from tests.support.resources import open_gateway

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from contextlib import AbstractAsyncContextManager

    from gateway.resources import Resources
    from tests.support.resources import Open


@pytest.fixture
def gateway(database: str, redis_url: str, redis_prefix: str) -> Open:
    """Open the gateway's resources with Redis (a prefix of the test's own) and an injectable clock.

    Redis gets ``PATIENT_REDIS_S`` a command: these tests assert what Redis holds and which tier
    answered. Where a tombstone's length matters (it is raised to 2 x the Postgres and Redis
    budgets), a test gives ``redis_timeout_s`` itself.
    """

    def open_(clock: Callable[[], float] = time.time, **overrides: Any) -> AbstractAsyncContextManager[Resources]:
        settings = {
            "redis_prefix": redis_prefix,
            "listener_check_s": 0.2,
            "redis_timeout_s": PATIENT_REDIS_S,
        } | overrides
        return open_gateway(database, redis_url=redis_url, clock=clock, **settings)

    return open_


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client of the test's own: what someone with write access to Redis can do."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()
