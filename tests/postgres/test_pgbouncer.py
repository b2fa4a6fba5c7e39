"""Through PgBouncer 1.18 (Debian's) in transaction mode: lookups work, LISTEN through it is refused."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from gateway.config import load_settings
from gateway.core.sessions import Reason
from gateway.credentials.tokens import header_credential, sign
from gateway.postgres import seed
from gateway.postgres.pooler import behind_pooler
from gateway.resources import open_resources
from tests.support.credentials import SECRET, cookie
from tests.support.pgbouncer import PgBouncer, pgbouncer_binary
from tests.support.postgres import install_triggers
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from collections.abc import Iterator

    import asyncpg

    from tests.support.server import Server

pytestmark = pytest.mark.skipif(
    pgbouncer_binary() is None, reason="pgbouncer is not installed (Debian/Ubuntu: apt install pgbouncer)"
)


@pytest.fixture
def bouncer(database: str) -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode, three server connections for the gateway's eight."""
    server = PgBouncer(database, pool_size=3)
    yield server
    server.stop()


def cred(token: str) -> Any:
    return header_credential(sign(token, SECRET))


async def test_lookups_run_through_pgbouncer_in_transaction_mode(
    db: asyncpg.Connection, database: str, bouncer: PgBouncer
) -> None:
    """Detected (auto), no startup parameter PgBouncer refuses, no prepared statement across transactions.

    Eight pooled connections share three server connections: statements prepared on one server
    connection and run on another would fail ("prepared statement ... does not exist").
    """
    uid = await seed.create_user(db, email="bouncer@example.com")
    tokens = [await seed.create_session(db, uid) for _ in range(60)]
    env = {"DATABASE_URL": bouncer.dsn(), "BETTER_AUTH_SECRET": SECRET}
    settings = load_settings(env, {"listen": False, "pool_max_size": 8, "l1_max_entries": 1})
    async with open_resources(settings) as res:
        assert res.store is not None
        verdicts = await asyncio.gather(*(res.decider.decide(cred(t)) for t in tokens))  # one batch
        assert {v.reason for v in verdicts} == {Reason.ok}
        for _ in range(5):  # eight client connections at once, each on whichever server connection is free
            groups = [tokens[i : i + n] for i, n in zip(range(0, 60, 8), (1, 2, 3, 1, 5, 1, 8, 1), strict=True)]
            found = await asyncio.gather(*(res.store.fetch_many(group) for group in groups))
            assert [sorted(f) for f in found] == [sorted(group) for group in groups]
        assert await res.store.fetch("no-such-token") is None


async def test_the_statement_timeout_holds_through_pgbouncer(
    db: asyncpg.Connection, database: str, bouncer: PgBouncer
) -> None:
    """Set per transaction (``SET LOCAL``): a lookup stuck behind a lock is cancelled by Postgres itself.

    Without a statement timeout the query would wait for the lock as long as it is held, holding
    one of PgBouncer's few server connections, long after the gateway answered 503.
    """
    token = await seed.create_session(db, await seed.create_user(db, email="slow@example.com"))
    env = {"DATABASE_URL": bouncer.dsn(), "BETTER_AUTH_SECRET": SECRET}
    settings = load_settings(env, {"listen": False, "db_timeout_s": 0.5})
    waiting = (
        "select count(*) from pg_stat_activity where application_name = 'better-auth-gateway' "
        "and wait_event_type = 'Lock' and datname = current_database()"
    )
    async with open_resources(settings) as res:
        assert (await res.decider.decide(cred(token))).reason is Reason.ok
        res.tiers.l1.clear()
        async with db.transaction():
            await db.execute('lock table "session" in access exclusive mode')
            verdict = await res.decider.decide(cred(token))
            assert verdict.reason is Reason.backend_unavailable  # 503, never 401
            # Postgres cancels the waiting query at the timeout, while the lock is still held.
            await eventually(lambda: _none_waiting(db, waiting), within=5)
        assert (await res.decider.decide(cred(token))).reason is Reason.ok


async def _none_waiting(db: asyncpg.Connection, sql: str) -> bool:
    return bool(await db.fetchval(sql) == 0)


async def test_probe_tells_pgbouncer_from_postgres_even_when_told_to_ignore_it(database: str) -> None:
    """PgBouncer refuses the probe's startup parameter; told to ignore it, it drops it: both are seen."""
    assert not await behind_pooler(database, 2)
    refusing = PgBouncer(database)
    ignoring = PgBouncer(database, ignore=("gateway.direct",))
    try:
        assert await behind_pooler(refusing.dsn(), 2)
        assert await behind_pooler(ignoring.dsn(), 2)
    finally:
        refusing.stop()
        ignoring.stop()


async def test_gateway_serves_through_pgbouncer_and_listens_on_the_primary(
    db: asyncpg.Connection, database: str, bouncer: PgBouncer, start_gateway: Any
) -> None:
    """`gateway serve` (two workers) validates through PgBouncer; LISTEN on the primary revokes at once."""
    await install_triggers(database)
    token = await seed.create_session(db, await seed.create_user(db, email="served@example.com"))
    gw: Server = start_gateway({"DATABASE_URL": bouncer.dsn(), "GATEWAY_LISTEN_DATABASE_URL": database}, workers=2)
    async with httpx.AsyncClient(timeout=5) as client:
        assert (await client.get(gw.url + "/validate", headers=cookie(token))).status_code == 200
        await eventually(lambda: _ready(client, gw.url))
        await db.execute('delete from "session" where token = $1', token)

        async def refused() -> bool:
            return (await client.get(gw.url + "/validate", headers=cookie(token))).status_code == 401

        await eventually(refused)


async def _ready(client: httpx.AsyncClient, url: str) -> bool:
    r = await client.get(url + "/readyz")
    return r.status_code == 200 and "listener" in r.json().get("ok", [])


@pytest.mark.parametrize("variable", ["DATABASE_URL", "GATEWAY_LISTEN_DATABASE_URL"])
def test_a_listen_url_at_pgbouncer_fails_at_startup_naming_the_fix(
    database: str, bouncer: PgBouncer, start_gateway: Any, variable: str
) -> None:
    """LISTEN through a transaction pooler would hear nothing: `serve` and `check-config` refuse, exit 2."""
    env = {"DATABASE_URL": database, variable: bouncer.dsn()}
    gw: Server = start_gateway(env, ready=False)
    assert gw.proc.wait(30) == 2
    said = gw.output()
    assert f"{variable} reaches a connection pooler" in said
    assert "Point GATEWAY_LISTEN_DATABASE_URL at the primary directly" in said
    check = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config"],
        env={"PATH": "/usr/bin:/bin", "BETTER_AUTH_SECRET": SECRET, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert check.returncode == 2
    assert f"{variable} reaches a connection pooler" in check.stderr
