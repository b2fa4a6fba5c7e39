"""``gateway demo``: with no DATABASE_URL it brings up an embedded Postgres and a working session."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import subprocess
import sys
from typing import IO, TYPE_CHECKING

import asyncpg
import httpx
import psutil

from gateway.postgres import seed
from gateway.postgres.triggers import VERSION
from tests.support.ports import free_port

if TYPE_CHECKING:
    from pathlib import Path


def test_demo_curl_works_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    """The printed curl gets 200, a forged cookie 401, and Ctrl-C stops the gateway and its Postgres."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "BETTER_AUTH", "DATABASE_URL"))}
    env["XDG_DATA_HOME"] = str(tmp_path)  # the per-user data folder, kept out of the real one
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "gateway", "demo", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("curl "), line
        args = shlex.split(line)
        cookie = args[args.index("-H") + 1].removeprefix("Cookie: ")
        url = args[-1]
        ok = _retry_get(url, cookie)
        assert ok.status_code == 200
        assert ok.headers["x-auth-request-email"] == "demo@example.com"
        forged = re.sub(r"\.[^.]+$", ".AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA%3D", cookie)
        assert httpx.get(url, headers={"cookie": forged}).status_code == 401
        postgres = [
            p for p in psutil.process_iter(["name", "cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])
        ]
        assert postgres, "the embedded Postgres should be running"
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
        if proc.stdout:
            proc.stdout.close()
    assert code == 0
    psutil.wait_procs(postgres, timeout=10)
    assert not any(p.is_running() for p in postgres), "Ctrl-C should stop the embedded Postgres"


def _retry_get(url: str, cookie: str) -> httpx.Response:
    import time  # noqa: PLC0415

    deadline = time.monotonic() + 30
    while True:
        try:
            return httpx.get(url, headers={"cookie": cookie}, timeout=5)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _demo(tmp_path: Path, database: str, stderr: IO[str]) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "BETTER_AUTH", "DATABASE_URL"))}
    env["XDG_DATA_HOME"] = str(tmp_path)
    env["DATABASE_URL"] = database
    return subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "gateway", "demo", "--port", str(free_port()), "--workers", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )


async def test_demo_shows_a_revocation_happen(tmp_path: Path, database: str) -> None:
    """Empty database: the printed curl gets 200, the printed SQL signs out, then the curl gets 401; no warning."""
    async with httpx.AsyncClient(timeout=5) as client:
        with (tmp_path / "stderr").open("w") as stderr:
            await _watch_a_revocation(_demo(tmp_path, database, stderr), database, client)
    log = (tmp_path / "stderr").read_text()
    assert f"invalidation triggers: installed v{VERSION}" in log
    assert "no invalidation triggers" not in log
    assert "then sign it out" in log


async def _watch_a_revocation(proc: subprocess.Popen[str], database: str, client: httpx.AsyncClient) -> None:
    async def statuses(cookie: str, url: str) -> set[int]:
        return {(await client.get(url, headers={"cookie": cookie})).status_code for _ in range(8)}

    try:
        assert proc.stdout is not None
        curl, psql = shlex.split(proc.stdout.readline()), shlex.split(proc.stdout.readline())
        cookie, url = curl[curl.index("-H") + 1].removeprefix("Cookie: "), curl[-1]
        assert psql[0] == "psql"
        assert psql[1] == "$DATABASE_URL"  # the user's own URL is not printed
        assert _retry_get(url, cookie).status_code == 200
        assert await statuses(cookie, url) == {200}
        conn = await asyncpg.connect(database)
        try:
            await conn.execute(psql[psql.index("-c") + 1])
        finally:
            await conn.close()
        await asyncio.sleep(0.1)
        assert await statuses(cookie, url) == {401}
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        if proc.stdout:
            proc.stdout.close()


async def test_demo_leaves_a_database_it_did_not_make_alone(
    tmp_path: Path, database: str, bare_db: asyncpg.Connection
) -> None:
    """DATABASE_URL with Better Auth's tables: the demo refuses, adding no column and no row."""
    await seed.create_schema(bare_db, plugins=False)
    with (tmp_path / "stderr").open("w") as stderr:
        proc = _demo(tmp_path, database, stderr)
        assert proc.wait(60) == 2
        assert proc.stdout is not None
        assert proc.stdout.read() == ""
        proc.stdout.close()
    assert "has Better Auth's tables the demo did not make" in (tmp_path / "stderr").read_text()
    role = "select count(*) from information_schema.columns where table_name = 'user' and column_name = 'role'"
    assert await bare_db.fetchval(role) == 0
    assert await bare_db.fetchval('select count(*) from "user"') == 0
    assert await bare_db.fetchval("select count(*) from pg_trigger where tgname like 'gateway%'") == 0
