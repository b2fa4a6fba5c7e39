"""Fault injection with the real server: Postgres restarted, cut mid-query, slow, its pool exhausted.

In every case: no 5xx but the documented 503, no revoked session accepted, recovery by itself.
(Redis killed under load: test_degradation; the LISTEN connection killed repeatedly: test_invalidation.)
"""

from __future__ import annotations

import asyncio
import time
import warnings
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest

from tests.support.credentials import cookie
from tests.support.postgres import install_triggers, seed_sessions
from tests.support.tcp_proxy import Proxy
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    import httpx

    from tests.support.server import Server


async def status(client: httpx.AsyncClient, gw: Server, token: str) -> int:
    return (await client.get(gw.url + "/validate", headers=cookie(token))).status_code


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[Any]:
    """A Postgres of the test's own (pgserver), which the test stops and starts again."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver.postgres_server import get_server  # noqa: PLC0415

    class Handle:
        def __init__(self) -> None:
            self.server = get_server(tmp_path / "pg", cleanup_mode="stop")
            self.dsn = self.server.get_uri()

        def stop(self) -> None:
            self.server.cleanup()

        def start(self) -> None:
            self.server = get_server(tmp_path / "pg", cleanup_mode="stop")
            assert self.server.get_uri() == self.dsn

    handle = Handle()
    yield handle
    handle.stop()


async def test_postgres_restarted(own_postgres: Any, start_gateway: Any, client: httpx.AsyncClient) -> None:
    """Postgres restarts: cached sessions keep working, uncached get 503, then the pool and the listener
    recover, and the L1 is flushed, so a session deleted before the listener was back is refused."""
    dsn = own_postgres.dsn
    warm, deleted_meanwhile, cold = await seed_sessions(dsn, 3)
    await install_triggers(dsn)
    env = {"DATABASE_URL": dsn, "GATEWAY_DB_TIMEOUT_S": "0.5", "GATEWAY_LISTENER_CHECK_S": "0.3"}
    gw: Server = start_gateway(env)
    await eventually(lambda: _listening(client, gw), within=10)
    assert await status(client, gw, warm) == 200
    assert await status(client, gw, deleted_meanwhile) == 200
    await asyncio.to_thread(own_postgres.stop)
    assert await status(client, gw, warm) == 200  # from L1
    r = await client.get(gw.url + "/validate", headers=cookie(cold))
    assert r.status_code == 503
    assert r.headers["retry-after"]
    assert (await client.get(gw.url + "/readyz")).status_code == 503
    await asyncio.to_thread(own_postgres.start)
    conn = await asyncpg.connect(dsn)  # before the listener is back: its notification is lost
    await conn.execute('delete from "session" where token = $1', deleted_meanwhile)
    await conn.close()
    # Within seconds, far inside the L1's 30 s: the reconnect flushed it (a loaded machine takes a while).
    await eventually(lambda: _is(client, gw, deleted_meanwhile, 401), within=15)
    await eventually(lambda: _is(client, gw, cold, 200), within=15)
    assert await status(client, gw, warm) == 200
    await eventually(lambda: _listening(client, gw), within=15)


async def _listening(client: httpx.AsyncClient, gw: Server) -> bool:
    r = await client.get(gw.url + "/readyz")
    return r.status_code == 200 and "listener" in r.json()["ok"]


async def _is(client: httpx.AsyncClient, gw: Server, token: str, expected: int) -> bool:
    return await status(client, gw, token) == expected


async def test_link_cut_mid_query(database: str, start_gateway: Any, client: httpx.AsyncClient) -> None:
    """The link to Postgres goes silent mid-query (a black hole): a bounded wait, then 503; recovery after."""
    tokens = await seed_sessions(database, 2)
    proxy = await Proxy(database).start()
    try:
        env = {"DATABASE_URL": proxy.dsn(), "GATEWAY_DB_TIMEOUT_S": "0.5", "GATEWAY_STARTUP_WAIT_S": "0"}
        gw: Server = start_gateway(env)
        await eventually(lambda: _is(client, gw, tokens[0], 200), within=10)
        proxy.stalled = True
        started = time.monotonic()
        r = await client.get(gw.url + "/validate", headers=cookie(tokens[1]))
        waited = time.monotonic() - started
        assert r.status_code == 503
        assert waited < 0.5 + 2.5  # the 0.5 s budget (plus a loaded machine's scheduling), not a hang (10 s)
        proxy.stalled = False
        proxy.cut()  # the stalled connections are dead; new ones work
        proxy.restore()
        await eventually(lambda: _is(client, gw, tokens[1], 200), within=10)
    finally:
        await proxy.close()


async def test_slow_postgres_answers_within_budget(
    database: str, start_gateway: Any, client: httpx.AsyncClient
) -> None:
    """A lock holds lookups up: shorter than the budget, the answer is right; longer, 503 within it."""
    tokens = await seed_sessions(database, 3)
    budget = 2.0  # the 0.3 s hold leaves 1.7 s to a loaded machine; twice the budget is past the bound
    gw: Server = start_gateway({"DATABASE_URL": database, "GATEWAY_DB_TIMEOUT_S": str(budget)})
    lock = await asyncpg.connect(database)
    for hold, expected in ((0.3, 200), (60.0, 503)):  # 60 s: held until the answer came
        token = tokens.pop()
        transaction = lock.transaction()
        await transaction.start()
        await lock.execute('lock table "session" in access exclusive mode')
        commits: list[asyncio.Future[None]] = []
        release = asyncio.get_running_loop().call_later(
            hold, lambda t, c: c.append(asyncio.ensure_future(t.commit())), transaction, commits
        )
        started = time.monotonic()
        r = await client.get(gw.url + "/validate", headers=cookie(token))
        assert r.status_code == expected
        assert time.monotonic() - started < budget + 1.5  # never past the budget (plus a loaded machine's scheduling)
        if commits:  # released by the timer: its commit is under way
            await commits[0]
        else:  # still held: the answer came first
            release.cancel()
            await transaction.commit()
    await lock.close()
    assert await status(client, gw, tokens.pop()) == 200  # recovered


async def test_pool_exhausted(database: str, start_gateway: Any, client: httpx.AsyncClient) -> None:
    """Every pooled connection stuck: further lookups get 503 within the budget, not a queue; then recovery."""
    tokens = await seed_sessions(database, 12)
    env = {"DATABASE_URL": database, "GATEWAY_DB_TIMEOUT_S": "0.8", "GATEWAY_POOL_MAX_SIZE": "1"}
    gw: Server = start_gateway(env)
    lock = await asyncpg.connect(database)
    transaction = lock.transaction()
    await transaction.start()
    await lock.execute('lock table "session" in access exclusive mode')
    started = time.monotonic()

    async def later(i: int) -> int:
        await asyncio.sleep(i * 0.05)  # separate ticks: separate batches, each wanting the one connection
        return await status(client, gw, tokens[i])

    answers = await asyncio.gather(*(later(i) for i in range(10)))
    assert set(answers) == {503}
    # Each within its own budget (plus a loaded machine's scheduling); a queue would take 10 x 0.8 s.
    assert time.monotonic() - started < 0.8 + 10 * 0.05 + 2.5
    await transaction.commit()
    await lock.close()
    await eventually(lambda: _is(client, gw, tokens[10], 200), within=5)
    assert await status(client, gw, tokens[11]) == 200
