"""Many instances (issue 16): a primary and a lagging streaming replica, PgBouncer, one Redis, 3 x 2 workers.

Everything is real: Postgres servers started here (``initdb``, ``pg_basebackup``), Debian's
PgBouncer 1.18 in transaction mode in front of both, the shared Redis, and three ``gateway serve``
processes of two workers each. Lag is injected by pausing the replica's replay.

The second test cuts one instance's own links (its ``LISTEN`` connection, then its Redis) through
proxies and checks that only that instance degrades, and only as far as its fallback allows.
"""

from __future__ import annotations

import asyncio
import functools
import subprocess
import sys
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from gateway.config import load_settings
from gateway.credentials.tokens import token_hash
from gateway.postgres import seed
from gateway.postgres.admin import connection_budget
from tests.support.credentials import SECRET, cookie
from tests.support.pgbouncer import PgBouncer, pgbouncer_binary
from tests.support.postgres import create_database, install_triggers
from tests.support.replication import Replication, caught_up, pause_replay, postgres_bin, resume_replay
from tests.support.server import every_worker_listening
from tests.support.tcp_proxy import Proxy
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Sequence

    from tests.support.server import Server

pytestmark = [
    pytest.mark.skipif(postgres_bin() is None, reason="initdb/pg_ctl/pg_basebackup not installed (postgresql-15)"),
    pytest.mark.skipif(pgbouncer_binary() is None, reason="pgbouncer is not installed (apt install pgbouncer)"),
]
INSTANCES, WORKERS, POOL = 3, 2, 4
REVOKED_WITHIN_S = 0.1
DEAF_L1_TTL_S = 8.0  # the fallback bound of the instance whose listener is cut: its LRU's TTL


@pytest.fixture
def cluster() -> Iterator[Replication]:
    replication = Replication()
    yield replication
    replication.stop()


async def gateway_connections(conn: asyncpg.Connection, database: str) -> int:
    """Connections to ``database`` on this server, the test's own and replication's left out."""
    return int(
        await conn.fetchval(
            "select count(*) from pg_stat_activity where datname = $1 and pid <> pg_backend_pid() "
            "and backend_type = 'client backend' and application_name <> 'test'",
            database,
        )
    )


async def on_every_instance(servers: list[Server], token: str, per_instance: int = 8) -> set[int]:
    """Status codes of ``per_instance`` requests to each instance at once, each on a fresh connection."""

    async def one(url: str) -> int:
        async with httpx.AsyncClient(timeout=5) as c:
            return (await c.get(url + "/validate", headers=cookie(token))).status_code

    return set(await asyncio.gather(*(one(s.url) for s in servers for _ in range(per_instance))))


class Warm:
    """Connections already open to every instance (spread over their workers): a request goes at once."""

    def __init__(self, servers: list[Server], per_instance: int = 6) -> None:
        limits = httpx.Limits(max_connections=1)
        self._clients = [
            (s.url, httpx.AsyncClient(timeout=10, limits=limits)) for s in servers for _ in range(per_instance)
        ]

    async def __aenter__(self) -> Self:
        await asyncio.gather(*(c.get(url + "/healthz") for url, c in self._clients))
        return self

    async def __aexit__(self, *_: object) -> None:
        await asyncio.gather(*(c.aclose() for _, c in self._clients))

    async def codes(self, token: str, among: Sequence[Server] | None = None) -> set[int]:
        """Status codes of one validation on each open connection (to ``among`` only, if given), sent together."""
        urls = None if among is None else {s.url for s in among}
        sent = [
            c.get(url + "/validate", headers=cookie(token)) for url, c in self._clients if urls is None or url in urls
        ]
        return {r.status_code for r in await asyncio.gather(*sent)}


