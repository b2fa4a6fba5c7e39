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
    server = start_gateway({"DATABASE_URL": database})
    result = run_load_test(server.url, database, tmp_path)
    assert result.returncode != 0
    assert "FAIL" in result.stdout
    assert json.loads((tmp_path / "summary.json").read_text())["accepted_revoked"] > 0
