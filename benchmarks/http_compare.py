"""The HTTP comparison: every row of the performance targets against the floor, in one run.

    python -m benchmarks.http_compare [--runs 3] [--duration 8] [--connections 64]

Rows: the floor (a bare granian RSGI app answering 200); ``/validate``, ``GET
/api/auth/get-session`` and ``POST /v1/validate`` on an L1 hit; ``/validate`` on a Redis hit (L1
off), on a Postgres hit (caches off) and on mixed traffic (95 % valid, 4 % unknown sessions, 1 %
garbage) -- each gateway row once with bearer tokens (``Authorization: Bearer <raw token>``) and
once with Better Auth's signed session cookie --, and a FastAPI + uvicorn service built the way
the original integration guide suggests (``benchmarks/apps/fastapi_reference.py``).

Every configuration is served by one process pinned to CPU 0 and loaded by wrk pinned to CPU 1
(``-t1 -c64 --latency``), after a warm-up (every session once, then 2 s of wrk); configurations
run ``--runs`` times in alternating order and the median is kept. Each figure is compared with the
floor measured **in the same run** (these machines are shared and noisy: only ratios travel), and
with its target. The table is printed and written to ``benchmarks/results/`` with the machine, the
versions and the commit. ``--runs 3`` at the default 8 s should take about 12 minutes on a quiet machine
(estimated: 14 rows of about 17 s, three times, plus the setup and a cold start per run); at load average 14,
about 27 (extrapolated from a one-run, 2 s trial there that took 6.9 minutes: the warm-ups slow
down with the server).

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

from benchmarks.http_load import Result, each_once, lua, start_server, wrk
from benchmarks.revocation import git_commit
from gateway.postgres import seed
from tests.support.credentials import SECRET, SESSION_COOKIE, cookie_pair
from tests.support.ports import free_port
from tests.support.postgres import create_database, drop_database, install_triggers

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).parent.parent
SESSIONS = 10_000
WARMUP_S = 2  # of wrk, after every session was sent once
L1_ROW = "`/validate`, L1 hit, bearer"
FASTAPI_ROW = "FastAPI + uvicorn reference (`/validate`, bearer)"
TIER_SHARE = 0.99  # a row is named for the tier that answers at least this share of its lookups
METRICS_LAG_S = 1.5  # the gateway adds its counts to /metrics every GATEWAY_METRICS_FLUSH_S (1 s)


class Probe(NamedTuple):
    """What a row sends: the request and the credential's form."""

    method: str
    path: str
    kind: str  # "bearer" or "cookie"

    @property
    def header(self) -> str:
        return "Authorization" if self.kind == "bearer" else "Cookie"

    def value(self, token: str) -> str:
        """The credential header's value for a session token."""
        return f"Bearer {token}" if self.kind == "bearer" else cookie_pair(token)

    @property
    def garbage(self) -> str:
        """What the mixed runs' 1 % sends: refused before any lookup."""
        return "Bearer !!garbage!!" if self.kind == "bearer" else f"{SESSION_COOKIE}=!!garbage!!"

    def request(self, token: str) -> bytes:
        """The raw request (for the warm-up and the cold start)."""
        length = "Content-Length: 0\r\n" if self.method == "POST" else ""
        head = f"{self.method} {self.path} HTTP/1.1\r\nHost: bench\r\n{self.header}: {self.value(token)}\r\n"
        return (head + length + "\r\n").encode()


class Config(NamedTuple):
    name: str
    command: list[str]
    env: dict[str, str]
    warm: bool  # send every session once before measuring
    probe: Probe = Probe("GET", "/validate", "bearer")
    mixed: bool = False
    target: float | None = None  # the least ratio to the floor (issue 18)
    tier: str | None = None  # the cache tier that must answer (nearly) every lookup: checked in /metrics


def granian(target: str, port: int) -> list[str]:
    args = [sys.executable, "-m", "granian", "--interface", "rsgi", "--loop", "uvloop", "--http", "1", "--no-ws"]
    args += ["--workers", "1", "--runtime-threads", "1", "--host", "127.0.0.1", "--port", str(port)]
    return [*args, "--log-level", "warning", target]