async def test_many_instances_behind_pgbouncer_with_a_lagging_replica(
    cluster: Replication, start_gateway: Any, redis_url: str, redis_prefix: str
) -> None:
    """Fresh sign-ins validate everywhere despite lag; sign-outs are refused everywhere within 100 ms; budget kept."""
    dsn = await create_database(cluster.dsn())
    name = dsn.rsplit("/", 1)[1]
    primary = await asyncpg.connect(dsn, server_settings={"application_name": "test"})
    replica = await eventually(lambda: _connect(cluster.dsn(replica=True, database=name)), within=10)
    await seed.create_schema(primary)
    await install_triggers(dsn)
    await caught_up(primary, replica)
    to_primary, to_replica = PgBouncer(dsn, pool_size=4), PgBouncer(cluster.dsn(replica=True, database=name))
    env = {
        "DATABASE_URL": to_primary.dsn(),  # the primary, through PgBouncer: replica misses
        "GATEWAY_READ_DATABASE_URL": to_replica.dsn(),  # lookups
        "GATEWAY_LISTEN_DATABASE_URL": dsn,  # LISTEN on the primary itself
        "REDIS_URL": redis_url,
        "GATEWAY_REDIS_PREFIX": redis_prefix,
        "GATEWAY_POOL_MAX_SIZE": str(POOL),
    }
    try:
        servers: list[Server] = [start_gateway(env, workers=WORKERS) for _ in range(INSTANCES)]
        for server in servers:
            await eventually(functools.partial(every_worker_listening, server.url), within=20)
        uid = await seed.create_user(primary, email="many@example.com")

        # Warm: a session every worker has cached (L1) and Redis holds.
        old = await seed.create_session(primary, uid)
        await caught_up(primary, replica)
        assert await on_every_instance(servers, old) == {200}

        # Lag: the replica shows nothing new from here on.
        await pause_replay(replica)
        fresh = await seed.create_session(primary, uid)  # a sign-in a moment ago
        assert await on_every_instance(servers, fresh) == {200}, "a fresh session was refused under lag"

        # Sign-outs on the primary, still invisible on the replica: 100 ms later, refused everywhere.
        async with Warm(servers) as warm:
            for token in (old, fresh):
                assert await warm.codes(token) == {200}
                await primary.execute('delete from "session" where token = $1', token)
                # The bound itself, not a wait for something: requests arriving from then on must fail.
                await asyncio.sleep(REVOKED_WITHIN_S)
                assert await warm.codes(token) == {401}, "a sign-out was not refused everywhere within 100 ms"
            assert await on_every_instance(servers, old) == {401}  # on fresh connections too
        # It lagged throughout: the signed-out session is still there, the fresh one not yet.
        assert await replica.fetchval('select array_agg(token) from "session"') == [old]

        # The budget check-config states holds for what is open on both servers.
        settings = load_settings(env | {"GATEWAY_WORKERS": str(WORKERS), "BETTER_AUTH_SECRET": SECRET})
        budget = connection_budget(settings, INSTANCES)
        stated = _check_config(env)
        assert f"connection budget: {budget.total} Postgres connections" in stated
        held = await gateway_connections(primary, name) + await gateway_connections(replica, name)
        listeners = await primary.fetchval(
            "select count(*) from pg_stat_activity where application_name = 'better-auth-gateway-listener'"
        )
        assert listeners == INSTANCES * WORKERS
        assert 0 < held <= budget.total
    finally:
        await resume_replay(replica)
        await replica.close()
        await primary.close()
        to_primary.stop()
        to_replica.stop()


async def test_one_instance_losing_its_listener_or_redis_affects_only_that_instance(
    database: str, start_gateway: Any, redis_url: str, redis_prefix: str
) -> None:
    """A cut LISTEN or Redis link degrades its own instance only; sign-outs are refused within each one's bound."""
    primary = await asyncpg.connect(database, server_settings={"application_name": "test"})
    await seed.create_schema(primary)
    await install_triggers(database)
    listen, cache = await Proxy(database).start(), await Proxy(redis_url).start()
    redis_path = urlsplit(redis_url).path
    env = {
        "DATABASE_URL": database,
        "REDIS_URL": redis_url,
        "GATEWAY_REDIS_PREFIX": redis_prefix,
        "GATEWAY_POOL_MAX_SIZE": "2",
        "GATEWAY_REDIS_TIMEOUT_S": "1",  # a busy machine's slow answer is not the outage under test
    }
    try:
        # The proxies run on this test's loop, which a blocking wait for readiness would stall.
        steady = start_gateway(env, workers=WORKERS, ready=False)
        deaf_env = {"GATEWAY_LISTEN_DATABASE_URL": listen.dsn(), "GATEWAY_L1_TTL_S": str(DEAF_L1_TTL_S)}
        deaf = start_gateway(env | deaf_env, workers=WORKERS, ready=False)
        cache_url = urlunsplit(("redis", f"127.0.0.1:{cache.port}", redis_path, "", ""))
        cacheless = start_gateway(env | {"REDIS_URL": cache_url}, workers=WORKERS, ready=False)
        servers = [steady, deaf, cacheless]
        for server in servers:
            await eventually(functools.partial(_listening, server), within=20)
        async with Warm(servers) as warm:
            await _deaf_instance(primary, warm, listen, (steady, deaf, cacheless))
            in_redis = functools.partial(_in_redis, redis_url, redis_prefix)
            await _cacheless_instance(primary, warm, cache, (steady, deaf, cacheless), in_redis)
    finally:
        await listen.close()
        await cache.close()
        await primary.close()


