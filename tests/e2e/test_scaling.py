"""Many instances (issue 16): a primary and a lagging streaming replica, PgBouncer, one Redis, 3 x 2 workers.

Everything is real: Postgres servers started here (``initdb``, ``pg_basebackup``), Debian's
PgBouncer 1.18 in transaction mode in front of both, the shared Redis, and three ``gateway serve``
processes of two workers each. Lag is injected by pausing the replica's replay.
"""

from __future__ import annotations

import asyncio
import functools
import subprocess
import sys
from typing import TYPE_CHECKING, Any, Self

import asyncpg
import httpx
import pytest

from gateway.config import load_settings
from gateway.postgres import seed
from gateway.postgres.admin import connection_budget
from tests.support.credentials import SECRET, cookie
from tests.support.pgbouncer import PgBouncer, pgbouncer_binary
from tests.support.postgres import create_database, install_triggers
from tests.support.replication import Replication, caught_up, pause_replay, postgres_bin, resume_replay
from tests.support.server import every_worker_listening
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.support.server import Server

pytestmark = [
    pytest.mark.skipif(postgres_bin() is None, reason="initdb/pg_ctl/pg_basebackup not installed (postgresql-15)"),
    pytest.mark.skipif(pgbouncer_binary() is None, reason="pgbouncer is not installed (apt install pgbouncer)"),
]
INSTANCES, WORKERS, POOL = 3, 2, 4
REVOKED_WITHIN_S = 0.1


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

    async def codes(self, token: str) -> set[int]:
        """Status codes of one validation on each open connection, sent together."""
        sent = [c.get(url + "/validate", headers=cookie(token)) for url, c in self._clients]
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
