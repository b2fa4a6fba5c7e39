"""The shared tier on its own against a real Redis: writes awaited, failures as misses, recovery with jitter."""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.config import load_settings
from gateway.core.errors import CacheUnavailable
from gateway.core.sessions import Session
from gateway.redis.client import connect
from gateway.redis.tier import RedisTier
from gateway.resources import value_configuration
from tests.support.credentials import SECRET
from tests.support.ports import free_port
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from tests.support.redis import RedisServer

ENV = {"DATABASE_URL": "postgresql://x/y", "BETTER_AUTH_SECRET": SECRET}
EXPIRES = time.time() + 3600


def session(n: int) -> Session:
    return Session(
        expires_at=EXPIRES,
        banned_until=0.0,
        session={"id": f"s{n}", "userId": f"u{n % 3}"},
        user={"id": f"u{n % 3}", "email": f"u{n}@example.com"},
    )


def digest(n: int) -> str:
    return f"{n:064x}"


def make_tier(
    url: str,
    prefix: str,
    jitter: Callable[[], float] = random.random,
    event: Callable[[str], None] | None = None,
    **overrides: object,
) -> RedisTier:
    settings = load_settings(ENV | {"REDIS_URL": url}, {"redis_prefix": prefix} | overrides)
    client = connect(url, timeout_s=settings.redis_timeout_s, pool_max_size=settings.redis_pool_max_size)
    return RedisTier(client, settings, value_configuration(settings), time.time, event=event, random=jitter)


@pytest.fixture
async def tier(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisTier]:
    tier = make_tier(redis_url, redis_prefix)
    yield tier
    await tier.close()


@pytest.fixture
async def dead_tier(redis_prefix: str) -> AsyncIterator[RedisTier]:
    """A tier whose Redis is a port nobody listens on."""
    tier = make_tier(f"redis://127.0.0.1:{free_port()}/0", redis_prefix)
    yield tier
    await tier.close()


async def test_drain_returns_once_every_queued_write_is_in_redis(tier: RedisTier, redis: aioredis.Redis) -> None:
    """Writes queued in one tick are all in Redis when ``drain()`` returns: nothing to sleep for."""
    for n in range(20):
        tier.put(digest(n), session(n), 0)
    await tier.drain()
    assert all(await redis.mget([tier.key(digest(n)) for n in range(20)]))
    for n in (0, 19):
        found = await tier.get(digest(n))
        assert found is not None
        assert found.session == session(n)
    await tier.drain()  # nothing queued: returns at once


async def test_a_session_too_large_for_the_budget_degrades_nothing(
    redis_url: str, redis_prefix: str, redis: aioredis.Redis
) -> None:
    """A user's 40 MB field (a data-URL avatar: anyone may write one) is not written. Writing it took longer than
    the budget, which degraded the tier for every user and retired every value at recovery, once per lookup."""
    events: list[str] = []
    tier = make_tier(redis_url, redis_prefix, event=events.append, redis_timeout_s=0.02)
    try:
        image = "data:image/png;base64," + "A" * (40 * 1024 * 1024)
        large = Session(
            expires_at=EXPIRES,
            banned_until=0.0,
            session={"id": "s1", "userId": "u1"},
            user={"id": "u1", "image": image},
        )
        tier.put(digest(1), large, 0)
        await tier.drain()
        assert tier.degraded is None
        assert events == ["redis_uncacheable"]
        assert await redis.exists(tier.key(digest(1))) == 0
    finally:
        await tier.close()


async def test_drain_returns_when_the_writes_failed(dead_tier: RedisTier) -> None:
    """With Redis away, ``drain()`` returns (the writes failed, the tier degraded), and raises nothing."""
    dead_tier.put(digest(1), session(1), 0)
    await dead_tier.drain()
    assert dead_tier.degraded is not None


async def test_ping_raises_cache_unavailable_with_the_cause(dead_tier: RedisTier) -> None:
    """``ping()`` raises the core's ``CacheUnavailable``, the redis-py failure chained as its cause."""
    with pytest.raises(CacheUnavailable) as caught:
        await dead_tier.ping()
    assert isinstance(caught.value.__cause__, RedisError | OSError | TimeoutError)
    assert "Error" in str(caught.value)


async def test_the_shared_cache_methods_never_raise(dead_tier: RedisTier) -> None:
    """With Redis away every ``SharedCache`` method answers as a miss or ``False``: no exception reaches a lookup."""
    assert await dead_tier.bump_generation() is False
    assert dead_tier.degraded is not None
    assert "ConnectionError" in dead_tier.degraded
    assert await dead_tier.get(digest(1)) is None
    dead_tier.put(digest(1), session(1), 0)
    await dead_tier.revoke([digest(1)])
    await dead_tier.revoke_users(["u1"])
    await dead_tier.drain()


async def test_recovery_backs_off_with_jitter_then_bumps_the_generation(own_redis: RedisServer) -> None:
    """Redis down then back: the probe draws each wait from the jitter source, recovers, and retires the past."""
    draws: list[float] = []

    def jitter() -> float:
        draws.append(0.05)
        return 0.05

    tier = make_tier(own_redis.url, "gwt", jitter, redis_backoff_s=0.2)
    redis = aioredis.Redis.from_url(own_redis.url)
    try:
        assert await tier.bump_generation()
        before = tier.generation.floor
        own_redis.kill()
        assert await tier.get(digest(1)) is None  # degrades, and the probe starts
        assert tier.degraded is not None
        await eventually(lambda: len(draws) >= 3, within=5)  # failed attempts, each after a jittered wait
        own_redis.start()
        await eventually(lambda: tier.degraded is None, within=5)
        assert int(await redis.get("gwt:v2:gen") or 0) > before  # what was cached before is retired
        tier.put(digest(2), session(2), tier.generation.floor)
        await tier.drain()
        found = await tier.get(digest(2))
        assert found is not None
        assert found.session == session(2)
    finally:
        await redis.aclose()
        await tier.close()
