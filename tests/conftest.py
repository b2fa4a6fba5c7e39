"""The tests' fixtures: real services, and the processes and clients the tests drive.

Postgres is the one named by ``GATEWAY_TEST_DATABASE_URL`` (else an embedded one the tests start),
with a fresh database per test; Redis is ``GATEWAY_TEST_REDIS_URL`` (else a ``redis-server`` of the
tests' own), with a key prefix per test. The plain helpers these build on are in ``tests/support``.
"""

from __future__ import annotations

import os
import secrets
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx
import pytest

from gateway.postgres import seed
from tests.support.better_auth import install_peer, stateless_client
from tests.support.postgres import as_role, create_database, drop_database
from tests.support.redis import RedisServer
from tests.support.server import Server

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path

    StartGateway = Callable[..., Server]


@pytest.fixture(scope="session")
def postgres_admin_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A DSN with the right to create databases: the configured server, or an embedded one."""
    configured = os.environ.get("GATEWAY_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    from pgserver.postgres_server import get_server  # noqa: PLC0415  (only without a configured server)

    server = get_server(tmp_path_factory.mktemp("pgdata"), cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@pytest.fixture
async def database(postgres_admin_dsn: str) -> AsyncIterator[str]:
    """A new, empty database for one test, dropped afterwards; yields its DSN."""
    dsn = await create_database(postgres_admin_dsn)
    try:
        yield dsn
    finally:
        await drop_database(postgres_admin_dsn, dsn)


@pytest.fixture
async def bare_db(database: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the test database, with nothing created (a real Better Auth migrates it)."""
    conn = await asyncpg.connect(database)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def db(database: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the test database, with Better Auth's schema (plugins included)."""
    conn = await asyncpg.connect(database)
    await seed.create_schema(conn)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def stranger(db: asyncpg.Connection, database: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection as a role that may only connect: no privilege on any table (NOTIFY needs none)."""
    role = "gw_stranger_" + seed.generate_id(6).lower()
    await db.execute(f"create role {role} login password 'stranger'")
    dsn = as_role(database, role, "stranger")
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()
        await db.execute(f"drop role {role}")


@pytest.fixture
def start_gateway() -> Iterator[StartGateway]:
    """``start(env, workers=1, *, ready=True) -> Server``: real gateway processes, all stopped after the test.

    ``ready=False`` returns at once (for a gateway expected to exit, or to come up later).
    """
    started: list[Server] = []

    def start(env: dict[str, str], workers: int = 1, *, ready: bool = True) -> Server:
        server = Server(env, workers)
        started.append(server)
        if ready:
            server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client with short timeouts (a hang is a failure, not a wait)."""
    async with httpx.AsyncClient(timeout=10) as c:
        yield c


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One Redis of the tests' own for the whole run."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.kill()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis for one test, which the test may kill, pause and restart."""
    server = RedisServer(tmp_path)
    yield server
    server.kill()


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> str:
    """A Redis to share: ``GATEWAY_TEST_REDIS_URL``, else one the tests start."""
    configured = os.environ.get("GATEWAY_TEST_REDIS_URL")
    if configured:
        return configured
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix of the test's own, so tests sharing a Redis never see each other's keys."""
    return "gwt" + secrets.token_hex(4)


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """The pinned Better Auth install: ask for it in every test that starts a ``BetterAuth``."""
    return install_peer()


@pytest.fixture
async def ba_client() -> AsyncIterator[httpx.AsyncClient]:
    """A client for the real Better Auth (and the gateways beside it) that keeps no cookies.

    Every request states the credential it sends: a sign-up's Set-Cookie is never sent back by
    itself, so a request without a credential really has none (``stateless_client``).
    """
    async with stateless_client() as c:
        yield c


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say how many differential cases ran (tests/e2e/test_differential.py records them per test)."""
    counts = [
        (report.nodeid.rpartition("[")[2].rstrip("]"), int(value))
        for outcome in ("passed", "failed")
        for report in terminalreporter.stats.get(outcome, [])
        if report.when == "call"
        for key, value in report.user_properties
        if key == "differential_cases"
    ]
    if counts:
        detail = ", ".join(f"{name} {n}" for name, n in counts)
        total = sum(n for _, n in counts)
        terminalreporter.write_line(f"differential suite vs the real Better Auth: {total} cases ({detail})")
