"""Revocation by default: ``serve`` installs or upgrades the triggers; without them the caches bound staleness."""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING, Any

import pytest

from gateway.config import load_settings
from gateway.postgres import seed
from gateway.postgres.installer import ensure_triggers
from gateway.postgres.listener import Listener
from gateway.postgres.schema import mapping_from
from gateway.postgres.triggers import UNTRIGGERED_TTL_S, VERSION, install_sql, names
from tests.config import run_cli
from tests.support.credentials import SECRET, cookie
from tests.support.postgres import as_role
from tests.support.server import every_worker_listening, statuses
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import asyncpg
    import httpx

TRIGGERS_SQL = "select tgname from pg_trigger where tgname like 'gateway%' and not tgisinternal order by 1"


async def trigger_names(db: asyncpg.Connection) -> set[str]:
    return {r[0] for r in await db.fetch(TRIGGERS_SQL)}


async def degraded_listener(client: httpx.AsyncClient, url: str) -> str | None:
    """The listener's entry under ``degraded`` in ``/readyz`` once it has looked at the triggers."""
    note: str | None = (await client.get(url + "/readyz")).json()["degraded"].get("listener")
    return note if note and "triggers" in note else None


@pytest.fixture
async def reader(db: asyncpg.Connection, database: str) -> AsyncIterator[str]:
    """A DSN for a role that may only read Better Auth's tables: it cannot install the triggers."""
    role = "gw_reader_" + seed.generate_id(6).lower()
    await db.execute(f"create role {role} login password 'reader'")
    await db.execute(f'grant select on "session", "user" to {role}')
    yield as_role(database, role, "reader")
    await db.execute(f'revoke all on "session", "user" from {role}')
    await db.execute(f"drop role {role}")


async def test_serve_installs_the_triggers_and_every_worker_refuses_a_signed_out_session(
    db: asyncpg.Connection, database: str, redis_url: str, redis_prefix: str, start_gateway: Any
) -> None:
    """Defaults, no triggers: serve installs them once; a deleted session is refused by every worker within 100 ms."""
    assert await trigger_names(db) == set()
    token = await seed.create_session(db, await seed.create_user(db, email="default@example.com"))
    env = {"DATABASE_URL": database, "REDIS_URL": redis_url, "GATEWAY_REDIS_PREFIX": redis_prefix}
    gw = start_gateway(env, workers=2)
    await eventually(lambda: every_worker_listening(gw.url), within=10)
    assert await trigger_names(db) == set(names())
    assert gw.output().count(f"invalidation triggers: installed v{VERSION}") == 1  # the main process, not each worker
    assert await statuses(gw.url, cookie(token)) == {200}
    await db.execute('delete from "session" where token = $1', token)  # Better Auth's sign-out
    await asyncio.sleep(0.1)
    assert await statuses(gw.url, cookie(token)) == {401}


async def test_never_leaves_the_triggers_out_and_the_caches_bound_staleness(
    db: asyncpg.Connection,
    database: str,
    redis_url: str,
    redis_prefix: str,
    start_gateway: Any,
    client: httpx.AsyncClient,
) -> None:
    """INSTALL_TRIGGERS=never: /readyz degraded with the bound; a deleted session refused within it (Redis on)."""
    token = await seed.create_session(db, await seed.create_user(db, email="never@example.com"))
    env = {"DATABASE_URL": database, "REDIS_URL": redis_url, "GATEWAY_REDIS_PREFIX": redis_prefix}
    gw = start_gateway(env | {"GATEWAY_INSTALL_TRIGGERS": "never"}, workers=2)
    note = await eventually(lambda: degraded_listener(client, gw.url), within=10)
    assert f"refused within {UNTRIGGERED_TTL_S:g} s" in note
    assert "GATEWAY_INSTALL_TRIGGERS=never" in gw.output()
    assert f"refused within {UNTRIGGERED_TTL_S:g} s" in gw.output()
    assert await trigger_names(db) == set()
    assert await statuses(gw.url, cookie(token)) == {200}  # cached in both workers' LRUs (and not in Redis)
    deleted = time.monotonic()
    await db.execute('delete from "session" where token = $1', token)
    await eventually(lambda: _all_refused(gw.url, token), within=UNTRIGGERED_TTL_S + 2, interval=0.1)
    assert time.monotonic() - deleted <= UNTRIGGERED_TTL_S + 1.5  # the bound, plus one round of polling


async def _all_refused(url: str, token: str) -> bool:
    return await statuses(url, cookie(token), n=8) == {401}