async def _deaf_instance(
    primary: asyncpg.Connection, warm: Warm, listen: Proxy, servers: tuple[Server, Server, Server]
) -> None:
    """Cut the middle instance's LISTEN link: it alone degrades, and refuses sign-outs within its LRU's TTL."""
    steady, deaf, cacheless = servers
    uid = await seed.create_user(primary, email="deaf@example.com")
    early, later = [await seed.create_session(primary, uid) for _ in range(2)]
    for token in (early, later):
        assert await warm.codes(token) == {200}
    listen.cut()
    await eventually(lambda: _all_degraded(deaf, "listener"), within=5)
    assert all([await every_worker_listening(s.url) for s in (steady, cacheless)])
    # A sign-out: refused by the others within 100 ms, by the deaf one once its LRU's entry expires.
    await primary.execute('delete from "session" where token = $1', early)
    await asyncio.sleep(REVOKED_WITHIN_S)  # the bound itself, as in the test above
    assert await warm.codes(early, [steady, cacheless]) == {401}, "the others missed a sign-out"
    await eventually(lambda: _codes_are(warm, early, [deaf], 401), within=DEAF_L1_TTL_S + 1)
    assert await _all_degraded(deaf, "listener"), "the listener came back: the fallback bound was not tested"
    # Another, with the deaf instance's LRU freshly filled; then its listener reconnects and
    # flushes (for what it missed while away): refused everywhere.
    assert await warm.codes(later) == {200}
    await primary.execute('delete from "session" where token = $1', later)
    await asyncio.sleep(REVOKED_WITHIN_S)
    assert await warm.codes(later, [steady, cacheless]) == {401}, "the others missed a sign-out"
    listen.restore()
    await eventually(functools.partial(every_worker_listening, deaf.url), within=10)
    assert await warm.codes(later) == {401}, "a sign-out missed while away survived the reconnect"


async def _cacheless_instance(
    primary: asyncpg.Connection,
    warm: Warm,
    cache: Proxy,
    servers: tuple[Server, Server, Server],
    in_redis: Callable[[str], Awaitable[None]],
) -> None:
    """Cut the last instance's Redis link: it serves from Postgres, degraded; the others keep using Redis."""
    steady, deaf, cacheless = servers
    uid = await seed.create_user(primary, email="cacheless@example.com")
    kept = await seed.create_session(primary, uid)
    assert await warm.codes(kept) == {200}
    cache.cut()
    await eventually(lambda: _all_degraded(cacheless, "redis"), within=5)
    assert all([await _all_ok(s, "redis") for s in (steady, deaf)])
    fresh = await seed.create_session(primary, uid)  # in no cache yet
    assert await on_every_instance([cacheless], fresh) == {200}, "Redis down must not refuse a valid session"
    assert await on_every_instance([steady, deaf], fresh) == {200}
    await in_redis(fresh)  # filled by the others
    # Revocation still reaches every instance within 100 ms.
    await primary.execute('delete from "session" where token = $1', kept)
    await asyncio.sleep(REVOKED_WITHIN_S)
    assert await warm.codes(kept) == {401}, "a sign-out was not refused everywhere within 100 ms"


async def _readiness(server: Server, probes: int = 16) -> list[httpx.Response]:
    """``/readyz`` asked on fresh connections (spread over the workers)."""

    async def one() -> httpx.Response:
        async with httpx.AsyncClient(timeout=5) as c:
            return await c.get(server.url + "/readyz")

    return list(await asyncio.gather(*(one() for _ in range(probes))))


async def _all_degraded(server: Server, part: str) -> bool:
    """Whether every worker is ready (200) with ``part`` degraded."""
    return all(r.status_code == 200 and part in r.json()["degraded"] for r in await _readiness(server))


async def _all_ok(server: Server, part: str) -> bool:
    """Whether every worker is ready (200) with ``part`` fine."""
    return all(r.status_code == 200 and part in r.json()["ok"] for r in await _readiness(server))


async def _listening(server: Server) -> bool:
    """Whether the server is up and every worker's listener connected (its first connect flushes)."""
    assert server.proc.poll() is None, server.output()
    try:
        return await every_worker_listening(server.url)
    except httpx.TransportError:  # not up yet
        return False


async def _codes_are(warm: Warm, token: str, among: Sequence[Server], code: int) -> bool:
    return await warm.codes(token, among) == {code}


async def _in_redis(url: str, prefix: str, token: str) -> None:
    """Wait until another process's background write put ``token``'s session in Redis."""
    client = aioredis.Redis.from_url(url)
    try:
        await eventually(lambda: client.exists(f"{prefix}:v2:s:{token_hash(token)}"), within=3)
    finally:
        await client.aclose()


async def _connect(dsn: str) -> asyncpg.Connection | None:
    try:
        return await asyncpg.connect(dsn, server_settings={"application_name": "test"})
    except asyncpg.InvalidCatalogNameError:  # the CREATE DATABASE not replayed yet
        return None


def _check_config(env: dict[str, str]) -> str:
    done = subprocess.run(  # noqa: S603  (our own command)
        [sys.executable, "-m", "gateway", "check-config", "--instances", str(INSTANCES)],
        env={"PATH": "/usr/bin:/bin", "BETTER_AUTH_SECRET": SECRET, "GATEWAY_WORKERS": str(WORKERS), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