def configs(port: int, dsn: str, redis_url: str) -> list[Config]:
    """Every row, the floor first and the FastAPI reference last."""
    gateway_env = {
        "DATABASE_URL": dsn,
        "BETTER_AUTH_SECRET": SECRET,
        "GATEWAY_SECURE_COOKIES": "false",  # the cookies are Better Auth's on plain http
        "GATEWAY_RATE_LIMIT_PER_MINUTE": "0",
        "GATEWAY_LOG_LEVEL": "warning",
        "GATEWAY_L1_MAX_ENTRIES": str(2 * SESSIONS),
    }
    redis_env = {"REDIS_URL": redis_url, "GATEWAY_L1_MAX_ENTRIES": "0", "GATEWAY_REDIS_PREFIX": "gwhttpbench"}
    serve = [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--workers", "1"]
    uvicorn = [sys.executable, "-m", "uvicorn", "benchmarks.apps.fastapi_reference:app", "--port", str(port)]
    uvicorn += ["--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"]
    rows = [Config("floor (bare granian RSGI)", granian("benchmarks.apps.floor:app", port), {}, warm=False)]
    endpoints = (
        ("`/validate`", "GET", "/validate", 0.90),
        ("`GET /api/auth/get-session`", "GET", "/api/auth/get-session", 0.75),
        ("`POST /v1/validate`", "POST", "/v1/validate", 0.70),
    )
    for label, method, path, target in endpoints:
        for kind in ("bearer", "cookie"):
            probe = Probe(method, path, kind)
            rows.append(
                Config(f"{label}, L1 hit, {kind}", serve, gateway_env, warm=True, probe=probe, target=target, tier="l1")
            )
    for kind in ("bearer", "cookie"):
        probe = Probe("GET", "/validate", kind)
        rows += [
            Config(
                f"`/validate`, Redis hit (L1 off), {kind}",
                serve,
                gateway_env | redis_env,
                warm=True,
                probe=probe,
                target=0.50,
                tier="redis",
            ),
            Config(
                f"`/validate`, Postgres hit (caches off), {kind}",
                serve,
                gateway_env | {"GATEWAY_L1_MAX_ENTRIES": "0"},
                warm=False,
                probe=probe,
                target=0.35,
                tier="postgres",
            ),
            Config(
                f"`/validate`, mixed 95/4/1, {kind}",
                serve,
                gateway_env,
                warm=True,
                probe=probe,
                mixed=True,
                target=0.80,
            ),
        ]
    reference = {"DATABASE_URL": dsn, "REDIS_URL": redis_url}
    rows.append(Config(FASTAPI_ROW, uvicorn, reference, warm=True))
    return rows


def start(config: Config, port: int) -> subprocess.Popen[bytes]:
    """Start a configuration's server pinned to CPU 0; return once it answers (anything) over HTTP."""
    return start_server(config.command, config.env, port, ROOT, name=config.name)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Cold(NamedTuple):
    seconds: float
    queries: int  # batched Postgres calls, from the gateway's own histogram


def postgres_calls(port: int) -> int:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    prefix = 'gateway_backend_seconds_count{backend="postgres"} '
    found = [line for line in text.splitlines() if line.startswith(prefix)]
    return int(float(found[0].removeprefix(prefix))) if found else 0


def lookups(port: int) -> dict[tuple[str, str], float]:
    """The gateway's cache lookups so far, by (tier, result)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    found = re.finditer(r"^gateway_cache_lookups_total\{(.*?)\} ([\d.e+]+)$", text, re.MULTILINE)
    counts = {}
    for match in found:
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        counts[labels["tier"], labels["result"]] = float(match.group(2))
    return counts


def settled_lookups(port: int) -> dict[tuple[str, str], float]:
    """``lookups`` once the gateway has flushed what it counted so far (the warm-up's)."""
    time.sleep(METRICS_LAG_S)
    return lookups(port)


def tier_share(port: int, tier: str, before: dict[tuple[str, str], float]) -> float:
    """Of the requests' lookups since ``before`` (one L1 lookup each), the share ``tier`` answered.

    1.0 when the gateway counted no L1 lookup at all (a build that doesn't count them: unknown,
    not a failure).
    """
    after = lookups(port)
    delta = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in after}
    requests = delta.get(("l1", "hit"), 0.0) + delta.get(("l1", "miss"), 0.0)
    return delta.get((tier, "hit"), 0.0) / requests if requests else 1.0


def cold_start(config: Config, port: int, tokens: list[str], connections: int) -> Cold:
    """Time every session going from cold to cached under load, and count the Postgres calls it took."""
    proc = start(config, port)
    try:
        before = postgres_calls(port)
        requests = [config.probe.request(t) for t in tokens]
        seconds = asyncio.run(each_once(port, requests, connections))
        return Cold(seconds, postgres_calls(port) - before)
    finally:
        stop(proc)


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


def write_scripts(folder: Path, all_configs: list[Config], tokens: list[str]) -> dict[str, Path]:
    """A wrk script per configuration, over files of credentials (valid and unknown) per form."""
    unknown = [seed.generate_id() for _ in range(2000)]
    scripts: dict[str, Path] = {}
    for i, config in enumerate(all_configs):
        probe = config.probe
        valid_file, unknown_file = folder / f"{probe.kind}.valid", folder / f"{probe.kind}.unknown"
        if not valid_file.exists():
            valid_file.write_text("\n".join(probe.value(t) for t in tokens) + "\n")
            unknown_file.write_text("\n".join(probe.value(t) for t in unknown) + "\n")
        text = lua(
            valid_file,
            unknown_file,
            garbage=probe.garbage,
            method=probe.method,
            path=probe.path,
            header=probe.header,
            mixed=config.mixed,
        )
        scripts[config.name] = folder / f"{i}.lua"
        scripts[config.name].write_text(text)
    return scripts


def measure(args: argparse.Namespace) -> tuple[list[Config], dict[str, list[Result]], list[Cold]]:
    admin_dsn, dsn, tokens = asyncio.run(setup_database())
    redis_url = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="gw-bench-"))
    results: dict[str, list[Result]] = {}
    colds: list[Cold] = []
    all_configs = [c for i, c in enumerate(configs(port, dsn, redis_url)) if i == 0 or args.only in c.name]
    scripts = write_scripts(folder, all_configs, tokens)
    per_row = args.duration + WARMUP_S + 4 + 2 * METRICS_LAG_S  # start, the warm-up's requests, stop: ~4 s
    print(
        f"{len(all_configs)} rows x {args.runs} runs: about {per_row * len(all_configs) * args.runs / 60:.0f} min",
        file=sys.stderr,
    )
    try:
        for run in range(args.runs):
            colds.append(cold_start(configs(port, dsn, redis_url)[1], port, tokens, args.connections))
            print(f"run {run + 1}: cold start: {colds[-1].seconds:.2f} s, {colds[-1].queries} queries", file=sys.stderr)
            for config in all_configs if run % 2 == 0 else list(reversed(all_configs)):
                proc = start(config, port)
                try:
                    if config.warm:
                        asyncio.run(each_once(port, [config.probe.request(t) for t in tokens], args.connections))
                    wrk(port, scripts[config.name], WARMUP_S, args.connections)
                    before = settled_lookups(port) if config.tier else {}
                    result = wrk(port, scripts[config.name], args.duration, args.connections)
                    if config.tier:
                        time.sleep(METRICS_LAG_S)
                        result = result._replace(tier_share=tier_share(port, config.tier, before))
                    results.setdefault(config.name, []).append(result)
                finally:
                    stop(proc)
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
    lines = [
        "| row | req/s | p50 ms | p99 ms | vs floor | target | met |",
        "|---|---:|---:|---:|---:|---:|:-:|",
    ]
    failed, elsewhere = [], []
    for config in all_configs:
        m = median(config.name)
        ratio = m.rps / floor.rps
        target = f"≥ {config.target * 100:.0f} %" if config.target else ""
        met = ("yes" if ratio >= config.target else "**no**") if config.target else ""
        ratio_cell = f"{ratio * 100:.0f} %"
        cells = [config.name, f"{m.rps:,.0f}", f"{m.p50_ms:.2f}", f"{m.p99_ms:.2f}", ratio_cell, target, met]
        lines.append("| " + " | ".join(cells) + " |")
        if not config.mixed and any(r.non_2xx for r in results[config.name]):
            failed.append(f"{config.name} ({max(r.non_2xx for r in results[config.name]):,} non-2xx answers)")
        share = min(r.tier_share for r in results[config.name])
        if config.tier and share < TIER_SHARE:
            elsewhere.append(f"{config.name} ({share:.1%} from {config.tier})")
    lines.append("")
    if failed:
        lines.append(
            f"- **refused answers where every session is valid** (the row measures nothing): {'; '.join(failed)}"
        )
    if elsewhere:
        lines.append(f"- **rows not served by the tier they name** (a backend timed out?): {'; '.join(elsewhere)}")
    if L1_ROW in results and FASTAPI_ROW in results:
        l1, fastapi = median(L1_ROW), median(FASTAPI_ROW)
        lines.append(f"- {L1_ROW} vs the FastAPI reference: **{l1.rps / fastapi.rps:.1f}x** (target ≥ 5x)")
        lines.append(f"- p99 on that L1 hit vs the floor's p99: **{l1.p99_ms / floor.p99_ms:.2f}x** (target ≤ 2x)")
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
    parser.add_argument("--only", default="", help="run only the rows whose name holds this (and the floor)")
    args = parser.parse_args()
    os.sched_setaffinity(0, {1})  # this process loads the server too (warm-up, cold start): CPU 1, with wrk
    began = time.monotonic()
    all_configs, results, colds = measure(args)
    text = table(all_configs, results, colds, args.connections)
    versions = ", ".join(
        f"{p} {version(p)}" for p in ("granian", "uvloop", "msgspec", "asyncpg", "redis", "fastapi", "uvicorn")
    )
    header = (
        f"# HTTP comparison, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n"
        f"Machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f} at the end; Python {sys.version.split()[0]}; {versions}; commit {git_commit()}.\n"
        f"wrk -t1 -c{args.connections} -d{args.duration}s, {args.runs} alternating runs, medians "
        f"({(time.monotonic() - began) / 60:.1f} min in all); {SESSIONS:,} sessions; bearer rows send "
        f"`Authorization: Bearer <raw token>`, cookie rows Better Auth's signed session cookie"
        f"{f'; only the rows holding {args.only!r}' if args.only else ''}.\n\n"
    )
    print(header + text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"http-{time.strftime('%Y%m%d-%H%M%S')}.md").write_text(header + text + "\n")
    (RESULTS / "http-latest.json").write_text(
        json.dumps({k: [r._asdict() for r in v] for k, v in results.items()}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
