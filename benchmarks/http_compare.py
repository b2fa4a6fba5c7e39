"""The HTTP comparison: the gateway against the floor and a FastAPI reference, in one run.

    python -m benchmarks.http_compare [--runs 3] [--duration 8] [--connections 64]

Every configuration is served by one process pinned to CPU 0 and loaded by wrk pinned to CPU 1
(``-t1 -c64 --latency``), after a warm-up; configurations are run ``--runs`` times in alternating
order and the median is kept. Each figure is compared with the floor measured **in the same run**
(these machines are shared and noisy: only ratios travel). The table is printed and written to
``benchmarks/results/`` with the machine, the versions and the commit.

Needs ``wrk`` and ``taskset``, Postgres (``GATEWAY_TEST_DATABASE_URL``, default the local one) and
Redis (``GATEWAY_TEST_REDIS_URL``, default the local one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import NamedTuple

import asyncpg
import httpx

from benchmarks.revocation import git_commit
from gateway.postgres import seed
from tests.support.credentials import SECRET
from tests.support.ports import free_port
from tests.support.postgres import create_database, drop_database, install_triggers

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).parent.parent
SESSIONS = 10_000

LUA = """
local tokens, garbage = {}, {}
for line in io.lines("%(tokens)s") do tokens[#tokens + 1] = line end
for line in io.lines("%(unknown)s") do garbage[#garbage + 1] = line end
local mixed = %(mixed)s
math.randomseed(os.time())
request = function()
  local r = math.random(100)
  local token
  if not mixed or r <= 95 then token = tokens[math.random(#tokens)]
  elseif r <= 99 then token = garbage[math.random(#garbage)]
  else token = "!!garbage!!" end
  return wrk.format("GET", "/validate", {["Authorization"] = "Bearer " .. token})
end
"""


class Cold(NamedTuple):
    seconds: float
    queries: int  # batched Postgres calls, from the gateway's own histogram


class Config(NamedTuple):
    name: str
    command: list[str]
    env: dict[str, str]
    warm: bool  # run the tokens through once before measuring
    mixed: bool = False
    target: float | None = None  # minimum ratio to the floor


class Result(NamedTuple):
    rps: float
    p50_ms: float
    p99_ms: float


def granian(target: str, port: int, *, factory: bool = False) -> list[str]:
    args = [sys.executable, "-m", "granian", "--interface", "rsgi", "--loop", "uvloop", "--http", "1", "--no-ws"]
    args += [
        "--workers",
        "1",
        "--runtime-threads",
        "1",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    return [*args, *(["--factory"] if factory else []), target]


def configs(port: int, dsn: str, redis_url: str) -> list[Config]:
    gateway_env = {
        "DATABASE_URL": dsn,
        "BETTER_AUTH_SECRET": SECRET,
        "GATEWAY_RATE_LIMIT_PER_MINUTE": "0",
        "GATEWAY_LOG_LEVEL": "warning",
        "GATEWAY_L1_MAX_ENTRIES": str(2 * SESSIONS),
    }
    serve = [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--workers", "1"]
    uvicorn = [sys.executable, "-m", "uvicorn", "benchmarks.apps.fastapi_reference:app", "--port", str(port)]
    uvicorn += ["--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"]
    return [
        Config("floor (bare granian RSGI)", granian("benchmarks.apps.floor:app", port), {}, warm=False),
        Config("gateway, L1 hit", serve, gateway_env, warm=True, target=0.85),
        Config(
            "gateway, Redis hit (L1 off)",
            serve,
            gateway_env
            | {"REDIS_URL": redis_url, "GATEWAY_L1_MAX_ENTRIES": "0", "GATEWAY_REDIS_PREFIX": "gwhttpbench"},
            warm=True,
            target=0.50,
        ),
        Config(
            "gateway, Postgres hit (caches off)",
            serve,
            gateway_env | {"GATEWAY_L1_MAX_ENTRIES": "0"},
            warm=False,
            target=0.25,
        ),
        Config("gateway, mixed 95/4/1", serve, gateway_env, warm=True, mixed=True, target=0.70),
        Config("FastAPI + uvicorn reference", uvicorn, {"DATABASE_URL": dsn, "REDIS_URL": redis_url}, warm=True),
    ]


def start(config: Config, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "DATABASE_URL", "REDIS_URL"))}
    env |= config.env | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(["taskset", "-c", "0", *config.command], env=env, cwd=ROOT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/validate", timeout=1)
        except httpx.TransportError:
            time.sleep(0.1)
        else:
            return proc
    proc.kill()
    raise RuntimeError(f"{config.name} did not start")


def wrk(port: int, script: Path, duration: float, connections: int) -> Result:
    out = subprocess.run(
        [
            "taskset",
            "-c",
            "1",
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{round(duration)}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def latency(pct: str) -> float:
        value, unit = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return Result(rps, latency("50"), latency("99"))


def postgres_calls(port: int) -> int:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    found = re.search(r'^gateway_backend_seconds_count\{backend="postgres"\} ([\d.e+]+)$', text, re.MULTILINE)
    return int(float(found.group(1))) if found else 0


def cold_start(config: Config, port: int, tokens: list[str], connections: int) -> Cold:
    """Time every session going from cold to cached under load, and count the Postgres calls it took."""
    proc = start(config, port)
    try:
        before = postgres_calls(port)
        seconds = asyncio.run(each_once(port, tokens, connections))
        return Cold(seconds, postgres_calls(port) - before)
    finally:
        proc.terminate()
        proc.wait(15)


async def each_once(port: int, tokens: list[str], connections: int) -> float:
    """Send every token once over ``connections`` keep-alive connections; the seconds it took.

    A bare asyncio client (wrk cannot stop after a number of requests): /validate answers have
    no body, so an answer ends at its blank line.
    """
    todo = iter(tokens)

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for token in todo:
            writer.write(f"GET /validate HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"cold start: {head.splitlines()[0]!r}")
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(connections)))
    return time.perf_counter() - started


async def warm(port: int, tokens: list[str]) -> None:
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(timeout=10, limits=limits) as c:
        for i in range(0, len(tokens), 500):
            await asyncio.gather(
                *(
                    c.get(f"http://127.0.0.1:{port}/validate", headers={"authorization": f"Bearer {t}"})
                    for t in tokens[i : i + 500]
                )
            )


async def setup_database() -> tuple[str, str, list[str]]:
    """A fresh database with the schema, the triggers and SESSIONS live sessions: (admin DSN, DSN, tokens)."""
    admin_dsn = os.environ.get("GATEWAY_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    dsn = await create_database(admin_dsn, "gw_http_bench_")
    conn = await asyncpg.connect(dsn)
    await seed.create_schema(conn)
    uid = await seed.create_user(conn, email="bench@example.com", role="user")
    tokens = [seed.generate_id() for _ in range(SESSIONS)]
    now = seed.now()
    rows = [(seed.generate_id(), now.replace(year=now.year + 1), t, now, now, "", "", uid) for t in tokens]
    await conn.copy_records_to_table(
        "session",
        records=rows,
        columns=["id", "expiresAt", "token", "createdAt", "updatedAt", "ipAddress", "userAgent", "userId"],
    )
    await conn.close()
    await install_triggers(dsn)
    return admin_dsn, dsn, tokens


def measure(args: argparse.Namespace) -> tuple[list[Config], dict[str, list[Result]], list[Cold]]:
    admin_dsn, dsn, tokens = asyncio.run(setup_database())
    redis_url = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="gw-bench-"))
    (folder / "tokens").write_text("\n".join(tokens) + "\n")
    (folder / "unknown").write_text("\n".join(seed.generate_id() for _ in range(2000)) + "\n")
    results: dict[str, list[Result]] = {}
    colds: list[Cold] = []
    all_configs = configs(port, dsn, redis_url)
    try:
        for run in range(args.runs):
            colds.append(cold_start(all_configs[1], port, tokens, args.connections))
            print(f"run {run + 1}: cold start: {colds[-1].seconds:.2f} s, {colds[-1].queries} queries", file=sys.stderr)
            order = all_configs if run % 2 == 0 else list(reversed(all_configs))
            for config in order:
                script = folder / ("mixed.lua" if config.mixed else "plain.lua")
                script.write_text(
                    LUA
                    % {"tokens": folder / "tokens", "unknown": folder / "unknown", "mixed": str(config.mixed).lower()}
                )
                proc = start(config, port)
                try:
                    if config.warm:
                        asyncio.run(warm(port, tokens))
                    wrk(port, script, 3, args.connections)  # warm-up
                    results.setdefault(config.name, []).append(wrk(port, script, args.duration, args.connections))
                finally:
                    proc.terminate()
                    proc.wait(15)
                print(f"run {run + 1}: {config.name}: {results[config.name][-1].rps:,.0f} req/s", file=sys.stderr)
    finally:
        asyncio.run(drop_database(admin_dsn, dsn))
        shutil.rmtree(folder, ignore_errors=True)
    return all_configs, results, colds


def table(all_configs: list[Config], results: dict[str, list[Result]], colds: list[Cold], connections: int) -> str:
    def median(name: str) -> Result:
        rs = results[name]
        return Result(*(statistics.median(getattr(r, f) for r in rs) for f in Result._fields))

    floor = median(all_configs[0].name)
    fastapi = median(all_configs[-1].name)
    lines = [
        "| configuration | req/s | p50 ms | p99 ms | vs floor | target | met |",
        "|---|---:|---:|---:|---:|---:|:-:|",
    ]
    for config in all_configs:
        m = median(config.name)
        ratio = m.rps / floor.rps
        target = f"≥ {config.target:.0%}" if config.target else ""
        met = ("yes" if ratio >= config.target else "**no**") if config.target else ""
        lines.append(
            f"| {config.name} | {m.rps:,.0f} | {m.p50_ms:.2f} | {m.p99_ms:.2f} | {ratio:.0%} | {target} | {met} |"
        )
    l1 = median(all_configs[1].name)
    lines.append("")
    lines.append(f"- L1 hit vs the FastAPI reference: **{l1.rps / fastapi.rps:.1f}x** (target ≥ 5x)")
    lines.append(f"- p99 on an L1 hit vs the floor's p99: **{l1.p99_ms / floor.p99_ms:.2f}x** (target ≤ 2x)")
    cold = sorted(colds)[len(colds) // 2]  # the median run, by time
    lines.append(
        f"- cold start: {SESSIONS:,} distinct valid sessions cold → cached in **{cold.seconds:.2f} s** under "
        f"{connections} connections, with **{cold.queries:,} Postgres queries** (batched misses)"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    os.sched_setaffinity(0, {1})  # this process loads the server too (warm-up, cold start): CPU 1, with wrk
    all_configs, results, colds = measure(args)
    text = table(all_configs, results, colds, args.connections)
    versions = ", ".join(
        f"{p} {version(p)}" for p in ("granian", "uvloop", "msgspec", "asyncpg", "redis", "fastapi", "uvicorn")
    )
    header = (
        f"# HTTP comparison, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n"
        f"Machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs; Python {sys.version.split()[0]}; "
        f"{versions}; commit {git_commit()}.\n"
        f"wrk -t1 -c{args.connections} -d{args.duration}s, {args.runs} alternating runs, medians; "
        f"{SESSIONS:,} sessions, random bearer tokens.\n\n"
    )
    print(header + text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"http-{time.strftime('%Y%m%d-%H%M%S')}.md").write_text(header + text + "\n")
    (RESULTS / "http-latest.json").write_text(
        json.dumps({k: [r._asdict() for r in v] for k, v in results.items()}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
