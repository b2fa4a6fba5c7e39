"""``loadtests/run.sh``: realistic traffic against 2 workers with Redis, every answer checked.

Short runs (the README's figures come from longer ones): the point here is that the load test
works on a clean machine, passes against a correct gateway, and fails against one that serves
revoked sessions (a checker that cannot fail proves nothing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from gateway.postgres import seed
from tests.support import ROOT
from tests.support.better_auth import BetterAuth
from tests.support.credentials import SECRET
from tests.support.postgres import install_triggers
from tests.support.server import wait_listening

if TYPE_CHECKING:
    from pathlib import Path

    import asyncpg
    import httpx


def run_load_test(url: str, dsn: str, out: Path, duration: str = "6s") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "BETTER_AUTH"))}
    env |= {"DATABASE_URL": dsn, "BETTER_AUTH_SECRET": SECRET, "PYTHON": sys.executable}
    env |= {"GATEWAY_SECURE_COOKIES": "false"}  # as the gateways of the tests (tests/support/server.py)
    return subprocess.run(  # noqa: S603  (our own script)
        [str(ROOT / "loadtests" / "run.sh"), "--host", url, "--duration", duration, "--out", str(out), "--users", "20"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_load_test_passes_against_two_workers_with_redis(
    database: str,
    db: asyncpg.Connection,
    redis_url: str,
    redis_prefix: str,
    start_gateway: Any,
    client: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    await seed.create_schema(db)
    await install_triggers(database)
    env = {"DATABASE_URL": database, "REDIS_URL": redis_url, "GATEWAY_REDIS_PREFIX": redis_prefix}
    # The attacker is meant to meet the failure budget, as it would in production.
    server = start_gateway(env | {"GATEWAY_RATE_LIMIT_PER_MINUTE": "60"}, workers=2)
    await wait_listening(client, server)
    result = run_load_test(server.url, database, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["revocations"] > 0
    assert summary["probes"] > 0
    assert summary["accepted_revoked"] == 0
    stats = (tmp_path / "locust_stats.csv").read_text()
    assert "browser /validate" in stats
    assert "service /v1/validate" in stats
    assert (tmp_path / "report.html").exists()


async def test_load_test_fails_when_revoked_sessions_are_served(
    database: str, db: asyncpg.Connection, start_gateway: Any, tmp_path: Path
) -> None:
    await seed.create_schema(db)
    # No triggers: nothing tells the gateway of a sign-out, so its LRU serves revoked sessions.
    server = start_gateway({"DATABASE_URL": database, "GATEWAY_LISTEN": "false"})  # nor installs them
    result = run_load_test(server.url, database, tmp_path)
    assert result.returncode != 0
    assert "FAIL" in result.stdout
    assert json.loads((tmp_path / "summary.json").read_text())["accepted_revoked"] > 0


def run_seeder(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "BETTER_AUTH"))} | {"DATABASE_URL": dsn}
    return subprocess.run(  # noqa: S603  (our own module)
        [sys.executable, "-m", "loadtests.seed", *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )


SCHEMA_SQL = """
select table_name, column_name, data_type, is_nullable, column_default from information_schema.columns
where table_schema = 'public' order by table_name, column_name
"""
INDEXES_SQL = "select indexname, indexdef from pg_indexes where schemaname = 'public' order by indexname"
ROWS_SQL = """select 'user', "id" from "user" union all select 'session', "token" from "session" order by 1, 2"""


async def test_seeder_never_alters_a_better_auth_database_and_removes_its_rows(
    node_modules: Path, database: str, bare_db: asyncpg.Connection, tmp_path: Path
) -> None:
    """On tables the real Better Auth migrated (no plugins), seeding adds rows only; dropping removes all of them."""
    auth = BetterAuth(database, env={"PLUGINS": ""})  # its migrations: Better Auth's own schema, no plugin columns
    auth.stop()
    user = await seed.create_user(bare_db, email="someone@example.com")  # a real user, who must stay
    await seed.create_session(bare_db, user)
    schema, indexes = await bare_db.fetch(SCHEMA_SQL), await bare_db.fetch(INDEXES_SQL)
    rows = await bare_db.fetch(ROWS_SQL)

    out = str(tmp_path / "seed.json")
    created = run_seeder(database, "create", "--out", out, "--users", "3", "--sessions-per-user", "2")
    assert created.returncode == 0, created.stderr
    assert len(await bare_db.fetch(ROWS_SQL)) == len(rows) + 3 + 6
    assert await bare_db.fetch(SCHEMA_SQL) == schema  # no plugin column added (role, banned, ...)
    dropped = run_seeder(database, "drop", out)
    assert dropped.returncode == 0, dropped.stderr
    assert await bare_db.fetch(ROWS_SQL) == rows
    assert await bare_db.fetch(SCHEMA_SQL) == schema
    assert await bare_db.fetch(INDEXES_SQL) == indexes


async def test_seeder_refuses_a_database_without_better_auths_tables(
    database: str, bare_db: asyncpg.Connection, tmp_path: Path
) -> None:
    """An empty database, or tables in another layout, are refused with a reason; nothing is created or written."""
    empty = run_seeder(database, "create", "--out", str(tmp_path / "seed.json"))
    assert empty.returncode == 2
    assert "no Better Auth table" in empty.stderr
    assert "migrations" in empty.stderr
    assert await bare_db.fetchval("select count(*) from information_schema.tables where table_schema = 'public'") == 0
    await seed.create_schema(bare_db, "drizzle")  # snake_case columns: not what the seeder writes
    other = run_seeder(database, "create", "--out", str(tmp_path / "seed.json"))
    assert other.returncode == 2
    assert "lacks" in other.stderr
    assert "emailVerified" in other.stderr
    assert await bare_db.fetchval('select count(*) from "user"') == 0
    assert not (tmp_path / "seed.json").exists()
