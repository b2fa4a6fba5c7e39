"""Commit-to-refusal latency: how long after a revoking COMMIT every worker refuses the session.

    python -m benchmarks.revocation [--workers 4] [--rounds 200] [--runs 1] [--baseline DIR]

Starts a real ``gateway serve`` (4 workers, Redis, the triggers installed) on a fresh database in
``GATEWAY_TEST_DATABASE_URL``'s server (default: the local Postgres) and ``GATEWAY_TEST_REDIS_URL``
(default: the local Redis). Each round seeds a session, warms it on a keep-alive connection to
every worker (which worker owns a connection is read from the kernel's socket table), deletes the
row, and measures from the DELETE's return (its commit, as the client sees it) until every worker
answers 401; each worker is asked again as soon as it answers 200. The first ``--warmup`` rounds
are not counted (each worker's first lookups open its pool's connections). Prints the median and
p99 of each run and writes them to ``benchmarks/results/``.

Honesty: the figure can only err high. The clock starts once the DELETE has returned (after its
commit) and stops when the last worker's 401 is read; the time from *sending* the DELETE is kept
beside it (``from_send``), an upper bound that includes the DELETE's own round trip. The prober
runs on uvloop so that its own CPU, on a machine it shares with the workers, stays small.

Before and after in one run: ``--baseline DIR`` (a source tree, say ``git archive main gateway |
tar -x -C DIR``) starts a second gateway from DIR's ``gateway`` package, on a database of its own,
and the rounds alternate between the two in blocks of ten: a noisy machine then weighs on both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import asyncpg
import psutil
import uvloop

from gateway.postgres import seed
from tests.support.credentials import cookie_pair
from tests.support.postgres import create_database, drop_database, install_triggers
from tests.support.server import running_gateway

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

RESULTS = Path(__file__).parent / "results"
BLOCK = 10  # with a baseline: rounds on one gateway before the other's turn


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


class Round(NamedTuple):
    from_commit: float  # seconds from the DELETE's return until every worker refused
    from_send: float  # the same, from sending the DELETE: an upper bound


@contextlib.asynccontextmanager
async def subject(workers: int, prefix: str, baseline: Path | None) -> AsyncIterator[Callable[[], Awaitable[Round]]]:
    """A gateway on a database of its own, with a connection to each worker: yields one round's measure.

    ``baseline``: a source tree whose ``gateway`` package runs instead of this checkout's (started
    from that directory, so that it comes first on the path).
    """
    admin_dsn = os.environ.get("GATEWAY_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    redis_url = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    dsn = await create_database(admin_dsn, "gw_bench_revocation_")
    db = await asyncpg.connect(dsn)
    await seed.create_schema(db)
    await install_triggers(dsn)
    env = {"DATABASE_URL": dsn, "REDIS_URL": redis_url, "GATEWAY_REDIS_PREFIX": prefix}
    # The probes' connections idle between rounds (and while the other gateway has its turn): the
    # slowloris guard, which closes a connection that sends no header for this long, must not.
    env["GATEWAY_HEADER_READ_TIMEOUT_S"] = "3600"
    env |= {"PYTHONPATH": str(baseline)} if baseline else {}
    try:
        with contextlib.chdir(baseline or Path.cwd()), running_gateway(env, workers) as server:
            await asyncio.sleep(1)  # every worker's listener connects (and flushes) once
            uid = await seed.create_user(db, email="bench@example.com")
            conns: list[Connection] = []

            async def run_round() -> Round:
                if not conns:  # on the first round: both gateways are up by then
                    procs = psutil.Process(server.proc.pid).children(recursive=True)
                    conns.extend((await connections_per_worker(server.port, procs)).values())
                return await one_round(db, uid, conns)

            yield run_round
    finally:
        await db.close()
        await drop_database(admin_dsn, dsn)


async def measure(rounds: int, workers: int, warmup: int, baseline: Path | None = None) -> dict[str, list[Round]]:
    """Rounds on this checkout's gateway (and the baseline's, alternately in blocks of ``BLOCK``)."""
    async with contextlib.AsyncExitStack() as stack:
        subjects = {"this checkout": await stack.enter_async_context(subject(workers, "gwbench", None))}
        if baseline is not None:
            subjects[f"baseline {baseline}"] = await stack.enter_async_context(
                subject(workers, "gwbenchbase", baseline)
            )
        measured: dict[str, list[Round]] = {name: [] for name in subjects}
        for run_round in subjects.values():
            for _ in range(warmup):
                await run_round()
        for block, first in enumerate(range(0, rounds, BLOCK)):
            order = list(subjects.items()) if block % 2 == 0 else list(reversed(subjects.items()))
            for name, run_round in order:
                measured[name] += [await run_round() for _ in range(min(BLOCK, rounds - first))]
        return measured


async def one_round(db: asyncpg.Connection, uid: str, conns: list[Connection]) -> Round:
    """Seed a session, have every worker cache it, delete it: how long until every worker refuses it."""
    token = await seed.create_session(db, uid)
    cookie = cookie_pair(token)
    assert {await c.status(cookie) for c in conns} == {200}

    async def refused(conn: Connection) -> float:
        while await conn.status(cookie) != 401:
            pass
        return time.perf_counter()

    sent = time.perf_counter()
    await db.execute('delete from "session" where token = $1', token)
    committed = time.perf_counter()
    last = max(await asyncio.gather(*(refused(c) for c in conns)))
    return Round(last - committed, last - sent)


def summary(name: str, rounds: list[Round], args: argparse.Namespace) -> dict[str, object]:
    """The figures of one run of one gateway, with what they were measured on."""

    def ms(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000, 2)

    commit = [r.from_commit for r in rounds]
    send = [r.from_send for r in rounds]
    return {
        "benchmark": "commit to refusal on every worker",
        "gateway": name,
        "workers": args.workers,
        "rounds": args.rounds,
        "warmup_rounds": args.warmup,
        "median_ms": ms(commit, 0.5),
        "p99_ms": ms(commit, 0.99),
        "max_ms": ms(commit, 1.0),
        "from_send": {"median_ms": ms(send, 0.5), "p99_ms": ms(send, 0.99), "max_ms": ms(send, 1.0)},
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus",
        "python": sys.version.split()[0],
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def git_commit() -> str:
    """The checkout's commit, for the record."""
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    return done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10, help="rounds run first and not counted")
    parser.add_argument("--runs", type=int, default=1, help="separate runs, each on a fresh gateway")
    parser.add_argument("--baseline", type=Path, help="a source tree (say, git archive of main) run alternately")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    for run in range(args.runs):
        measured = uvloop.run(measure(args.rounds, args.workers, args.warmup, args.baseline))
        result = [summary(name, rounds, args) for name, rounds in measured.items()]
        print(json.dumps(result, indent=2))
        name = f"revocation-{time.strftime('%Y%m%d-%H%M%S')}" + (f"-{run + 1}" if args.runs > 1 else "")
        (RESULTS / f"{name}.json").write_text(json.dumps(result[0] if len(result) == 1 else result, indent=2) + "\n")


if __name__ == "__main__":
    main()
