"""The generation counter against a real Redis: it only goes up, past Redis's clock on a bump, and never back."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

from gateway.redis.generation import Generation, parse_generation

if TYPE_CHECKING:
    import redis.asyncio as aioredis


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        *[(None, 0), (b"0", 0), (b"1732950000123", 1732950000123), (b"9" * 15, int("9" * 15))],
        *[(b"9" * 16, None), (b"-1", None), (b"1.5", None), (b"", None), (b"x", None), ("12", None)],
    ],
)
def test_only_a_small_non_negative_integer_is_a_generation(raw: object, expected: int | None) -> None:
    """A missing generation is 0; anything but up to 15 digits is garbage (``None``)."""
    assert parse_generation(raw) == expected


async def test_a_bump_passes_redis_clock_and_every_generation_seen(redis: aioredis.Redis, redis_prefix: str) -> None:
    """A fresh process's bump lands above Redis's clock in ms; the next one above that; the floor follows."""
    generation = Generation(redis, redis_prefix + ":v2:gen")
    await redis.set(generation.key, 5)
    await generation.bump()
    first = int(await redis.get(generation.key) or 0)
    assert first > time.time() * 1000 - 60_000
    assert generation.floor == first
    await generation.bump()
    assert generation.floor == int(await redis.get(generation.key) or 0) > first


async def test_a_lowered_or_garbage_generation_reads_as_none_and_is_repaired(
    redis: aioredis.Redis, redis_prefix: str
) -> None:
    """Below the floor or not a number: the read is untrusted; ``repair`` sets it back to the floor, no higher."""
    generation = Generation(redis, redis_prefix + ":v2:gen")
    await generation.bump()
    floor = generation.floor
    assert generation.read(str(floor).encode()) == floor
    for bad in (str(floor - 1).encode(), b"garbage"):
        await redis.set(generation.key, bad)
        assert generation.read(await redis.get(generation.key)) is None
        await generation.repair()
        assert await redis.get(generation.key) == str(floor).encode()
    await redis.set(generation.key, floor + 7)  # another process bumped: a repair leaves it
    await generation.repair()
    assert generation.read(await redis.get(generation.key)) == floor + 7
