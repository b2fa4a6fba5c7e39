"""Real gateway processes with Redis and Postgres misbehaving: right verdicts, no stray 5xx."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis

from gateway.credentials.tokens import token_hash
from gateway.postgres import seed
from tests.support.credentials import cookie
from tests.support.ports import free_port
from tests.support.postgres import install_triggers, seed_sessions
from tests.support.redis import PATIENT_REDIS
from tests.support.server import wait_listening
from tests.support.tcp_proxy import Proxy
from tests.support.waiting import eventually

if TYPE_CHECKING:
    import httpx

    from tests.support.redis import RedisServer
    from tests.support.server import Server


async def test_two_processes_share_redis(
    database: str, redis_url: str, redis_prefix: str, start_gateway: Any, client: httpx.AsyncClient
) -> None:
    """A session looked up by one process is served by another from Redis: the second has no Postgres at all."""
    (token,) = await seed_sessions(database, 1)
    shared = {"REDIS_URL": redis_url, "GATEWAY_REDIS_PREFIX": redis_prefix} | PATIENT_REDIS
    first = start_gateway({"DATABASE_URL": database} | shared)
    no_postgres = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    second = start_gateway(
        {"DATABASE_URL": no_postgres, "GATEWAY_DB_TIMEOUT_S": "0.5", "GATEWAY_STARTUP_WAIT_S": "0"} | shared
    )
    await wait_listening(client, first)
    assert (await client.get(first.url + "/validate", headers=cookie(token))).status_code == 200
    r = await eventually(lambda: _status_is(client, second, cookie(token), 200), within=10)
    assert r.headers["x-auth-request-user"]
    never_seen = cookie(seed.generate_id())
    assert (await client.get(second.url + "/validate", headers=never_seen)).status_code == 503


async def in_redis(url: str, key: str) -> None:
    """Wait until another process's background write put a value at ``key``."""
    redis = aioredis.Redis.from_url(url)
    try:
        await eventually(lambda: redis.exists(key), within=10)
    finally:
        await redis.aclose()


async def _status_is(
    client: httpx.AsyncClient, server: Server, headers: dict[str, str], status: int
) -> httpx.Response | None:
    r = await client.get(server.url + "/validate", headers=headers)
    return r if r.status_code == status else None


async def test_redis_down_from_the_start(database: str, start_gateway: Any, client: httpx.AsyncClient) -> None:
    """With REDIS_URL pointing at nothing, every verdict is right, no 5xx, and /readyz says degraded."""
    good, *_ = await seed_sessions(database, 1)
    dead = f"redis://127.0.0.1:{free_port()}/0"
    gw = start_gateway({"DATABASE_URL": database, "REDIS_URL": dead, "GATEWAY_L1_MAX_ENTRIES": "0"})
    for _ in range(20):
        assert (await client.get(gw.url + "/validate", headers=cookie(good))).status_code == 200
        assert (await client.get(gw.url + "/validate", headers=cookie(seed.generate_id()))).status_code == 401
    r = await client.get(gw.url + "/readyz")
    assert r.status_code == 200
    assert "redis" in r.json()["degraded"]


async def test_redis_killed_mid_run(
    database: str, own_redis: RedisServer, start_gateway: Any, client: httpx.AsyncClient
) -> None:
    """Redis killed under concurrent load, then restarted: every verdict right, no 5xx, recovery by itself."""
    tokens = await seed_sessions(database, 30)
    env = {
        "DATABASE_URL": database,
        "REDIS_URL": own_redis.url,
        "GATEWAY_L1_MAX_ENTRIES": "0",
        "GATEWAY_REDIS_BACKOFF_S": "0.2",
    }
    gw = start_gateway(env, workers=2)
    forged = cookie(tokens[0], secret="z" * 40)

    async def load(rounds: int) -> list[tuple[int, int]]:
        results = []
        for i in range(rounds):
            good = client.get(gw.url + "/validate", headers=cookie(tokens[i % len(tokens)]))
            bad = client.get(gw.url + "/validate", headers=forged)
            g, b = await asyncio.gather(good, bad)
            results.append((g.status_code, b.status_code))
        return results

    during = asyncio.gather(*(load(60) for _ in range(4)))
    await asyncio.sleep(0.2)
    own_redis.kill()
    await asyncio.sleep(0.5)
    own_redis.start()
    results = [pair for batch in await during for pair in batch]
    assert set(results) == {(200, 401)}

    async def redis_ok() -> bool:
        r = await client.get(gw.url + "/readyz")
        return r.status_code == 200 and "redis" in r.json()["ok"]

    await eventually(redis_ok, within=10)


async def test_postgres_cut_off(
    database: str, redis_url: str, redis_prefix: str, start_gateway: Any, client: httpx.AsyncClient
) -> None:
    """Postgres cut: cached sessions (L1 or Redis) validate, uncached get 503, garbage 401; then recovery."""
    proxy = await Proxy(database).start()
    try:
        warm, warm_in_redis_only, cold = await seed_sessions(database, 3)
        await install_triggers(database)  # without them Redis is bypassed (staleness bounded by the LRU)
        env = {
            "DATABASE_URL": proxy.dsn(),
            "REDIS_URL": redis_url,
            "GATEWAY_REDIS_PREFIX": redis_prefix,
        } | PATIENT_REDIS
        # The proxy runs on this test's loop, which start_gateway blocks: no waiting for Postgres.
        # The default 2 s Postgres budget: the cut link refuses at once, and the warm-up lookups
        # through this proxy must not time out on a loaded machine (0.5 s did not leave much).
        env |= {"GATEWAY_STARTUP_WAIT_S": "0"}
        gw = start_gateway(env)
        other = start_gateway(env)
        await wait_listening(client, gw, other)
        for token in (warm, warm_in_redis_only):
            assert (await client.get(gw.url + "/validate", headers=cookie(token))).status_code == 200
        assert (await client.get(other.url + "/validate", headers=cookie(warm))).status_code == 200
        await in_redis(redis_url, f"{redis_prefix}:v2:s:{token_hash(warm_in_redis_only)}")  # the background write
        proxy.cut()
        assert (await client.get(gw.url + "/validate", headers=cookie(warm))).status_code == 200  # L1
        r = await client.get(other.url + "/validate", headers=cookie(warm_in_redis_only))  # Redis
        assert r.status_code == 200
        r = await client.get(gw.url + "/validate", headers=cookie(cold))
        assert r.status_code == 503
        assert r.headers["retry-after"]
        garbage = await client.get(gw.url + "/validate", headers={"authorization": "Bearer !!garbage!!"})
        assert garbage.status_code == 401
        assert (await client.get(gw.url + "/readyz")).status_code == 503
        proxy.restore()
        await eventually(lambda: _status_is(client, gw, cookie(cold), 200), within=15)
        assert (await client.get(gw.url + "/readyz")).status_code == 200
    finally:
        await proxy.close()