async def test_a_role_that_may_not_install_serves_degraded(
    db: asyncpg.Connection, reader: str, start_gateway: Any, client: httpx.AsyncClient
) -> None:
    """A role with only SELECT: serve starts, logs 'not permitted' and why, and /readyz gives the bound."""
    token = await seed.create_session(db, await seed.create_user(db, email="reader@example.com"))
    gw = start_gateway({"DATABASE_URL": reader}, workers=1)
    note = await eventually(lambda: degraded_listener(client, gw.url), within=10)
    assert f"refused within {UNTRIGGERED_TTL_S:g} s" in note
    assert "invalidation triggers: not permitted: permission denied" in gw.output()
    assert await statuses(gw.url, cookie(token), n=2) == {200}
    assert await trigger_names(db) == set()


async def test_older_triggers_are_upgraded(db: asyncpg.Connection, database: str) -> None:
    """Triggers of an older version are replaced by this one's, their functions dropped, in one step."""
    settings = load_settings({"DATABASE_URL": database}, need=frozenset({"database"}))
    await db.execute(install_sql(mapping_from(settings), settings.channel, version=0))
    assert await trigger_names(db) == set(names(0))
    outcome = await ensure_triggers(settings)
    assert outcome.current
    assert outcome.message == f"upgraded from v0 to v{VERSION}"
    assert await trigger_names(db) == set(names())
    assert await db.fetchval("select count(*) from pg_proc where proname like 'gateway%v0'") == 0
    again = await ensure_triggers(settings)
    assert again.message == f"already current (v{VERSION})"


async def test_the_listener_bounds_the_caches_when_the_triggers_go(db: asyncpg.Connection, database: str) -> None:
    """Triggers dropped while serving: the worker notices at its next check, flushes and caps its TTL."""
    from gateway.postgres.admin import run_sql, trigger_sql  # noqa: PLC0415
    from tests.support.resources import open_gateway  # noqa: PLC0415

    settings = load_settings({"DATABASE_URL": database}, need=frozenset({"database"}))
    await ensure_triggers(settings)
    async with open_gateway(database, listener_check_s=0.05) as res:
        listener = res.listener
        assert isinstance(listener, Listener)
        await eventually(lambda: listener.connected and listener.triggers_installed)
        epoch = res.tiers.epoch
        await run_sql(settings, trigger_sql(settings, uninstall=True))
        await eventually(lambda: listener.triggers_installed is False)
        assert res.tiers.epoch > epoch  # flushed: what was cached was not bounded
        assert res.tiers._ttl_s == UNTRIGGERED_TTL_S  # the bound itself


def test_check_config_checks_the_database_and_install_triggers_installs(db: asyncpg.Connection, database: str) -> None:
    """check-config: a preset not matching the tables exits 2 naming it; no triggers or no Postgres warn."""
    del db  # Better Auth's default layout, no triggers
    env = {"DATABASE_URL": database, "BETTER_AUTH_SECRET": SECRET, "PATH": os.environ.get("PATH", "")}
    wrong = run_cli("check-config", env=env | {"GATEWAY_SCHEMA_PRESET": "drizzle"})
    assert wrong.returncode == 2, wrong.stdout + wrong.stderr
    assert "problem: Better Auth's tables are not as configured" in wrong.stderr
    assert "GATEWAY_SCHEMA_PRESET=drizzle" in wrong.stderr
    right = run_cli("check-config", env=env)
    assert right.returncode == 0, right.stderr
    assert "ok: tables:" in right.stdout
    assert "`gateway serve` will install them at startup" in right.stdout
    never = run_cli("check-config", env=env | {"GATEWAY_INSTALL_TRIGGERS": "never"})
    assert never.returncode == 0
    assert f"warning: invalidation triggers: v{VERSION} absent, and GATEWAY_INSTALL_TRIGGERS=never" in never.stderr
    assert f"a revoked session is refused within {UNTRIGGERED_TTL_S:g} s" in never.stderr
    installed = run_cli("install-triggers", env=env | {"GATEWAY_INSTALL_TRIGGERS": "never"})  # asked for: done
    assert installed.returncode == 0, installed.stderr
    assert installed.stdout == f"invalidation triggers: installed v{VERSION}\n"
    assert f"ok: invalidation triggers: v{VERSION} in place" in run_cli("check-config", env=env).stdout
    away = run_cli("check-config", env=env | {"DATABASE_URL": "postgresql://gw@127.0.0.1:1/app"})
    assert away.returncode == 0, away.stderr
    assert "warning: could not reach Postgres to check the tables and triggers" in away.stderr
