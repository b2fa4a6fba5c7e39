"""A worker's start: it waits (within ``GATEWAY_STARTUP_WAIT_S``) for a Postgres still coming up, then serves."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from gateway.core.sessions import Reason
from gateway.postgres import seed
from tests.support.credentials import cred
from tests.support.ports import free_port
from tests.support.resources import open_gateway
from tests.support.tcp_proxy import Proxy

if TYPE_CHECKING:
    import asyncpg
    import pytest


async def test_a_start_waits_for_postgres_coming_up_then_serves(db: asyncpg.Connection, database: str) -> None:
    """Postgres unreachable at first (every connection cut), then up: the start returns once it answers, not at
    the end of its budget, and its first lookup finds the session."""
    token = await seed.create_session(db, await seed.create_user(db, email="early@example.com"))
    proxy = await Proxy(database).start()
    proxy.cut()
    asyncio.get_running_loop().call_later(0.6, proxy.restore)
    started = time.monotonic()
    try:
        async with open_gateway(proxy.dsn(), listen=False, startup_wait_s=20, db_timeout_s=0.5) as res:
            took = time.monotonic() - started
            verdict = await res.decider.decide(cred(token))
    finally:
        await proxy.close()
    assert 0.6 <= took < 10, took  # it waited for Postgres, and no longer than the back-off's next try
    assert verdict.reason is Reason.ok


async def test_a_start_gives_up_after_its_budget_and_serves_503s(caplog: pytest.LogCaptureFixture) -> None:
    """Postgres never comes: the start waits about its budget, says so, and lookups are unavailable (never 401)."""
    dsn = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="gateway"):
        async with open_gateway(dsn, listen=False, startup_wait_s=1, db_timeout_s=0.2) as res:
            took = time.monotonic() - started
            verdict = await res.decider.decide(cred(seed.generate_id()))
    assert 0.3 <= took < 5, took  # tries at 0, 0.1, 0.3, 0.7 s; the next would pass the budget
    assert verdict.reason is Reason.backend_unavailable
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("waiting for Postgres (retrying in 0.1s)") for m in messages), messages
    assert any(m.startswith("Postgres is not ready; serving anyway (503 until it is)") for m in messages), messages
