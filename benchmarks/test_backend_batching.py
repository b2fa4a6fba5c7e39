"""What batching buys on a miss: N concurrent lookups, one round trip per key vs one per tick.

Run: ``pytest benchmarks --benchmark-only``; compare the rows of one group (the figure in
parentheses is the ratio to the fastest, measured in the same run).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest
from redis.asyncio import BlockingConnectionPool, Redis

from gateway.config import load_settings
from gateway.credentials.tokens import token_hash
from gateway.postgres import seed
from gateway.postgres.schema import mapping_from
from gateway.postgres.store import Store
from gateway.redis.client import connect
from gateway.redis.tier import RedisTier
from gateway.resources import value_configuration
from tests.support.credentials import SECRET
from tests.support.postgres import create_database, drop_database

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

N = 200  # lookups in flight at once, as under a burst of cold sessions


def run(loop: asyncio.AbstractEventLoop, make: Callable[[], list[Awaitable[Any]]]) -> None:
    async def burst() -> None:
        await asyncio.gather(*make())

    loop.run_until_complete(burst())


@pytest.fixture(scope="module")
def seeded(loop: asyncio.AbstractEventLoop, postgres_admin_dsn: str, redis_url: str) -> Iterator[dict[str, Any]]:
    """N sessions in a fresh database, cached in Redis under the gateway's keys."""

    async def setup() -> dict[str, Any]:
        dsn = await create_database(postgres_admin_dsn, "gw_bench_")
        conn = await asyncpg.connect(dsn)
        await seed.create_schema(conn)
        uid = await seed.create_user(conn, email="bench@example.com")
        tokens = [await seed.create_session(conn, uid) for _ in range(N)]
        await conn.close()
        env = {"DATABASE_URL": dsn, "BETTER_AUTH_SECRET": SECRET, "REDIS_URL": redis_url}
        settings = load_settings(
            env, {"redis_prefix": "gwbench" + seed.generate_id(6), "redis_pool_max_size": 64, "pool_max_size": 10}
        )
        store = Store(settings, mapping_from(settings))
        await store.open()
        client = connect(redis_url, timeout_s=settings.redis_timeout_s, pool_max_size=settings.redis_pool_max_size)
        tier = RedisTier(client, settings, value_configuration(settings), lambda: 0.0)
        for token, session in (await store.fetch_many(tokens)).items():
            tier.put(token_hash(token), session, 0)  # generation 0: none bumped yet
        await tier.drain()
        return {"tokens": tokens, "store": store, "tier": tier, "settings": settings, "dsn": dsn}

    async def teardown(res: dict[str, Any]) -> None:
        await res["tier"].close()
        await res["store"].close()
        await drop_database(postgres_admin_dsn, res["dsn"])

    resources = loop.run_until_complete(setup())
    yield resources
    loop.run_until_complete(teardown(resources))


@pytest.mark.benchmark(group="redis: 200 concurrent lookups")
def test_redis_get_per_key(
    benchmark: Any, loop: asyncio.AbstractEventLoop, seeded: dict[str, Any], redis_url: str
) -> None:
    """The baseline: one redis-py GET per lookup (a connection per command in flight)."""
    client = Redis.from_pool(BlockingConnectionPool.from_url(redis_url, max_connections=64))
    keys = [seeded["tier"].key(token_hash(t)) for t in seeded["tokens"]]
    benchmark.pedantic(run, args=(loop, lambda: [client.get(k) for k in keys]), rounds=30, warmup_rounds=2)
    loop.run_until_complete(client.aclose())


@pytest.mark.benchmark(group="redis: 200 concurrent lookups")
def test_redis_batched_mget(benchmark: Any, loop: asyncio.AbstractEventLoop, seeded: dict[str, Any]) -> None:
    """The gateway: lookups of one tick go out as one MGET (and their MACs are checked)."""
    tier, digests = seeded["tier"], [token_hash(t) for t in seeded["tokens"]]

    def lookups() -> list[Awaitable[Any]]:
        return [tier.get(d) for d in digests]

    benchmark.pedantic(run, args=(loop, lookups), rounds=30, warmup_rounds=2)

    async def every_value_verified() -> bool:
        return all(found is not None and found.session is not None for found in await asyncio.gather(*lookups()))

    assert loop.run_until_complete(every_value_verified())


@pytest.mark.benchmark(group="postgres: 200 concurrent lookups")
def test_postgres_query_per_key(benchmark: Any, loop: asyncio.AbstractEventLoop, seeded: dict[str, Any]) -> None:
    """The baseline: one pooled query per lookup."""
    store, tokens = seeded["store"], seeded["tokens"]
    benchmark.pedantic(run, args=(loop, lambda: [store.fetch(t) for t in tokens]), rounds=20, warmup_rounds=2)


@pytest.mark.benchmark(group="postgres: 200 concurrent lookups")
def test_postgres_batched_any(benchmark: Any, loop: asyncio.AbstractEventLoop, seeded: dict[str, Any]) -> None:
    """The gateway: lookups of one tick become one `= ANY($1)` query (the tiers' batcher)."""
    from gateway.lookup.batching import Batcher  # noqa: PLC0415

    store, tokens = seeded["store"], seeded["tokens"]
    batcher = Batcher(store.fetch_many, 256)
    benchmark.pedantic(run, args=(loop, lambda: [batcher.get(t) for t in tokens]), rounds=20, warmup_rounds=2)
