"""Where a ``/validate`` L1 hit's CPU goes under load, next to the floor's (issue 18).

    python -m benchmarks.l1_profile [--duration 4]

Each server (pinned to CPU 0, wrk on CPU 1, as ``benchmarks.http_compare``) is loaded for
``--duration`` seconds; the server's process tree's user and system CPU time (``/proc``) over that
run, divided by the requests wrk completed, gives the CPU microseconds per request, split user /
kernel. Rows: the floor; the floor sending the gateway's identity header list (the same list each
time; one of 10,000 distinct lists, cycled, as a hit sends its entry's; the same list after reading
the path, the query string and the authorization header from granian's scope, as a hit does); the gateway's L1 hit with
bearer tokens and with cookies over 10,000 sessions, and with bearer tokens over one session (the
difference: what a working set of 10,000 entries costs in cache misses). ``--perf DIR`` also
samples each worker with ``perf record -g -e cpu-clock`` (``perf report -i DIR/<row>.data``).
No hardware counters here (a VM): times, not instructions.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import httpx

from benchmarks.http_compare import (
    WARMUP_S,
    Config,
    configs,
    granian,
    setup_database,
    start,
    stop,
    write_scripts,
)
from benchmarks.http_load import each_once, wrk
from tests.support.ports import free_port
from tests.support.postgres import drop_database

_APP = "benchmarks.apps._l1prof_floor_headers"
APP_FILE = Path(__file__).parent / "apps" / "_l1prof_floor_headers.py"  # written, then removed
ONE_SESSION = "`/validate`, L1 hit, bearer, 1 session"
FLOOR_HEADERS = """
import random
H = %(sent)r
MANY = [[(k, v + str(i)) for k, v in H] for i in range(10_000)]
random.shuffle(MANY)  # scattered as entries filled over time would be
_next = iter(__import__("itertools").cycle(MANY)).__next__

async def app(_s, proto):
    proto.response_empty(200, H)

async def reads(scope, proto):
    if scope.path == "/validate" and not scope.query_string and scope.headers.get("authorization"):
        proto.response_empty(200, H)

async def many(_s, proto):
    proto.response_empty(200, _next())
"""
TICK = os.sysconf("SC_CLK_TCK")


def cpu(pid: int) -> tuple[float, float]:
    """(user, system) seconds of ``pid`` and its descendants."""
    user = system = 0.0
    for task in Path("/proc").iterdir():
        if not task.name.isdigit():
            continue
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if task.name == str(pid) or _descends(int(task.name), pid):
            user += int(fields[11]) / TICK
            system += int(fields[12]) / TICK
    return user, system


def _descends(child: int, ancestor: int) -> bool:
    while child > 1:
        try:
            child = int((Path("/proc") / str(child) / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            return False
        if child == ancestor:
            return True
    return False


def _record(pid: int, folder: str, name: str, duration: float) -> subprocess.Popen[bytes]:
    workers = [int(t.name) for t in Path("/proc").iterdir() if t.name.isdigit() and _descends(int(t.name), pid)]
    out = Path(folder) / (re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") + ".data")
    command = ["perf", "record", "-q", "-F", "4999", "-g", "-e", "cpu-clock", "-o", str(out)]
    command += ["-p", ",".join(map(str, workers)), "--", "sleep", str(duration - 0.5)]
    return subprocess.Popen(command)


def rows_for(port: int, dsn: str, token: str) -> list[Config]:
    """The floor, the floor with the hit's headers (one list; 10,000 distinct ones), the L1 hit rows."""
    every = configs(port, dsn, "redis://127.0.0.1:6379/0")
    rows = [c for c in every if c.name.startswith("floor") or "`/validate`, L1 hit" in c.name]
    proc = start(rows[1], port)
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/validate", headers={"authorization": f"Bearer {token}"})
    finally:
        stop(proc)
    sent = [(k, v) for k, v in answer.headers.items() if k not in {"content-length", "date", "server"}]
    print(f"identity headers ({len(sent)}): {sent}")
    APP_FILE.write_text(FLOOR_HEADERS % {"sent": sent})
    rows.insert(1, Config("floor + the hit's headers", granian(_APP + ":app", port), {}, warm=False))
    cycled = Config("floor + 10,000 distinct header lists, cycled", granian(_APP + ":many", port), {}, warm=False)
    rows.insert(2, cycled)
    reads = Config("floor + the hit's headers + its scope reads", granian(_APP + ":reads", port), {}, warm=False)
    rows.insert(3, reads)
    rows.append(rows[-2]._replace(name=ONE_SESSION))  # the bearer row, over one session
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=4)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--perf", default="", help="a folder: perf record each server's worker into it")
    args = parser.parse_args()
    admin_dsn, dsn, tokens = asyncio.run(setup_database())
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="gw-l1prof-"))
    try:
        rows = rows_for(port, dsn, tokens[0])
        scripts = write_scripts(folder, rows[:-1], tokens)
        (folder / "one").mkdir()  # its own credential files: one line
        scripts |= write_scripts(folder / "one", rows[-1:], tokens[:1])
        print("| row | req/s | CPU µs/req | user µs | kernel µs |\n|---|---:|---:|---:|---:|")
        for _ in range(args.runs):
            for config in rows:
                proc = start(config, port)
                try:
                    if config.warm:
                        asyncio.run(each_once(port, [config.probe.request(t) for t in tokens], args.connections))
                    wrk(port, scripts[config.name], WARMUP_S, args.connections)
                    recorder = _record(proc.pid, args.perf, config.name, args.duration) if args.perf else None
                    u0, s0 = cpu(proc.pid)
                    result = wrk(port, scripts[config.name], args.duration, args.connections)
                    u1, s1 = cpu(proc.pid)
                    if recorder is not None:
                        recorder.wait()
                finally:
                    stop(proc)
                n = result.rps * args.duration
                u, s = (u1 - u0) / n * 1e6, (s1 - s0) / n * 1e6
                print(f"| {config.name} | {result.rps:,.0f} | {u + s:.2f} | {u:.2f} | {s:.2f} |", flush=True)
    finally:
        asyncio.run(drop_database(admin_dsn, dsn))
        shutil.rmtree(folder, ignore_errors=True)
        APP_FILE.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
