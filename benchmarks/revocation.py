"""Commit-to-refusal latency: how long after a revoking COMMIT every worker refuses the session.

    python -m benchmarks.revocation [--workers 4] [--rounds 50]

Starts a real ``gateway serve`` (4 workers, Redis, the triggers installed) on a fresh database in
``GATEWAY_TEST_DATABASE_URL``'s server (default: the local Postgres) and ``GATEWAY_TEST_REDIS_URL``
(default: the local Redis). Each round seeds a session, warms it on a keep-alive connection to
every worker (which worker owns a connection is read from the kernel's socket table), deletes the
row, and measures from the DELETE's return (its commit) until every worker answers 401. Prints
the median and p99 and writes them to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import psutil

from gateway.postgres import seed
from tests.support.credentials import cookie_pair
from tests.support.postgres import create_database, drop_database, install_triggers
from tests.support.server import running_gateway

RESULTS = Path(__file__).parent / "results"


class Connection:
    """One keep-alive HTTP/1.1 connection, sending /validate with a cookie."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def status(self, cookie: str) -> int:
        self.writer.write(f"GET /validate HTTP/1.1\r\nHost: gw\r\nCookie: {cookie}\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")  # /validate answers have empty bodies
        return int(head.split(b" ", 2)[1])


async def connections_per_worker(port: int, workers: list[psutil.Process]) -> dict[int, Connection]:
    """Open connections until each worker owns one; return one per worker pid."""
    owned: dict[int, Connection] = {}
    for _ in range(400):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        local_port = writer.get_extra_info("sockname")[1]
        await asyncio.sleep(0.01)
        for proc in workers:
            if proc.pid not in owned and any(
                c.raddr and c.raddr.port == local_port for c in proc.net_connections(kind="tcp")
            ):
                owned[proc.pid] = Connection(reader, writer)
                break
        else:
            writer.close()
        if len(owned) == len(workers):
            return owned
    raise RuntimeError("could not reach every worker")


async def measure(rounds: int, workers: int) -> list[float]:
    admin_dsn = os.environ.get("GATEWAY_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    redis_url = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    dsn = await create_database(admin_dsn, "gw_bench_revocation_")
    db = await asyncpg.connect(dsn)
    await seed.create_schema(db)
    await install_triggers(dsn)
    env = {"DATABASE_URL": dsn, "REDIS_URL": redis_url, "GATEWAY_REDIS_PREFIX": "gwbench"}
    try:
        with running_gateway(env, workers) as server:
            await asyncio.sleep(1)  # every worker's listener connects (and flushes) once
            procs = psutil.Process(server.proc.pid).children(recursive=True)
            conns = await connections_per_worker(server.port, procs)
            uid = await seed.create_user(db, email="bench@example.com")
            latencies = []
            for _ in range(rounds):
                token = await seed.create_session(db, uid)
                cookie = cookie_pair(token)
                assert {await c.status(cookie) for c in conns.values()} == {200}
                await db.execute('delete from "session" where token = $1', token)
                committed = time.perf_counter()

                async def refused(conn: Connection, cookie: str = cookie) -> float:
                    while await conn.status(cookie) != 401:
                        pass
                    return time.perf_counter()

                latencies.append(max(await asyncio.gather(*(refused(c) for c in conns.values()))) - committed)
            return latencies
    finally:
        await db.close()
        await drop_database(admin_dsn, dsn)


def git_commit() -> str:
    """The checkout's commit, for the record."""
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    return done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    latencies = sorted(asyncio.run(measure(args.rounds, args.workers)))
    p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
    result = {
        "benchmark": "commit to refusal on every worker",
        "workers": args.workers,
        "rounds": args.rounds,
        "median_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(p99 * 1000, 2),
        "max_ms": round(latencies[-1] * 1000, 2),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus",
        "python": sys.version.split()[0],
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"revocation-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
