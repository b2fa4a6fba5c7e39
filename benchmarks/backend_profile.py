"""A Redis or Postgres hit, profiled in-process: what the gateway's own code costs per request.

    python -m benchmarks.backend_profile redis|postgres [--requests 40000] [--concurrency 64] [--profile]

The real app (``gateway.resources.create_app``'s ``App``, its real resources on a fresh database
and a Redis prefix of its own) is called as granian calls it (``__rsgi__``), ``--concurrency``
requests at a time, on uvloop, with the L1 off (every request goes to Redis, or with ``postgres``
to Postgres). What granian itself costs is the floor's, measured by ``http_compare``; what is
measured here is the rest: the process's CPU time per request (robust on a noisy shared machine,
unlike wall time), and with ``--profile`` the cProfile of that run, sorted by own time.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import time

import asyncpg
import uvloop

from gateway.config import load_settings
from gateway.http.app import App
from gateway.postgres import seed
from gateway.resources import open_resources
from tests.support.credentials import SECRET
from tests.support.postgres import create_database, drop_database

SESSIONS = 10_000


class Headers(dict[str, str]):
    """granian's request headers, as far as the gateway reads them."""

    def get_all(self, name: str) -> list[str]:
        value = self.get(name)
        return [] if value is None else [value]


class Scope:
    """granian's RSGI scope for ``GET /validate`` with a bearer token."""

    method, scheme, path, query_string, client, http_version = "GET", "http", "/validate", "", "127.0.0.1:1", "1.1"

    def __init__(self, token: str) -> None:
        self.headers = Headers(authorization=f"Bearer {token}")


class Proto:
    """granian's RSGI protocol: counts the answers by status."""

    def __init__(self) -> None:
        self.statuses: dict[int, int] = {}

    def response_empty(self, status: int, _headers: object) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1

    def response_bytes(self, status: int, _headers: object, _body: bytes) -> None:
        self.response_empty(status, _headers)

    def response_str(self, status: int, _headers: object, _body: str) -> None:
        self.response_empty(status, _headers)


async def seeded(admin_dsn: str) -> tuple[str, list[str]]:
    dsn = await create_database(admin_dsn, "gw_profile_")
    conn = await asyncpg.connect(dsn)
    await seed.create_schema(conn)
    uid = await seed.create_user(conn, email="bench@example.com", role="user")
    tokens = [seed.generate_id() for _ in range(SESSIONS)]
    now = seed.now()
    rows = [(seed.generate_id(), now.replace(year=now.year + 1), t, now, now, "", "", uid) for t in tokens]
    columns = ["id", "expiresAt", "token", "createdAt", "updatedAt", "ipAddress", "userAgent", "userId"]
    await conn.copy_records_to_table("session", records=rows, columns=columns)
    await conn.close()
    return dsn, tokens


async def drive(app: App, scopes: list[Scope], requests: int, concurrency: int) -> Proto:
    proto = Proto()
    todo = iter(range(requests))

    async def client() -> None:
        for i in todo:
            await app.__rsgi__(scopes[i * 7919 % len(scopes)], proto)  # type: ignore[arg-type]

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return proto


async def run(args: argparse.Namespace) -> None:
    admin_dsn = os.environ.get("GATEWAY_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    redis_url = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    dsn, tokens = await seeded(admin_dsn)
    env = {"DATABASE_URL": dsn, "BETTER_AUTH_SECRET": SECRET, "GATEWAY_L1_MAX_ENTRIES": "0"}
    env |= {"GATEWAY_RATE_LIMIT_PER_MINUTE": "0", "GATEWAY_LISTEN": "false"}
    # cProfile slows everything several times over: a Redis budget of 250 ms would turn it off midway.
    env |= {"GATEWAY_REDIS_TIMEOUT_S": "2", "GATEWAY_DB_TIMEOUT_S": "5"}
    if args.tier == "redis":
        env |= {"REDIS_URL": redis_url, "GATEWAY_REDIS_PREFIX": "gwprofile" + seed.generate_id(6)}
    app = App(load_settings(env), open_resources)
    await app.open()
    try:
        scopes = [Scope(t) for t in tokens]
        warm = await drive(app, scopes, SESSIONS, args.concurrency)  # fills Redis
        redis = app.parts.redis  # type: ignore[attr-defined]  # Resources has it, the HTTP port does not
        if redis is not None:
            await redis.drain()
        await drive(app, scopes, args.requests // 4, args.concurrency)  # warm-up
        metrics = app.parts.metrics
        metrics.flush()
        profile = cProfile.Profile() if args.profile else None
        cpu, wall = time.process_time(), time.perf_counter()
        if profile is not None:
            profile.enable()
        answered = await drive(app, scopes, args.requests, args.concurrency)
        if profile is not None:
            profile.disable()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        print(f"{args.tier}: warm {warm.statuses}, measured {answered.statuses}")
        print(f"{args.tier}: {cpu / args.requests * 1e6:.1f} µs CPU/request, {args.requests / wall:,.0f} req/s wall")
        print("lookups:", {" ".join(k[1:]): n for k, n in metrics._counts.items() if k[0] in "le"})  # noqa: SLF001
        if profile is not None:
            out = io.StringIO()
            stats = pstats.Stats(profile, stream=out)
            print(layers(stats, args.requests))
            stats.sort_stats("tottime").print_stats(args.top)
            print(out.getvalue())
    finally:
        await app.close()
        await drop_database(admin_dsn, dsn)


# Where a request's time goes, by layer: (label, file suffix, function), cumulative, per request.
LAYERS = (
    ("the whole request (RSGI call)", "http/app.py", "__rsgi__"),
    ("  identity headers rendered", "http/responses.py", "headers"),
    ("  the decision", "lookup/decision.py", "decide"),
    ("    tiers.load (single-flight, task, shield)", "lookup/tiers.py", "load"),
    ("    tiers.remember", "lookup/tiers.py", "remember"),
    ("      Redis: values opened (MAC, msgpack)", "redis/values.py", "open"),
    ("      Redis: pipe writes (one per tick)", "redis/pipe.py", "send"),
    ("      Redis: replies handed over", "redis/pipe.py", "data_received"),
    ("      Redis (main): redis-py MGET", "redis/tier.py", "_read_many"),
    ("      Postgres: Store.fetch_many", "postgres/store.py", "fetch_many"),
    ("      Postgres: asyncpg execute (C decoding)", "asyncpg/connection.py", "_do_execute"),
    ("      Postgres: rows to sessions", "postgres/rows.py", "to_session"),
)


def layers(stats: pstats.Stats, requests: int) -> str:
    """The cumulative profiled time of each layer, per request (coroutines: summed over their steps)."""
    found = stats.stats  # type: ignore[attr-defined]  # pstats keeps its table there
    lines = ["| layer | µs per request (profiled) |", "|---|---:|"]
    for label, suffix, name in LAYERS:
        total = sum(v[3] for (path, _, fn), v in found.items() if fn == name and path.endswith(suffix))
        if total:
            lines.append(f"| {label} | {total / requests * 1e6:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tier", choices=["redis", "postgres"])
    parser.add_argument("--requests", type=int, default=40_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    uvloop.run(run(args))


if __name__ == "__main__":
    main()
